//! A TLS connection running Qymux's yamux engine, as a Qymux
//! [`Session`](qymux_transport::Session), and the task that reads it.
//!
//! The engine's state ([`Connection`]) sits behind one mutex that the session's handles,
//! its streams and one driver task share. Nothing is passed through the driver on the
//! hot path:
//!
//! - **Writes** go out from the writing task itself: it takes the writer, reserves send
//!   window, and hands the frame's header and the caller's buffer to TLS in one vectored
//!   write. Whatever TLS does not take at once (the socket is full) is copied into the
//!   writer's pending buffer, which is bounded by one frame plus the control frames, and
//!   goes out first next time. Control frames (window updates, SYN, FIN, RST, pings,
//!   GoAway) are queued in the engine and sent by whoever holds the writer next.
//! - **Reads**: the driver reads TLS, feeds the bytes to the engine (which appends frame
//!   bodies to their streams' buffers) and wakes the readers.
//! - The socket has one write waker; it is a fan-out ([`WriteWake`]) that wakes the
//!   driver and every task waiting for the writer, so no waiter is lost when several
//!   tasks write.
//! - Each stream has a waker per direction, so the two halves of a split stream each
//!   wake; every waiter wakes when the session ends, and if the driver task ends for any
//!   reason (its runtime dropped, a panic), the session ends with an error.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::{Duration, Instant};

use qymux_transport::{
    CloseReason, Error, Limit, Options, PeerIdentity, Protocol, Result, SessionStats,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tracing::{Instrument, debug, trace};

use crate::engine::core::{CONTROL_HIGH_WATER, Config, Connection, Role};
use crate::engine::frame::HEADER_LEN;
use crate::stream::Stream;

/// What the driver reads into; freed once the connection has been quiet for
/// [`TRIM_AFTER`].
const READ_BUF: usize = 32 * 1024;

/// A connection that has read nothing for this long gives its read buffers back (an idle
/// session holds none). While data flows they are kept: freeing them whenever the socket
/// ran dry made glibc return the pages and fault them in again on the next read, which
/// cost bulk transfers a third of their rate.
const TRIM_AFTER: Duration = Duration::from_millis(200);

/// DATA bodies with at least this much still to come are read straight into their
/// stream's receive buffer (no copy between the connection and the stream).
const DIRECT_MIN: u32 = 8 * 1024;

/// The most the driver reads into a stream's buffer at a time.
const DIRECT_CHUNK: usize = 64 * 1024;

/// Reads per driver turn before it yields to other tasks.
const READS_PER_TURN: usize = 16;

/// The writer's pending buffer keeps at most this much capacity when it is empty.
const PENDING_KEEP: usize = 64 * 1024;

/// What rustls may hold of encrypted records the socket has not taken yet (its default is
/// 64 KiB). A writer sends a frame only once what came before is out, so rustls takes a
/// whole frame (up to [`MAX_WRITE_FRAME`](crate::engine::core::MAX_WRITE_FRAME)) plus the
/// control frames queued with it: with the default, a frame written while the socket was
/// full was mostly refused by rustls and copied into the writer's pending buffer, then
/// written from there.
pub(crate) const TLS_SEND_BUFFER: usize = crate::engine::core::MAX_WRITE_FRAME + 64 * 1024;

pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
type BoxIo = Box<dyn Io>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The socket's write waker: wakes the driver and every task waiting to write.
#[derive(Default)]
struct WriteWake {
    wakers: Mutex<WakeList>,
}

#[derive(Default)]
struct WakeList {
    driver: Option<Waker>,
    waiters: Vec<Waker>,
}

impl Wake for WriteWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (driver, waiters) = {
            let mut list = lock(&self.wakers);
            (list.driver.clone(), std::mem::take(&mut list.waiters))
        };
        if let Some(driver) = driver {
            driver.wake();
        }
        for waiter in waiters {
            waiter.wake();
        }
    }
}

impl WriteWake {
    fn add_waiter(&self, waker: &Waker) {
        let mut list = lock(&self.wakers);
        if !list.waiters.iter().any(|w| w.will_wake(waker)) {
            list.waiters.push(waker.clone());
        }
    }

