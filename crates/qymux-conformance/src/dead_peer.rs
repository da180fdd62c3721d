//! Dead-peer detection, through a fault-injecting proxy ([`qymux_testsupport::fault`]).
//!
//! Not part of [`conformance_suite!`](crate::conformance_suite): a backend runs these
//! with the transport its sessions use, TCP or UDP, so the proxy can sit in between:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn frozen_peer_fails_waiting_operations() {
//!     qymux_conformance::dead_peer::frozen_peer_fails_waiting_operations::<Tcp>(Transport::Tcp)
//!         .await;
//! }
//! ```
//!
//! The checks assert what happens, never how fast: the only time limits are hang guards
//! far above the configured bound.

use std::io;
use std::time::Duration;

use qymux_testsupport::fault::{Fault, FaultProxy, Transport};
use qymux_transport::{CloseReason, Error, Listener, Options, Session, TimeoutKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Backend, Pki, SessionOf, echo_all, qymux_error, round_trip};

/// The dead-peer timeout of these checks.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// The keep-alive interval of these checks (a quarter of [`IDLE_TIMEOUT`]).
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);

/// How long an outcome may take before a check calls it a hang: ten times the bound.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// Options with the short [`IDLE_TIMEOUT`] and [`KEEP_ALIVE`] of these checks.
pub fn short_idle_options() -> Options {
    let mut o = crate::options();
    o.idle_timeout(IDLE_TIMEOUT)
        .keep_alive_interval(Some(KEEP_ALIVE));
    o
}

/// A session pair whose traffic runs through a fault proxy.
#[allow(missing_debug_implementations)]
pub struct ProxiedPair<B: Backend> {
    /// The proxy between the two sessions.
    pub proxy: FaultProxy,
    /// The listener (kept alive).
    pub listener: B::Listener,
    /// The dialer's session, connected through the proxy.
    pub client: SessionOf<B>,
    /// The listener's session.
    pub server: SessionOf<B>,
}

/// Listens, puts a `transport` proxy in front of the listener and dials through it, with
/// `options` on both sides.
pub async fn proxied_pair<B: Backend>(transport: Transport, options: Options) -> ProxiedPair<B> {
    let pki = Pki::new();
    let listener = B::listen(pki.server_tls(), options.clone())
        .await
        .expect("listen");
    let proxy = FaultProxy::start(transport, listener.local_addr())
        .await
        .expect("fault proxy");
    let (client, server) = tokio::join!(
        B::dial(proxy.local_addr(), "localhost", pki.client_tls(), options),
        listener.accept()
    );
    ProxiedPair {
        proxy,
        listener,
        client: client.expect("dial through the proxy"),
        server: server.expect("accept through the proxy"),
    }
}

async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: nothing after {HANG_GUARD:?}, ten times the dead-peer bound \
                 (idle timeout {IDLE_TIMEOUT:?})"
            )
        })
}

/// Whether `err` is the dead-peer timeout, reporting the configured bound (not some
/// other bound the backend might have used instead).
fn is_idle_timeout(err: &Error) -> bool {
    matches!(
        err,
        Error::Timeout {
            what: TimeoutKind::Idle,
            after,
        } if *after == IDLE_TIMEOUT
    )
}

#[track_caller]
fn assert_idle_reason(side: &str, reason: &CloseReason) {
    match reason {
        CloseReason::Failed(e) if is_idle_timeout(e) => {}
        other => panic!("{side}: expected a dead-peer timeout, got {other:?}"),
    }
}

#[track_caller]
fn assert_idle_io(what: &str, result: io::Result<()>) {
    match result {
        Err(e) => {
            assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{what}: {e}");
            assert!(
                qymux_error(&e).is_some_and(is_idle_timeout),
                "{what}: expected Error::Timeout {{ what: Idle }}, got {e:?}"
            );
        }
        Ok(()) => panic!("{what}: expected a dead-peer timeout, it succeeded"),
    }
}

