//! Happy Eyeballs with real sockets: an address that drops SYNs, listed before one that
//! works, does not keep the dial from connecting.
//!
//! The dropping address is made on loopback without privileges: a listener on
//! 127.0.0.5 with a backlog of zero whose one queue place is taken, so the kernel drops
//! every further SYN to it (the connect would hang for the whole connect timeout).

use std::net::SocketAddr;
use std::time::Duration;

use qymux_transport::eyeballs;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A TCP address whose SYNs are dropped for as long as the returned sockets live.
async fn syn_dropping_address() -> (SocketAddr, TcpListener, TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.5:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fills the accept queue: never accepted.
    let queued = TcpStream::connect(addr).await.unwrap();
    (addr, listener, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_drops_syns_does_not_hold_up_the_next_one() {
    let (dropping, _hole, _queued) = syn_dropping_address().await;
    // The control: on its own, the dropping address does not answer within half a second.
    let alone =
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(dropping)).await;
    assert!(
        alone.is_err(),
        "the address must drop SYNs for this test to mean anything"
    );

    let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_addr = good.local_addr().unwrap();
    // Both listed, the dropping one first; a generous bound only against a hang (a
    // dial trying addresses in turn would wait on the first for minutes of SYN retries).
    let (stream, winner) = tokio::time::timeout(
        Duration::from_secs(60),
        eyeballs::race(
            vec![dropping, good_addr],
            eyeballs::ATTEMPT_DELAY,
            TcpStream::connect,
        ),
    )
    .await
    .expect("the race must not wait on the dropping address")
    .expect("the working address connects");
    assert_eq!(winner, good_addr);
    assert_eq!(stream.peer_addr().unwrap(), good_addr);
    let (accepted, from) = good.accept().await.unwrap();
    assert_eq!(from, stream.local_addr().unwrap());
    drop(accepted);
}
