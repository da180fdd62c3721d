//! Dead-peer detection over TLS + yamux: a frozen peer behind a fault proxy is detected
//! within the idle timeout, and an idle but healthy session stays up (keep-alive pings).

mod common;

use common::Tcp;
use qymux_conformance::dead_peer;
use qymux_testsupport::fault::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_peer_fails_waiting_operations() {
    dead_peer::frozen_peer_fails_waiting_operations::<Tcp>(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_peer_fails_both_split_halves() {
    dead_peer::frozen_peer_fails_both_split_halves::<Tcp>(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_stays_up() {
    dead_peer::idle_session_stays_up::<Tcp>(Transport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_without_keep_alive_ends() {
    dead_peer::idle_without_keep_alive_ends::<Tcp>().await;
}
