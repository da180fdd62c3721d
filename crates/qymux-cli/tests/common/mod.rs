//! Running the built `qymux` binary as a user would: processes, config files in a
//! temporary directory, real sockets on loopback. Every wait is for an event (a log line,
//! a process exit, bytes on a socket) with an upper bound; none is a sleep.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use qymux_testsupport::{TempDir, missing_peer};
use serde_json::Value;

/// The upper bound of every wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// A token of the tests' configs (never printed by the binary: checked).
pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const OTHER_TOKEN: &str = "test-token-other-0123456789";

/// The `qymux` binary cargo built for these tests.
pub fn qymux_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qymux"))
}

/// A temporary directory holding `qymux cert`'s files and an `intruder` client.
pub fn cert_dir(tag: &str) -> TempDir {
    let dir = TempDir::new(tag).expect("temp dir");
    let out = run(&["cert", "--out", &dir.join("certs").to_string_lossy()]);
    assert!(out.status.success(), "qymux cert failed: {out:?}");
    let out = run(&[
        "cert",
        "--out",
        &dir.join("certs").to_string_lossy(),
        "--issue-client",
        "intruder",
    ]);
    assert!(
        out.status.success(),
        "qymux cert --issue-client failed: {out:?}"
    );
    dir
}

/// Runs `qymux ARGS` to completion.
pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(qymux_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("running qymux")
}

/// A running `qymux` process whose JSON log lines (stderr) are collected.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<String>>,
    rx: mpsc::Receiver<Value>,
    /// Lines received; `None` once a wait matched them.
    pending: Vec<Option<Value>>,
}

impl Proc {
    /// Starts `qymux ARGS --log-format json`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Proc::start_with_env(name, args, &[])
    }

    /// Starts `qymux ARGS --log-format json` with more environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut child = Command::new(qymux_bin())
            .args(args)
            .envs(env.iter().copied())
            .args(["--log-format", "json"])
            .env("RUST_LOG", "info,qymux=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting qymux");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let (lines, raw, name) = (lines.clone(), raw.clone(), name.to_owned());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    raw.lock().unwrap().push_str(&line);
                    raw.lock().unwrap().push('\n');
                    if std::env::var_os("QYMUX_TEST_LOGS").is_some() {
                        eprintln!("[{name}] {line}");
                    }
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        lines.lock().unwrap().push(v.clone());
                        let _ = tx.send(v);
                    }
                }
            });
        }
        Proc {
            name: name.to_owned(),
            child,
            lines,
            raw,
            rx,
            pending: Vec::new(),
        }
    }

    pub fn server(config: &Path) -> Proc {
        Proc::start("server", &["server", "--config", &config.to_string_lossy()])
    }

    pub fn agent(name: &str, config: &Path) -> Proc {
        Proc::start(name, &["agent", "--config", &config.to_string_lossy()])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The JSON log lines so far.
    pub fn lines_snapshot(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.raw.lock().unwrap().clone()
    }

    /// Waits for a log line that `pred` accepts and that no earlier wait matched (in
    /// the order they were logged, earlier ones included).
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            while let Ok(v) = self.rx.try_recv() {
                self.pending.push(Some(v));
            }
            if let Some(slot) = self
                .pending
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(&pred))
            {
                return slot.take().expect("matched");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.pending.push(Some(v)),
                Err(_) => panic!(
                    "{}: no log line for {what} within {WAIT:?}; exited: {:?}; log:\n{}",
                    self.name,
                    self.child.try_wait(),
                    self.log()
                ),
            }
        }
    }

    /// Waits for a line whose message is `message` and whose fields hold `fields`.
    pub fn wait_msg(&mut self, message: &str, fields: &[(&str, &str)]) -> Value {
        let what = format!("{message:?} {fields:?}");
        self.wait_for(&what, |v| is_msg(v, message, fields))
    }

    /// Whether a line like that was logged at any time.
    pub fn logged(&self, message: &str, fields: &[(&str, &str)]) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|v| is_msg(v, message, fields))
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            // Exits are not events one can block on with a bound in std: poll.
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {WAIT:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn is_msg(v: &Value, message: &str, fields: &[(&str, &str)]) -> bool {
    let f = &v["fields"];
    f["message"].as_str() == Some(message)
        && fields.iter().all(|(k, want)| {
            let got = &f[*k];
            got.as_str() == Some(*want) || got.to_string().as_str() == *want
        })
}

/// A field of a log line, as text.
pub fn field(v: &Value, key: &str) -> String {
    match &v["fields"][key] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes a file in `dir`.
pub fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a config");
    path
}

/// Starts a server from `config` and waits for its address, and each service's public
/// address, from its log.
pub fn start_server(config: &Path, services: &[&str]) -> (Proc, String, Vec<String>) {
    wait_server(Proc::server(config), services)
}

/// Waits for a started server's address and its services' public addresses.
pub fn wait_server(server: Proc, services: &[&str]) -> (Proc, String, Vec<String>) {
    let mut server = server;
    let mut publics = vec![String::new(); services.len()];
    let mut left = services.len();
    let mut addr = String::new();
    while left > 0 || addr.is_empty() {
        let v = server.wait_for("listening", |v| {
            is_msg(v, "service listening", &[]) || is_msg(v, "listening for agents", &[])
        });
        if is_msg(&v, "listening for agents", &[]) {
            addr = field(&v, "addr");
        } else {
            let name = field(&v, "service");
            if let Some(i) = services.iter().position(|s| *s == name) {
                publics[i] = field(&v, "public");
                left -= 1;
            }
        }
    }
    (server, addr, publics)
}

/// A tiny HTTP/1.1 service that answers every request with `body`, closing after each.
pub fn http_service(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes());
            });
        }
    });
    addr
}

