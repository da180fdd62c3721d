//! Test support for Qymux: independent peers from outside the project, for interop tests,
//! real proxy servers (tinyproxy, microsocks: [`proxies`]) for agents behind proxies,
//! and a fault-injecting loopback proxy ([`fault`]: pass, delay, drop, blackhole, cut) for
//! tests of dead peers, reconnects and shutdown.
//!
//! Qymux must speak the wire format of the Go Qymux: TLS over TCP with ALPN `qymux`, then
//! hashicorp yamux. The honest way to test that is against Go itself. This crate builds
//! `interop/go-peer` (Go `crypto/tls` + hashicorp yamux, built from Debian's
//! `golang-go` and `golang-github-hashicorp-yamux-dev` in GOPATH mode) and drives it as a
//! child process.
//!
//! # Skipping, or failing, when a peer is missing
//!
//! A developer without Go still wants `cargo test` to pass, so a test whose peer is missing
//! prints a `SKIP:` line and returns. CI sets `QYMUX_REQUIRE_PEERS=1`, and then a missing
//! peer fails the test instead ([`peers_required`]):
//!
//! ```no_run
//! # async fn example() {
//! use qymux_testsupport::{GoCounts, GoPeer, go_peer};
//!
//! let Some(bin) = go_peer() else { return };
//! let (mut server, addr) = GoPeer::server(&bin, ["--cert", "server.pem", "--key", "server.key"])
//!     .await
//!     .expect("go-peer server starts");
//! let out = GoPeer::client(&bin, [
//!     "--connect", &addr.to_string(), "--ca", "ca.pem", "--streams", "4", "--bytes", "1048576",
//! ])
//! .await
//! .expect("go-peer client runs");
//! assert!(out.status.success(), "{out}");
//! assert_eq!(out.result(), Some(GoCounts { ok: 4, failed: 0, reverse: 0 }));
//! # let _ = server.next_line().await;
//! # }
//! ```
//!
//! # The go-peer command line
//!
//! [`GoPeer::server`] and [`GoPeer::client`] add the mode (`server`, `client`) themselves;
//! the arguments are the flags:
//!
//! - both: `--cert PEM --key PEM` (our certificate), `--ca PEM` (client: the CA that
//!   verifies the server, required; server: if given, client certificates are required
//!   and verified by it), `--alpn NAME` (default `qymux`; `--alpn=` offers none),
//!   `--stall-timeout 10s` (a stream whose echo stops that long fails).
//! - server: `--listen 127.0.0.1:0`, `--open N --bytes B` (open N streams to each client).
//!   Prints `LISTENING <addr>`, then per session `REVERSE ok=<n> failed=<m>` (when its N
//!   streams are done) and `SESSION-END <reason>`; a failed TLS handshake prints
//!   `HANDSHAKE-ERROR <err>`. It exits when its stdin closes.
//! - client: `--connect ADDR --streams N --bytes B [--expect-reverse K]
//!   [--server-name localhost] [--timeout 60s]`. Prints `RESULT ok=<n> failed=<m>
//!   reverse=<k>`; exits 0 on success, 1 on failure (`ERROR <what>: <err>`), 2 on a TLS
//!   handshake failure (`ERROR handshake: <err>`).
//!
//! Both sides echo every stream the other side opens (until EOF, then FIN). A stream a
//! go-peer opens carries B bytes in one single `Write`, then FIN, and the peer must echo
//! it all back and close its side too. The bytes are splitmix64 seeded with the yamux
//! stream id, each output little-endian. Stream failures appear on stderr as
//! `STREAM-ERROR <id> <err>` ([`GoPeer::stderr`], [`GoClientOutput::stderr`]).

#![deny(missing_docs)]

mod aioquic;
pub mod fault;
mod gobuild;
mod process;
pub mod proxies;
mod tempdir;

pub use aioquic::{AioquicPeer, PYTHON_VAR, aioquic_peer};
pub use fault::{Fault, FaultProxy};
pub use gobuild::{GoBuildError, build_go_program, go_peer};
pub use process::{GoClientOutput, GoCounts, GoPeer};
pub use proxies::{ProxyServer, microsocks, tinyproxy};
pub use tempdir::TempDir;

/// The environment variable that turns a missing outside peer from a skip into a failure.
pub const REQUIRE_PEERS_VAR: &str = "QYMUX_REQUIRE_PEERS";

/// Whether tests must fail instead of skipping when an outside peer is missing
/// (`QYMUX_REQUIRE_PEERS=1`).
///
/// Any value other than empty, `0`, `false` or `no` counts as set.
pub fn peers_required() -> bool {
    flag_is_set(std::env::var(REQUIRE_PEERS_VAR).ok().as_deref())
}

fn flag_is_set(value: Option<&str>) -> bool {
    match value {
        None => false,
        Some(v) => !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no"
        ),
    }
}

/// Reports that an outside peer is missing: panics with `why` if [`peers_required`],
/// otherwise prints `SKIP: <why>; set QYMUX_REQUIRE_PEERS=1 to make this fail` to stderr.
///
/// For peers other than go-peer; [`go_peer`] calls it itself. Use it as
/// `if !found { missing_peer("…"); return; }`.
#[track_caller]
pub fn missing_peer(why: &str) {
    if peers_required() {
        panic!("{why} (and {REQUIRE_PEERS_VAR} is set, so this fails instead of skipping)");
    }
    eprintln!("SKIP: {why}; set {REQUIRE_PEERS_VAR}=1 to make this fail");
}

#[cfg(test)]
mod tests {
    use super::flag_is_set;

    #[test]
    fn require_peers_flag_values() {
        assert!(!flag_is_set(None));
        for off in ["", "0", "false", "FALSE", "no", " 0 "] {
            assert!(!flag_is_set(Some(off)), "{off:?}");
        }
        for on in ["1", "true", "yes", "on"] {
            assert!(flag_is_set(Some(on)), "{on:?}");
        }
    }
}
