//! Senders of garbage are disconnected while the listener keeps serving good clients.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Pki, payload, sha256};
use qymux_tcp::{Listener, Session, dial};
use qymux_transport::Options;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for "the server hung up": far above the 1 s handshake timeout, so it only
/// catches a hang, never a slow machine.
const HANG: Duration = Duration::from_secs(20);

fn hostile_options() -> Options {
    let mut o = Options::default();
    o.handshake_timeout(Duration::from_secs(1));
    o
}

/// Reads until the server closes the connection (EOF or reset); panics on a hang.
async fn server_hangs_up(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(HANG, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue, // an alert, perhaps; keep reading
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "the server kept the {what} connection open");
}

/// A ClientHello as a real rustls client writes it.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(pki.client_tls(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    assert!(out.len() > 100, "a ClientHello is a few hundred bytes");
    out
}

async fn good_traffic(session: &Session, seed: u64) {
    let data = payload(seed, 256 * 1024);
    let mut s = session.open().await.unwrap();
    let (mut r, mut w) = tokio::io::split(&mut s);
    let (_, got) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert_eq!(sha256(&got), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_senders_are_disconnected_and_good_clients_keep_working() {
    let pki = Pki::new();
    let listener = Arc::new(
        Listener::bind("127.0.0.1:0", pki.server_tls(), hostile_options())
            .await
            .unwrap(),
    );
    let addr = listener.local_addr();

    // The server side: echo every stream of every session.
    let acceptor = listener.clone();
    tokio::spawn(async move {
        while let Ok(session) = acceptor.accept().await {
            tokio::spawn(async move {
                while let Ok(mut stream) = session.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(&mut stream);
                        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                            let _ = w.shutdown().await;
                        }
                    });
                }
            });
        }
    });

    // A good client with a session before the garbage arrives.
    let good = dial(
        &addr.to_string(),
        "localhost",
        pki.client_tls(),
        hostile_options(),
    )
    .await
    .unwrap();
    good_traffic(&good, 1).await;

    // 1. Random bytes.
    let mut random = TcpStream::connect(addr).await.unwrap();
    random.write_all(&payload(77, 4096)).await.unwrap();
    // 2. Plaintext HTTP.
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // 3. Half a ClientHello, then silence.
    let hello = client_hello(&pki);
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    // 4. A connection that sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // 5. A valid TLS handshake with ALPN qymux, then garbage instead of yamux.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client_tls())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(&payload(5, 1000)).await.unwrap();
    tls.flush().await.unwrap();

    // Meanwhile the good session, and a new one, work.
    let during = async {
        good_traffic(&good, 2).await;
        let fresh = dial(
            &addr.to_string(),
            "localhost",
            pki.client_tls(),
            hostile_options(),
        )
        .await
        .unwrap();
        good_traffic(&fresh, 3).await;
        fresh
    };
    let hangups = async {
        server_hangs_up(&mut random, "random bytes").await;
        server_hangs_up(&mut http, "plaintext HTTP").await;
        server_hangs_up(&mut half, "half ClientHello").await;
        server_hangs_up(&mut silent, "silent").await;
        let mut sink = Vec::new();
        let ended = tokio::time::timeout(HANG, tls.read_to_end(&mut sink)).await;
        assert!(
            ended.is_ok(),
            "the server kept the TLS-then-garbage session open"
        );
    };
    let (fresh, ()) = tokio::join!(during, hangups);

    // And afterwards.
    good_traffic(&good, 4).await;
    good_traffic(&fresh, 5).await;
    assert!(good.close_reason().is_none());
}

/// A session that has ended reads what the peer still sends, so that closing the socket
/// does not reset a peer still reading; but only until `close_timeout`: a peer that keeps
/// sending after our GoAway and close_notify, and never closes, cannot hold the
/// connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_sending_after_the_end_is_cut_off() {
    peer_keeps_sending_after_the_end(false).await;
}

