//! Qymux TCP against the `yamux` crate (rust-libp2p's implementation of hashicorp yamux),
//! an independent second peer, in both roles: the crate dials a [`qymux_tcp::Listener`] as
//! the yamux client (`yamux_client::*`), and accepts a [`qymux_tcp::dial`] as the yamux
//! server (`yamux_server::*`). The crate runs over its own tokio-rustls connection with
//! ALPN `qymux`, exactly what the wire contract promises any peer. In each role:
//!
//! - `streams_both_ways`: 20 concurrent streams, 10 opened by each side, each carrying
//!   different data both ways at once (about 3.4 MiB each way in all, SHA-256 checked);
//!   stream ids follow the hashicorp roles (odd for the client, even for the server).
//! - `half_close`: a FIN is EOF for the peer while the other direction keeps working
//!   (beyond the initial 256 KiB window), whichever side opened the stream and
//!   whichever side finishes first.
//! - `reset`: a stream that Qymux aborts fails the crate's writes; a stream that the
//!   crate drops unfinished fails Qymux's reads and writes with [`Error::StreamReset`].
//! - `abort_after_own_fin`: a stream that Qymux aborts after its own FIN is reset too
//!   (RST), so the crate's writer fails instead of waiting for window forever.
//! - `skipped_stream_ids`: streams the crate opens and drops before their first frame
//!   leave gaps in its stream ids (and an RST for an id never announced); Qymux accepts
//!   the next stream, with the crate's id, and the session carries on.
//! - `yamux_closes_session`: the crate's `poll_close` (GoAway, then TLS close) is a clean
//!   close for Qymux ([`CloseReason::Peer`]): waiting and later operations fail with
//!   [`Error::ClosedByPeer`], and an unfinished stream is an error, not EOF.
//! - `qymux_closes_session`: Qymux's `close` ends the crate's connection without error.
//!
//! The crate moves bytes only while a task polls its connection; [`YamuxPeer`] is that
//! task. The crate announces a stream only with its first frame (no SYN at open), so the
//! streams it opens write before Qymux's accept is expected to see them.

mod common;

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::{Pki, options, payload, sha256};
use qymux_tcp::{Listener, Session};
use qymux_transport::{CloseReason, Error, Stream as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The bound on every wait: a failure fails the test, it never hangs it.
const WAIT: Duration = Duration::from_secs(30);

/// A stream of the `yamux` crate, seen through tokio's IO traits like a Qymux stream.
type YamuxStream = Compat<yamux::Stream>;

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?}: {what}"))
}

/// The `yamux` crate's role; Qymux takes the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The crate dials a `qymux_tcp::Listener`.
    YamuxClient,
    /// The crate accepts a `qymux_tcp::dial`.
    YamuxServer,
}

/// Which implementation does something on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Qymux,
    Yamux,
}

/// What the crate's connection task is asked to do.
enum Command {
    Open(oneshot::Sender<yamux::Result<yamux::Stream>>),
    Close(oneshot::Sender<yamux::Result<()>>),
}

/// One `yamux::Connection` and the task that drives it: it opens streams on request,
/// hands over inbound ones, and closes the connection on request.
struct YamuxPeer {
    commands: mpsc::UnboundedSender<Command>,
    inbound: mpsc::UnboundedReceiver<yamux::Stream>,
    driver: JoinHandle<yamux::Result<()>>,
}

impl YamuxPeer {
    fn start<T>(io: T, mode: yamux::Mode) -> YamuxPeer
    where
        T: futures::AsyncRead + futures::AsyncWrite + Unpin + Send + 'static,
    {
        let connection = yamux::Connection::new(io, yamux::Config::default(), mode);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(connection, commands_rx, inbound_tx));
        YamuxPeer {
            commands,
            inbound,
            driver,
        }
    }

    /// Opens a stream; the peer learns of it only with its first frame.
    async fn open(&self) -> YamuxStream {
        let (reply, opened) = oneshot::channel();
        self.commands
            .send(Command::Open(reply))
            .expect("yamux driver gone");
        within("yamux open", opened)
            .await
            .expect("yamux driver gone")
            .expect("yamux open")
            .compat()
    }

    async fn accept(&mut self) -> YamuxStream {
        within("yamux accept", self.inbound.recv())
            .await
            .expect("yamux connection ended")
            .compat()
    }

    /// Closes the connection gracefully: GoAway, then the TLS and TCP close.
    async fn close(&self) -> yamux::Result<()> {
        let (reply, closed) = oneshot::channel();
        self.commands
            .send(Command::Close(reply))
            .expect("yamux driver gone");
        within("yamux close", closed)
            .await
            .expect("yamux driver gone")
    }

    /// How the connection ended, once it has.
    async fn ended(self) -> yamux::Result<()> {
        within("yamux connection end", self.driver)
            .await
            .expect("yamux driver panicked")
    }
}