/// The peer freezes (the proxy drops everything both ways, connections stay open): within
/// the idle timeout the session fails with `TimeoutKind::Idle`, and so does everything
/// that was waiting on it: a read, a write blocked on a full flow-control window, an open
/// made while the peer was frozen. `closed()` says so, later opens and accepts fail the
/// same way, and the peer's side (which hears nothing either) ends the same way.
pub async fn frozen_peer_fails_waiting_operations<B: Backend>(transport: Transport) {
    let p = proxied_pair::<B>(transport, short_idle_options()).await;
    let mut reading = p.client.open().await.expect("open");
    let _read_peer = p.server.accept().await.expect("accept");
    let mut writing = p.client.open().await.expect("open");
    let _write_peer = p.server.accept().await.expect("accept");

    p.proxy.set(Fault::Drop);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        reading.read_to_end(&mut buf).await.map(drop)
    });
    // Nobody reads on the other side, so this fills the window and then waits for credit.
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            writing.write_all(&chunk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    let client = p.client.clone();
    let opener = tokio::spawn(async move {
        // The open itself may succeed (the peer is not asked); the stream is then dead.
        let mut stream = client.open().await.map_err(io::Error::from)?;
        let mut buf = [0u8; 1];
        stream.read(&mut buf).await.map(drop)
    });

    let reason = guard("the client's session end", p.client.closed()).await;
    assert_idle_reason("client", &reason);
    assert_idle_io(
        "a read waiting on the frozen peer",
        guard("the waiting read", reader)
            .await
            .expect("reader task"),
    );
    assert_idle_io(
        "a write blocked on the frozen peer",
        guard("the blocked write", writer)
            .await
            .expect("writer task"),
    );
    assert_idle_io(
        "an open made while the peer was frozen",
        guard("the open", opener).await.expect("opener task"),
    );
    assert_idle_reason(
        "client close_reason",
        &p.client.close_reason().expect("a close reason"),
    );
    for (what, result) in [
        ("open after the timeout", p.client.open().await.map(drop)),
        (
            "accept after the timeout",
            p.client.accept().await.map(drop),
        ),
    ] {
        match result {
            Err(e) if is_idle_timeout(&e) => {}
            other => panic!("{what}: expected a dead-peer timeout, got {other:?}"),
        }
    }
    let reason = guard("the server's session end", p.server.closed()).await;
    assert_idle_reason("server", &reason);

    let counts = p.proxy.counts();
    assert!(
        counts.dropped_bytes.to_upstream > 0,
        "the frozen peer's traffic went through the proxy: {counts:?}"
    );
}

/// The two halves of one stream split with [`tokio::io::split`], each waiting in its own
/// task (the reader for data, the writer on flow control), when the peer freezes: both
/// fail with `TimeoutKind::Idle` within the idle timeout. Each half is woken, not only
/// the one that waited last.
pub async fn frozen_peer_fails_both_split_halves<B: Backend>(transport: Transport) {
    let p = proxied_pair::<B>(transport, short_idle_options()).await;
    let stream = p.client.open().await.expect("open");
    let _peer = p.server.accept().await.expect("accept");
    p.proxy.set(Fault::Drop);
    let (mut read_half, mut write_half) = tokio::io::split(stream);
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        read_half.read_to_end(&mut buf).await.map(drop)
    });
    let writer = tokio::spawn(async move {
        let chunk = vec![0u8; 64 * 1024];
        loop {
            write_half.write_all(&chunk).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), io::Error>(())
    });
    assert_idle_io(
        "the read half of a split stream",
        guard("the read half", reader).await.expect("reader task"),
    );
    assert_idle_io(
        "the write half of a split stream",
        guard("the write half", writer).await.expect("writer task"),
    );
    assert_idle_reason("client", &p.client.close_reason().expect("a close reason"));
}

/// A session without application traffic, through a healthy path, outlives several idle
/// timeouts: keep-alives cross the proxy both ways, and the session still carries
/// streams afterwards.
pub async fn idle_session_stays_up<B: Backend>(transport: Transport) {
    let p = proxied_pair::<B>(transport, short_idle_options()).await;
    let _echo = echo_all(p.server.clone());
    let before = p.proxy.counts();
    let quiet = IDLE_TIMEOUT * 3;
    tokio::select! {
        reason = p.client.closed() => panic!("the idle client session ended: {reason:?}"),
        reason = p.server.closed() => panic!("the idle server session ended: {reason:?}"),
        () = tokio::time::sleep(quiet) => {}
    }
    let after = p.proxy.counts();
    assert!(
        after.forwarded_bytes.to_upstream > before.forwarded_bytes.to_upstream
            && after.forwarded_bytes.to_client > before.forwarded_bytes.to_client,
        "keep-alive traffic both ways while idle: before {before:?}, after {after:?}"
    );
    assert_eq!(after.dropped_bytes.total(), 0);
    let data = crate::payload(9, 100_000);
    let got = guard(
        "a round trip after the idle time",
        round_trip(&p.client, &data),
    )
    .await;
    assert_eq!(got, data);
    assert!(p.client.close_reason().is_none());
}

/// Without keep-alive on either side, the idle timeout is a plain idle timeout too: a
/// session on which neither side sends anything ends with `TimeoutKind::Idle` (as QUIC
/// defines it). The side whose timer fires second may instead see the first one close
/// the session cleanly, but never a lost connection.
pub async fn idle_without_keep_alive_ends<B: Backend>() {
    let mut options = short_idle_options();
    options.keep_alive_interval(None);
    let p = crate::pair_with::<B>(options.clone(), options).await;
    let client = guard("the client's idle session end", p.client.closed()).await;
    let server = guard("the server's idle session end", p.server.closed()).await;
    let timed_out = |r: &CloseReason| matches!(r, CloseReason::Failed(e) if is_idle_timeout(e));
    assert!(
        timed_out(&client) || timed_out(&server),
        "one side at least must time out: client {client:?}, server {server:?}"
    );
    for (side, reason) in [("client", &client), ("server", &server)] {
        assert!(
            timed_out(reason) || matches!(reason, CloseReason::Peer(_)),
            "{side}: expected a dead-peer timeout or a clean close by the peer, got {reason:?}"
        );
    }
}