/// As above, with an application that keeps the ended session (a registry, a handle in a
/// struct): the connection closes all the same, so ended sessions hold no sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_that_is_still_held_holds_no_socket() {
    peer_keeps_sending_after_the_end(true).await;
}

/// A listener with the hostile options and `close_timeout`, a peer that completed TLS
/// and speaks no yamux (the test writes what it likes, or nothing), and the server's
/// session for it.
async fn raw_tls_peer(
    close_timeout: Duration,
) -> (
    Listener,
    tokio_rustls::client::TlsStream<TcpStream>,
    Session,
) {
    let pki = Pki::new();
    let mut options = hostile_options();
    options.close_timeout(close_timeout);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options)
        .await
        .unwrap();
    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_tls())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let session = listener.accept().await.unwrap();
    (listener, tls, session)
}

async fn peer_keeps_sending_after_the_end(keep_session: bool) {
    let (_listener, tls, session) = raw_tls_peer(Duration::from_millis(500)).await;
    let (mut r, mut w) = tokio::io::split(tls);
    // Bytes that are no yamux frame: the session ends with a protocol error at the first
    // of them, and the flood goes on while the server closes.
    let flood = tokio::spawn(async move {
        let junk = vec![0xffu8; 64 * 1024];
        while w.write_all(&junk).await.is_ok() {}
    });
    let reason = tokio::time::timeout(HANG, session.closed())
        .await
        .expect("the session ended");
    assert!(
        matches!(
            reason,
            qymux_transport::CloseReason::Failed(qymux_transport::Error::Protocol(_))
        ),
        "{reason:?}"
    );
    // The server's GoAway and close_notify arrive (read here, so that the flood's writes
    // are not held up by our own receive buffer); then the server's driver stops reading
    // and the connection closes, and the flood's writes fail.
    let held = keep_session.then_some(session);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                // close_notify: TLS is done; the socket may still be open.
                break;
            }
        }
        // Keep the read half alive until the test ends.
        std::future::pending::<()>().await;
    });
    let flood_stopped = tokio::time::timeout(HANG, flood).await;
    assert!(
        flood_stopped.is_ok(),
        "the server kept reading a peer that never closes"
    );
    if let Some(session) = held {
        // The ended session still answers, with its close reason.
        assert!(session.close_reason().is_some());
        let opened = session.open().await;
        assert!(opened.is_err(), "an ended session opened a stream");
    }
}

/// A peer that stops reading fills the socket, and writers wait for it to drain. When the
/// session then ends (here a local `close`, whose graceful part times out on the full
/// socket) and the connection is dropped, every such writer fails with the close reason:
/// none waits for a socket that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_waiting_on_a_full_socket_fail_when_the_session_ends() {
    // The peer completes TLS, then reads nothing: no window updates, no draining.
    let (_listener, _silent, session) = raw_tls_peer(Duration::from_millis(200)).await;
    // 64 streams × their 256 KiB windows is more than the socket buffers of both ends
    // hold, so some writers end up waiting for the socket, the others for window.
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let mut stream = session.open().await.unwrap();
        let written = written.clone();
        writers.spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            loop {
                match stream.write(&chunk).await {
                    Ok(n) => written.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) => return e,
                };
            }
        });
    }
    // Wait until the writes have begun and then stopped making progress: everything is
    // queued or waiting. (On a loaded machine a pause may end this early; the test then
    // still checks that every writer ends, only perhaps not one parked on the socket.)
    let stalled = tokio::time::timeout(HANG, async {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = written.load(Ordering::Relaxed);
            if now > 0 && now == last {
                return;
            }
            last = now;
        }
    })
    .await;
    assert!(
        stalled.is_ok(),
        "the writers never stopped (is the peer reading?)"
    );
    tokio::time::timeout(HANG, session.close())
        .await
        .expect("close returns");
    let all_failed = tokio::time::timeout(HANG, async {
        while let Some(done) = writers.join_next().await {
            done.expect("a writer panicked");
        }
    })
    .await;
    assert!(
        all_failed.is_ok(),
        "a writer still waits for the dropped socket"
    );
}
