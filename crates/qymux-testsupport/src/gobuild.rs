//! Finding Go and building the Go programs in `interop/` (`go-peer`, `go-bench`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::missing_peer;

/// GOPATH of Debian's Go packages; hashicorp yamux lives below it.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";
/// Where Debian's `golang-go` puts `go` when it is not on PATH.
const DEBIAN_GO: &str = "/usr/lib/go/bin/go";
/// Names the `go` binary to use instead of searching for one.
const GO_VAR: &str = "QYMUX_GO";

/// Why a Go program from `interop/` could not be built ([`build_go_program`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum GoBuildError {
    /// Go or hashicorp yamux is not installed: skip, unless peers are required.
    Missing(String),
    /// They are installed, but building failed: always a test failure.
    BuildFailed(String),
}

impl std::fmt::Display for GoBuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(why) | Self::BuildFailed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for GoBuildError {}

static GO_PEER: OnceLock<Result<PathBuf, GoBuildError>> = OnceLock::new();

/// The go-peer binary (Go `crypto/tls` + hashicorp yamux), built once per process.
///
/// Returns `None` after printing a `SKIP: <why>; set QYMUX_REQUIRE_PEERS=1 to make this
/// fail` line to stderr when Go (`$QYMUX_GO` if set, else `go` on PATH, else
/// `/usr/lib/go/bin/go`) or hashicorp yamux
/// (`/usr/share/gocode/src/github.com/hashicorp/yamux`) is missing; panics with that
/// reason instead if [`peers_required`](crate::peers_required). Panics in any case when
/// both are installed but the build fails. Use it as
/// `let Some(bin) = go_peer() else { return };`.
///
/// The binary is `target/go-peer/go-peer` in the workspace. Each test process runs
/// `go build` once (Go's build cache makes repeats cheap) into a temporary name and renames
/// it into place, so test processes running in parallel never see a half-written binary.
/// `GOCACHE` defaults to `target/go-peer/gocache` when it is not set.
#[track_caller]
pub fn go_peer() -> Option<PathBuf> {
    match GO_PEER.get_or_init(|| build_go_program("go-peer")) {
        Ok(bin) => Some(bin.clone()),
        Err(GoBuildError::Missing(why)) => {
            missing_peer(why);
            None
        }
        Err(GoBuildError::BuildFailed(why)) => panic!("{why}"),
    }
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `$QYMUX_GO` if set, else `go` on PATH, else Debian's `/usr/lib/go/bin/go`.
fn find_go() -> Option<PathBuf> {
    if let Some(go) = env::var_os(GO_VAR).filter(|v| !v.is_empty()) {
        let go = PathBuf::from(go);
        return is_executable(&go).then_some(go);
    }
    let on_path = env::var_os("PATH").and_then(|paths| {
        env::split_paths(&paths)
            .map(|dir| dir.join("go"))
            .find(|candidate| is_executable(candidate))
    });
    on_path.or_else(|| {
        let debian = PathBuf::from(DEBIAN_GO);
        is_executable(&debian).then_some(debian)
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Builds the Go program in `interop/<name>` (GOPATH mode, Debian's hashicorp yamux) into
/// `target/go-peer/<name>` and returns its path. Finds Go as [`go_peer`] does; every call
/// runs `go build` (its cache makes repeats cheap) into a temporary name and renames it
/// into place.
pub fn build_go_program(name: &str) -> Result<PathBuf, GoBuildError> {
    let Some(go) = find_go() else {
        return Err(GoBuildError::Missing(format!(
            "{name} needs Go: no `go` on PATH and no {DEBIAN_GO}, or ${GO_VAR} is not an executable (Debian: apt-get install golang-go)"
        )));
    };
    let yamux = Path::new(DEBIAN_GOPATH).join("src/github.com/hashicorp/yamux");
    if !yamux.is_dir() {
        return Err(GoBuildError::Missing(format!(
            "{name} needs hashicorp yamux at {} (Debian: apt-get install golang-github-hashicorp-yamux-dev)",
            yamux.display()
        )));
    }

    let root = workspace_root();
    let out_dir = root.join("target/go-peer");
    std::fs::create_dir_all(&out_dir).map_err(|err| {
        GoBuildError::BuildFailed(format!("creating {}: {err}", out_dir.display()))
    })?;
    let bin = out_dir.join(name);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = out_dir.join(format!("{name}.tmp.{}.{nanos}", std::process::id()));

    let mut cmd = Command::new(&go);
    cmd.current_dir(&root)
        .arg("build")
        .arg("-o")
        .arg(&tmp)
        .arg(format!("./interop/{name}"))
        .env("GO111MODULE", "off")
        .env("GOPATH", DEBIAN_GOPATH)
        // Module flags (say -mod=vendor) make no sense in GOPATH mode.
        .env_remove("GOFLAGS")
        // A static binary, and no C compiler needed.
        .env("CGO_ENABLED", "0");
    if env::var_os("GOCACHE").is_none_or(|v| v.is_empty()) {
        cmd.env("GOCACHE", out_dir.join("gocache"));
    }
    let output = cmd
        .output()
        .map_err(|err| GoBuildError::BuildFailed(format!("running {}: {err}", go.display())))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(GoBuildError::BuildFailed(format!(
            "building interop/{name} with {} failed ({}):\n{}{}",
            go.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        )));
    }
    std::fs::rename(&tmp, &bin).map_err(|err| {
        let _ = std::fs::remove_file(&tmp);
        GoBuildError::BuildFailed(format!(
            "renaming {} to {}: {err}",
            tmp.display(),
            bin.display()
        ))
    })?;
    Ok(bin)
}
