//! The `echo` example's command line, run as separate server and client processes: the
//! example's own binary (built by [`support::example`]), its argument parsing, output
//! and exit codes.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn echo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(support::example("echo"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Collects a pipe's lines in the background.
fn collect(pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (lines, rx)
}

/// An echo server process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    fingerprint: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut all = vec!["server", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut child = echo_command(&all).spawn().expect("spawn the echo server");
        let (stdout, lines) = collect(child.stdout.take().unwrap());
        let (stderr, _) = collect(child.stderr.take().unwrap());
        let mut server = Server {
            child,
            addr: String::new(),
            fingerprint: String::new(),
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.addr.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(fp) = line.strip_prefix("fingerprint: ") {
                        server.fingerprint = fp.trim().to_owned();
                    }
                    if let Some(rest) = line.strip_prefix("listening on ") {
                        server.addr = rest.split_whitespace().next().unwrap().to_owned();
                    }
                }
                Err(_) => panic!("the server did not start:\n{}", server.output()),
            }
        }
        server
    }

    fn output(&self) -> String {
        format!(
            "--- server stdout\n{}\n--- server stderr\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// Waits until the server printed `count` lines containing `needle`.
    fn wait_for(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self
                .stdout
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not print {needle:?} {count} time(s):\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the example with `args` to completion (killed after [`CLIENT_TIMEOUT`]).
fn run(args: &[&str]) -> Run {
    let mut child = echo_command(args).spawn().expect("spawn the echo example");
    let (stdout, _) = collect(child.stdout.take().unwrap());
    let (stderr, _) = collect(child.stderr.take().unwrap());
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`echo {}` did not finish within {CLIENT_TIMEOUT:?}:\n{}\n{}",
                args.join(" "),
                stdout.lock().unwrap().join("\n"),
                stderr.lock().unwrap().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The reader threads see EOF once the process is gone; give them a moment.
    std::thread::sleep(Duration::from_millis(50));
    let stdout = stdout.lock().unwrap().join("\n");
    let stderr = stderr.lock().unwrap().join("\n");
    Run {
        status,
        stdout,
        stderr,
    }
}

fn run_ok(args: &[&str], server: &Server) -> Run {
    let out = run(args);
    assert!(
        out.status.success(),
        "`echo {}` failed ({}):\n{}\n{}\n{}",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr,
        server.output()
    );
    out
}

#[test]
fn self_signed_pin_auto_with_reverse_streams() {
    let server = Server::start(&["--reverse", "3"]);
    assert_eq!(server.fingerprint.len(), 64, "{}", server.output());

    let out = run_ok(
        &[
            "client",
            "--connect",
            &server.addr,
            "--pin",
            &server.fingerprint,
            "--streams",
            "8",
            "--bytes",
            "1M",
        ],
        &server,
    );
    assert!(out.stdout.contains("protocol: quic"), "{}", out.stdout);
    assert!(out.stdout.contains("8 ok, 0 failed"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("echoed 3 streams the server opened, 0 failed"),
        "{}",
        out.stdout
    );
    server.wait_for("reverse: 3 ok, 0 failed", 1);
    server.wait_for("session over quic", 1);

    // The same server over TCP (Auto listens on both).
    let out = run_ok(
        &[
            "client",
            "--connect",
            &server.addr,
            "--mode",
            "tcp",
            "--server-name",
            "localhost",
            "--pin",
            &server.fingerprint,
            "--streams",
            "4",
            "--bytes",
            "256K",
        ],
        &server,
    );
    assert!(out.stdout.contains("protocol: tcp"), "{}", out.stdout);
    assert!(out.stdout.contains("4 ok, 0 failed"), "{}", out.stdout);
    server.wait_for("reverse: 3 ok, 0 failed", 2);
    server.wait_for("session over tcp", 1);
}

#[test]
fn wrong_pin_fails_the_handshake() {
    let server = Server::start(&[]);
    let wrong = "00".repeat(32);
    let out = run(&["client", "--connect", &server.addr, "--pin", &wrong]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("handshake failed"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("does not match the pinned {wrong}")),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains(" ok, "), "{}", out.stdout);
}

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("qymux-echo-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn mutual_tls_with_pem_files() {
    let dir = TempDir::new("mtls");
    let ca = qymux::cert::CertificateAuthority::new("Echo Test CA").unwrap();
    std::fs::write(dir.path("ca.pem"), ca.cert_pem()).unwrap();
    let server_id = ca.issue_server(&["localhost"]).unwrap();
    std::fs::write(dir.path("server.pem"), server_id.cert_pem()).unwrap();
    std::fs::write(dir.path("server.key"), server_id.key_pem()).unwrap();
    let client_id = ca.issue_client("echo-test-agent").unwrap();
    std::fs::write(dir.path("client.pem"), client_id.cert_pem()).unwrap();
    std::fs::write(dir.path("client.key"), client_id.key_pem()).unwrap();

    let server = Server::start(&[
        "--cert",
        &dir.path("server.pem"),
        "--key",
        &dir.path("server.key"),
        "--client-ca",
        &dir.path("ca.pem"),
    ]);
    let out = run_ok(
        &[
            "client",
            "--connect",
            &server.addr,
            "--server-name",
            "localhost",
            "--ca",
            &dir.path("ca.pem"),
            "--cert",
            &dir.path("client.pem"),
            "--key",
            &dir.path("client.key"),
            "--streams",
            "2",
            "--bytes",
            "64K",
        ],
        &server,
    );
    assert!(out.stdout.contains("2 ok, 0 failed"), "{}", out.stdout);
    server.wait_for("client certificate: CN=echo-test-agent", 1);

    // Without a client certificate the server refuses the handshake.
    let out = run(&[
        "client",
        "--connect",
        &server.addr,
        "--server-name",
        "localhost",
        "--ca",
        &dir.path("ca.pem"),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("client certificate"), "{}", out.stderr);
}

/// Usage errors exit with 2 and name what is wrong (the messages are clap's).
#[test]
fn usage_errors_exit_2() {
    for (args, message) in [
        (&[][..], "Usage:"),
        (&["serve"][..], "unrecognized subcommand"),
        (&["server"][..], "--listen <ADDR>"),
        (&["client"][..], "--connect <ADDR>"),
        (&["client", "--connect", "x:1", "--pin", "zz"][..], "--pin"),
        (
            &[
                "client",
                "--connect",
                "x:1",
                "--ca",
                "a.pem",
                "--dangerous-skip-verify",
            ][..],
            "cannot be used with",
        ),
        (
            &["client", "--connect", "x:1", "--cert", "c.pem"][..],
            "--key <PEM>",
        ),
        (
            &["client", "--connect", "x:1", "--streams", "0"][..],
            "--streams",
        ),
        (
            &["client", "--connect", "x:1", "--bytes", "lots"][..],
            "--bytes",
        ),
        (
            &["server", "--listen", "x:1", "--mode", "udp"][..],
            "--mode",
        ),
        (
            &["server", "--listen", "x:1", "--listen", "y:1"][..],
            "cannot be used multiple times",
        ),
        (&["server", "--listen"][..], "--listen <ADDR>"),
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains(message), "{args:?}: {}", out.stderr);
    }
    let out = run(&["client", "--help"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.contains("--dangerous-skip-verify"),
        "{}",
        out.stdout
    );
}
