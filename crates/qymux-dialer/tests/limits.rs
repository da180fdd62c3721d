//! Listener limits: sessions per listener (QUIC, TCP and the two together) and
//! handshakes in progress, refused with clear errors rather than queued.

mod support;

use std::time::Duration;

use qymux_dialer::{Dialer, Listener};
use qymux_transport::{CloseReason, Error, Limit, Mode, Options, Session};

use support::{guard, listen_and_dialer, pki, round_trip};

fn capped(max_sessions: usize) -> Options {
    let mut o = Options::default();
    o.max_sessions(max_sessions);
    o
}

/// One session fits; the second is closed at once with the cap's reason and never
/// handed out; when the first ends, a new one fits again.
async fn sessions_beyond_the_cap_are_refused(mode: Mode) {
    let pki = pki();
    let listener = Listener::bind("127.0.0.1:0", pki.server.clone(), capped(1), mode)
        .await
        .unwrap();
    let dialer = Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .mode(mode);

    let (first, accepted) = tokio::join!(dialer.dial(), listener.accept());
    let (first, accepted) = (first.unwrap(), accepted.unwrap());
    assert_eq!(listener.session_count(), 1);

    // Over the cap: the handshake completes, then the server closes the session.
    // (The close may even reach the dialer before its handshake has finished.)
    let reason = match guard("second dial", dialer.dial()).await {
        Ok(refused) => {
            let reason = guard("refused session closes", refused.closed()).await;
            assert!(refused.open().await.is_err());
            reason
        }
        Err(Error::ClosedByPeer(text)) => CloseReason::Peer(text),
        Err(e) => panic!("{mode}: the refused dial failed with {e:?}"),
    };
    match (mode, &reason) {
        (Mode::Quic, CloseReason::Peer(Some(text))) => {
            assert_eq!(*text, Error::LimitReached(Limit::Sessions(1)).to_string());
            assert_eq!(text, "limit reached: at most 1 sessions per listener");
        }
        // The yamux wire has no room for a reason: a clean GoAway.
        (Mode::Tcp, CloseReason::Peer(_)) => {}
        _ => panic!("{mode}: unexpected close {reason:?}"),
    }
    assert_eq!(listener.session_count(), 1);

    // The first session is untouched.
    let mut s = accepted.open().await.unwrap();
    let echo = tokio::spawn(support::echo_streams(first.clone()));
    assert_eq!(round_trip(&mut s, b"still here").await, b"still here");
    drop(s);

    // Once it ends, a new session fits, and it is the one accept hands out (the refused
    // one never was).
    first.close().await;
    let _ = guard("server sees the close", accepted.closed()).await;
    echo.abort();
    let (third, next) = tokio::join!(dialer.dial(), listener.accept());
    let (third, next) = (third.unwrap(), next.unwrap());
    assert_eq!(next.remote_addr().port(), third.local_addr().port());
    assert!(third.close_reason().is_none());
    assert_eq!(listener.session_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_sessions_beyond_the_cap_are_refused_with_the_reason() {
    sessions_beyond_the_cap_are_refused(Mode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sessions_beyond_the_cap_are_refused() {
    sessions_beyond_the_cap_are_refused(Mode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auto_listener_caps_quic_and_tcp_together() {
    let pki = pki();
    let listener = Listener::bind("127.0.0.1:0", pki.server.clone(), capped(1), Mode::Auto)
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let quic = Dialer::new(addr.clone(), "localhost", pki.client.clone()).mode(Mode::Quic);
    let tcp = Dialer::new(addr, "localhost", pki.client.clone()).mode(Mode::Tcp);

    let (first, accepted) = tokio::join!(quic.dial(), listener.accept());
    let (first, _accepted) = (first.unwrap(), accepted.unwrap());
    // TCP has a session free on its own, but not the listener as a whole: accept refuses
    // it and keeps waiting.
    let refused = guard("TCP dial", tcp.dial()).await.unwrap();
    let accepting = tokio::spawn(async move {
        let next = listener.accept().await;
        (listener, next)
    });
    let reason = guard("refused TCP session closes", refused.closed()).await;
    assert!(matches!(reason, CloseReason::Peer(_)), "{reason:?}");

    // Room again: the next TCP session is handed out.
    first.close().await;
    let third = guard("third dial", tcp.dial()).await.unwrap();
    let (listener, next) = guard("accept hands out the third", accepting)
        .await
        .unwrap();
    let next = next.unwrap();
    assert_eq!(next.remote_addr().port(), third.local_addr().port());
    assert_eq!(listener.session_count(), 1);
}

/// Connections that never send a ClientHello hold the handshake slots: a dial beyond
/// them is refused at once (not queued behind them), and dials work again when the
/// slots free up.
async fn handshakes_beyond_the_cap_are_refused(mode: Mode) {
    let pki = pki();
    let mut options = Options::default();
    options
        .max_pending_handshakes(2)
        .handshake_timeout(Duration::from_secs(120));
    let listener = Listener::bind("127.0.0.1:0", pki.server.clone(), options, mode)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let silent = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    let dialer = Dialer::new(addr.to_string(), "localhost", pki.client.clone()).mode(Mode::Tcp);
    // The listener accepts connections in order: the silent ones hold both slots.
    let refused = guard("dial beyond the handshake cap", dialer.dial()).await;
    assert!(refused.is_err(), "a third handshake was let in");

    drop(silent);
    let session = guard("dial once the slots are free", async {
        loop {
            // Each failed handshake of a silent connection frees its slot on EOF.
            if let Ok(s) = dialer.dial().await {
                break s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let accepted = guard("accept", listener.accept()).await.unwrap();
    assert_eq!(accepted.remote_addr().port(), session.local_addr().port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_refuses_handshakes_beyond_the_cap() {
    handshakes_beyond_the_cap_are_refused(Mode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_listener_refuses_tcp_handshakes_beyond_the_cap() {
    handshakes_beyond_the_cap_are_refused(Mode::Auto).await;
}

#[test]
fn a_zero_session_cap_is_a_configuration_error() {
    let mut o = Options::default();
    o.max_sessions(0);
    assert!(matches!(o.validate(), Err(Error::Config(m)) if m.contains("max_sessions")));
}

/// A grace beyond what the clock can add (`Duration::MAX`: "no deadline") is accepted:
/// sessions without open streams close at once and the shutdown returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_a_deadline_closes_idle_sessions() {
    let pki = pki();
    let (listener, dialer) = listen_and_dialer(&pki, Mode::Auto).await;
    let (agent, accepted) = tokio::join!(dialer.dial(), listener.accept());
    let (agent, accepted) = (agent.unwrap(), accepted.unwrap());
    guard("shutdown", listener.shutdown(Duration::MAX)).await;
    assert!(matches!(accepted.close_reason(), Some(CloseReason::Local)));
    assert!(
        guard("the agent sees the close", agent.closed())
            .await
            .is_clean()
    );
}
