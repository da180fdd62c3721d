//! A reverse TCP tunnel: a public port on the server reaches a TCP service next to the
//! agent, and the agent redials whenever its session drops.
//!
//! ```text
//!  TCP clients ──▶ server public port ══ Qymux session (agent dialed out) ══▶ agent ──▶ service
//! ```
//!
//! - [`run_server`] accepts agent sessions on a Qymux [`Listener`] and forwards every
//!   connection to its public [`TcpListener`] to a new stream on an agent session.
//! - [`run_agent`] dials the server (with any dial function, so any backend, mode or TLS
//!   setup), forwards every stream the server opens to its target with
//!   [`forward_accepted`](crate::forward_accepted), and when the session ends, dials
//!   again with exponential backoff and full jitter ([`Backoff`]).
//!
//! Both are futures that resolve with [`Stopped`] and carry a [`ForwardHandle`] to stop
//! them; both publish what happens as events ([`ServerEvent`], [`AgentEvent`]) to
//! whoever [subscribed](Server::subscribe), and log it with `tracing`.
//!
//! # Which agent gets a connection
//!
//! Several agent sessions may be connected at once: several agents for the same service,
//! or one agent that reconnected before the server noticed its old session had died.
//! Each new public connection goes to the **most recently connected agent whose session
//! is still alive**; if opening a stream on it fails because that session has just
//! ended, the next most recent one is tried. Connections already forwarded stay on their
//! session. When no agent is connected, a public connection waits up to
//! [`ServerConfig::agent_wait`] for one (so clients ride through an agent's reconnect),
//! then is reset and counted as [refused](crate::Stats::refused).
//!
//! The agent is not expected to open streams itself: streams it opens are aborted.
//!
//! # When the agent notices a lost session
//!
//! As soon as the transport does: at once when the server closes the session or its
//! process dies with a TCP connection (the kernel resets it); but after a server crash
//! over QUIC only when the dead-peer timeout runs out (`Options::idle_timeout`, 30 s by
//! default), as nothing tells the agent. Meanwhile the server, once back, has no agent
//! and resets public connections after [`ServerConfig::agent_wait`]. Tunnels that must
//! recover quickly use a shorter keep-alive and idle timeout on both sides (the
//! `tunnel` example uses 5 s and 15 s).
//!
//! # Example
//!
//! ```
//! use qymux::cert::CertificateAuthority;
//! use qymux::tls::{ClientTls, ServerTls};
//! use qymux::{Config, Qymux};
//! use qymux_forward::tunnel::{AgentConfig, AgentEvent, ServerConfig, run_agent, run_server};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The service the agent can reach (here: one that shouts back).
//! let service = TcpListener::bind("127.0.0.1:0").await?;
//! let service_addr = service.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut conn, _)) = service.accept().await {
//!         let mut request = String::new();
//!         conn.read_to_string(&mut request).await.unwrap();
//!         conn.write_all(request.to_uppercase().as_bytes()).await.unwrap();
//!     }
//! });
//!
//! // The server: agents connect on one port, TCP clients on another.
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server_qymux = Qymux::new(Config::new().server_tls(ServerTls::new(ca.issue_server(&["localhost"])?)));
//! let agents = server_qymux.listen("127.0.0.1:0").await?;
//! let agents_addr = agents.local_addr();
//! let public = TcpListener::bind("127.0.0.1:0").await?;
//! let public_addr = public.local_addr()?;
//! tokio::spawn(run_server(agents, public, ServerConfig::default()));
//!
//! // The agent dials out and forwards the server's streams to the service.
//! let agent_qymux = Qymux::new(
//!     Config::new()
//!         .server_addr(agents_addr.to_string())
//!         .server_name("localhost")
//!         .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()])),
//! );
//! let agent = run_agent(
//!     move || {
//!         let q = agent_qymux.clone();
//!         async move { q.dial().await }
//!     },
//!     AgentConfig::new(service_addr),
//! );
//! let mut events = agent.subscribe();
//! tokio::spawn(agent);
//! while !matches!(events.recv().await?, AgentEvent::Connected { .. }) {}
//!
//! // A plain TCP client reaches the service through the public port.
//! let mut client = TcpStream::connect(public_addr).await?;
//! client.write_all(b"hello through the tunnel").await?;
//! client.shutdown().await?; // passed through: the service reads EOF
//! let mut reply = String::new();
//! client.read_to_string(&mut reply).await?;
//! assert_eq!(reply, "HELLO THROUGH THE TUNNEL");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use qymux_transport::{CloseReason, Error, Listener, PeerIdentity, Protocol, Session, Stream};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{ForwardConfig, Target};
use crate::forwarder::{
    Ended, ForwardHandle, Forwarder, OpenError, Opener, Shared, StopReason, Stopped, ended,
    requested, run_accepted, run_listener,
};
use crate::stats::Stats;

