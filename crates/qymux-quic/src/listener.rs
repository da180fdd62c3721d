//! Listening: one UDP socket, QUIC handshakes run concurrently.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, Incoming, TokioRuntime, VarInt};
use qymux_tls::Side;
use qymux_transport::registry::SessionRegistry;
use qymux_transport::{Error, HandshakeError, Limit, Options, Result, TimeoutKind};
use tokio::net::ToSocketAddrs;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::config::server_config;
use crate::dial::negotiated_protocol;
use crate::error::handshake_failure;
use crate::session::Session;
use crate::socket;

/// How many finished handshakes may wait for [`Listener::accept`] before handshakes
/// pause (each holding its slot of `max_pending_handshakes`).
const READY_QUEUE: usize = 64;

/// Accepts QUIC sessions on a UDP port.
///
/// Handshakes run concurrently, each bounded by [`Options::handshake_timeout`] and at most
/// [`Options::max_pending_handshakes`] at once (further connection attempts are refused
/// with `CONNECTION_REFUSED`), so a slow or hostile client never holds up the others.
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
        let config = server_config(tls, &options)?;
        socket::configure(&socket);
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(TokioRuntime),
        )?;
        let local_addr = endpoint.local_addr()?;
        let (tx, rx) = mpsc::channel(READY_QUEUE);
        let registry = Arc::new(SessionRegistry::default());
        let failures = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(
            endpoint.clone(),
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
    /// alone they go unanswered until their connect timeout.
    pub async fn shutdown(&self, grace: Duration) {
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
        tokio::select! {
            () = &mut draining => {}
            () = refuse => draining.await,
        }
        self.close();
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
    options: Options,
    ready: mpsc::Sender<Session>,
    registry: Arc<SessionRegistry<Session>>,
    failures: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(options.max_pending_handshakes));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, max = options.max_pending_handshakes, "too many handshakes in progress; refusing connection");
            incoming.refuse();
            continue;
        };
        let endpoint = endpoint.clone();
        let options = options.clone();
        let ready = ready.clone();
        let registry = registry.clone();
        let failures = failures.clone();
        handshakes.spawn(async move {
            match handshake(incoming, endpoint, &options).await {
                Ok(session) if !registry.admit(&session, options.max_sessions) => {
                    let refused = Error::LimitReached(Limit::Sessions(
                        options.max_sessions.unwrap_or_default(),
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
                    debug!(%peer, "QUIC handshake failed: {e}");
                }
            }
            drop(slot);
        });
    }
}

async fn handshake(incoming: Incoming, endpoint: Endpoint, options: &Options) -> Result<Session> {
    let failed =
        |e: quinn::ConnectionError| handshake_failure(&e, Side::Server, options.handshake_timeout);
    let connecting = incoming.accept().map_err(failed)?;
    let connection = tokio::time::timeout(options.handshake_timeout, connecting)
        .await
        .map_err(|_| Error::Timeout {
            what: TimeoutKind::Handshake,
            after: options.handshake_timeout,
        })?
        .map_err(failed)?;
    if negotiated_protocol(&connection).as_deref() != Some(qymux_transport::ALPN) {
        // A client that offers no ALPN at all is not a Qymux peer either.
        connection.close(VarInt::from_u32(0), b"no qymux ALPN");
        return Err(Error::Handshake(HandshakeError::AlpnMismatch));
    }
    Ok(Session::new(connection, endpoint, false, options))
}
