//! An echo server and client over Qymux, on the command line.
//!
//! ```text
//! cargo run --release --example echo -- server --listen 127.0.0.1:4433 --reverse 3
//!     fingerprint: 5f1c…
//!     listening on 127.0.0.1:4433 (quic, tcp)
//! cargo run --release --example echo -- client --connect 127.0.0.1:4433 --pin 5f1c… \
//!     --streams 8 --bytes 1M
//! ```
//!
//! The **server** echoes every stream a client opens until EOF, then finishes its side.
//! With `--reverse N` it also opens N streams to each client, writes 64 KiB of random
//! bytes on each, finishes them, reads the echo back and checks it byte for byte. Without
//! `--cert`/`--key` it makes a self-signed certificate and prints its SHA-256 fingerprint
//! for the client's `--pin`. It runs until killed.
//!
//! The **client** dials, opens `--streams` streams at once, writes `--bytes` random bytes
//! on each while reading the echo, checks every byte, echoes the streams the server opens,
//! prints `N ok, M failed`, and closes the session.
//!
//! # When the client is done with the server's streams
//!
//! The client must echo the server's `--reverse` streams before it closes the session,
//! but it is not told how many there are. The rule, deterministic and independent of the
//! transport or of packet loss:
//!
//! - the server echoes nothing on the client's streams until the client has echoed at
//!   least one byte on *every* stream the server opened (or 10 s passed, for clients
//!   that do not echo);
//! - the client registers each stream it accepts before it echoes a byte on it.
//!
//! So once all of the client's own streams have been echoed completely, every stream the
//! server opened has been accepted and registered by the client. The client then stops
//! accepting, waits until each registered echo has finished (the server's EOF seen, its
//! own side finished), and closes the session gracefully, which delivers what finished
//! streams sent (QUIC waits for the peer's acknowledgements), so the server reads every
//! echoed byte. This needs `--streams` ≥ 1. Streams a *different* server opens after the
//! client's own streams completed are not waited for.
//!
//! # Exit codes
//!
//! `0` every stream matched; `1` some stream failed or did not match; `2` usage error;
//! `3` could not connect (handshake refused, unreachable, bad certificate files).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use qymux::cert::Fingerprint;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, BoxStream, Config, Mode, PeerIdentity, PeerText, Qymux, Session};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at};

const USAGE: &str = "\
usage:
  echo server --listen ADDR [--mode auto|quic|tcp] [--cert PEM --key PEM]
              [--client-ca PEM] [--reverse N]
  echo client --connect ADDR [--mode auto|quic|tcp] [--server-name NAME]
              [--ca PEM | --pin SHA256 | --dangerous-skip-verify]
              [--cert PEM --key PEM] [--streams N] [--bytes B] [--timeout SECS]

