//! A reverse TCP tunnel: a public port on the server reaches a TCP service next to the
//! agent, and the agent redials whenever its session drops.
//!
//! ```text
//!  TCP clients ──▶ server public port ══ Qymux session (agent dialed out) ══▶ agent ──▶ service
//! ```
//!
//! - [`run_server`] accepts agent sessions on a Qymux [`Listener`] and forwards every
//!   connection to its public [`TcpListener`] to a new stream on an agent session.
//! - [`run_agent`] keeps a session up to one or several servers with the reconnecting
//!   session of `qymux-dialer` ([`Reconnecting`]: exponential backoff with full jitter
//!   ([`Backoff`]), the next server after a loss, back to QUIC once it gets through
//!   again), and forwards every stream the server opens to its target as
//!   [`forward_accepted`](crate::forward_accepted) does.
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
//! let agent = run_agent(agent_qymux.dialers()?, AgentConfig::new(service_addr));
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

use qymux_dialer::{Dialer, ReconnectConfig, ReconnectState, Reconnecting};
use qymux_transport::{
    BoxSession, CloseReason, Error, Listener, PeerIdentity, Protocol, Session, Stream,
};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::{ForwardConfig, Target};
use crate::forwarder::{
    Ended, ForwardHandle, Forwarder, OpenError, Opener, Shared, StopReason, Stopped,
    close_reason_of, ended, requested, run_accepted, run_listener,
};
use crate::stats::Stats;

/// How many events a subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 256;

/// How long the agent listener pauses after a non-fatal accept error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------
// Backoff

/// When the agent redials: exponential backoff with full jitter, owned by the
/// reconnecting session of `qymux-dialer` the agent runs on
/// ([`AgentConfig::reconnect`]).
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
    /// How the agent's session is kept up: the [`Backoff`] between dials, the move back
    /// to QUIC, the spread after a server's clean close (see [`Reconnecting`], which
    /// runs the agent's session).
    pub reconnect: ReconnectConfig,
}

