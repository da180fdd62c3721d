//! TCP-specific stream behaviour. What every backend must do (round trips, many streams,
//! half-close, abort, close, limits) is in the shared conformance suite
//! (`tests/conformance.rs`).

mod common;

use std::time::Duration;

/// Bound on any single wait, so a bug fails instead of hanging.
const WAIT: Duration = Duration::from_secs(30);

use common::{Cutter, Pki, options, pair};
use qymux_transport::{CloseReason, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ids_follow_the_hashicorp_roles_and_show_at_open() {
    let (_l, client, server) = pair().await;
    let mut opened = client.open().await.unwrap();
    // Server speaks first: it must see the stream although the client wrote nothing.
    let mut accepted = tokio::time::timeout(Duration::from_secs(5), server.accept())
        .await
        .expect("accept must not wait for data")
        .unwrap();
    accepted.write_all(b"220 hello\r\n").await.unwrap();
    let mut greeting = [0u8; 11];
    opened.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    // Ids follow the hashicorp roles: odd for the dialer, even for the listener.
    assert_eq!(opened.stream_id() % 2, 1);
    let from_server = server.open().await.unwrap();
    assert_eq!(from_server.stream_id() % 2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_ahead_show_only_when_opened_and_close_cleanly() {
    // After the first `open`, the driver keeps one yamux stream opened ahead of time so
    // the next `open` needs no round trip through it. The peer must not notice: it sees
    // exactly the streams opened, in order, and a graceful close stays graceful.
    let (_l, client, server) = pair().await;
    let mut ids = Vec::new();
    for i in 0..20u8 {
        let mut opened = client.open().await.unwrap();
        ids.push(opened.stream_id());
        opened.write_all(&[i]).await.unwrap();
        opened.shutdown().await.unwrap();
        let mut accepted = server.accept().await.unwrap();
        assert_eq!(accepted.stream_id(), opened.stream_id());
        let mut got = Vec::new();
        accepted.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [i]);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");
    // The stream waiting to be opened is not one the server can accept.
    let early = tokio::time::timeout(Duration::from_millis(200), server.accept()).await;
    assert!(early.is_err(), "the server accepted a stream nobody opened");
    client.close().await;
    assert!(
        matches!(server.closed().await, CloseReason::Peer(None)),
        "{:?}",
        server.close_reason()
    );
}

/// `poll_open` and `poll_accept` work from hand-written polls (no future per call): the
/// peer sees the stream and bytes flow; a waiting `poll_accept` is woken when the peer
/// opens; once the session has ended both are ready at once with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_open_and_poll_accept_carry_streams_without_futures() {
    use std::future::poll_fn;
    use std::task::{Context, Poll, Waker};

    let (_l, client, server) = pair().await;
    let mut opened = poll_fn(|cx| client.poll_open(cx)).await.expect("poll_open");
    let mut accepted = tokio::time::timeout(WAIT, poll_fn(|cx| server.poll_accept(cx)))
        .await
        .expect("the peer sees the stream before any write")
        .expect("poll_accept");
    assert_eq!(accepted.stream_id(), opened.stream_id());
    opened.write_all(b"polled").await.unwrap();
    opened.shutdown().await.unwrap();
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"polled");

    // Nothing queued: the poll registers its waker, and the peer's open wakes it.
    let waiting = tokio::spawn({
        let server = server.clone();
        async move { poll_fn(|cx| server.poll_accept(cx)).await }
    });
    let second = poll_fn(|cx| client.poll_open(cx)).await.expect("poll_open");
    let woken = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiting poll_accept is woken")
        .expect("task")
        .expect("poll_accept");
    assert_eq!(woken.stream_id(), second.stream_id());

    client.close().await;
    server.closed().await;
    let mut cx = Context::from_waker(Waker::noop());
    match client.poll_open(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is_session_closed(), "{e:?}"),
        other => panic!("poll_open on an ended session: {other:?}"),
    }
    match server.poll_accept(&mut cx) {
        Poll::Ready(Err(e)) => assert!(matches!(e, Error::ClosedByPeer(_)), "{e:?}"),
        other => panic!("poll_accept on an ended session: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_session() {
    let (_l, client, server) = pair().await;
    drop(client);
    assert!(matches!(server.closed().await, CloseReason::Peer(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_an_error_not_eof() {
    let pki = Pki::new();
    let listener = qymux_tcp::Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let cutter = Cutter::start(listener.local_addr()).await;
    let (addr, opts) = (cutter.addr.to_string(), options());
    let (client, server) = tokio::join!(
        qymux_tcp::dial(&addr, "localhost", pki.client_tls(), opts.clone()),
        listener.accept()
    );
    let (client, server) = (client.unwrap(), server.unwrap());
    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    accepted.write_all(b"some data").await.unwrap();
    let mut first = [0u8; 9];
    stream.read_exact(&mut first).await.unwrap();

    cutter.cut();
    let mut rest = Vec::new();
    let err = stream.read_to_end(&mut rest).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::Io(_))), "{err:?}");
    assert!(matches!(
        client.closed().await,
        CloseReason::Failed(Error::Io(_))
    ));
    assert!(!client.close_reason().unwrap().is_clean());
}

/// A session whose driver task is gone (its runtime shut down) fails every waiter with a
/// typed error instead of leaving it hanging: a read, a write blocked on flow control, an
/// accept and `closed()`, each in a task of another runtime.
#[test]
fn waiters_fail_when_the_driver_task_is_gone() {
    let peer_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let driver_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The listener and the peer's session live in `peer_rt`; the dialed session's driver
    // task in `driver_rt`.
    let pki = Pki::new();
    let listener = peer_rt
        .block_on(qymux_tcp::Listener::bind(
            "127.0.0.1:0",
            pki.server_tls(),
            options(),
        ))
        .unwrap();
    let addr = listener.local_addr().to_string();
    let client = driver_rt
        .block_on(qymux_tcp::dial(
            &addr,
            "localhost",
            pki.client_tls(),
            options(),
        ))
        .unwrap();
    let server = peer_rt.block_on(listener.accept()).unwrap();
    let (mut reading, mut writing) = peer_rt.block_on(async {
        let reading = client.open().await.unwrap();
        let writing = client.open().await.unwrap();
        (reading, writing)
    });
    // The peer accepts both streams and never reads nor writes.
    let held = peer_rt.block_on(async {
        let a = server.accept().await.unwrap();
        let b = server.accept().await.unwrap();
        (a, b)
    });
    let waiters = peer_rt.spawn({
        let client = client.clone();
        async move {
            let read = tokio::spawn(async move {
                let mut buf = [0u8; 16];
                reading.read(&mut buf).await
            });
            let write = tokio::spawn(async move {
                let chunk = vec![0u8; 64 * 1024];
                loop {
                    writing.write_all(&chunk).await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), std::io::Error>(())
            });
            let accept = tokio::spawn({
                let client = client.clone();
                async move { client.accept().await.map(|_| ()) }
            });
            let closed = tokio::spawn(async move { client.closed().await });
            (read.await, write.await, accept.await, closed.await)
        }
    });
    // Let the waiters block, then take the driver's runtime away.
    std::thread::sleep(Duration::from_millis(200));
    drop(driver_rt);
    let (read, write, accept, closed) = peer_rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), waiters).await })
        .expect("every waiter must wake when the driver is gone")
        .unwrap();
    // The reason is the cause under "i/o error on the connection": look along the chain.
    let driver_gone = |e: &std::io::Error| {
        qymux_transport::ErrorReport::new(e)
            .to_string()
            .contains("driver task stopped")
    };
    let read = read.unwrap().expect_err("read must fail");
    assert!(driver_gone(&read), "{read}");
    let write = write.unwrap().expect_err("write must fail");
    assert!(driver_gone(&write), "{write}");
    let accept = accept.unwrap().expect_err("accept must fail");
    assert!(matches!(accept, Error::Io(_)), "{accept:?}");
    assert!(matches!(closed.unwrap(), CloseReason::Failed(Error::Io(_))));
    drop(held);
}
