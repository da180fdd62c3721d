//! `cargo xtask soak`: the soak binary of qymux-bench, built in release mode.

use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::cli::SoakArgs;
use crate::coverage::{cargo, run_checked};

pub(crate) fn run(args: &SoakArgs, root: &Path) -> Result<()> {
    let mut command = Command::new(cargo());
    command.current_dir(root).args(soak_command_args(args));
    run_checked(command)
}

/// The arguments of `cargo` that build and run the soak binary with `args`.
pub(crate) fn soak_command_args(args: &SoakArgs) -> Vec<String> {
    let mut out: Vec<String> = [
        "run",
        "--release",
        "-q",
        "-p",
        "qymux-bench",
        "--bin",
        "soak",
        "--",
    ]
    .map(str::to_owned)
    .to_vec();
    for (flag, value) in &args.flags {
        out.push(flag.clone());
        out.push(value.clone());
    }
    out.extend(args.passthrough.iter().cloned());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_reach_the_binary() {
        let args = SoakArgs {
            flags: vec![
                ("--minutes".into(), "2".into()),
                ("--mode".into(), "tcp".into()),
            ],
            passthrough: vec!["--bytes".into(), "100".into()],
        };
        let line = soak_command_args(&args).join(" ");
        assert!(
            line.ends_with("--bin soak -- --minutes 2 --mode tcp --bytes 100"),
            "{line}"
        );
        assert!(line.starts_with("run --release"));
    }
}
