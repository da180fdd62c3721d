//! The two forwarders: streams a session accepts to a TCP target, and TCP connections a
//! local listener accepts to streams opened on a session.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use qymux_transport::{CloseReason, Error, Limit, Session, Stream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{ForwardConfig, Target};
use crate::pump::{Conn, End, PumpError, reset_on_close};
use crate::stats::{Counters, Outcome, Stats, Tally};

/// How long the TCP accept loop pauses after an accept error (out of file descriptors,
/// say) before it tries again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Why a forwarder stopped.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum StopReason {
    /// [`ForwardHandle::shutdown`] was called: nothing new was accepted, and the
    /// connections in progress ran to their end.
    Shutdown,
    /// [`ForwardHandle::abort`] was called: the connections in progress were reset.
    Aborted,
    /// The session ended; connections in progress on it failed with it.
    SessionEnded(CloseReason),
    /// (Tunnel server) the listener for agents stopped accepting sessions.
    ListenerFailed(Error),
    /// (Tunnel agent) dialing failed in a way that retrying cannot fix, such as an
    /// invalid configuration.
    DialFailed(Error),
}

impl StopReason {
    /// Whether the forwarder stopped because it was asked to.
    pub fn is_requested(&self) -> bool {
        matches!(self, StopReason::Shutdown | StopReason::Aborted)
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Shutdown => f.write_str("shut down"),
            StopReason::Aborted => f.write_str("aborted"),
            StopReason::SessionEnded(reason) => write!(f, "the session ended: {reason}"),
            StopReason::ListenerFailed(e) => write!(f, "the listener failed: {e}"),
            StopReason::DialFailed(e) => write!(f, "dialing failed: {e}"),
        }
    }
}

/// What a forwarder reports when it has stopped: why, and what it did.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Why it stopped.
    pub reason: StopReason,
    /// The final counts.
    pub stats: Stats,
}

/// A request to a running forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Run,
    Shutdown,
    Abort,
}

/// What a forwarder and its handles share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) counters: Arc<Counters>,
    control: watch::Sender<Control>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Shared {
            counters: Arc::default(),
            control: watch::Sender::new(Control::Run),
        })
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Control> {
        self.control.subscribe()
    }
}

/// Controls a running forwarder (or tunnel server or agent) from anywhere: cheap to
/// clone, and every method takes `&self`.
#[derive(Debug, Clone)]
pub struct ForwardHandle {
    shared: Arc<Shared>,
}

impl ForwardHandle {
    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// For diagnosing a stalled transfer (tests print it when one hangs): the last step
    /// of each copy direction of the connection polled last (which read or write
    /// returned `Pending`, with how many bytes) and how often each was polled. Not a
    /// stable format.
    #[doc(hidden)]
    pub fn pump_trace(&self) -> String {
        self.shared.counters.trace()
    }

    /// Stops accepting new connections; the ones in progress run to their end, then the
    /// forwarder resolves with [`StopReason::Shutdown`].
    pub fn shutdown(&self) {
        self.shared.control.send_if_modified(|c| {
            let run = *c == Control::Run;
            if run {
                *c = Control::Shutdown;
            }
            run
        });
    }

    /// Stops now: connections in progress are reset on both sides (TCP RST, stream
    /// abort); the forwarder resolves with [`StopReason::Aborted`].
    pub fn abort(&self) {
        self.shared.control.send_replace(Control::Abort);
    }
}

/// A running forwarder, as a future: it resolves with [`Stopped`] when the forwarder has
/// stopped, saying why.
///
/// Nothing happens until it is awaited or spawned (`tokio::spawn(forwarder)`). Use
/// [`Forwarder::handle`] to watch and stop it while it runs. Dropping it stops it like
/// [`ForwardHandle::abort`]: connections in progress are reset, never left to look
/// complete.
#[must_use = "a forwarder does nothing unless awaited or spawned"]
pub struct Forwarder {
    shared: Arc<Shared>,
    run: Pin<Box<dyn Future<Output = StopReason> + Send + 'static>>,
}

impl Forwarder {
    pub(crate) fn new(
        shared: Arc<Shared>,
        run: impl Future<Output = StopReason> + Send + 'static,
    ) -> Self {
        Self {
            shared,
            run: Box::pin(run),
        }
    }