/// How many events a subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 256;

/// How long the agent listener pauses after a non-fatal accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Backoff

/// When the agent redials: exponential backoff with full jitter. It lives in
/// `qymux-dialer`, which its reconnecting session shares.
pub use qymux_dialer::Backoff;

// ---------------------------------------------------------------------------------------
// Server

/// How the tunnel server forwards its public connections.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Limits and buffers for the public connections.
    pub forward: ForwardConfig,
    /// How long a public connection waits for an agent when none is connected, before it
    /// is reset (default 5 s; zero refuses at once).
    pub agent_wait: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            forward: ForwardConfig::default(),
            agent_wait: Duration::from_secs(5),
        }
    }
}

/// An agent session the server holds.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct AgentInfo {
    /// A number the server gives each agent session, counting from 1.
    pub id: u64,
    /// The agent's address.
    pub remote: SocketAddr,
    /// The transport of its session.
    pub protocol: Protocol,
    /// Its verified client certificate, with mTLS.
    pub identity: Option<PeerIdentity>,
}

impl fmt::Display for AgentInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "agent #{} {} over {}",
            self.id, self.remote, self.protocol
        )
    }
}

/// What happened on a tunnel server.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum ServerEvent {
    /// An agent session was accepted; new public connections go to it.
    AgentConnected {
        /// The agent.
        agent: AgentInfo,
        /// Agent sessions held now.
        agents: usize,
    },
    /// An agent session ended.
    AgentDisconnected {
        /// The agent.
        agent: AgentInfo,
        /// Why the session ended.
        reason: CloseReason,
        /// How long it was connected.
        lived: Duration,
        /// Agent sessions held now.
        agents: usize,
    },
}

impl fmt::Display for ServerEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEvent::AgentConnected { agent, agents } => {
                write!(f, "{agent} connected ({agents} connected)")
            }
            ServerEvent::AgentDisconnected {
                agent,
                reason,
                lived,
                agents,
            } => write!(
                f,
                "{agent} disconnected after {:.1} s: {reason} ({agents} connected)",
                lived.as_secs_f64()
            ),
        }
    }
}

/// A running tunnel server, as a future that resolves with [`Stopped`] (see
/// [`run_server`]). Dropping it stops the server and resets its connections.
#[must_use = "a tunnel server does nothing unless awaited or spawned"]
pub struct Server {
    forwarder: Forwarder,
    events: broadcast::Sender<ServerEvent>,
    agents: Arc<dyn AgentList>,
}

impl Server {
    /// Receives the events from now on. Subscribe before spawning the server to see them
    /// all.
    pub fn subscribe(&self) -> broadcast::Receiver<ServerEvent> {
        self.events.subscribe()
    }

    /// A handle to watch and stop the server. [`ForwardHandle::shutdown`] stops
    /// accepting agents and public connections, lets the connections in progress finish,
    /// then closes the agent sessions gracefully.
    pub fn handle(&self) -> ForwardHandle {
        self.forwarder.handle()
    }

    /// Counts of the public connections.
    pub fn stats(&self) -> Stats {
        self.forwarder.stats()
    }

    /// The agent sessions held now, oldest first (the last one gets new connections).
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.agents.list()
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("stats", &self.stats())
            .field("agents", &self.agents().len())
            .finish_non_exhaustive()
    }
}

impl Future for Server {
    type Output = Stopped;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stopped> {
        Pin::new(&mut self.forwarder).poll(cx)
    }
}

