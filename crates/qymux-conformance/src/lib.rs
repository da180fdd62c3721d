//! The behaviour every Qymux backend must show, as one suite that each backend runs.
//!
//! A backend implements [`Backend`] (how to listen and dial) in its own test file and
//! calls [`conformance_suite!`]; every check below becomes a `#[tokio::test]` there. TCP,
//! QUIC and Auto sessions thus pass exactly the same tests:
//!
//! - [`round_trips_both_directions`], [`stream_visible_before_any_write`],
//!   [`many_concurrent_streams`] (100 × 2 MiB, checksummed), [`half_close`];
//! - [`abort_is_an_error_for_the_peer`] (while open, after the peer finished, on drop),
//!   [`abort_after_shutdown_fails_the_peers_writes`], [`double_shutdown_is_harmless`];
//! - [`close_is_clean_and_fails_pending_operations`], [`local_close_fails_waiting_operations`],
//!   [`local_close_fails_both_split_halves`], [`acknowledged_data_survives_close`];
//! - [`drain_finishes_streams_in_flight`];
//! - [`max_streams_is_enforced`], [`cancelled_open_holds_no_stream`],
//!   [`accept_backlog_overflow_refuses_the_excess`];
//! - [`refuses_untrusted_server`], [`refuses_wrong_server_name`],
//!   [`pinning_accepts_exactly_the_pinned_certificate`],
//!   [`mtls_refuses_missing_client_certificate`], [`mtls_checks_the_client_certificate`].
//!
//! Dead-peer detection needs a proxy between the two sides, so its checks live in
//! [`dead_peer`] (among them split halves on an idle timeout) and each backend calls them
//! with its transport (TCP or UDP).
//!
//! ```ignore
//! struct Tcp;
//! impl qymux_conformance::Backend for Tcp { /* listen, dial */ }
//! qymux_conformance::conformance_suite!(Tcp);
//! ```
#![deny(missing_docs)]

pub mod dead_peer;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use qymux_cert::{CertificateAuthority, Identity, self_signed};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{
    CloseReason, Error, HandshakeError, Limit, Listener, Options, Protocol, Result, Session, Stream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a backend listens and dials; implemented in each backend's test file.
pub trait Backend: Send + Sync + 'static {
    /// The backend's listener.
    type Listener: Listener;

    /// Binds `127.0.0.1:0` with `tls` and `options`.
    fn listen(
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> impl Future<Output = Result<Self::Listener>> + Send;

    /// Dials `addr`, verifying the server as `server_name`.
    fn dial(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        options: Options,
    ) -> impl Future<Output = Result<<Self::Listener as Listener>::Session>> + Send;
}

type SessionOf<B> = <<B as Backend>::Listener as Listener>::Session;

/// A CA with a server certificate for `localhost`/`127.0.0.1` and a client certificate.
#[derive(Debug)]
pub struct Pki {
    /// The CA.
    pub ca: CertificateAuthority,
    /// The server's identity.
    pub server: Identity,
    /// A client identity for mTLS.
    pub client: Identity,
}

impl Pki {
    /// Makes a fresh CA and its two certificates.
    pub fn new() -> Pki {
        let ca = CertificateAuthority::new("Qymux Conformance CA").expect("CA");
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .expect("server certificate");
        let client = ca
            .issue_client("conformance-agent")
            .expect("client certificate");
        Pki { ca, server, client }
    }

    /// A client config trusting the CA.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        ClientTls::with_ca(vec![self.ca.certificate().clone()])
            .build()
            .expect("client config")
    }

