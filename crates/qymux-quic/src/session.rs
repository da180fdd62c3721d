//! A QUIC connection as a Qymux [`Session`](qymux_transport::Session).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use qymux_transport::{
    CloseReason, Error, Incoming, Limit, Options, PeerIdentity, Protocol, Result, SessionStats,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug};

use crate::config::initial_stream_credit;
use crate::error::{SESSION_CLOSED, STREAM_ABORTED, close_reason};
use crate::stream::Stream;

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// State the session handles and the streams share. Dropping the last of them lets the
/// finished streams deliver (bounded by the close timeout), then drops the quinn
/// connection, which closes it.
pub(crate) struct Shared {
    pub(crate) connection: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// Whether this session made `endpoint` for itself (a dial), so `close` may wait for
    /// it to go idle.
    owns_endpoint: bool,
    pub(crate) streams_open: AtomicUsize,
    /// Streams this side opened that are still held (part of `streams_open`).
    pub(crate) outbound_open: AtomicUsize,
    max_streams: usize,
    /// How many streams the peer may open beyond those this side accepted: the grant
    /// grows no further than that.
    accept_backlog: usize,
    /// How many concurrent streams the peer is granted now (QUIC `MAX_STREAMS`).
    stream_credit: AtomicUsize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    close_timeout: Duration,
    peer_identity: Option<PeerIdentity>,
    /// Finished streams whose data the peer has not acknowledged yet; `close` lets them
    /// complete first.
    finishing: Mutex<Finishing>,
    /// Set when a drain begins: no new streams either way.
    draining: AtomicBool,
    /// The streams waiting for `accept`, and the drain, if one began. Also held while the
    /// stream grant grows, so that no grant follows the drain's "no more streams".
    drain: Mutex<Drain>,
    /// Notified when the intake task queued a stream for `accept`, or a drain began.
    queued: Notify,
    /// Dropped with [`Shared`]: tells the intake task that nothing holds the session any
    /// more, so that it lets go of the connection.
    _intake_alive: oneshot::Sender<()>,
    /// What the drain task, `drain` and `accept` wait on.
    drain_signals: Arc<DrainSignals>,
    /// The graceful close sequence, run once however many `close` calls overlap: a
    /// second caller waits for the first's instead of cutting its delivery short.
    closing: tokio::sync::OnceCell<()>,
    /// Stream bytes read and written, streams accepted and opened (for `stats`).
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    streams_in: AtomicU64,
    streams_out: AtomicU64,
    /// `qymux_session{id, protocol, local, remote}`: the session's operations and its
    /// drain task run in it.
    span: tracing::Span,
}

#[derive(Default)]
struct Drain {
    started: bool,
    /// Streams the peer opened (before the drain began, if one did), waiting for
    /// `accept`; each holds its slot in `streams_open`.
    waiting: VecDeque<(SendStream, RecvStream)>,
    /// Dropped with [`Shared`]: tells the drain task that nothing holds the session any
    /// more.
    alive: Option<oneshot::Sender<()>>,
}

