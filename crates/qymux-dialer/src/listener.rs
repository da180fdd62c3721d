//! One listener for QUIC (UDP) and TCP on the same port number.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use qymux_transport::{BoxSession, Error, Mode, Options, Protocol, Result};

/// How many times a random port is tried when UDP cannot take the port TCP got.
const PORT_ATTEMPTS: usize = 16;

/// Accepts sessions over QUIC and TCP at once, on the same port number (the Auto mode's
/// server side), or over one of them.
///
/// In [`Mode::Auto`] both sockets must bind: if either cannot, [`Listener::bind`] fails
/// and says which, rather than quietly serving one transport.
pub struct Listener {
    tcp: Option<qymux_tcp::Listener>,
    quic: Option<qymux_quic::Listener>,
    local_addr: SocketAddr,
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
        })
    }

    /// Waits for the next session, QUIC or TCP (see its `protocol()`).
    pub async fn accept(&self) -> Result<BoxSession> {
        match (&self.tcp, &self.quic) {
            (Some(tcp), Some(quic)) => tokio::select! {
                session = tcp.accept() => session.map(BoxSession::new),
                session = quic.accept() => session.map(BoxSession::new),
            },
            (Some(tcp), None) => tcp.accept().await.map(BoxSession::new),
            (None, Some(quic)) => quic.accept().await.map(BoxSession::new),
            (None, None) => Err(Error::Closed),
        }
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
        if let Some(t) = &self.tcp {
            t.close();
        }
        if let Some(q) = &self.quic {
            q.close();
        }
    }
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
