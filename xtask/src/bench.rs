//! `cargo xtask bench`: the qymux-bench crate, built in release mode, with its
//! connect_bench binary (Auto mode's time to session) built next to it.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::cli::BenchArgs;
use crate::coverage::{cargo, run_checked};

pub(crate) fn run(args: &BenchArgs, root: &Path) -> Result<()> {
    // qymux-bench runs target/release/connect_bench, next to itself.
    let mut build = Command::new(cargo());
    build.current_dir(root).args([
        "build",
        "--release",
        "-q",
        "-p",
        "qymux-bench",
        "--bin",
        "connect_bench",
    ]);
    run_checked(build)?;
    let mut command = Command::new(cargo());
    command.current_dir(root).args(bench_command_args(args));
    run_checked(command)
}

/// The arguments of `cargo` that build and run the bench binary with `args`.
pub(crate) fn bench_command_args(args: &BenchArgs) -> Vec<String> {
    let mut out: Vec<String> = ["run", "--release", "-q", "-p", "qymux-bench", "--"]
        .map(str::to_owned)
        .to_vec();
    out.extend(args.args.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command as Task, parse};

    #[test]
    fn flags_reach_the_binary() {
        let args = [
            "bench",
            "--smoke",
            "--only=bulk,rtt",
            "--out",
            "x",
            "--rounds",
            "3",
        ]
        .map(str::to_owned);
        let Ok(Task::Bench(args)) = parse(args) else {
            panic!("not a bench command");
        };
        let line = bench_command_args(&args).join(" ");
        assert_eq!(
            line,
            "run --release -q -p qymux-bench -- --smoke --only bulk,rtt --out x --rounds 3"
        );
        assert!(parse(["bench", "--fast"].map(str::to_owned)).is_err());
    }
}
