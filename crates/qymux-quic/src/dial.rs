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
use qymux_transport::{Error, HandshakeError, Options, Result, TimeoutKind};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::debug;

use crate::config::client_config;
use crate::error::handshake_failure;
use crate::session::{Session, presented_certificates};
use crate::socket;

/// With several resolved addresses, the next one is tried when the previous has not
/// answered for this long (the attempts then run side by side; the first answer wins).
const NEXT_ADDRESS_DELAY: Duration = Duration::from_millis(250);

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
/// When a name resolves to several addresses they are tried in turn, overlapping.
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
    dial_on(None, addr, server_name, tls, options).await
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
    dial_on(Some(endpoint), addr, server_name, tls, options).await
}

async fn dial_on(
    endpoint: Option<&Endpoint>,
    addr: &str,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<Session> {
    options.validate()?;
    let config = client_config(tls.clone(), options)?;
    let connect_deadline = Instant::now() + options.connect_timeout;
    let connect_timeout = || Error::Timeout {
        what: TimeoutKind::Connect,
        after: options.connect_timeout,
    };

    let reached = timeout_at(connect_deadline, async {
        let candidates = resolve(addr).await?;
        let bound = options.connect_timeout.min(options.idle_timeout);
        reach(endpoint, candidates, addr, server_name, config, bound).await
    })
    .await
    .map_err(|_| connect_timeout())??;
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
        return Err(connect_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address resolved",
        )));
    }
    Ok(candidates)
}

/// A connection attempt whose server has answered.
struct Reached {
    endpoint: Endpoint,
    owns_endpoint: bool,
    connecting: Connecting,
}

/// Starts a handshake with each candidate in turn, `NEXT_ADDRESS_DELAY` apart, until one
/// server answers. A refusal (a TLS alert) is an answer too and ends the dial; local
/// failures (no socket, unusable address) move on to the next candidate.
async fn reach(
    endpoint: Option<&Endpoint>,
    candidates: Vec<SocketAddr>,
    addr: &str,
    server_name: &str,
    config: quinn::ClientConfig,
    connect_timeout: Duration,
) -> Result<Reached> {
    let mut attempts = JoinSet::new();
    for (i, candidate) in candidates.into_iter().enumerate() {
        let endpoint = endpoint.cloned();
        let config = config.clone();
        let server_name = server_name.to_owned();
        let addr = addr.to_owned();
        attempts.spawn(async move {
            sleep(NEXT_ADDRESS_DELAY * i as u32).await;
            attempt(
                endpoint,
                candidate,
                &addr,
                &server_name,
                config,
                connect_timeout,
            )
            .await
        });
    }
    let mut first_error = None;
    while let Some(done) = attempts.join_next().await {
        match done {
            Ok(Ok(reached)) => return Ok(reached),
            Ok(Err(e @ Error::Connect { .. })) => {
                debug!("QUIC dial attempt failed: {}", e.report());
                first_error.get_or_insert(e);
            }
            Ok(Err(e)) => return Err(e),
            Err(join) => {
                first_error.get_or_insert(Error::Protocol(format!("dial attempt failed: {join}")));
            }
        }
    }
    // Dropping the set aborts the attempts still running.
    Err(first_error.unwrap_or_else(|| Error::Config("no address to dial".into())))
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