struct DrainSignals {
    /// Notified when a drain begins and when the last stream of a draining session is
    /// released.
    events: Notify,
    /// Becomes `true` when the drain task is done (the session is closed).
    done: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Refuses a stream the peer opened: resets it both ways.
fn refuse(mut send: SendStream, mut recv: RecvStream) {
    let _ = send.reset(VarInt::from_u32(STREAM_ABORTED));
    let _ = recv.stop(VarInt::from_u32(STREAM_ABORTED));
}

impl Drop for Shared {
    fn drop(&mut self) {
        // quinn would finish these on drop; the peer must see them refused, not empty.
        let drain = self.drain.get_mut().unwrap_or_else(|e| e.into_inner());
        for (send, recv) in drain.waiting.drain(..) {
            refuse(send, recv);
        }
        // The last handle is gone. quinn closes a connection as soon as nothing refers to
        // it, dropping the data of finished streams not yet delivered; TCP would deliver
        // it. Each waiting `Pending` keeps the connection alive, so a task awaits them
        // (bounded by the close timeout) and lets the connection close after. A close
        // already begun (`close`, or the peer) has nothing left to deliver.
        let finishing = std::mem::take(
            &mut self
                .finishing
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .pending,
        );
        if finishing.is_empty() || self.connection.close_reason().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let endpoint = self.owns_endpoint.then(|| self.endpoint.clone());
        let deadline = Instant::now() + self.close_timeout;
        runtime.spawn(
            async move {
                if timeout_at(deadline, async {
                    for done in finishing {
                        done.await;
                    }
                })
                .await
                .is_err()
                {
                    debug!("dropped session: finished streams not acknowledged within the close timeout");
                }
                // The last `Pending` is gone: quinn sends CONNECTION_CLOSE (code 0).
                if let Some(endpoint) = endpoint
                    && timeout_at(deadline, endpoint.wait_idle()).await.is_err()
                {
                    debug!("endpoint not idle within the close timeout");
                }
            }
            .instrument(self.span.clone()),
        );
    }
}

struct Finishing {
    pending: Vec<Pending>,
    /// Completed entries are pruned when the list reaches this length.
    prune_at: usize,
}

impl Shared {
    pub(crate) fn reason_for(&self, err: &ConnectionError) -> CloseReason {
        close_reason(err, self.idle_timeout)
    }

    pub(crate) fn error_for(&self, err: &ConnectionError) -> Error {
        self.reason_for(err).to_error()
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.connection
            .close_reason()
            .map(|err| self.reason_for(&err))
    }

    /// Counts a new stream against the limit.
    fn try_reserve_stream(&self) -> bool {
        self.streams_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_streams).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a stream's slot of `max_streams`; the last one of a draining session
    /// wakes the drain.
    pub(crate) fn release_stream(&self) {
        // SeqCst pairs with `start_drain`: either this sees the drain, or the drain task
        // sees the count this leaves.
        if self.streams_open.fetch_sub(1, Ordering::SeqCst) == 1
            && self.draining.load(Ordering::SeqCst)
        {
            self.drain_signals.events.notify_waiters();
        }
    }

    /// Doubles the peer's stream grant, up to `max_streams`, once half of it is in use
    /// (streams waiting for `accept` included): the peer gets room for more before it runs
    /// out, however slowly the application accepts, and a session that never has many
    /// streams keeps quinn's per-stream table small. The grant stays within the accepted
    /// streams plus `accept_backlog`, and never grows once a drain began.
    fn grow_stream_credit(&self) {
        let drain = lock(&self.drain);
        if drain.started {
            return;
        }
        let open = self.streams_open.load(Ordering::Acquire);
        let credit = self.stream_credit.load(Ordering::Acquire);
        if credit >= self.max_streams || open * 2 < credit {
            return;
        }
        let accepted = open
            .saturating_sub(self.outbound_open.load(Ordering::Acquire))
            .saturating_sub(drain.waiting.len());
        let grown = credit
            .saturating_mul(2)
            .min(self.max_streams)
            .min(accepted.saturating_add(self.accept_backlog));
        if grown <= credit {
            return;
        }
        // Changed only under the lock.
        self.stream_credit.store(grown, Ordering::Release);
        // `max_streams` was checked to fit a u32 when the session was configured.
        let count = VarInt::from_u32(u32::try_from(grown).unwrap_or(u32::MAX));
        self.connection.set_max_concurrent_bi_streams(count);
        drop(drain);
        debug!(streams = grown, "granted the peer more concurrent streams");
    }

