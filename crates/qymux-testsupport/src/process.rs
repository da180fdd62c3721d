//! Running go-peer (or another peer with the same command-line contract) as a child
//! process.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a go-peer server may take to print `LISTENING`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`GoPeer::stop`] waits for the server to exit after closing its stdin.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `go-peer server`, or the way to run a `go-peer client` ([`GoPeer::client`]).
///
/// The server's stdin stays open while this value lives (go-peer exits when its stdin
/// closes, so a test harness that dies does not leak it), and dropping it kills the
/// process. Its stderr is collected in the background ([`GoPeer::stderr`]) and printed
/// when the value is dropped during a panic, so a failing test shows what Go said.
///
/// Other peers that follow go-peer's contract (the same modes, `LISTENING`, `REVERSE`
/// and `RESULT` lines, exit statuses and stdin rule) run through the same type:
/// [`GoPeer::spawn_server`] and [`GoPeer::run_client`] take the whole command line, as
/// [`AioquicPeer`](crate::AioquicPeer) does for the aioquic peer.
pub struct GoPeer {
    /// What the messages call this peer (`go-peer`, `aioquic-peer`).
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Everything read from stderr so far; the collecting task holds the sender.
    stderr: watch::Receiver<String>,
    stderr_task: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl fmt::Debug for GoPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoPeer")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GoPeer {
    /// Starts `go-peer server <args>` (`bin` from [`go_peer`](crate::go_peer); `args` are
    /// the flags, without the `server` mode) and waits for its `LISTENING <addr>` line.
    ///
    /// Pass `--listen 127.0.0.1:0` (the default) to get a free port. Fails if the process
    /// exits, or prints no `LISTENING` line within 30 seconds; the error carries its stderr.
    pub async fn server<I, S>(bin: impl AsRef<Path>, args: I) -> io::Result<(GoPeer, SocketAddr)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = args.into_iter().map(|arg| arg.as_ref().to_owned());
        Self::spawn_server(
            "go-peer",
            bin.as_ref(),
            std::iter::once(OsString::from("server")).chain(args),
        )
        .await
    }

    /// Starts `program <args>` (the whole command line: for a script, the interpreter
    /// first, then the script, the mode and the flags) and waits for its `LISTENING <addr>`
    /// line, like [`GoPeer::server`]; `label` names the peer in messages.
    ///
    /// For peers other than go-peer that follow its contract: a `LISTENING <host:port>`
    /// line on stdout once listening, exit when stdin closes, and the other lines
    /// ([`next_reverse`](GoPeer::next_reverse), [`line_starting_with`](GoPeer::line_starting_with))
    /// as they apply. Stdin, stdout and stderr are set up here; the process is killed when
    /// the returned value is dropped.
    pub async fn spawn_server<I, S>(
        label: &str,
        program: impl AsRef<OsStr>,
        args: I,
    ) -> io::Result<(GoPeer, SocketAddr)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let mut stderr_pipe = BufReader::new(child.stderr.take().expect("stderr is piped")).lines();
        let (collected, stderr) = watch::channel(String::new());
        let stderr_task = tokio::spawn(async move {
            while let Ok(Some(line)) = stderr_pipe.next_line().await {
                collected.send_modify(|all| {
                    all.push_str(&line);
                    all.push('\n');
                });
            }
        });
        let mut peer = GoPeer {
            label: label.to_owned(),
            child,
            stdin: Some(stdin),
            stdout,
            stderr,
            stderr_task: Some(stderr_task),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };

        let line = match peer.line_starting_with("LISTENING ", STARTUP_TIMEOUT).await {
            Ok(line) => line,
            Err(err) => return Err(peer.startup_failed(err).await),
        };
        let addr = line["LISTENING ".len()..].trim();
        peer.addr = addr.parse().map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{} server printed a bad address in {line:?}: {err}",
                    peer.label
                ),
            )
        })?;
        let addr = peer.addr;
        Ok((peer, addr))
    }

    /// Turns a failed start into an error with the exit status and stderr.
    async fn startup_failed(&mut self, err: io::Error) -> io::Error {
        let _ = self.child.start_kill();
        let status = self.child.wait().await.ok();
        if let Some(task) = self.stderr_task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        let status = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
        io::Error::new(
            err.kind(),
            format!(
                "{} server did not start ({err}; {status}); its stderr:\n{}",
                self.label,
                self.stderr()
            ),
        )
    }

    /// The address the server listens on, from its `LISTENING` line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next line the server prints on stdout (`REVERSE …`, `SESSION-END …`,
    /// `HANDSHAKE-ERROR …`), or `None` once it exited.
    pub async fn next_line(&mut self) -> io::Result<Option<String>> {
        self.stdout.next_line().await
    }

    /// Reads stdout lines until one starts with `prefix` and returns it; the lines before it
    /// are dropped. Fails if the server exits or no such line comes within `timeout`.
    pub async fn line_starting_with(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> io::Result<String> {
        let mut skipped = Vec::new();
        let search = async {
            while let Some(line) = self.stdout.next_line().await? {
                if line.starts_with(prefix) {
                    return Ok(Some(line));
                }
                skipped.push(line);
            }
            Ok::<_, io::Error>(None)
        };
        match tokio::time::timeout(timeout, search).await {
            Ok(Ok(Some(line))) => Ok(line),
            Ok(Ok(None)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} exited before a {prefix:?} line (stdout before: {skipped:?})",
                    self.label
                ),
            )),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no {prefix:?} line from {} within {timeout:?} (stdout before: {skipped:?})",
                    self.label
                ),
            )),
        }
    }

    /// Waits for the next `REVERSE ok=<n> failed=<m>` line: the streams this server opened
    /// to a client (`--open N`) are done.
    pub async fn next_reverse(&mut self, timeout: Duration) -> io::Result<GoCounts> {
        let line = self.line_starting_with("REVERSE ", timeout).await?;
        GoCounts::parse(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad {} line {line:?}", self.label),
            )
        })
    }

    /// What the server printed on stderr so far (yamux logs, `STREAM-ERROR <id> <err>`,
    /// `HANDSHAKE-ERROR <err>`), as far as the background reader has got.
    ///
    /// stdout and stderr are separate pipes: a line on stdout (`SESSION-END …`) can
    /// arrive before a line the server wrote to stderr earlier. To check for a line,
    /// wait for it with [`stderr_containing`](GoPeer::stderr_containing); after
    /// [`stop`](GoPeer::stop) the whole of stderr has been read.
    pub fn stderr(&self) -> String {
        self.stderr.borrow().clone()
    }

    /// Waits until the server's stderr contains `needle` and returns all of it so far.
    /// Fails with what it printed if that does not happen within `timeout`, or if its
    /// stderr closed (it exited) without it.
    pub async fn stderr_containing(&self, needle: &str, timeout: Duration) -> io::Result<String> {
        let mut stderr = self.stderr.clone();
        let found = tokio::time::timeout(timeout, stderr.wait_for(|all| all.contains(needle)))
            .await
            .map(|seen| seen.map(|all| all.clone()));
        match found {
            Ok(Ok(all)) => Ok(all),
            Ok(Err(_closed)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} closed its stderr without {needle:?}; its stderr:\n{}",
                    self.label,
                    self.stderr()
                ),
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no {needle:?} on {}'s stderr within {timeout:?}; its stderr:\n{}",
                    self.label,
                    self.stderr()
                ),
            )),
        }
    }

    /// Closes the server's stdin, which makes it exit, and waits for that (killing it after
    /// 5 seconds), then for the rest of its stderr.
    pub async fn stop(mut self) -> io::Result<ExitStatus> {
        drop(self.stdin.take());
        let status = match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.child.kill().await?;
                self.child.wait().await
            }
        };
        if let Some(task) = self.stderr_task.take() {
            // A child of its own could hold the pipe open: bounded.
            let _ = tokio::time::timeout(STOP_TIMEOUT, task).await;
        }
        status
    }

    /// Runs `go-peer client <args>` to completion (`args` are the flags, without the
    /// `client` mode) and returns its exit status and output.
    ///
    /// The client's own `--timeout` (default 60 s) bounds the run. Its stdin is empty; if
    /// the returned future is dropped, the process is killed.
    pub async fn client<I, S>(bin: impl AsRef<Path>, args: I) -> io::Result<GoClientOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args = args.into_iter().map(|arg| arg.as_ref().to_owned());
        Self::run_client(
            bin.as_ref(),
            std::iter::once(OsString::from("client")).chain(args),
        )
        .await
    }

    /// Runs `program <args>` (the whole command line, as for [`GoPeer::spawn_server`]) to
    /// completion, like [`GoPeer::client`], for peers other than go-peer that follow its
    /// contract (`RESULT` line, exit statuses).
    ///
    /// Its stdin is empty and its output is captured; if the returned future is dropped,
    /// the process is killed. Nothing else bounds the run: pass the peer its own timeout.
    pub async fn run_client<I, S>(program: impl AsRef<OsStr>, args: I) -> io::Result<GoClientOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        Ok(GoClientOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

impl Drop for GoPeer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- {label} server (pid {:?}, {}) stderr:\n{}--- end of {label} stderr",
                self.child.id(),
                self.addr,
                self.stderr(),
                label = self.label,
            );
        }
    }
}