    fn set_driver(&self, waker: &Waker) {
        let mut list = lock(&self.wakers);
        match &list.driver {
            Some(d) if d.will_wake(waker) => {}
            _ => list.driver = Some(waker.clone()),
        }
    }

    fn wake_driver(&self) {
        let driver = lock(&self.wakers).driver.clone();
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

/// The write half of the connection and what is committed to it but not yet taken.
struct Writer {
    /// `None` once the driver has stopped: the connection is closed then, even while the
    /// application still holds the session or its streams.
    io: Option<WriteHalf<BoxIo>>,
    pending: Vec<u8>,
    pos: usize,
    /// TLS may hold records the socket did not take yet.
    unflushed: bool,
    /// A write failed; later writes are discarded (see [`Shared::poll_drain`]).
    failed: Option<io::Error>,
    failed_seen: bool,
}

/// Everything the session's handles, streams and driver share.
pub(crate) struct Shared {
    pub(crate) conn: Mutex<Connection>,
    writer: Mutex<Writer>,
    wake: Arc<WriteWake>,
    fanout: Waker,
    local_addr: SocketAddr,
    remote_addr: SocketAddr,
    peer_identity: Option<PeerIdentity>,
    close_timeout: Duration,
    open_timeout: Duration,
    done: Mutex<(bool, Vec<Waker>)>,
}

impl Shared {
    /// Runs `f` on the engine, then wakes whoever it made ready (after unlocking).
    pub(crate) fn with_conn<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let mut conn = lock(&self.conn);
        let was_running = conn.ended().is_none();
        let result = f(&mut conn);
        // This side ended the connection (a drain's last stream released, a close): the
        // driver sends what is queued and TLS close_notify now. When the peer went away
        // (its GoAway, our last stream released), the peer closes the connection, as
        // hashicorp's drain has it; the driver answers when that arrives.
        let ended_now = was_running && matches!(conn.ended(), Some(CloseReason::Local));
        if conn.has_wakers() {
            let wakers = conn.take_wakers();
            drop(conn);
            for w in wakers {
                w.wake();
            }
        } else {
            drop(conn);
        }
        if ended_now {
            self.wake_driver();
        }
        result
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.conn).ended().cloned()
    }

    pub(crate) fn wake_driver(&self) {
        self.wake.wake_driver();
    }

    /// Sends the queued control frames now if the writer is free; otherwise the driver
    /// does.
    pub(crate) fn flush_control(&self) {
        match self.writer.try_lock() {
            Ok(mut w) => {
                if let Poll::Ready(Err(_)) = self.poll_drain(&mut w, None) {
                    self.wake_driver();
                }
            }
            Err(_) => self.wake_driver(),
        }
    }

    /// Writes out everything committed (pending bytes, then the engine's control frames)
    /// and flushes TLS. `Pending` registers `waiter` (and always the driver) for the
    /// socket's write readiness.
    fn poll_drain(&self, w: &mut Writer, waiter: Option<&Waker>) -> Poll<io::Result<()>> {
        self.poll_drain_with(w, waiter, true)
    }