    /// A server config presenting the server certificate.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        ServerTls::new(self.server.clone())
            .build()
            .expect("server config")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Options for the suite: defaults with a shorter handshake timeout.
pub fn options() -> Options {
    let mut o = Options::default();
    o.handshake_timeout(Duration::from_secs(5));
    o
}

/// A connected pair: the listener (kept alive), the dialer's session, the accepted one.
#[allow(missing_debug_implementations)]
pub struct Pair<B: Backend> {
    /// The listener.
    pub listener: B::Listener,
    /// The dialer's session.
    pub client: SessionOf<B>,
    /// The listener's session.
    pub server: SessionOf<B>,
}

/// Listens and dials with the given options on each side.
pub async fn pair_with<B: Backend>(client: Options, server: Options) -> Pair<B> {
    let pki = Pki::new();
    let listener = B::listen(pki.server_tls(), server).await.expect("listen");
    let addr = listener.local_addr();
    let (c, s) = tokio::join!(
        B::dial(addr, "localhost", pki.client_tls(), client),
        listener.accept()
    );
    Pair {
        listener,
        client: c.expect("dial"),
        server: s.expect("accept"),
    }
}

/// Listens and dials with [`options`] on both sides.
pub async fn pair<B: Backend>() -> Pair<B> {
    pair_with::<B>(options(), options()).await
}

/// Deterministic pseudo-random bytes, different per seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Echoes every stream `session` accepts until EOF, then finishes its side.
pub fn echo_all<S: Session>(session: S) -> tokio::task::JoinHandle<()> {
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

/// Sends `data` on a new stream, finishes, and returns everything read back.
pub async fn round_trip<S: Session>(session: &S, data: &[u8]) -> Vec<u8> {
    let mut stream = session.open().await.expect("open");
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let writer = async {
        w.write_all(data).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        got
    };
    tokio::join!(writer, reader).1
}

/// Like [`round_trip`], returning the first error instead of panicking.
pub async fn try_round_trip<S: Session>(session: &S, data: &[u8]) -> Result<Vec<u8>> {
    let mut stream = session.open().await?;
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let writer = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (written, read) = tokio::join!(writer, reader);
    written.map_err(Error::io)?;
    read.map_err(Error::io)
}

/// How long an outcome of these checks may take before it counts as a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing after {HANG_GUARD:?}"))
}

/// Writes `chunk`s on `w` until a write fails (counting what was written in `written`),
/// and returns that error.
async fn write_until_error<W: AsyncWriteExt + Unpin>(
    mut w: W,
    written: Arc<AtomicUsize>,
) -> io::Error {
    let chunk = vec![0x5a; 64 * 1024];
    loop {
        if let Err(e) = w.write_all(&chunk).await {
            return e;
        }
        written.fetch_add(chunk.len(), Ordering::Relaxed);
    }
}

/// Waits until a writer counting into `written` has written something and then made no
/// progress for a while: it is blocked on flow control.
async fn stalled(what: &str, written: &AtomicUsize) {
    within(what, async {
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = written.load(Ordering::Relaxed);
            if now > 0 && now == last {
                return;
            }
            last = now;
        }
    })
    .await;
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

/// Streams opened from either end carry data both ways.
pub async fn round_trips_both_directions<B: Backend>() {
    let p = pair::<B>().await;
    let _a = echo_all(p.server.clone());
    let _b = echo_all(p.client.clone());
    let data = payload(1, 300_000);
    assert_eq!(
        round_trip(&p.client, &data).await,
        data,
        "dialer-opened stream"
    );
    let data = payload(2, 300_000);
    assert_eq!(
        round_trip(&p.server, &data).await,
        data,
        "listener-opened stream"
    );
}

/// `stats` counts stream bytes and streams each way, the same on both backends.
pub async fn stats_count_bytes_and_streams<B: Backend>() {
    let p = pair::<B>().await;
    let before = p.client.stats();
    assert_eq!(before.protocol, p.client.protocol());
    assert_eq!((before.bytes_sent, before.streams_opened), (0, 0));
    let mut opened = p.client.open().await.expect("open");
    let mut accepted = p.server.accept().await.expect("accept");
    assert!(p.client.stats().open_streams >= 1);
    opened.write_all(&payload(3, 1000)).await.expect("write");
    opened.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.expect("read");
    assert_eq!(got.len(), 1000);
    accepted
        .write_all(&payload(4, 500))
        .await
        .expect("write back");
    accepted.shutdown().await.expect("shutdown back");
    let mut back = Vec::new();
    opened.read_to_end(&mut back).await.expect("read back");
    assert_eq!(back.len(), 500);

    let (c, s) = (p.client.stats(), p.server.stats());
    assert_eq!((c.bytes_sent, c.bytes_received), (1000, 500), "{c:?}");
    assert_eq!((s.bytes_sent, s.bytes_received), (500, 1000), "{s:?}");
    assert_eq!((c.streams_opened, c.streams_accepted), (1, 0), "{c:?}");
    assert_eq!((s.streams_opened, s.streams_accepted), (0, 1), "{s:?}");
    assert_eq!(s.protocol, p.server.protocol());
    for rtt in [c.rtt, s.rtt].into_iter().flatten() {
        assert!(rtt < Duration::from_secs(10), "{rtt:?}");
    }
    // The same through a BoxSession.
    let boxed = qymux_transport::BoxSession::new(p.client.clone());
    assert_eq!(boxed.stats().bytes_sent, 1000);
}

/// The peer's accept sees a stream before anything is written on it.
pub async fn stream_visible_before_any_write<B: Backend>() {
    let p = pair::<B>().await;
    for (opener, acceptor) in [(&p.client, &p.server), (&p.server, &p.client)] {
        let mut opened = opener.open().await.expect("open");
        let mut accepted = tokio::time::timeout(Duration::from_secs(10), acceptor.accept())
            .await
            .expect("accept must not wait for data")
            .expect("accept");
        accepted.write_all(b"greeting").await.expect("write");
        let mut buf = [0u8; 8];
        opened.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"greeting");
    }
}