/// How a `go-peer client` run ended: [`GoPeer::client`].
///
/// Its `Display` shows all of it, for assertion messages:
/// `assert!(out.status.success(), "{out}")`.
#[derive(Debug, Clone)]
pub struct GoClientOutput {
    /// 0: success; 1: a stream failed, counts not met, timeout or another error; 2: the
    /// TLS handshake failed (including a TLS 1.3 server rejecting our certificate after
    /// the handshake, and an ALPN mismatch).
    pub status: ExitStatus,
    /// `RESULT ok=<n> failed=<m> reverse=<k>`, or `ERROR <what>: <err>`.
    pub stdout: String,
    /// yamux logs and `STREAM-ERROR <id> <err>` lines (and the `ERROR` line again).
    pub stderr: String,
}

impl GoClientOutput {
    /// The counts of the `RESULT` line, if the client got that far.
    pub fn result(&self) -> Option<GoCounts> {
        self.stdout
            .lines()
            .rev()
            .find(|line| line.starts_with("RESULT "))
            .and_then(GoCounts::parse)
    }

    /// The `ERROR <what>: <err>` line, without `ERROR `, if the client failed that way.
    pub fn error(&self) -> Option<&str> {
        self.stdout
            .lines()
            .find_map(|line| line.strip_prefix("ERROR "))
    }

