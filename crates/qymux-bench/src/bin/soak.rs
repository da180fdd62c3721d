//! Soak test: many sessions × many streams, cycling, against one dual listener, for minutes.
//!
//! Every session slot dials (QUIC or TCP), runs a few rounds of `--streams` concurrent
//! streams (open, write, echo, verify by checksum, close), closes the session and dials
//! again, until the time is up. The resources of the process (RSS, open file descriptors,
//! live sessions) are printed at the start, after the warm-up, at the end of the load and
//! after tear-down, with the totals.
//!
//! The load is paced: the slots together start `--rate` streams per second (each slot
//! one round every `sessions x streams / rate` seconds, their first dials spread over
//! that time), and the rate reached is printed. The default rate is one that 1,000
//! sessions x 10 streams hold on a 2-core machine with clients and server in this one
//! process (see docs/reliability.md). `--stress` drops the pacing: every slot cycles
//! flat out and all slots dial at once, which overloads a small machine on purpose
//! (the server's single UDP socket then drops packets, and QUIC sessions time out or
//! are reset); it is a separate mode, not the soak.
//!
//! `RUST_LOG` (for instance `quinn_proto::endpoint=debug,qymux_quic=debug`) logs to
//! stderr.
//!
//! The server's UDP socket drops (from `/proc/net/udp`) are printed with every snapshot.
//! glibc's malloc is set to a fixed mmap threshold (128 KiB) unless
//! `--glibc-dynamic-mmap` is given: quinn gives every endpoint, so every dialed QUIC
//! session, a ~3 MiB receive buffer (`calloc`); with glibc's dynamic threshold those
//! buffers soon come from the heap, are touched whole, and stay resident after they are
//! freed, so RSS climbs towards 3 MiB per live dialed session without any leak. (The
//! program runs itself again with `MALLOC_MMAP_THRESHOLD_=131072` for that.)
//!
//! It exits non-zero on any data mismatch, on any error (nothing should fail on
//! loopback), if RSS or file descriptors grew beyond the tolerance between the warm-up
//! point and the end of the load, or if file descriptors or sessions are left over after
//! tear-down.
//!
//! ```text
//! cargo xtask soak --minutes 5                    # 1000 sessions x 10 streams, QUIC and TCP
//! cargo run --release -p qymux-bench --bin soak -- --seconds 20 --sessions 100
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use qymux_conformance::{Pki, payload, sha256};
use qymux_dialer::Listener;
use qymux_transport::{BoxSession, Mode, Options, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Far beyond any wait on loopback: a stream, close or slot that takes this long hangs.
const STREAM_HANG: Duration = Duration::from_secs(120);

/// Streams started per second, over all slots, unless `--rate` or `--stress` is given.
const DEFAULT_RATE: f64 = 1000.0;

/// The first dials of the slots are spread over at most this long (paced runs).
const MAX_RAMP: Duration = Duration::from_secs(10);

/// Soak: many sessions x many streams, cycling, against one dual listener.
#[derive(Debug, clap::Parser)]
#[command(name = "soak")]
struct Cli {
    /// How long the load runs, in minutes [default: 1 minute]
    #[arg(long, value_name = "N", conflicts_with = "seconds", value_parser = non_negative)]
    minutes: Option<f64>,
    /// How long the load runs, in seconds
    #[arg(long, value_name = "N", value_parser = non_negative)]
    seconds: Option<f64>,
    /// Concurrent session slots; each cycles its session
    #[arg(long, value_name = "N", default_value_t = 1000)]
    sessions: usize,
    /// Concurrent streams per session and round
    #[arg(long, value_name = "N", default_value_t = 10)]
    streams: usize,
    /// Largest payload of one stream; each stream sends a size up to it
    #[arg(long, value_name = "N", default_value_t = 16384)]
    bytes: usize,
    /// Streams started per second over all slots: each slot runs one round every
    /// sessions x streams / rate seconds [default: 1000]
    #[arg(long, value_name = "N", value_parser = positive, conflicts_with = "stress")]
    rate: Option<f64>,
    /// No pacing: every slot cycles flat out and all dial at once (overload on purpose;
    /// failures are expected on a small machine)
    #[arg(long)]
    stress: bool,
    /// both (half QUIC, half TCP), quic or tcp
    #[arg(long, default_value = "both", value_parser = parse_mode)]
    mode: Mode,
    /// The reference point for growth, in seconds [default: a fifth of the run, at
    /// least 5 s]
    #[arg(long, value_name = "N", value_parser = non_negative)]
    warmup_seconds: Option<f64>,
    /// Allowed RSS growth from warm-up to end [default: 64 MiB plus 10 % of the warm-up
    /// RSS]
    #[arg(long, value_name = "MB")]
    rss_tolerance_mb: Option<u64>,
    /// Allowed growth of open file descriptors [default: 2 % of the descriptors at
    /// warm-up, at least 32]
    #[arg(long, value_name = "N")]
    fd_tolerance: Option<usize>,
    /// Keep glibc's dynamic mmap threshold (by default the soak runs with
    /// MALLOC_MMAP_THRESHOLD_=131072, so that quinn's ~3 MiB per-endpoint receive
    /// buffers are mapped and given back)
    #[arg(long)]
    glibc_dynamic_mmap: bool,
}

fn non_negative(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("not a number: {text:?}"))
}

