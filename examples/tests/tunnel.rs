//! The `tunnel` example's command line, run as it is documented: a server process and an
//! agent process (the example's own binary, built by [`support::example`]), a TCP
//! service next to the agent, and TCP clients on the server's public port. Bytes go
//! through both ways with half-close, and Ctrl-C (SIGINT) stops both with exit code 0 and
//! their connection counts printed.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A bound on each wait, generous for a loaded 2-core machine: a hang fails the test
/// with the processes' output instead of blocking the suite.
const WAIT: Duration = Duration::from_secs(60);

/// One of the example's processes, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(name: &'static str, args: &[&str]) -> Proc {
        let mut child = Command::new(support::example("tunnel"))
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the tunnel example");
        let (stdout, lines) = support::collect(child.stdout.take().unwrap());
        let (stderr, _) = support::collect(child.stderr.take().unwrap());
        Proc {
            name,
            child,
            stdout,
            stderr,
            lines,
        }
    }

    fn output(&self) -> String {
        format!(
            "--- {0} stdout\n{1}\n--- {0} stderr\n{2}",
            self.name,
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }

    /// The next stdout line containing `needle` (earlier lines are skipped).
    fn line_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "{} printed no line with {needle:?}:\n{}",
                    self.name,
                    self.output()
                ),
            }
        }
    }

    /// Ctrl-C, as an operator stops it.
    fn interrupt(&self) {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -INT {} failed", self.child.id());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit after Ctrl-C:\n{}",
                self.name,
                self.output()
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

/// A TCP echo service on loopback (what the agent forwards to): echoes each
/// connection until its EOF, then finishes its side.
fn echo_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = conn.try_clone().unwrap();
                if std::io::copy(&mut reader, &mut conn).is_ok() {
                    let _ = conn.shutdown(Shutdown::Write);
                }
            });
        }
    });
    addr
}

/// The address after `prefix` in `line` (up to the next space or comma).
fn addr_after(line: &str, prefix: &str) -> String {
    let rest = &line[line.find(prefix).expect(prefix) + prefix.len()..];
    rest.split([' ', ',']).next().unwrap().trim().to_owned()
}

/// Sends `data` through the public port, half-closes, and returns what came back.
fn through_tunnel(public: &str, data: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(public).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = conn.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let mut back = Vec::new();
        reader.read_to_end(&mut back).map(|_| back)
    });
    conn.write_all(data).unwrap();
    conn.shutdown(Shutdown::Write).unwrap();
    back.join()
        .unwrap()
        .expect("reading the echo through the tunnel")
}

fn tunnel_round_trip(mode: &str, protocol: &str) {
    let service = echo_service();
    let mut server = Proc::start(
        "server",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
            "--mode",
            mode,
        ],
    );
    let fingerprint = addr_after(&server.line_with("fingerprint: "), "fingerprint: ");
    assert_eq!(fingerprint.len(), 64, "{}", server.output());
    let agents = addr_after(&server.line_with("agents: listening on "), "listening on ");
    let public = addr_after(&server.line_with("public: listening on "), "listening on ");

    let mut agent = Proc::start(
        "agent",
        &[
            "agent",
            "--connect",
            &agents,
            "--pin",
            &fingerprint,
            "--forward",
            &service,
            "--mode",
            mode,
        ],
    );
    let connected = agent.line_with("connected to");
    assert!(
        connected.ends_with(&format!("over {protocol}")),
        "{connected:?}\n{}",
        agent.output()
    );
    server.line_with("connected (1 connected)");

    // Two connections at once, 1 MiB each, different bytes: each comes back whole and
    // to its own client.
    let clients: Vec<_> = (0..2u8)
        .map(|k| {
            let public = public.clone();
            std::thread::spawn(move || {
                let data: Vec<u8> = (0..1u32 << 20)
                    .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ k)
                    .collect();
                let back = through_tunnel(&public, &data);
                assert!(
                    back == data,
                    "connection {k}: {} bytes back, not the {} sent",
                    back.len(),
                    data.len()
                );
            })
        })
        .collect();
    for client in clients {
        if client.join().is_err() {
            panic!("a client failed\n{}\n{}", server.output(), agent.output());
        }
    }

    agent.interrupt();
    let stopped = agent.line_with("agent: stopped");
    assert!(
        stopped.contains("2 connections, 2 completed, 0 failed"),
        "{stopped:?}\n{}",
        agent.output()
    );
    assert!(agent.wait().success(), "{}", agent.output());
    server.interrupt();
    let stopped = server.line_with("server: stopped");
    assert!(
        stopped.contains("2 connections, 2 completed, 0 failed"),
        "{stopped:?}\n{}",
        server.output()
    );
    assert!(server.wait().success(), "{}", server.output());
}

#[test]
fn auto_mode_forwards_both_ways_and_stops_on_ctrl_c() {
    tunnel_round_trip("auto", "quic");
}

#[test]
fn tcp_mode_forwards_both_ways_and_stops_on_ctrl_c() {
    tunnel_round_trip("tcp", "tcp");
}
