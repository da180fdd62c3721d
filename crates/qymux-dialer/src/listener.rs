//! One listener for QUIC (UDP) and TCP on the same port number.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use qymux_transport::registry::ShutdownReport;
use qymux_transport::{BoxSession, Error, Limit, Mode, Options, Protocol, Result};
use tracing::{debug, warn};

/// How many times a random port is tried when UDP cannot take the port TCP got.
const PORT_ATTEMPTS: usize = 16;

/// Accepts sessions over QUIC and TCP at once, on the same port number (the Auto mode's
/// server side), or over one of them.
///
/// In [`Mode::Auto`] both sockets must bind: if either cannot, [`Listener::bind`] fails
/// and says which, rather than quietly serving one transport.
///
/// # Limits
///
/// [`Options::max_sessions`] caps the live sessions of both transports together: a
/// session beyond it is closed at once and never handed out (over QUIC with the reason
/// `limit reached: at most N sessions per listener`, over TCP with a yamux GoAway).
/// [`Options::max_pending_handshakes`] applies to each transport on its own (so up to
/// twice that many handshakes run in Auto mode).
///
/// # Shutting down
///
/// [`close`](Listener::close) only stops accepting. [`shutdown`](Listener::shutdown)
/// also drains every session accepted (no new streams; see
/// [`Session::drain`](qymux_transport::Session::drain)) and closes each as soon as its
/// streams are finished (or when the grace period ends), so that agents see a clean
/// close and reconnect.
pub struct Listener {
    tcp: Option<qymux_tcp::Listener>,
    quic: Option<qymux_quic::Listener>,
    local_addr: SocketAddr,
    max_sessions: Option<usize>,
    /// Set once a transport's accept has failed: the other keeps serving.
    tcp_down: AtomicBool,
    quic_down: AtomicBool,
    /// Set by `close` and `shutdown`: accept errors are then expected, not logged.
    closing: AtomicBool,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("protocols", &self.protocols())
            .finish()
    }
}

fn bind_error(what: &str, addr: SocketAddr, err: io::Error) -> Error {
    Error::io(io::Error::new(
        err.kind(),
        format!("cannot bind {what} on {addr}: {err}"),
    ))
}

fn tcp_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

impl Listener {
    /// Binds `addr` for the transports of `mode` and starts accepting. `tls` is a server
    /// config from `qymux_tls::ServerTls::build`.
    ///
    /// With port 0 in Auto mode, one free port number is picked for both UDP and TCP.
    pub async fn bind(
        addr: &str,
        tls: Arc<rustls::ServerConfig>,
        options: Options,
        mode: Mode,
    ) -> Result<Listener> {
        options.validate()?;
        let addr: SocketAddr = tokio::net::lookup_host(addr)
            .await?
            .next()
            .ok_or_else(|| Error::Config(format!("{addr} resolves to no address")))?;
        let (tcp, udp) = match mode {
            Mode::Tcp => (
                Some(tcp_socket(addr).map_err(|e| bind_error("TCP", addr, e))?),
                None,
            ),
            Mode::Quic => (
                None,
                Some(udp_socket(addr).map_err(|e| bind_error("UDP (QUIC)", addr, e))?),
            ),
            _ => {
                let (t, u) = bind_pair(addr)?;
                (Some(t), Some(u))
            }
        };
        let max_sessions = options.max_sessions_value();
        let tcp = match tcp {
            Some(socket) => Some(qymux_tcp::Listener::from_tcp(
                tokio::net::TcpListener::from_std(socket)?,
                tls.clone(),
                options.clone(),
            )),
            None => None,
        };
        let quic = match udp {
            Some(socket) => Some(qymux_quic::Listener::from_udp(socket, tls, options)?),
            None => None,
        };
        let local_addr = match (&tcp, &quic) {
            (Some(t), _) => t.local_addr(),
            (None, Some(q)) => q.local_addr(),
            (None, None) => return Err(Error::Config("no transport to listen on".into())),
        };
        Ok(Listener {
            tcp,
            quic,
            local_addr,
            max_sessions,
            tcp_down: AtomicBool::new(false),
            quic_down: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        })
    }

    /// Waits for the next session, QUIC or TCP (see its `protocol()`).
    ///
    /// When one transport fails (its accept returns an error: the UDP socket broke, the
    /// QUIC endpoint ended), the failure is logged and the other transport keeps
    /// serving; the error is returned once no transport is left.
    pub async fn accept(&self) -> Result<BoxSession> {
        loop {
            let tcp = self
                .tcp
                .as_ref()
                .filter(|_| !self.tcp_down.load(Ordering::Acquire));
            let quic = self
                .quic
                .as_ref()
                .filter(|_| !self.quic_down.load(Ordering::Acquire));
            let accepted = match (tcp, quic) {
                (Some(tcp), Some(quic)) => tokio::select! {
                    session = tcp.accept() => session.map(Accepted::Tcp).map_err(|e| (Protocol::Tcp, e)),
                    session = quic.accept() => session.map(Accepted::Quic).map_err(|e| (Protocol::Quic, e)),
                },
                (Some(tcp), None) => tcp
                    .accept()
                    .await
                    .map(Accepted::Tcp)
                    .map_err(|e| (Protocol::Tcp, e)),
                (None, Some(quic)) => quic
                    .accept()
                    .await
                    .map(Accepted::Quic)
                    .map_err(|e| (Protocol::Quic, e)),
                (None, None) => return Err(Error::Closed),
            };
            let session = match accepted {
                Ok(session) => session,
                Err((protocol, e)) => {
                    let (down, other) = match protocol {
                        Protocol::Tcp => (
                            &self.tcp_down,
                            self.quic.is_some() && !self.quic_down.load(Ordering::Acquire),
                        ),
                        _ => (
                            &self.quic_down,
                            self.tcp.is_some() && !self.tcp_down.load(Ordering::Acquire),
                        ),
                    };
                    down.store(true, Ordering::Release);
                    if !other || self.closing.load(Ordering::Acquire) {
                        return Err(e);
                    }
                    warn!(%protocol, error = %e.report(), "this transport stopped accepting; serving the other one only");
                    continue;
                }
            };
            // Each transport caps its own sessions; the cap covers both together.
            match self.max_sessions {
                Some(max) if self.session_count() > max => session.refuse(max),
                _ => return Ok(session.boxed()),
            }
        }
    }

