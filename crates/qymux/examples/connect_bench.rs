//! Time to a usable session, in Auto mode and plain TCP, on loopback.
//!
//! Run: `cargo run --release --example connect_bench [-- --rounds N] [--json PATH]`
//!
//! One process runs two servers on 127.0.0.1 and dials them `N` times (default 20, after
//! one warm-up round that is not counted). What is timed, per dial: from the start of
//! `dial()` until the session is usable, i.e. the dial returned, one stream was opened
//! and one byte made the round trip through the server's echo on it.
//!
//! - a) Auto mode against a server with QUIC and TCP on one port (expect QUIC); a fresh
//!   `Qymux` each round.
//! - b) Auto mode against a server whose UDP port is blackholed (a UDP socket bound on
//!   the port that never answers): the first dial of a fresh `Qymux`, so nothing is
//!   remembered; QUIC gets the 250 ms attempt delay, then TCP joins and wins.
//! - c) the same `Qymux` as b, dialing again: the QUIC failure is remembered, TCP starts
//!   at once.
//! - d) `Mode::Tcp`, a plain TCP + TLS + yamux dial to the same server.
//! - e) (for information) Auto against the blackholed server by a dialer that measured a
//!   QUIC round-trip time to that address before: the attempt delay is then 1.5 × RTT,
//!   at least 10 ms, instead of 250 ms.
//!
//! Before each timed dial the process pauses for 10 ms (not timed), so that the previous
//! dial's leftovers do not run during the next one.
//!
//! It prints median / p90 / min / max per case and the two targets: b − d < 350 ms and
//! c / d ≤ 1.2 (medians). The numbers also go to `target/connect_bench.json`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use qymux::cert::CertificateAuthority;
use qymux::dialer::{Dialer, TransportMemory};
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, Config, Listener, Mode, Protocol, Qymux, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USAGE: &str = "usage: connect_bench [--rounds N] [--json PATH]\n\
  --rounds N    measured dials per case (default 20; one warm-up round is added)\n\
  --json PATH   where to write the numbers (default target/connect_bench.json)";

/// Target: the first Auto dial to a blackholed UDP port costs less than this much more
/// than a plain TCP dial.
const FALLBACK_EXTRA_MS: f64 = 350.0;
/// Pause (not timed) before each measured dial.
const SETTLE: Duration = Duration::from_millis(10);
/// Target: once the failure is remembered, an Auto dial takes at most this × plain TCP.
const REMEMBERED_RATIO: f64 = 1.2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaseId {
    A,
    B,
    C,
    D,
    E,
}

const CASES: [(CaseId, &str, &str); 5] = [
    (CaseId::A, "a_auto_quic", "a) Auto, server with QUIC"),
    (
        CaseId::B,
        "b_auto_blackholed_first",
        "b) Auto, UDP blackholed, 1st dial",
    ),
    (
        CaseId::C,
        "c_auto_blackholed_remembered",
        "c) Auto, UDP blackholed, remembered",
    ),
    (CaseId::D, "d_plain_tcp", "d) Mode::Tcp, plain TCP dial"),
    (
        CaseId::E,
        "e_auto_blackholed_rtt_known",
        "e) Auto, blackholed, QUIC RTT known",
    ),
];

#[derive(Debug, Default)]
struct Samples {
    /// Dial start to the 1-byte echo, ms.
    usable: Vec<f64>,
    /// Dial start to `dial()` returning, ms.
    dialed: Vec<f64>,
    protocols: Vec<Protocol>,
}

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    p90: f64,
    min: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Stats {
            median: percentile(&v, 0.5),
            p90: percentile(&v, 0.9),
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Linear interpolation between the closest ranks of sorted `v`.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = (v.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// "quic", "tcp", or a count of each when a case ended on both.
fn protocols(p: &[Protocol]) -> String {
    let quic = p.iter().filter(|p| **p == Protocol::Quic).count();
    let tcp = p.len() - quic;
    match (quic, tcp) {
        (_, 0) => "quic".into(),
        (0, _) => "tcp".into(),
        _ => format!("quic×{quic} tcp×{tcp}"),
    }
}

#[derive(Debug)]
struct Args {
    rounds: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Option<Args>> {
    let mut args = Args {
        rounds: 20,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--rounds" => {
                let v = it.next().context("--rounds needs a value")?;
                args.rounds = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("--rounds {v:?}: expected a number ≥ 1"))?;
            }
            "--json" => args.json = Some(it.next().context("--json needs a path")?.into()),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(args))
}

/// Accepts sessions and echoes their streams; each session is held until it ends (a
/// dropped session would be closed).
fn serve(listener: Listener) {
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(stream) = session.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(stream);
                        if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                            let _ = w.shutdown().await;
                        }
                    });
                }
            });
        }
    });
}