/// 100 streams at once, 2 MiB each, SHA-256 checked.
pub async fn many_concurrent_streams<B: Backend>() {
    let p = pair::<B>().await;
    let _echo = echo_all(p.server.clone());
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = p.client.clone();
        tasks.push(tokio::spawn(async move {
            let data = payload(i, 2 * 1024 * 1024 + i as usize);
            let got = round_trip(&client, &data).await;
            assert_eq!(sha256(&got), sha256(&data), "stream {i}");
        }));
    }
    for t in tasks {
        t.await.expect("stream task");
    }
}

/// After `shutdown` the peer reads EOF and can still reply.
pub async fn half_close<B: Backend>() {
    let p = pair::<B>().await;
    let mut stream = p.client.open().await.expect("open");
    stream.write_all(b"question").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut accepted = p.server.accept().await.expect("accept");
    let mut request = Vec::new();
    accepted
        .read_to_end(&mut request)
        .await
        .expect("read request");
    assert_eq!(request, b"question");
    accepted.write_all(b"answer").await.expect("write reply");
    accepted.shutdown().await.expect("shutdown reply");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read reply");
    assert_eq!(reply, b"answer");
}

/// An aborted or dropped stream is an error for the peer, also after the peer finished.
pub async fn abort_is_an_error_for_the_peer<B: Backend>() {
    let p = pair::<B>().await;
    // While open both ways: the reader sees a reset.
    let mut stream = p.client.open().await.expect("open");
    let mut accepted = p.server.accept().await.expect("accept");
    accepted
        .write_all(&payload(3, 10_000))
        .await
        .expect("write");
    accepted.abort();
    let mut got = Vec::new();
    assert_reset(stream.read_to_end(&mut got).await.unwrap_err());

    // After the peer finished its side: a truncated reply is still an error, not EOF.
    for explicit in [true, false] {
        let mut stream = p.client.open().await.expect("open");
        stream.write_all(b"request").await.expect("write");
        stream.shutdown().await.expect("shutdown");
        let mut accepted = p.server.accept().await.expect("accept");
        let mut request = Vec::new();
        accepted.read_to_end(&mut request).await.expect("read");
        accepted.write_all(b"half a rep").await.expect("write");
        if explicit {
            accepted.abort();
        } else {
            drop(accepted);
        }
        let mut reply = Vec::new();
        assert_reset(stream.read_to_end(&mut reply).await.unwrap_err());
    }
}

/// Dropping or aborting a stream after our own `shutdown` is still a reset for the peer
/// while it writes: its writer, blocked on flow control because this side does not read,
/// fails promptly with [`Error::StreamReset`] rather than waiting for credit that never
/// comes (and its `shutdown` would have been answered the same way).
///
/// What the peer reads: our side was finished before the abort, so it may read our data,
/// complete, and EOF (QUIC does not reset a receive side that has all its data; Qymux's
/// yamux engine keeps a finished side readable after a RST too), or fail with
/// `StreamReset` (a QUIC abort that overtook the FIN; hashicorp yamux, which discards a
/// reset stream). Never a truncated stream that ends in EOF. The session is unharmed
/// either way.
pub async fn abort_after_shutdown_fails_the_peers_writes<B: Backend>() {
    let p = pair::<B>().await;
    for explicit in [true, false] {
        let mut ours = p.client.open().await.expect("open");
        ours.write_all(b"request").await.expect("write");
        ours.shutdown().await.expect("shutdown");
        let theirs = p.server.accept().await.expect("accept");
        let (mut their_reader, their_writer) = tokio::io::split(theirs);
        let written = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_until_error(their_writer, written.clone()));
        stalled("the peer's writer filling our window", &written).await;
        if explicit {
            ours.abort();
        } else {
            drop(ours);
        }
        let err = within(
            "the peer's blocked write after our abort (it must fail, not wait for credit)",
            writer,
        )
        .await
        .expect("writer task");
        assert_reset(err);
        let mut got = Vec::new();
        let read = within(
            "the peer's read after our abort",
            their_reader.read_to_end(&mut got),
        )
        .await;
        match read {
            Ok(_) => assert_eq!(got, b"request", "our finished side, complete"),
            Err(e) => assert_reset(e),
        }
    }
    let _echo = echo_all(p.server.clone());
    let data = payload(6, 100_000);
    assert_eq!(
        round_trip(&p.client, &data).await,
        data,
        "the session goes on"
    );
    assert!(p.client.close_reason().is_none() && p.server.close_reason().is_none());
}

