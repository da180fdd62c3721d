//! A QUIC server as its own process, killed and started again, or shut down and exited,
//! while an agent is connected: what does the agent see?
//!
//! - SIGKILL, then a new process on the same port with the same
//!   [`Options::quic_reset_secret`]: the new process answers the agent's next packet
//!   (its keep-alive) with a stateless reset, so the agent's session ends *reset* at once
//!   instead of waiting out its idle timeout. Control: with a random key per process the
//!   same agent ends by its idle timeout.
//! - `Listener::shutdown` followed at once by `process::exit`: the agent sees the
//!   server's clean close, not an idle timeout.
//!
//! The server processes are this test binary run again with [`CHILD`] set (hence
//! `harness = false`: one `main` that is either the tests or a server).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use qymux_cert::{CertificateAuthority, Identity};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{CloseReason, Error, Options, TimeoutKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Set in a server process: `PORT SECRET` (`-` for no reset secret).
const CHILD: &str = "QYMUX_QUIC_RESTART_CHILD";
const CERT: &str = "QYMUX_QUIC_RESTART_CERT";
const KEY: &str = "QYMUX_QUIC_RESTART_KEY";

/// The agent's keep-alive: its first packet after a restart leaves within this.
const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// The agent's idle timeout: what it waits when nobody resets it.
const IDLE: Duration = Duration::from_secs(4);

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        return server_process(&spec);
    }
    let pki = Pki::new();
    let tests: [(&str, Test); 3] = [
        (
            "a_restarted_server_resets_its_predecessors_connections",
            a_restarted_server_resets_its_predecessors_connections,
        ),
        (
            "without_a_reset_secret_the_agent_waits_out_its_idle_timeout",
            without_a_reset_secret_the_agent_waits_out_its_idle_timeout,
        ),
        (
            "a_shutdown_delivers_its_close_before_the_process_exits",
            a_shutdown_delivers_its_close_before_the_process_exits,
        ),
    ];
    for (name, test) in tests {
        eprintln!("test {name} ...");
        test(&pki);
        eprintln!("test {name} ... ok");
    }
}

type Test = fn(&Pki);

struct Pki {
    ca: CertificateAuthority,
    server: Identity,
}

impl Pki {
    fn new() -> Self {
        let ca = CertificateAuthority::new("Qymux Restart Test CA").unwrap();
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        Pki { ca, server }
    }
}

// ---------------------------------------------------------------------------------------
// The server process.

/// Serves an echo on `127.0.0.1:PORT` until stdin says `shutdown` (then shuts down
/// gracefully and exits at once) or the process is killed.
fn server_process(spec: &str) {
    let (port, secret) = spec.split_once(' ').expect("PORT SECRET");
    let identity =
        Identity::from_pem(&std::env::var(CERT).unwrap(), &std::env::var(KEY).unwrap()).unwrap();
    let mut options = Options::default();
    if secret != "-" {
        options.quic_reset_secret(secret.as_bytes());
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let tls = ServerTls::new(identity).build().unwrap();
        let listener = std::sync::Arc::new(
            qymux_quic::Listener::bind(format!("127.0.0.1:{port}"), tls, options)
                .await
                .unwrap(),
        );
        println!("listening {}", listener.local_addr().port());
        tokio::spawn({
            let listener = listener.clone();
            async move {
                while let Ok(session) = listener.accept().await {
                    tokio::spawn(async move {
                        while let Ok(mut stream) = session.accept().await {
                            tokio::spawn(async move {
                                let mut buf = Vec::new();
                                if stream.read_to_end(&mut buf).await.is_ok() {
                                    let _ = stream.write_all(&buf).await;
                                    let _ = stream.shutdown().await;
                                }
                            });
                        }
                    });
                }
            }
        });
        let line = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await
        .unwrap()
        .unwrap_or_default();
        if line.trim() == "shutdown" {
            listener.shutdown(Duration::from_secs(5)).await;
            // At once: nothing else gets the endpoint's packets out.
            std::process::exit(0);
        }
    });
}

