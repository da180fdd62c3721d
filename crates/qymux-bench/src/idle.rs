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

#[derive(Clone)]
enum Dialed {
    Tcp(qymux_tcp::Session),
    Quic(qymux_quic::Session),
}

/// Opens `n` sessions to `server` (a fresh `qymux-tcp` or `qymux-quic` server), reads
/// its RSS before and once they are all held, then checks every session still carries a
/// stream, and closes them.
pub(crate) async fn measure(
    server: &mut Server,
    quic: bool,
    n: usize,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Idle> {
    let (before, base_kib) = server.stat().await?;
    if before != 0 {
        bail!("the idle server already holds {before} sessions");
    }
    let addr = server.addr.to_string();
    // One UDP socket for all QUIC sessions, as an agent fleet's server would see many
    // clients; on the server side nothing differs.
    let endpoint = if quic {
        Some(quinn::Endpoint::client("127.0.0.1:0".parse()?)?)
    } else {
        None
    };
    let limit = Arc::new(Semaphore::new(DIALS_IN_FLIGHT));
    let mut dials = JoinSet::new();
    for _ in 0..n {
        let (addr, tls, endpoint, limit) =
            (addr.clone(), tls.clone(), endpoint.clone(), limit.clone());
        dials.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let options = stacks::options();
            Ok::<_, anyhow::Error>(match endpoint {
                Some(endpoint) => Dialed::Quic(
                    qymux_quic::dial_with_endpoint(&endpoint, &addr, SERVER_NAME, tls, &options)
                        .await?,
                ),
                None => Dialed::Tcp(qymux_tcp::dial(&addr, SERVER_NAME, tls, &options).await?),
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
    for (seq, session) in sessions.iter().cloned().enumerate() {
        let limit = limit.clone();
        checks.spawn(async move {
            let _permit = limit.acquire_owned().await?;
            let msg = proto::message(seq as u64);
            match session {
                Dialed::Tcp(s) => {
                    let mut io = s.open().await?;
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
                Dialed::Quic(s) => {
                    let mut io = s.open().await?;
                    proto::round_trip(&mut io, &msg).await?;
                    proto::finish(&mut io).await?;
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = checks.join_next().await {
        done?.context("a round trip on an idle session")?;
    }

    let mut closing = JoinSet::new();
    for session in sessions {
        closing.spawn(async move {
            match session {
                Dialed::Tcp(s) => s.close().await,
                Dialed::Quic(s) => s.close().await,
            }
        });
    }
    while closing.join_next().await.is_some() {}
    if let Some(endpoint) = endpoint {
        let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    }
    Ok(Idle {
        sessions: n,
        base_kib,
        held_kib,
    })
}
