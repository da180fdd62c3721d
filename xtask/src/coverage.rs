//! `cargo xtask coverage`: line coverage of the workspace tests with cargo-llvm-cov.
//!
//! No rustup component is needed: the LLVM tools come from Debian's `llvm-22`, which
//! matches the LLVM of the Rust toolchain in use (see the design notes).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cli::CoverageArgs;

const LLVM_PACKAGE: &str = "llvm-22";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub(crate) fn run(args: &CoverageArgs, root: &Path) -> Result<()> {
    let cargo = cargo();
    ensure_cargo_llvm_cov(&cargo)?;
    let (llvm_cov, llvm_profdata) = ensure_llvm_tools()?;
    let out_dir = root.join("target").join("coverage");
    let lcov_path = out_dir.join("lcov.info");

    let llvm_cov_cmd = |args: &[&str]| {
        let mut command = Command::new(&cargo);
        command
            .arg("llvm-cov")
            .args(args)
            .current_dir(root)
            .env("LLVM_COV", &llvm_cov)
            .env("LLVM_PROFDATA", &llvm_profdata);
        command
    };

    // Stale profiles from an earlier run would be merged into this one.
    run_checked(llvm_cov_cmd(&["clean", "--workspace"]))?;
    // `--no-fail-fast`: a failing test binary does not keep the others from running.
    // A failure is reported at the end, after the report of what ran.
    let mut test_run = llvm_cov_cmd(&["--workspace", "--no-report", "--no-fail-fast"]);
    test_run.args(test_run_args(args));
    let test_failure = run_checked(test_run).err();
    if let Some(error) = &test_failure {
        eprintln!("warning: {error:#}; writing the report of what ran anyway");
    }

    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out_dir_arg = out_dir.to_string_lossy().into_owned();
    let lcov_arg = lcov_path.to_string_lossy().into_owned();
    let html = ["report", "--html", "--output-dir", &out_dir_arg];
    let lcov = ["report", "--lcov", "--output-path", &lcov_arg];
    let reports = run_checked(llvm_cov_cmd(&html)).and_then(|()| run_checked(llvm_cov_cmd(&lcov)));
    match (reports, test_failure.as_ref()) {
        (Ok(()), _) => {}
        (Err(error), None) => return Err(error),
        (Err(error), Some(_)) => {
            return Err(
                error.context("the instrumented test run failed and left nothing to report")
            );
        }
    }

    let lcov = std::fs::read_to_string(&lcov_path)
        .with_context(|| format!("reading {}", lcov_path.display()))?;
    let summary = summarize(&lcov, root);
    println!();
    println!("Line coverage ({}):", lcov_path.display());
    print!("{}", format_summary(&summary, &workspace_crates(root)));
    println!(
        "HTML report: {}",
        out_dir.join("html").join("index.html").display()
    );

    if args.open {
        // `report --open` writes the HTML again and opens it; on a machine without a
        // browser only the convenience is lost.
        let open = ["report", "--html", "--output-dir", &out_dir_arg, "--open"];
        if let Err(error) = run_checked(llvm_cov_cmd(&open)) {
            eprintln!("warning: could not open the report: {error:#}");
        }
    }
    match test_failure {
        Some(error) => {
            Err(error.context("some tests failed (the report covers the tests that ran)"))
        }
        None => Ok(()),
    }
}

/// The arguments after `cargo llvm-cov --workspace --no-report`: the pass-through
/// arguments, and `--include-ignored` for the test binaries if asked.
pub(crate) fn test_run_args(args: &CoverageArgs) -> Vec<String> {
    let mut out = args.passthrough.clone();
    if args.include_ignored {
        if !out.iter().any(|arg| arg == "--") {
            out.push("--".to_owned());
        }
        out.push("--include-ignored".to_owned());
    }
    out
}

/// The cargo that runs us (`cargo xtask` sets `CARGO`), or the one on `PATH`.
pub(crate) fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn ensure_cargo_llvm_cov(cargo: &OsString) -> Result<()> {
    if succeeds(Command::new(cargo).args(["llvm-cov", "--version"])) {
        return Ok(());
    }
    eprintln!("cargo-llvm-cov is missing: installing it with cargo install");
    let mut install = Command::new(cargo);
    install.args(["install", "cargo-llvm-cov", "--locked"]);
    run_checked(install).context("installing cargo-llvm-cov")?;
    if !succeeds(Command::new(cargo).args(["llvm-cov", "--version"])) {
        bail!(
            "cargo-llvm-cov was installed but `cargo llvm-cov --version` still fails (is ~/.cargo/bin on PATH?)"
        );
    }
    Ok(())
}