/// `shutdown` twice is `Ok` and finishes the stream once: the peer reads the data, then
/// EOF (again EOF if it reads on, never an error), and can still reply. A hashicorp peer
/// answers a second FIN with GoAway(protocol error), so this guards the session too: it
/// stays up and carries another stream.
pub async fn double_shutdown_is_harmless<B: Backend>() {
    let p = pair::<B>().await;
    let data = payload(7, 100_000);
    let mut stream = p.client.open().await.expect("open");
    stream.write_all(&data).await.expect("write");
    stream.shutdown().await.expect("first shutdown");
    stream.shutdown().await.expect("a second shutdown is Ok");
    let mut accepted = p.server.accept().await.expect("accept");
    let mut got = Vec::new();
    accepted.read_to_end(&mut got).await.expect("read");
    assert_eq!(sha256(&got), sha256(&data));
    let mut more = [0u8; 16];
    assert_eq!(
        accepted.read(&mut more).await.expect("a read after EOF"),
        0,
        "EOF stays EOF"
    );
    accepted.write_all(b"reply").await.expect("reply");
    accepted.shutdown().await.expect("shutdown reply");
    accepted.shutdown().await.expect("shutdown reply again");
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).await.expect("read reply");
    assert_eq!(reply, b"reply");
    drop((stream, accepted));

    let _echo = echo_all(p.server.clone());
    let data = payload(8, 100_000);
    assert_eq!(
        round_trip(&p.client, &data).await,
        data,
        "the session goes on"
    );
    assert!(p.client.close_reason().is_none() && p.server.close_reason().is_none());
}

/// A graceful close is clean for the peer; operations afterwards fail with typed errors.
pub async fn close_is_clean_and_fails_pending_operations<B: Backend>() {
    let p = pair::<B>().await;
    let mut stream = p.server.open().await.expect("open");
    let _accepted = p.client.accept().await.expect("accept");
    p.client.close().await;
    assert!(matches!(p.client.close_reason(), Some(CloseReason::Local)));
    match p.server.closed().await {
        CloseReason::Peer(_) => {}
        other => panic!("the peer must see a clean close, got {other:?}"),
    }
    let mut buf = Vec::new();
    let err = stream.read_to_end(&mut buf).await.unwrap_err();
    assert!(
        matches!(qymux_error(&err), Some(Error::ClosedByPeer(_))),
        "{err:?}"
    );
    assert!(matches!(p.server.open().await, Err(Error::ClosedByPeer(_))));
    assert!(matches!(p.client.open().await, Err(Error::Closed)));
    assert!(matches!(
        p.server.accept().await,
        Err(Error::ClosedByPeer(_))
    ));
    p.client.close().await; // twice is harmless
}

/// Reads and writes already waiting on a stream fail when this side closes the session.
pub async fn local_close_fails_waiting_operations<B: Backend>() {
    let p = pair::<B>().await;
    let mut reading = p.client.open().await.expect("open");
    let _peer_side = p.server.accept().await.expect("accept");
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        reading.read_to_end(&mut buf).await
    });
    // Fill the flow-control window so this writer waits for credit that never comes.
    let mut writing = p.client.open().await.expect("open");
    let _unread = p.server.accept().await.expect("accept");
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            writing.write_all(&chunk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    // Both are waiting (or about to); closing must end them, not leave them hanging.
    tokio::task::yield_now().await;
    p.client.close().await;
    let read = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("a waiting read must fail when the session closes, not hang")
        .expect("reader task");
    let err = read.expect_err("no EOF: the peer never finished the stream");
    assert!(matches!(qymux_error(&err), Some(Error::Closed)), "{err:?}");
    let write = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("a waiting write must fail when the session closes, not hang")
        .expect("writer task");
    assert!(write.is_err());
}

/// The two halves of one stream split with [`tokio::io::split`], each waiting in its own
/// task (the reader for data that never comes, the writer on flow control because the
/// peer never reads), both fail with [`Error::Closed`] when this side closes the
/// session: each half is woken, not only the one that waited last.
pub async fn local_close_fails_both_split_halves<B: Backend>() {
    let p = pair::<B>().await;
    let stream = p.client.open().await.expect("open");
    let _silent_peer = p.server.accept().await.expect("accept");
    let (mut read_half, write_half) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        read_half.read_to_end(&mut buf).await
    });
    let written = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_until_error(write_half, written.clone()));
    stalled("the write half filling the peer's window", &written).await;
    p.client.close().await;
    let read = within("the read half after a local close", reader)
        .await
        .expect("reader task");
    let err = read.expect_err("no EOF: the peer never finished the stream");
    assert!(matches!(qymux_error(&err), Some(Error::Closed)), "{err:?}");
    let err = within("the write half after a local close", writer)
        .await
        .expect("writer task");
    assert!(matches!(qymux_error(&err), Some(Error::Closed)), "{err:?}");
}