/// Runs a tunnel server: accepts agent sessions on `agents`, and forwards every
/// connection to `public` to a new stream on the most recent live agent session (see
/// [the module docs](self) for the policy). The target is whatever the agent forwards
/// to.
///
/// The server runs until stopped through its [handle](Server::handle) (or dropped), or
/// until `agents` fails ([`StopReason::ListenerFailed`]). Per-connection failures are
/// logged and counted, never fatal.
pub fn run_server<L: Listener>(agents: L, public: TcpListener, config: ServerConfig) -> Server {
    let shared = Shared::new();
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let pool = Arc::new(Pool::<L::Session> {
        sessions: Mutex::new(Vec::new()),
        changed: watch::Sender::new(0),
        wait: config.agent_wait,
    });
    let run = {
        let pool = pool.clone();
        let events = events.clone();
        let shared = shared.clone();
        async move {
            let accepting = accept_agents(agents, pool.clone(), events);
            let reason =
                run_listener(public, pool.clone(), config.forward, shared, accepting).await;
            pool.close_all().await;
            reason
        }
    };
    Server {
        forwarder: Forwarder::new(shared, run),
        events,
        agents: pool,
    }
}

/// The agent sessions of a server, newest last.
struct Pool<S> {
    sessions: Mutex<Vec<(AgentInfo, S)>>,
    /// Bumped whenever an agent connects.
    changed: watch::Sender<u64>,
    wait: Duration,
}

trait AgentList: Send + Sync + 'static {
    fn list(&self) -> Vec<AgentInfo>;
}

impl<S: Session> AgentList for Pool<S> {
    fn list(&self) -> Vec<AgentInfo> {
        self.lock().iter().map(|(info, _)| info.clone()).collect()
    }
}

impl<S: Session> Pool<S> {
    fn lock(&self) -> MutexGuard<'_, Vec<(AgentInfo, S)>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, info: AgentInfo, session: S) -> usize {
        let count = {
            let mut sessions = self.lock();
            sessions.push((info, session));
            sessions.len()
        };
        self.changed.send_modify(|n| *n += 1);
        count
    }

    fn remove(&self, id: u64) -> usize {
        let mut sessions = self.lock();
        sessions.retain(|(info, _)| info.id != id);
        sessions.len()
    }

    /// The newest session that is alive and not in `skip`.
    fn newest_alive(&self, skip: &[u64]) -> Option<(u64, S)> {
        self.lock()
            .iter()
            .rev()
            .find(|(info, s)| s.close_reason().is_none() && !skip.contains(&info.id))
            .map(|(info, s)| (info.id, s.clone()))
    }

    async fn close_all(&self) {
        let sessions: Vec<S> = self.lock().drain(..).map(|(_, s)| s).collect();
        let mut closing = JoinSet::new();
        for s in sessions {
            closing.spawn(async move { s.close().await });
        }
        while closing.join_next().await.is_some() {}
    }
}

impl<S: Session> Opener for Pool<S> {
    type Stream = S::Stream;

