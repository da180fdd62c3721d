//! Runs the built examples: each test starts the example's binary as its own process,
//! with its real command line, output and exit code.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The path of the example `name`, built first (by the cargo that runs the tests, into
/// the same target directory and profile) so that it is never missing or stale: cargo
/// builds examples for `cargo test`, but not for `cargo test --test NAME`. The build
/// selects the whole workspace, as `cargo test --workspace` does, so that features
/// resolve the same way and what that command built is reused.
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
            .args([
                "build",
                "--quiet",
                "-p",
                "qymux-examples",
                "--example",
                name,
            ])
            .arg("--target-dir")
            .arg(target_dir);
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