/// Data the peer acknowledged (it read it and said so) is never lost to a close.
pub async fn acknowledged_data_survives_close<B: Backend>() {
    let p = pair::<B>().await;
    let data = payload(5, 4 * 1024 * 1024);
    let server = p.server.clone();
    let receiver = tokio::spawn(async move {
        let mut s = server.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        s.write_all(b"ack").await.expect("ack");
        s.shutdown().await.expect("shutdown");
        got
    });
    let mut s = p.client.open().await.expect("open");
    s.write_all(&data).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut ack = Vec::new();
    s.read_to_end(&mut ack).await.expect("read ack");
    assert_eq!(ack, b"ack");
    p.client.close().await;
    let got = receiver.await.expect("receiver");
    assert_eq!(sha256(&got), sha256(&data));
}

/// Opens beyond `max_streams` fail at once; streams beyond the peer's limit are reset.
pub async fn max_streams_is_enforced<B: Backend>() {
    let mut limited = options();
    limited.max_streams(4);
    let p = pair_with::<B>(limited.clone(), options()).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(p.client.open().await.expect("open within the limit"));
    }
    match p.client.open().await {
        Err(Error::LimitReached(Limit::Streams(4))) => {}
        Err(e) => panic!("expected LimitReached(Streams(4)), got {e:?}"),
        Ok(_) => panic!("expected LimitReached(Streams(4)), got a stream"),
    }
    held.pop();
    let _again = p.client.open().await.expect("a slot was freed");
    drop(held);

    // The listener allows 2; the dialer opens 3 and writes on each: the third fails.
    let mut server_limited = options();
    server_limited.max_streams(2);
    let p = pair_with::<B>(options(), server_limited).await;
    let _echo = echo_all(p.server.clone());
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(p.client.open().await.expect("open"));
    }
    // Let the first two reach the server before the third.
    for s in &mut streams {
        s.write_all(b"ok").await.expect("write");
        s.flush().await.expect("flush");
    }
    let third = tokio::time::timeout(Duration::from_secs(10), async {
        let mut third = p.client.open().await?;
        let _ = third.write_all(b"x").await;
        let mut buf = Vec::new();
        third.read_to_end(&mut buf).await.map_err(Error::io)
    })
    .await
    .expect("the excess stream must not hang");
    match third {
        // Refused by the peer: reset, or (QUIC) not granted so the open itself failed.
        Err(Error::StreamReset | Error::LimitReached(_)) => {}
        other => panic!("a stream beyond the peer's limit must fail, got {other:?}"),
    }
    for (i, mut s) in streams.into_iter().enumerate() {
        s.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"ok", "stream {i} within the limit is unharmed");
    }
}

/// Opens that are cancelled (the future dropped before or while it runs, or cut by a
/// zero or tiny timeout) hold no stream slot: with `max_streams` 3 on the dialer, six
/// such opens while nothing is open and six while the listener's limit (2) makes opens
/// wait (over QUIC they wait for a stream grant; over TCP they complete and the listener
/// resets them) leave every slot free: a third open is not refused locally, and streams
/// keep round-tripping afterwards.
pub async fn cancelled_open_holds_no_stream<B: Backend>() {
    const MAX: usize = 3;
    let mut client = options();
    client.max_streams(MAX);
    let mut server = options();
    server.max_streams(2);
    let p = pair_with::<B>(client, server).await;
    let _echo = echo_all(p.server.clone());
    let mut cx = Context::from_waker(Waker::noop());
    for i in 0..2 * MAX {
        match i % 3 {
            0 => drop(p.client.open()),
            1 => {
                let mut opening = pin!(p.client.open());
                // Completed or not, the future (or the stream) goes.
                let _ = opening.as_mut().poll(&mut cx);
            }
            _ => drop(tokio::time::timeout(Duration::ZERO, p.client.open()).await),
        }
    }

    // Two streams the listener holds: its limit is reached.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(held_stream(&p.client).await);
    }
    for i in 0..2 * MAX {
        let tiny = Duration::from_millis(if i % 2 == 0 { 0 } else { 20 });
        drop(tokio::time::timeout(tiny, p.client.open()).await);
    }
    // The dialer's third slot is free: the open is not refused locally (the listener
    // may still refuse it: QUIC withholds the grant, TCP resets the stream).
    match within("an open at the listener's limit", p.client.open()).await {
        Err(Error::LimitReached(Limit::Streams(n))) => {
            panic!("a cancelled open kept a slot: refused locally at {n}")
        }
        Ok(_) | Err(Error::LimitReached(Limit::PeerStreams(_))) => {}
        Err(e) => panic!("expected a stream or Limit::PeerStreams, got {e:?}"),
    }
    drop(held);
    for i in 0..2 * MAX {
        let data = payload(20 + i as u64, 10_000);
        assert_eq!(
            patient_round_trip(&p.client, &data).await,
            data,
            "round trip {i}"
        );
    }
}

