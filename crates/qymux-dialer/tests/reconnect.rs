//! The reconnecting session: redial with jittered backoff, a callback per session, state
//! on a watch channel, the move back to QUIC, several servers and graceful shutdown.
//! Real sockets on loopback, real TLS, quinn and yamux.

mod support;

use std::sync::Arc;
use std::time::Duration;

use qymux_dialer::{
    Backoff, Dialer, Listener, ReconnectConfig, ReconnectState, Reconnecting, TransportMemory,
};
use qymux_transport::{BoxSession, CloseReason, Error, Mode, Options, Protocol, Session};
use rand::SeedableRng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use support::{
    Blackhole, GUARD, accept_peer_of, echo_streams, guard, listen_and_dialer, pattern, pki,
    round_trip,
};

/// A callback that echoes every stream the server opens and reports each new session.
fn echo_and_report(
    tx: mpsc::UnboundedSender<BoxSession>,
) -> impl FnMut(BoxSession) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    move |session: BoxSession| {
        let _ = tx.send(session.clone());
        Box::pin(echo_streams(session))
    }
}

/// Quick retries so that tests do not wait on the default 100 ms..30 s.
fn quick() -> ReconnectConfig {
    ReconnectConfig::default()
        .backoff(Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(100),
        ))
        .clean_close_spread(Duration::from_millis(10))
}

async fn wait_state(
    state: &mut watch::Receiver<ReconnectState>,
    what: &str,
    f: impl FnMut(&ReconnectState) -> bool,
) -> ReconnectState {
    guard(what, state.wait_for(f))
        .await
        .expect("the reconnecting loop is gone")
        .clone()
}

fn generation(s: &ReconnectState) -> u64 {
    match s {
        ReconnectState::Connected { generation, .. } => *generation,
        _ => 0,
    }
}

// ---------------------------------------------------------------------------------------
// Backoff: properties of the computed delays, not wall-clock timings.

#[test]
fn backoff_delays_spread_uniformly_below_the_ceiling() {
    let backoff = Backoff::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for retry in [0, 3, 6, 12] {
        let ceiling = backoff.ceiling(retry).as_secs_f64();
        let samples: Vec<f64> = (0..20_000)
            .map(|_| backoff.delay_with(retry, &mut rng).as_secs_f64())
            .collect();
        assert!(
            samples.iter().all(|d| *d <= ceiling),
            "retry {retry}: above the ceiling"
        );
        // Uniform on [0, ceiling]: mean ceiling/2, every tenth of the range used about
        // equally (full jitter, not "ceiling minus a little").
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!(
            (mean / ceiling - 0.5).abs() < 0.02,
            "retry {retry}: mean {mean} of ceiling {ceiling}"
        );
        let mut deciles = [0usize; 10];
        for d in &samples {
            deciles[((d / ceiling * 10.0) as usize).min(9)] += 1;
        }
        for (i, n) in deciles.iter().enumerate() {
            let share = *n as f64 / samples.len() as f64;
            assert!(
                (0.08..0.12).contains(&share),
                "retry {retry}: decile {i} has {share}"
            );
        }
    }
}

#[test]
fn a_thousand_agents_do_not_return_in_the_same_second() {
    // A server restart drops 1000 agents at once; each waits a jittered delay. After a
    // few failed redials (retry 5: ceiling 3.2 s) no tenth of a second gets more than
    // a small share of them, and they spread over the whole window.
    let backoff = Backoff::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1000);
    for retry in [0u32, 5, 9] {
        let ceiling = backoff.ceiling(retry);
        let buckets = 32usize;
        let width = ceiling.as_secs_f64() / buckets as f64;
        let mut counts = vec![0usize; buckets];
        for _ in 0..1000 {
            let d = backoff.delay_with(retry, &mut rng).as_secs_f64();
            counts[((d / width) as usize).min(buckets - 1)] += 1;
        }
        let busiest = *counts.iter().max().unwrap();
        assert!(
            busiest < 70,
            "retry {retry}: {busiest} agents in one 1/32 of the window"
        );
        assert!(
            counts.iter().all(|n| *n > 0),
            "retry {retry}: empty slices {counts:?}"
        );
    }
    // Retry 9 is capped at 30 s: at most ~1/30 of the fleet (plus noise) per second.
    let mut per_second = [0usize; 30];
    for _ in 0..1000 {
        let d = backoff.delay_with(9, &mut rng).as_secs() as usize;
        per_second[d.min(29)] += 1;
    }
    assert!(per_second.iter().all(|n| *n < 60), "{per_second:?}");
}

