//! The reverse tunnel end to end, in-process, through the `qymux` facade (Auto mode):
//! traffic through the public port, the agent reconnecting after its session is closed
//! and after the server crashed and came back on the same port, and refusals.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, Config, Qymux};
use qymux_forward::tunnel::{
    AgentConfig, AgentEvent, Backoff, ServerConfig, ServerEvent, run_agent, run_server,
};
use qymux_forward::{ForwardHandle, StopReason, Stopped};
use qymux_transport::{CloseReason, Listener, Result, Session};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// A listener that also hands every session it accepts to the test.
struct Recording<L: Listener> {
    inner: L,
    sessions: mpsc::UnboundedSender<L::Session>,
}

impl<L: Listener> Listener for Recording<L> {
    type Session = L::Session;

    async fn accept(&self) -> Result<L::Session> {
        let session = self.inner.accept().await?;
        let _ = self.sessions.send(session.clone());
        Ok(session)
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn close(&self) {
        self.inner.close()
    }
}

struct TestServer {
    agents_addr: SocketAddr,
    public: SocketAddr,
    events: broadcast::Receiver<ServerEvent>,
    sessions: mpsc::UnboundedReceiver<BoxSession>,
    handle: ForwardHandle,
    task: JoinHandle<Stopped>,
}

/// Options for both ends: quick dead-peer detection, so that a lost close is noticed.
fn quick_config() -> Config {
    Config::new()
        .keep_alive(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(3))
}

/// Starts a tunnel server on `agents_addr` (port 0: any) and `public` (port 0: any).
/// Binding a port that was just released is retried for a while.
async fn start_server(
    pki: &Pki,
    agents_addr: &str,
    public: &str,
    config: ServerConfig,
) -> TestServer {
    let qymux = Qymux::new(quick_config().server_tls(ServerTls::new(pki.server.clone())));
    let (listener, public) = guard("binding the server", async {
        loop {
            match (
                qymux.listen(agents_addr).await,
                TcpListener::bind(public).await,
            ) {
                (Ok(l), Ok(p)) => break (l, p),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let (tx, sessions) = mpsc::unbounded_channel();
    let agents_addr = listener.local_addr();
    let public_addr = public.local_addr().unwrap();
    let server = run_server(
        Recording {
            inner: listener,
            sessions: tx,
        },
        public,
        config,
    );
    TestServer {
        agents_addr,
        public: public_addr,
        events: server.subscribe(),
        sessions,
        handle: server.handle(),
        task: tokio::spawn(server),
    }
}

struct TestAgent {
    events: broadcast::Receiver<AgentEvent>,
    handle: ForwardHandle,
    task: JoinHandle<Stopped>,
}

fn start_agent(pki: &Pki, server: SocketAddr, target: SocketAddr) -> TestAgent {
    let qymux = Qymux::new(
        quick_config()
            .server_addr(server.to_string())
            .server_name("localhost")
            .client_tls(ClientTls::with_ca(vec![pki.ca.certificate().clone()])),
    );
    start_agent_on(qymux.dialers().expect("dialers"), target)
}

/// An agent with quick retries, on `servers` (tried in order, round robin).
fn start_agent_on(servers: Vec<qymux::dialer::Dialer>, target: SocketAddr) -> TestAgent {
    let mut config = AgentConfig::new(target);
    config.reconnect.backoff.initial = Duration::from_millis(50);
    config.reconnect.backoff.max = Duration::from_millis(500);
    let agent = run_agent(servers, config);
    TestAgent {
        events: agent.subscribe(),
        handle: agent.handle(),
        task: tokio::spawn(agent),
    }
}

/// Waits (bounded) for the first event that `pick` accepts, returning what it returns.
async fn next_event<E: Clone + std::fmt::Debug, T>(
    events: &mut broadcast::Receiver<E>,
    what: &str,
    mut pick: impl FnMut(&E) -> Option<T>,
) -> T {
    guard(what, async {
        loop {
            let event = events.recv().await.expect("event stream");
            eprintln!("  [{what}] event: {event:?}");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    })
    .await
}

/// A checksummed round trip through the public port.
async fn through_the_tunnel(public: SocketAddr, seed: u64) {
    let tcp = TcpStream::connect(public).await.expect("connect public");
    let data = payload(seed, 2 * 1024 * 1024);
    let got = guard("round trip", round_trip(tcp, &data))
        .await
        .expect("round trip through the tunnel");
    assert_eq!(sha256(&got), sha256(&data));
}

async fn stop(
    what: &str,
    handle: ForwardHandle,
    task: impl Future<Output = std::result::Result<Stopped, tokio::task::JoinError>>,
) -> Stopped {
    handle.shutdown();
    let stopped = guard(what, task).await.expect("task");
    assert!(
        matches!(stopped.reason, StopReason::Shutdown),
        "{what}: {:?}",
        stopped.reason
    );
    stopped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_and_the_agent_reconnects_after_its_session_is_closed() {
    let pki = Pki::new();
    let target = echo_target().await;
    let mut server =
        start_server(&pki, "127.0.0.1:0", "127.0.0.1:0", ServerConfig::default()).await;
    let started = Instant::now();
    let mut agent = start_agent(&pki, server.agents_addr, target);

    next_event(&mut agent.events, "agent connects", |e| {
        matches!(e, AgentEvent::Connected { .. }).then_some(())
    })
    .await;
    let first = next_event(&mut server.events, "server sees the agent", |e| match e {
        ServerEvent::AgentConnected { agent, .. } => Some(agent.clone()),
        _ => None,
    })
    .await;
    eprintln!(
        "agent connected over {} in {:.2?}",
        first.protocol,
        started.elapsed()
    );
    through_the_tunnel(server.public, 1).await;

    // The server closes the agent's session: the agent notices and dials again.
    let session = server.sessions.recv().await.expect("recorded session");
    let cut = Instant::now();
    session.close().await;
    let reason = next_event(&mut agent.events, "agent sees the end", |e| match e {
        AgentEvent::Disconnected { reason, .. } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");
    next_event(&mut agent.events, "agent reconnects", |e| {
        matches!(e, AgentEvent::Connected { attempt: 1, .. }).then_some(())
    })
    .await;
    let second = next_event(
        &mut server.events,
        "server sees the new session",
        |e| match e {
            ServerEvent::AgentConnected { agent, .. } => Some(agent.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(second.id, first.id + 1);
    eprintln!("reconnected in {:.2?}", cut.elapsed());
    through_the_tunnel(server.public, 2).await;

    stats_reach(&server.handle, "server", |s| {
        s.completed == 2 && s.active == 0
    })
    .await;
    stats_reach(&agent.handle, "agent", |s| {
        s.completed == 2 && s.active == 0
    })
    .await;
    stop("agent", agent.handle, agent.task).await;
    let stopped = stop("server", server.handle, server.task).await;
    assert_eq!((stopped.stats.failed, stopped.stats.refused), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_redials_until_a_restarted_server_is_back() {
    let pki = Pki::new();
    let target = echo_target().await;
    let mut server =
        start_server(&pki, "127.0.0.1:0", "127.0.0.1:0", ServerConfig::default()).await;
    let (agents_addr, public) = (server.agents_addr, server.public);
    let mut agent = start_agent(&pki, agents_addr, target);
    next_event(&mut server.events, "server sees the agent", |e| {
        matches!(e, ServerEvent::AgentConnected { .. }).then_some(())
    })
    .await;
    through_the_tunnel(public, 3).await;

    // The server crashes: its task is dropped with the listener and the sessions (and
    // the test lets go of its copy of the session).
    server.task.abort();
    let _ = server.task.await;
    drop(server.sessions);
    let crashed = Instant::now();
    next_event(&mut agent.events, "agent sees the end", |e| {
        matches!(e, AgentEvent::Disconnected { .. }).then_some(())
    })
    .await;
    // While the server is down, dials fail and are retried with backoff.
    let retry_in = next_event(&mut agent.events, "a dial fails", |e| match e {
        AgentEvent::DialFailed { retry_in, .. } => Some(*retry_in),
        _ => None,
    })
    .await;
    assert!(retry_in <= Duration::from_millis(500), "{retry_in:?}");

    // The server comes back on the same ports; the agent finds it.
    let mut server = start_server(
        &pki,
        &agents_addr.to_string(),
        &public.to_string(),
        ServerConfig::default(),
    )
    .await;
    next_event(&mut agent.events, "agent reconnects", |e| {
        matches!(e, AgentEvent::Connected { .. }).then_some(())
    })
    .await;
    next_event(&mut server.events, "new server sees the agent", |e| {
        matches!(e, ServerEvent::AgentConnected { .. }).then_some(())
    })
    .await;
    eprintln!("back after the crash in {:.2?}", crashed.elapsed());
    through_the_tunnel(public, 4).await;

    stop("agent", agent.handle, agent.task).await;
    stop("server", server.handle, server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_agent_public_connections_wait_then_are_reset() {
    let pki = Pki::new();
    let mut config = ServerConfig::default();
    config.agent_wait = Duration::from_millis(300);
    let mut server = start_server(&pki, "127.0.0.1:0", "127.0.0.1:0", config).await;

    // No agent at all: reset after the wait.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.public).await.unwrap();
    let mut buf = Vec::new();
    let read = guard(
        "refusal",
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut buf),
    )
    .await;
    assert_reset("no agent", read);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    stats_reach(&server.handle, "refused", |s| s.refused == 1).await;

    // A connection waiting when the agent arrives goes through.
    let target = echo_target().await;
    let mut config = ServerConfig::default();
    config.agent_wait = Duration::from_secs(30);
    let mut waiting_server = start_server(&pki, "127.0.0.1:0", "127.0.0.1:0", config).await;
    let public = waiting_server.public;
    let early = tokio::spawn(through_the_tunnel(public, 5));
    let agent = start_agent(&pki, waiting_server.agents_addr, target);
    guard("the early connection", early)
        .await
        .expect("went through");
    next_event(&mut waiting_server.events, "agent", |e| {
        matches!(e, ServerEvent::AgentConnected { .. }).then_some(())
    })
    .await;

    stop("agent", agent.handle, agent.task).await;
    stop("server", waiting_server.handle, waiting_server.task).await;
    let _ = server.events.try_recv();
    stop("idle server", server.handle, server.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_dial_configuration_stops_the_agent() {
    let target: SocketAddr = "127.0.0.1:1".parse().unwrap();
    // No server at all.
    let stopped = guard("agent stops", run_agent(vec![], AgentConfig::new(target))).await;
    assert!(
        matches!(
            stopped.reason,
            StopReason::DialFailed(qymux::Error::Config(_))
        ),
        "{:?}",
        stopped.reason
    );
    // A dial that no retry can fix: QUIC only, through a proxy that carries only TCP.
    let qymux = Qymux::new(
        Config::new()
            .mode(qymux::Mode::Quic)
            .server_addr("127.0.0.1:1")
            .server_name("localhost")
            .proxy(qymux::Proxy::parse("socks5://127.0.0.1:2").unwrap())
            .client_tls(ClientTls::with_ca(vec![
                Pki::new().ca.certificate().clone(),
            ])),
    );
    let agent = run_agent(qymux.dialers().unwrap(), AgentConfig::new(target));
    let stopped = guard("agent stops", agent).await;
    assert!(
        matches!(
            stopped.reason,
            StopReason::DialFailed(qymux::Error::Config(_))
        ),
        "{:?}",
        stopped.reason
    );
}

/// Two servers, the first dead (nothing listens on its port): the agent goes on to the
/// second and traffic flows through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_servers_the_first_dead_the_agent_uses_the_second() {
    let pki = Pki::new();
    let target = echo_target().await;
    let mut server =
        start_server(&pki, "127.0.0.1:0", "127.0.0.1:0", ServerConfig::default()).await;
    // A port nothing listens on (bound, then released): dials to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let qymux = Qymux::new(
        quick_config()
            .server_addrs([dead.to_string(), server.agents_addr.to_string()])
            .server_name("localhost")
            .mode(qymux::Mode::Tcp)
            .client_tls(ClientTls::with_ca(vec![pki.ca.certificate().clone()])),
    );
    let mut agent = start_agent_on(qymux.dialers().unwrap(), target);
    let error = next_event(&mut agent.events, "the first server fails", |e| match e {
        AgentEvent::DialFailed {
            attempt: 1, error, ..
        } => Some(error.clone()),
        _ => None,
    })
    .await;
    assert!(error.to_string().contains(&dead.to_string()), "{error}");
    let remote = next_event(&mut agent.events, "the agent connects", |e| match e {
        AgentEvent::Connected { remote, .. } => Some(*remote),
        _ => None,
    })
    .await;
    assert_eq!(remote, server.agents_addr);
    next_event(
        &mut server.events,
        "the second server sees the agent",
        |e| matches!(e, ServerEvent::AgentConnected { .. }).then_some(()),
    )
    .await;
    through_the_tunnel(server.public, 6).await;

    stop("agent", agent.handle, agent.task).await;
    stop("server", server.handle, server.task).await;
}

#[test]
fn backoff_defaults() {
    let b = Backoff::default();
    assert_eq!(b.initial, Duration::from_millis(100));
    assert_eq!(b.max, Duration::from_secs(30));
}