/// A line echo service: every line read is written back.
pub fn echo_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writer.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A client of [`echo_service`] through a tunnel.
pub struct EchoClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl EchoClient {
    pub fn connect(addr: &str) -> EchoClient {
        let tcp = TcpStream::connect(addr).expect("connecting to the public port");
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        EchoClient {
            reader: BufReader::new(tcp.try_clone().unwrap()),
            writer: tcp,
        }
    }

    /// Sends a line and reads what comes back (an error if the connection ended).
    pub fn roundtrip(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut back = String::new();
        if self.reader.read_line(&mut back)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(back.trim_end().to_owned())
    }

    /// Waits (bounded by the read timeout) until the server ends the connection: true
    /// if it ended (EOF or reset), false if the wait ran out or bytes came.
    pub fn wait_closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

/// `curl URL` (the body), or `None` with a SKIP (or a failure under
/// `QYMUX_REQUIRE_PEERS=1`) when curl is not installed.
pub fn have_curl() -> bool {
    let ok = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        missing_peer("curl is not installed (Debian: apt-get install curl)");
    }
    ok
}

pub fn curl(url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", url])
        .output()
        .expect("running curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A Python with grpcio, or `None` after a SKIP (a failure under
/// `QYMUX_REQUIRE_PEERS=1`).
pub fn python_with_grpc() -> Option<String> {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(python)
            .args(["-c", "import grpc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python.to_owned());
        }
    }
    missing_peer("no Python with grpcio (Debian: apt-get install python3-grpcio)");
    None
}

/// The gRPC peer script, written into `dir`.
pub fn grpc_script(dir: &TempDir) -> PathBuf {
    write(dir, "grpc_peer.py", include_str!("../grpc_peer.py"))
}

/// A grpcio server answering `PREFIX: message`; killed when dropped.
pub struct GrpcServer {
    child: Child,
    pub addr: String,
}

impl GrpcServer {
    pub fn start(python: &str, script: &Path, prefix: &str) -> GrpcServer {
        let mut child = Command::new(python)
            .arg(script)
            .args(["server", prefix])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the grpcio server");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("the grpcio server's listening line");
        let port = line
            .strip_prefix("listening ")
            .expect("listening PORT")
            .trim();
        GrpcServer {
            child,
            addr: format!("127.0.0.1:{port}"),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One unary call with the grpcio client; the reply.
pub fn grpc_call(python: &str, script: &Path, addr: &str, message: &str) -> Result<String, String> {
    let out = Command::new(python)
        .arg(script)
        .args(["client", addr, message])
        .output()
        .expect("running the grpcio client");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One Prometheus sample: name, labels, value.
pub type Sample = (String, Vec<(String, String)>, f64);

/// Scrapes `/metrics` and parses the Prometheus text format into
/// `(name, labels, value)` samples.
pub fn scrape(addr: &str) -> Vec<Sample> {
    let mut tcp = TcpStream::connect(addr).expect("connecting to /metrics");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        tcp,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("reading /metrics");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("not a Prometheus sample: {l:?}")))
        .collect()
}

/// Scrapes until `check` holds (bounded by [`WAIT`]), for counters that follow an
/// event in another process.
pub fn scrape_until(addr: &str, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + WAIT;
    loop {
        let samples = scrape(addr);
        if check(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics: no {what} within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), Vec::new()),
        Some((name, rest)) => {
            let rest = rest.strip_suffix('}')?;
            let mut labels = Vec::new();
            for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"")?;
                labels.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
            }
            (name.to_owned(), labels)
        }
    };
    let valid = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    if !valid(&name) || !labels.iter().all(|(k, _)| valid(k)) {
        return None;
    }
    Some((name, labels, value))
}

/// The value of the sample `name` whose labels include `labels` (summed if several).
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
        .sum()
}