    /// A stream the peer opened, taken from quinn by the intake task: queued for
    /// `accept` (holding its slot of `max_streams`), or refused when the session drains
    /// or `max_streams` streams are open.
    fn take_incoming(&self, send: SendStream, recv: RecvStream) {
        let mut drain = lock(&self.drain);
        if drain.started {
            drop(drain);
            debug!(id = %send.id(), "draining: refusing a stream the peer opened");
            refuse(send, recv);
            return;
        }
        if !self.try_reserve_stream() {
            drop(drain);
            debug!(
                id = %send.id(),
                max = self.max_streams,
                "peer opened a stream beyond max_streams; resetting it"
            );
            refuse(send, recv);
            return;
        }
        drain.waiting.push_back((send, recv));
        drop(drain);
        self.grow_stream_credit();
        self.queued.notify_waiters();
    }

    /// Begins a drain (once): no more stream grants, the streams already waiting for
    /// `accept` kept, and a task that refuses the peer's new streams and closes the
    /// session when its last stream is released. Returns whether a drain runs or ran
    /// (`false`: the session had ended before any drain).
    fn start_drain(self: &Arc<Self>) -> bool {
        let mut drain = lock(&self.drain);
        if drain.started {
            return true;
        }
        if self.connection.close_reason().is_some() {
            return false;
        }
        // Streams that reached this side before the drain carry on: take them from quinn
        // now, before the intake task (and `accept`) refuse whatever comes next.
        self.take_arrived_into(&mut drain);
        drain.started = true;
        self.draining.store(true, Ordering::SeqCst);
        // MAX_STREAMS never shrinks in QUIC: what the peer was granted stays usable, and
        // the intake task refuses those streams. No grant follows any more.
        self.connection
            .set_max_concurrent_bi_streams(VarInt::from_u32(0));
        let (alive, gone) = oneshot::channel();
        drain.alive = Some(alive);
        drop(drain);
        debug!("draining: no new streams; closing when the last one is done");
        // `accept` calls hand out the streams taken from quinn above.
        self.queued.notify_waiters();
        self.drain_signals.events.notify_waiters();
        tokio::spawn(
            drain_task(
                self.connection.clone(),
                Arc::downgrade(self),
                self.drain_signals.clone(),
                gone,
            )
            .instrument(self.span.clone()),
        );
        true
    }

    /// Queues for `accept` the streams quinn holds already (those that arrived but that
    /// the intake task did not take yet), or refuses those beyond `max_streams`, and all
    /// of them once a drain began. Returns whether any was queued.
    fn take_arrived(&self) -> bool {
        let mut drain = lock(&self.drain);
        self.take_arrived_into(&mut drain)
    }

    fn take_arrived_into(&self, drain: &mut Drain) -> bool {
        let mut queued = false;
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut accepting = pin!(self.connection.accept_bi());
            let Poll::Ready(Ok((send, recv))) = accepting.as_mut().poll(&mut cx) else {
                return queued;
            };
            // A stream still in quinn's queue once a drain began arrived after it began
            // (`start_drain` took the earlier ones): refused like those the intake task
            // sees. Handing it out would let the application act on a request after the
            // drain closed the session, when no answer can reach the peer any more.
            if drain.started {
                debug!(id = %send.id(), "draining: refusing a stream the peer opened");
                refuse(send, recv);
            } else if self.try_reserve_stream() {
                drain.waiting.push_back((send, recv));
                queued = true;
            } else {
                refuse(send, recv);
            }
        }
    }

    /// The next stream waiting for `accept`.
    fn next_waiting(&self) -> Option<(SendStream, RecvStream)> {
        lock(&self.drain).waiting.pop_front()
    }

    /// Remembers a finished stream until the peer acknowledged all of its data.
    pub(crate) fn track_finishing(&self, done: Pending) {
        let mut finishing = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        if finishing.pending.len() >= finishing.prune_at {
            let mut cx = Context::from_waker(Waker::noop());
            finishing
                .pending
                .retain_mut(|fut| fut.as_mut().poll(&mut cx).is_pending());
            finishing.prune_at = (finishing.pending.len() * 2).max(64);
        }
        finishing.pending.push(done);
    }

