//! 300 reconnecting agents moved by a server's graceful shutdown onto a second server
//! with a small handshake cap: all end up on the second server, over QUIC, and none is
//! left on TCP with QUIC penalised (a QUIC attempt turned away because the server was
//! busy is an answer, not a broken path). Real sockets on loopback, default agent
//! settings (Auto mode, default backoff and clean-close spread).
//!
//! `QYMUX_HERD_AGENTS` sets the number of agents (default 300). The figures (time to
//! move, sessions per transport) are printed with `--nocapture` and recorded in
//! docs/reliability.md; nothing here asserts a time.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use qymux_dialer::{Dialer, Listener, ReconnectConfig, ReconnectState, Reconnecting};
use qymux_transport::{BoxSession, Mode, Options, Protocol, Session};
use support::pki;
use tokio::sync::watch;

/// A hang guard for the whole move, generous for a loaded 2-core machine.
const HERD_GUARD: Duration = Duration::from_secs(180);

async fn herd_guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HERD_GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("hung for {HERD_GUARD:?}: {what}"),
    }
}

/// Accepts and holds every session (a session the application never takes holds a
/// handshake slot; one it drops is closed).
fn hold_sessions(listener: Arc<Listener>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(session) = listener.accept().await {
            held.push(session);
            held.retain(|s: &BoxSession| s.close_reason().is_none());
        }
    })
}

/// Waits until every agent's state satisfies `f`.
async fn all(states: &mut [watch::Receiver<ReconnectState>], f: impl Fn(&ReconnectState) -> bool) {
    join_all(states.iter_mut().map(|s| {
        let f = &f;
        async move {
            s.wait_for(|state| f(state)).await.expect("agent loop gone");
        }
    }))
    .await;
}

fn on(state: &ReconnectState, server: &str) -> Option<Protocol> {
    match state {
        ReconnectState::Connected {
            server: s,
            protocol,
            ..
        } if s == server => Some(*protocol),
        _ => None,
    }
}

/// With the default clean-close spread (1 s): the redials are spread over a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails here: some agents stay on TCP to B, QUIC not penalised, for the whole guard (see docs/reliability.md#moving-a-fleet)"]
async fn agents_moved_by_a_shutdown_onto_a_busy_server_all_end_on_quic_unpenalised() {
    herd(ReconnectConfig::default()).await;
}

/// The worst case: no spread, every agent redials B the instant A's close arrives, so
/// B's 16 slots turn QUIC attempts away (Retry, then CONNECTION_REFUSED) and agents fall
/// back to TCP; QUIC is not penalised, so each moves to QUIC at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fails here: some agents stay on TCP to B, QUIC not penalised, for the whole guard (see docs/reliability.md#moving-a-fleet)"]
async fn a_herd_without_spread_onto_a_busy_server_all_end_on_quic_unpenalised() {
    herd(ReconnectConfig::default().clean_close_spread(Duration::ZERO)).await;
}

