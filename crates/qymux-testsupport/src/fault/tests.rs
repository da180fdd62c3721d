use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

use super::*;

/// Hang guard: generous, only there so a broken proxy fails instead of hanging.
const GUARD: Duration = Duration::from_secs(10);

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {GUARD:?}"))
}

/// A client connected through a TCP proxy, and the upstream's end of it.
async fn tcp_pair() -> (TcpListener, FaultProxy, TcpStream, TcpStream) {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::tcp(upstream.local_addr().unwrap())
        .await
        .unwrap();
    let client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (server, _) = guard("upstream accept", upstream.accept()).await.unwrap();
    (upstream, proxy, client, server)
}

async fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    guard("read", stream.read_exact(&mut buf)).await.unwrap();
    buf
}

#[tokio::test]
async fn tcp_pass_forwards_both_ways_and_counts() {
    let (_up, proxy, mut client, mut server) = tcp_pair().await;
    client.write_all(b"hello").await.unwrap();
    assert_eq!(read_n(&mut server, 5).await, b"hello");
    server.write_all(b"world!").await.unwrap();
    assert_eq!(read_n(&mut client, 6).await, b"world!");
    let counts = proxy.counts();
    assert_eq!(
        counts.forwarded_bytes,
        Tally {
            to_upstream: 5,
            to_client: 6
        }
    );
    assert_eq!(counts.dropped_bytes.total(), 0);
    assert_eq!((counts.connections, counts.open), (1, 1));

    // A close is passed on as EOF.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    guard("EOF", server.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    drop(server);
    guard("connection closed", proxy.wait_until(|c| c.open == 0)).await;
}

#[tokio::test]
async fn tcp_delay_keeps_order_and_adds_latency() {
    let (_up, proxy, mut client, mut server) = tcp_pair().await;
    let delay = Duration::from_millis(150);
    proxy.set(Fault::Delay(delay));
    let start = Instant::now();
    for chunk in [&b"one,"[..], b"two,", b"three"] {
        client.write_all(chunk).await.unwrap();
    }
    assert_eq!(read_n(&mut server, 13).await, b"one,two,three");
    // A lower bound only: the delay is never shorter, however loaded the machine.
    assert!(start.elapsed() >= delay);
    assert_eq!(proxy.counts().forwarded_bytes.to_upstream, 13);
}

#[tokio::test]
async fn tcp_drop_discards_both_ways_but_keeps_the_connection() {
    let (_up, proxy, mut client, mut server) = tcp_pair().await;
    proxy.set(Fault::Drop);
    client.write_all(b"lost up").await.unwrap();
    server.write_all(b"lost down").await.unwrap();
    let counts = guard(
        "drops counted",
        proxy.wait_until(|c| c.dropped_bytes.to_upstream == 7 && c.dropped_bytes.to_client == 9),
    )
    .await;
    assert_eq!(counts.forwarded_bytes.total(), 0);
    assert_eq!(counts.open, 1);

    // The connection is still there, and what was dropped never arrives.
    proxy.set(Fault::Pass);
    client.write_all(b"after").await.unwrap();
    assert_eq!(read_n(&mut server, 5).await, b"after");
    server.write_all(b"back").await.unwrap();
    assert_eq!(read_n(&mut client, 4).await, b"back");
}

#[tokio::test]
async fn tcp_blackhole_never_reaches_the_upstream() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::tcp(upstream.local_addr().unwrap())
        .await
        .unwrap();
    proxy.set(Fault::Blackhole);
    let mut dark = TcpStream::connect(proxy.local_addr()).await.unwrap();
    dark.write_all(b"anyone?").await.unwrap();
    guard(
        "blackholed bytes counted",
        proxy.wait_until(|c| c.dropped_bytes.to_upstream == 7),
    )
    .await;

    // Lifting it does not connect the blackholed connection: the upstream's first
    // connection is the next client's.
    proxy.set(Fault::Pass);
    let mut next = TcpStream::connect(proxy.local_addr()).await.unwrap();
    next.write_all(b"second").await.unwrap();
    let (mut server, _) = guard("upstream accept", upstream.accept()).await.unwrap();
    assert_eq!(read_n(&mut server, 6).await, b"second");
    let counts = proxy.counts();
    assert_eq!((counts.connections, counts.open), (2, 2));
}