server:
  --listen ADDR        address to listen on (port 0 picks one); in auto mode UDP and TCP
  --mode MODE          auto (default: QUIC and TCP on one port), quic or tcp
  --cert, --key PEM    certificate chain and key (default: a new self-signed certificate,
                       whose SHA-256 fingerprint is printed for the client's --pin)
  --client-ca PEM      require client certificates issued by this CA (mTLS)
  --reverse N          also open N streams to each client, 64 KiB each, and check the echo

client:
  --connect ADDR       the server, host:port
  --mode MODE          auto (default: QUIC, falling back to TCP), quic or tcp
  --server-name NAME   the name the server's certificate must hold (default: host of ADDR)
  --ca PEM             trust this CA (default: the system's root store)
  --pin SHA256         accept only the server certificate with this fingerprint
  --dangerous-skip-verify   do not verify the server at all (development only)
  --cert, --key PEM    client certificate and key (mTLS)
  --streams N          streams to open at once (default 4, at least 1)
  --bytes B            bytes to send on each stream: 1048576, 64K, 1M, 1G (default 1M)
  --timeout SECS       bound on the exchange after connecting (default 60)

exit codes: 0 all streams matched, 1 some failed, 2 usage error, 3 connection failed";

const EXIT_OK: u8 = 0;
const EXIT_MISMATCH: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ERROR: u8 = 3;

/// Bytes the server sends on each of its `--reverse` streams.
const REVERSE_BYTES: u64 = 64 * 1024;
/// How long the server holds back its echo waiting for the client to echo on its reverse
/// streams (a client that never echoes still gets served after this).
const REVERSE_GATE: Duration = Duration::from_secs(10);
/// Bound on each reverse stream.
const REVERSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Random data is generated (and regenerated for checking) in chunks of this size.
const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    ExitCode::from(run(std::env::args().skip(1).collect()))
}

/// Runs the command line `args` (without the program name); returns the exit code.
pub(crate) fn run(args: Vec<String>) -> u8 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();

    let command = match parse(args) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return EXIT_OK;
        }
        Ok(command) => command,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return EXIT_USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_ERROR;
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Server(args) => server(args).await,
            Command::Client(args) => client(args).await,
            Command::Help => Ok(EXIT_OK),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            EXIT_ERROR
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose message the one
/// before already contains (`handshake failed: X` caused by `X`).
fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if line.is_empty() {
            line = message;
        } else if !line.contains(&message) {
            line = format!("{line}: {message}");
        }
    }
    line
}

// ---------------------------------------------------------------------------------------
// Command line

#[derive(Debug)]
enum Command {
    Help,
    Server(ServerArgs),
    Client(ClientArgs),
}

#[derive(Debug)]
struct ServerArgs {
    listen: String,
    mode: Mode,
    identity: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    reverse: usize,
}

#[derive(Debug)]
enum Verify {
    SystemRoots,
    Ca(PathBuf),
    Pin(Fingerprint),
    DangerousSkip,
}

#[derive(Debug)]
struct ClientArgs {
    connect: String,
    mode: Mode,
    server_name: Option<String>,
    verify: Verify,
    identity: Option<(PathBuf, PathBuf)>,
    streams: usize,
    bytes: u64,
    timeout: Duration,
}

/// `--flag value` / `--flag=value` pairs and bare `--switch`es, each at most once.
#[derive(Debug, Default)]
struct Flags {
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Self, String> {
        let mut flags = Flags::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            let seen = flags.values.iter().any(|(n, _)| n == name)
                || flags.switches.iter().any(|n| n == name);
            if seen {
                return Err(format!("{name} given twice"));
            }
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .filter(|v| !v.starts_with("--"))
                        .ok_or_else(|| format!("{name} needs a value"))?
                        .clone(),
                };
                flags.values.push((name.to_owned(), value));
            } else if switches.contains(&name) && inline.is_none() {
                flags.switches.push(name.to_owned());
            } else if name.starts_with('-') {
                return Err(format!("unknown option {arg}"));
            } else {
                return Err(format!("unexpected argument {arg:?}"));
            }
        }
        Ok(flags)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|n| n == name)
    }

    fn mode(&self) -> Result<Mode, String> {
        match self.get("--mode") {
            None => Ok(Mode::Auto),
            Some(m) => {
                Mode::from_str(m).map_err(|_| format!("--mode {m:?}: expected auto, quic or tcp"))
            }
        }
    }

    fn identity(&self) -> Result<Option<(PathBuf, PathBuf)>, String> {
        match (self.get("--cert"), self.get("--key")) {
            (Some(c), Some(k)) => Ok(Some((c.into(), k.into()))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("--cert needs --key".into()),
            (None, Some(_)) => Err("--key needs --cert".into()),
        }
    }

    fn number<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name} {v:?}: expected a whole number")),
        }
    }
}

fn parse(args: Vec<String>) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err("no command: expected `server` or `client`".into());
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "server" => parse_server(rest).map(Command::Server),
        "client" => parse_client(rest).map(Command::Client),
        other => Err(format!(
            "unknown command {other:?}: expected `server` or `client`"
        )),
    }
}

