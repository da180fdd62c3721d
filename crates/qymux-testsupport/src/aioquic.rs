//! The aioquic peer: an independent QUIC stack (Python, PyPI `aioquic`) for interop tests
//! of the QUIC backend.
//!
//! See [`AioquicPeer`].

use std::env;
use std::ffi::{OsStr, OsString};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{GoClientOutput, GoPeer, missing_peer};

/// Names the Python interpreter to use instead of `python3` on PATH.
pub const PYTHON_VAR: &str = "QYMUX_PYTHON";

/// The script, relative to the workspace root.
const SCRIPT: &str = "interop/aioquic-peer/peer.py";

static AIOQUIC: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The aioquic peer script (`interop/aioquic-peer/peer.py`), after checking once per
/// process that its Python can `import aioquic`.
///
/// Returns `None` after printing a `SKIP: <why>; set QYMUX_REQUIRE_PEERS=1 to make this
/// fail` line to stderr when Python (`$QYMUX_PYTHON` if set, else `python3` on PATH) is
/// missing or has no aioquic (`python3 -m pip install aioquic`); panics with that reason
/// instead if [`peers_required`](crate::peers_required). Use it as
/// `let Some(script) = aioquic_peer() else { return };`, then [`AioquicPeer`].
#[track_caller]
pub fn aioquic_peer() -> Option<PathBuf> {
    match AIOQUIC.get_or_init(find) {
        Ok(script) => Some(script.clone()),
        Err(why) => {
            missing_peer(why);
            None
        }
    }
}

/// `$QYMUX_PYTHON` if set, else `python3` (looked up on PATH when run).
fn python() -> OsString {
    env::var_os(PYTHON_VAR)
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from("python3"))
}

fn find() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().unwrap_or(root);
    let script = root.join(SCRIPT);
    if !script.is_file() {
        // Part of the repository: its absence is a broken checkout, not a missing peer.
        panic!("the aioquic peer script {} is missing", script.display());
    }
    let python = python();
    let shown = python.to_string_lossy().into_owned();
    let output = Command::new(&python)
        .args(["-c", "import aioquic; print(aioquic.__version__)"])
        .output()
        .map_err(|err| {
            format!("aioquic-peer needs Python 3 ({shown}: {err}; or set ${PYTHON_VAR})")
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        // The last line of a traceback says what went wrong.
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "aioquic-peer needs the aioquic package in {shown} ({shown} -m pip install aioquic): {}",
            why.unwrap_or("import failed").trim()
        ));
    }
    Ok(script)
}

/// Runs the aioquic peer: [`AioquicPeer::server`] and [`AioquicPeer::client`] mirror
/// [`GoPeer::server`] and [`GoPeer::client`], with the script from [`aioquic_peer`] in
/// place of the go-peer binary.
///
/// `interop/aioquic-peer/peer.py` speaks Qymux's QUIC wire format (QUIC v1, ALPN `qymux`,
/// one Qymux stream per bidirectional QUIC stream, no framing of its own) and follows
/// go-peer's command-line contract, so the same [`GoPeer`] handle drives it:
///
/// ```no_run
/// # async fn example() {
/// use qymux_testsupport::{AioquicPeer, GoCounts, aioquic_peer};
///
/// let Some(script) = aioquic_peer() else { return };
/// let (mut server, addr) = AioquicPeer::server(&script, [
///     "--listen", "127.0.0.1:0", "--cert", "server.pem", "--key", "server.key",
/// ])
/// .await
/// .expect("aioquic-peer server starts");
/// let out = AioquicPeer::client(&script, [
///     "--connect", &addr.to_string(), "--ca", "ca.pem", "--streams", "4", "--bytes", "1048576",
/// ])
/// .await
/// .expect("aioquic-peer client runs");
/// assert!(out.status.success(), "{out}");
/// assert_eq!(out.result(), Some(GoCounts { ok: 4, failed: 0, reverse: 0 }));
/// # let _ = server.next_line().await;
/// # }
/// ```
///
/// # The aioquic-peer command line
///
/// As [go-peer's](crate#the-go-peer-command-line), with these differences:
///
/// - The server cannot require client certificates (`--ca` is refused: aioquic does not
///   support it); a client given `--cert --key` presents them when asked.
/// - The server prints `ACCEPTED <stream-id>` for every stream the client opens, as soon
///   as its first `STREAM` frame arrives, even one without data. That shows whether a
///   stream is announced at open.
/// - `SESSION-END <how>`: `app-close code=<n> reason="<text>"` (an application
///   `CONNECTION_CLOSE`), `transport-close code=<hex> frame=<hex> reason="<text>"`,
///   `idle-timeout`, each prefixed by `local ` when the peer closed the session itself.
/// - The data of a verify-open stream is splitmix64 seeded with the QUIC stream id.
/// - The client closes its session with an application `CONNECTION_CLOSE` (code 0,
///   reason `done`), after the server acknowledged everything the client sent.
///
/// Durations take a unit (`500ms`, `10s`) or are seconds.
#[derive(Debug, Clone, Copy)]
pub struct AioquicPeer;

impl AioquicPeer {
    /// Starts `peer.py server <args>` (`args` are the flags, without the mode) and waits
    /// for its `LISTENING <addr>` line; see [`GoPeer::server`].
    ///
    /// The server exits when the returned handle is stopped or dropped.
    pub async fn server<I, S>(script: impl AsRef<Path>, args: I) -> io::Result<(GoPeer, SocketAddr)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        GoPeer::spawn_server(
            "aioquic-peer",
            python(),
            command_line(script, "server", args),
        )
        .await
    }

    /// Runs `peer.py client <args>` (`args` are the flags, without the mode) to completion;
    /// see [`GoPeer::client`]. The client's own `--timeout` (default 60 s) bounds the run.
    pub async fn client<I, S>(script: impl AsRef<Path>, args: I) -> io::Result<GoClientOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        GoPeer::run_client(python(), command_line(script, "client", args)).await
    }
}

/// `-u <script> <mode> <args…>`: unbuffered, so every line arrives when printed.
fn command_line<I, S>(script: impl AsRef<Path>, mode: &str, args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut line = vec![
        OsString::from("-u"),
        script.as_ref().as_os_str().to_owned(),
        OsString::from(mode),
    ];
    line.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
    line
}