    /// How many sessions this listener accepted are alive, over both transports (handed
    /// out, or waiting for [`accept`](Listener::accept)).
    pub fn session_count(&self) -> usize {
        self.tcp.as_ref().map_or(0, |t| t.session_count())
            + self.quic.as_ref().map_or(0, |q| q.session_count())
    }

    /// How many handshakes failed or timed out so far, over both transports.
    pub fn handshake_failures(&self) -> u64 {
        self.tcp.as_ref().map_or(0, |t| t.handshake_failures())
            + self.quic.as_ref().map_or(0, |q| q.handshake_failures())
    }

    /// Shuts down gracefully on both transports: stops accepting at once, then drains
    /// every session accepted (a yamux GoAway; over QUIC no more stream grants) and
    /// closes it (TLS close_notify, or QUIC `CONNECTION_CLOSE`) as soon as it has no open
    /// stream, or when `grace` has passed. Returns when every session is closed, with
    /// what happened to them over both transports together: how many drained and how
    /// many were cut at their deadline (the sums of
    /// [`qymux_tcp::Listener::shutdown`]'s and [`qymux_quic::Listener::shutdown`]'s
    /// reports).
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.closing.store(true, Ordering::Release);
        let tcp = async {
            match &self.tcp {
                Some(t) => t.shutdown(grace).await,
                None => ShutdownReport::default(),
            }
        };
        let quic = async {
            match &self.quic {
                Some(q) => q.shutdown(grace).await,
                None => ShutdownReport::default(),
            }
        };
        let (tcp, quic) = tokio::join!(tcp, quic);
        let mut report = ShutdownReport::default();
        report.drained = tcp.drained + quic.drained;
        report.cut = tcp.cut + quic.cut;
        report
    }

    /// The TCP side, if this listener serves TCP (its session count, or to close it
    /// alone).
    pub fn tcp_listener(&self) -> Option<&qymux_tcp::Listener> {
        self.tcp.as_ref()
    }

    /// The QUIC side, if this listener serves QUIC (its quinn endpoint's statistics, or
    /// to close it alone).
    pub fn quic_listener(&self) -> Option<&qymux_quic::Listener> {
        self.quic.as_ref()
    }

    /// The bound address (the same port for UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The transports this listener serves.
    pub fn protocols(&self) -> Vec<Protocol> {
        let mut p = Vec::new();
        if self.quic.is_some() {
            p.push(Protocol::Quic);
        }
        if self.tcp.is_some() {
            p.push(Protocol::Tcp);
        }
        p
    }

    /// Stops accepting on both transports; sessions already accepted keep running.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        if let Some(t) = &self.tcp {
            t.close();
        }
        if let Some(q) = &self.quic {
            q.close();
        }
    }
}

/// A session one of the transports handed out.
enum Accepted {
    Tcp(qymux_tcp::Session),
    Quic(qymux_quic::Session),
}

impl Accepted {
    fn boxed(self) -> BoxSession {
        match self {
            Accepted::Tcp(s) => BoxSession::new(s),
            Accepted::Quic(s) => BoxSession::new(s),
        }
    }

    /// Closes a session over the listener's cap, saying why where the wire can.
    fn refuse(self, max: usize) {
        let refused = Error::LimitReached(Limit::Sessions(max));
        debug!("refusing session: {refused}");
        match self {
            Accepted::Quic(s) => s
                .connection()
                .close(quinn_code_zero(), refused.to_string().as_bytes()),
            Accepted::Tcp(s) => {
                tokio::spawn(async move { s.close().await });
            }
        }
    }
}

/// Application error code 0, the code of a plain close.
fn quinn_code_zero() -> qymux_quic::quinn::VarInt {
    qymux_quic::quinn::VarInt::from_u32(0)
}

/// Binds TCP and UDP on the same port; with port 0, retries until one is free for both.
fn bind_pair(addr: SocketAddr) -> Result<(std::net::TcpListener, std::net::UdpSocket)> {
    let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let tcp = tcp_socket(addr).map_err(|e| bind_error("TCP", addr, e))?;
        let port_addr = tcp.local_addr()?;
        match udp_socket(port_addr) {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) => last = Some(bind_error("UDP (QUIC)", port_addr, e)),
        }
    }
    Err(last.unwrap_or(Error::Closed))
}

impl qymux_transport::Listener for Listener {
    type Session = BoxSession;

    fn accept(&self) -> impl Future<Output = Result<BoxSession>> + Send {
        Listener::accept(self)
    }
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    fn close(&self) {
        Listener::close(self)
    }
}
