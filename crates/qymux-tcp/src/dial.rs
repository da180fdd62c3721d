//! Dialing: TCP, then TLS, then yamux as the client.

use std::net::SocketAddr;
use std::sync::Arc;

use qymux_tls::Side;
use qymux_transport::{CloseReason, Error, HandshakeError, Options, Result, TimeoutKind, eyeballs};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

use crate::engine::core::Role;
use crate::session::{Session, Start};
use crate::socket;

/// Dials `addr` (`host:port`) and returns a session once the server has accepted the TLS
/// handshake. When the name resolves to several addresses they are raced as Happy
/// Eyeballs does ([`qymux_transport::eyeballs`]: families interleaved, the next attempt
/// after 250 ms without an answer or at once after a failure), so an address that drops
/// packets does not keep a working one from being tried.
///
/// `server_name` is the name the server's certificate must be valid for (ignored when
/// the certificate is pinned). The name's resolution and each address's TCP connect are
/// bounded by [`Options::connect_timeout`] (each attempt has its own deadline, and one
/// that runs out starts the next at once), the TLS handshake by
/// [`Options::handshake_timeout`].
///
/// With [`Options::proxy`] set (and its `NO_PROXY` list not matching `addr`), the
/// connection goes through that HTTP CONNECT or SOCKS5 proxy: `addr` is sent to the
/// proxy as it is (a host name is resolved by the proxy), the connect and the proxy's
/// answer together are bounded by the connect timeout, and a refusal is
/// [`Error::Proxy`] saying what the proxy answered.
///
/// The session is returned only after the server's first yamux frame arrived: in TLS
/// 1.3 a server refuses a client certificate after the client's side of the handshake
/// has finished, and this is how that refusal becomes a handshake error here rather
/// than a session that dies at first use.
pub async fn dial(
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: Options,
) -> Result<Session> {
    dial_on(addr, None, server_name, tls, &options).await
}

/// Like [`dial`], to addresses the caller resolved (`addr` is then only used in error
/// messages): for a dialer that resolves a name once and gives the same addresses to
/// TCP and QUIC, or that has a resolver of its own. The addresses are raced as [`dial`]
/// describes; an empty list fails with [`Error::Connect`]. With a proxy that applies to
/// `addr`, the list is not used: `addr` goes to the proxy as it is.
pub async fn dial_resolved(
    addr: &str,
    addrs: Vec<SocketAddr>,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: Options,
) -> Result<Session> {
    dial_on(addr, Some(addrs), server_name, tls, &options).await
}

async fn dial_on(
    addr: &str,
    resolved: Option<Vec<SocketAddr>>,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    options.validate()?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| Error::Config(format!("invalid server name {server_name:?}: {e}")))?;
    let tcp = match crate::proxy::for_target(options, addr) {
        Some(proxy) => crate::proxy::connect(proxy, addr, options).await?,
        None => connect_resolved(addr, resolved, options).await?,
    };
    let local_addr = tcp.local_addr()?;
    let remote_addr = tcp.peer_addr()?;
    socket::configure(&tcp, options);

    let deadline = Instant::now() + options.handshake_timeout_value();
    let handshake_timeout = || Error::Timeout {
        what: TimeoutKind::Handshake,
        after: options.handshake_timeout_value(),
    };
    let mut tls_stream = timeout_at(deadline, TlsConnector::from(tls.clone()).connect(name, tcp))
        .await
        .map_err(|_| handshake_timeout())?
        .map_err(|e| Error::Handshake(qymux_tls::handshake_error(&e, Side::Client)))?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(crate::session::TLS_SEND_BUFFER));
    let conn = tls_stream.get_ref().1;
    if conn.alpn_protocol() != Some(qymux_transport::ALPN) {
        // rustls lets a server that ignores ALPN through; it is not a Qymux peer.
        return Err(Error::Handshake(HandshakeError::AlpnMismatch));
    }
    // Only the verified path (or the pinned leaf), not whatever else the server sent.
    let peer_identity =
        qymux_tls::server_identity(&tls, conn.peer_certificates()).map_err(Error::Handshake)?;

    let session = Session::start(Start {
        io: tls_stream,
        role: Role::Client,
        options: options.clone(),
        local_addr,
        remote_addr,
        peer_identity,
    });
    let confirmed = tokio::select! {
        () = session.first_frame() => Ok(()),
        reason = session.closed() => Err(reason),
        () = tokio::time::sleep_until(deadline) => {
            session.close().await;
            return Err(handshake_timeout());
        }
    };
    match confirmed {
        Ok(()) => Ok(session),
        // A TLS alert from the server (it refused our certificate) is a handshake failure;
        // anything else (the server closed, the connection broke) is reported as it is.
        Err(CloseReason::Failed(Error::Io(io)))
            if io.get_ref().is_some_and(|e| e.is::<rustls::Error>()) =>
        {
            Err(Error::Handshake(qymux_tls::handshake_error(
                &io,
                Side::Client,
            )))
        }
        Err(reason) => Err(reason.to_error()),
    }
}

/// A direct TCP connection to `addr`, within [`Options::connect_timeout`].
pub(crate) async fn connect(addr: &str, options: &Options) -> Result<TcpStream> {
    connect_resolved(addr, None, options).await
}

/// A direct TCP connection to `addr`, resolved here unless `resolved` gives its
/// addresses: the resolution within [`Options::connect_timeout`], then each address's
/// attempt within its own connect timeout, raced as Happy Eyeballs does.
async fn connect_resolved(
    addr: &str,
    resolved: Option<Vec<SocketAddr>>,
    options: &Options,
) -> Result<TcpStream> {
    let connect_error = |source: std::io::Error| Error::Connect {
        addr: addr.to_owned(),
        source: Arc::new(source),
    };
    let connect_timeout = || Error::Timeout {
        what: TimeoutKind::Connect,
        after: options.connect_timeout_value(),
    };
    let addrs: Vec<SocketAddr> = match resolved {
        Some(addrs) => addrs,
        None => tokio::time::timeout(
            options.connect_timeout_value(),
            tokio::net::lookup_host(addr),
        )
        .await
        .map_err(|_| connect_timeout())?
        .map_err(connect_error)?
        .collect(),
    };
    // Happy Eyeballs: an address that drops packets holds up the next one by the attempt
    // delay, not by the whole connect timeout; one that times out starts the next at once.
    let attempt = |to: SocketAddr| async move {
        tokio::time::timeout(options.connect_timeout_value(), TcpStream::connect(to))
            .await
            .map_err(|_| connect_timeout())?
            .map_err(connect_error)
    };
    eyeballs::race(addrs, eyeballs::ATTEMPT_DELAY, attempt)
        .await
        .map(|(stream, _)| stream)
        .map_err(|e| match e {
            // The empty list's error from the race itself.
            Error::Io(io) => Error::Connect {
                addr: addr.to_owned(),
                source: io,
            },
            e => e,
        })
}