    /// Whether the client failed its TLS handshake (exit status 2).
    pub fn handshake_failed(&self) -> bool {
        self.status.code() == Some(2)
    }
}

impl fmt::Display for GoClientOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "peer client: {}", self.status)?;
        writeln!(f, "--- stdout\n{}", self.stdout.trim_end())?;
        write!(f, "--- stderr\n{}", self.stderr.trim_end())
    }
}

/// The counts of a go-peer `RESULT ok=<n> failed=<m> reverse=<k>` (client) or
/// `REVERSE ok=<n> failed=<m>` (server) line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoCounts {
    /// Streams that go-peer opened and whose echo came back complete and closed.
    pub ok: u64,
    /// Streams that failed (opened by go-peer or echoed by it).
    pub failed: u64,
    /// Client only: streams the server opened that the client echoed completely.
    pub reverse: u64,
}

impl GoCounts {
    /// Parses a `RESULT …` or `REVERSE …` line; `None` if it is neither or lacks `ok=` or
    /// `failed=`.
    pub fn parse(line: &str) -> Option<GoCounts> {
        let fields = line
            .strip_prefix("RESULT ")
            .or_else(|| line.strip_prefix("REVERSE "))?;
        let (mut ok, mut failed, mut reverse) = (None, None, 0);
        for field in fields.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            let value: u64 = value.parse().ok()?;
            match key {
                "ok" => ok = Some(value),
                "failed" => failed = Some(value),
                "reverse" => reverse = value,
                _ => {}
            }
        }
        Some(GoCounts {
            ok: ok?,
            failed: failed?,
            reverse,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::GoCounts;

    #[test]
    fn parses_result_and_reverse_lines() {
        assert_eq!(
            GoCounts::parse("RESULT ok=16 failed=0 reverse=3"),
            Some(GoCounts {
                ok: 16,
                failed: 0,
                reverse: 3
            })
        );
        assert_eq!(
            GoCounts::parse("REVERSE ok=2 failed=1"),
            Some(GoCounts {
                ok: 2,
                failed: 1,
                reverse: 0
            })
        );
        assert_eq!(GoCounts::parse("SESSION-END EOF"), None);
        assert_eq!(GoCounts::parse("RESULT ok=1"), None);
        assert_eq!(GoCounts::parse("RESULT ok=x failed=0"), None);
    }
}
