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

use anyhow::Context;

use crate::cli::Command;

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` with 0 (clap's codes).
    let command = cli::parse(std::env::args().skip(1)).unwrap_or_else(|e| e.exit());
    let root = match workspace_root() {
        Ok(root) => root,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            return ExitCode::FAILURE;
        }
    };
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

/// The workspace root, found when the task runs: the workspace of the current directory,
/// as `cargo locate-project --workspace` reports it.
///
/// Not `env!("CARGO_MANIFEST_DIR")`: that is fixed when xtask is built, and with a target
/// directory shared between checkouts a stale xtask from another (or a deleted) checkout
/// would run against that tree.
fn workspace_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    locate_workspace(&cwd)
}

/// The root of the Cargo workspace that `dir` is in.
fn locate_workspace(dir: &Path) -> anyhow::Result<PathBuf> {
    // `cargo xtask` runs under cargo, which says where it is; `cargo` from PATH otherwise.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .current_dir(dir)
        .output()
        .context("running cargo locate-project")?;
    if !output.status.success() {
        anyhow::bail!(
            "no Cargo workspace at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let manifest = String::from_utf8(output.stdout).context("cargo locate-project output")?;
    let manifest = Path::new(manifest.trim());
    manifest
        .parent()
        .map(Path::to_owned)
        .with_context(|| format!("{} has no parent directory", manifest.display()))
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
        let root = workspace_root().unwrap();
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
        assert!(root.join("xtask/src/main.rs").is_file());
    }

    /// The root is where the task runs, not where xtask was built: another checkout's
    /// workspace is found from a directory inside it.
    #[test]
    fn the_workspace_is_located_at_run_time() {
        let dir = std::env::temp_dir().join(format!("qymux-xtask-locate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("member/src")).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[workspace]\nresolver = \"2\"\nmembers = [\"member\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("member/Cargo.toml"),
            "[package]\nname = \"member\"\nversion = \"0.1.0\"\nedition = \"2024\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("member/src/lib.rs"), "").unwrap();
        let found = locate_workspace(&dir.join("member/src")).map(|root| root.canonicalize());
        let expected = dir.canonicalize().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.unwrap().unwrap(), expected);
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