    fn take_finishing(&self) -> Vec<Pending> {
        let mut finishing = self.finishing.lock().unwrap_or_else(|e| e.into_inner());
        finishing.prune_at = 64;
        std::mem::take(&mut finishing.pending)
    }
}

/// Sets the drain's `done` when the drain task ends, however it ends.
struct DrainDone(Arc<DrainSignals>);

impl Drop for DrainDone {
    fn drop(&mut self) {
        self.0.done.send_replace(true);
    }
}

/// Closes a draining session (as [`Session::close`]) once no stream is open (the intake
/// task refuses the streams the peer still opens). Holds the session only weakly: if
/// every handle and stream is dropped (`gone`), quinn closes the connection as usual.
async fn drain_task(
    connection: quinn::Connection,
    shared: Weak<Shared>,
    signals: Arc<DrainSignals>,
    mut gone: oneshot::Receiver<()>,
) {
    let _done = DrainDone(signals.clone());
    loop {
        let released = signals.events.notified();
        let mut released = pin!(released);
        released.as_mut().enable();
        match shared.upgrade() {
            None => return,
            Some(shared) if shared.streams_open.load(Ordering::SeqCst) == 0 => {
                Session { shared }.close().await;
                return;
            }
            Some(_) => {}
        }
        tokio::select! {
            // The session ended (closed, or lost).
            _ = connection.closed() => return,
            () = &mut released => {}
            _ = &mut gone => return,
        }
    }
}

/// Takes the streams the peer opens from quinn as they arrive, whether or not the
/// application is accepting, and queues them for `accept` (or refuses them): the stream
/// grant grows with the streams the peer opened, not with the application's accepts.
/// Holds the session only weakly: when every handle and stream is dropped (`gone`), it
/// lets go of the connection, so that quinn closes it as usual.
async fn intake_task(
    connection: quinn::Connection,
    shared: Weak<Shared>,
    mut gone: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept_bi() => accepted,
            _ = &mut gone => return,
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match accepted {
            Ok((send, recv)) => shared.take_incoming(send, recv),
            // The session ended; `accept` sees it from the connection.
            Err(_) => return,
        }
    }
}

/// A slot of `max_streams`, given back if the open does not complete (error or
/// cancellation).
struct Reserved<'a>(Option<&'a Shared>);

impl<'a> Reserved<'a> {
    fn new(shared: &'a Shared) -> Option<Self> {
        // `then`, not `then_some`: a guard made for a failed reservation would give back
        // a slot it never took when dropped.
        shared.try_reserve_stream().then(|| Reserved(Some(shared)))
    }

    /// The slot now belongs to a [`Stream`], which gives it back when dropped.
    fn hand_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.release_stream();
        }
    }
}

/// A QUIC session; cheap to clone, usable from many tasks at once.
///
/// Implements [`qymux_transport::Session`]; see there for the behaviour of each method.
/// Every Qymux stream is one bidirectional QUIC stream. When every clone of the session
/// and every stream is dropped, the streams that were shut down deliver what was written
/// (bounded by [`Options::close_timeout`]), then the connection is closed (QUIC
/// `CONNECTION_CLOSE`, code 0). A dialed session's UDP socket and endpoint stay open
/// until then, also after the session has ended: drop ended sessions and their streams.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("local_addr", &self.local_addr())
            .field("remote_addr", &self.remote_addr())
            .field("streams_open", &self.open_streams())
            .field("close_reason", &self.close_reason())
            .finish()
    }
}

/// The certificates the peer presented, as it sent them (not verified as a chain).
pub(crate) fn presented_certificates(
    connection: &quinn::Connection,
) -> Option<Vec<CertificateDer<'static>>> {
    connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|chain| *chain)
}