fn positive(text: &str) -> Result<f64, String> {
    let rate = non_negative(text)?;
    if rate > 0.0 {
        Ok(rate)
    } else {
        Err("must be above 0 (--stress runs unpaced)".into())
    }
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    match text {
        "both" | "auto" => Ok(Mode::Auto),
        "quic" => Ok(Mode::Quic),
        "tcp" => Ok(Mode::Tcp),
        other => Err(format!("expected both, quic or tcp: {other}")),
    }
}

#[derive(Debug, Clone)]
struct Args {
    duration: Duration,
    sessions: usize,
    streams: usize,
    bytes: usize,
    mode: Mode,
    /// Streams per second over all slots; `None` is `--stress` (no pacing).
    rate: Option<f64>,
    glibc_dynamic_mmap: bool,
    warmup: Option<Duration>,
    rss_tolerance_mb: Option<u64>,
    fd_tolerance: Option<usize>,
}

impl From<Cli> for Args {
    fn from(cli: Cli) -> Self {
        let seconds = match (cli.minutes, cli.seconds) {
            (Some(minutes), _) => minutes * 60.0,
            (None, Some(seconds)) => seconds,
            (None, None) => 60.0,
        };
        Args {
            duration: Duration::from_secs_f64(seconds),
            sessions: cli.sessions.max(1),
            streams: cli.streams.max(1),
            bytes: cli.bytes.max(1),
            mode: cli.mode,
            rate: (!cli.stress).then_some(cli.rate.unwrap_or(DEFAULT_RATE)),
            glibc_dynamic_mmap: cli.glibc_dynamic_mmap,
            warmup: cli.warmup_seconds.map(Duration::from_secs_f64),
            rss_tolerance_mb: cli.rss_tolerance_mb,
            fd_tolerance: cli.fd_tolerance,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Resources of this process.

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    rss_kib: u64,
    fds: usize,
    client_sessions: usize,
    server_sessions: usize,
    /// Datagrams the kernel dropped on the server's UDP socket (receive buffer full).
    udp_drops: u64,
}

/// The drop counter of the UDP socket bound to `port`, from `/proc/net/udp` and `udp6`.
fn udp_drops(port: u16) -> u64 {
    let port = format!(":{port:04X}");
    ["/proc/net/udp", "/proc/net/udp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local = fields.get(1)?;
                    if !local.ends_with(&port) {
                        return None;
                    }
                    fields.last()?.parse::<u64>().ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The system-wide count of UDP datagrams dropped for a full receive buffer.
fn rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = udp.next()?.split_whitespace().collect();
    let values: Vec<&str> = udp.next()?.split_whitespace().collect();
    let at = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(at)?.parse().ok()
}

/// glibc reads this at start-up: a fixed mmap threshold (it also turns off the dynamic
/// one), so that allocations of 128 KiB and more are mapped, and unmapped when freed.
const MMAP_THRESHOLD_ENV: &str = "MALLOC_MMAP_THRESHOLD_";

/// Runs this program again with a fixed glibc mmap threshold, unless it has one or
/// `--glibc-dynamic-mmap` was given; the exit code of that run, if it ran.
fn rerun_with_fixed_mmap_threshold(args: &Args) -> Option<ExitCode> {
    if args.glibc_dynamic_mmap
        || std::env::var_os(MMAP_THRESHOLD_ENV).is_some()
        || !cfg!(all(target_os = "linux", target_env = "gnu"))
    {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MMAP_THRESHOLD_ENV, "131072")
        .status()
        .ok()?;
    Some(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Totals {
    streams: AtomicU64,
    bytes: AtomicU64,
    sessions_dialed: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
    client_live: AtomicUsize,
    /// The server's port (its UDP socket's drops are watched).
    port: u16,
    /// Live server sessions, watched so that tear-down can wait for them to end.
    server_live: watch::Sender<usize>,
    /// Errors by kind (the message without addresses and numbers).
    kinds: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Totals {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            rss_kib: rss_kib(),
            fds: open_fds(),
            client_sessions: self.client_live.load(Ordering::SeqCst),
            server_sessions: *self.server_live.borrow(),
            udp_drops: udp_drops(self.port),
        }
    }

    fn error(&self, what: impl std::fmt::Display) {
        let what = what.to_string();
        // The first few in full (all of them, with a time, under RUST_LOG); the rest are
        // counted by kind.
        if self.errors.fetch_add(1, Ordering::SeqCst) < 10 {
            eprintln!("error: {what}");
        }
        tracing::warn!(target: "soak", "error: {what}");
        let kind: String = what
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        *kinds.entry(kind).or_default() += 1;
    }

    fn print(&self, label: &str, s: Snapshot, started: Instant, rate: Option<f64>) {
        let rate = rate.map_or(String::new(), |r| format!("  {r:>6.0} streams/s"));
        println!(
            "[{:>7.1}s] {label:<9} rss {:>7.1} MiB  fds {:>6}  live sessions {:>5} client / {:>5} server  \
             streams {:>9}{rate}  bytes verified {:>13}  sessions dialed {:>7}  udp drops {}  \
             mismatches {}  errors {}",
            started.elapsed().as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.client_sessions,
            s.server_sessions,
            self.streams.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
            self.sessions_dialed.load(Ordering::SeqCst),
            s.udp_drops,
            self.mismatches.load(Ordering::SeqCst),
            self.errors.load(Ordering::SeqCst),
        );
    }
}

/// Counts a live session while it exists.
struct Live(Arc<Totals>, bool);

impl Live {
    fn new(totals: &Arc<Totals>, server: bool) -> Live {
        if server {
            totals.server_live.send_modify(|n| *n += 1);
        } else {
            totals.client_live.fetch_add(1, Ordering::SeqCst);
        }
        Live(totals.clone(), server)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.1 {
            self.0.server_live.send_modify(|n| *n -= 1);
        } else {
            self.0.client_live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server and the clients.

fn server_options() -> Options {
    let mut o = Options::default();
    // As long as the clients wait: with a shorter bound the server gives up handshakes
    // that the clients still wait for (under --stress), and the dials fail with the
    // server's abort or a stateless reset. All clients share one address, so the
    // per-source cap and the first-flight deadline are as wide.
    o.max_pending_handshakes(8192)
        .max_pending_per_source(8192)
        .handshake_timeout(Duration::from_secs(60))
        .first_flight_timeout(Duration::from_secs(60));
    o
}

fn client_options() -> Options {
    let mut o = Options::default();
    // Thousands of handshakes start at once on a small machine.
    o.connect_timeout(Duration::from_secs(60))
        .handshake_timeout(Duration::from_secs(60));
    o
}

fn serve(listener: Arc<Listener>, totals: Arc<Totals>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            let totals = totals.clone();
            tokio::spawn(async move {
                let _live = Live::new(&totals, true);
                let echo = {
                    let session = session.clone();
                    tokio::spawn(async move {
                        while let Ok(mut stream) = session.accept().await {
                            tokio::spawn(async move {
                                let (mut r, mut w) = tokio::io::split(&mut stream);
                                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                                    let _ = w.shutdown().await;
                                }
                            });
                        }
                    })
                };
                let reason = session.closed().await;
                echo.abort();
                if !reason.is_clean() {
                    totals.error(format!(
                        "server session ended (client {}): {reason}",
                        session.remote_addr()
                    ));
                }
            });
        }
    })
}

async fn dial(addr: &str, pki: &Pki, quic: bool) -> qymux_transport::Result<BoxSession> {
    let tls = pki.client_tls();
    if quic {
        qymux_quic::dial(addr, "localhost", tls, &client_options())
            .await
            .map(BoxSession::new)
    } else {
        qymux_tcp::dial(addr, "localhost", tls, &client_options())
            .await
            .map(BoxSession::new)
    }
}

/// One stream: open, write, echo, verify.
async fn one_stream(session: &BoxSession, seed: u64, max_bytes: usize, totals: &Totals) {
    let len = 1 + (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % max_bytes;
    let data = payload(seed, len);
    let result = async {
        let mut stream = session.open().await?;
        let (mut r, mut w) = tokio::io::split(&mut stream);
        let (written, read) = tokio::join!(
            async {
                w.write_all(&data).await?;
                w.shutdown().await
            },
            async {
                let mut got = Vec::with_capacity(len);
                r.read_to_end(&mut got).await.map(|_| got)
            }
        );
        written?;
        read
    };
    // A stream that makes no progress for this long is stuck: count it, do not hang.
    let result = match tokio::time::timeout(STREAM_HANG, result).await {
        Ok(result) => result,
        Err(_) => {
            totals.error(format!(
                "stream stuck for {STREAM_HANG:?} (open, echo or EOF never came)"
            ));
            return;
        }
    };
    match result {
        Ok(got) if got.len() == data.len() && sha256(&got) == sha256(&data) => {
            totals.streams.fetch_add(1, Ordering::Relaxed);
            totals.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(got) => {
            totals.mismatches.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "MISMATCH: stream of {len} bytes came back as {} bytes with another checksum",
                got.len()
            );
        }
        Err(e) => totals.error(format!(
            "stream (client port {}): {e}",
            session.local_addr().port()
        )),
    }
}

/// When a slot runs its rounds: one every `interval`, from `next` on. A round that ends
/// late is not made up for (no bursts after a stall).
struct Pace {
    next: tokio::time::Instant,
    interval: Duration,
}

impl Pace {
    /// Waits for the next round; false if `stop` came first.
    async fn wait(pace: &mut Option<Pace>, stop: &mut watch::Receiver<bool>) -> bool {
        if let Some(pace) = pace {
            let at = pace.next;
            let now = tokio::time::Instant::now();
            pace.next = at.max(now) + pace.interval;
            if at > now {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    _ = stop.wait_for(|stop| *stop) => return false,
                }
            }
        }
        !*stop.borrow()
    }
}

/// One session slot: dial, a few rounds of streams, close; again until `stop`.
async fn slot(
    index: usize,
    args: Arc<Args>,
    addr: String,
    pki: Arc<Pki>,
    totals: Arc<Totals>,
    mut stop: watch::Receiver<bool>,
    mut pace: Option<Pace>,
) {
    let quic = match args.mode {
        Mode::Quic => true,
        Mode::Tcp => false,
        _ => index.is_multiple_of(2),
    };
    let mut generation = 0u64;
    // The first dial at this slot's place in the spread; the next dial follows each close
    // at once, so the slot always holds a session, and the rounds keep the pace.
    if !Pace::wait(&mut pace, &mut stop).await {
        return;
    }
    let mut first_round = true;
    while !*stop.borrow() {
        let session = match dial(&addr, &pki, quic).await {
            Ok(s) => s,
            Err(e) => {
                totals.error(format!("dial ({}): {e}", if quic { "quic" } else { "tcp" }));
                continue;
            }
        };
        totals.sessions_dialed.fetch_add(1, Ordering::Relaxed);
        let live = Live::new(&totals, false);
        // Sessions live for 1 to 8 rounds, so that they cycle at different times.
        let rounds = 1 + (index as u64 * 7 + generation) % 8;
        for round in 0..rounds {
            if !std::mem::take(&mut first_round) && !Pace::wait(&mut pace, &mut stop).await {
                break;
            }
            let base = ((index as u64) << 40) | (generation << 20) | (round << 8);
            let streams = (0..args.streams as u64)
                .map(|s| one_stream(&session, base | s, args.bytes, &totals));
            futures::future::join_all(streams).await;
        }
        if tokio::time::timeout(STREAM_HANG, session.close())
            .await
            .is_err()
        {
            totals.error("session close stuck");
        }
        drop(live);
        generation += 1;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` with 0 (clap's codes).
    let args = Arc::new(Args::from(<Cli as clap::Parser>::parse()));
    if let Some(code) = rerun_with_fixed_mmap_threshold(&args) {
        return code;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let started = Instant::now();
    let pki = Arc::new(Pki::new());
    let listener = Arc::new(
        Listener::bind(
            "127.0.0.1:0",
            pki.server_tls(),
            server_options(),
            Mode::Auto,
        )
        .await
        .expect("bind the listener"),
    );
    let addr = listener.local_addr().to_string();
    let totals = Arc::new(Totals {
        streams: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        sessions_dialed: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        client_live: AtomicUsize::new(0),
        port: listener.local_addr().port(),
        server_live: watch::Sender::new(0),
        kinds: Default::default(),
    });
    let server = serve(listener.clone(), totals.clone());
    println!(
        "soak: {} sessions x {} streams (up to {} bytes each), mode {}, {:?}, server {addr}",
        args.sessions,
        args.streams,
        args.bytes,
        match args.mode {
            Mode::Quic => "quic",
            Mode::Tcp => "tcp",
            _ => "both (half QUIC, half TCP)",
        },
        args.duration,
    );
    // Each slot runs one round every `interval`; their first rounds are spread.
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64((args.sessions * args.streams) as f64 / rate));
    match (args.rate, interval) {
        (Some(rate), Some(interval)) => println!(
            "pacing: target {rate} streams/s: each slot one round every {interval:.2?}, \
             first dials spread over {:.2?}",
            interval.min(MAX_RAMP)
        ),
        _ => println!("pacing: none (--stress): every slot cycles flat out"),
    }
    println!(
        "allocator: {}",
        match std::env::var(MMAP_THRESHOLD_ENV) {
            Ok(v) => format!("glibc mmap threshold fixed at {v} bytes ({MMAP_THRESHOLD_ENV})"),
            Err(_) => "glibc default (dynamic mmap threshold)".to_owned(),
        }
    );
    let rcvbuf_errors_at_start = rcvbuf_errors();
    let start = totals.snapshot();
    totals.print("start", start, started, None);

    let (stop, stop_rx) = watch::channel(false);
    let slots: Vec<_> = (0..args.sessions)
        .map(|i| {
            let pace = interval.map(|interval| {
                let spread = interval
                    .min(MAX_RAMP)
                    .mul_f64(i as f64 / args.sessions as f64);
                Pace {
                    next: tokio::time::Instant::now() + spread,
                    interval,
                }
            });
            tokio::spawn(slot(
                i,
                args.clone(),
                addr.clone(),
                pki.clone(),
                totals.clone(),
                stop_rx.clone(),
                pace,
            ))
        })
        .collect();

    let warmup = args
        .warmup
        .unwrap_or((args.duration / 5).max(Duration::from_secs(5)))
        .min(args.duration);
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let warm_at = started + warmup;
    let end_at = started + args.duration;
    let mut warm: Option<Snapshot> = None;
    let mut warm_streams = (started, 0u64);
    // The rate since the previous line.
    let mut last = (Instant::now(), 0u64);
    let mut rate_since_last = || {
        let now = (Instant::now(), totals.streams.load(Ordering::SeqCst));
        let secs = now.0.duration_since(last.0).as_secs_f64();
        let rate = (now.1 - last.1) as f64 / secs.max(1e-3);
        last = now;
        Some(rate)
    };
    loop {
        let next_tick = ticker.tick();
        tokio::pin!(next_tick);
        let now = Instant::now();
        if warm.is_none() && now >= warm_at {
            let s = totals.snapshot();
            totals.print("warm-up", s, started, rate_since_last());
            warm = Some(s);
            warm_streams = (Instant::now(), totals.streams.load(Ordering::SeqCst));
        }
        if now >= end_at {
            break;
        }
        let wake = if warm.is_none() { warm_at } else { end_at };
        tokio::select! {
            _ = &mut next_tick => {
                totals.print("progress", totals.snapshot(), started, rate_since_last())
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    let end = totals.snapshot();
    totals.print("end", end, started, rate_since_last());
    let warm = warm.unwrap_or(end);
    let load_secs = started.elapsed().as_secs_f64();
    let streams_at_end = totals.streams.load(Ordering::SeqCst);
    let bytes_at_end = totals.bytes.load(Ordering::SeqCst);
    let after_warmup = Instant::now().duration_since(warm_streams.0).as_secs_f64();
    let rcvbuf_errors_during = rcvbuf_errors()
        .zip(rcvbuf_errors_at_start)
        .map(|(end, start)| end.saturating_sub(start));

    // Tear down: every slot finishes its round and closes its session; the server's
    // sessions end with them.
    stop.send_replace(true);
    // Each slot finishes its round; a dial, a stream and a close are each bounded, so a
    // slot still busy after all of them is stuck.
    let slot_bound = 2 * client_options().connect_timeout + 3 * STREAM_HANG;
    let finished = tokio::time::timeout(slot_bound, futures::future::join_all(slots)).await;
    match finished {
        Ok(results) => {
            for r in results {
                if let Err(e) = r {
                    totals.error(format!("a session slot panicked: {e}"));
                }
            }
        }
        Err(_) => totals.error(format!(
            "session slots still busy {slot_bound:?} after the end"
        )),
    }
    let mut server_live = totals.server_live.subscribe();
    let ended =
        tokio::time::timeout(Duration::from_secs(30), server_live.wait_for(|n| *n == 0)).await;
    if ended.is_err() {
        eprintln!("warning: server sessions still live 30 s after the clients closed");
    }
    // A session's socket closes when its driver task finishes, just after the session
    // reports its end; a dialed QUIC session's UDP socket only when its connection has
    // drained (three probe timeouts, which grow long after heavy loss, as under --stress).
    // There is no event for either, so look until they are gone, for up to a minute.
    let settle_from = Instant::now();
    let mut settled = totals.snapshot();
    while settled.fds > start.fds + 8 && settle_from.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = totals.snapshot();
    }
    if settle_from.elapsed() >= Duration::from_secs(1) {
        println!(
            "sockets closed {:.1?} after the sessions ended",
            settle_from.elapsed()
        );
    }
    totals.print("torn down", settled, started, None);
    listener.close();
    server.abort();
    println!(
        "achieved: {:.0} streams/s over the load ({:.0} streams/s after warm-up; target {}), \
         {:.1} MB/s verified, {:.1} sessions dialed/s",
        streams_at_end as f64 / load_secs,
        streams_at_end.saturating_sub(warm_streams.1) as f64 / after_warmup.max(1e-3),
        args.rate
            .map_or("none, --stress".to_owned(), |r| format!("{r}")),
        bytes_at_end as f64 / load_secs / 1e6,
        totals.sessions_dialed.load(Ordering::SeqCst) as f64 / load_secs,
    );
    println!(
        "udp drops: {} on the server's socket; {} in the whole system during the load \
         (RcvbufErrors, other processes included)",
        end.udp_drops,
        rcvbuf_errors_during.map_or("unknown".to_owned(), |n| n.to_string()),
    );

    // Verdict.
    let mut failed = Vec::new();
    let mismatches = totals.mismatches.load(Ordering::SeqCst);
    let errors = totals.errors.load(Ordering::SeqCst);
    if mismatches > 0 {
        failed.push(format!("{mismatches} data mismatches"));
    }
    if errors > 0 {
        failed.push(format!("{errors} errors"));
        let kinds = totals.kinds.lock().unwrap_or_else(|p| p.into_inner());
        println!("errors by kind:");
        for (kind, n) in kinds.iter() {
            println!("  {n:>8}  {kind}");
        }
    }
    if totals.streams.load(Ordering::SeqCst) == 0 {
        failed.push("no stream completed".to_owned());
    }
    let rss_tolerance_kib = match args.rss_tolerance_mb {
        Some(mb) => mb * 1024,
        None => 64 * 1024 + warm.rss_kib / 10,
    };
    let rss_growth = end.rss_kib.saturating_sub(warm.rss_kib);
    println!(
        "growth from warm-up to end: rss {:+.1} MiB (tolerance {:.1} MiB), fds {:+} (tolerance {})",
        (end.rss_kib as f64 - warm.rss_kib as f64) / 1024.0,
        rss_tolerance_kib as f64 / 1024.0,
        end.fds as i64 - warm.fds as i64,
        args.fd_tolerance.unwrap_or((warm.fds / 50).max(32)),
    );
    if rss_growth > rss_tolerance_kib {
        failed.push(format!(
            "RSS grew by {:.1} MiB between warm-up and end",
            rss_growth as f64 / 1024.0
        ));
    }
    let fd_tolerance = args.fd_tolerance.unwrap_or((warm.fds / 50).max(32));
    if end.fds > warm.fds + fd_tolerance {
        failed.push(format!(
            "open file descriptors grew from {} to {}",
            warm.fds, end.fds
        ));
    }
    if settled.client_sessions > 0 || settled.server_sessions > 0 {
        failed.push(format!(
            "sessions left after tear-down: {} client, {} server",
            settled.client_sessions, settled.server_sessions
        ));
    }
    if settled.fds > start.fds + 8 {
        failed.push(format!(
            "file descriptors left after tear-down: {} (start {})",
            settled.fds, start.fds
        ));
    }
    if failed.is_empty() {
        println!("soak: PASS");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAIL: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
