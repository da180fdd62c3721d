//! Listening: one UDP socket, QUIC handshakes run concurrently.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, Incoming, TokioRuntime, VarInt};
use qymux_tls::Side;
use qymux_transport::admission::{Admit, Attempt, SourceLimiter};
use qymux_transport::registry::{SessionRegistry, ShutdownReport};
use qymux_transport::{
    Error, HandshakeError, Limit, Options, Protocol, QuicRetry, Result, TimeoutKind,
};
use tokio::net::ToSocketAddrs;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::server_config;
use crate::dial::negotiated_protocol;
use crate::error::handshake_failure;
use crate::session::{Session, presented_certificates};
use crate::socket;

/// How many finished handshakes may wait for [`Listener::accept`] before handshakes
/// pause (each holding its slot of `max_pending_handshakes`).
const READY_QUEUE: usize = 64;

/// Accepts QUIC sessions on a UDP port.
///
/// Handshakes run concurrently, each bounded by [`Options::handshake_timeout`], at most
/// [`Options::max_pending_handshakes`] at once and [`Options::max_pending_per_source`]
/// from one source, so a slow or hostile client never holds up the others. Addresses are
/// validated with a Retry as [`Options::quic_retry`] says (by default once the listener
/// is half full); an attempt from an unvalidated address must finish its handshake within
/// [`Options::first_flight_timeout`]. Over a cap, an attempt from a validated address is
/// refused with `CONNECTION_REFUSED`, one from an unvalidated address (possibly forged)
/// is ignored.
/// Clients may change address during a session (connection migration). Dropping the
/// listener closes it; sessions already accepted keep running on its socket.
/// [`Listener::shutdown`] also drains and closes them.
///
/// At most [`Options::max_sessions`] sessions are live at once: a session beyond it is
/// closed right after its handshake with the reason
/// `limit reached: at most N sessions per listener`, and never handed out.
pub struct Listener {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    ready: Mutex<mpsc::Receiver<Session>>,
    task: JoinHandle<()>,
    registry: Arc<SessionRegistry<Session>>,
    close_timeout: Duration,
    /// Handshakes that failed or timed out.
    failures: Arc<AtomicU64>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl Listener {
    /// Binds a UDP socket to `addr` and starts accepting. `tls` is a server config from
    /// [`qymux_tls::ServerTls::build`] (its ALPN must be `qymux`, and it must allow
    /// TLS 1.3).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Result<Listener> {
        options.validate()?;
        let mut last = None;
        for candidate in tokio::net::lookup_host(addr).await? {
            match std::net::UdpSocket::bind(candidate) {
                Ok(socket) => return Self::from_udp(socket, tls, options),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::io(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved")
        })))
    }

    /// Starts accepting on a bound UDP socket (for instance one bound to the same port
    /// as a TCP listener).
    pub fn from_udp(
        socket: std::net::UdpSocket,
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Result<Listener> {
        options.validate()?;
        let config = server_config(tls.clone(), &options)?;
        socket::configure(&socket);
        let endpoint = Endpoint::new(
            endpoint_config(&options),
            Some(config),
            socket,
            Arc::new(TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let registry = Arc::new(SessionRegistry::default());
        let close_timeout = options.close_timeout_value();
        let failures = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            endpoint.clone(),
            tls,
            options,
            tx,
            registry.clone(),
            failures.clone(),
        ));
        Ok(Listener {
            endpoint,
            local_addr,
            ready: Mutex::new(rx),
            task,
            registry,
            close_timeout,
            failures,
        })
    }

    /// Waits for the next session; see [`qymux_transport::Listener::accept`].
    pub async fn accept(&self) -> Result<Session> {
        if self.task.is_finished() {
            // Closed: hand out nothing more, not even finished handshakes.
            return Err(Error::Closed);
        }
        self.ready.lock().await.recv().await.ok_or(Error::Closed)
    }

    /// How many handshakes failed or timed out so far (a client that is not a Qymux
    /// peer, an untrusted client certificate, a stalled handshake).
    pub fn handshake_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The quinn endpoint underneath (its statistics, for instance).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Stops accepting: new connection attempts are refused and handshakes in progress
    /// are dropped. Sessions already handed out keep running.
    pub fn close(&self) {
        self.endpoint.set_server_config(None);
        self.task.abort();
    }

    /// How many sessions this listener accepted are alive (handed out, or waiting for
    /// [`accept`](Listener::accept)); what [`Options::max_sessions`] is checked against.
    pub fn session_count(&self) -> usize {
        self.registry.live().len()
    }

    /// Shuts down gracefully: stops accepting at once (like [`close`](Listener::close)),
    /// then drains every session this listener accepted ([`Session::drain`]: no new
    /// streams, the open ones finish) and closes it (`CONNECTION_CLOSE`, as
    /// [`Session::close`]) once its last stream is done, or when `grace` has passed,
    /// whichever comes first. Returns when every session is closed. Sessions that
    /// finished their handshake but were never accepted are closed too.
    ///
    /// While it drains, new connection attempts are refused (`CONNECTION_REFUSED`), so
    /// that dialers fail at once and can go elsewhere; after [`close`](Listener::close)
    /// alone they go unanswered until their connect timeout. Before it returns it waits,
    /// up to [`Options::close_timeout`], until the closes have left the socket, so the
    /// process may exit right after.
    ///
    /// The drains begin spread out (see
    /// [`shutdown_schedule`](qymux_transport::registry::shutdown_schedule)), so the agents
    /// do not all leave in the same instant; the report says how many sessions drained
    /// and how many were cut at their deadline.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.task.abort();
        debug!(?grace, "listener shutting down");
        let draining = self.registry.shutdown(grace);
        let refuse = async {
            while let Some(incoming) = self.endpoint.accept().await {
                debug!(peer = %incoming.remote_address(), "shutting down; refusing connection");
                incoming.refuse();
            }
        };
        // `refuse` ends only if the endpoint closes; draining goes on either way.
        tokio::pin!(draining);
        let report = tokio::select! {
            report = &mut draining => report,
            () = refuse => draining.await,
        };
        self.close();
        // The sessions' CONNECTION_CLOSEs are queued on the endpoint; wait until they
        // have left, so a process that exits right after this does not strand its
        // agents until their idle timeout.
        if tokio::time::timeout(self.close_timeout, self.endpoint.wait_idle())
            .await
            .is_err()
        {
            debug!("endpoint not idle within the close timeout");
        }
        report
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

impl qymux_transport::Listener for Listener {
    type Session = Session;

    fn accept(&self) -> impl Future<Output = Result<Session>> + Send {
        Listener::accept(self)
    }
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    fn close(&self) {
        Listener::close(self)
    }
}

async fn accept_loop(
    endpoint: Endpoint,
    tls: Arc<rustls::ServerConfig>,
    options: Options,
    ready: mpsc::Sender<Session>,
    registry: Arc<SessionRegistry<Session>>,
    failures: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(options.max_pending_handshakes_value()));
    let sources = SourceLimiter::new(options.max_pending_per_source_value());
    // Handshake tasks are aborted with the accept loop (listener closed or dropped).
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => {
                    warn!("QUIC endpoint stopped; no more sessions");
                    return;
                }
            },
            Some(_) = handshakes.join_next() => continue,
        };
        let peer = incoming.remote_address();
        let validated = incoming.remote_address_validated();
        let decision = options.admission_value().map_or(Admit::Accept, |hook| {
            hook.decide(&Attempt::new(peer, Protocol::Quic, validated))
        });
        match decision {
            Admit::Refuse => {
                debug!(%peer, validated, "the admission hook refused the connection");
                incoming.refuse();
                continue;
            }
            Admit::Ignore => {
                debug!(%peer, validated, "the admission hook ignored the connection");
                incoming.ignore();
                continue;
            }
            _ => {}
        }
        let retry = decision == Admit::Retry || wants_retry(&options, &slots, &sources, peer);
        if !validated && incoming.may_retry() && retry {
            // Stateless: an address that cannot receive the Retry never gets further.
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        // Over a cap: an address we know is real is told (CONNECTION_REFUSED); one we
        // do not may be forged, and answering it would make us a reflector: ignored.
        let Some(source_slot) = sources.try_acquire(peer) else {
            debug!(%peer, validated, max = options.max_pending_per_source_value(), "too many handshakes in progress from this source");
            turn_away(incoming, validated);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, validated, max = options.max_pending_handshakes_value(), "too many handshakes in progress");
            turn_away(incoming, validated);
            continue;
        };
        let endpoint = endpoint.clone();
        let options = options.clone();
        let ready = ready.clone();
        let registry = registry.clone();
        let tls = tls.clone();
        let failures = failures.clone();
        handshakes.spawn(async move {
            let result = handshake(incoming, validated, endpoint, &tls, &options).await;
            drop(source_slot);
            match result {
                Ok(session) if !registry.admit(&session, options.max_sessions_value()) => {
                    let refused = Error::LimitReached(Limit::Sessions(
                        options.max_sessions_value().unwrap_or_default(),
                    ));
                    debug!(%peer, "refusing session: {refused}");
                    session
                        .connection()
                        .close(VarInt::from_u32(0), refused.to_string().as_bytes());
                }
                Ok(session) => {
                    // Holds the slot until the application takes the session.
                    let _ = ready.send(session).await;
                }
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "QUIC handshake failed: {}", e.report());
                }
            }
            drop(slot);
        });
    }
}

