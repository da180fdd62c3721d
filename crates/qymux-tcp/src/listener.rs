//! Listening: accept TCP, run TLS handshakes concurrently, yamux as the server.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use qymux_tls::Side;
use qymux_transport::admission::{Admit, Attempt, SourceLimiter};
use qymux_transport::registry::{SessionRegistry, ShutdownReport};
use qymux_transport::{Error, HandshakeError, Limit, Options, Protocol, Result, TimeoutKind};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};
use tracing::{debug, warn};

use crate::engine::core::Role;
use crate::session::{Session, Start};
use crate::socket;

/// How many finished handshakes may wait for [`Listener::accept`] before handshakes
/// pause (each holding its slot of `max_pending_handshakes`).
const READY_QUEUE: usize = 64;

/// Accepts TLS + yamux sessions on a TCP port.
///
/// Handshakes run concurrently, each bounded by [`Options::handshake_timeout`] (the
/// ClientHello by [`Options::first_flight_timeout`]), at most
/// [`Options::max_pending_handshakes`] at once and [`Options::max_pending_per_source`]
/// from one source, so a slow or hostile client, or one host opening many connections,
/// never holds up the others. At most [`Options::max_sessions`] sessions are live at once: a session
/// beyond it is closed right after its handshake (a yamux GoAway) and never handed out.
/// Dropping the listener closes it; [`Listener::shutdown`] also drains and closes the
/// sessions it accepted.
pub struct Listener {
    local_addr: SocketAddr,
    ready: Mutex<mpsc::Receiver<Session>>,
    task: JoinHandle<()>,
    registry: Arc<SessionRegistry<Session>>,
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
    /// Binds `addr` and starts accepting. `tls` is a server config from
    /// [`qymux_tls::ServerTls::build`] (its ALPN must be `qymux`).
    pub async fn bind(
        addr: impl ToSocketAddrs,
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Result<Listener> {
        options.validate()?;
        let tcp = TcpListener::bind(addr).await?;
        Ok(Self::from_tcp(tcp, tls, options))
    }

    /// Starts accepting on a bound tokio `TcpListener`.
    pub fn from_tcp(
        tcp: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        options: Options,
    ) -> Listener {
        let local_addr = tcp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let registry = Arc::new(SessionRegistry::default());
        let failures = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            tcp,
            tls,
            options,
            tx,
            registry.clone(),
            failures.clone(),
        ));
        Listener {
            local_addr,
            ready: Mutex::new(rx),
            task,
            registry,
            failures,
        }
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

    /// Stops accepting; sessions already handed out keep running.
    pub fn close(&self) {
        self.task.abort();
    }

    /// How many sessions this listener accepted are alive (handed out, or waiting for
    /// [`accept`](Listener::accept)); what [`Options::max_sessions`] is checked against.
    pub fn session_count(&self) -> usize {
        self.registry.live().len()
    }

    /// Shuts down gracefully: stops accepting at once (like [`close`](Listener::close)),
    /// then drains every session this listener accepted ([`Session::drain`]: a yamux
    /// GoAway tells the agent to open no more streams, streams in flight finish, then
    /// the session closes with TLS close_notify), closing whatever is left when `grace`
    /// has passed. Returns when every session is closed. Sessions that finished their
    /// handshake but were never accepted are closed too. The drains begin spread out
    /// (see [`shutdown_schedule`](qymux_transport::registry::shutdown_schedule)), so
    /// the agents do not all leave in the same instant; the report says how many
    /// sessions drained and how many were cut at their deadline.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.close();
        debug!(?grace, "listener shutting down");
        self.registry.shutdown(grace).await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
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
    tcp: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    options: Options,
    ready: mpsc::Sender<Session>,
    registry: Arc<SessionRegistry<Session>>,
    failures: Arc<AtomicU64>,
) {
    let acceptor = TlsAcceptor::from(tls.clone());
    let slots = Arc::new(Semaphore::new(options.max_pending_handshakes_value()));
    let sources = SourceLimiter::new(options.max_pending_per_source_value());
    // Handshake tasks are aborted with the accept loop (listener closed or dropped).
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = handshakes.join_next() => continue,
        };
        if let Some(hook) = options.admission_value() {
            let decision = hook.decide(&Attempt::new(peer, Protocol::Tcp, true));
            if matches!(decision, Admit::Refuse | Admit::Ignore) {
                debug!(%peer, ?decision, "the admission hook turned the connection away");
                drop(stream);
                continue;
            }
        }
        let Some(source_slot) = sources.try_acquire(peer) else {
            debug!(%peer, max = options.max_pending_per_source_value(), "too many handshakes in progress from this source; refusing connection");
            drop(stream);
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, max = options.max_pending_handshakes_value(), "too many handshakes in progress; refusing connection");
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        let tls = tls.clone();
        let options = options.clone();
        let ready = ready.clone();
        let registry = registry.clone();
        let failures = failures.clone();
        handshakes.spawn(async move {
            let result = handshake(stream, peer, &acceptor, &tls, &options).await;
            // The source's count covers the handshake only; the global slot is held
            // until the application takes the session (below).
            drop(source_slot);
            match result {
                Ok(session) if !registry.admit(&session, options.max_sessions_value()) => {
                    let refused = Error::LimitReached(Limit::Sessions(
                        options.max_sessions_value().unwrap_or_default(),
                    ));
                    debug!(%peer, "refusing session: {refused}");
                    session.close().await;
                }
                Ok(session) => {
                    // Holds the slot until the application takes the session.
                    let _ = ready.send(session).await;
                }
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    debug!(%peer, "handshake failed: {}", e.report());
                }
            }
            drop(slot);
        });
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: &TlsAcceptor,
    config: &Arc<rustls::ServerConfig>,
    options: &Options,
) -> Result<Session> {
    socket::configure(&stream, options);
    let local_addr = stream.local_addr()?;
    let deadline = tokio::time::Instant::now() + options.handshake_timeout_value();
    let first_flight = options
        .first_flight_timeout_value()
        .min(options.handshake_timeout_value());
    let tls_failed =
        |e: std::io::Error| Error::Handshake(qymux_tls::handshake_error(&e, Side::Server));
    // The whole ClientHello within the first-flight bound: a silent or trickling
    // connection gives its slot back after it, not after the handshake timeout.
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::time::timeout(first_flight, hello)
        .await
        .map_err(|_| Error::Timeout {
            what: TimeoutKind::Handshake,
            after: first_flight,
        })?
        .map_err(tls_failed)?;
    let mut tls = tokio::time::timeout_at(deadline, start.into_stream(acceptor.config().clone()))
        .await
        .map_err(|_| Error::Timeout {
            what: TimeoutKind::Handshake,
            after: options.handshake_timeout_value(),
        })?
        .map_err(tls_failed)?;
    tls.get_mut()
        .1
        .set_buffer_limit(Some(crate::session::TLS_SEND_BUFFER));
    let conn = tls.get_ref().1;
    if conn.alpn_protocol() != Some(qymux_transport::ALPN) {
        // rustls only enforces ALPN when the client offers some; a client that offers
        // none is not a Qymux peer either.
        return Err(Error::Handshake(HandshakeError::AlpnMismatch));
    }
    // Only the verified path (or the leaf), not whatever else the client sent.
    let peer_identity =
        qymux_tls::client_identity(config, conn.peer_certificates()).map_err(Error::Handshake)?;
    Ok(Session::start(Start {
        io: tls,
        role: Role::Server,
        options: options.clone(),
        local_addr,
        remote_addr: peer,
        peer_identity,
    }))
}