/// A stream the peer (an echo) has accepted and holds, tried again while the peer still
/// releases the streams of a moment ago.
async fn held_stream<S: Session>(session: &S) -> S::Stream {
    within("a stream within the peer's limit", async {
        loop {
            let attempt = async {
                let mut s = session.open().await?;
                s.write_all(b"held").await.map_err(Error::io)?;
                let mut echo = [0u8; 4];
                s.read_exact(&mut echo).await.map_err(Error::io)?;
                Ok::<_, Error>(s)
            };
            match attempt.await {
                Ok(s) => return s,
                Err(Error::StreamReset | Error::LimitReached(Limit::PeerStreams(_))) => {}
                Err(e) => panic!("open: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// A round trip on a new stream, tried again while the peer still releases the streams
/// of a moment ago (it then refuses: a reset over TCP, no grant over QUIC).
async fn patient_round_trip<S: Session>(session: &S, data: &[u8]) -> Vec<u8> {
    within("a round trip within the peer's limit", async {
        loop {
            match try_round_trip(session, data).await {
                Ok(got) => return got,
                Err(Error::StreamReset | Error::LimitReached(Limit::PeerStreams(_))) => {}
                Err(e) => panic!("round trip: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Streams the peer opens while [`Options::accept_backlog`] of them wait for an
/// application that does not accept are refused, and those within the backlog work
/// once accepted. Over TCP the excess streams are reset ([`Error::StreamReset`]); over
/// QUIC the backlog caps the stream grant, so the excess opens wait for a grant and fail
/// with [`Limit::PeerStreams`]. Once the application accepted, new streams get through.
pub async fn accept_backlog_overflow_refuses_the_excess<B: Backend>() {
    const BACKLOG: usize = 4;
    let mut server = options();
    server.accept_backlog(BACKLOG);
    let p = pair_with::<B>(options(), server).await;
    let mut waiting = Vec::new();
    for i in 0..BACKLOG {
        let mut s = p.client.open().await.expect("open within the backlog");
        s.write_all(format!("stream {i}").as_bytes())
            .await
            .expect("write");
        s.flush().await.expect("flush");
        waiting.push(s);
    }
    for _ in 0..2 {
        let excess = within("a stream beyond the backlog", async {
            let mut s = p.client.open().await?;
            let _ = s.write_all(b"excess").await;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.map_err(Error::io)
        })
        .await;
        match (p.client.protocol(), excess) {
            (Protocol::Tcp, Err(Error::StreamReset)) => {}
            (Protocol::Quic, Err(Error::LimitReached(Limit::PeerStreams(_)))) => {}
            (protocol, other) => panic!("{protocol}: a stream beyond the backlog, got {other:?}"),
        }
    }
    let mut accepted = Vec::new();
    for _ in 0..BACKLOG {
        let mut s = within("accepting a stream of the backlog", p.server.accept())
            .await
            .expect("accept");
        let mut greeting = [0u8; 8];
        s.read_exact(&mut greeting).await.expect("read");
        s.write_all(&greeting).await.expect("reply");
        s.shutdown().await.expect("shutdown");
        accepted.push(s);
    }
    for (i, mut s) in waiting.into_iter().enumerate() {
        s.shutdown().await.expect("shutdown");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("read reply");
        assert_eq!(reply, format!("stream {i}").as_bytes(), "stream {i}");
    }
    drop(accepted);
    let _echo = echo_all(p.server.clone());
    let data = payload(9, 10_000);
    assert_eq!(
        patient_round_trip(&p.client, &data).await,
        data,
        "a new stream once the backlog was accepted"
    );
}

/// The listener drains its session ([`Session::drain`]) while the dialer has streams in
/// flight: they complete with all their data (SHA-256 checked); new opens from the
/// dialer fail with a typed error (TCP: [`Error::ClosedByPeer`] once the GoAway is
/// there, a reset before; QUIC: a reset while its grant lasts, then
/// [`Limit::PeerStreams`]); the listener's own opens fail with [`Error::Closed`];
/// `drain` returns only after the last stream is done, and promptly then (within 3 s,
/// not on some timer), and both sides see a clean close.
pub async fn drain_finishes_streams_in_flight<B: Backend>() {
    const STREAMS: usize = 4;
    const SIZE: usize = 1 << 20;
    const HEAD: usize = 4096;
    let mut server = options();
    // Over QUIC the dialer keeps its grant: a small one refuses fewer streams one by one.
    server.max_streams(8);
    let p = pair_with::<B>(options(), server).await;
    let _echo = echo_all(p.server.clone());
    let mut in_flight = Vec::new();
    for i in 0..STREAMS {
        let data = payload(40 + i as u64, SIZE);
        let mut s = p.client.open().await.expect("open");
        s.write_all(&data[..HEAD]).await.expect("write");
        let mut head = vec![0u8; HEAD];
        s.read_exact(&mut head).await.expect("echo of the head");
        assert_eq!(head, data[..HEAD]);
        in_flight.push((s, data));
    }
    let draining = tokio::spawn({
        let server = p.server.clone();
        async move { server.drain().await }
    });

    within("the dialer's opens being refused", async {
        for _ in 0..1000 {
            match p.client.open().await {
                Err(Error::ClosedByPeer(_)) => return,
                Err(Error::LimitReached(Limit::PeerStreams(_)))
                    if p.client.protocol() == Protocol::Quic =>
                {
                    return;
                }
                // Opened before the refusal reached this side: the peer resets it, unless
                // it arrived before the drain began; then it is in flight like the others.
                Err(Error::StreamReset) => {}
                Err(e) => panic!("an open during the peer's drain: {e:?}"),
                Ok(mut s) => match finish_checked(&mut s, b"late").await {
                    Ok(echo) => assert_eq!(echo, b"late", "a stream that beat the drain"),
                    Err(Error::StreamReset) => {}
                    Err(e) => panic!("a stream opened during the peer's drain: {e:?}"),
                },
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the dialer could still open streams");
    })
    .await;
    assert!(
        matches!(p.server.open().await, Err(Error::Closed)),
        "the draining side opens no stream"
    );

    let (mut last, last_data) = in_flight.pop().expect("streams");
    for (i, (mut s, data)) in in_flight.into_iter().enumerate() {
        let got = finish(&mut s, &data[HEAD..]).await;
        assert_eq!(sha256(&got), sha256(&data[HEAD..]), "stream {i}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !draining.is_finished() && p.server.close_reason().is_none(),
        "the drain ended with a stream in flight"
    );
    let got = finish(&mut last, &last_data[HEAD..]).await;
    assert_eq!(sha256(&got), sha256(&last_data[HEAD..]), "the last stream");
    drop(last);
    // The close is one message away: far less than the keep-alive interval or the close
    // timeout, whose timers must not be what ends the drain.
    let prompt = Duration::from_secs(3);
    let dropped = tokio::time::Instant::now();
    within("drain after the last stream", draining)
        .await
        .expect("drain task");
    let took = dropped.elapsed();
    assert!(
        took < prompt,
        "drain returned {took:?} after the last stream was dropped"
    );
    // The drainer closes once its last stream is gone (`Local`); over TCP the dialer, told
    // by the GoAway, may close first once its own streams are gone (`Peer` then).
    match p.server.close_reason() {
        Some(CloseReason::Local | CloseReason::Peer(_)) => {}
        other => panic!("the drained side must end cleanly, got {other:?}"),
    }
    match within("the dialer seeing the end", p.client.closed()).await {
        CloseReason::Peer(_) => {}
        other => panic!("the dialer must see a clean close, got {other:?}"),
    }
}

/// Like [`finish`], returning the first error instead of panicking.
async fn finish_checked<S: Stream>(stream: &mut S, rest: &[u8]) -> Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        w.write_all(rest).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (written, read) = tokio::join!(writer, reader);
    // A refused stream may fail the write first; the read says why.
    let got = read.map_err(Error::io)?;
    written.map_err(Error::io)?;
    Ok(got)
}

/// Writes `rest` on `stream`, finishes it, and returns everything read until EOF.
async fn finish<S: Stream>(stream: &mut S, rest: &[u8]) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        w.write_all(rest).await.expect("write");
        w.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.expect("read");
        got
    };
    tokio::join!(writer, reader).1
}

async fn refused<B: Backend>(
    listener_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
) -> HandshakeError {
    let listener = B::listen(listener_tls, options()).await.expect("listen");
    match B::dial(listener.local_addr(), "localhost", client_tls, options()).await {
        Err(Error::Handshake(e)) => e,
        Err(e) => panic!("expected a handshake error, got {e:?}"),
        Ok(_) => panic!("expected a handshake error, got a session"),
    }
}

/// A server certificate from a CA the dialer does not trust is refused.
pub async fn refuses_untrusted_server<B: Backend>() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let e = refused::<B>(pki.server_tls(), stranger.client_tls()).await;
    assert!(
        matches!(e, HandshakeError::UntrustedCertificate(_)),
        "{e:?}"
    );
}

/// A server certificate valid for another name than the one dialed is refused.
pub async fn refuses_wrong_server_name<B: Backend>() {
    let pki = Pki::new();
    let listener = B::listen(pki.server_tls(), options())
        .await
        .expect("listen");
    match B::dial(
        listener.local_addr(),
        "not-the-server.example",
        pki.client_tls(),
        options(),
    )
    .await
    {
        Err(Error::Handshake(HandshakeError::UntrustedCertificate(_))) => {}
        Err(e) => panic!("expected UntrustedCertificate, got {e:?}"),
        Ok(_) => panic!("expected UntrustedCertificate, got a session"),
    }
}

/// A pinned self-signed certificate is accepted whatever the name; another is refused,
/// and the error names both fingerprints.
pub async fn pinning_accepts_exactly_the_pinned_certificate<B: Backend>() {
    let server = self_signed(&["localhost"]).expect("self-signed");
    let tls = ServerTls::new(server.clone())
        .build()
        .expect("server config");
    let listener = B::listen(tls, options()).await.expect("listen");
    let addr = listener.local_addr();

    let good = ClientTls::with_pinned(server.fingerprint())
        .build()
        .expect("config");
    let (session, accepted) = tokio::join!(
        B::dial(addr, "any-name-when-pinned", good, options()),
        listener.accept()
    );
    let (session, _accepted) = (session.expect("pinned dial"), accepted.expect("accept"));
    let peer = session.peer_identity().expect("the server's certificate");
    assert_eq!(
        qymux_cert::Fingerprint::of(peer.end_entity()),
        server.fingerprint()
    );

    let other = self_signed(&["localhost"])
        .expect("self-signed")
        .fingerprint();
    let wrong = ClientTls::with_pinned(other).build().expect("config");
    match B::dial(addr, "localhost", wrong, options()).await {
        Err(Error::Handshake(HandshakeError::PinMismatch { expected, actual })) => {
            assert_eq!(expected, other.to_string());
            assert_eq!(actual, server.fingerprint().to_string());
        }
        Err(e) => panic!("expected PinMismatch, got {e:?}"),
        Ok(_) => panic!("expected PinMismatch, got a session"),
    }
}

/// With mTLS, a client certificate from an unknown CA is refused at dial time; the right
/// one gives a session whose server side knows the client's identity.
pub async fn mtls_checks_the_client_certificate<B: Backend>() {
    let pki = Pki::new();
    let tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .expect("server config");
    let listener = B::listen(tls, options()).await.expect("listen");
    let addr = listener.local_addr();
    let trust = || ClientTls::with_ca(vec![pki.ca.certificate().clone()]);

    let stranger = CertificateAuthority::new("Stranger CA")
        .expect("CA")
        .issue_client("intruder")
        .expect("client certificate");
    let tls = trust().client_identity(stranger).build().expect("config");
    match B::dial(addr, "localhost", tls, options()).await {
        Err(Error::Handshake(HandshakeError::ClientCertificateRefused(_))) => {}
        Err(e) => panic!("expected ClientCertificateRefused, got {e:?}"),
        Ok(_) => panic!("expected ClientCertificateRefused, got a session"),
    }

    let tls = trust()
        .client_identity(pki.client.clone())
        .build()
        .expect("config");
    let (session, accepted) = tokio::join!(
        B::dial(addr, "localhost", tls, options()),
        listener.accept()
    );
    session.expect("dial with the right certificate");
    let accepted = accepted.expect("only the good client becomes a session");
    let peer = accepted.peer_identity().expect("mTLS identity");
    assert_eq!(peer.end_entity(), pki.client.end_entity());
}

/// With mTLS, a dialer without a client certificate is refused at dial time.
pub async fn mtls_refuses_missing_client_certificate<B: Backend>() {
    let pki = Pki::new();
    let tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .expect("server config");
    let e = refused::<B>(tls, pki.client_tls()).await;
    assert!(
        matches!(
            e,
            HandshakeError::ClientCertificateRequired | HandshakeError::ClientCertificateRefused(_)
        ),
        "{e:?}"
    );
}

/// Stamps out every check of this crate as a `#[tokio::test]` for `$backend`.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:ty) => {
        $crate::conformance_suite!(@tests $backend;
            round_trips_both_directions,
            stats_count_bytes_and_streams,
            stream_visible_before_any_write,
            many_concurrent_streams,
            half_close,
            abort_is_an_error_for_the_peer,
            abort_after_shutdown_fails_the_peers_writes,
            double_shutdown_is_harmless,
            close_is_clean_and_fails_pending_operations,
            local_close_fails_waiting_operations,
            local_close_fails_both_split_halves,
            acknowledged_data_survives_close,
            drain_finishes_streams_in_flight,
            max_streams_is_enforced,
            cancelled_open_holds_no_stream,
            accept_backlog_overflow_refuses_the_excess,
            refuses_untrusted_server,
            refuses_wrong_server_name,
            pinning_accepts_exactly_the_pinned_certificate,
            mtls_refuses_missing_client_certificate,
            mtls_checks_the_client_certificate,
        );
    };
    (@tests $backend:ty; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::$name::<$backend>().await;
            }
        )*
    };
}