/// Polls the connection until it ends: opens streams in request order, passes inbound
/// streams on, and once asked to close, only closes.
async fn drive<T>(
    mut connection: yamux::Connection<T>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    inbound: mpsc::UnboundedSender<yamux::Stream>,
) -> yamux::Result<()>
where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut opens: VecDeque<oneshot::Sender<yamux::Result<yamux::Stream>>> = VecDeque::new();
    let mut close: Option<oneshot::Sender<yamux::Result<()>>> = None;
    poll_fn(|cx| {
        while let Poll::Ready(Some(command)) = commands.poll_recv(cx) {
            match command {
                Command::Open(reply) => opens.push_back(reply),
                Command::Close(reply) => close = Some(reply),
            }
        }
        if close.is_some() {
            let Poll::Ready(closed) = connection.poll_close(cx) else {
                return Poll::Pending;
            };
            if let Some(reply) = close.take() {
                let _ = reply.send(closed);
            }
            return Poll::Ready(Ok(()));
        }
        while !opens.is_empty() {
            let Poll::Ready(opened) = connection.poll_new_outbound(cx) else {
                break;
            };
            if let Some(reply) = opens.pop_front() {
                let _ = reply.send(opened);
            }
        }
        loop {
            match connection.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => {
                    let _ = inbound.send(stream);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// A Qymux session and the `yamux` crate connected to each other over TLS.
struct Pair {
    qymux: Session,
    yamux: YamuxPeer,
    /// Kept alive while the pair is in use (when Qymux is the listener).
    _listener: Option<Listener>,
}

async fn connect(role: Role) -> Pair {
    let pki = Pki::new();
    match role {
        Role::YamuxClient => {
            let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
                .await
                .expect("bind");
            let (tls, session) = within(
                "connect",
                futures::future::join(
                    tls_connect(listener.local_addr(), pki.client_tls()),
                    listener.accept(),
                ),
            )
            .await;
            Pair {
                qymux: session.expect("Qymux accept"),
                yamux: YamuxPeer::start(tls.compat(), yamux::Mode::Client),
                _listener: Some(listener),
            }
        }
        Role::YamuxServer => {
            let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = tcp.local_addr().expect("local address");
            // The crate's connection must be running while Qymux dials: the dial returns
            // only once the server's first yamux frame arrived.
            let yamux = async {
                let tls = tls_accept(tcp, pki.server_tls()).await;
                YamuxPeer::start(tls.compat(), yamux::Mode::Server)
            };
            let (yamux, session) = within(
                "connect",
                futures::future::join(
                    yamux,
                    qymux_tcp::dial(&addr.to_string(), "localhost", pki.client_tls(), options()),
                ),
            )
            .await;
            Pair {
                qymux: session.expect("Qymux dial"),
                yamux,
                _listener: None,
            }
        }
    }
}

async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with Qymux");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"qymux"[..]));
    tls
}

async fn tls_accept(
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
) -> tokio_rustls::server::TlsStream<TcpStream> {
    let (socket, _) = tcp.accept().await.expect("TCP accept");
    socket.set_nodelay(true).expect("nodelay");
    let tls = tokio_rustls::TlsAcceptor::from(tls)
        .accept(socket)
        .await
        .expect("TLS handshake with Qymux");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"qymux"[..]));
    tls
}

impl Pair {
    /// A stream opened by `opener`, both ends of it, after a first byte from the opener
    /// (the crate announces a stream only with its first frame).
    async fn stream(&mut self, opener: Side) -> (qymux_tcp::Stream, YamuxStream) {
        let (mut q, mut y) = match opener {
            Side::Qymux => {
                let mut q = within("Qymux open", self.qymux.open())
                    .await
                    .expect("Qymux open");
                q.write_all(b"!").await.expect("first byte");
                (q, self.yamux.accept().await)
            }
            Side::Yamux => {
                let mut y = self.yamux.open().await;
                y.write_all(b"!").await.expect("first byte");
                let q = within("Qymux accept", self.qymux.accept())
                    .await
                    .expect("Qymux accept");
                (q, y)
            }
        };
        let mut first = [0u8; 1];
        let acceptor: &mut (dyn AsyncRead + Unpin) = match opener {
            Side::Qymux => &mut y,
            Side::Yamux => &mut q,
        };
        within("first byte", acceptor.read_exact(&mut first))
            .await
            .expect("read first byte");
        assert_eq!(&first, b"!");
        (q, y)
    }
}

fn qymux_error(err: &io::Error) -> Option<&Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<Error>())
}

