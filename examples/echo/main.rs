//! An echo server and client over Qymux, on the command line.
//!
//! ```text
//! cargo run --release --example echo -- server --listen 127.0.0.1:4433 --reverse 3
//!     fingerprint: 5f1c…
//!     listening on 127.0.0.1:4433 (quic, tcp)
//! cargo run --release --example echo -- client --connect 127.0.0.1:4433 --pin 5f1c… \
//!     --streams 8 --bytes 1M
//! ```
//!
//! The **server** echoes every stream a client opens until EOF, then finishes its side.
//! With `--reverse N` it also opens N streams to each client, writes 64 KiB of random
//! bytes on each, finishes them, reads the echo back and checks it byte for byte. Without
//! `--cert`/`--key` it makes a self-signed certificate and prints its SHA-256 fingerprint
//! for the client's `--pin`. It runs until killed.
//!
//! The **client** dials, opens `--streams` streams at once, writes `--bytes` random bytes
//! on each while reading the echo, checks every byte, echoes the streams the server opens,
//! prints `N ok, M failed`, and closes the session.
//!
//! # When the client is done with the server's streams
//!
//! The client must echo the server's `--reverse` streams before it closes the session,
//! but it is not told how many there are. The rule, deterministic and independent of the
//! transport or of packet loss:
//!
//! - the server echoes nothing on the client's streams until the client has echoed at
//!   least one byte on *every* stream the server opened (or 10 s passed, for clients
//!   that do not echo);
//! - the client registers each stream it accepts before it echoes a byte on it.
//!
//! So once all of the client's own streams have been echoed completely, every stream the
//! server opened has been accepted and registered by the client. The client then stops
//! accepting, waits until each registered echo has finished (the server's EOF seen, its
//! own side finished), and closes the session gracefully, which delivers what finished
//! streams sent (QUIC waits for the peer's acknowledgements), so the server reads every
//! echoed byte. This needs `--streams` ≥ 1. Streams a *different* server opens after the
//! client's own streams completed are not waited for.
//!
//! # Exit codes
//!
//! `0` every stream matched; `1` some stream failed or did not match; `2` usage error;
//! `3` could not connect (handshake refused, unreachable, bad certificate files).
//!
//! # Files
//!
//! More than one thing to teach, so more than one file: the command line (`cli.rs`), the
//! server (`server.rs`), the client (`client.rs`) and the checked exchange on a stream
//! (`streams.rs`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod client;
mod server;
mod streams;

use std::process::ExitCode;

use clap::Parser as _;
use qymux::cert::Fingerprint;
use qymux::{PeerIdentity, PeerText};

use crate::cli::{Cli, Command};

const EXIT_OK: u8 = 0;
const EXIT_MISMATCH: u8 = 1;
const EXIT_ERROR: u8 = 3;

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            Command::Client(args) => client::client(args.into()).await,
        }
    });
    ExitCode::from(match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            EXIT_ERROR
        }
    })
}

/// The error and its causes on one line, leaving out a cause whose message the one
/// before already contains (`handshake failed: X` caused by `X`).
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if line.is_empty() {
            line = message;
        } else if !line.contains(&message) {
            line = format!("{line}: {message}");
        }
    }
    line
}

/// A short description of a verified certificate: its subject, how it was verified and
/// its SHA-256 fingerprint. The subject is the peer's text: escaped, so a certificate
/// cannot put control characters on the terminal.
fn describe(identity: &PeerIdentity) -> String {
    let cert = identity.end_entity();
    let fingerprint = Fingerprint::of(cert);
    let how = identity.verification();
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => {
            let subject = parsed.subject().to_string();
            let subject = if subject.is_empty() {
                "(empty subject)".to_owned()
            } else {
                PeerText(&subject).to_string()
            };
            format!("{subject} ({how}, sha256 {fingerprint})")
        }
        Err(_) => format!("sha256 {fingerprint} ({how})"),
    }
}
