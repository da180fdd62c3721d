//! Streams over one TCP session: round trips both ways, many at once, half-close, abort,
//! limits and close.

mod common;

use std::io;
use std::time::Duration;

use common::{Cutter, Pki, options, pair, pair_with_each, payload, sha256};
use qymux_transport::{CloseReason, Error, Limit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes every stream `session` accepts until EOF, then finishes its side.
fn echo_all(session: qymux_tcp::Session) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(mut stream) = session.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut stream);
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    })
}

async fn round_trip(session: &qymux_tcp::Session, data: &[u8]) -> Vec<u8> {
    let mut stream = session.open().await.unwrap();
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let writer = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_in_both_directions() {
    let (_l, client, server) = pair().await;
    let _server_echo = echo_all(server.clone());
    let _client_echo = echo_all(client.clone());

    let data = payload(1, 100_000);
    assert_eq!(
        round_trip(&client, &data).await,
        data,
        "dialer-opened stream"
    );
    let data = payload(2, 100_000);
    assert_eq!(
        round_trip(&server, &data).await,
        data,
        "listener-opened stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_visible_to_the_peer_before_any_write() {
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
async fn hundred_concurrent_streams_carry_checksummed_megabytes() {
    let (_l, client, server) = pair().await;
    let _echo = echo_all(server);
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(i, 2 * 1024 * 1024 + i as usize);
            let got = round_trip(&client, &data).await;
            assert_eq!(got.len(), data.len(), "stream {i} length");
            assert_eq!(sha256(&got), sha256(&data), "stream {i} checksum");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(client.open_streams(), 0, "finished streams are released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_peer_reply() {
    let (_l, client, server) = pair().await;
    let mut stream = client.open().await.unwrap();
    stream.write_all(b"question").await.unwrap();
    stream.shutdown().await.unwrap();

    let mut accepted = server.accept().await.unwrap();
    let mut request = Vec::new();
    accepted.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"question", "server reads EOF after the request");
    // Its own side is still open after the client's half-close.
    accepted.write_all(b"answer").await.unwrap();
    accepted.shutdown().await.unwrap();

    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"answer");
}

fn assert_reset(err: io::Error) {
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::StreamReset)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_stream_is_an_error_for_the_peer_not_eof() {
    let (_l, client, server) = pair().await;

    // The listener aborts mid-reply: the dialer's read fails.
    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    accepted.write_all(&payload(3, 10_000)).await.unwrap();
    qymux_transport::Stream::abort(&mut accepted);
    let mut got = Vec::new();
    let err = stream.read_to_end(&mut got).await.unwrap_err();
    assert_reset(err);

    // The dialer aborts: the listener's read fails too.
    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    stream.write_all(b"partial").await.unwrap();
    drop(stream);
    let mut got = Vec::new();
    let err = accepted.read_to_end(&mut got).await.unwrap_err();
    assert_reset(err);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_after_the_peer_finished_is_still_an_error_for_it() {
    let (_l, client, server) = pair().await;
    for explicit in [true, false] {
        // Request, then half-close: the server has the whole request and the peer's FIN.
        let mut stream = client.open().await.unwrap();
        stream.write_all(b"request").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut accepted = server.accept().await.unwrap();
        let mut request = Vec::new();
        accepted.read_to_end(&mut request).await.unwrap();
        // Half a reply, then the server gives up (abort, or a task that drops the stream).
        accepted.write_all(b"half a rep").await.unwrap();
        if explicit {
            qymux_transport::Stream::abort(&mut accepted);
        } else {
            drop(accepted);
        }
        let mut reply = Vec::new();
        let err = stream.read_to_end(&mut reply).await.unwrap_err();
        assert_reset(err);
    }
    // A stream finished properly on both sides still ends in a clean EOF.
    let _echo = echo_all(server);
    let data = payload(4, 1000);
    assert_eq!(round_trip(&client, &data).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_streams_refuses_opens_beyond_the_limit() {
    let mut opts = options();
    opts.max_streams(4);
    let (_l, client, _server) = pair_with_each(opts, options()).await;

    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(client.open().await.unwrap());
    }
    match client.open().await {
        Err(Error::LimitReached(Limit::Streams(4))) => {}
        other => panic!("expected LimitReached(Streams(4)), got {other:?}"),
    }
    held.pop();
    let _again = client.open().await.expect("a slot was freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_peers_limit_are_reset() {
    let mut server_opts = options();
    server_opts.max_streams(2);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let _echo = echo_all(server);

    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(client.open().await.unwrap());
    }
    let mut third = streams.pop().unwrap();
    third.write_all(b"x").await.ok();
    let mut buf = Vec::new();
    assert_reset(third.read_to_end(&mut buf).await.unwrap_err());
    // The two within the limit, and the session, are unharmed.
    for (i, mut s) in streams.into_iter().enumerate() {
        s.write_all(b"ok").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ok", "stream {i}");
    }
    let data = payload(9, 1000);
    assert_eq!(round_trip(&client, &data).await, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_clean_for_the_peer_and_fails_pending_operations() {
    let (_l, client, server) = pair().await;
    let mut stream = server.open().await.unwrap();
    let _accepted = client.accept().await.unwrap();

    client.close().await;
    assert!(matches!(client.close_reason(), Some(CloseReason::Local)));
    match server.closed().await {
        CloseReason::Peer(_) => {}
        other => panic!("the peer must see a clean close, got {other:?}"),
    }
    // A read on a stream of the closed session fails instead of reporting EOF.
    let mut buf = Vec::new();
    let err = stream.read_to_end(&mut buf).await.unwrap_err();
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<Error>());
    assert!(matches!(inner, Some(Error::ClosedByPeer(_))), "{err:?}");
    assert!(matches!(server.open().await, Err(Error::ClosedByPeer(_))));
    assert!(matches!(client.open().await, Err(Error::Closed)));
    assert!(matches!(server.accept().await, Err(Error::ClosedByPeer(_))));
    // Closing again is harmless.
    client.close().await;
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
        qymux_tcp::dial(&addr, "localhost", pki.client_tls(), &opts),
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