fn parse_server(args: &[String]) -> Result<ServerArgs, String> {
    let flags = Flags::parse(
        args,
        &[
            "--listen",
            "--mode",
            "--cert",
            "--key",
            "--client-ca",
            "--reverse",
        ],
        &[],
    )?;
    Ok(ServerArgs {
        listen: flags
            .get("--listen")
            .ok_or("server: --listen ADDR is required")?
            .to_owned(),
        mode: flags.mode()?,
        identity: flags.identity()?,
        client_ca: flags.get("--client-ca").map(PathBuf::from),
        reverse: flags.number("--reverse", 0)?,
    })
}

fn parse_client(args: &[String]) -> Result<ClientArgs, String> {
    let flags = Flags::parse(
        args,
        &[
            "--connect",
            "--mode",
            "--server-name",
            "--ca",
            "--pin",
            "--cert",
            "--key",
            "--streams",
            "--bytes",
            "--timeout",
        ],
        &["--dangerous-skip-verify"],
    )?;
    let chosen = [
        flags.get("--ca").is_some(),
        flags.get("--pin").is_some(),
        flags.has("--dangerous-skip-verify"),
    ];
    if chosen.iter().filter(|c| **c).count() > 1 {
        return Err("use at most one of --ca, --pin and --dangerous-skip-verify".into());
    }
    let verify = if let Some(ca) = flags.get("--ca") {
        Verify::Ca(ca.into())
    } else if let Some(pin) = flags.get("--pin") {
        Verify::Pin(pin.parse().map_err(|e| format!("--pin {pin:?}: {e}"))?)
    } else if flags.has("--dangerous-skip-verify") {
        Verify::DangerousSkip
    } else {
        Verify::SystemRoots
    };
    let streams = flags.number("--streams", 4)?;
    if streams == 0 {
        return Err("--streams must be at least 1".into());
    }
    let bytes = match flags.get("--bytes") {
        None => 1 << 20,
        Some(b) => parse_size(b)
            .ok_or_else(|| format!("--bytes {b:?}: expected a size like 1048576, 64K, 1M or 1G"))?,
    };
    let timeout_secs: u64 = flags.number("--timeout", 60)?;
    if timeout_secs == 0 {
        return Err("--timeout must be at least 1 second".into());
    }
    Ok(ClientArgs {
        connect: flags
            .get("--connect")
            .ok_or("client: --connect ADDR is required")?
            .to_owned(),
        mode: flags.mode()?,
        server_name: flags.get("--server-name").map(str::to_owned),
        verify,
        identity: flags.identity()?,
        streams,
        bytes,
        timeout: Duration::from_secs(timeout_secs),
    })
}

/// `1048576`, `64K`, `64KiB`, `1M`, `1MB`, `2G`: binary multiples (K = 1024).
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

// ---------------------------------------------------------------------------------------
// Server

async fn server(args: ServerArgs) -> anyhow::Result<u8> {
    let mut tls = match &args.identity {
        Some((cert, key)) => ServerTls::from_pem_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?,
        None => ServerTls::new(
            qymux::cert::self_signed(&["localhost", "127.0.0.1", "::1"])
                .context("making a self-signed certificate")?,
        ),
    };
    if let Some(ca) = &args.client_ca {
        tls = tls
            .client_ca_file(ca)
            .with_context(|| format!("loading the client CA {}", ca.display()))?;
    }
    let fingerprint = tls.identity().fingerprint();
    let qymux = Qymux::new(Config::new().mode(args.mode).server_tls(tls));
    let listener = qymux
        .listen(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;

    println!("fingerprint: {fingerprint}");
    if args.identity.is_none() {
        println!("(self-signed: clients verify it with --pin {fingerprint})");
    }
    let protocols: Vec<String> = listener
        .protocols()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "listening on {} ({})",
        listener.local_addr(),
        protocols.join(", ")
    );
    if args.client_ca.is_some() {
        println!("client certificates required (mTLS)");
    }

    loop {
        let session = listener.accept().await.context("accepting sessions")?;
        tokio::spawn(serve_session(session, args.reverse));
    }
}

