//! A QUIC connection as a Qymux [`Session`](qymux_transport::Session).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use quinn::{ConnectionError, VarInt};
use qymux_transport::{CloseReason, Error, Limit, Options, PeerIdentity, Protocol, Result};
use rustls_pki_types::CertificateDer;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

use crate::config::INITIAL_STREAM_CREDIT;
use crate::error::{SESSION_CLOSED, STREAM_ABORTED, close_reason};
use crate::stream::Stream;

type Pending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// State the session handles and the streams share. Dropping the last of them drops the
/// quinn connection, which closes it.
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
    /// How many concurrent streams the peer is granted now (QUIC `MAX_STREAMS`).
    stream_credit: AtomicUsize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    close_timeout: Duration,
    peer_identity: Option<PeerIdentity>,
    /// Finished streams whose data the peer has not acknowledged yet; `close` lets them
    /// complete first.
    finishing: Mutex<Finishing>,
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

    /// Doubles the peer's stream grant, up to `max_streams`, once half of it is in use:
    /// the peer gets room for more before it runs out, and a session that never has many
    /// streams keeps quinn's per-stream table small.
    fn grow_stream_credit(&self) {
        let open = self.streams_open.load(Ordering::Acquire);
        let credit = self.stream_credit.load(Ordering::Acquire);
        if credit >= self.max_streams || open * 2 < credit {
            return;
        }
        let grown = credit.saturating_mul(2).min(self.max_streams);
        if self
            .stream_credit
            .compare_exchange(credit, grown, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // `max_streams` was checked to fit a u32 when the session was configured.
            let count = VarInt::from_u32(u32::try_from(grown).unwrap_or(u32::MAX));
            self.connection.set_max_concurrent_bi_streams(count);
            debug!(streams = grown, "granted the peer more concurrent streams");
        }
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

/// A slot of `max_streams`, given back if the open does not complete (error or
/// cancellation).
struct Reserved<'a>(Option<&'a Shared>);

impl<'a> Reserved<'a> {
    fn new(shared: &'a Shared) -> Option<Self> {
        shared
            .try_reserve_stream()
            .then_some(Reserved(Some(shared)))
    }

    /// The slot now belongs to a [`Stream`], which gives it back when dropped.
    fn hand_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.0 {
            shared.streams_open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A QUIC session; cheap to clone, usable from many tasks at once.
///
/// Implements [`qymux_transport::Session`]; see there for the behaviour of each method.
/// Every Qymux stream is one bidirectional QUIC stream. When every clone of the session
/// and every stream is dropped, the connection is closed (QUIC `CONNECTION_CLOSE`, code 0).
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

impl Session {
    /// Wraps an established connection.
    pub(crate) fn new(
        connection: quinn::Connection,
        endpoint: quinn::Endpoint,
        owns_endpoint: bool,
        options: &Options,
    ) -> Session {
        let peer_identity = connection
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| PeerIdentity::new(*chain));
        Session {
            shared: Arc::new(Shared {
                connection,
                endpoint,
                owns_endpoint,
                streams_open: AtomicUsize::new(0),
                outbound_open: AtomicUsize::new(0),
                max_streams: options.max_streams,
                stream_credit: AtomicUsize::new(options.max_streams.min(INITIAL_STREAM_CREDIT)),
                idle_timeout: options.idle_timeout,
                handshake_timeout: options.handshake_timeout,
                close_timeout: options.close_timeout,
                peer_identity,
                finishing: Mutex::new(Finishing {
                    pending: Vec::new(),
                    prune_at: 64,
                }),
            }),
        }
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
    pub async fn open(&self) -> Result<Stream> {
        let shared = &self.shared;
        if let Some(reason) = shared.close_reason() {
            return Err(reason.to_error());
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
    /// session (in both directions) is reset.
    pub async fn accept(&self) -> Result<Stream> {
        let shared = &self.shared;
        loop {
            let (mut send, mut recv) = shared
                .connection
                .accept_bi()
                .await
                .map_err(|e| shared.error_for(&e))?;
            if let Some(reserved) = Reserved::new(shared) {
                reserved.hand_over();
                shared.grow_stream_credit();
                return Ok(Stream::new(send, recv, shared.clone(), false));
            }
            debug!(
                id = %send.id(),
                max = shared.max_streams,
                "peer opened a stream beyond max_streams; resetting it"
            );
            let _ = send.reset(VarInt::from_u32(STREAM_ABORTED));
            let _ = recv.stop(VarInt::from_u32(STREAM_ABORTED));
        }
    }

    /// Closes the session gracefully; see [`qymux_transport::Session::close`].
    ///
    /// Streams that were finished (`shutdown`) first get to deliver their data, then the
    /// peer is sent `CONNECTION_CLOSE` (application code 0, reason `closed`). A dialed
    /// session then waits for its endpoint to go idle, so the close reaches the peer even
    /// if the process exits right after. All of it is bounded by
    /// [`Options::close_timeout`].
    pub async fn close(&self) {
        let shared = &self.shared;
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
        Session::open(self)
    }
    fn accept(&self) -> impl Future<Output = Result<Stream>> + Send {
        Session::accept(self)
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
        Session::close(self)
    }
    fn closed(&self) -> impl Future<Output = CloseReason> + Send {
        Session::closed(self)
    }
    fn close_reason(&self) -> Option<CloseReason> {
        Session::close_reason(self)
    }
}
