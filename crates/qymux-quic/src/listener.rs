//! Listening: one UDP socket, QUIC handshakes run concurrently.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{Endpoint, EndpointConfig, Incoming, TokioRuntime, VarInt};
use qymux_tls::Side;
use qymux_transport::{Error, HandshakeError, Options, Result, TimeoutKind};
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
pub struct Listener {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    ready: Mutex<mpsc::Receiver<Session>>,
    task: JoinHandle<()>,
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
        let task = tokio::spawn(accept_loop(endpoint.clone(), options, tx));
        Ok(Listener {
            endpoint,
            local_addr,
            ready: Mutex::new(rx),
            task,
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

async fn accept_loop(endpoint: Endpoint, options: Options, ready: mpsc::Sender<Session>) {
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
        handshakes.spawn(async move {
            match handshake(incoming, endpoint, &options).await {
                Ok(session) => {
                    // Holds the slot until the application takes the session.
                    let _ = ready.send(session).await;
                }
                Err(e) => debug!(%peer, "QUIC handshake failed: {e}"),
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