/// Serves one client: echoes its streams and, with `reverse > 0`, checks streams of our own.
async fn serve_session(session: BoxSession, reverse: usize) {
    let remote = session.remote_addr();
    let identity = match session.peer_identity() {
        Some(id) => describe(&id),
        None => "none".to_owned(),
    };
    println!(
        "[{remote}] session over {}, client certificate: {identity}",
        session.protocol()
    );

    // The client's streams are echoed once `echo_gate` opens: at once without reverse
    // streams, else when the client has echoed on all of them (see the module docs).
    let (gate_tx, echo_gate) = watch::channel(reverse == 0);
    let reverse_task = (reverse > 0).then(|| {
        let session = session.clone();
        tokio::spawn(async move {
            let (ok, failed) = reverse_streams(&session, reverse, gate_tx).await;
            println!("[{remote}] reverse: {ok} ok, {failed} failed");
        })
    });

    let mut echoes = JoinSet::new();
    let reason = loop {
        match session.accept().await {
            Ok(stream) => {
                let mut gate = echo_gate.clone();
                echoes.spawn(async move {
                    // A dropped sender means the gate has been given up on: echo anyway.
                    let _ = gate.wait_for(|open| *open).await;
                    echo(stream).await
                });
            }
            Err(e) => break e,
        }
    };
    let (mut echoed, mut failed) = (0, 0);
    while let Some(result) = echoes.join_next().await {
        match result {
            Ok(Ok(_)) => echoed += 1,
            _ => failed += 1,
        }
    }
    if let Some(task) = reverse_task {
        let _ = task.await;
    }
    let why = session
        .close_reason()
        .map_or_else(|| reason.to_string(), |r| r.to_string());
    println!("[{remote}] session ended ({why}): echoed {echoed} streams, {failed} failed");
}

/// Opens `n` streams, sends [`REVERSE_BYTES`] random bytes on each and checks the echo.
/// Opens `gate` once the client echoed a first byte on every stream (or after
/// [`REVERSE_GATE`]). Returns (ok, failed).
async fn reverse_streams(
    session: &BoxSession,
    n: usize,
    gate: watch::Sender<bool>,
) -> (usize, usize) {
    let echoed_once = Arc::new(Semaphore::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let session = session.clone();
        let mut signal = Signal(Some(echoed_once.clone()));
        tasks.spawn(async move {
            let stream = session.open().await?;
            let result = timeout(
                REVERSE_TIMEOUT,
                exchange(stream, REVERSE_BYTES, || signal.fire()),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {REVERSE_TIMEOUT:?}"))?;
            drop(signal);
            result
        });
    }
    let permits = u32::try_from(n).unwrap_or(u32::MAX);
    if timeout(REVERSE_GATE, echoed_once.acquire_many(permits))
        .await
        .is_err()
    {
        println!(
            "[{}] the client has not echoed on all {n} reverse streams within {REVERSE_GATE:?}; \
             echoing its streams anyway",
            session.remote_addr()
        );
    }
    let _ = gate.send(true);

    let (mut ok, mut failed) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                println!(
                    "[{}] reverse stream failed: {}",
                    session.remote_addr(),
                    error_chain(&e)
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "[{}] reverse stream task failed: {e}",
                    session.remote_addr()
                );
            }
        }
    }
    (ok, failed)
}

/// Adds one permit to its semaphore exactly once: when fired, or when dropped unfired.
struct Signal(Option<Arc<Semaphore>>);

