//! Idle sessions held by one server process: resident memory per session.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::procs::Server;
use crate::proto;
use crate::stacks::{self, SERVER_NAME};

/// Dials at once at most this many sessions.
const DIALS_IN_FLIGHT: usize = 32;

/// What the idle measure found.
#[derive(Debug, Clone)]
pub(crate) struct Idle {
    pub(crate) sessions: usize,
    pub(crate) base_kib: u64,
    pub(crate) held_kib: u64,
}

impl Idle {
    pub(crate) fn per_session_kib(&self) -> f64 {
        (self.held_kib.saturating_sub(self.base_kib)) as f64 / self.sessions as f64
    }
}

/// The stacks whose idle sessions are measured; the raw ones for comparison (a raw TLS
/// "session" is one TLS connection, with a task waiting to read from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stack {
    RawTls,
    QymuxTcp,
    RawQuic,
    QymuxQuic,
}

impl Stack {
    pub(crate) const ALL: [Self; 4] =
        [Self::RawTls, Self::QymuxTcp, Self::RawQuic, Self::QymuxQuic];

    /// The kind of server that holds the sessions.
    pub(crate) fn server_kind(self) -> &'static str {
        match self {
            Self::RawTls => "raw-tls",
            Self::QymuxTcp => "qymux-tcp",
            Self::RawQuic => "raw-quic",
            Self::QymuxQuic => "qymux-quic",
        }
    }
}

enum Dialed {
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Tcp(qymux_tcp::Session),
    RawQuic(quinn::Connection),
    Quic(qymux_quic::Session),
}

/// Opens `n` sessions to `server` (a fresh server of `stack`), reads its RSS before and
/// once they are all held, then checks every session still carries a stream (a raw TLS
/// connection: a round trip), and closes them.
pub(crate) async fn measure(
    server: &mut Server,
    stack: Stack,
    n: usize,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Idle> {
    let (before, base_kib) = server.stat().await?;
    if before != 0 {
        bail!("the idle server already holds {before} sessions");
    }
    let addr = server.addr.to_string();
    // One UDP socket for all QUIC sessions of this client (nothing differs on the server
    // side from many clients).
    let endpoint = match stack {
        Stack::QymuxQuic => Some(quinn::Endpoint::client("127.0.0.1:0".parse()?)?),
        Stack::RawQuic => Some(stacks::quinn_client(tls.clone())?),
        _ => None,
    };
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let limit = Arc::new(Semaphore::new(DIALS_IN_FLIGHT));
    let mut dials = JoinSet::new();
    for _ in 0..n {
        let (addr, tls, endpoint, limit) =
            (addr.clone(), tls.clone(), endpoint.clone(), limit.clone());
        let connector = connector.clone();
        let sock = server.addr;
        dials.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let options = stacks::options();
            Ok::<_, anyhow::Error>(match (stack, endpoint) {
                (Stack::QymuxQuic, Some(endpoint)) => Dialed::Quic(
                    qymux_quic::dial_with_endpoint(
                        &endpoint,
                        &addr,
                        SERVER_NAME,
                        tls,
                        options.clone(),
                    )
                    .await?,
                ),
                (Stack::RawQuic, Some(endpoint)) => {
                    Dialed::RawQuic(endpoint.connect(sock, SERVER_NAME)?.await?)
                }
                (Stack::RawTls, _) => {
                    let tcp = tokio::net::TcpStream::connect(sock).await?;
                    tcp.set_nodelay(true)?;
                    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)?;
                    Dialed::Tls(Box::new(connector.connect(name, tcp).await?))
                }
                _ => Dialed::Tcp(qymux_tcp::dial(&addr, SERVER_NAME, tls, options.clone()).await?),
            })
        });
    }
    let mut sessions = Vec::with_capacity(n);
    while let Some(dialed) = dials.join_next().await {
        sessions.push(dialed?.context("dialing an idle session")?);
    }

    // Wait for the server to hold them all, then let it settle.
    let mut held = 0;
    for _ in 0..300 {
        held = server.stat().await?.0;
        if held >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if held != n {
        bail!("the server holds {held} sessions, not {n}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (held, held_kib) = server.stat().await?;
    if held != n {
        bail!("the server holds {held} sessions, not {n}");
    }

    // Every session still works: one 64-byte round trip on a new stream each.
    let limit = Arc::new(Semaphore::new(64));
    let mut checks = JoinSet::new();
    for (seq, session) in sessions.into_iter().enumerate() {
        let limit = limit.clone();
        checks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let msg = proto::message(seq as u64);
            match &session {
                Dialed::Tls(_) => {}
                Dialed::Tcp(s) => {
                    let mut io = s.open().await?;
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
                Dialed::RawQuic(c) => {
                    let (send, recv) = c.open_bi().await?;
                    let mut io = tokio::io::join(recv, send);
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
                Dialed::Quic(s) => {
                    let mut io = s.open().await?;
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
            }
            Ok::<_, anyhow::Error>(session)
        });
    }
    let mut checked = Vec::with_capacity(n);
    while let Some(done) = checks.join_next().await {
        checked.push(done?.context("a round trip on an idle session")?);
    }

    let mut closing = JoinSet::new();
    for (seq, session) in checked.into_iter().enumerate() {
        closing.spawn(async move {
            match session {
                Dialed::Tls(mut io) => {
                    let msg = proto::message(seq as u64);
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
                Dialed::Tcp(s) => s.close().await,
                Dialed::RawQuic(c) => c.close(0u32.into(), b"done"),
                Dialed::Quic(s) => s.close().await,
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = closing.join_next().await {
        done?.context("a round trip on an idle TLS connection")?;
    }
    if let Some(endpoint) = endpoint {
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    }
    Ok(Idle {
        sessions: n,
        base_kib,
        held_kib,
    })
}