fn assert_reset(result: io::Result<usize>) {
    match result {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
}

#[tokio::test]
async fn tcp_cut_resets_connections_even_if_lifted_at_once() {
    let (upstream, proxy, mut client, mut server) = tcp_pair().await;
    proxy.set(Fault::Cut);
    proxy.set(Fault::Pass);
    let mut buf = [0u8; 16];
    assert_reset(guard("client reset", client.read(&mut buf)).await);
    assert_reset(guard("server reset", server.read(&mut buf)).await);
    let counts = guard("cut counted", proxy.wait_until(|c| c.open == 0)).await;
    assert_eq!(counts.cut, 1);

    // While cut, new connections are reset at once; afterwards they work again.
    proxy.set(Fault::Cut);
    let mut refused = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_reset(guard("new connection reset", refused.read(&mut buf)).await);
    proxy.set(Fault::Pass);
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut server, _) = guard("upstream accept", upstream.accept()).await.unwrap();
    client.write_all(b"again").await.unwrap();
    assert_eq!(read_n(&mut server, 5).await, b"again");
    assert_eq!(proxy.counts().cut, 2);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let (_up, proxy, mut client, _server) = tcp_pair().await;
    drop(proxy);
    let mut buf = [0u8; 4];
    let read = guard("close", client.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// A UDP echo server; returns its address.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

async fn udp_client(proxy: &FaultProxy) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

async fn echo_through(socket: &UdpSocket, data: &[u8]) {
    socket.send(data).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = guard("echo", socket.recv(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], data);
}

#[tokio::test]
async fn udp_pass_drop_and_delay() {
    let proxy = FaultProxy::udp(udp_echo().await).await.unwrap();
    assert_eq!(proxy.transport(), Transport::Udp);
    let client = udp_client(&proxy).await;
    echo_through(&client, b"one").await;
    let counts = proxy.counts();
    assert_eq!(
        counts.forwarded_datagrams,
        Tally {
            to_upstream: 1,
            to_client: 1
        }
    );
    assert_eq!(counts.forwarded_bytes.total(), 6);
    assert_eq!((counts.connections, counts.open), (1, 1));

    proxy.set(Fault::Drop);
    client.send(b"lost").await.unwrap();
    guard(
        "drop counted",
        proxy.wait_until(|c| c.dropped_datagrams.to_upstream == 1),
    )
    .await;

    let delay = Duration::from_millis(100);
    proxy.set(Fault::Delay(delay));
    let start = Instant::now();
    echo_through(&client, b"late").await;
    assert!(start.elapsed() >= delay * 2);
    let counts = proxy.counts();
    assert_eq!(counts.forwarded_datagrams.total(), 4);
    assert_eq!(counts.connections, 1, "the same flow throughout");
}

#[tokio::test]
async fn udp_drop_discards_the_upstreams_answers_too() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::udp(upstream.local_addr().unwrap())
        .await
        .unwrap();
    let client = udp_client(&proxy).await;
    client.send(b"hi").await.unwrap();
    let mut buf = [0u8; 64];
    let (_, flow) = guard("datagram upstream", upstream.recv_from(&mut buf))
        .await
        .unwrap();
    proxy.set(Fault::Drop);
    upstream.send_to(b"answer", flow).await.unwrap();
    guard(
        "answer dropped",
        proxy.wait_until(|c| c.dropped_datagrams.to_client == 1),
    )
    .await;
}

#[tokio::test]
async fn udp_cut_forgets_flows() {
    let proxy = FaultProxy::udp(udp_echo().await).await.unwrap();
    let client = udp_client(&proxy).await;
    echo_through(&client, b"before").await;
    proxy.set(Fault::Cut);
    let counts = guard("flow forgotten", proxy.wait_until(|c| c.open == 0)).await;
    assert_eq!(counts.cut, 1);
    client.send(b"while cut").await.unwrap();
    guard(
        "datagram dropped while cut",
        proxy.wait_until(|c| c.dropped_datagrams.to_upstream == 1),
    )
    .await;
    proxy.set(Fault::Pass);
    echo_through(&client, b"after").await;
    assert_eq!(proxy.counts().connections, 2, "a new flow after the cut");
}

#[tokio::test]
async fn tcp_and_udp_proxies_share_a_port_number() {
    let upstream_tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = FaultProxy::tcp(upstream_tcp.local_addr().unwrap())
        .await
        .unwrap();
    let udp = FaultProxy::bind(Transport::Udp, tcp.local_addr(), udp_echo().await)
        .await
        .unwrap();
    assert_eq!(udp.local_addr(), tcp.local_addr());
    let client = udp_client(&udp).await;
    echo_through(&client, b"same port").await;
    let mut stream = TcpStream::connect(tcp.local_addr()).await.unwrap();
    let (mut server, _) = guard("upstream accept", upstream_tcp.accept())
        .await
        .unwrap();
    stream.write_all(b"tcp").await.unwrap();
    assert_eq!(read_n(&mut server, 3).await, b"tcp");
}
