//! Server processes (ours and Go's), and the Go client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::measure::{MIB, Samples};
use crate::stacks::{Certs, SERVER_NAME};

/// A server in a child process that prints `LISTENING <addr>` and exits when its stdin
/// closes.
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) addr: SocketAddr,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Server {
    /// One of our servers: this binary, `server --kind KIND`.
    pub(crate) async fn ours(kind: &str, certs: &Certs) -> Result<Self> {
        let exe = std::env::current_exe().context("finding this binary")?;
        let mut command = Command::new(exe);
        command
            .arg("server")
            .arg("--kind")
            .arg(kind)
            .arg("--certs")
            .arg(certs.ca.parent().unwrap_or(Path::new(".")));
        Self::start(kind, command).await
    }

    /// The Go server.
    pub(crate) async fn go(bin: &Path, certs: &Certs) -> Result<Self> {
        let mut command = Command::new(bin);
        command
            .arg("server")
            .arg("--cert")
            .arg(&certs.cert)
            .arg("--key")
            .arg(&certs.key);
        Self::start("go-yamux", command).await
    }

    async fn start(name: &str, mut command: Command) -> Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {name} server"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .with_context(|| format!("the {name} server did not start within 30 s"))??
            .with_context(|| format!("the {name} server exited before listening"))?;
        let addr = line
            .strip_prefix("LISTENING ")
            .with_context(|| format!("the {name} server said {line:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("the {name} server said {line:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            addr,
            child,
            stdin,
            lines,
        })
    }

    /// Sessions held and resident memory (KiB), as the server reports them.
    pub(crate) async fn stat(&mut self) -> Result<(usize, u64)> {
        let stdin = self.stdin.as_mut().context("server stdin closed")?;
        stdin.write_all(b"stat\n").await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .context("no STAT answer within 30 s")??
            .context("the server exited")?;
        let mut sessions = None;
        let mut rss = None;
        for field in line.strip_prefix("STAT ").unwrap_or("").split_whitespace() {
            if let Some(v) = field.strip_prefix("sessions=") {
                sessions = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("rss_kib=") {
                rss = v.parse().ok();
            }
        }
        match (sessions, rss) {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => bail!("bad STAT line from {}: {line:?}", self.name),
        }
    }

    /// Closes stdin and waits for the process (killing it after 10 s).
    pub(crate) async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                // Killed by our closing stdin races nothing; any exit is fine, but say
                // when it was a failure.
                if !status.success() {
                    eprintln!("note: the {} server exited with {status}", self.name);
                }
            }
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "the {} server did not exit within 10 s of its stdin closing",
                    self.name
                );
            }
        }
        Ok(())
    }
}

/// The Go client of `interop/go-bench`, for one measure.
pub(crate) struct GoClient {
    pub(crate) bin: PathBuf,
    pub(crate) addr: SocketAddr,
    pub(crate) ca: PathBuf,
}

impl GoClient {
    /// Runs `--measure measure` with `args`; returns its samples (nanoseconds).
    async fn run(&self, measure: &str, args: &[(&str, String)]) -> Result<Vec<f64>> {
        let mut command = Command::new(&self.bin);
        command
            .arg("client")
            .arg("--connect")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(&self.ca)
            .arg("--server-name")
            .arg(SERVER_NAME)
            .arg("--measure")
            .arg(measure);
        for (flag, value) in args {
            command.arg(format!("--{flag}")).arg(value);
        }
        let out = command
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output()
            .await
            .context("running the Go client")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.lines().any(|l| l == "DONE") {
            let error = stdout
                .lines()
                .find(|l| l.starts_with("ERROR"))
                .unwrap_or("no DONE line");
            bail!("Go client ({measure}) failed, {}: {error}", out.status);
        }
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("SAMPLE "))
            .map(|v| v.trim().parse::<f64>().context("bad SAMPLE line"))
            .collect()
    }

    pub(crate) async fn bulk(&self, bytes: u64, warmup: usize, reps: usize) -> Result<Samples> {
        let ns = self
            .run(
                "bulk",
                &[
                    ("bytes", bytes.to_string()),
                    ("warmup", warmup.to_string()),
                    ("reps", reps.to_string()),
                ],
            )
            .await?;
        Ok(Samples(
            ns.iter()
                .map(|ns| bytes as f64 / MIB / (ns / 1e9))
                .collect(),
        ))
    }

    /// `rtt` or `open-rtt`: µs per sample.
    pub(crate) async fn latency(
        &self,
        measure: &str,
        warmup: usize,
        count: usize,
    ) -> Result<Samples> {
        let ns = self
            .run(
                measure,
                &[("warmup", warmup.to_string()), ("count", count.to_string())],
            )
            .await?;
        if ns.len() != count {
            bail!(
                "Go client ({measure}) gave {} samples, not {count}",
                ns.len()
            );
        }
        Ok(Samples(ns.iter().map(|ns| ns / 1e3).collect()))
    }

    pub(crate) async fn opens(
        &self,
        count: usize,
        in_flight: usize,
        warmup: usize,
        reps: usize,
    ) -> Result<Samples> {
        let ns = self
            .run(
                "opens",
                &[
                    ("count", count.to_string()),
                    ("concurrency", in_flight.to_string()),
                    ("warmup", warmup.to_string()),
                    ("reps", reps.to_string()),
                ],
            )
            .await?;
        Ok(Samples(
            ns.iter().map(|ns| count as f64 / (ns / 1e9)).collect(),
        ))
    }

    pub(crate) async fn streams(
        &self,
        streams: usize,
        bytes: u64,
        warmup: usize,
        reps: usize,
    ) -> Result<Samples> {
        let ns = self
            .run(
                "streams",
                &[
                    ("count", streams.to_string()),
                    ("bytes", bytes.to_string()),
                    ("warmup", warmup.to_string()),
                    ("reps", reps.to_string()),
                ],
            )
            .await?;
        let total = streams as u64 * bytes;
        Ok(Samples(
            ns.iter()
                .map(|ns| total as f64 / MIB / (ns / 1e9))
                .collect(),
        ))
    }
}