/// Finds llvm-cov and llvm-profdata: `LLVM_COV` and `LLVM_PROFDATA` if both are set,
/// otherwise Debian's `llvm-22`, installed with apt-get if missing.
fn ensure_llvm_tools() -> Result<(PathBuf, PathBuf)> {
    if let (Some(cov), Some(profdata)) = (
        std::env::var_os("LLVM_COV"),
        std::env::var_os("LLVM_PROFDATA"),
    ) {
        return Ok((cov.into(), profdata.into()));
    }
    let cov = Path::new(LLVM_BIN).join("llvm-cov");
    let profdata = Path::new(LLVM_BIN).join("llvm-profdata");
    if !cov.exists() || !profdata.exists() {
        eprintln!(
            "{} is missing: installing the Debian package {LLVM_PACKAGE}",
            cov.display()
        );
        let install = || {
            let mut command = Command::new("apt-get");
            command
                .args(["install", "-y", LLVM_PACKAGE])
                .env("DEBIAN_FRONTEND", "noninteractive");
            run_checked(command)
        };
        if install().is_err() {
            eprintln!("apt-get install failed: updating the package lists and trying again");
            let mut update = Command::new("apt-get");
            update.arg("update");
            run_checked(update).context("apt-get update")?;
            install().with_context(|| {
                format!("installing {LLVM_PACKAGE} (needs root; or set LLVM_COV and LLVM_PROFDATA)")
            })?;
        }
        if !cov.exists() || !profdata.exists() {
            bail!(
                "{LLVM_PACKAGE} is installed but {} or {} is missing",
                cov.display(),
                profdata.display()
            );
        }
    }
    Ok((cov, profdata))
}

