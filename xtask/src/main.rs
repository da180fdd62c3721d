//! Qymux project tasks, run as `cargo xtask <task>` (see `cargo xtask help`).
//!
//! Kept small on purpose: `qymux-cert`, `anyhow` and `clap` as dependencies. `fuzz`,
//! `soak` and `bench` drive other binaries (cargo-fuzz, the soak and bench binaries of
//! qymux-bench).
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod cert;
mod cli;
mod coverage;
mod fuzz;
mod soak;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::Command;

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` with 0 (clap's codes).
    let command = cli::parse(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    let root = workspace_root();
    let result = match command {
        Command::Help => {
            print!("{}", cli::usage());
            Ok(())
        }
        Command::Cert(args) => cert::run(&args, &root),
        Command::Coverage(args) => coverage::run(&args, &root),
        Command::Fuzz(args) => fuzz::run(&args, &root),
        Command::Soak(args) => soak::run(&args, &root),
        Command::Bench(args) => bench::run(&args, &root),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_owned()
}

/// An error and its causes on one line, leaving out a cause whose text the message
/// before it already includes.
fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn repeated_causes_are_shown_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(qymux_cert::CertError::Io {
            path: "a.pem".into(),
            source: io,
        })
        .context("loading the CA");
        assert_eq!(
            error_chain(&error),
            "loading the CA: I/O error on a.pem: no such file"
        );
    }
}
