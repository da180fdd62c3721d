//! Runs the built examples: each test starts the example's binary as its own process,
//! with its real command line, output and exit code.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

/// Variables cargo sets for a test process (besides `CARGO_PKG_*` and `CARGO_BIN_*`) that a
/// nested cargo must not inherit.
const TEST_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// The path of the example `name`, built first (by the cargo that runs the tests, into
/// the same target directory and profile) so that it is never missing or stale: cargo
/// builds examples for `cargo test`, but not for `cargo test --test NAME`. The build
/// selects the whole workspace (`--workspace --example NAME`), as `cargo test
/// --workspace` does, so that features resolve the same way and what that command built
/// is reused instead of rebuilt with other features.
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    // target/<profile>/deps/<this test>
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("<target>/<profile>");
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--workspace", "--example", name])
            .arg("--target-dir")
            .arg(target_dir);
        // Cargo runs this test with variables that describe the test's own package
        // (CARGO_MANIFEST_DIR, CARGO_PKG_NAME...). Passed on, they would make the build
        // differ from the one `cargo test` made: ring's build script reruns when
        // CARGO_MANIFEST_DIR changes, and every crate above ring is rebuilt (minutes), then
        // rebuilt back by the next `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if TEST_ONLY_VARS.contains(&name.as_ref())
                || name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_BIN_")
            {
                cargo.env_remove(name.as_ref());
            }
        }
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo build");
        assert!(status.success(), "building the {name} example failed");
        built.push(name.to_owned());
    }
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Collects a pipe's lines in the background: all of them, and each one as it comes.
#[allow(dead_code)] // not every test file uses every helper
pub(crate) fn collect(
    pipe: impl Read + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line.clone());
            let _ = tx.send(line);
        }
    });
    (lines, rx)
}