#[track_caller]
fn assert_reset(err: &io::Error) {
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        matches!(qymux_error(err), Some(Error::StreamReset)),
        "{err:?}"
    );
}

/// Streams per opening side in `streams_both_ways`.
const STREAMS_EACH: u64 = 10;
/// Seeds for the data of streams opened by Qymux and by the crate.
const QYMUX_OPENED: u64 = 1_000;
const YAMUX_OPENED: u64 = 2_000;

/// Bytes each way on stream `index`: 64 KiB to about 280 KiB, some beyond the initial
/// 256 KiB window.
fn stream_len(index: u64) -> usize {
    64 * 1024 + index as usize * 24 * 1024 + 7
}

/// The opener's end: sends its index and its data, finishes, and checks the reply.
async fn exchange_as_opener<S>(stream: S, index: u64, seed: u64)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let request = payload(seed + 2 * index, stream_len(index));
    let writer = async {
        w.write_all(&index.to_le_bytes()).await?;
        w.write_all(&request).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut reply = Vec::new();
        r.read_to_end(&mut reply).await.map(|_| reply)
    };
    let (wrote, reply) = tokio::join!(writer, reader);
    wrote.unwrap_or_else(|e| panic!("stream {seed}+{index}: write: {e}"));
    let reply = reply.unwrap_or_else(|e| panic!("stream {seed}+{index}: read: {e}"));
    let expected = payload(seed + 2 * index + 1, stream_len(index));
    assert_eq!(
        sha256(&reply),
        sha256(&expected),
        "stream {seed}+{index}: reply"
    );
}

/// The acceptor's end: reads the index, sends its reply while checking the request,
/// and returns the index.
async fn exchange_as_acceptor<S>(stream: S, seed: u64) -> u64
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let mut index = [0u8; 8];
    r.read_exact(&mut index).await.expect("read index");
    let index = u64::from_le_bytes(index);
    let reply = payload(seed + 2 * index + 1, stream_len(index));
    let writer = async {
        w.write_all(&reply).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut request = Vec::new();
        r.read_to_end(&mut request).await.map(|_| request)
    };
    let (wrote, request) = tokio::join!(writer, reader);
    wrote.unwrap_or_else(|e| panic!("stream {seed}+{index}: write: {e}"));
    let request = request.unwrap_or_else(|e| panic!("stream {seed}+{index}: read: {e}"));
    let expected = payload(seed + 2 * index, stream_len(index));
    assert_eq!(
        sha256(&request),
        sha256(&expected),
        "stream {seed}+{index}: request"
    );
    index
}

/// Whether stream ids chosen by Qymux are odd (it is the yamux client).
fn qymux_ids_are_odd(role: Role) -> bool {
    role == Role::YamuxServer
}

