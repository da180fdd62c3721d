//! QUIC-specific stream behaviour. What every backend must do (round trips, many
//! streams, half-close, abort, close, limits) is in the shared conformance suite
//! (`tests/conformance.rs`).

mod common;

use std::io;
use std::time::Duration;

use common::{options, pair, pair_with_each, payload, sha256};
use qymux_transport::{CloseReason, Error, Limit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for things that should happen at once: only catches a hang.
const HANG: Duration = Duration::from_secs(20);

/// Echoes every stream `session` accepts until EOF, then finishes its side.
fn echo_all(session: qymux_quic::Session) -> tokio::task::JoinHandle<()> {
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

fn qymux_error(err: &io::Error) -> Option<&Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<Error>())
}

fn assert_reset(err: io::Error) {
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        matches!(qymux_error(&err), Some(Error::StreamReset)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_and_identities() {
    let (listener, client, server) = pair().await;
    assert_eq!(client.remote_addr(), listener.local_addr());
    assert_eq!(server.local_addr(), listener.local_addr());
    assert_eq!(server.remote_addr().port(), client.local_addr().port());
    assert!(server.remote_addr().ip().is_loopback());
    // The dialed session's socket is bound to the wildcard address; its local address
    // is the one the server sees, not 0.0.0.0.
    assert_eq!(client.local_addr(), server.remote_addr());
    // The dialer always knows the server's certificate; without mTLS the server knows
    // no client identity.
    assert!(client.peer_identity().is_some());
    assert!(server.peer_identity().is_none());
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
    assert_eq!(opened.stream_id(), accepted.stream_id());
    accepted.write_all(b"220 hello\r\n").await.unwrap();
    let mut greeting = [0u8; 11];
    opened.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");

    // The announcement added no byte: the stream carries exactly what was written.
    opened.write_all(b"QUIT\r\n").await.unwrap();
    opened.shutdown().await.unwrap();
    let mut request = Vec::new();
    accepted.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"QUIT\r\n");
    accepted.shutdown().await.unwrap();
    let mut rest = Vec::new();
    opened.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "nothing after the greeting: {rest:?}");

    // QUIC ids: bit 0 is 0 for the client's streams, 1 for the server's; all are
    // bidirectional (bit 1 clear).
    assert_eq!(opened.stream_id() % 4, 0);
    let from_server = server.open().await.unwrap();
    assert_eq!(from_server.stream_id() % 4, 1);
    let seen = tokio::time::timeout(Duration::from_secs(5), client.accept())
        .await
        .expect("the listener's stream is visible too")
        .unwrap();
    assert_eq!(seen.stream_id(), from_server.stream_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_silent_streams_are_all_visible() {
    let (_l, client, server) = pair().await;
    let mut opened = Vec::new();
    for _ in 0..50 {
        opened.push(client.open().await.unwrap());
    }
    for i in 0..50 {
        tokio::time::timeout(Duration::from_secs(5), server.accept())
            .await
            .unwrap_or_else(|_| panic!("stream {i} not visible"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_stream_fails_the_peers_writes() {
    let (_l, client, server) = pair().await;
    let mut stream = client.open().await.unwrap();
    let mut accepted = server.accept().await.unwrap();
    qymux_transport::Stream::abort(&mut stream);

    // STOP_SENDING reaches the writer: its writes fail instead of filling a dead stream.
    let chunk = payload(4, 64 * 1024);
    let err = tokio::time::timeout(HANG, async {
        loop {
            if let Err(e) = accepted.write_all(&chunk).await {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the writer must learn of the abort");
    assert_reset(err);
    // Its reads fail as well (RESET_STREAM).
    let mut buf = Vec::new();
    assert_reset(accepted.read_to_end(&mut buf).await.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_of_a_finished_stream_is_delivered_after_drop() {
    let (_l, client, server) = pair().await;
    let data = payload(5, 4 * 1024 * 1024);
    let mut stream = client.open().await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    let mut accepted = server.accept().await.unwrap();
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peers_limit_is_enforced() {
    let mut server_opts = options();
    server_opts.max_streams(2);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let _echo = echo_all(server.clone());

    let mut first = client.open().await.unwrap();
    let _second = client.open().await.unwrap();
    // The server allows two streams from the client (QUIC MAX_STREAMS): a third open is
    // refused instead of waiting forever.
    match tokio::time::timeout(HANG, client.open()).await.unwrap() {
        Err(Error::LimitReached(Limit::PeerStreams(2))) => {}
        other => panic!("expected LimitReached(PeerStreams(2)), got {other:?}"),
    }
    // Once a stream is done, the server grants another.
    first.write_all(b"done").await.unwrap();
    first.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    first.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"done");
    drop(first);
    let deadline = tokio::time::Instant::now() + HANG;
    let mut third = loop {
        match client.open().await {
            Ok(s) => break s,
            Err(Error::LimitReached(_)) if tokio::time::Instant::now() < deadline => continue,
            Err(e) => panic!("the server must grant a new stream: {e:?}"),
        }
    };
    third.write_all(b"ok").await.unwrap();
    third.shutdown().await.unwrap();
    let mut got = Vec::new();
    third.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_counting_both_directions_are_reset() {
    let mut server_opts = options();
    server_opts.max_streams(2);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;

    // The server holds one stream it opened, so it has room for one of the client's.
    let _own = server.open().await.unwrap();
    let _echo = echo_all(server.clone());
    let mut inside = client.open().await.unwrap();
    let mut beyond = client.open().await.unwrap();
    beyond.write_all(b"x").await.ok();
    let mut buf = Vec::new();
    assert_reset(beyond.read_to_end(&mut buf).await.unwrap_err());
    // The stream within the limit, and the session, are unharmed.
    inside.write_all(b"ok").await.unwrap();
    inside.shutdown().await.unwrap();
    let mut got = Vec::new();
    inside.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ok");
    assert!(client.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_leave_the_count_exact() {
    // A refused stream's reservation guard used to give back a slot it never took: each
    // refusal let one more stream in, and the count finally wrapped around.
    let mut server_opts = options();
    server_opts.max_streams(2);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let _own = [server.open().await.unwrap(), server.open().await.unwrap()];
    let acceptor = tokio::spawn({
        let server = server.clone();
        async move { server.accept().await.map(drop) }
    });
    for i in 0..3 {
        let mut beyond = client.open().await.unwrap();
        beyond.write_all(b"x").await.ok();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(HANG, beyond.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stream {i} beyond the limit was neither reset nor served"));
        assert_reset(read.unwrap_err());
    }
    assert_eq!(server.open_streams(), 2);
    match server.open().await {
        Err(Error::LimitReached(Limit::Streams(2))) => {}
        other => panic!(
            "expected LimitReached(Streams(2)), got {:?}",
            other.map(drop)
        ),
    }
    assert!(
        !acceptor.is_finished(),
        "a stream beyond the limit was accepted"
    );
    acceptor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delivers_finished_streams_first() {
    let (_l, client, server) = pair().await;
    let data = payload(6, 8 * 1024 * 1024);
    let mut stream = client.open().await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    client.close().await;

    let mut accepted = server.accept().await.unwrap();
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(sha256(&got), sha256(&data));
    assert!(matches!(server.closed().await, CloseReason::Peer(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_closes_the_session() {
    let (_l, client, server) = pair().await;
    let stream = client.open().await.unwrap();
    drop(client);
    // A stream keeps the session alive.
    let _accepted = server.accept().await.unwrap();
    assert!(server.close_reason().is_none());
    drop(stream);
    let reason = tokio::time::timeout(HANG, server.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_grant_grows_with_use_up_to_max_streams() {
    // The peer is granted 128 streams at first (quinn keeps a table entry per stream it
    // may open); accepting streams raises the grant, up to max_streams and no further.
    let mut server_opts = options();
    server_opts.max_streams(300);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        while let Ok(stream) = server.accept().await {
            // Held open: every stream counts against the grant until the test ends.
            if held_tx.send(stream).is_err() {
                break;
            }
        }
    });
    // In batches, each accepted before the next: the grant follows what was accepted,
    // so no open waits on how fast the acceptor runs. 128 → 256 (at 64 accepted) → 300.
    let (mut opened, mut accepted) = (Vec::new(), Vec::new());
    for batch in 0..3 {
        for i in 0..100 {
            let stream = tokio::time::timeout(HANG, client.open())
                .await
                .unwrap_or_else(|_| panic!("open {batch}/{i} hung"))
                .unwrap_or_else(|e| panic!("open {batch}/{i} failed: {e:?}"));
            opened.push(stream);
        }
        for _ in 0..100 {
            accepted.push(held_rx.recv().await.unwrap());
        }
    }
    match tokio::time::timeout(HANG, client.open()).await.unwrap() {
        Err(Error::LimitReached(Limit::PeerStreams(300))) => {}
        other => panic!("expected LimitReached(PeerStreams(300)), got {other:?}"),
    }
    // Every one of them is a working stream on the server.
    let (last_sent, last_got) = (opened.last_mut().unwrap(), accepted.last_mut().unwrap());
    last_sent.write_all(b"last").await.unwrap();
    last_sent.shutdown().await.unwrap();
    let mut got = Vec::new();
    last_got.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last");
    acceptor.abort();
}

/// Two `close` calls at once share one graceful sequence: the second does not cut short
/// the delivery the first is waiting for, and both return when it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_closes_share_one_graceful_delivery() {
    let (_listener, client, server) = pair().await;
    let data = payload(5, 16 << 20);
    let reader = tokio::spawn(async move {
        let mut incoming = server.accept().await.unwrap();
        let mut got = Vec::new();
        let read = incoming.read_to_end(&mut got).await;
        (read.map(|_| got), server)
    });
    let mut stream = client.open().await.unwrap();
    // The last windows' worth is still in flight (unacknowledged) when this returns.
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    tokio::join!(client.close(), client.close(), client.close());
    let (got, server) = reader.await.unwrap();
    let got = got.expect("every byte of a finished stream arrives before the close");
    assert_eq!(sha256(&got), sha256(&data));
    assert!(matches!(server.closed().await, CloseReason::Peer(_)));
}

/// A close reason is chosen by the peer: printed (as the examples and the library's
/// logs print it, with `Display`), its newlines and ANSI escapes come out escaped, so
/// it cannot forge log lines or drive the terminal. The raw text stays available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_close_reason_is_printed_escaped() {
    let (_listener, client, server) = pair().await;
    let evil = "bye\n2030-01-01T00:00:00Z INFO admin logged in\x1b[2J\x1b[31m\r";
    server
        .connection()
        .close(quinn::VarInt::from_u32(0), evil.as_bytes());
    let reason = tokio::time::timeout(HANG, client.closed())
        .await
        .expect("the close arrives");
    match &reason {
        CloseReason::Peer(Some(raw)) => assert_eq!(raw, evil),
        other => panic!("expected the peer's reason, got {other:?}"),
    }
    for printed in [
        format!("session ended: {reason}"),
        reason.to_error().to_string(),
    ] {
        assert!(!printed.chars().any(char::is_control), "{printed:?}");
        assert!(
            printed
                .contains(r"bye\n2030-01-01T00:00:00Z INFO admin logged in\u{1b}[2J\u{1b}[31m\r"),
            "{printed}"
        );
    }
    assert_eq!(
        reason.to_string(),
        r"closed by peer: bye\n2030-01-01T00:00:00Z INFO admin logged in\u{1b}[2J\u{1b}[31m\r"
    );
}

/// The peer's stream grant grows with the streams it opens, not with the application's
/// accepts: while the acceptor is paused the peer opens 500 streams (of 1000) and writes
/// to each, every open succeeds, and once the acceptor runs it gets them all, intact.
/// (When the grant grew only on `accept`, the 129th open failed with PeerStreams(128).)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_grant_grows_ahead_of_a_paused_acceptor() {
    const STREAMS: usize = 500;
    let mut server_opts = options();
    server_opts.max_streams(1000).accept_backlog(1000);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let (resume, paused) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tokio::spawn(async move {
        paused.await.expect("resumed");
        let mut got = Vec::new();
        for _ in 0..STREAMS {
            let mut stream = server.accept().await.expect("accept");
            let mut body = Vec::new();
            stream.read_to_end(&mut body).await.expect("read");
            got.push(String::from_utf8(body).expect("utf-8"));
        }
        got
    });
    let mut opened = Vec::new();
    for i in 0..STREAMS {
        let mut stream = tokio::time::timeout(HANG, client.open())
            .await
            .unwrap_or_else(|_| panic!("open {i} hung"))
            .unwrap_or_else(|e| panic!("open {i} failed while the acceptor paused: {e:?}"));
        stream
            .write_all(format!("stream {i}").as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        opened.push(stream);
    }
    resume.send(()).unwrap();
    let mut got = acceptor.await.unwrap();
    got.sort_by_key(|s| s[7..].parse::<usize>().unwrap());
    let expected: Vec<_> = (0..STREAMS).map(|i| format!("stream {i}")).collect();
    assert_eq!(got, expected);
}

/// The grant grows ahead of `accept`, but no further than `accept_backlog` beyond the
/// accepted streams: a paused acceptor still bounds what may wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_acceptor_still_bounds_the_backlog() {
    let mut server_opts = options();
    server_opts.max_streams(1000).accept_backlog(200);
    let (_l, client, server) = pair_with_each(options(), server_opts).await;
    let mut opened = Vec::new();
    for i in 0..200 {
        let stream = tokio::time::timeout(HANG, client.open())
            .await
            .unwrap_or_else(|_| panic!("open {i} hung"))
            .unwrap_or_else(|e| panic!("open {i} failed: {e:?}"));
        opened.push(stream);
    }
    match tokio::time::timeout(HANG, client.open()).await.unwrap() {
        Err(Error::LimitReached(Limit::PeerStreams(200))) => {}
        other => panic!("expected LimitReached(PeerStreams(200)), got {other:?}"),
    }
    // Accepting them makes room for more (quinn announces a grown grant in batches, so
    // not for each single accept).
    let mut accepted = Vec::new();
    for _ in 0..200 {
        accepted.push(server.accept().await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        match client.open().await {
            Ok(s) => break opened.push(s),
            Err(Error::LimitReached(_)) if tokio::time::Instant::now() < deadline => continue,
            Err(e) => panic!("accepting a stream must make room for another: {e:?}"),
        }
    }
}

/// Dropping the last handle after `shutdown` (the stream, then the session) still
/// delivers every byte and the FIN, as TCP does: quinn on its own closes a connection
/// nothing refers to at once, and the unsent data was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_session_after_shutdown_still_delivers() {
    let (_l, client, server) = pair().await;
    let data = payload(8, 48 * 1024 * 1024);
    let reader = tokio::spawn(async move {
        let mut accepted = server.accept().await.unwrap();
        let mut got = Vec::new();
        let read = accepted.read_to_end(&mut got).await;
        (read.map(|_| got), server)
    });
    let mut stream = client.open().await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    drop(client);
    let (got, server) = reader.await.unwrap();
    let got = got.expect("every byte and the FIN arrive");
    assert_eq!(sha256(&got), sha256(&data));
    let reason = tokio::time::timeout(HANG, server.closed()).await.unwrap();
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");
}
