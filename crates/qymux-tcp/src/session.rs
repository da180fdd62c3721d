//! A TLS + yamux connection as a Qymux [`Session`](qymux_transport::Session), and the one
//! task that drives it.

use std::collections::VecDeque;
use std::fmt;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use qymux_transport::{
    CloseReason, Error, Limit, Options, PeerIdentity, Protocol, Result, TimeoutKind,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use tracing::{debug, trace};

use crate::stream::Stream;
use crate::wire::{WireIo, WireState};

/// State the driver, the handles and the streams share.
pub(crate) struct Shared {
    pub(crate) wire: Arc<WireState>,
    pub(crate) streams_open: AtomicUsize,
    pub(crate) max_streams: usize,
    reason: watch::Sender<Option<CloseReason>>,
    local_addr: SocketAddr,
    remote_addr: SocketAddr,
    peer_identity: Option<PeerIdentity>,
    /// A yamux stream the driver opened ahead of time, for the next `open` to take without
    /// a round trip through the driver task. Unannounced, it costs nothing on the wire
    /// (the yamux crate sends SYN with a stream's first frame). Kept only once `open` was
    /// used, so sessions that never open streams do not hold one.
    ready: std::sync::Mutex<Option<yamux::Stream>>,
}

impl Shared {
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.reason.borrow().clone()
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        let mut rx = self.reason.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Local),
            // The sender lives in `self`, so it cannot be gone.
            Err(_) => CloseReason::Local,
        }
    }

    /// Records why the session ended; the first reason wins.
    fn set_reason(&self, reason: CloseReason) {
        self.reason.send_if_modified(|current| {
            if current.is_none() {
                debug!(remote = %self.remote_addr, %reason, "session ended");
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// Counts a new stream against the limit.
    fn try_reserve_stream(&self) -> bool {
        let mut n = self.streams_open.load(Ordering::Acquire);
        loop {
            if n >= self.max_streams {
                return false;
            }
            match self.streams_open.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
    }
}

enum Command {
    Open(oneshot::Sender<Result<yamux::Stream>>),
    /// `open` took the stream opened ahead of time: open the next one.
    Refill,
    Close(oneshot::Sender<()>),
}

/// What the application's session clones share. When the last one (and the last stream
/// the application holds) is dropped, the session closes gracefully.
pub(crate) struct Handle {
    commands: mpsc::Sender<Command>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
    shared: Arc<Shared>,
    close_timeout: Duration,
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
        f.debug_struct("Session")
            .field("local_addr", &self.handle.shared.local_addr)
            .field("remote_addr", &self.handle.shared.remote_addr)
            .field(
                "streams_open",
                &self.handle.shared.streams_open.load(Ordering::Relaxed),
            )
            .field("close_reason", &self.handle.shared.close_reason())
            .finish()
    }
}

/// Everything needed to start a session on an established TLS connection.
pub(crate) struct Start<T> {
    pub(crate) io: T,
    pub(crate) mode: yamux::Mode,
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
        let wire = Arc::new(WireState::new());
        let io = WireIo::new(start.io, wire.clone()).compat();
        let conn = yamux::Connection::new(io, yamux_config(&start.options), start.mode);
        let (commands_tx, commands_rx) = mpsc::channel(64);
        let (inbound_tx, inbound_rx) = mpsc::channel(start.options.max_streams);
        let shared = Arc::new(Shared {
            wire,
            streams_open: AtomicUsize::new(0),
            max_streams: start.options.max_streams,
            reason: watch::Sender::new(None),
            local_addr: start.local_addr,
            remote_addr: start.remote_addr,
            peer_identity: start.peer_identity,
            ready: std::sync::Mutex::new(None),
        });
        let driver = Driver {
            conn,
            commands: commands_rx,
            inbound: inbound_tx,
            shared: shared.clone(),
            pending_opens: VecDeque::new(),
            refill: false,
            liveness: Liveness::new(&start.options),
            close_timeout: start.options.close_timeout,
        };
        tokio::spawn(driver.run());
        Session {
            handle: Arc::new(Handle {
                commands: commands_tx,
                inbound: tokio::sync::Mutex::new(inbound_rx),
                shared,
                close_timeout: start.options.close_timeout,
            }),
        }
    }

    pub(crate) fn wire(&self) -> &WireState {
        &self.handle.shared.wire
    }

    /// Opens a stream; see [`qymux_transport::Session::open`].
    pub async fn open(&self) -> Result<Stream> {
        let shared = &self.handle.shared;
        if let Some(reason) = shared.close_reason() {
            return Err(reason.to_error());
        }
        if !shared.try_reserve_stream() {
            return Err(Error::LimitReached(Limit::Streams(shared.max_streams)));
        }
        let ready = shared
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let opened = match ready {
            Some(inner) => {
                // Open the next one ahead; if the queue is full, the next `Open` will.
                let _ = self.handle.commands.try_send(Command::Refill);
                Ok(inner)
            }
            None => {
                let (tx, rx) = oneshot::channel();
                match self.handle.commands.send(Command::Open(tx)).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Err(self.ended())),
                    Err(_) => Err(self.ended()),
                }
            }
        };
        let inner = match opened {
            Ok(inner) => inner,
            Err(e) => {
                shared.streams_open.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        let mut stream = Stream::new(inner, shared.clone());
        stream.attach(self.handle.clone());
        // Announce the stream now (an empty DATA frame with SYN): the peer's accept must
        // see it before we write, as hashicorp yamux peers expect. (`write_all(&[])`
        // would not call the stream at all.)
        let written = stream.write(&[]).await?;
        debug_assert_eq!(written, 0);
        Ok(stream)
    }

    /// Accepts a stream the peer opened; see [`qymux_transport::Session::accept`].
    pub async fn accept(&self) -> Result<Stream> {
        let mut inbound = self.handle.inbound.lock().await;
        match inbound.recv().await {
            Some(mut stream) => {
                stream.attach(self.handle.clone());
                Ok(stream)
            }
            None => Err(self.ended()),
        }
    }

    fn ended(&self) -> Error {
        self.handle
            .shared
            .close_reason()
            .map(|r| r.to_error())
            .unwrap_or(Error::Closed)
    }

    /// Closes the session gracefully; see [`qymux_transport::Session::close`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.commands.send(Command::Close(tx)).await.is_ok() {
            // The driver bounds the close itself; this bound only guards against a
            // driver that cannot run.
            let _ = tokio::time::timeout(self.handle.close_timeout * 2, rx).await;
        }
    }

    /// Waits until the session has ended; see [`qymux_transport::Session::closed`].
    pub async fn closed(&self) -> CloseReason {
        self.handle.shared.closed().await
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

    /// Streams open right now, in both directions.
    pub fn open_streams(&self) -> usize {
        self.handle.shared.streams_open.load(Ordering::Relaxed)
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

    fn upgrade(weak: &WeakSession) -> Option<Session> {
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
    fn closed(&self) -> impl Future<Output = CloseReason> + Send {
        Session::closed(self)
    }
    fn close_reason(&self) -> Option<CloseReason> {
        Session::close_reason(self)
    }
}

fn yamux_config(options: &Options) -> yamux::Config {
    // Qymux enforces `max_streams` itself (opens beyond it fail, inbound streams beyond
    // it are reset). The yamux crate's own limit tears the whole connection down when
    // reached, so it only serves as a generous backstop against a peer that ignores resets.
    let backstop = options.max_streams.saturating_mul(2).saturating_add(256);
    let window = (backstop.saturating_mul(256 * 1024)).max(1 << 30);
    let mut config = yamux::Config::default();
    config
        .set_max_connection_receive_window(Some(window))
        .set_max_num_streams(backstop)
        // A frame's header goes out with its body (see `wire`): 12 + body = 4 full TLS
        // records of 16 KiB, where 64 KiB of body would spill 12 bytes into a fifth.
        .set_split_send_size(64 * 1024 - crate::wire::HEADER_LEN);
    config
}

type Conn<T> = yamux::Connection<Compat<WireIo<T>>>;

struct Driver<T> {
    conn: Conn<T>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Stream>,
    shared: Arc<Shared>,
    pending_opens: VecDeque<oneshot::Sender<Result<yamux::Stream>>>,
    /// Whether to open a stream ahead of time for the next `open` (see `Shared::ready`).
    refill: bool,
    liveness: Liveness,
    close_timeout: Duration,
}

/// Dead-peer detection: when to ping the peer, and when its silence means it is gone.
///
/// Any frame from the peer counts as a sign of life. After
/// [`Options::keep_alive_interval`] of silence the driver sends a yamux Ping (one per
/// interval while the silence lasts), which a live peer answers at once; after
/// [`Options::idle_timeout`] of silence the session fails with [`TimeoutKind::Idle`].
/// [`Options::validate`] ensures the interval is shorter than the timeout. Without
/// keep-alive, a session on which neither side sends anything fails after the idle
/// timeout, as a QUIC session does.
#[derive(Debug)]
struct Liveness {
    keep_alive: Option<Duration>,
    idle_timeout: Duration,
    last_ping: Option<Instant>,
}

/// What to do after a [`Liveness`] check.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The peer has been silent for the idle timeout.
    Dead,
    /// Send a keep-alive ping now, and check again at the given time.
    Ping(Instant),
    /// Check again at the given time.
    Wait(Instant),
}

impl Liveness {
    fn new(options: &Options) -> Self {
        Self {
            keep_alive: options.keep_alive_interval,
            idle_timeout: options.idle_timeout,
            last_ping: None,
        }
    }

    /// The verdict at `now`, when the peer's last frame arrived `silent` ago.
    fn check(&mut self, now: Instant, silent: Duration) -> Verdict {
        if silent >= self.idle_timeout {
            return Verdict::Dead;
        }
        let heard = now.checked_sub(silent).unwrap_or(now);
        let dead_at = heard + self.idle_timeout;
        let Some(interval) = self.keep_alive else {
            return Verdict::Wait(dead_at.max(now + TICK));
        };
        // Ping when the peer has been silent for an interval, and our last ping (if it
        // came after the peer's last frame) is an interval old.
        let quiet_since = self.last_ping.map_or(heard, |ping| ping.max(heard));
        let ping_at = quiet_since + interval;
        if now >= ping_at {
            self.last_ping = Some(now);
            Verdict::Ping(dead_at.min(now + interval).max(now + TICK))
        } else {
            Verdict::Wait(dead_at.min(ping_at).max(now + TICK))
        }
    }
}

/// The resolution of the peer's silence (it is measured in milliseconds): no check is
/// scheduled closer than this, so that a check a hair too early does not spin.
const TICK: Duration = Duration::from_millis(1);

/// Why the driver's main loop stopped.
enum Stop {
    /// A handle asked to close; reply when done.
    Close(Option<oneshot::Sender<()>>),
    /// The connection ended.
    Ended(CloseReason),
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) {
        let first = Instant::now()
            + self
                .liveness
                .keep_alive
                .unwrap_or(self.liveness.idle_timeout);
        let mut check = pin!(tokio::time::sleep_until(first));
        let stop = poll_fn(|cx| {
            // Read everything the peer sent before judging its silence: a driver that was
            // not scheduled for a while must not take its own delay for the peer's.
            if let Poll::Ready(stop) = self.poll_step(cx) {
                return Poll::Ready(stop);
            }
            while check.as_mut().poll(cx).is_ready() {
                let silent = self.shared.wire.silent_for();
                match self.liveness.check(Instant::now(), silent) {
                    Verdict::Dead => {
                        debug!(?silent, "no frame from the peer within the idle timeout");
                        return Poll::Ready(Stop::Ended(CloseReason::Failed(Error::Timeout {
                            what: TimeoutKind::Idle,
                            after: self.liveness.idle_timeout,
                        })));
                    }
                    Verdict::Ping(next) => {
                        trace!(?silent, "sending a keep-alive ping");
                        self.shared.wire.request_ping();
                        // The writer sends it when the connection is polled next.
                        cx.waker().wake_by_ref();
                        check.as_mut().reset(next);
                    }
                    Verdict::Wait(next) => check.as_mut().reset(next),
                }
            }
            Poll::Pending
        })
        .await;
        match stop {
            Stop::Ended(reason) => {
                let idle = matches!(
                    reason,
                    CloseReason::Failed(Error::Timeout {
                        what: TimeoutKind::Idle,
                        ..
                    })
                );
                self.shared.set_reason(reason);
                if idle {
                    // Everything waiting fails now; then a peer that was only idle, not
                    // gone (no keep-alive), is told the session ended (GoAway, TLS
                    // close_notify) rather than left to find a dropped connection.
                    self.fail_pending_opens();
                    self.close_connection().await;
                }
            }
            Stop::Close(reply) => {
                self.close_connection().await;
                self.shared.set_reason(CloseReason::Local);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
        }
        self.fail_pending_opens();
        // The stream opened ahead of time belongs to a connection that is gone.
        self.shared
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Fails the opens that are still waiting, with the session's close reason.
    fn fail_pending_opens(&mut self) {
        let reason = self.shared.close_reason().unwrap_or(CloseReason::Local);
        for waiter in self.pending_opens.drain(..) {
            let _ = waiter.send(Err(reason.to_error()));
        }
    }

    /// Closes the connection gracefully (yamux GoAway, then TLS close_notify), within the
    /// close timeout; after it the connection is dropped.
    async fn close_connection(&mut self) {
        let closing = poll_fn(|cx| self.conn.poll_close(cx));
        match tokio::time::timeout(self.close_timeout, closing).await {
            Ok(Ok(())) => trace!("session closed gracefully"),
            Ok(Err(e)) => debug!("error while closing session: {e}"),
            Err(_) => debug!("graceful close timed out; dropping the connection"),
        }
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Stop> {
        // Commands from handles.
        loop {
            match self.commands.poll_recv(cx) {
                Poll::Ready(Some(Command::Open(reply))) => {
                    self.pending_opens.push_back(reply);
                    self.refill = true;
                }
                Poll::Ready(Some(Command::Refill)) => self.refill = true,
                Poll::Ready(Some(Command::Close(reply))) => {
                    return Poll::Ready(Stop::Close(Some(reply)));
                }
                // Every handle is gone: nobody can use the session any more.
                Poll::Ready(None) => return Poll::Ready(Stop::Close(None)),
                Poll::Pending => break,
            }
        }

        // Outbound streams.
        while let Some(waiter) = self.pending_opens.front() {
            if waiter.is_closed() {
                self.pending_opens.pop_front();
                continue;
            }
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    if let Some(waiter) = self.pending_opens.pop_front() {
                        // If the opener gave up, dropping the stream resets it.
                        let _ = waiter.send(Ok(stream));
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Stop::Ended(self.reason_for(e))),
                Poll::Pending => break,
            }
        }
        if self.refill && self.pending_opens.is_empty() {
            let mut ready = self.shared.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.is_some() {
                self.refill = false;
            } else {
                match self.conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        *ready = Some(stream);
                        self.refill = false;
                    }
                    Poll::Ready(Err(e)) => {
                        drop(ready);
                        return Poll::Ready(Stop::Ended(self.reason_for(e)));
                    }
                    Poll::Pending => {}
                }
            }
        }

        // Inbound streams and, underneath, all reading and writing of the connection.
        loop {
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => self.on_inbound(stream, cx),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Stop::Ended(self.reason_for(e))),
                Poll::Ready(None) => {
                    let reason = match self.shared.wire.go_away() {
                        Some(0) | None => None,
                        Some(code) => Some(format!("yamux GoAway code {code}")),
                    };
                    return Poll::Ready(Stop::Ended(CloseReason::Peer(reason)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn on_inbound(&mut self, mut stream: yamux::Stream, cx: &mut Context<'_>) {
        if !self.shared.try_reserve_stream() {
            debug!(
                id = stream.id().val(),
                max = self.shared.max_streams,
                "peer opened a stream beyond max_streams; resetting it"
            );
            // Dropping an unacknowledged stream sends RST.
            drop(stream);
            return;
        }
        // Acknowledge now, not at first use: a hashicorp yamux peer stops opening
        // streams after 256 unacknowledged ones.
        // If the stream's command queue is full (rare), the ACK goes with its first frame.
        let _ = ack(&mut stream, cx);
        let wrapped = Stream::new(stream, self.shared.clone());
        if let Err(e) = self.inbound.try_send(wrapped) {
            // Cannot happen while streams are counted against max_streams (the queue
            // has that capacity); if it does, the stream is reset by dropping it.
            debug!("inbound queue full: {e}");
        }
    }

    /// The close reason for a connection error from the yamux crate.
    fn reason_for(&self, err: yamux::ConnectionError) -> CloseReason {
        use yamux::ConnectionError as E;
        match err {
            E::Closed => CloseReason::Peer(None),
            // The kernel gave up on a peer that stopped acknowledging (TCP_USER_TIMEOUT or
            // keep-alive probes, both set from the idle timeout): a dead peer.
            E::Io(io) | E::Decode(yamux::FrameDecodeError::Io(io))
                if io.kind() == std::io::ErrorKind::TimedOut =>
            {
                CloseReason::Failed(Error::Timeout {
                    what: TimeoutKind::Idle,
                    after: self.liveness.idle_timeout,
                })
            }
            E::Io(io) | E::Decode(yamux::FrameDecodeError::Io(io)) => {
                CloseReason::Failed(Error::io(io))
            }
            E::Decode(e) => CloseReason::Failed(Error::Protocol(format!("yamux: {e}"))),
            E::InvalidWindowUpdate => {
                CloseReason::Failed(Error::Protocol("yamux: invalid window update".into()))
            }
            E::TooManyStreams => CloseReason::Failed(Error::Protocol(
                "yamux: the peer opened far more streams than allowed".into(),
            )),
            other => CloseReason::Failed(Error::Protocol(format!("yamux: {other}"))),
        }
    }
}

/// Queues the ACK of an inbound stream (an empty DATA frame).
fn ack(stream: &mut yamux::Stream, cx: &mut Context<'_>) -> Poll<()> {
    use futures::io::AsyncWrite as _;
    match std::pin::Pin::new(stream).poll_write(cx, &[]) {
        Poll::Ready(_) => Poll::Ready(()),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(keep_alive: Option<u64>, idle: u64) -> Liveness {
        let mut options = Options::default();
        options
            .idle_timeout(Duration::from_millis(idle))
            .keep_alive_interval(keep_alive.map(Duration::from_millis));
        Liveness::new(&options)
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pings_once_per_interval_of_silence_then_declares_the_peer_dead() {
        let mut l = liveness(Some(500), 2000);
        let t0 = Instant::now();
        // Heard 100 ms ago: wait for the interval to pass.
        assert_eq!(l.check(t0, 100 * MS), Verdict::Wait(t0 + 400 * MS));
        // Silent for an interval: ping, and look again an interval later.
        assert_eq!(l.check(t0, 500 * MS), Verdict::Ping(t0 + 500 * MS));
        // Still silent just after: no second ping yet.
        let t1 = t0 + 100 * MS;
        assert_eq!(l.check(t1, 600 * MS), Verdict::Wait(t0 + 500 * MS));
        let t2 = t0 + 500 * MS;
        assert_eq!(l.check(t2, 1000 * MS), Verdict::Ping(t2 + 500 * MS));
        // The next check after the last ping is capped by the dead-peer deadline.
        let t3 = t0 + 1400 * MS;
        assert_eq!(l.check(t3, 1900 * MS), Verdict::Ping(t3 + 100 * MS));
        assert_eq!(l.check(t3 + 100 * MS, 2000 * MS), Verdict::Dead);
    }

    #[test]
    fn an_answer_resets_the_schedule() {
        let mut l = liveness(Some(500), 2000);
        let t0 = Instant::now();
        assert!(matches!(l.check(t0, 500 * MS), Verdict::Ping(_)));
        // The answer came 10 ms after the ping: next ping an interval after it.
        let t1 = t0 + 500 * MS;
        assert_eq!(l.check(t1, 490 * MS), Verdict::Wait(t1 + 10 * MS));
    }

    /// A connection whose peer already hung up: writes fail with `EPIPE`, and what the
    /// peer sent before it went (`input`) can only be read once a write was tried, so the
    /// driver meets the failed write before the peer's last frames.
    struct HungUp {
        input: std::io::Cursor<Vec<u8>>,
        wrote: bool,
        reader: Option<std::task::Waker>,
    }

    impl HungUp {
        fn new(input: Vec<u8>) -> Self {
            Self {
                input: std::io::Cursor::new(input),
                wrote: false,
                reader: None,
            }
        }
    }

    impl AsyncRead for HungUp {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if !self.wrote {
                self.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HungUp {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.wrote = true;
            if let Some(reader) = self.reader.take() {
                reader.wake();
            }
            Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Starts a session on `io` and opens a stream, which makes the driver write.
    async fn session_on_hung_up(input: Vec<u8>) -> CloseReason {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let session = Session::start(Start {
            io: HungUp::new(input),
            mode: yamux::Mode::Server,
            options: Options::default(),
            local_addr: addr,
            remote_addr: addr,
            peer_identity: None,
        });
        // Whether the open gets through before the session ends does not matter.
        let _ = session.open().await;
        session.closed().await
    }

    #[tokio::test]
    async fn a_peer_that_closed_gracefully_while_we_wrote_closed_the_session() {
        // GoAway (normal termination); then the peer's socket closed.
        let go_away = crate::wire::header_bytes(crate::wire::TYPE_GO_AWAY, 0, 0, 0);
        let reason = session_on_hung_up(go_away.to_vec()).await;
        assert!(
            matches!(reason, CloseReason::Peer(None)),
            "expected a close by the peer, got {reason:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_that_hung_up_without_go_away_fails_the_session() {
        let reason = session_on_hung_up(Vec::new()).await;
        match reason {
            CloseReason::Failed(Error::Io(e)) => {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}")
            }
            other => panic!("expected the broken pipe, got {other:?}"),
        }
    }

    #[test]
    fn without_keep_alive_only_the_idle_timeout_counts() {
        let mut l = liveness(None, 1000);
        let t0 = Instant::now();
        assert_eq!(l.check(t0, 300 * MS), Verdict::Wait(t0 + 700 * MS));
        assert_eq!(l.check(t0, 1000 * MS), Verdict::Dead);
        // A check a hair early does not spin.
        assert_eq!(
            l.check(t0, 1000 * MS - Duration::from_micros(10)),
            Verdict::Wait(t0 + MS)
        );
    }
}
