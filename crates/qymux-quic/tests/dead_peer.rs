//! Dead-peer detection over QUIC: a frozen peer behind a fault proxy is detected within
//! the idle timeout, and an idle but healthy session stays up (keep-alive PINGs).

mod common;

use common::Quic;
use qymux_conformance::dead_peer;
use qymux_testsupport::fault::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_peer_fails_waiting_operations() {
    dead_peer::frozen_peer_fails_waiting_operations::<Quic>(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_peer_fails_both_split_halves() {
    dead_peer::frozen_peer_fails_both_split_halves::<Quic>(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_stays_up() {
    dead_peer::idle_session_stays_up::<Quic>(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_without_keep_alive_ends() {
    dead_peer::idle_without_keep_alive_ends::<Quic>().await;
}
