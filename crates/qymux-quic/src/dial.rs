//! Dialing: a QUIC handshake with ALPN `qymux`, bounded from the first packet on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::HandshakeData;
use quinn::{
    Connecting, Connection, ConnectionError, Endpoint, EndpointConfig, TokioRuntime,
    TransportErrorCode, VarInt,
};
use qymux_tls::Side;
use qymux_transport::{Error, HandshakeError, Options, Result, TimeoutKind, eyeballs};
use tokio::time::{Instant, sleep, timeout_at};
use tracing::debug;

use crate::config::client_config;
use crate::error::handshake_failure;
use crate::session::{Session, presented_certificates};
use crate::socket;

/// Dials `addr` (`host:port`) over QUIC and returns a session once the server has
/// completed the handshake.
///
/// Each dial gets its own UDP socket (an endpoint bound to `0.0.0.0:0` or `[::]:0`,
/// matching the address dialed), which closes with the session. `server_name` is the
/// name the server's certificate must be valid for (ignored when the certificate is
/// pinned); `tls` is a client config from [`qymux_tls::ClientTls::build`].
///
/// Bounds: the server must answer (its first handshake flight) within
/// [`Options::connect_timeout`] — UDP has no connection of its own, and a silent or
/// blocked path never answers — else [`TimeoutKind::Connect`]; the rest of the handshake
/// must complete within [`Options::handshake_timeout`], else [`TimeoutKind::Handshake`].
/// When a name resolves to several addresses they are raced as Happy Eyeballs does
/// ([`qymux_transport::eyeballs`], RFC 8305): families interleaved, the next attempt
/// after 250 ms without an answer or at once after a failure (a refusal, a local error,
/// or its own connect timeout running out), the first server to answer wins and the
/// other attempts are dropped with their sockets. Each attempt has its own connect
/// deadline, so the whole is bounded by the connect timeout plus 250 ms per further
/// address. A server that answers and refuses us (a TLS alert) ends the dial: another
/// address of it would say the same.
///
/// The session is returned only after the server confirmed the handshake (QUIC
/// `HANDSHAKE_DONE`): a server refuses a client certificate after the client's side of
/// the TLS 1.3 handshake has finished, and this is how that refusal becomes a handshake
/// error here rather than a session that dies at first use.
pub async fn dial(
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    dial_on(None, addr, None, server_name, tls, options).await
}

/// Like [`dial`], to addresses the caller resolved (`addr` is then only used in error
/// messages): for a dialer that resolves a name once and gives the same addresses to
/// QUIC and TCP, or that has a resolver of its own. The addresses are raced as [`dial`]
/// describes; an empty list fails with [`Error::Connect`].
pub async fn dial_resolved(
    addr: &str,
    addrs: Vec<SocketAddr>,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    dial_on(None, addr, Some(addrs), server_name, tls, options).await
}

/// Like [`dial`], on an endpoint the caller made and keeps, for instance to share one
/// UDP socket between sessions or to [`rebind`](Endpoint::rebind) it later (the session
/// survives a change of local address: QUIC connection migration).
///
/// [`Session::close`] does not wait for such an endpoint to go idle; call
/// [`Endpoint::wait_idle`] before exiting to make sure the close reached the peer.
pub async fn dial_with_endpoint(
    endpoint: &Endpoint,
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    dial_on(Some(endpoint), addr, None, server_name, tls, options).await
}

async fn dial_on(
    endpoint: Option<&Endpoint>,
    addr: &str,
    resolved: Option<Vec<SocketAddr>>,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    options.validate()?;
    let config = client_config(tls.clone(), options)?;
    let candidates = match resolved {
        Some(addrs) if addrs.is_empty() => return Err(nothing_resolved(addr)),
        Some(addrs) => addrs,
        None => tokio::time::timeout(options.connect_timeout, resolve(addr))
            .await
            .map_err(|_| Error::Timeout {
                what: TimeoutKind::Connect,
                after: options.connect_timeout,
            })??,
    };
    let reached = reach(endpoint, candidates, addr, server_name, config, options).await?;
    let Reached {
        endpoint,
        owns_endpoint,
        connecting,
    } = reached;

    let handshake_deadline = Instant::now() + options.handshake_timeout;
    let handshake_timeout = || Error::Timeout {
        what: TimeoutKind::Handshake,
        after: options.handshake_timeout,
    };
    let failed =
        |e: ConnectionError| handshake_failure(&e, Side::Client, options.handshake_timeout);
    let connection = timeout_at(handshake_deadline, connecting)
        .await
        .map_err(|_| handshake_timeout())?
        .map_err(failed)?;
    match timeout_at(handshake_deadline, confirmation(&connection)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => {
            connection.close(VarInt::from_u32(0), b"handshake timeout");
            return Err(handshake_timeout());
        }
    }
    if negotiated_protocol(&connection).as_deref() != Some(qymux_transport::ALPN) {
        // rustls lets a server that ignores ALPN through; it is not a Qymux peer.
        connection.close(VarInt::from_u32(0), b"no qymux ALPN");
        return Err(Error::Handshake(HandshakeError::AlpnMismatch));
    }
    let presented = presented_certificates(&connection);
    let peer_identity = match qymux_tls::server_identity(&tls, presented.as_deref()) {
        Ok(identity) => identity,
        Err(e) => {
            connection.close(VarInt::from_u32(0), b"server certificate not verified");
            return Err(Error::Handshake(e));
        }
    };
    debug!(remote = %connection.remote_address(), "QUIC session established");
    Ok(Session::new(
        connection,
        endpoint,
        owns_endpoint,
        options,
        peer_identity,
    ))
}