pub(crate) fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub(crate) fn run_checked(mut command: Command) -> Result<()> {
    let shown = describe(&command);
    eprintln!("$ {shown}");
    let status = command
        .status()
        .with_context(|| format!("starting `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lines found and lines hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lines {
    pub(crate) covered: u64,
    pub(crate) total: u64,
}

impl Lines {
    fn add(&mut self, other: Lines) {
        self.covered += other.covered;
        self.total += other.total;
    }
}

/// Sums the line coverage of an lcov file per workspace crate: files under
/// `crates/<name>/` count for `<name>`, files under `xtask/` for `xtask`; any other file
/// is left out.
pub(crate) fn summarize(lcov: &str, root: &Path) -> BTreeMap<String, Lines> {
    let mut summary: BTreeMap<String, Lines> = BTreeMap::new();
    let mut group: Option<String> = None;
    // Line number -> hit, for the current record (a line listed twice counts once).
    let mut lines: BTreeMap<u64, bool> = BTreeMap::new();
    let mut flush = |group: &mut Option<String>, lines: &mut BTreeMap<u64, bool>| {
        if let Some(name) = group.take() {
            let covered = lines.values().filter(|hit| **hit).count() as u64;
            summary.entry(name).or_default().add(Lines {
                covered,
                total: lines.len() as u64,
            });
        }
        lines.clear();
    };
    for line in lcov.lines() {
        let line = line.trim_end();
        if let Some(path) = line.strip_prefix("SF:") {
            flush(&mut group, &mut lines);
            group = crate_of(Path::new(path), root);
        } else if let Some(data) = line.strip_prefix("DA:") {
            let mut fields = data.split(',');
            let number = fields.next().and_then(|n| n.parse::<u64>().ok());
            let count = fields.next().and_then(|c| c.trim().parse::<u64>().ok());
            if let (Some(number), Some(count)) = (number, count) {
                *lines.entry(number).or_default() |= count > 0;
            }
        } else if line == "end_of_record" {
            flush(&mut group, &mut lines);
        }
    }
    flush(&mut group, &mut lines);
    summary
}

/// The workspace crate a source file belongs to.
pub(crate) fn crate_of(path: &Path, root: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).unwrap_or(path);
    if relative.is_absolute() {
        // Outside the workspace (a dependency's source, say).
        return None;
    }
    let mut parts = relative.components().filter_map(|part| match part {
        Component::Normal(name) => Some(name.to_string_lossy()),
        _ => None,
    });
    match (parts.next()?.as_ref(), parts.next()) {
        ("crates", Some(name)) if parts.next().is_some() => Some(name.into_owned()),
        ("xtask", Some(_)) => Some("xtask".to_owned()),
        _ => None,
    }
}

/// The crates of the workspace (`crates/*` with a Cargo.toml, and xtask).
fn workspace_crates(root: &Path) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = std::fs::read_dir(root.join("crates"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().join("Cargo.toml").is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.insert("xtask".to_owned());
    names
}

/// One line per crate (`name  covered / total  percent`), then the total. Crates
/// that the lcov file does not mention are listed as having no data.
pub(crate) fn format_summary(
    summary: &BTreeMap<String, Lines>,
    crates: &BTreeSet<String>,
) -> String {
    let names: BTreeSet<&str> = summary
        .keys()
        .map(String::as_str)
        .chain(crates.iter().map(String::as_str))
        .collect();
    let width = names
        .iter()
        .map(|name| name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut total = Lines::default();
    let mut out = String::new();
    for name in names {
        match summary.get(name) {
            Some(lines) => {
                total.add(*lines);
                let _ = writeln!(out, "  {name:<width$}  {}", format_lines(*lines));
            }
            None => {
                let _ = writeln!(out, "  {name:<width$}  no coverage data");
            }
        }
    }
    let _ = writeln!(out, "  {:<width$}  {}", "total", format_lines(total));
    out
}

fn format_lines(lines: Lines) -> String {
    let percent = if lines.total == 0 {
        "     -".to_owned()
    } else {
        format!("{:5.1}%", lines.covered as f64 * 100.0 / lines.total as f64)
    };
    format!("{:>6} / {:>6} lines  {percent}", lines.covered, lines.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LCOV: &str = "\
SF:/repo/crates/qymux-cert/src/lib.rs
FN:3,foo
DA:1,5
DA:2,0
DA:3,1
LF:3
LH:2
end_of_record
SF:/repo/crates/qymux-cert/src/pem.rs
DA:10,0
DA:11,2
DA:11,0
end_of_record
SF:/repo/crates/qymux-tls/src/lib.rs
DA:1,0
DA:2,0
end_of_record
SF:/repo/xtask/src/main.rs
DA:1,1
end_of_record
SF:/home/u/.cargo/registry/src/x/ring-0.17/src/lib.rs
DA:1,1
end_of_record
SF:/repo/Cargo.toml
DA:1,1
end_of_record
";

    #[test]
    fn files_are_grouped_by_crate() {
        let root = Path::new("/repo");
        assert_eq!(
            crate_of(Path::new("/repo/crates/qymux-cert/src/lib.rs"), root).as_deref(),
            Some("qymux-cert")
        );
        assert_eq!(
            crate_of(Path::new("/repo/crates/qymux/tests/t.rs"), root).as_deref(),
            Some("qymux")
        );
        assert_eq!(
            crate_of(Path::new("crates/qymux-tcp/src/lib.rs"), root).as_deref(),
            Some("qymux-tcp")
        );
        assert_eq!(
            crate_of(Path::new("/repo/xtask/src/cli.rs"), root).as_deref(),
            Some("xtask")
        );
        assert_eq!(crate_of(Path::new("/repo/crates/README.md"), root), None);
        assert_eq!(crate_of(Path::new("/repo/src/main.rs"), root), None);
        assert_eq!(
            crate_of(Path::new("/elsewhere/crates/qymux/src/lib.rs"), root),
            None
        );
    }

    #[test]
    fn lcov_is_summed_per_crate() {
        let summary = summarize(LCOV, Path::new("/repo"));
        assert_eq!(
            summary,
            BTreeMap::from([
                (
                    "qymux-cert".to_owned(),
                    Lines {
                        covered: 3,
                        total: 5
                    }
                ),
                (
                    "qymux-tls".to_owned(),
                    Lines {
                        covered: 0,
                        total: 2
                    }
                ),
                (
                    "xtask".to_owned(),
                    Lines {
                        covered: 1,
                        total: 1
                    }
                ),
            ])
        );
    }

    #[test]
    fn a_missing_end_of_record_still_counts() {
        let summary = summarize(
            "SF:/repo/xtask/src/a.rs\nDA:1,0\nDA:2,3\nDA:bad\n",
            Path::new("/repo"),
        );
        assert_eq!(
            summary["xtask"],
            Lines {
                covered: 1,
                total: 2
            }
        );
        assert!(summarize("", Path::new("/repo")).is_empty());
    }

    #[test]
    fn summary_lists_every_crate_and_a_total() {
        let summary = summarize(LCOV, Path::new("/repo"));
        let crates = BTreeSet::from([
            "qymux-cert".to_owned(),
            "qymux-quic".to_owned(),
            "xtask".to_owned(),
        ]);
        let text = format_summary(&summary, &crates);
        let lines: Vec<String> = text
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                "qymux-cert 3 / 5 lines 60.0%",
                "qymux-quic no coverage data",
                "qymux-tls 0 / 2 lines 0.0%",
                "xtask 1 / 1 lines 100.0%",
                "total 4 / 8 lines 50.0%",
            ],
            "{text}"
        );
        // Columns line up.
        let columns: Vec<usize> = text.lines().filter_map(|line| line.find('/')).collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{text}");
        let empty = format_summary(&BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            empty.split_whitespace().collect::<Vec<_>>(),
            ["total", "0", "/", "0", "lines", "-"]
        );
    }

    #[test]
    fn include_ignored_goes_to_the_test_binaries() {
        let args = |passthrough: &[&str], include_ignored| CoverageArgs {
            include_ignored,
            passthrough: passthrough.iter().map(|s| s.to_string()).collect(),
            ..CoverageArgs::default()
        };
        assert!(test_run_args(&args(&[], false)).is_empty());
        assert_eq!(test_run_args(&args(&[], true)), ["--", "--include-ignored"]);
        assert_eq!(
            test_run_args(&args(&["--exclude", "x", "--", "--nocapture"], true)),
            ["--exclude", "x", "--", "--nocapture", "--include-ignored"]
        );
    }
}