#[derive(Debug)]
struct Sample {
    usable: Duration,
    dialed: Duration,
    protocol: Protocol,
}

/// Times `dial` until the session is usable: dialed, a stream opened, one byte echoed.
/// Then finishes the stream and closes the session (not timed).
async fn measure(dial: impl Future<Output = qymux::Result<BoxSession>>) -> anyhow::Result<Sample> {
    // Let the previous dial's leftovers (closing sessions, a dropped QUIC attempt, the
    // server's tasks) finish first, so that each dial starts from a quiet process.
    tokio::time::sleep(SETTLE).await;
    let start = Instant::now();
    let session = dial.await.context("dial")?;
    let dialed = start.elapsed();
    let mut stream = session.open().await.context("open")?;
    stream.write_all(&[42]).await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.context("echo")?;
    let usable = start.elapsed();
    anyhow::ensure!(byte == [42], "wrong echo");

    stream.shutdown().await?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await?;
    let protocol = session.protocol();
    session.close().await;
    Ok(Sample {
        usable,
        dialed,
        protocol,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `target/` of this build: `CARGO_TARGET_DIR`, else the directory above
/// `<profile>/examples/` that holds this binary, else `./target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let examples = exe.parent()?;
            (examples.file_name()? == "examples")
                .then(|| examples.parent()?.parent().map(Into::into))?
        })
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_numbers(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
    format!("[{}]", items.join(", "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };

    let ca = CertificateAuthority::new("connect_bench CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?);
    let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]);

    // A server with QUIC and TCP on one port.
    let with_quic = Qymux::new(Config::new().server_tls(server_tls.clone()))
        .listen("127.0.0.1:0")
        .await?;
    let quic_addr = with_quic.local_addr().to_string();
    serve(with_quic);

    // A server with TCP only, and a UDP socket on its port that receives and never answers.
    let tcp_only = Qymux::new(Config::new().mode(Mode::Tcp).server_tls(server_tls))
        .listen("127.0.0.1:0")
        .await?;
    let blackholed_addr = tcp_only.local_addr().to_string();
    let _blackhole =
        std::net::UdpSocket::bind(tcp_only.local_addr()).context("binding the UDP blackhole")?;
    serve(tcp_only);

    let config = |addr: &str, mode: Mode| {
        Config::new()
            .mode(mode)
            .server_addr(addr)
            .server_name("localhost")
            .client_tls(client_tls.clone())
    };
    // TCP mode remembers nothing, so one `Qymux` serves every round of d.
    let plain_tcp = Qymux::new(config(&blackholed_addr, Mode::Tcp));

    // For e: a QUIC round-trip time actually measured on this loopback.
    let probe = Dialer::new(quic_addr.clone(), "localhost", client_tls.build()?);
    let s = probe.dial().await?;
    let rtt = probe
        .transport_memory()
        .quic_rtt(&quic_addr)
        .context("no QUIC RTT recorded")?;
    s.close().await;
    let e_delay = (rtt * 3 / 2).clamp(Duration::from_millis(10), Duration::from_secs(2));
    let client_config = client_tls.build()?;

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = cpu_model();
    println!(
        "qymux connect_bench: {} rounds (+1 warm-up), loopback, {cpus} CPUs, {cpu}",
        args.rounds
    );
    println!("with QUIC: {quic_addr}   UDP blackholed: {blackholed_addr}");
    println!(
        "QUIC RTT measured by a probe dial: {:.3} ms (case e's attempt delay: {:.1} ms)",
        ms(rtt),
        ms(e_delay)
    );
    println!("timed: dial start → session + 1 new stream + 1-byte echo round trip\n");

    let mut samples: Vec<Samples> = CASES.iter().map(|_| Samples::default()).collect();
    let order = [CaseId::A, CaseId::B, CaseId::D, CaseId::E];
    for round in 0..=args.rounds {
        let warm_up = round == 0;
        // Rotate the order so no case always runs right after another.
        for step in 0..order.len() {
            let case = order[(round + step) % order.len()];
            let results: Vec<(CaseId, Sample)> = match case {
                CaseId::A => {
                    let q = Qymux::new(config(&quic_addr, Mode::Auto));
                    vec![(CaseId::A, measure(q.dial()).await?)]
                }
                CaseId::B | CaseId::C => {
                    let q = Qymux::new(config(&blackholed_addr, Mode::Auto));
                    let first = measure(q.dial()).await?;
                    let again = measure(q.dial()).await?;
                    vec![(CaseId::B, first), (CaseId::C, again)]
                }
                CaseId::D => vec![(CaseId::D, measure(plain_tcp.dial()).await?)],
                CaseId::E => {
                    let memory = Arc::new(TransportMemory::default());
                    memory.quic_worked(&blackholed_addr, rtt);
                    let dialer =
                        Dialer::new(blackholed_addr.clone(), "localhost", client_config.clone())
                            .memory(memory);
                    vec![(CaseId::E, measure(dialer.dial()).await?)]
                }
            };
            if warm_up {
                continue;
            }
            for (id, sample) in results {
                let index = CASES.iter().position(|(c, _, _)| *c == id).unwrap_or(0);
                let s = &mut samples[index];
                s.usable.push(ms(sample.usable));
                s.dialed.push(ms(sample.dialed));
                s.protocols.push(sample.protocol);
            }
        }
    }

    let stats: Vec<Stats> = samples.iter().map(|s| Stats::of(&s.usable)).collect();
    println!(
        "{:<40} {:>5} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "case (ms)", "proto", "median", "p90", "min", "max", "dial med."
    );
    for (((_, _, label), s), st) in CASES.iter().zip(&samples).zip(&stats) {
        println!(
            "{label:<40} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>10.2}",
            protocols(&s.protocols),
            st.median,
            st.p90,
            st.min,
            st.max,
            Stats::of(&s.dialed).median
        );
    }

    let (b, c, d) = (stats[1].median, stats[2].median, stats[3].median);
    let extra = b - d;
    let ratio = c / d;
    let extra_met = extra < FALLBACK_EXTRA_MS;
    let ratio_met = ratio <= REMEMBERED_RATIO;
    let verdict = |met: bool| if met { "MET" } else { "NOT MET" };
    println!();
    println!(
        "b − d = {extra:7.1} ms   target < {FALLBACK_EXTRA_MS} ms more than a plain TCP dial   {}",
        verdict(extra_met)
    );
    println!(
        "c / d = {ratio:7.2}      target ≤ {REMEMBERED_RATIO} × plain TCP                     {}",
        verdict(ratio_met)
    );

    // JSON.
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"rounds\": {},", args.rounds);
    json.push_str("  \"warmup_rounds\": 1,\n");
    json.push_str(
        "  \"timed\": \"dial start to session + one new stream + 1-byte echo round trip\",\n",
    );
    let _ = writeln!(json, "  \"cpus\": {cpus},");
    let _ = writeln!(json, "  \"cpu_model\": {},", json_string(&cpu));
    let _ = writeln!(json, "  \"quic_rtt_ms\": {:.4},", ms(rtt));
    json.push_str("  \"cases\": {\n");
    for (i, (((_, key, label), s), st)) in CASES.iter().zip(&samples).zip(&stats).enumerate() {
        let dialed = Stats::of(&s.dialed);
        let _ = writeln!(
            json,
            "    \"{key}\": {{\"label\": {}, \"protocol\": {}, \"median_ms\": {:.3}, \
             \"p90_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}, \
             \"dial_median_ms\": {:.3}, \"samples_ms\": {}}}{}",
            json_string(label),
            json_string(&protocols(&s.protocols)),
            st.median,
            st.p90,
            st.min,
            st.max,
            dialed.median,
            json_numbers(&s.usable),
            if i + 1 < CASES.len() { "," } else { "" }
        );
    }
    json.push_str("  },\n");
    let _ = writeln!(
        json,
        "  \"targets\": {{\"b_minus_d_ms\": {extra:.3}, \"b_minus_d_target_ms\": {FALLBACK_EXTRA_MS}, \
         \"b_minus_d_met\": {extra_met}, \"c_over_d\": {ratio:.4}, \"c_over_d_target\": {REMEMBERED_RATIO}, \
         \"c_over_d_met\": {ratio_met}}}"
    );
    json.push_str("}\n");
    let path = args
        .json
        .unwrap_or_else(|| target_dir().join("connect_bench.json"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("\nwrote {}", path.display());
    Ok(())
}