impl Session {
    /// Wraps an established connection; `peer_identity` is what `qymux_tls` verified.
    pub(crate) fn new(
        connection: quinn::Connection,
        endpoint: quinn::Endpoint,
        owns_endpoint: bool,
        options: &Options,
        peer_identity: Option<PeerIdentity>,
    ) -> Session {
        let span = tracing::debug_span!(
            "qymux_session",
            id = qymux_transport::next_session_id(),
            protocol = "quic",
            local = ?endpoint.local_addr().ok(),
            remote = %connection.remote_address(),
        );
        let (intake_alive, intake_gone) = oneshot::channel();
        let session = Session {
            shared: Arc::new(Shared {
                connection,
                endpoint,
                owns_endpoint,
                streams_open: AtomicUsize::new(0),
                outbound_open: AtomicUsize::new(0),
                max_streams: options.max_streams_value(),
                accept_backlog: options.accept_backlog_value(),
                stream_credit: AtomicUsize::new(initial_stream_credit(options)),
                idle_timeout: options.idle_timeout_value(),
                handshake_timeout: options.handshake_timeout_value(),
                close_timeout: options.close_timeout_value(),
                peer_identity,
                finishing: Mutex::new(Finishing {
                    pending: Vec::new(),
                    prune_at: 64,
                }),
                draining: AtomicBool::new(false),
                drain: Mutex::new(Drain::default()),
                queued: Notify::new(),
                _intake_alive: intake_alive,
                drain_signals: Arc::new(DrainSignals {
                    events: Notify::new(),
                    done: watch::Sender::new(false),
                }),
                closing: tokio::sync::OnceCell::new(),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                streams_in: AtomicU64::new(0),
                streams_out: AtomicU64::new(0),
                span,
            }),
        };
        let shared = &session.shared;
        tokio::spawn(
            intake_task(
                shared.connection.clone(),
                Arc::downgrade(shared),
                intake_gone,
            )
            .instrument(shared.span.clone()),
        );
        session
    }

    /// Opens a stream; see [`qymux_transport::Session::open`].
    ///
    /// The stream is announced to the peer (an empty QUIC `STREAM` frame) before this
    /// returns, so the peer's `accept` sees it before any data is written.
    ///
    /// Fails with [`Limit::Streams`] when [`Options::max_streams`] streams are open on this
    /// session, and with [`Limit::PeerStreams`] when the peer's own stream limit stays
    /// exhausted for a few round trips (the peer grants new streams as it finishes old
    /// ones); `n` is then the number of streams this side has open towards the peer.
    /// Fails with [`Error::Closed`] once [`drain`](Session::drain) began.
    pub async fn open(&self) -> Result<Stream> {
        let shared = &self.shared;
        if let Some(reason) = shared.close_reason() {
            return Err(reason.to_error());
        }
        if shared.draining.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let Some(reserved) = Reserved::new(shared) else {
            return Err(Error::LimitReached(Limit::Streams(shared.max_streams)));
        };
        let opened = timeout_at(
            Instant::now() + self.peer_credit_grace(),
            shared.connection.open_bi(),
        )
        .await;
        let (send, recv) = match opened {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(shared.error_for(&e)),
            Err(_) => {
                let n = shared.outbound_open.load(Ordering::Acquire);
                debug!(open = n, "the peer's stream limit is reached");
                return Err(Error::LimitReached(Limit::PeerStreams(n)));
            }
        };
        // From here on the stream owns the reservation.
        reserved.hand_over();
        shared.outbound_open.fetch_add(1, Ordering::AcqRel);
        shared.streams_out.fetch_add(1, Ordering::Relaxed);
        let mut stream = Stream::new(send, recv, shared.clone(), true);
        stream.announce().await?;
        Ok(stream)
    }

    /// How long `open` waits for the peer to grant another stream: long enough for the
    /// credit of a stream the peer is just finishing to arrive, short enough to count as
    /// a refusal rather than a queue.
    fn peer_credit_grace(&self) -> Duration {
        (self.shared.connection.rtt() * 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(2))
            .min(self.shared.handshake_timeout)
    }