async fn streams_both_ways(role: Role) {
    let mut p = connect(role).await;
    let mut openers = Vec::new();
    for index in 0..STREAMS_EACH {
        let session = p.qymux.clone();
        openers.push(tokio::spawn(async move {
            let stream = within("Qymux open", session.open())
                .await
                .expect("Qymux open");
            assert_eq!(stream.stream_id() % 2 == 1, qymux_ids_are_odd(role));
            exchange_as_opener(stream, index, QYMUX_OPENED).await;
        }));
        let stream = p.yamux.open().await;
        openers.push(tokio::spawn(exchange_as_opener(
            stream,
            index,
            YAMUX_OPENED,
        )));
    }
    let mut acceptors = Vec::new();
    for _ in 0..STREAMS_EACH {
        let stream = within("Qymux accept", p.qymux.accept())
            .await
            .expect("Qymux accept");
        assert_eq!(stream.stream_id() % 2 == 1, !qymux_ids_are_odd(role));
        acceptors.push(tokio::spawn(exchange_as_acceptor(stream, YAMUX_OPENED)));
        let stream = p.yamux.accept().await;
        assert_eq!(stream.get_ref().id().is_client(), qymux_ids_are_odd(role));
        acceptors.push(tokio::spawn(exchange_as_acceptor(stream, QYMUX_OPENED)));
    }
    for opener in openers {
        within("opener", opener).await.expect("opener task");
    }
    let mut seen = Vec::new();
    for acceptor in acceptors {
        seen.push(within("acceptor", acceptor).await.expect("acceptor task"));
    }
    seen.sort_unstable();
    let expected: Vec<u64> = (0..STREAMS_EACH).flat_map(|i| [i, i]).collect();
    assert_eq!(seen, expected, "each stream accepted exactly once");
}

/// `first` finishes its side; `other` reads EOF and can still send, beyond one window.
async fn check_half_close<A, B>(mut first: A, mut other: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    first.write_all(b"request").await.expect("write request");
    first.shutdown().await.expect("finish");
    let mut request = Vec::new();
    within("EOF after FIN", other.read_to_end(&mut request))
        .await
        .expect("read request");
    assert_eq!(request, b"request");

    let reply = payload(7, 600 * 1024);
    let send = async {
        other.write_all(&reply).await?;
        other.shutdown().await
    };
    let mut got = Vec::new();
    let (sent, read) = within(
        "reply after FIN",
        futures::future::join(send, first.read_to_end(&mut got)),
    )
    .await;
    sent.expect("write reply after the peer's FIN");
    read.expect("read reply after our FIN");
    assert_eq!(sha256(&got), sha256(&reply));
}

async fn half_close(role: Role) {
    let mut p = connect(role).await;
    for opener in [Side::Qymux, Side::Yamux] {
        for finisher in [Side::Qymux, Side::Yamux] {
            let (q, y) = p.stream(opener).await;
            match finisher {
                Side::Qymux => check_half_close(q, y).await,
                Side::Yamux => check_half_close(y, q).await,
            }
        }
    }
}