/// A running server process.
struct Server {
    child: Child,
    stdin: ChildStdin,
    port: u16,
}

impl Server {
    /// Starts a server on `port` (0: any) and waits for its "listening" line.
    fn start(pki: &Pki, port: u16, secret: Option<&str>) -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(CHILD, format!("{port} {}", secret.unwrap_or("-")))
            .env(CERT, pki.server.cert_pem())
            .env(KEY, pki.server.key_pem())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the server process said {line:?}"));
        Server { child, stdin, port }
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The agent.

fn agent_options() -> Options {
    let mut o = Options::default();
    o.keep_alive_interval(Some(KEEP_ALIVE)).idle_timeout(IDLE);
    o
}

async fn dial(pki: &Pki, port: u16) -> qymux_quic::Session {
    let tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .build()
        .unwrap();
    let session = qymux_quic::dial(
        &format!("127.0.0.1:{port}"),
        "localhost",
        tls,
        agent_options(),
    )
    .await
    .expect("the agent connects");
    // The session carries a stream before anything happens to the server.
    let mut stream = session.open().await.unwrap();
    stream.write_all(b"hello").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echo = Vec::new();
    stream.read_to_end(&mut echo).await.unwrap();
    assert_eq!(echo, b"hello");
    session
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Kills the server with SIGKILL, starts a new one on its port, and returns why the
/// agent's session ended and how long after the restart.
fn kill_and_restart(pki: &Pki, secret: Option<&str>) -> (CloseReason, Duration) {
    let first = Server::start(pki, 0, secret);
    let port = first.port;
    runtime().block_on(async {
        let session = dial(pki, port).await;
        first.kill();
        let second = Server::start(pki, port, secret);
        let restarted = Instant::now();
        // No bound needed: the idle timeout ends the session at the latest.
        let reason = session.closed().await;
        let after = restarted.elapsed();
        // The new server serves new sessions either way.
        let again = dial(pki, second.port).await;
        again.close().await;
        (reason, after)
    })
}

fn a_restarted_server_resets_its_predecessors_connections(pki: &Pki) {
    let (reason, after) = kill_and_restart(pki, Some("the server's long-term secret"));
    eprintln!("  the agent's session ended {after:?} after the restart: {reason}");
    assert!(
        matches!(&reason, CloseReason::Failed(Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a restarted server with the same secret resets the old session: {reason:?}"
    );
}

fn without_a_reset_secret_the_agent_waits_out_its_idle_timeout(pki: &Pki) {
    let (reason, after) = kill_and_restart(pki, None);
    eprintln!("  the agent's session ended {after:?} after the restart: {reason}");
    assert!(
        matches!(
            reason,
            CloseReason::Failed(Error::Timeout {
                what: TimeoutKind::Idle,
                ..
            })
        ),
        "with a random key per process the new server cannot reset: {reason:?}"
    );
}

fn a_shutdown_delivers_its_close_before_the_process_exits(pki: &Pki) {
    /// Enough sessions that the closes take the endpoint a while to send.
    const AGENTS: usize = 64;
    let mut server = Server::start(pki, 0, None);
    runtime().block_on(async {
        let mut agents = Vec::with_capacity(AGENTS);
        for _ in 0..AGENTS {
            agents.push(dial(pki, server.port).await);
        }
        server.stdin.write_all(b"shutdown\n").unwrap();
        server.stdin.flush().unwrap();
        let mut timed_out = 0;
        for agent in &agents {
            match agent.closed().await {
                CloseReason::Peer(_) => {}
                CloseReason::Failed(Error::Timeout { .. }) => timed_out += 1,
                other => panic!("an agent's session ended by {other:?}"),
            }
        }
        let status = server.child.wait().unwrap();
        assert!(status.success(), "the server exits after its shutdown");
        assert_eq!(
            timed_out, 0,
            "every agent hears the server's close, none waits out its idle timeout"
        );
    });
}