    /// A handle to watch and stop this forwarder.
    pub fn handle(&self) -> ForwardHandle {
        ForwardHandle {
            shared: self.shared.clone(),
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Future for Forwarder {
    type Output = Stopped;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stopped> {
        self.run.as_mut().poll(cx).map(|reason| Stopped {
            reason,
            stats: self.shared.counters.snapshot(),
        })
    }
}

/// Forwards every stream `session` accepts to a new TCP connection to `target`, with
/// the default [`ForwardConfig`]; see [`ForwardConfig::forward_accepted`].
///
/// ```no_run
/// # async fn f(session: qymux_transport::BoxSession) {
/// // Whatever the peer opens reaches the local web server.
/// let stopped = qymux_forward::forward_accepted(session, "127.0.0.1:8080").await;
/// println!("forwarder stopped: {}", stopped.reason);
/// # }
/// ```
pub fn forward_accepted<S: Session>(session: S, target: impl Into<Target>) -> Forwarder {
    ForwardConfig::default().forward_accepted(session, target)
}

/// Forwards every connection `listener` accepts to a new stream opened on `session`,
/// with the default [`ForwardConfig`]; see [`ForwardConfig::forward_listener`].
pub fn forward_listener<S: Session>(listener: TcpListener, session: S) -> Forwarder {
    ForwardConfig::default().forward_listener(listener, session)
}

impl ForwardConfig {
    /// Forwards every stream `session` accepts to a new TCP connection to `target`
    /// (`TCP_NODELAY` set), byte for byte, until the session ends.
    ///
    /// - **Half-close** passes through both ways: when one side finishes writing (stream
    ///   EOF, or the TCP peer's `shutdown(Write)`), the other side's write half is shut
    ///   down, and the other direction goes on until it ends too.
    /// - **Errors** pass through as resets: when one side fails (the target refuses or
    ///   resets the connection, the stream is aborted, the session is lost), the stream
    ///   is aborted and the TCP connection reset (RST), so neither side reads a clean
    ///   end of data that was not one.
    /// - Each connection's failure is logged (`tracing`) and counted in [`Stats`]; it
    ///   never stops the forwarder. Streams over
    ///   [`max_connections`](ForwardConfig::max_connections) are aborted at once.
    ///
    /// The returned [`Forwarder`] resolves with [`StopReason::SessionEnded`] once the
    /// session has ended and its connections have finished failing.
    pub fn forward_accepted<S: Session>(&self, session: S, target: impl Into<Target>) -> Forwarder {
        let shared = Shared::new();
        let run = run_accepted(session, target.into(), self.clone(), shared.clone());
        Forwarder::new(shared, run)
    }

    /// Forwards every connection `listener` accepts to a new stream opened on
    /// `session`, with the same byte-exact, half-close and reset behaviour as
    /// [`ForwardConfig::forward_accepted`]. A connection for which no stream can be
    /// opened (the session refused it, or is gone) is reset; one over
    /// [`max_connections`](ForwardConfig::max_connections) is reset at once. Accept
    /// errors (such as running out of file descriptors) are logged and retried.
    ///
    /// The returned [`Forwarder`] resolves with [`StopReason::SessionEnded`] once the
    /// session has ended.
    pub fn forward_listener<S: Session>(&self, listener: TcpListener, session: S) -> Forwarder {
        let shared = Shared::new();
        let ended = {
            let session = session.clone();
            async move { StopReason::SessionEnded(session.closed().await) }
        };
        let run = run_listener(
            listener,
            Arc::new(OneSession(session)),
            self.clone(),
            shared.clone(),
            ended,
        );
        Forwarder::new(shared, run)
    }
}

/// Waits until a stop is requested.
pub(crate) async fn requested(control: &mut watch::Receiver<Control>) -> StopReason {
    let control = control.wait_for(|c| *c != Control::Run).await.map(|c| *c);
    let control = match control {
        Ok(c) => c,
        // The sender lives in `Shared`, which the caller holds: never closed.
        Err(_) => std::future::pending().await,
    };
    if control == Control::Abort {
        StopReason::Aborted
    } else {
        StopReason::Shutdown
    }
}

/// Waits until an abort is requested.
async fn abort_requested(control: &mut watch::Receiver<Control>) {
    let requested = control.wait_for(|c| *c == Control::Abort).await.is_ok();
    if !requested {
        std::future::pending::<()>().await;
    }
}

/// Waits for the connections in progress to end (resetting them if `reason` is
/// [`StopReason::Aborted`] or an abort is requested meanwhile).
async fn drain(
    mut conns: JoinSet<()>,
    control: &mut watch::Receiver<Control>,
    mut reason: StopReason,
    refuse_new: impl Future<Output = ()>,
) -> StopReason {
    if !matches!(reason, StopReason::Aborted) {
        let mut refuse_new = pin!(refuse_new);
        loop {
            tokio::select! {
                done = conns.join_next() => if done.is_none() { return reason },
                () = &mut refuse_new => {}
                () = abort_requested(control) => {
                    if matches!(reason, StopReason::Shutdown) {
                        reason = StopReason::Aborted;
                    }
                    break;
                }
            }
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    reason
}

pub(crate) fn close_reason_of(error: Error) -> CloseReason {
    match error {
        Error::Closed => CloseReason::Local,
        Error::ClosedByPeer(reason) => CloseReason::Peer(reason),
        other => CloseReason::Failed(other),
    }
}

/// A permit for one more connection, or the cap that refuses it.
fn permit(limit: &Option<(usize, Arc<Semaphore>)>) -> Result<Option<OwnedSemaphorePermit>, usize> {
    match limit {
        None => Ok(None),
        Some((max, semaphore)) => semaphore
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| *max),
    }
}

fn limit_of(config: &ForwardConfig) -> Option<(usize, Arc<Semaphore>)> {
    config
        .max_connections_value()
        .map(|max| (max, Arc::new(Semaphore::new(max))))
}

/// The loop behind [`ForwardConfig::forward_accepted`]; `shared` may be shared by
/// successive sessions (the tunnel agent).
pub(crate) async fn run_accepted<S: Session>(
    session: S,
    target: Target,
    config: ForwardConfig,
    shared: Arc<Shared>,
) -> StopReason {
    let mut control = shared.subscribe();
    let limit = limit_of(&config);
    let mut conns = JoinSet::new();
    let reason = loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            stop = requested(&mut control) => break stop,
            accepted = session.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok(stream) => stream,
            Err(e) => match session.close_reason() {
                Some(reason) => break StopReason::SessionEnded(reason),
                None if e.is_session_closed() => {
                    break StopReason::SessionEnded(close_reason_of(e));
                }
                None => {
                    warn!(error = %e.report(), "accepting a stream failed; trying again");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let permit = match permit(&limit) {
            Ok(permit) => permit,
            Err(max) => {
                // Counted before the peer can see it, so that stats agree with what
                // the client saw.
                shared.counters.refused();
                stream.abort();
                warn!(
                    stream = stream.id(),
                    "stream refused (aborted): {max} connections already forwarded (max_connections)"
                );
                continue;
            }
        };
        let tally = shared.counters.start();
        let span = info_span!("forward", stream = stream.id(), target = %target);
        conns.spawn(
            serve_stream(
                stream,
                ended(&session),
                target.clone(),
                config.clone(),
                shared.counters.clone(),
                tally,
                permit,
            )
            .instrument(span),
        );
    };
    // Streams the peer opens from now on are refused rather than left waiting.
    let refuse_new = async {
        while let Ok(mut stream) = session.accept().await {
            shared.counters.refused();
            stream.abort();
            debug!(
                stream = stream.id(),
                "stream refused (aborted): the forwarder is stopping"
            );
        }
        std::future::pending::<()>().await;
    };
    drain(conns, &mut control, reason, refuse_new).await
}

/// Forwards one accepted stream to a new connection to `target`.
async fn serve_stream<T: Stream>(
    mut stream: T,
    ended: Ended,
    target: Target,
    config: ForwardConfig,
    counters: Arc<Counters>,
    mut tally: Tally,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let tcp = match target.connect(config.connect_timeout_value()).await {
        Ok(tcp) => tcp,
        Err(e) => {
            stream.abort();
            tally.set(Outcome::Failed);
            warn!(error = %e, "connecting to the target failed; stream aborted");
            return;
        }
    };
    debug!(local = ?tcp.local_addr().ok(), "connected to the target");
    run_conn(
        Conn::new(tcp, stream),
        ended,
        config.buffer_size_value(),
        &counters,
        &mut tally,
    )
    .await;
}

/// Resolves when a session has ended, with why.
pub(crate) type Ended = Pin<Box<dyn Future<Output = CloseReason> + Send>>;

pub(crate) fn ended<S: Session>(session: &S) -> Ended {
    let session = session.clone();
    Box::pin(async move { session.closed().await })
}

/// Pumps one connection to its end and classifies it. A connection still in progress
/// when its session ends fails then, even if the backend did not wake its stream.
async fn run_conn<T: Stream>(
    mut conn: Conn<T>,
    ended: Ended,
    buffer: usize,
    counters: &Counters,
    tally: &mut Tally,
) {
    let result = tokio::select! {
        biased;
        result = conn.pump(buffer, counters) => result,
        reason = ended => Err(PumpError::session_ended(reason)),
    };
    match result {
        Ok(()) => {
            conn.finish();
            tally.set(Outcome::Completed);
            debug!("connection completed");
        }
        Err(e) => {
            tally.set(Outcome::Failed);
            let id = conn.stream_id();
            // Dropping resets the TCP side and aborts the stream.
            drop(conn);
            match e.end() {
                End::Tcp => info!(stream = id, "{e}; stream aborted, TCP connection reset"),
                End::Stream => info!(stream = id, "{e}; TCP connection reset, stream aborted"),
            }
        }
    }
}

/// Why no stream could be opened for a TCP connection.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Turned away on purpose (a limit, no agent): counted as refused.
    Refused(String),
    /// Opening failed.
    Failed(Error),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        match e {
            Error::LimitReached(limit) => OpenError::Refused(match limit {
                Limit::Streams(n) => format!("the session has {n} streams open (max_streams)"),
                other => other.to_string(),
            }),
            other => OpenError::Failed(other),
        }
    }
}

/// Where the TCP connections of a listener forwarder get their streams.
pub(crate) trait Opener: Send + Sync + 'static {
    type Stream: Stream;

    /// A new stream, and when its session ends.
    fn open(&self) -> impl Future<Output = Result<(Self::Stream, Ended), OpenError>> + Send;
}

struct OneSession<S>(S);

impl<S: Session> Opener for OneSession<S> {
    type Stream = S::Stream;

    async fn open(&self) -> Result<(S::Stream, Ended), OpenError> {
        Ok((self.0.open().await?, ended(&self.0)))
    }
}

/// A TCP connection that is reset if dropped before it is handed on.
struct Pending(Option<TcpStream>);

impl Pending {
    fn take(mut self) -> TcpStream {
        self.0.take().expect("taken once")
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(tcp) = &self.0 {
            reset_on_close(tcp);
        }
    }
}

/// The loop behind [`ForwardConfig::forward_listener`] and the tunnel server: accepts
/// TCP connections until a stop is requested or `until` resolves.
pub(crate) async fn run_listener<O: Opener>(
    listener: TcpListener,
    opener: Arc<O>,
    config: ForwardConfig,
    shared: Arc<Shared>,
    until: impl Future<Output = StopReason> + Send,
) -> StopReason {
    let mut control = shared.subscribe();
    let limit = limit_of(&config);
    let mut conns = JoinSet::new();
    let mut until = Box::pin(until);
    let reason = loop {
        let accepted = tokio::select! {
            biased;
            stop = requested(&mut control) => break stop,
            reason = &mut until => break reason,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a TCP connection failed; trying again");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let tcp = Pending(Some(tcp));
        let permit = match permit(&limit) {
            Ok(permit) => permit,
            Err(max) => {
                shared.counters.refused(); // before the client can see the reset
                drop(tcp); // reset
                warn!(%peer, "connection refused (reset): {max} connections already forwarded (max_connections)");
                continue;
            }
        };
        let tally = shared.counters.start();
        let span = info_span!("forward", %peer, stream = tracing::field::Empty);
        conns.spawn(
            serve_tcp(
                tcp,
                peer,
                opener.clone(),
                config.buffer_size_value(),
                shared.counters.clone(),
                tally,
                permit,
            )
            .instrument(span),
        );
    };
    // New connections are refused by the kernel from now on, not left in the backlog.
    drop(listener);
    drop(until);
    drain(conns, &mut control, reason, std::future::pending()).await
}

/// Forwards one accepted TCP connection to a new stream.
async fn serve_tcp<O: Opener>(
    tcp: Pending,
    peer: SocketAddr,
    opener: Arc<O>,
    buffer: usize,
    counters: Arc<Counters>,
    mut tally: Tally,
    _permit: Option<OwnedSemaphorePermit>,
) {
    if let Some(t) = &tcp.0 {
        let _ = t.set_nodelay(true);
    }
    let (stream, ended) = match opener.open().await {
        Ok(opened) => opened,
        Err(OpenError::Refused(why)) => {
            tally.set(Outcome::Refused);
            warn!(%peer, "connection refused (reset): {why}");
            return; // `tcp` is reset as it drops
        }
        Err(OpenError::Failed(e)) => {
            tally.set(Outcome::Failed);
            warn!(%peer, error = %e.report(), "opening a stream failed; connection reset");
            return;
        }
    };
    tracing::Span::current().record("stream", stream.id());
    debug!("stream opened");
    run_conn(
        Conn::new(tcp.take(), stream),
        ended,
        buffer,
        &counters,
        &mut tally,
    )
    .await;
}