/// The endpoint's settings: its stateless-reset key and connection-ID key derived from
/// [`Options::quic_reset_secret`] when one is set, so that a restarted server resets the
/// connections its predecessor held.
fn endpoint_config(options: &Options) -> EndpointConfig {
    match options.quic_reset_secret_value() {
        Some(secret) => {
            #[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
            use aws_lc_rs::hmac;
            #[cfg(feature = "ring")]
            use ring::hmac;
            // The secret (often the server's private key) is used only through this
            // label-keyed HMAC, never directly as the reset key.
            let derive = |label: &[u8]| {
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, label), secret.expose())
            };
            let reset = derive(b"qymux quic stateless reset v1");
            let mut config =
                EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
            // Connection IDs carry a keyed check that the endpoint verifies before it
            // answers a packet for an unknown connection: the new process must accept
            // its predecessor's IDs as its own to reset them.
            let cid = derive(b"qymux quic connection ids v1");
            let mut cid_key = [0u8; 8];
            cid_key.copy_from_slice(&cid.as_ref()[..8]);
            let cid_key = u64::from_le_bytes(cid_key);
            config.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
            config
        }
        None => EndpointConfig::default(),
    }
}

/// Whether to ask this client to validate its address before keeping state for it.
fn wants_retry(
    options: &Options,
    slots: &Semaphore,
    sources: &SourceLimiter,
    peer: SocketAddr,
) -> bool {
    match options.quic_retry_value() {
        QuicRetry::Always => true,
        QuicRetry::Never => false,
        _ => {
            let pending = options
                .max_pending_handshakes_value()
                .saturating_sub(slots.available_permits());
            2 * pending >= options.max_pending_handshakes_value()
                || 2 * sources.pending(peer) >= options.max_pending_per_source_value()
        }
    }
}