async fn herd(config: ReconnectConfig) {
    let agents: usize = std::env::var("QYMUX_HERD_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let pki = pki();
    // A: room for everyone at once (all agents come from 127.0.0.1, one source).
    let mut a_options = Options::default();
    a_options
        .max_pending_handshakes(1024)
        .max_pending_per_source(1024);
    let a = Arc::new(
        Listener::bind("127.0.0.1:0", pki.server.clone(), a_options, Mode::Auto)
            .await
            .unwrap(),
    );
    // B: 16 handshakes at a time, over QUIC and over TCP each.
    let mut b_options = Options::default();
    b_options
        .max_pending_handshakes(16)
        .max_pending_per_source(16);
    let b = Arc::new(
        Listener::bind("127.0.0.1:0", pki.server.clone(), b_options, Mode::Auto)
            .await
            .unwrap(),
    );
    let (a_addr, b_addr) = (a.local_addr().to_string(), b.local_addr().to_string());
    let holding_a = hold_sessions(a.clone());
    let holding_b = hold_sessions(b.clone());

    // Sessions handed out on B, per transport.
    let on_b_quic = Arc::new(AtomicUsize::new(0));
    let on_b_tcp = Arc::new(AtomicUsize::new(0));
    let mut fleet = Vec::with_capacity(agents);
    for _ in 0..agents {
        let primary = Dialer::new(a_addr.clone(), "localhost", pki.client.clone());
        let memory = primary.transport_memory().clone();
        let backup = primary.with_addr(b_addr.clone());
        let (quic, tcp, b_at) = (on_b_quic.clone(), on_b_tcp.clone(), b.local_addr());
        let agent = Reconnecting::start(
            vec![primary, backup],
            config.clone(),
            move |session: BoxSession| {
                if session.remote_addr() == b_at {
                    match session.protocol() {
                        Protocol::Quic => quic.fetch_add(1, Ordering::SeqCst),
                        _ => tcp.fetch_add(1, Ordering::SeqCst),
                    };
                }
                async move {
                    session.closed().await;
                }
            },
        )
        .unwrap();
        fleet.push((agent, memory));
    }
    let mut states: Vec<_> = fleet.iter().map(|(agent, _)| agent.state()).collect();
    herd_guard(
        "every agent connected to A",
        all(&mut states, |s| on(s, &a_addr).is_some()),
    )
    .await;
    let on_a_quic = states
        .iter()
        .filter(|s| on(&s.borrow(), &a_addr) == Some(Protocol::Quic))
        .count();

    // A shuts down gracefully: every agent is told, and moves to B.
    let started = Instant::now();
    let shutting = tokio::spawn({
        let a = a.clone();
        async move {
            a.shutdown(Duration::from_secs(5)).await;
            started.elapsed()
        }
    });
    herd_guard(
        "every agent connected to B",
        all(&mut states, |s| on(s, &b_addr).is_some()),
    )
    .await;
    let all_on_b = started.elapsed();
    let tcp_at_that_moment = states
        .iter()
        .filter(|s| on(&s.borrow(), &b_addr) == Some(Protocol::Tcp))
        .count();
    // None left on TCP with QUIC penalised: B turned QUIC away only while busy.
    let penalised = fleet
        .iter()
        .filter(|(_, memory)| memory.quic_broken_until(b.local_addr()).is_some())
        .count();
    assert_eq!(penalised, 0, "agents with QUIC to B penalised");
    // And so every agent that fell back to TCP moves to QUIC at once.
    let moved = tokio::time::timeout(
        HERD_GUARD,
        all(&mut states, |s| on(s, &b_addr) == Some(Protocol::Quic)),
    )
    .await;
    if moved.is_err() {
        let tcp = states
            .iter()
            .filter(|s| on(&s.borrow(), &b_addr) == Some(Protocol::Tcp))
            .count();
        let other: Vec<String> = states
            .iter()
            .filter(|s| on(&s.borrow(), &b_addr).is_none())
            .map(|s| format!("{:?}", *s.borrow()))
            .take(5)
            .collect();
        let penalised = fleet
            .iter()
            .filter(|(_, memory)| memory.quic_broken_until(b.local_addr()).is_some())
            .count();
        panic!(
            "not all on QUIC to B after {HERD_GUARD:?}: {tcp} on TCP to B, QUIC penalised \
             for {penalised}; not on B: {other:?}"
        );
    }
    let all_on_quic = started.elapsed();
    let shut_down = herd_guard("shutdown of A", shutting).await.unwrap();
    let penalised = fleet
        .iter()
        .filter(|(_, memory)| memory.quic_broken_until(b.local_addr()).is_some())
        .count();
    assert_eq!(penalised, 0);
    println!(
        "herd: {agents} agents ({on_a_quic} on QUIC to A); after A's shutdown all on B in \
         {all_on_b:?} ({tcp_at_that_moment} of them on TCP then), all on QUIC to B in \
         {all_on_quic:?}; sessions handed out on B: {} over QUIC, {} over TCP; \
         QUIC penalised: {penalised}; A's shutdown returned after {shut_down:?}",
        on_b_quic.load(Ordering::SeqCst),
        on_b_tcp.load(Ordering::SeqCst),
    );

    herd_guard(
        "agents shut down",
        join_all(fleet.into_iter().map(|(agent, _)| agent.shutdown())),
    )
    .await;
    holding_a.abort();
    holding_b.abort();
}