    /// [`poll_drain`](Self::poll_drain), leaving the engine's control frames queued
    /// unless `control`.
    fn poll_drain_with(
        &self,
        w: &mut Writer,
        waiter: Option<&Waker>,
        control: bool,
    ) -> Poll<io::Result<()>> {
        if w.failed.is_some() || w.failed_seen || w.io.is_none() {
            // Writes after a failure are discarded: the driver still reads what the peer
            // sent before it hung up, then ends the session. Once the driver has stopped,
            // the connection is gone.
            w.pending.clear();
            w.pos = 0;
            lock(&self.conn).take_control(&mut w.pending);
            w.pending.clear();
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut cx = Context::from_waker(&self.fanout);
        let mut registered = false;
        loop {
            let Some(io) = w.io.as_mut() else {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            };
            if w.pos < w.pending.len() {
                match Pin::new(io).poll_write(&mut cx, &w.pending[w.pos..]) {
                    Poll::Ready(Ok(0)) => {
                        return self.write_failed(w, io::ErrorKind::WriteZero.into());
                    }
                    Poll::Ready(Ok(n)) => {
                        w.pos += n;
                        w.unflushed = true;
                    }
                    Poll::Ready(Err(e)) => return self.write_failed(w, e),
                    Poll::Pending => {
                        // Register, then look once more: readiness may have come between.
                        match (waiter, registered) {
                            (Some(waker), false) => {
                                self.wake.add_waiter(waker);
                                registered = true;
                            }
                            _ => return Poll::Pending,
                        }
                    }
                }
                continue;
            }
            w.pending.clear();
            w.pos = 0;
            if !control {
                break;
            }
            {
                let mut conn = lock(&self.conn);
                if conn.control_len() == 0 {
                    break;
                }
                conn.take_control(&mut w.pending);
            }
        }
        if w.pending.capacity() > PENDING_KEEP {
            w.pending = Vec::new();
        }
        if let (true, Some(io)) = (w.unflushed, w.io.as_mut()) {
            loop {
                match Pin::new(&mut *io).poll_flush(&mut cx) {
                    Poll::Ready(Ok(())) => {
                        w.unflushed = false;
                        break;
                    }
                    Poll::Ready(Err(e)) => return self.write_failed(w, e),
                    Poll::Pending => match (waiter, registered) {
                        (Some(waker), false) => {
                            self.wake.add_waiter(waker);
                            registered = true;
                        }
                        _ => return Poll::Pending,
                    },
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn write_failed(&self, w: &mut Writer, err: io::Error) -> Poll<io::Result<()>> {
        debug!("writing to the connection failed: {err}");
        let kind = err.kind();
        w.failed = Some(err);
        w.pending.clear();
        w.pos = 0;
        self.wake_driver();
        Poll::Ready(Err(kind.into()))
    }

    /// Writes one DATA frame on stream `id` from `buf`: header and body in one vectored
    /// write, after everything committed before. Returns how much of `buf` the frame
    /// carries; the part TLS did not take yet is kept in the pending buffer.
    pub(crate) fn poll_write_frame(
        &self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<Result<usize>> {
        let mut guard = lock(&self.writer);
        let w: &mut Writer = &mut guard;
        // What came before goes out first; queued control frames go with this frame, in
        // one vectored write (one TLS record for a small frame).
        if ready!(self.poll_drain_with(w, Some(cx.waker()), false)).is_err() {
            // The session is failing; report why once the driver has decided.
            drop(guard);
            return self.poll_failure(cx);
        }
        let reserved = {
            let mut conn = lock(&self.conn);
            let r = conn.poll_write(id, cx.waker(), buf.len());
            conn.take_control(&mut w.pending);
            r
        };
        let (header, n) = match reserved {
            Poll::Ready(Ok(frame)) => frame,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if !w.pending.is_empty() {
                    let _ = self.poll_drain(w, None);
                }
                return Poll::Pending;
            }
        };
        let body = &buf[..n];
        let mut cx_io = Context::from_waker(&self.fanout);
        let mut parts: [&[u8]; 3] = [&w.pending[w.pos..], &header, body];
        let mut pending = false;
        while parts.iter().any(|p| !p.is_empty()) {
            let slices = [
                io::IoSlice::new(parts[0]),
                io::IoSlice::new(parts[1]),
                io::IoSlice::new(parts[2]),
            ];
            let Some(io) = w.io.as_mut() else {
                drop(guard);
                return self.poll_failure(cx);
            };
            match Pin::new(io).poll_write_vectored(&mut cx_io, &slices) {
                Poll::Ready(Ok(0)) => {
                    let _ = self.write_failed(w, io::ErrorKind::WriteZero.into());
                    drop(guard);
                    return self.poll_failure(cx);
                }
                Poll::Ready(Ok(mut written)) => {
                    for part in parts.iter_mut() {
                        let k = written.min(part.len());
                        *part = &part[k..];
                        written -= k;
                    }
                }
                Poll::Ready(Err(e)) => {
                    let _ = self.write_failed(w, e);
                    drop(guard);
                    return self.poll_failure(cx);
                }
                Poll::Pending => {
                    pending = true;
                    break;
                }
            }
        }
        // Keep what TLS did not take, in order, for the next writer (or the driver).
        let rest_pending = parts[0].len();
        let mut rest = Vec::with_capacity(parts[1].len() + parts[2].len());
        rest.extend_from_slice(parts[1]);
        rest.extend_from_slice(parts[2]);
        let start = w.pending.len() - rest_pending;
        w.pending.drain(..start);
        w.pos = 0;
        w.pending.extend_from_slice(&rest);
        w.unflushed = true;
        if !pending {
            let _ = self.poll_drain(w, None);
        }
        Poll::Ready(Ok(n))
    }

    /// Writes out everything committed so far (flush of a stream: its data and FIN are
    /// in TLS and handed to the socket).
    pub(crate) fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let drained = {
            let mut w = lock(&self.writer);
            self.poll_drain(&mut w, Some(cx.waker()))
        };
        match ready!(drained) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(_) => self.poll_failure(cx),
        }
    }

    /// Waits for the session's close reason (the driver sets it promptly after a write
    /// failure) and reports it.
    pub(crate) fn poll_failure<T>(&self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        self.with_conn(|c| {
            if c.poll_end(cx.waker()) {
                Poll::Ready(Err(c
                    .ended()
                    .map(CloseReason::to_error)
                    .unwrap_or(Error::Closed)))
            } else {
                Poll::Pending
            }
        })
    }

    fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut done = lock(&self.done);
        if done.0 {
            return Poll::Ready(());
        }
        if !done.1.iter().any(|w| w.will_wake(cx.waker())) {
            done.1.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What the application's session clones and streams share. When the last one is
/// dropped, the session closes gracefully.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.with_conn(Connection::close);
        self.shared.wake_driver();
    }
}

/// A TLS + yamux session; cheap to clone, usable from many tasks at once.
///
/// Implements [`qymux_transport::Session`]; see there for the behaviour of each method.
#[derive(Clone)]
pub struct Session {
    handle: Arc<Handle>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        let conn = lock(&shared.conn);
        f.debug_struct("Session")
            .field("local_addr", &shared.local_addr)
            .field("remote_addr", &shared.remote_addr)
            .field("streams_open", &conn.open_streams())
            .field("close_reason", &conn.ended())
            .finish()
    }
}

/// Everything needed to start a session on an established TLS connection.
pub(crate) struct Start<T> {
    pub(crate) io: T,
    pub(crate) role: Role,
    pub(crate) options: Options,
    pub(crate) local_addr: SocketAddr,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) peer_identity: Option<PeerIdentity>,
}

impl Session {
    /// Starts the driver task for an established TLS connection and returns the session.
    pub(crate) fn start<T>(start: Start<T>) -> Session
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io: BoxIo = Box::new(start.io);
        let (reader, writer) = tokio::io::split(io);
        let conn = Connection::new(
            start.role,
            Config::from_options(&start.options),
            Instant::now(),
        );
        let wake = Arc::new(WriteWake::default());
        let shared = Arc::new(Shared {
            conn: Mutex::new(conn),
            writer: Mutex::new(Writer {
                io: Some(writer),
                pending: Vec::new(),
                pos: 0,
                unflushed: false,
                failed: None,
                failed_seen: false,
            }),
            fanout: Waker::from(wake.clone()),
            wake,
            local_addr: start.local_addr,
            remote_addr: start.remote_addr,
            peer_identity: start.peer_identity,
            close_timeout: start.options.close_timeout_value(),
            open_timeout: start.options.open_timeout_value(),
            done: Mutex::new((false, Vec::new())),
        });
        let span = tracing::debug_span!(
            "qymux_session",
            id = qymux_transport::next_session_id(),
            protocol = "tcp",
            role = ?start.role,
            local = %start.local_addr,
            remote = %start.remote_addr,
        );
        let driver = Driver {
            shared: shared.clone(),
            reader,
            buf: Vec::new(),
            last_read: Instant::now(),
            trimmed: true,
            next_body: None,
            header_alone: false,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            timer_at: None,
            write_error: None,
            acks_deferred: false,
        };
        tokio::spawn(driver.run().instrument(span));
        Session {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Waits until the peer's first frame arrived (wait for [`Session::closed`] beside it).
    pub(crate) async fn first_frame(&self) {
        poll_fn(|cx| {
            self.handle.shared.with_conn(|c| {
                if c.poll_first_frame(cx.waker()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Opens a stream; see [`qymux_transport::Session::open`]. The peer sees the stream
    /// at once, without data: the SYN goes out with the stream's first write if that
    /// comes before this task yields, else the session's driver sends it when the task
    /// yields. Waits at most
    /// [`Options::open_timeout`] while the peer has 256 of our streams unacknowledged,
    /// then fails with [`Limit::PeerStreams`]. Cancel-safe: a dropped `open` holds nothing.
    pub async fn open(&self) -> Result<Stream> {
        // Usually ready at once: no timer is armed then.
        if let Poll::Ready(result) = self.poll_open(&mut Context::from_waker(Waker::noop())) {
            return result;
        }
        let shared = &self.handle.shared;
        let opening = poll_fn(|cx| self.poll_open(cx));
        match tokio::time::timeout(shared.open_timeout, opening).await {
            Ok(result) => result,
            Err(_) => {
                let waiting = shared.with_conn(|c| c.unacked_opens());
                Err(Error::LimitReached(Limit::PeerStreams(waiting)))
            }
        }
    }

    /// Accepts a stream the peer opened; see [`qymux_transport::Session::accept`].
    /// Cancel-safe.
    pub async fn accept(&self) -> Result<Stream> {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Closes the session gracefully; see [`qymux_transport::Session::close`].
    pub async fn close(&self) {
        let shared = &self.handle.shared;
        shared.with_conn(Connection::close);
        shared.wake_driver();
        // The driver bounds the close itself; this bound only guards against a driver
        // that cannot run.
        let _ = tokio::time::timeout(shared.close_timeout * 2, poll_fn(|cx| shared.poll_done(cx)))
            .await;
    }

    /// Closes the session as a dial that lost a race to another transport (an Auto
    /// dialer's QUIC attempt won): as [`close`](Session::close), with the yamux GoAway
    /// code [`GO_AWAY_SUPERSEDED`](crate::engine::frame::GO_AWAY_SUPERSEDED) instead of
    /// a normal one, so that the server's session ends with
    /// `CloseReason::Peer(Some("superseded"))` rather than like an agent that left. A Go
    /// hashicorp yamux server ends the session on that code too (logging an unexpected
    /// GoAway).
    pub async fn close_superseded(&self) {
        let shared = &self.handle.shared;
        shared.with_conn(Connection::close_superseded);
        shared.wake_driver();
        let _ = tokio::time::timeout(shared.close_timeout * 2, poll_fn(|cx| shared.poll_done(cx)))
            .await;
    }

    /// Drains the session: a yamux GoAway tells the peer to open no more streams, streams
    /// it opens anyway are reset, streams already open carry on, and the session closes
    /// (as [`close`](Session::close)) once the last of them is dropped. Returns when it
    /// has closed; bound it with a timeout and call `close` to cut it short.
    pub async fn drain(&self) {
        let shared = &self.handle.shared;
        shared.with_conn(Connection::drain);
        shared.wake_driver();
        self.closed().await;
        let _ = tokio::time::timeout(shared.close_timeout * 2, poll_fn(|cx| shared.poll_done(cx)))
            .await;
    }

    /// Waits until the session has ended; see [`qymux_transport::Session::closed`].
    pub async fn closed(&self) -> CloseReason {
        let shared = &self.handle.shared;
        poll_fn(|cx| {
            shared.with_conn(|c| {
                if c.poll_end(cx.waker()) {
                    Poll::Ready(c.ended().cloned().unwrap_or(CloseReason::Local))
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.handle.shared.close_reason()
    }

    /// This side's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.local_addr
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.handle.shared.remote_addr
    }

    /// The peer's verified certificate chain, where it presented one.
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        self.handle.shared.peer_identity.clone()
    }

    /// Streams open right now, in both directions (those waiting for `accept` included).
    pub fn open_streams(&self) -> usize {
        self.handle.shared.with_conn(|c| c.open_streams())
    }

    /// The round-trip time measured by the last answered ping.
    pub fn rtt(&self) -> Option<Duration> {
        self.handle.shared.with_conn(|c| c.rtt())
    }

    /// What the session has carried so far; see [`qymux_transport::Session::stats`].
    pub fn stats(&self) -> SessionStats {
        let (counters, rtt, open) = self
            .handle
            .shared
            .with_conn(|c| (c.counters(), c.rtt(), c.open_streams()));
        let mut stats = SessionStats::new(Protocol::Tcp);
        stats.rtt = rtt;
        stats.bytes_sent = counters.bytes_out;
        stats.bytes_received = counters.bytes_in;
        stats.streams_opened = counters.streams_out;
        stats.streams_accepted = counters.streams_in;
        stats.open_streams = open;
        stats
    }

    /// The sum of the receive windows granted to the peer: the most stream data it can
    /// make this session buffer right now (see [`Options::receive_budget`]).
    pub fn granted_window(&self) -> u64 {
        self.handle.shared.with_conn(|c| c.granted())
    }
}

/// A reference to a [`Session`] that does not keep it alive (see
/// [`Tracked`](qymux_transport::registry::Tracked)).
#[derive(Debug, Clone)]
pub struct WeakSession(std::sync::Weak<Handle>);

impl qymux_transport::registry::Tracked for Session {
    type Weak = WeakSession;

    fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.handle))
    }

    fn upgrade(weak: &WeakSession) -> Option<Self> {
        weak.0.upgrade().map(|handle| Session { handle })
    }

    fn open_streams(&self) -> usize {
        Session::open_streams(self)
    }
}

impl qymux_transport::Session for Session {
    type Stream = Stream;

    fn open(&self) -> impl Future<Output = Result<Stream>> + Send {
        Session::open(self)
    }
    fn accept(&self) -> impl Future<Output = Result<Stream>> + Send {
        Session::accept(self)
    }
    fn incoming(&self) -> qymux_transport::Incoming<Stream> {
        Session::incoming(self)
    }
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }
    fn local_addr(&self) -> SocketAddr {
        Session::local_addr(self)
    }
    fn remote_addr(&self) -> SocketAddr {
        Session::remote_addr(self)
    }
    fn peer_identity(&self) -> Option<PeerIdentity> {
        Session::peer_identity(self)
    }
    fn close(&self) -> impl Future<Output = ()> + Send {
        Session::close(self)
    }
    fn drain(&self) -> impl Future<Output = ()> + Send {
        Session::drain(self)
    }
    fn closed(&self) -> impl Future<Output = CloseReason> + Send {
        Session::closed(self)
    }
    fn close_reason(&self) -> Option<CloseReason> {
        Session::close_reason(self)
    }
    fn stats(&self) -> SessionStats {
        Session::stats(self)
    }
}

/// The task that reads the connection, runs the engine's timers and sends what the
/// engine queues when nobody else does.
struct Driver {
    shared: Arc<Shared>,
    reader: ReadHalf<BoxIo>,
    buf: Vec<u8>,
    /// When the driver last read something (the read buffers are freed [`TRIM_AFTER`]
    /// later).
    last_read: Instant,
    /// Nothing was read since the buffers were last freed.
    trimmed: bool,
    /// What the engine said after the last input: bytes of the DATA body in progress.
    next_body: Option<u32>,
    /// The last body was read straight: read the next header alone, so a large body
    /// that follows is not copied through `buf`.
    header_alone: bool,
    timer: Pin<Box<tokio::time::Sleep>>,
    timer_at: Option<Instant>,
    write_error: Option<io::Error>,
    /// The last turn left the ACKs it queued for the application's first reply.
    acks_deferred: bool,
}

/// The driver's read buffer, allocated again if it was freed while the connection was
/// quiet.
fn read_buf(buf: &mut Vec<u8>) -> &mut [u8] {
    if buf.len() != READ_BUF {
        buf.resize(READ_BUF, 0);
    }
    buf
}

/// Ends the session if the driver stops without having ended it (a panic, or its
/// runtime shutting down), closes the connection (the driver's read half goes with the
/// driver, the write half is dropped here), and tells `close` that the driver is done.
struct DriverGuard(Arc<Shared>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        // An application that holds an ended session does not hold its socket.
        let write_half = lock(&self.0.writer).io.take();
        drop(write_half);
        self.0.with_conn(|c| {
            if c.ended().is_none() {
                c.fail(CloseReason::Failed(Error::io(io::Error::other(
                    "the session's driver task stopped (its runtime shut down, or it panicked)",
                ))));
            }
        });
        // Tasks waiting for the socket to take their writes are registered only with the
        // write fan-out, and a dropped socket wakes nobody: wake them, so that they see
        // the session's close reason instead of waiting for good.
        self.0.fanout.wake_by_ref();
        let waiters = {
            let mut done = lock(&self.0.done);
            done.0 = true;
            std::mem::take(&mut done.1)
        };
        for w in waiters {
            w.wake();
        }
    }
}

impl Driver {
    /// Frees the read buffer and the streams' emptied buffers of a connection gone
    /// quiet.
    fn trim(&mut self) {
        self.buf = Vec::new();
        self.shared.with_conn(Connection::trim_buffers);
        self.trimmed = true;
    }

    /// Reads the next part of the DATA body in progress straight into its stream's
    /// buffer, lent by the engine for the read and given back whatever came of it.
    /// `None` if the engine lends nothing (the body goes through `buf` then).
    fn poll_read_direct(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> Option<Poll<io::Result<usize>>> {
        let shared = self.shared.clone();
        let mut lent = shared.with_conn(|c| c.lend_body_buffer(DIRECT_CHUNK))?;
        let mut rb = ReadBuf::new(lent.room());
        let read = Pin::new(&mut self.reader)
            .poll_read(cx, &mut rb)
            .map_ok(|()| rb.filled().len());
        if let Poll::Ready(Ok(n)) = read {
            lent.filled(n);
        }
        shared.with_conn(|c| c.return_body_buffer(lent, now));
        Some(read)
    }

    async fn run(mut self) {
        let guard = DriverGuard(self.shared.clone());
        poll_fn(|cx| self.poll_run(cx)).await;
        let reason = self.shared.close_reason();
        trace!(?reason, "driver stopping");
        let broken =
            matches!(reason, Some(CloseReason::Failed(Error::Io(_)))) || self.write_error.is_some();
        if !broken {
            // Send what is queued (GoAway) and TLS close_notify, within the close timeout.
            let shared = self.shared.clone();
            let closing = poll_fn(|cx| {
                shared.wake.set_driver(cx.waker());
                let mut w = lock(&shared.writer);
                if ready!(shared.poll_drain(&mut w, None)).is_err() {
                    return Poll::Ready(());
                }
                let mut io_cx = Context::from_waker(&shared.fanout);
                match w.io.as_mut() {
                    Some(io) => Pin::new(io).poll_shutdown(&mut io_cx).map(|_| ()),
                    None => Poll::Ready(()),
                }
            });
            let deadline = tokio::time::Instant::now() + self.shared.close_timeout;
            if tokio::time::timeout_at(deadline, closing).await.is_err() {
                debug!("graceful close timed out; dropping the connection");
            } else {
                // Read (and drop) what the peer still sends until it closes too: a socket
                // closed with unread input makes the kernel send RST, and the peer then
                // loses what it had received but not read yet (the window updates it
                // sends while it reads our last stream's data were enough for that).
                let lingering = poll_fn(|cx| self.poll_discard(cx));
                if tokio::time::timeout_at(deadline, lingering).await.is_err() {
                    debug!("the peer did not close within the close timeout");
                }
            }
        }
        drop(guard);
    }

    /// Reads and drops input until the peer's end of stream or an error.
    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut rb = ReadBuf::new(read_buf(&mut self.buf));
            match ready!(Pin::new(&mut self.reader).poll_read(cx, &mut rb)) {
                Ok(()) if !rb.filled().is_empty() => {}
                _ => return Poll::Ready(()),
            }
        }
    }

    /// The error of a failed write, once (later writes are discarded).
    fn take_write_error(&mut self) -> Option<io::Error> {
        let mut w = lock(&self.shared.writer);
        let err = w.failed.take()?;
        w.failed_seen = true;
        self.write_error = Some(err.kind().into());
        Some(err)
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = self.shared.clone();
        shared.wake.set_driver(cx.waker());
        // Reads, handing every byte to the engine.
        // Ended, or the peer does not read the answers it asks for: stop reading.
        let stop = |c: &Connection| c.ended().is_some() || c.control_len() > CONTROL_HIGH_WATER;
        let mut stopped = shared.with_conn(|c| stop(c));
        let mut reads = 0;
        loop {
            if stopped {
                // Ended, or the peer does not read the answers it asks for: stop reading
                // until they are out (the write waker wakes the driver).
                break;
            }
            if reads == READS_PER_TURN {
                cx.waker().wake_by_ref();
                break;
            }
            reads += 1;
            let now = Instant::now();
            let direct = match self.next_body {
                Some(left) if left >= DIRECT_MIN => self.poll_read_direct(cx, now),
                _ => None,
            };
            let read = match direct {
                Some(read) => read.map_ok(|n| (n, true)),
                None => {
                    let size = if self.header_alone {
                        HEADER_LEN
                    } else {
                        READ_BUF
                    };
                    let mut rb = ReadBuf::new(&mut read_buf(&mut self.buf)[..size]);
                    Pin::new(&mut self.reader)
                        .poll_read(cx, &mut rb)
                        .map_ok(|()| (rb.filled().len(), false))
                }
            };
            match read {
                Poll::Ready(Ok((0, _))) => {
                    match self.take_write_error() {
                        Some(err) => shared.with_conn(|c| c.handle_eof_after_write_error(err)),
                        None => shared.with_conn(Connection::handle_eof),
                    }
                    break;
                }
                Poll::Ready(Ok((n, direct))) => {
                    self.last_read = now;
                    self.trimmed = false;
                    // After a body read straight, read the next header alone, so a large
                    // body that follows is not copied through `buf`.
                    self.header_alone = direct;
                    let buf = &self.buf;
                    (stopped, self.next_body) = shared.with_conn(|c| {
                        if !direct {
                            c.handle_input(&buf[..n], now);
                        }
                        (stop(c), c.body_in_progress())
                    });
                }
                Poll::Ready(Err(e)) => {
                    shared.with_conn(|c| c.handle_io_error(e));
                    break;
                }
                Poll::Pending => break,
            }
        }
        // A write failed: what the peer sent before it went is read above; if that did
        // not end the session (a GoAway, a clean close), the write error does.
        if let Some(err) = self.take_write_error() {
            shared.with_conn(|c| c.handle_io_error(err));
        }
        // Timers: keep-alive pings, dead-peer detection, and giving the read buffers back.
        for _ in 0..4 {
            let now = Instant::now();
            let trim_at = (!self.trimmed).then(|| self.last_read + TRIM_AFTER);
            if trim_at.is_some_and(|at| at <= now) {
                self.trim();
                continue;
            }
            let next = shared.with_conn(|c| {
                c.handle_timeout(now);
                c.poll_timeout()
            });
            let next = match (next, trim_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(next) = next else { break };
            // Re-armed only when the deadline comes sooner or the timer has fired: while
            // data flows the trim deadline moves with every read, and an earlier timer
            // that fires merely brings the driver here to look again.
            if self.timer_at.is_none_or(|at| next < at || at <= now) {
                self.timer_at = Some(next);
                self.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(next));
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        // Send what the input and the timers queued. ACKs of streams the peer just opened,
        // alone, wait one turn: the driver yields, so the tasks it woke (the acceptor, the
        // stream's handler) run first, and a reply they write takes the ACKs with it in
        // one TLS record. The next turn sends whatever is left.
        let acks_only = {
            let c = lock(&shared.conn);
            c.control_len() > 0 && !c.control_urgent()
        };
        if acks_only && !self.acks_deferred {
            self.acks_deferred = true;
            cx.waker().wake_by_ref();
        } else {
            self.acks_deferred = false;
            let mut w = lock(&shared.writer);
            let _ = shared.poll_drain(&mut w, None);
        }
        if shared.with_conn(|c| c.ended().is_some()) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

mod incoming;

#[cfg(test)]
mod tests;