/// The application protocol both sides agreed on.
pub(crate) fn negotiated_protocol(connection: &Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<HandshakeData>()
        .ok()?
        .protocol
}

async fn resolve(addr: &str) -> Result<Vec<SocketAddr>> {
    let connect_error = |source: std::io::Error| Error::Connect {
        addr: addr.to_owned(),
        source: Arc::new(source),
    };
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(connect_error)?
        .collect();
    if candidates.is_empty() {
        return Err(nothing_resolved(addr));
    }
    Ok(candidates)
}

fn nothing_resolved(addr: &str) -> Error {
    Error::Connect {
        addr: addr.to_owned(),
        source: Arc::new(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address resolved",
        )),
    }
}

/// A connection attempt whose server has answered.
struct Reached {
    endpoint: Endpoint,
    owns_endpoint: bool,
    connecting: Connecting,
}

/// Races a handshake start with each candidate (Happy Eyeballs, [`eyeballs::race`]), each
/// with its own connect deadline, until one server answers. A refusal with a TLS alert
/// is an answer that ends the dial; a QUIC `CONNECTION_REFUSED` (a busy server), local
/// failures (no socket, unusable address) and an attempt's deadline move on to the
/// next candidate at once.
async fn reach(
    endpoint: Option<&Endpoint>,
    candidates: Vec<SocketAddr>,
    addr: &str,
    server_name: &str,
    config: quinn::ClientConfig,
    options: &Options,
) -> Result<Reached> {
    let connect_timeout = options.connect_timeout;
    let bound = connect_timeout.min(options.idle_timeout);
    let one = |candidate: SocketAddr| {
        let (endpoint, config) = (endpoint.cloned(), config.clone());
        async move {
            let attempt = attempt(endpoint, candidate, addr, server_name, config, bound);
            match tokio::time::timeout(connect_timeout, attempt).await {
                Err(_) => Err(Error::Timeout {
                    what: TimeoutKind::Connect,
                    after: connect_timeout,
                }),
                // No answer from this address: the next one.
                Ok(Err(e @ (Error::Connect { .. } | Error::Timeout { .. }))) => Err(e),
                // Reached, or the server answered and said no: the race ends.
                Ok(answered) => Ok(answered),
            }
        }
    };
    let (answered, candidate) = eyeballs::race(candidates, eyeballs::ATTEMPT_DELAY, one).await?;
    debug!(%candidate, "QUIC dial: this address answered first");
    answered
}

async fn attempt(
    endpoint: Option<Endpoint>,
    candidate: SocketAddr,
    addr: &str,
    server_name: &str,
    config: quinn::ClientConfig,
    connect_timeout: Duration,
) -> Result<Reached> {
    let connect_error = |source: std::io::Error| Error::Connect {
        addr: addr.to_owned(),
        source: Arc::new(source),
    };
    let (endpoint, owns_endpoint) = match endpoint {
        Some(endpoint) => (endpoint, false),
        None => {
            let local = socket::unspecified_for(candidate);
            let socket = socket::client_socket(local).map_err(connect_error)?;
            let endpoint = Endpoint::new(
                EndpointConfig::default(),
                None,
                socket,
                Arc::new(TokioRuntime),
            )
            .map_err(connect_error)?;
            (endpoint, true)
        }
    };
    let mut connecting = endpoint
        .connect_with(config, candidate, server_name)
        .map_err(|e| match e {
            quinn::ConnectError::InvalidServerName(name) => {
                Error::Config(format!("invalid server name {name:?}"))
            }
            other => connect_error(std::io::Error::other(other)),
        })?;
    // Resolves once the server's first handshake flight was processed: it answered.
    connecting.handshake_data().await.map_err(|e| match e {
        ConnectionError::ConnectionClosed(close)
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            connect_error(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "the server refused the connection (QUIC CONNECTION_REFUSED)",
            ))
        }
        // quinn's idle timeout ran out before ours (it bounds the handshake too).
        ConnectionError::TimedOut => Error::Timeout {
            what: TimeoutKind::Connect,
            after: connect_timeout,
        },
        other => handshake_failure(&other, Side::Client, Duration::ZERO),
    })?;
    debug!(%candidate, "QUIC server answered");
    Ok(Reached {
        endpoint,
        owns_endpoint,
        connecting,
    })
}

/// Waits until the server confirmed the handshake (QUIC `HANDSHAKE_DONE`), or the
/// connection ended. quinn has no event for it, so the frame counter is watched.
async fn confirmation(connection: &Connection) -> std::result::Result<(), ConnectionError> {
    let closed = connection.closed();
    tokio::pin!(closed);
    loop {
        if connection.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        tokio::select! {
            err = &mut closed => return Err(err),
            () = sleep(Duration::from_millis(1)) => {}
        }
    }
}
