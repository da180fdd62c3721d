//! A reverse TCP tunnel on the command line: a public port on the server reaches a TCP
//! service next to the agent, which only dials out.
//!
//! ```text
//! # On the server (reachable): agents connect on 7000, TCP clients on 8080.
//! cargo run --release --example tunnel -- \
//!     server --listen 0.0.0.0:7000 --public 0.0.0.0:8080
//!     fingerprint: 5f1c…   (self-signed; agents use --pin 5f1c…)
//!
//! # Next to the service (behind NAT): forward everything to the local web server.
//! cargo run --release --example tunnel -- \
//!     agent --connect server.example:7000 --pin 5f1c… --forward 127.0.0.1:80
//!
//! curl http://server.example:8080/     # answered by the agent's 127.0.0.1:80
//! ```
//!
//! Any TCP protocol goes through (HTTP, gRPC, iperf3, ssh): bytes are forwarded as they
//! are, half-close included, and a reset on one side resets the other.
//!
//! The **server** hands each public connection to the most recently connected agent
//! whose session is alive; with no agent connected, a connection waits up to
//! `--agent-wait` seconds for one, then is reset. The **agent** redials whenever its
//! session drops, with exponential backoff and full jitter (100 ms doubling to 30 s; a
//! session that lived 10 s resets it), printing each attempt and why it failed; in auto
//! mode a session that fell back to TCP moves to QUIC once QUIC gets through again.
//!
//! Both run until Ctrl-C, which lets the connections in progress finish. Logs go to
//! stderr (default: warnings about connections); more with `RUST_LOG=qymux_forward=debug`.
//!
//! Exit codes: `0` stopped by Ctrl-C, `2` usage error, `3` could not start (bad
//! certificate files, address in use) or stopped on an error.
//!
//! The command line is in `cli.rs`, the two commands in `server.rs` and `agent.rs`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod agent;
mod cli;
mod server;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;
use qymux_forward::{ForwardConfig, ForwardHandle, Stopped};

use crate::cli::{Cli, Command};

const EXIT_OK: u8 = 0;
const EXIT_ERROR: u8 = 3;

/// Keep-alive and dead-peer timeout for tunnel sessions: a dead server is noticed (and
/// redialed) within about 15 s, not the default 30 s.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    // By default: warnings (refused or failed connections), except the tunnel's own,
    // which are printed as events.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,qymux_forward::tunnel=error")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    // Usage errors exit with 2, `--help` with 0 (clap's codes).
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::server(args.into()).await,
            Command::Agent(args) => agent::agent(args.into()).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

pub(crate) fn forward_config(max_connections: usize) -> ForwardConfig {
    let mut config = ForwardConfig::default();
    config.max_connections(Some(max_connections));
    config
}

/// Runs `task` until it stops by itself, or Ctrl-C asks it to shut down gracefully (a
/// second Ctrl-C aborts the connections still in progress).
pub(crate) async fn run_until_ctrl_c(
    task: impl std::future::Future<Output = Stopped> + Send + 'static,
    handle: ForwardHandle,
) -> Stopped {
    let mut task = tokio::spawn(task);
    let mut interrupts = 0;
    loop {
        tokio::select! {
            stopped = &mut task => {
                return stopped.unwrap_or_else(|e| panic!("the tunnel task failed: {e}"));
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts == 1 {
                    eprintln!("shutting down: waiting for connections in progress (Ctrl-C again to reset them)");
                    handle.shutdown();
                } else {
                    handle.abort();
                }
            }
        }
    }
}

pub(crate) fn finish(who: &str, stopped: Stopped) -> anyhow::Result<u8> {
    let s = stopped.stats;
    println!(
        "{who}: stopped ({}): {} connections, {} completed, {} failed, {} refused; \
         {} bytes TCP→tunnel, {} bytes tunnel→TCP",
        stopped.reason,
        s.accepted,
        s.completed,
        s.failed,
        s.refused,
        s.tcp_to_stream_bytes,
        s.stream_to_tcp_bytes
    );
    if stopped.reason.is_requested() {
        Ok(EXIT_OK)
    } else {
        Ok(EXIT_ERROR)
    }
}