    async fn open(&self) -> Result<(S::Stream, Ended), OpenError> {
        let deadline = Instant::now() + self.wait;
        let mut changed = self.changed.subscribe();
        let mut failed = Vec::new();
        loop {
            while let Some((id, session)) = self.newest_alive(&failed) {
                match session.open().await {
                    Ok(stream) => return Ok((stream, ended(&session))),
                    // That session has just ended: try the next one.
                    Err(e) if session.close_reason().is_some() || e.is_session_closed() => {
                        debug!(agent = id, error = %e.report(), "agent session gone; trying another");
                        failed.push(id);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(OpenError::Refused(if self.wait.is_zero() {
                    "no agent connected".to_owned()
                } else {
                    format!("no agent connected within {:?}", self.wait)
                }));
            }
        }
    }
}

/// Accepts agent sessions until the listener fails; registers each in `pool` and watches
/// it until it ends.
async fn accept_agents<L: Listener>(
    listener: L,
    pool: Arc<Pool<L::Session>>,
    events: broadcast::Sender<ServerEvent>,
) -> StopReason {
    let mut watchers = JoinSet::new();
    let mut next_id = 0;
    loop {
        while watchers.try_join_next().is_some() {}
        let session = match listener.accept().await {
            Ok(session) => session,
            Err(e @ (Error::Closed | Error::Io(_))) => {
                warn!(error = %e.report(), "the agent listener failed; stopping");
                return StopReason::ListenerFailed(e);
            }
            Err(e) => {
                warn!(error = %e.report(), "accepting an agent failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        next_id += 1;
        let agent = AgentInfo {
            id: next_id,
            remote: session.remote_addr(),
            protocol: session.protocol(),
            identity: session.peer_identity(),
        };
        let agents = pool.add(agent.clone(), session.clone());
        info!(agent = agent.id, remote = %agent.remote, protocol = %agent.protocol, agents, "agent connected");
        let _ = events.send(ServerEvent::AgentConnected {
            agent: agent.clone(),
            agents,
        });
        watchers.spawn(watch_agent(agent, session, pool.clone(), events.clone()));
    }
}

/// Waits until an agent session ends (aborting any stream the agent opens), then
/// unregisters it.
async fn watch_agent<S: Session>(
    agent: AgentInfo,
    session: S,
    pool: Arc<Pool<S>>,
    events: broadcast::Sender<ServerEvent>,
) {
    let since = Instant::now();
    while let Ok(mut stream) = session.accept().await {
        debug!(
            agent = agent.id,
            stream = stream.id(),
            "the agent opened a stream; aborted"
        );
        stream.abort();
    }
    let reason = session.closed().await;
    let lived = since.elapsed();
    let agents = pool.remove(agent.id);
    info!(agent = agent.id, remote = %agent.remote, %reason, agents, "agent disconnected");
    let _ = events.send(ServerEvent::AgentDisconnected {
        agent,
        reason,
        lived,
        agents,
    });
}

// ---------------------------------------------------------------------------------------
// Agent

/// Where the agent forwards the server's streams, and how it redials.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The TCP service every stream the server opens is forwarded to.
    pub target: Target,
    /// Limits and buffers for the forwarded connections.
    pub forward: ForwardConfig,
    /// When to redial after a failed dial or a lost session.
    pub backoff: Backoff,
}

impl AgentConfig {
    /// Forwards to `target`, with the default [`ForwardConfig`] and [`Backoff`].
    pub fn new(target: impl Into<Target>) -> Self {
        Self {
            target: target.into(),
            forward: ForwardConfig::default(),
            backoff: Backoff::default(),
        }
    }
}

/// What happened on a tunnel agent.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// Dialing the server, attempt `attempt` since the last session (from 1).
    Dialing {
        /// The attempt number.
        attempt: u32,
    },
    /// A session is up; the server's streams are forwarded.
    Connected {
        /// The attempt that succeeded.
        attempt: u32,
        /// The server's address.
        remote: SocketAddr,
        /// The transport of the session.
        protocol: Protocol,
    },
    /// Dialing failed; the agent dials again after `retry_in`.
    DialFailed {
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: Error,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// The session ended; the agent dials again after `retry_in`.
    Disconnected {
        /// Why the session ended.
        reason: CloseReason,
        /// How long it lived.
        lived: Duration,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
}

impl fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
        match self {
            AgentEvent::Dialing { attempt } => write!(f, "attempt {attempt}: dialing"),
            AgentEvent::Connected {
                attempt,
                remote,
                protocol,
            } => write!(
                f,
                "attempt {attempt}: connected to {remote} over {protocol}"
            ),
            AgentEvent::DialFailed {
                attempt,
                error,
                retry_in,
            } => write!(
                f,
                "attempt {attempt} failed: {}; retrying in {:.0} ms",
                error.report(),
                ms(retry_in)
            ),
            AgentEvent::Disconnected {
                reason,
                lived,
                retry_in,
            } => write!(
                f,
                "session ended after {:.1} s: {reason}; reconnecting in {:.0} ms",
                lived.as_secs_f64(),
                ms(retry_in)
            ),
        }
    }
}

/// A running tunnel agent, as a future that resolves with [`Stopped`] (see
/// [`run_agent`]). Dropping it stops the agent and resets its connections.
#[must_use = "a tunnel agent does nothing unless awaited or spawned"]
pub struct Agent {
    forwarder: Forwarder,
    events: broadcast::Sender<AgentEvent>,
}

impl Agent {
    /// Receives the events from now on. Subscribe before spawning the agent to see them
    /// all.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// A handle to watch and stop the agent. [`ForwardHandle::shutdown`] stops dialing
    /// and accepting, lets the connections in progress finish, then closes the session.
    pub fn handle(&self) -> ForwardHandle {
        self.forwarder.handle()
    }

    /// Counts of the forwarded connections, over all sessions.
    pub fn stats(&self) -> Stats {
        self.forwarder.stats()
    }
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Future for Agent {
    type Output = Stopped;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stopped> {
        Pin::new(&mut self.forwarder).poll(cx)
    }
}

/// Runs a tunnel agent: dials with `dial`, forwards every stream the server opens to
/// `config.target`, and when the session ends (or a dial fails) dials again after a
/// [`Backoff`] wait, for as long as it runs.
///
/// `dial` is any function that returns a session: `Qymux::dial` from the `qymux` crate,
/// or a backend's own dial. Only [`Error::Config`] from it is fatal
/// ([`StopReason::DialFailed`]); every other failure (unreachable, handshake refused,
/// timeout) is retried, as the server may come back or be fixed.
pub fn run_agent<D, F, S>(dial: D, config: AgentConfig) -> Agent
where
    D: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<S, Error>> + Send + 'static,
    S: Session,
{
    let shared = Shared::new();
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let run = agent_loop(dial, config, shared.clone(), events.clone());
    Agent {
        forwarder: Forwarder::new(shared, run),
        events,
    }
}

async fn agent_loop<D, F, S>(
    mut dial: D,
    config: AgentConfig,
    shared: Arc<Shared>,
    events: broadcast::Sender<AgentEvent>,
) -> StopReason
where
    D: FnMut() -> F + Send + 'static,
    F: Future<Output = Result<S, Error>> + Send + 'static,
    S: Session,
{
    let mut control = shared.subscribe();
    let mut retry: u32 = 0;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        debug!(attempt, "dialing");
        let _ = events.send(AgentEvent::Dialing { attempt });
        let dialed = tokio::select! {
            biased;
            stop = requested(&mut control) => return stop,
            dialed = dial() => dialed,
        };
        let retry_in = match dialed {
            Ok(session) => {
                let (remote, protocol) = (session.remote_addr(), session.protocol());
                info!(attempt, %remote, %protocol, "connected");
                let _ = events.send(AgentEvent::Connected {
                    attempt,
                    remote,
                    protocol,
                });
                attempt = 0;
                let since = Instant::now();
                let stopped = run_accepted(
                    session.clone(),
                    config.target.clone(),
                    config.forward.clone(),
                    shared.clone(),
                )
                .await;
                let reason = match stopped {
                    StopReason::SessionEnded(reason) => reason,
                    other => {
                        session.close().await;
                        return other;
                    }
                };
                let lived = since.elapsed();
                if lived >= config.backoff.reset_after {
                    retry = 0;
                }
                let retry_in = config.backoff.delay(retry);
                warn!(%reason, lived = ?lived, retry_in = ?retry_in, "session ended; reconnecting");
                let _ = events.send(AgentEvent::Disconnected {
                    reason,
                    lived,
                    retry_in,
                });
                retry_in
            }
            Err(e @ Error::Config(_)) => {
                warn!(error = %e.report(), "cannot dial: invalid configuration; stopping");
                return StopReason::DialFailed(e);
            }
            Err(error) => {
                let retry_in = config.backoff.delay(retry);
                warn!(attempt, error = %error.report(), retry_in = ?retry_in, "dial failed");
                let _ = events.send(AgentEvent::DialFailed {
                    attempt,
                    error,
                    retry_in,
                });
                retry_in
            }
        };
        retry = retry.saturating_add(1);
        tokio::select! {
            biased;
            stop = requested(&mut control) => return stop,
            () = tokio::time::sleep(retry_in) => {}
        }
    }
}