fn turn_away(incoming: Incoming, validated: bool) {
    if validated {
        incoming.refuse();
    } else {
        incoming.ignore();
    }
}

async fn handshake(
    incoming: Incoming,
    validated: bool,
    endpoint: Endpoint,
    tls: &Arc<rustls::ServerConfig>,
    options: &Options,
) -> Result<Session> {
    // An address nobody validated gets the first-flight bound for the whole handshake:
    // a flood of Initials that never go further frees its slots quickly.
    let bound = if validated {
        options.handshake_timeout_value()
    } else {
        options
            .first_flight_timeout_value()
            .min(options.handshake_timeout_value())
    };
    let failed = |e: quinn::ConnectionError| handshake_failure(&e, Side::Server, bound);
    let connecting = incoming.accept().map_err(failed)?;
    let connection = tokio::time::timeout(bound, connecting)
        .await
        .map_err(|_| Error::Timeout {
            what: TimeoutKind::Handshake,
            after: bound,
        })?
        .map_err(failed)?;
    if negotiated_protocol(&connection).as_deref() != Some(qymux_transport::ALPN) {
        // A client that offers no ALPN at all is not a Qymux peer either.
        connection.close(VarInt::from_u32(0), b"no qymux ALPN");
        return Err(Error::Handshake(HandshakeError::AlpnMismatch));
    }
    let presented = presented_certificates(&connection);
    let peer_identity = match qymux_tls::client_identity(tls, presented.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            connection.close(VarInt::from_u32(0), b"client certificate not verified");
            return Err(Error::Handshake(e));
        }
    };
    Ok(Session::new(
        connection,
        endpoint,
        false,
        options,
        peer_identity,
    ))
}