impl AgentConfig {
    /// Forwards to `target`, with the default [`ForwardConfig`] and [`ReconnectConfig`].
    pub fn new(target: impl Into<Target>) -> Self {
        Self {
            target: target.into(),
            forward: ForwardConfig::default(),
            reconnect: ReconnectConfig::default(),
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

/// Runs a tunnel agent: keeps a session up to `servers` with a [`Reconnecting`] session
/// (the first server first; after a failed dial or a lost session the next, round
/// robin, after a [`Backoff`] wait; in Auto mode a session that fell back to TCP moves
/// to QUIC once QUIC gets through again), and forwards every stream the server opens to
/// `config.target`, for as long as it runs.
///
/// `servers` are [`Dialer`]s, one per server (`Qymux::dialers` from the `qymux` crate
/// makes them from its configuration). Only an invalid configuration
/// ([`Error::Config`], from the start or from a dial) is fatal
/// ([`StopReason::DialFailed`]); every other failure (unreachable, handshake refused,
/// timeout) is retried, as the server may come back or be fixed.
pub fn run_agent(servers: Vec<Dialer>, config: AgentConfig) -> Agent {
    let shared = Shared::new();
    let (events, _) = broadcast::channel(EVENT_CAPACITY);
    let run = agent_loop(servers, config, shared.clone(), events.clone());
    Agent {
        forwarder: Forwarder::new(shared, run),
        events,
    }
}

async fn agent_loop(
    servers: Vec<Dialer>,
    config: AgentConfig,
    shared: Arc<Shared>,
    events: broadcast::Sender<AgentEvent>,
) -> StopReason {
    // Sessions being forwarded now (two while a TCP session drains after a move to QUIC).
    let (forwarding, _) = watch::channel(0usize);
    let on_session = {
        let (shared, forwarding) = (shared.clone(), forwarding.clone());
        let (target, forward) = (config.target.clone(), config.forward.clone());
        move |session: BoxSession| {
            let (shared, forwarding) = (shared.clone(), forwarding.clone());
            let (target, forward) = (target.clone(), forward.clone());
            async move {
                let counted = Counted::new(forwarding);
                let _ = run_accepted(session.clone(), target, forward, shared).await;
                drop(counted);
                // Stopped or ended: the session is the reconnecting loop's to close.
                session.closed().await;
            }
        }
    };
    let (states_tx, mut states) = broadcast::channel(EVENT_CAPACITY);
    let reconnecting =
        match Reconnecting::start_observed(servers, config.reconnect, states_tx, on_session) {
            Ok(reconnecting) => reconnecting,
            Err(e) => {
                warn!(error = %e.report(), "cannot dial: invalid configuration; stopping");
                return StopReason::DialFailed(e);
            }
        };
    let mut control = shared.subscribe();
    let mut report = Report::default();
    loop {
        let state = tokio::select! {
            biased;
            stop = requested(&mut control) => {
                // The forwarders drain (shutdown) or reset (abort) their connections;
                // then the session is closed gracefully.
                let _ = forwarding.subscribe().wait_for(|n| *n == 0).await;
                reconnecting.shutdown().await;
                return stop;
            }
            state = states.recv() => state,
        };
        match state {
            Ok(ReconnectState::Stopped {
                last_error: Some(e),
            }) => {
                warn!(error = %e.report(), "cannot dial: invalid configuration; stopping");
                return StopReason::DialFailed(e);
            }
            Ok(state) => {
                if let Some(event) = report.event(state) {
                    event.log();
                    let _ = events.send(event);
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                debug!(missed, "missed reconnect states");
            }
            // The loop is gone without saying why (it cannot be: it stops only when
            // asked to, or with Stopped { last_error }).
            Err(broadcast::error::RecvError::Closed) => {
                return StopReason::DialFailed(Error::Closed);
            }
        }
    }
}

/// Counts one running forwarder in a watch channel while it lives.
struct Counted(watch::Sender<usize>);

impl Counted {
    fn new(count: watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Counted(count)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Turns the reconnecting session's states into the agent's events.
#[derive(Debug, Default)]
struct Report {
    /// The dial in progress, or the one that made the session.
    attempt: u32,
    /// When the current session came up, while it is up.
    connected_at: Option<Instant>,
}

impl Report {
    fn event(&mut self, state: ReconnectState) -> Option<AgentEvent> {
        match state {
            ReconnectState::Connecting { attempt, .. } => {
                self.attempt = attempt;
                Some(AgentEvent::Dialing { attempt })
            }
            ReconnectState::Connected {
                remote, protocol, ..
            } => {
                self.connected_at = Some(Instant::now());
                Some(AgentEvent::Connected {
                    attempt: self.attempt,
                    remote,
                    protocol,
                })
            }
            ReconnectState::Reconnecting {
                retry_in,
                last_error,
                ..
            } => Some(match self.connected_at.take() {
                Some(since) => AgentEvent::Disconnected {
                    reason: close_reason_of(last_error),
                    lived: since.elapsed(),
                    retry_in,
                },
                None => AgentEvent::DialFailed {
                    attempt: self.attempt,
                    error: last_error,
                    retry_in,
                },
            }),
            _ => None,
        }
    }
}

impl AgentEvent {
    fn log(&self) {
        match self {
            AgentEvent::Dialing { attempt } => debug!(attempt, "dialing"),
            AgentEvent::Connected {
                attempt,
                remote,
                protocol,
            } => info!(attempt, %remote, %protocol, "connected"),
            AgentEvent::DialFailed {
                attempt,
                error,
                retry_in,
            } => warn!(attempt, error = %error.report(), retry_in = ?retry_in, "dial failed"),
            AgentEvent::Disconnected {
                reason,
                lived,
                retry_in,
            } => {
                warn!(%reason, lived = ?lived, retry_in = ?retry_in, "session ended; reconnecting")
            }
        }
    }
}