    /// Accepts a stream the peer opened; see [`qymux_transport::Session::accept`].
    ///
    /// A stream the peer opens while [`Options::max_streams`] streams are open on this
    /// session (in both directions) is reset. Once [`drain`](Session::drain) began, this
    /// hands out the streams that were waiting then, and fails when the session has
    /// closed.
    pub async fn accept(&self) -> Result<Stream> {
        let shared = &self.shared;
        loop {
            let queued = shared.queued.notified();
            let mut queued = pin!(queued);
            queued.as_mut().enable();
            // Streams that arrived are handed out even once the session has ended, as
            // quinn does: what a finished stream delivered before the close is readable.
            if let Some((send, recv)) = shared.next_waiting() {
                // Its slot was reserved when the stream was queued.
                shared.grow_stream_credit();
                shared.streams_in.fetch_add(1, Ordering::Relaxed);
                return Ok(Stream::new(send, recv, shared.clone(), false));
            }
            tokio::select! {
                () = &mut queued => {}
                err = shared.connection.closed() => {
                    // quinn may still hold streams that arrived before the end, which the
                    // intake task did not take yet.
                    if shared.take_arrived() {
                        continue;
                    }
                    return Err(shared.error_for(&err));
                }
            }
        }
    }

    /// The streams the peer opens, then the session's close reason: see
    /// [`qymux_transport::Session::incoming`]. One [`accept`](Session::accept) future
    /// lives inside the [`Incoming`] and is replaced in place for each stream, so nothing
    /// is allocated per stream. (quinn offers accepting only as a future borrowing the
    /// connection, so this backend has no `poll_accept`; poll the `Incoming` instead.)
    pub fn incoming(&self) -> Incoming<Stream> {
        Incoming::from_session(self.clone())
    }

    /// Closes the session gracefully; see [`qymux_transport::Session::close`].
    ///
    /// Streams that were finished (`shutdown`) first get to deliver their data, then the
    /// peer is sent `CONNECTION_CLOSE` (application code 0, reason `closed`). A dialed
    /// session then waits for its endpoint to go idle, so the close reaches the peer even
    /// if the process exits right after. All of it is bounded by
    /// [`Options::close_timeout`]. Calls that overlap share one sequence and all return
    /// when it is done; if the call running it is dropped, the next one takes over.
    pub async fn close(&self) {
        let shared = &self.shared;
        shared.closing.get_or_init(|| close_sequence(shared)).await;
    }

    /// Drains the session; see [`qymux_transport::Session::drain`].
    ///
    /// QUIC has no GoAway on Qymux's wire, so this stops granting the peer streams
    /// (`MAX_STREAMS` stays where it is) and resets the streams it opens with what it was
    /// granted before; its `open` fails with [`Limit::PeerStreams`] once that is used up.
    /// Streams open, or waiting for [`accept`](Session::accept) when the drain began,
    /// carry on. When the last of them is released, a task closes the session as
    /// [`close`](Session::close) does; this returns when that is done. Dropping this
    /// future does not stop the drain.
    pub async fn drain(&self) {
        let mut done = self.shared.drain_signals.done.subscribe();
        if Shared::start_drain(&self.shared) {
            let _ = done.wait_for(|done| *done).await;
        }
    }

    /// Waits until the session has ended; see [`qymux_transport::Session::closed`].
    pub async fn closed(&self) -> CloseReason {
        let err = self.shared.connection.closed().await;
        self.shared.reason_for(&err)
    }

