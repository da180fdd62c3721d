//! A session survives a change of the client's address (NAT rebinding), and a path that
//! goes dead is an error, not EOF.

mod common;

use std::time::Duration;

use common::{Pki, Relay, UdpRelay, options};
use qymux_quic::{Listener, dial, dial_with_endpoint, quinn};
use qymux_transport::{CloseReason, Error, TimeoutKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HANG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_survives_nat_rebinding() {
    let pki = Pki::new();
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let opts = options();
    let (client, server) = tokio::join!(
        dial_with_endpoint(
            &endpoint,
            &addr,
            "localhost",
            pki.client_tls(),
            opts.clone()
        ),
        listener.accept()
    );
    let (client, server) = (client.unwrap(), server.unwrap());

    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    stream.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");
    accepted.write_all(b"ack-1").await.unwrap();
    let mut ack = [0u8; 5];
    stream.read_exact(&mut ack).await.unwrap();
    assert_eq!(&ack, b"ack-1");
    let old_remote = server.remote_addr();
    assert_eq!(old_remote, endpoint.local_addr().unwrap());

    // The NAT gives the client a new port: a new socket under the same endpoint.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let new_addr = socket.local_addr().unwrap();
    endpoint.rebind(socket).unwrap();
    assert_eq!(client.local_addr(), new_addr);

    // The same stream carries data both ways afterwards.
    stream.write_all(b"after!").await.unwrap();
    tokio::time::timeout(HANG, accepted.read_exact(&mut buf))
        .await
        .expect("data from the new address arrives")
        .unwrap();
    assert_eq!(&buf, b"after!");
    accepted.write_all(b"ack-2").await.unwrap();
    tokio::time::timeout(HANG, stream.read_exact(&mut ack))
        .await
        .expect("the server follows the client to its new address")
        .unwrap();
    assert_eq!(&ack, b"ack-2");
    assert_eq!(server.remote_addr(), new_addr);
    assert_ne!(server.remote_addr(), old_remote);

    // And the session still works as a whole.
    stream.shutdown().await.unwrap();
    accepted.shutdown().await.unwrap();
    let mut rest = Vec::new();
    accepted.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let mut second = server.open().await.unwrap();
    second.write_all(b"hi").await.unwrap();
    let mut got = client.accept().await.unwrap();
    let mut hi = [0u8; 2];
    got.read_exact(&mut hi).await.unwrap();
    assert_eq!(&hi, b"hi");
    client.close().await;
    endpoint.wait_idle().await;
    assert!(matches!(server.closed().await, CloseReason::Peer(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_path_is_an_idle_timeout_not_eof() {
    let pki = Pki::new();
    let mut opts = options();
    opts.idle_timeout(Duration::from_secs(2))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), opts.clone())
        .await
        .unwrap();
    let relay = UdpRelay::start(listener.local_addr(), Relay::Forward).await;
    let relay_addr = relay.addr.to_string();
    let (client, server) = tokio::join!(
        dial(&relay_addr, "localhost", pki.client_tls(), opts.clone()),
        listener.accept()
    );
    let (client, server) = (client.unwrap(), server.unwrap());
    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    accepted.write_all(b"some data").await.unwrap();
    let mut first = [0u8; 9];
    stream.read_exact(&mut first).await.unwrap();

    // Keep-alive holds an idle but healthy session open past the idle timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(client.close_reason().is_none(), "keep-alive kept it alive");

    relay.set(Relay::Nothing);
    let mut rest = Vec::new();
    let err = tokio::time::timeout(HANG, stream.read_to_end(&mut rest))
        .await
        .expect("a dead path must be detected")
        .unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(
        matches!(
            inner,
            Some(Error::Timeout {
                what: TimeoutKind::Idle,
                ..
            })
        ),
        "{err:?}"
    );
    let reason = client.closed().await;
    assert!(!reason.is_clean(), "{reason:?}");
    let reason = tokio::time::timeout(HANG, server.closed()).await.unwrap();
    assert!(
        matches!(
            reason,
            CloseReason::Failed(Error::Timeout {
                what: TimeoutKind::Idle,
                ..
            })
        ),
        "{reason:?}"
    );
}
