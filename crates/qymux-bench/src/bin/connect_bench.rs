//! Time to a usable session, in Auto mode and plain TCP, on loopback.
//!
//! Run: `cargo run --release -p qymux-bench --bin connect_bench [-- --rounds N] [--json PATH]`
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

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use qymux::cert::CertificateAuthority;
use qymux::dialer::{Dialer, TransportMemory};
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, Config, Listener, Mode, Protocol, Qymux, Session};
use qymux_bench::{ConnectCase, ConnectReport, ConnectTargets};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        Stats {
            median: qymux_bench::median(values),
            p90: qymux_bench::quantile(values, 0.9),
            min: qymux_bench::quantile(values, 0.0),
            max: qymux_bench::quantile(values, 1.0),
        }
    }
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

/// Time to a usable session, in Auto mode and plain TCP, on loopback.
#[derive(Debug, clap::Parser)]
#[command(name = "connect_bench")]
struct Args {
    /// Measured dials per case (one warm-up round is added)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Where to write the numbers [default: target/connect_bench.json]
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
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

/// `target/` of this build: `CARGO_TARGET_DIR`, else the directory above the
/// `<profile>/` that holds this binary, else `./target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return dir.into();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let rounds = args.rounds as usize;

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
    for round in 0..=rounds {
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

    let cases = CASES
        .iter()
        .zip(&samples)
        .zip(&stats)
        .map(|(((_, key, label), s), st)| {
            let case = ConnectCase {
                label: (*label).to_owned(),
                protocol: protocols(&s.protocols),
                median_ms: st.median,
                p90_ms: st.p90,
                min_ms: st.min,
                max_ms: st.max,
                dial_median_ms: Stats::of(&s.dialed).median,
                samples_ms: s.usable.clone(),
            };
            ((*key).to_owned(), case)
        })
        .collect();
    let report = ConnectReport {
        rounds,
        warmup_rounds: 1,
        timed: "dial start to session + one new stream + 1-byte echo round trip".into(),
        cpus,
        cpu_model: cpu,
        quic_rtt_ms: ms(rtt),
        cases,
        targets: ConnectTargets {
            b_minus_d_ms: extra,
            b_minus_d_target_ms: FALLBACK_EXTRA_MS,
            b_minus_d_met: extra_met,
            c_over_d: ratio,
            c_over_d_target: REMEMBERED_RATIO,
            c_over_d_met: ratio_met,
        },
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
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