/// Writes to the crate's stream until it fails, as it must once Qymux reset the stream.
///
/// (The crate's reads end with EOF after a reset, like after a FIN; only its writes tell.)
async fn yamux_write_fails(y: &mut YamuxStream, what: &str) -> io::Error {
    let chunk = [0u8; 16 * 1024];
    within(what, async {
        loop {
            if let Err(e) = y.write_all(&chunk).await {
                return e;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

async fn reset(role: Role) {
    let mut p = connect(role).await;
    for opener in [Side::Qymux, Side::Yamux] {
        // Qymux aborts a stream open both ways: RST, the crate's writes fail.
        let (mut q, mut y) = p.stream(opener).await;
        q.write_all(&payload(3, 10_000)).await.expect("write");
        q.abort();
        yamux_write_fails(
            &mut y,
            &format!("{opener:?}-opened: crate writes after abort"),
        )
        .await;

        // The crate drops a stream it has not finished: RST, an error for Qymux both ways.
        let (mut q, mut y) = p.stream(opener).await;
        y.write_all(&payload(4, 10_000)).await.expect("write");
        y.flush().await.expect("flush");
        drop(y);
        let mut got = Vec::new();
        let err = within("Qymux read after reset", q.read_to_end(&mut got))
            .await
            .expect_err("a reset stream must not end with EOF");
        assert_reset(&err);
        let err = within("Qymux write after reset", q.write_all(b"more"))
            .await
            .expect_err("writing to a reset stream");
        assert_reset(&err);
    }
    // The session outlives its reset streams.
    let (q, y) = p.stream(Side::Qymux).await;
    check_half_close(q, y).await;
}

async fn abort_after_own_fin(role: Role) {
    let mut p = connect(role).await;
    for opener in [Side::Qymux, Side::Yamux] {
        // Qymux finishes its side, then aborts while the crate still writes: that must
        // be RST, not silence that leaves the crate's writer waiting for window forever.
        let (mut q, mut y) = p.stream(opener).await;
        q.shutdown().await.expect("finish");
        let mut rest = Vec::new();
        within("EOF after FIN", y.read_to_end(&mut rest))
            .await
            .expect("read to EOF");
        q.abort();
        let what = format!("{opener:?}-opened: crate writes after abort after FIN");
        yamux_write_fails(&mut y, &what).await;
    }
}

async fn skipped_stream_ids(role: Role) {
    let mut p = connect(role).await;
    // The crate takes an id at open but announces the stream only with its first frame;
    // dropped before that, it leaves a gap (and sends RST for an id Qymux never saw).
    drop(p.yamux.open().await);
    drop(p.yamux.open().await);
    let (q, y) = p.stream(Side::Yamux).await;
    let first = if role == Role::YamuxClient { 1 } else { 2 };
    assert_eq!(y.get_ref().id().val(), first + 4);
    assert_eq!(q.stream_id(), first + 4);
    check_half_close(y, q).await;
    assert_eq!(p.qymux.close_reason().map(|r| r.to_string()), None);
}

async fn yamux_closes_session(role: Role) {
    let mut p = connect(role).await;
    let (mut q, mut y) = p.stream(Side::Yamux).await;
    y.write_all(b"ping").await.expect("write");
    let mut ping = [0u8; 4];
    within("read", q.read_exact(&mut ping)).await.expect("read");
    let session = p.qymux.clone();
    let waiting_accept = tokio::spawn(async move { session.accept().await.map(|_| ()) });

    p.yamux.close().await.expect("yamux close");
    let reason = within("Qymux closed()", p.qymux.closed()).await;
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");
    let accepted = within("waiting accept", waiting_accept)
        .await
        .expect("accept task");
    assert!(
        matches!(accepted, Err(Error::ClosedByPeer(_))),
        "{accepted:?}"
    );
    let opened = within("open after close", p.qymux.open()).await;
    assert!(matches!(opened, Err(Error::ClosedByPeer(_))), "{opened:?}");
    // The stream was never finished: its end is the session's, not EOF.
    let mut rest = Vec::new();
    let err = within("read after close", q.read_to_end(&mut rest))
        .await
        .expect_err("an unfinished stream of a closed session must not end with EOF");
    assert!(
        matches!(qymux_error(&err), Some(Error::ClosedByPeer(_))),
        "{err:?}"
    );
    drop(y);
    p.yamux
        .ended()
        .await
        .expect("yamux connection ends cleanly");
}

async fn qymux_closes_session(role: Role) {
    let mut p = connect(role).await;
    let (q, y) = p.stream(Side::Qymux).await;
    check_half_close(q, y).await;
    within("Qymux close", p.qymux.close()).await;
    assert!(matches!(p.qymux.close_reason(), Some(CloseReason::Local)));
    p.yamux
        .ended()
        .await
        .expect("yamux connection ends cleanly");
}

macro_rules! in_both_roles {
    ($($check:ident),* $(,)?) => {
        /// The `yamux` crate dials a `qymux_tcp::Listener`.
        mod yamux_client {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Role::YamuxClient).await
                }
            )*
        }

        /// `qymux_tcp::dial` connects to the `yamux` crate.
        mod yamux_server {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    super::$check(super::Role::YamuxServer).await
                }
            )*
        }
    };
}

in_both_roles!(
    streams_both_ways,
    half_close,
    reset,
    abort_after_own_fin,
    skipped_stream_ids,
    yamux_closes_session,
    qymux_closes_session,
);
