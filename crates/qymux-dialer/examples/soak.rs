//! Soak test: many sessions × many streams, cycling, against one dual listener, for minutes.
//!
//! Every session slot dials (QUIC or TCP), runs a few rounds of `--streams` concurrent
//! streams (open, write, echo, verify by checksum, close), closes the session and dials
//! again, until the time is up. The resources of the process (RSS, open file descriptors,
//! live sessions) are printed at the start, after the warm-up, at the end of the load and
//! after tear-down, with the totals.
//!
//! It exits non-zero on any data mismatch, on any error (nothing should fail on
//! loopback), if RSS or file descriptors grew beyond the tolerance between the warm-up
//! point and the end of the load, or if file descriptors or sessions are left over after
//! tear-down.
//!
//! ```text
//! cargo xtask soak --minutes 5                    # 1000 sessions x 10 streams, QUIC and TCP
//! cargo run --release -p qymux-dialer --example soak -- --seconds 20 --sessions 100
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

const USAGE: &str = "\
usage: soak [--minutes N | --seconds N] [--sessions 1000] [--streams 10] [--bytes 16384]
            [--mode both|quic|tcp] [--warmup-seconds N] [--rss-tolerance-mb 64]
            [--fd-tolerance N]

  --minutes, --seconds   how long the load runs [default: 1 minute]
  --sessions             concurrent session slots; each cycles its session [default: 1000]
  --streams              concurrent streams per session and round [default: 10]
  --bytes                largest payload of one stream; each stream sends a size up to it
                         [default: 16384]
  --mode                 both (half QUIC, half TCP), quic or tcp [default: both]
  --warmup-seconds       the reference point for growth [default: a fifth of the run,
                         at least 5 s]
  --rss-tolerance-mb     allowed RSS growth from warm-up to end [default: 64 MiB plus
                         10 % of the warm-up RSS]
  --fd-tolerance         allowed growth of open file descriptors [default: 2 % of the
                         descriptors at warm-up, at least 32]
";

#[derive(Debug, Clone)]
struct Args {
    duration: Duration,
    sessions: usize,
    streams: usize,
    bytes: usize,
    mode: Mode,
    warmup: Option<Duration>,
    rss_tolerance_mb: Option<u64>,
    fd_tolerance: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        duration: Duration::from_secs(60),
        sessions: 1000,
        streams: 10,
        bytes: 16 * 1024,
        mode: Mode::Auto,
        warmup: None,
        rss_tolerance_mb: None,
        fd_tolerance: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (flag, None),
        };
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = match inline.or_else(|| it.next()) {
            Some(v) => v,
            None => return Err(format!("{flag} needs a value")),
        };
        let number = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| format!("{flag}: not a number: {value:?}"))
        };
        let count = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag}: not a count: {value:?}"))
        };
        match flag.as_str() {
            "--minutes" => args.duration = Duration::from_secs_f64(number()? * 60.0),
            "--seconds" => args.duration = Duration::from_secs_f64(number()?),
            "--sessions" => args.sessions = count()?.max(1),
            "--streams" => args.streams = count()?.max(1),
            "--bytes" => args.bytes = count()?.max(1),
            "--mode" => {
                args.mode = match value.as_str() {
                    "both" | "auto" => Mode::Auto,
                    "quic" => Mode::Quic,
                    "tcp" => Mode::Tcp,
                    other => return Err(format!("--mode: expected both, quic or tcp: {other}")),
                }
            }
            "--warmup-seconds" => args.warmup = Some(Duration::from_secs_f64(number()?)),
            "--rss-tolerance-mb" => args.rss_tolerance_mb = Some(count()? as u64),
            "--fd-tolerance" => args.fd_tolerance = Some(count()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------
// Resources of this process.

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    rss_kib: u64,
    fds: usize,
    client_sessions: usize,
    server_sessions: usize,
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
        }
    }

    fn error(&self, what: impl std::fmt::Display) {
        let what = what.to_string();
        // The first few in full; the rest are counted by kind.
        if self.errors.fetch_add(1, Ordering::SeqCst) < 10 {
            eprintln!("error: {what}");
        }
        let kind: String = what
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        *kinds.entry(kind).or_default() += 1;
    }

    fn print(&self, label: &str, s: Snapshot, started: Instant) {
        println!(
            "[{:>7.1}s] {label:<9} rss {:>7.1} MiB  fds {:>6}  live sessions {:>5} client / {:>5} server  \
             streams {:>9}  bytes verified {:>13}  sessions dialed {:>7}  mismatches {}  errors {}",
            started.elapsed().as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.client_sessions,
            s.server_sessions,
            self.streams.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
            self.sessions_dialed.load(Ordering::SeqCst),
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
    o.max_pending_handshakes(8192);
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
                    totals.error(format!("server session ended: {reason}"));
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
        Err(e) => totals.error(format!("stream: {e}")),
    }
}

/// One session slot: dial, a few rounds of streams, close; again until `stop`.
async fn slot(
    index: usize,
    args: Arc<Args>,
    addr: String,
    pki: Arc<Pki>,
    totals: Arc<Totals>,
    stop: watch::Receiver<bool>,
) {
    let quic = match args.mode {
        Mode::Quic => true,
        Mode::Tcp => false,
        _ => index.is_multiple_of(2),
    };
    let mut generation = 0u64;
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
            if *stop.borrow() {
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
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let totals = Arc::new(Totals {
        streams: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        sessions_dialed: AtomicU64::new(0),
        mismatches: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        client_live: AtomicUsize::new(0),
        server_live: watch::Sender::new(0),
        kinds: Default::default(),
    });
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
    let start = totals.snapshot();
    totals.print("start", start, started);

    let (stop, stop_rx) = watch::channel(false);
    let slots: Vec<_> = (0..args.sessions)
        .map(|i| {
            tokio::spawn(slot(
                i,
                args.clone(),
                addr.clone(),
                pki.clone(),
                totals.clone(),
                stop_rx.clone(),
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
    loop {
        let next_tick = ticker.tick();
        tokio::pin!(next_tick);
        let now = Instant::now();
        if warm.is_none() && now >= warm_at {
            let s = totals.snapshot();
            totals.print("warm-up", s, started);
            warm = Some(s);
        }
        if now >= end_at {
            break;
        }
        let wake = if warm.is_none() { warm_at } else { end_at };
        tokio::select! {
            _ = &mut next_tick => totals.print("progress", totals.snapshot(), started),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    let end = totals.snapshot();
    totals.print("end", end, started);
    let warm = warm.unwrap_or(end);

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
    // reports its end; there is no event for that, so look a few times.
    let mut settled = totals.snapshot();
    for _ in 0..50 {
        if settled.fds <= start.fds + 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = totals.snapshot();
    }
    totals.print("torn down", settled, started);
    listener.close();
    server.abort();

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