    /// Why the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
    }

    /// This side's address: the endpoint's port, and the IP the peer's packets reach (on
    /// the server side) or the IP the OS sends from towards the peer (a dialed session,
    /// whose socket is bound to `0.0.0.0` or `::`). It follows a rebind of the endpoint.
    pub fn local_addr(&self) -> SocketAddr {
        let bound = self
            .shared
            .endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let ip = match self.shared.connection.local_ip() {
            Some(ip) => ip,
            // quinn knows the local IP only on the server side. A dialed session's socket is
            // bound to the wildcard address; the address the OS sends from is the source
            // of a route to the peer.
            None if bound.ip().is_unspecified() => {
                crate::socket::route_source(self.shared.connection.remote_address())
                    .unwrap_or(bound.ip())
            }
            None => bound.ip(),
        };
        canonical(SocketAddr::new(ip, bound.port()))
    }

    /// The peer's address; it changes when the peer migrates (NAT rebinding).
    pub fn remote_addr(&self) -> SocketAddr {
        canonical(self.shared.connection.remote_address())
    }

    /// The peer's verified certificate chain, where it presented one.
    pub fn peer_identity(&self) -> Option<PeerIdentity> {
        self.shared.peer_identity.clone()
    }

    /// Streams open right now, in both directions.
    pub fn open_streams(&self) -> usize {
        self.shared.streams_open.load(Ordering::Relaxed)
    }

    /// What the session has carried so far; see [`qymux_transport::Session::stats`].
    pub fn stats(&self) -> SessionStats {
        let shared = &self.shared;
        let mut stats = SessionStats::new(Protocol::Quic);
        stats.rtt = Some(shared.connection.rtt());
        stats.bytes_sent = shared.bytes_out.load(Ordering::Relaxed);
        stats.bytes_received = shared.bytes_in.load(Ordering::Relaxed);
        stats.streams_opened = shared.streams_out.load(Ordering::Relaxed);
        stats.streams_accepted = shared.streams_in.load(Ordering::Relaxed);
        stats.open_streams = shared.streams_open.load(Ordering::Acquire);
        stats
    }

    /// The quinn connection underneath, for statistics (RTT, congestion) and other
    /// advanced use. Opening or accepting streams on it directly bypasses Qymux's
    /// stream limit and announcement.
    pub fn connection(&self) -> &quinn::Connection {
        &self.shared.connection
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A reference to a [`Session`] that does not keep it alive (see
/// [`Tracked`](qymux_transport::registry::Tracked)).
#[derive(Debug, Clone)]
pub struct WeakSession(std::sync::Weak<Shared>);

impl qymux_transport::registry::Tracked for Session {
    type Weak = WeakSession;

    fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.shared))
    }

    fn upgrade(weak: &WeakSession) -> Option<Session> {
        weak.0.upgrade().map(|shared| Session { shared })
    }

    fn open_streams(&self) -> usize {
        Session::open_streams(self)
    }
}

impl qymux_transport::Session for Session {
    type Stream = Stream;

    fn open(&self) -> impl Future<Output = Result<Stream>> + Send {
        Session::open(self).instrument(self.shared.span.clone())
    }
    fn accept(&self) -> impl Future<Output = Result<Stream>> + Send {
        Session::accept(self).instrument(self.shared.span.clone())
    }
    fn incoming(&self) -> Incoming<Stream> {
        Session::incoming(self)
    }
    fn protocol(&self) -> Protocol {
        Protocol::Quic
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
        Session::close(self).instrument(self.shared.span.clone())
    }
    fn drain(&self) -> impl Future<Output = ()> + Send {
        Session::drain(self).instrument(self.shared.span.clone())
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

/// Closes `shared`'s connection gracefully: finished streams deliver first (bounded by
/// the close timeout), then `CONNECTION_CLOSE`; a dialed session waits for its endpoint
/// to go idle.
async fn close_sequence(shared: &Shared) {
    if shared.connection.close_reason().is_some() {
        return;
    }
    let deadline = Instant::now() + shared.close_timeout;
    let finishing = shared.take_finishing();
    if !finishing.is_empty() {
        let delivered = timeout_at(deadline, async {
            for done in finishing {
                done.await;
            }
        })
        .await;
        if delivered.is_err() {
            debug!("finished streams not acknowledged within the close timeout");
        }
    }
    shared
        .connection
        .close(VarInt::from_u32(SESSION_CLOSED), b"closed");
    if shared.owns_endpoint
        && timeout_at(deadline, shared.endpoint.wait_idle())
            .await
            .is_err()
    {
        debug!("endpoint not idle within the close timeout");
    }
}