#[test]
fn agents_closed_by_a_server_spread_their_first_redial_over_the_window() {
    // A server that shuts down gracefully closes all its agents at once; their first
    // redials (to the next server) are drawn uniformly over `clean_close_spread`.
    let config = ReconnectConfig::default();
    assert_eq!(config.clean_close_spread, Duration::from_secs(1));
    let spread = config.clean_close_spread.as_secs_f64();
    let mut tenths = [0usize; 10];
    for _ in 0..10_000 {
        let d = config.clean_close_delay().as_secs_f64();
        assert!((0.0..=spread).contains(&d), "{d} outside the window");
        tenths[((d / spread * 10.0) as usize).min(9)] += 1;
    }
    // About 1,000 each: no tenth of the window gets a crowd, none stays empty.
    assert!(tenths.iter().all(|n| (800..1200).contains(n)), "{tenths:?}");
}

// ---------------------------------------------------------------------------------------
// Reconnecting against real listeners.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_closes_and_after_a_restart_on_the_same_port() {
    let pki = pki();
    let listener = Listener::bind(
        "127.0.0.1:0",
        pki.server.clone(),
        Options::default(),
        Mode::Auto,
    )
    .await
    .unwrap();
    let addr = listener.local_addr();
    let dialer = Dialer::new(addr.to_string(), "localhost", pki.client.clone());
    let (tx, mut sessions) = mpsc::unbounded_channel();
    let agent = Reconnecting::start(vec![dialer], quick(), echo_and_report(tx)).unwrap();
    let mut state = agent.state();

    // First session: the callback runs, the state says connected.
    let first = guard("first callback", sessions.recv()).await.unwrap();
    let server1 = guard("first accept", accept_peer_of(&listener, &first)).await;
    let s = wait_state(&mut state, "connected 1", |s| s.is_connected()).await;
    assert_eq!(generation(&s), 1);
    assert_eq!(s.protocol(), Some(Protocol::Quic));
    let mut stream = server1.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, b"one").await, b"one");
    drop(stream);

    // The server closes the session: the agent dials again and the callback runs again.
    server1.close().await;
    assert!(
        guard("agent sees the close", first.closed())
            .await
            .is_clean()
    );
    let second = guard("second callback", sessions.recv()).await.unwrap();
    let server2 = guard("second accept", accept_peer_of(&listener, &second)).await;
    let s = wait_state(&mut state, "connected 2", |s| generation(s) == 2).await;
    assert!(s.is_connected());
    let mut stream = server2.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, b"two").await, b"two");
    drop(stream);

    // The server restarts on the same port. (Its QUIC sessions share the listener's
    // UDP socket: the port is free once they are dropped too.)
    listener.shutdown(Duration::from_secs(5)).await;
    drop((listener, server1, server2));
    let listener = guard("rebinding the same port", async {
        loop {
            match Listener::bind(
                &addr.to_string(),
                pki.server.clone(),
                Options::default(),
                Mode::Auto,
            )
            .await
            {
                Ok(l) => break l,
                // The old endpoint may hold the UDP port until its connections drained.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    let third = guard("third callback", sessions.recv()).await.unwrap();
    let server3 = guard("accept after restart", accept_peer_of(&listener, &third)).await;
    let s = wait_state(&mut state, "connected 3", |s| generation(s) == 3).await;
    assert!(s.is_connected());
    let mut stream = server3.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, b"three").await, b"three");
    drop(stream);

    // The agent's current session is the new one.
    let current = agent.session().expect("a session is up");
    assert_eq!(current.remote_addr().port(), addr.port());
    guard("agent shutdown", agent.shutdown()).await;
    assert!(matches!(
        guard("server sees the agent leave", server3.closed()).await,
        CloseReason::Peer(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_goes_connecting_connected_reconnecting_stopped() {
    let pki = pki();
    let (listener, dialer) = listen_and_dialer(&pki, Mode::Tcp).await;
    // A long backoff keeps the agent in Reconnecting (a draw below a few ms out of an
    // hour is ~1e-6), so the watch cannot skip that state.
    let config = ReconnectConfig::default().backoff(Backoff::new(
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    ));
    let agent = Reconnecting::start(
        vec![dialer],
        config,
        |s| async move { echo_streams(s).await },
    )
    .unwrap();
    let mut state = agent.state();
    assert!(matches!(
        &*state.borrow(),
        ReconnectState::Connecting {
            attempt: 1,
            last_error: None,
            ..
        } | ReconnectState::Connected { .. }
    ));
    let server = guard("accept", listener.accept()).await.unwrap();
    let s = wait_state(&mut state, "connected", |s| s.is_connected()).await;
    match s {
        ReconnectState::Connected {
            server: addr,
            protocol,
            generation,
            ..
        } => {
            assert_eq!(addr, listener.local_addr().to_string());
            assert_eq!(protocol, Protocol::Tcp);
            assert_eq!(generation, 1);
        }
        other => panic!("{other:?}"),
    }
    let session = guard("connected()", agent.connected()).await.unwrap();
    assert_eq!(session.protocol(), Protocol::Tcp);

    server.close().await;
    let s = wait_state(&mut state, "reconnecting", |s| {
        matches!(s, ReconnectState::Reconnecting { .. })
    })
    .await;
    match s {
        ReconnectState::Reconnecting {
            retry,
            retry_in,
            last_error,
        } => {
            assert_eq!(retry, 0, "the first retry after a loss");
            assert!(retry_in <= Duration::from_secs(3600));
            assert!(
                matches!(last_error, Error::ClosedByPeer(_)),
                "{last_error:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        agent.session().is_none(),
        "no session handed out while reconnecting"
    );

    let mut watcher = agent.state();
    guard("shutdown", agent.shutdown()).await;
    let s = wait_state(&mut watcher, "stopped", |s| {
        matches!(s, ReconnectState::Stopped { .. })
    })
    .await;
    assert!(matches!(s, ReconnectState::Stopped { last_error: None }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_configuration_is_refused_up_front() {
    let pki = pki();
    let dialer = Dialer::new("127.0.0.1:9", "localhost", pki.client.clone());
    let bad = ReconnectConfig::default().backoff(Backoff::new(Duration::ZERO, Duration::ZERO));
    assert!(matches!(
        Reconnecting::start(vec![dialer.clone()], bad, |_| async {}),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        Reconnecting::start(vec![], ReconnectConfig::default(), |_| async {}),
        Err(Error::Config(_))
    ));
    // Invalid options cannot be fixed by retrying: the loop stops and says why.
    let mut options = Options::default();
    options.max_streams(0);
    let agent = Reconnecting::start(vec![dialer.options(options)], quick(), |_| async {}).unwrap();
    assert!(matches!(
        guard("stop on a config error", agent.connected()).await,
        Err(Error::Config(m)) if m.contains("max_streams")
    ));
}

/// Over TCP because UDP is blackholed; when a QUIC listener appears on the port, the
/// agent moves to QUIC, and a stream open on TCP during the move finishes byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_to_quic_when_udp_gets_through_and_tcp_streams_finish_first() {
    let pki = pki();
    let mut options = Options::default();
    options.handshake_timeout(Duration::from_secs(2));
    // A TCP-only server whose UDP port is blackholed: take a free UDP port first, then
    // TCP on the same number (another socket may hold the UDP twin of a free TCP port).
    let (tcp, blackhole) = guard("a port free for UDP and TCP", async {
        loop {
            let hole = Blackhole::bind(0);
            let at = format!("127.0.0.1:{}", hole.port());
            if let Ok(tcp) =
                Listener::bind(&at, pki.server.clone(), options.clone(), Mode::Tcp).await
            {
                break (tcp, hole);
            }
        }
    })
    .await;
    let addr = tcp.local_addr();
    // A short penalty, so the background QUIC attempts come quickly.
    let memory = Arc::new(TransportMemory::new(
        Duration::from_millis(200),
        Duration::from_millis(400),
    ));
    let dialer = Dialer::new(addr.to_string(), "localhost", pki.client.clone())
        .options(options.clone())
        .attempt_delay(Duration::from_millis(50))
        .memory(memory.clone());
    let (tx, mut sessions) = mpsc::unbounded_channel();
    let agent = Reconnecting::start(vec![dialer], quick(), echo_and_report(tx)).unwrap();
    let mut state = agent.state();

    let server_tcp = guard("TCP accept", tcp.accept()).await.unwrap();
    assert_eq!(server_tcp.protocol(), Protocol::Tcp);
    let agent_tcp = guard("first callback", sessions.recv()).await.unwrap();
    assert_eq!(agent_tcp.protocol(), Protocol::Tcp);
    assert!(
        memory.quic_broken_until(addr).is_some(),
        "QUIC failure remembered"
    );

    // A stream on the TCP session, half way through its transfer.
    let data = pattern(2 << 20, 3);
    let (head, tail) = data.split_at(data.len() / 2);
    let mut stream = server_tcp.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, head).await, head);

    // Wait until QUIC has been tried into the blackhole at least once, then let UDP
    // through: a QUIC listener takes the port.
    guard("a QUIC attempt into the blackhole", async {
        while blackhole.received() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    blackhole.remove().await;
    let quic = qymux_quic::Listener::bind(addr, pki.server.clone(), options.clone())
        .await
        .unwrap();
    let server_quic = guard("QUIC accept after the upgrade", quic.accept())
        .await
        .unwrap();
    let agent_quic = guard("callback on the QUIC session", sessions.recv())
        .await
        .unwrap();
    assert_eq!(agent_quic.protocol(), Protocol::Quic);
    let s = wait_state(&mut state, "connected over QUIC", |s| {
        s.protocol() == Some(Protocol::Quic)
    })
    .await;
    assert_eq!(generation(&s), 2);
    assert_eq!(agent.session().unwrap().protocol(), Protocol::Quic);
    assert!(
        memory.quic_broken_until(addr).is_none(),
        "QUIC success clears the penalty"
    );

    // The TCP stream is still there and finishes byte-exact.
    assert!(
        agent_tcp.close_reason().is_none(),
        "TCP session kept while a stream is open"
    );
    assert_eq!(round_trip(&mut stream, tail).await, tail);
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(stream);

    // Then the agent closes the TCP session gracefully.
    let reason = guard("old TCP session closed by the agent", server_tcp.closed()).await;
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");

    // The QUIC session works in both directions.
    let mut s = server_quic.open().await.unwrap();
    assert_eq!(round_trip(&mut s, b"over quic").await, b"over quic");
    let mut up = agent_quic.open().await.unwrap();
    up.write_all(b"up").await.unwrap();
    up.shutdown().await.unwrap();
    let mut got = Vec::new();
    let mut accepted = server_quic.accept().await.unwrap();
    accepted.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"up");
    guard("agent shutdown", agent.shutdown()).await;
}

/// A server shuts down gracefully while a stream is in flight: the stream finishes, the
/// agent sees a clean close and moves to the second server.
async fn graceful_shutdown_moves_the_agent_to_the_second_server(mode: Mode) {
    let pki = pki();
    let a = Listener::bind("127.0.0.1:0", pki.server.clone(), Options::default(), mode)
        .await
        .unwrap();
    let b = Listener::bind("127.0.0.1:0", pki.server.clone(), Options::default(), mode)
        .await
        .unwrap();
    let primary =
        Dialer::new(a.local_addr().to_string(), "localhost", pki.client.clone()).mode(mode);
    let backup = primary.with_addr(b.local_addr().to_string());
    let (tx, mut sessions) = mpsc::unbounded_channel();
    let agent = Reconnecting::start(vec![primary, backup], quick(), echo_and_report(tx)).unwrap();
    let mut state = agent.state();

    let on_a = guard("accept on A", a.accept()).await.unwrap();
    let agent_a = guard("callback for A", sessions.recv()).await.unwrap();
    let s = wait_state(&mut state, "connected to A", |s| s.is_connected()).await;
    assert!(
        matches!(&s, ReconnectState::Connected { server, .. } if *server == a.local_addr().to_string())
    );

    let data = pattern(1 << 20, 9);
    let (head, tail) = data.split_at(data.len() / 3);
    let mut stream = on_a.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, head).await, head);

    // Shut A down while the stream is in flight.
    let a = Arc::new(a);
    let shutting = tokio::spawn({
        let a = a.clone();
        async move { a.shutdown(GUARD).await }
    });
    // New sessions are refused at once...
    let late = Dialer::new(a.local_addr().to_string(), "localhost", pki.client.clone())
        .mode(mode)
        .dial()
        .await;
    assert!(
        late.is_err()
            || guard("late session", late.unwrap().closed())
                .await
                .is_clean()
    );
    // ...while the stream in flight finishes byte-exact.
    assert_eq!(round_trip(&mut stream, tail).await, tail);
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // Over TCP the agent got a GoAway: its session may end as soon as its own side of
    // every stream is done (it closes cleanly then), never before.
    assert!(
        agent_a.close_reason().is_none_or(|r| r.is_clean()),
        "cut before the stream finished: {:?}",
        agent_a.close_reason()
    );
    drop(stream);

    guard("shutdown of A", shutting).await.unwrap();
    assert_eq!(a.session_count(), 0);
    let reason = guard("agent sees A close", agent_a.closed()).await;
    assert!(
        matches!(reason, CloseReason::Peer(_)),
        "a clean close, got {reason:?}"
    );

    // The agent moves to B.
    let on_b = guard("accept on B", b.accept()).await.unwrap();
    let _agent_b = guard("callback for B", sessions.recv()).await.unwrap();
    let s = wait_state(&mut state, "connected to B", |s| generation(s) == 2).await;
    assert!(
        matches!(&s, ReconnectState::Connected { server, .. } if *server == b.local_addr().to_string())
    );
    let mut stream = on_b.open().await.unwrap();
    assert_eq!(round_trip(&mut stream, b"on b").await, b"on b");
    drop(stream);
    guard("agent shutdown", agent.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_over_quic_drains_and_the_agent_moves_on() {
    graceful_shutdown_moves_the_agent_to_the_second_server(Mode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_over_tcp_drains_and_the_agent_moves_on() {
    graceful_shutdown_moves_the_agent_to_the_second_server(Mode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams_that_outlive_the_grace_period() {
    let pki = pki();
    let (listener, dialer) = listen_and_dialer(&pki, Mode::Auto).await;
    let (client, server) = tokio::join!(dialer.dial(), listener.accept());
    let (client, server) = (client.unwrap(), server.unwrap());
    let mut stuck = server.open().await.unwrap();
    stuck.write_all(b"x").await.unwrap();
    let _held = client.accept().await.unwrap();
    guard(
        "shutdown with a short grace",
        listener.shutdown(Duration::from_millis(100)),
    )
    .await;
    assert!(matches!(
        guard("client sees the close", client.closed()).await,
        CloseReason::Peer(_)
    ));
    let mut buf = [0u8; 1];
    assert!(
        stuck.read(&mut buf).await.is_err(),
        "a cut stream is an error, not EOF"
    );
}

/// A callback owns its session: when it panics, or returns while the session is still
/// up, nobody serves the session any more. It is closed (the server sees it go), the
/// state stops saying `Connected`, and the agent redials and runs the callback again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_panics_or_returns_gets_its_session_closed_and_redialed() {
    let pki = pki();
    for mode in [Mode::Tcp, Mode::Quic] {
        let (listener, dialer) = listen_and_dialer(&pki, mode).await;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let agent = Reconnecting::start(vec![dialer], quick(), {
            let calls = calls.clone();
            move |session: BoxSession| {
                let call = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    match call {
                        // Dies on the first session, gives up on the second ...
                        0 => panic!("a bug in the application's callback"),
                        1 => drop(session),
                        // ... and serves the third for good.
                        _ => echo_streams(session).await,
                    }
                }
            }
        })
        .unwrap();
        let mut state = agent.state();

        for n in 1..=2u64 {
            let server = guard("accept", listener.accept()).await.unwrap();
            // The server sees the agent close the session nobody serves ...
            let reason = guard("the abandoned session ends", server.closed()).await;
            assert!(
                matches!(reason, CloseReason::Peer(_)),
                "{mode:?} session {n}: the agent closed it cleanly: {reason:?}"
            );
            // ... and the agent goes on to a new one. (The states in between, with the
            // callback's failure as `last_error`, may pass faster than a watch shows.)
            wait_state(&mut state, "the next session", |s| generation(s) > n).await;
        }
        // The third session is served.
        let server = guard("accept", listener.accept()).await.unwrap();
        let mut stream = server.open().await.unwrap();
        assert_eq!(
            round_trip(&mut stream, b"still served").await,
            b"still served"
        );
        let state_now = wait_state(&mut state, "connected", |s| {
            matches!(s, ReconnectState::Connected { .. })
        })
        .await;
        assert_eq!(
            generation(&state_now),
            3,
            "{mode:?}: three sessions handed out"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        guard("shutdown", agent.shutdown()).await;
    }
}