impl Signal {
    fn fire(&mut self) {
        if let Some(s) = self.0.take() {
            s.add_permits(1);
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.fire();
    }
}

/// A short description of a verified certificate: its subject, how it was verified and
/// its SHA-256 fingerprint. The subject is the peer's text: escaped, so a certificate
/// cannot put control characters on the terminal.
fn describe(identity: &PeerIdentity) -> String {
    let cert = identity.end_entity();
    let fingerprint = Fingerprint::of(cert);
    let how = identity.verification();
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => {
            let subject = parsed.subject().to_string();
            let subject = if subject.is_empty() {
                "(empty subject)".to_owned()
            } else {
                PeerText(&subject).to_string()
            };
            format!("{subject} ({how}, sha256 {fingerprint})")
        }
        Err(_) => format!("sha256 {fingerprint} ({how})"),
    }
}

// ---------------------------------------------------------------------------------------
// Client

async fn client(args: ClientArgs) -> anyhow::Result<u8> {
    let tls = match &args.verify {
        Verify::SystemRoots => ClientTls::with_system_roots(),
        Verify::Ca(path) => ClientTls::with_ca_file(path)
            .with_context(|| format!("loading the CA {}", path.display()))?,
        Verify::Pin(fingerprint) => ClientTls::with_pinned(*fingerprint),
        Verify::DangerousSkip => {
            eprintln!(
                "WARNING: --dangerous-skip-verify: the server's certificate is NOT verified.\n\
                 WARNING: anyone on the path can pose as the server and read or change \
                 everything sent.\n\
                 WARNING: use --ca or --pin outside of development."
            );
            qymux::tls::dangerous::skip_server_verification()
        }
    };
    let tls = match &args.identity {
        Some((cert, key)) => tls
            .client_identity_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?,
        None => tls,
    };
    let mut config = Config::new()
        .mode(args.mode)
        .server_addr(args.connect.clone())
        .client_tls(tls);
    if let Some(name) = &args.server_name {
        config = config.server_name(name.clone());
    }
    let server_name = config.server_name_or_host().unwrap_or_default().to_owned();
    let qymux = Qymux::new(config);

    let started = Instant::now();
    let session = qymux.dial().await.with_context(|| {
        format!(
            "cannot connect to {} (mode {}, server name {server_name})",
            args.connect, args.mode
        )
    })?;
    println!(
        "connected to {} over {} in {:.1} ms",
        session.remote_addr(),
        session.protocol(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("protocol: {}", session.protocol());
    if let Some(id) = session.peer_identity() {
        println!("server certificate: {}", describe(&id));
    }
    let deadline = tokio::time::Instant::now() + args.timeout;

    // Echo the streams the server opens. Each is registered (under the lock) before its
    // echo task can send a byte: see "When the client is done" in the module docs.
    let inbound: Arc<Mutex<JoinSet<anyhow::Result<u64>>>> = Arc::default();
    let acceptor = tokio::spawn({
        let session = session.clone();
        let inbound = inbound.clone();
        async move {
            while let Ok(stream) = session.accept().await {
                let mut set = inbound.lock().unwrap_or_else(|e| e.into_inner());
                set.spawn(async move {
                    timeout_at(deadline, echo(stream))
                        .await
                        .map_err(|_| anyhow::anyhow!("timed out"))?
                });
            }
        }
    });

    // Our own streams, all at once.
    let sent_at = Instant::now();
    let mut own = JoinSet::new();
    for index in 0..args.streams {
        let session = session.clone();
        let bytes = args.bytes;
        own.spawn(async move {
            let result = timeout_at(deadline, async {
                let stream = session.open().await.context("opening the stream")?;
                exchange(stream, bytes, || {}).await
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            (index, result)
        });
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(joined) = own.join_next().await {
        match joined {
            Ok((_, Ok(()))) => ok += 1,
            Ok((index, Err(e))) => {
                failed += 1;
                eprintln!("stream {index}: {}", error_chain(&e));
            }
            Err(e) => {
                failed += 1;
                eprintln!("stream task: {e}");
            }
        }
    }
    let took = sent_at.elapsed().as_secs_f64();

    // Every stream the server opened is registered now; let those echoes finish.
    acceptor.abort();
    let _ = acceptor.await;
    let mut inbound = std::mem::take(&mut *inbound.lock().unwrap_or_else(|e| e.into_inner()));
    let (mut served, mut serve_failed) = (0usize, 0usize);
    while let Some(joined) = inbound.join_next().await {
        match joined {
            Ok(Ok(_)) => served += 1,
            Ok(Err(e)) => {
                serve_failed += 1;
                eprintln!("echoing a stream the server opened: {}", error_chain(&e));
            }
            Err(e) => {
                serve_failed += 1;
                eprintln!("echo task: {e}");
            }
        }
    }

    let total = args.bytes.saturating_mul(ok as u64) as f64;
    println!(
        "sent and checked {} × {} bytes in {:.1} ms ({:.1} MiB/s each way)",
        args.streams,
        args.bytes,
        took * 1e3,
        total / took.max(1e-9) / f64::from(1 << 20)
    );
    println!("echoed {served} streams the server opened, {serve_failed} failed");
    println!("{ok} ok, {failed} failed");

    session.close().await;
    println!("session closed");
    Ok(if failed == 0 && serve_failed == 0 {
        EXIT_OK
    } else {
        EXIT_MISMATCH
    })
}

// ---------------------------------------------------------------------------------------
// Streams

/// Copies everything the peer sends back to it, then finishes our side. Returns the
/// number of bytes echoed.
async fn echo(stream: BoxStream) -> anyhow::Result<u64> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let n = tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await?;
    Ok(n)
}

/// Writes `len` pseudo-random bytes on `stream` and finishes it, while reading the echo
/// and checking it byte for byte. `first_echo` runs when the first echoed byte arrives.
async fn exchange(
    stream: BoxStream,
    len: u64,
    first_echo: impl FnOnce() + Send,
) -> anyhow::Result<()> {
    let seed = rand::random::<u64>();
    let (mut reader, mut writer) = tokio::io::split(stream);

    let write = async move {
        let mut data = Data::new(seed, len);
        while let Some(chunk) = data.next_chunk() {
            writer.write_all(chunk).await.context("writing")?;
        }
        writer.shutdown().await.context("finishing the stream")?;
        anyhow::Ok(())
    };

    let read = async move {
        let mut first_echo = Some(first_echo);
        let mut expected = Data::new(seed, len);
        let mut pending: &[u8] = &[];
        let mut buf = vec![0u8; CHUNK];
        let mut offset = 0u64;
        loop {
            let n = reader.read(&mut buf).await.context("reading the echo")?;
            if n == 0 {
                anyhow::ensure!(offset == len, "echo ended after {offset} of {len} bytes");
                return Ok(());
            }
            if let Some(f) = first_echo.take() {
                f();
            }
            let mut got = &buf[..n];
            while !got.is_empty() {
                if pending.is_empty() {
                    pending = match expected.next_chunk() {
                        Some(chunk) => chunk,
                        None => anyhow::bail!("echo longer than the {len} bytes sent"),
                    };
                }
                let take = got.len().min(pending.len());
                if got[..take] != pending[..take] {
                    let at = got[..take]
                        .iter()
                        .zip(pending)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    anyhow::bail!("echo differs at byte {}", offset + at as u64);
                }
                offset += take as u64;
                got = &got[take..];
                pending = &pending[take..];
            }
        }
    };

    tokio::try_join!(write, read)?;
    Ok(())
}

/// `len` pseudo-random bytes from `seed`, produced in chunks of [`CHUNK`] (the same
/// chunking on both ends, so the writer and the checker see the same bytes).
#[derive(Debug)]
struct Data {
    rng: SmallRng,
    left: u64,
    buf: Vec<u8>,
}

impl Data {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(seed),
            left: len,
            buf: vec![0; CHUNK],
        }
    }

    fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.left == 0 {
            return None;
        }
        let n = usize::try_from(self.left).map_or(CHUNK, |left| left.min(CHUNK));
        self.left -= n as u64;
        self.rng.fill_bytes(&mut self.buf[..n]);
        Some(&self.buf[..n])
    }
}
