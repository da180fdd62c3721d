//! `qymux-bench`: Qymux beside the stacks it should cost nothing over (raw rustls over
//! TCP, raw quinn), the Go original's stack (Go `crypto/tls` + hashicorp yamux), and
//! tonic straight over TCP. Run it through `cargo xtask bench` (release build).
//!
//! ```text
//! qymux-bench [--smoke] [--out DIR] [--only LIST] [--stacks LIST] [--no-go] [--rounds N]
//!             [--connect-bench PATH]
//! qymux-bench server --kind KIND --certs DIR     (started by the above)
//! ```
//!
//! Every server runs in its own process (this binary with `server`, or the Go program
//! `interop/go-bench`); the clients run in this process (the Go client in its own). All
//! on 127.0.0.1. Each figure is the median of several timed runs after untimed warm-up
//! runs (latencies: the median of every round trip of every run). Every measure checks
//! the data it moved (see `proto.rs`). A failed measure is reported and makes the exit
//! status non-zero; a missed target never does.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod alt;
mod grpc;
mod idle;
mod measure;
mod procs;
mod proto;
mod report;
mod server;
mod stacks;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use crate::measure::{Params, Samples};
use crate::procs::{GoClient, Server};
use crate::proto::Payload;
use crate::report::{Cell, Figure, Row, Table, Target};
use crate::stacks::{Certs, Client};

const MEASURES: &[&str] = &[
    "bulk", "rtt", "open-rtt", "opens", "streams", "grpc", "idle", "auto",
];

/// Qymux beside raw rustls, raw quinn, Go yamux and direct tonic.
#[derive(Debug, clap::Parser)]
#[command(
    name = "qymux-bench",
    args_conflicts_with_subcommands = true,
    after_help = "environment:\n  \
                  QYMUX_BENCH_RUNTIME=current  clients and Rust servers on single-threaded \
                  tokio runtimes (default: multi-threaded), to see what cross-thread \
                  wake-ups cost\n  \
                  QYMUX_BENCH_CLIENT=main      the clients on the main thread in block_on \
                  (default: a task on the runtime's workers)\n  \
                  QYMUX_BENCH_TCP_WINDOW=N     caps Qymux TCP's per-stream receive window \
                  at N bytes\n  \
                  QYMUX_BENCH_QUINN_STREAMS=N  raw quinn's stream limit"
)]
struct Cli {
    #[command(subcommand)]
    server: Option<ServerCommand>,
    #[command(flatten)]
    args: Args,
}

#[derive(Debug, clap::Subcommand)]
enum ServerCommand {
    /// One server process (the bench starts them).
    Server {
        /// The server to run
        #[arg(long)]
        kind: String,
        /// The certificates' directory
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Every measure for a fraction of a second (CI); writes to target/bench-smoke
    /// unless --out is given
    #[arg(long)]
    smoke: bool,
    /// Where results.json, results.svg and results.md go [default: docs/bench in the
    /// workspace]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Comma-separated measures [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(MEASURES.iter().copied()))]
    only: Option<Vec<String>>,
    /// Comma-separated columns of the stream measures [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(STACK_NAMES))]
    stacks: Option<Vec<String>>,
    /// Leave out the Go column
    #[arg(long)]
    no_go: bool,
    /// Run the stream and gRPC measures N times, each round with fresh servers; figures
    /// pool every round's samples, ratios show the range of the rounds' ratios
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    rounds: usize,
    /// The connect_bench binary (Auto mode's time to session) [default: connect_bench
    /// next to this binary]
    #[arg(long, value_name = "PATH")]
    connect_bench: Option<PathBuf>,
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("expected a number above 0, not {text:?}")),
    }
}

impl Args {
    fn wants_stack(&self, stack: &str) -> bool {
        self.stacks
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == stack))
    }

    fn wants(&self, measure: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|m| m == measure))
    }
}

fn main() -> ExitCode {
    // Usage errors exit with 2, `--help` with 0 (clap's codes).
    let cli = <Cli as clap::Parser>::parse();
    if let Some(ServerCommand::Server { kind, certs }) = cli.server {
        return match server::run(&kind, &Certs::in_dir(&certs)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: server {kind}: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli.args;
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The clients run as a task on the runtime's workers, as an application's code does
    // (and the Go client's goroutines do). `QYMUX_BENCH_CLIENT=main` runs them on the main
    // thread in `block_on` instead, the bench's setup before 2026-12-07: every wake-up of
    // the client is then a hand-off from a worker thread, which added 20–30 µs to a
    // Rust stack's open + round trip on a 2-core VM (see docs/bench/README.md).
    let res = if std::env::var("QYMUX_BENCH_CLIENT").as_deref() == Ok("main") {
        runtime.block_on(run(args))
    } else {
        runtime.block_on(async {
            tokio::spawn(run(args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the bench task failed: {e}")))
        })
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("error: some measures failed (see FAILED above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime of the clients and of every Rust server: multi-threaded (one worker
/// per CPU), or single-threaded with `QYMUX_BENCH_RUNTIME=current` (children inherit it).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    match std::env::var("QYMUX_BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The stream measures, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamMeasure {
    Bulk,
    Rtt,
    OpenRtt,
    Opens,
    Streams,
}

impl StreamMeasure {
    const ALL: [Self; 5] = [
        Self::Bulk,
        Self::Rtt,
        Self::OpenRtt,
        Self::Opens,
        Self::Streams,
    ];

    fn key(self) -> &'static str {
        match self {
            Self::Bulk => "bulk",
            Self::Rtt => "rtt",
            Self::OpenRtt => "open-rtt",
            Self::Opens => "opens",
            Self::Streams => "streams",
        }
    }

    fn row(self, cells: Vec<Cell>) -> Row {
        let (title, unit, higher_is_better) = match self {
            Self::Bulk => ("bulk, 1 stream", "MiB/s", true),
            Self::Rtt => ("64 B round trip", "µs", false),
            Self::OpenRtt => ("open + 64 B round trip", "µs", false),
            Self::Opens => ("open + round trip, 64 in flight", "opens/s", true),
            Self::Streams => ("bulk, 100 streams at once", "MiB/s", true),
        };
        Row {
            key: self.key(),
            title,
            unit,
            higher_is_better,
            cells,
        }
    }

    fn latency(self) -> bool {
        matches!(self, Self::Rtt | Self::OpenRtt)
    }
}

const STREAM_COLUMNS: [&str; 7] = [
    "raw rustls",
    "Qymux TCP",
    "raw quinn",
    "Qymux QUIC",
    "Go yamux",
    "yamux crate",
    "tokio-yamux",
];
/// Short names of the stream table's columns, for `--stacks`.
const STACK_NAMES: [&str; 7] = [
    "rustls",
    "tcp",
    "quinn",
    "quic",
    "go",
    "yamux",
    "tokio-yamux",
];
const RAW_TLS: usize = 0;
const QYMUX_TCP: usize = 1;
const RAW_QUIC: usize = 2;
const QYMUX_QUIC: usize = 3;
const GO: usize = 4;
const YAMUX_CRATE: usize = 5;
const TOKIO_YAMUX: usize = 6;

/// The bare crate of a column, if it is one of theirs.
fn bare_mux(column: usize) -> Option<alt::Mux> {
    match column {
        YAMUX_CRATE => Some(alt::Mux::YamuxCrate),
        TOKIO_YAMUX => Some(alt::Mux::TokioYamux),
        _ => None,
    }
}

/// The server kind of each Rust column (Go's server is Go's).
fn server_kind(column: usize) -> &'static str {
    match column {
        RAW_TLS => "raw-tls",
        QYMUX_TCP => "qymux-tcp",
        RAW_QUIC => "raw-quic",
        QYMUX_QUIC => "qymux-quic",
        _ => bare_mux(column).map_or("go", alt::Mux::server_kind),
    }
}

async fn connect(
    column: usize,
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Client> {
    Ok(match (column, bare_mux(column)) {
        (RAW_TLS, _) => Client::raw_tls(addr, tls).await,
        (QYMUX_TCP, _) => Client::qymux_tcp(addr, tls).await?,
        (RAW_QUIC, _) => Client::raw_quic(addr, tls).await?,
        (QYMUX_QUIC, _) => Client::qymux_quic(addr, tls).await?,
        (_, Some(mux)) => Client::Alt(alt::AltClient::connect(mux, addr, tls).await?),
        (_, None) => bail!("column {column} has no Rust client"),
    })
}

fn cell(result: Result<Samples>, latency: bool) -> Cell {
    match result {
        Ok(samples) => Cell::Value(Figure::of(&samples, latency)),
        Err(e) => Cell::Failed(format!("{e:#}")),
    }
}

async fn rust_cell(
    m: StreamMeasure,
    client: &Arc<Client>,
    p: &Params,
    payload: &Arc<Payload>,
) -> Cell {
    if matches!(**client, Client::RawTls { .. })
        && matches!(
            m,
            StreamMeasure::OpenRtt | StreamMeasure::Opens | StreamMeasure::Streams
        )
    {
        return Cell::Skipped("raw TLS has no streams".into());
    }
    let result = match m {
        StreamMeasure::Bulk => {
            measure::repeat(p.warmup, p.reps, || {
                measure::bulk(client, payload, p.bulk_bytes)
            })
            .await
        }
        StreamMeasure::Rtt => {
            measure::repeat_many(p.reps, || {
                measure::rtt(client, p.rtt_count / 10, p.rtt_count)
            })
            .await
        }
        StreamMeasure::OpenRtt => {
            measure::repeat_many(p.reps, || {
                measure::open_rtt(client, p.open_count / 10, p.open_count)
            })
            .await
        }
        StreamMeasure::Opens => {
            measure::repeat(p.warmup, p.reps, || {
                measure::opens(client, p.opens_count, p.opens_in_flight)
            })
            .await
        }
        StreamMeasure::Streams => {
            measure::repeat(p.warmup, p.reps, || {
                measure::streams(client, payload, p.streams, p.stream_bytes)
            })
            .await
        }
    };
    cell(result, m.latency())
}

async fn go_cell(m: StreamMeasure, go: &GoClient, p: &Params) -> Cell {
    let result = match m {
        StreamMeasure::Bulk => go.bulk(p.bulk_bytes, p.warmup, p.reps).await,
        StreamMeasure::Rtt => {
            go.latency("rtt", p.rtt_count / 10, p.rtt_count * p.reps)
                .await
        }
        StreamMeasure::OpenRtt => {
            go.latency("open-rtt", p.open_count / 10, p.open_count * p.reps)
                .await
        }
        StreamMeasure::Opens => {
            go.opens(p.opens_count, p.opens_in_flight, p.warmup, p.reps)
                .await
        }
        StreamMeasure::Streams => {
            go.streams(p.streams, p.stream_bytes, p.warmup, p.reps)
                .await
        }
    };
    cell(result, m.latency())
}

/// The single-session stream measures on the seven stacks, interleaved: for each
/// measure, each stack in turn (all servers run throughout, idle when not measured).
async fn stream_table(
    args: &Args,
    p: &Params,
    certs: &Certs,
    go_bin: &Result<PathBuf, String>,
) -> Result<Table> {
    let measures: Vec<StreamMeasure> = StreamMeasure::ALL
        .into_iter()
        .filter(|m| args.wants(m.key()))
        .collect();
    let mut table = Table {
        title: "streams",
        columns: STREAM_COLUMNS.to_vec(),
        ratios: vec![
            ("TCP/rustls", QYMUX_TCP, RAW_TLS),
            ("TCP/Go", QYMUX_TCP, GO),
            ("QUIC/quinn", QYMUX_QUIC, RAW_QUIC),
            ("TCP/yamux crate", QYMUX_TCP, YAMUX_CRATE),
            ("yamux crate/rustls", YAMUX_CRATE, RAW_TLS),
            ("tokio-yamux/rustls", TOKIO_YAMUX, RAW_TLS),
        ],
        rows: Vec::new(),
    };
    if measures.is_empty() {
        return Ok(table);
    }
    let tls = certs.client_tls()?;
    let payload = Arc::new(Payload::new());

    // Servers and clients of the Rust stacks (none in Go's column).
    let mut servers = Vec::new();
    let mut clients: Vec<Option<Result<Arc<Client>, Cell>>> = Vec::new();
    for (i, stack) in STACK_NAMES.into_iter().enumerate() {
        if i == GO {
            clients.push(None);
            continue;
        }
        if !args.wants_stack(stack) {
            clients.push(Some(Err(Cell::Skipped("not selected (--stacks)".into()))));
            continue;
        }
        let kind = server_kind(i);
        let connected = async {
            let server = Server::ours(kind, certs).await?;
            let addr = server.addr;
            servers.push(server);
            Ok::<_, anyhow::Error>(Arc::new(connect(i, addr, tls.clone()).await?))
        }
        .await;
        clients.push(Some(
            connected.map_err(|e| Cell::Failed(format!("{kind}: {e:#}"))),
        ));
    }
    let go = match go_bin {
        _ if !args.wants_stack(STACK_NAMES[GO]) => {
            Err(Cell::Skipped("not selected (--stacks)".into()))
        }
        Ok(bin) => match Server::go(bin, certs).await {
            Ok(server) => {
                let client = GoClient {
                    bin: bin.clone(),
                    addr: server.addr,
                    ca: certs.ca.clone(),
                };
                servers.push(server);
                Ok(client)
            }
            Err(e) => Err(Cell::Failed(format!("Go server: {e:#}"))),
        },
        Err(why) => Err(Cell::Skipped(why.clone())),
    };

    for m in measures {
        println!("measuring {} ...", m.key());
        let mut cells = Vec::new();
        for client in &clients {
            cells.push(match client {
                Some(Ok(client)) => rust_cell(m, client, p, &payload).await,
                Some(Err(cell)) => cell.clone(),
                None => match &go {
                    Ok(go) => go_cell(m, go, p).await,
                    Err(cell) => cell.clone(),
                },
            });
        }
        for (column, cell) in STREAM_COLUMNS.iter().zip(&cells) {
            if let Cell::Failed(e) = cell {
                eprintln!("FAILED: {} on {column}: {e}", m.key());
            }
        }
        table.rows.push(m.row(cells));
    }

    for client in clients.into_iter().flatten().flatten() {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    for server in servers {
        server.stop().await?;
    }
    Ok(table)
}

async fn grpc_table(p: &Params, certs: &Certs) -> Result<Table> {
    let tls = certs.client_tls()?;
    let mut cells = Vec::new();
    for kind in ["grpc-direct", "grpc-qymux-tcp", "grpc-qymux-quic"] {
        println!("measuring grpc ({kind}) ...");
        let result = async {
            let server = Server::ours(kind, certs).await?;
            let client = match kind {
                "grpc-direct" => grpc::Grpc::direct(server.addr).await?,
                "grpc-qymux-tcp" => grpc::Grpc::over_tcp(server.addr, tls.clone()).await?,
                _ => grpc::Grpc::over_quic(server.addr, tls.clone()).await?,
            };
            let warmup_calls = (p.grpc_calls / 10).max(p.grpc_in_flight);
            grpc::calls(&client, warmup_calls, p.grpc_in_flight).await?;
            let samples = measure::repeat(0, p.reps, || {
                grpc::calls(&client, p.grpc_calls, p.grpc_in_flight)
            })
            .await;
            client.close().await;
            server.stop().await?;
            samples
        }
        .await;
        let cell = cell(result, false);
        if let Cell::Failed(e) = &cell {
            eprintln!("FAILED: grpc on {kind}: {e}");
        }
        cells.push(cell);
    }
    Ok(Table {
        title: "gRPC",
        columns: vec!["tonic direct", "Qymux TCP", "Qymux QUIC"],
        ratios: vec![("TCP/direct", 1, 0), ("QUIC/direct", 2, 0)],
        rows: vec![Row {
            key: "grpc",
            title: "unary calls, 64 in flight",
            unit: "calls/s",
            higher_is_better: true,
            cells,
        }],
    })
}

async fn idle_table(p: &Params, certs: &Certs) -> Result<Table> {
    let tls = certs.client_tls()?;
    let mut cells = Vec::new();
    for stack in idle::Stack::ALL {
        let kind = stack.server_kind();
        println!("measuring idle ({kind}, {} sessions) ...", p.idle_sessions);
        let result = async {
            let mut server = Server::ours(kind, certs).await?;
            let idle = idle::measure(&mut server, stack, p.idle_sessions, tls.clone()).await;
            server.stop().await?;
            idle
        }
        .await;
        cells.push(match result {
            Ok(idle) => {
                println!(
                    "  {kind}: server RSS {} KiB before, {} KiB holding {} sessions: {:.1} KiB per session",
                    idle.base_kib,
                    idle.held_kib,
                    idle.sessions,
                    idle.per_session_kib()
                );
                Cell::Value(Figure::single(idle.per_session_kib()))
            }
            Err(e) => {
                eprintln!("FAILED: idle on {kind}: {e:#}");
                Cell::Failed(format!("{e:#}"))
            }
        });
    }
    Ok(Table {
        title: "idle",
        columns: vec!["raw rustls", "Qymux TCP", "raw quinn", "Qymux QUIC"],
        ratios: vec![("TCP/rustls", 1, 0), ("QUIC/quinn", 3, 2)],
        rows: vec![Row {
            key: "idle",
            title: "server memory per idle session",
            unit: "KiB",
            higher_is_better: false,
            cells,
        }],
    })
}

/// Runs connect_bench (Auto mode's time to session); returns its table and its report.
async fn auto_table(
    args: &Args,
    p: &Params,
    out_dir: &Path,
) -> Result<(Table, Option<qymux_bench::ConnectReport>)> {
    let bin = match &args.connect_bench {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("this binary's directory")?
            .join(format!("connect_bench{}", std::env::consts::EXE_SUFFIX)),
    };
    let columns = vec![
        "plain TCP dial",
        "Auto, UDP blackholed, 1st dial",
        "Auto, blackholed, remembered",
        "Auto, QUIC",
    ];
    let mut table = Table {
        title: "Auto mode",
        columns,
        // The target is a difference (b − d), judged with the targets.
        ratios: Vec::new(),
        rows: Vec::new(),
    };
    if !bin.is_file() {
        let why = format!(
            "{} not found: build it with `cargo build --release -p qymux-bench --bin connect_bench` (cargo xtask bench does)",
            bin.display()
        );
        println!("Auto mode skipped: {why}");
        table.rows.push(auto_row(vec![Cell::Skipped(why); 4]));
        return Ok((table, None));
    }
    println!(
        "measuring auto (connect_bench, {} rounds) ...",
        p.connect_rounds
    );
    let json_path = out_dir.join("connect.json");
    let status = tokio::process::Command::new(&bin)
        .arg("--rounds")
        .arg(p.connect_rounds.to_string())
        .arg("--json")
        .arg(&json_path)
        .status()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        let why = format!("connect_bench failed: {status}");
        eprintln!("FAILED: auto: {why}");
        table.rows.push(auto_row(vec![Cell::Failed(why); 4]));
        return Ok((table, None));
    }
    let json = std::fs::read_to_string(&json_path)
        .with_context(|| format!("reading {}", json_path.display()))?;
    let report: qymux_bench::ConnectReport = match serde_json::from_str(&json) {
        Ok(report) => report,
        Err(e) => {
            let why = format!("{}: not connect_bench's JSON: {e}", json_path.display());
            eprintln!("FAILED: auto: {why}");
            table.rows.push(auto_row(vec![Cell::Failed(why); 4]));
            return Ok((table, None));
        }
    };
    let cells = ['d', 'b', 'c', 'a']
        .into_iter()
        .map(|case| match report.median_of(case) {
            Some(v) => Cell::Value(Figure::single(v)),
            None => Cell::Failed(format!("case {case} missing in connect_bench's JSON")),
        })
        .collect();
    table.rows.push(auto_row(cells));
    Ok((table, Some(report)))
}

fn auto_row(cells: Vec<Cell>) -> Row {
    Row {
        key: "auto",
        title: "time to a usable session",
        unit: "ms",
        higher_is_better: false,
        cells,
    }
}

/// The issue's targets, judged on this run.
fn targets(tables: &[Table]) -> Vec<Target> {
    let find = |key: &str| tables.iter().find_map(|t| t.find(key));
    let value = |key: &str, col: usize| find(key).and_then(|r| r.cells.get(col)?.value());
    let mut out = Vec::new();
    // a/b against a limit; `at_least` says which side is good. With several rounds the
    // figure shows the range of the rounds' ratios too.
    let mut ratio = |name: &str, key: &str, a: usize, b: usize, limit: f64, at_least: bool| {
        let r = find(key).and_then(|row| report::ratio(row, a, b));
        out.push(Target {
            name: name.to_owned(),
            figure: r
                .as_ref()
                .map_or("-".into(), |(r, spread)| format!("{r:.2} ×{spread}")),
            limit: format!("{} {limit:.2} ×", if at_least { "≥" } else { "≤" }),
            met: r.map(|(r, _)| if at_least { r >= limit } else { r <= limit }),
        });
    };
    ratio(
        "TCP bulk vs raw rustls",
        "bulk",
        QYMUX_TCP,
        RAW_TLS,
        0.9,
        true,
    );
    ratio("TCP bulk vs Go yamux", "bulk", QYMUX_TCP, GO, 1.5, true);
    ratio(
        "TCP 64 B round trip vs raw rustls",
        "rtt",
        QYMUX_TCP,
        RAW_TLS,
        1.15,
        false,
    );
    ratio(
        "TCP open + round trip vs Go yamux",
        "open-rtt",
        QYMUX_TCP,
        GO,
        0.6,
        false,
    );
    for m in StreamMeasure::ALL {
        let name = format!("QUIC {} vs raw quinn", m.row(Vec::new()).title);
        // 0.9 × the speed; for latencies at most 1/0.9 of the time.
        let (limit, at_least) = if m.latency() {
            (1.0 / 0.9, false)
        } else {
            (0.9, true)
        };
        ratio(&name, m.key(), QYMUX_QUIC, RAW_QUIC, limit, at_least);
    }
    ratio(
        "gRPC over a TCP session vs direct tonic",
        "grpc",
        1,
        0,
        0.8,
        true,
    );
    ratio(
        "gRPC over a QUIC session vs direct tonic",
        "grpc",
        2,
        0,
        0.8,
        true,
    );
    ratio(
        "QUIC idle memory per session vs raw quinn",
        "idle",
        3,
        2,
        1.0 / 0.9,
        false,
    );
    // Issue 11's targets across rows or against the better of two columns (medians).
    let mut across = |name: &str, r: Option<f64>, min: f64| {
        out.push(Target {
            name: name.to_owned(),
            figure: r.map_or("-".into(), |r| format!("{r:.2} ×")),
            limit: format!("≥ {min:.2} ×"),
            met: r.map(|r| r >= min),
        });
    };
    let bare = match (value("bulk", YAMUX_CRATE), value("bulk", TOKIO_YAMUX)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    across(
        "TCP bulk vs the faster of the yamux crate and tokio-yamux",
        value("bulk", QYMUX_TCP).zip(bare).map(|(t, b)| t / b),
        1.2,
    );
    across(
        "TCP bulk, 100 streams at once vs raw rustls on one stream",
        value("streams", QYMUX_TCP)
            .zip(value("bulk", RAW_TLS))
            .map(|(t, r)| t / r),
        0.9,
    );
    let mut limit = |name: &str, v: Option<f64>, unit: &str, max: f64| {
        out.push(Target {
            name: name.to_owned(),
            figure: v.map_or("-".into(), |v| format!("{v:.1} {unit}")),
            limit: format!("≤ {max} {unit}"),
            met: v.map(|v| v <= max),
        });
    };
    limit("idle memory per TCP session", value("idle", 1), "KiB", 16.0);
    limit(
        "idle memory per QUIC session",
        value("idle", 3),
        "KiB",
        64.0,
    );
    let extra = value("auto", 1).zip(value("auto", 0)).map(|(b, d)| b - d);
    out.push(Target {
        name: "Auto fallback, more than a plain TCP dial".into(),
        figure: extra.map_or("-".into(), |e| format!("{e:.1} ms")),
        limit: "< 350 ms".into(),
        met: extra.map(|e| e < 350.0),
    });
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

fn machine(load_before: &str, load_after: &str, smoke: bool) -> report::Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report::Machine {
        date: command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu,
        kernel: kernel.trim().to_owned(),
        rustc: command_line("rustc", &["--version"]),
        go: command_line("go", &["version"]),
        profile: "release",
        smoke,
        load_before: load_before.to_owned(),
        load_after: load_after.to_owned(),
    }
}

async fn run(args: Args) -> Result<bool> {
    let p = if args.smoke {
        Params::smoke()
    } else {
        Params::full()
    };
    let out_dir = match &args.out {
        Some(dir) => dir.clone(),
        None if args.smoke => workspace_root().join("target/bench-smoke"),
        None => workspace_root().join("docs/bench"),
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let load_before = loadavg();
    println!(
        "qymux-bench{}: load average {load_before}; results go to {}",
        if p.smoke { " --smoke" } else { "" },
        out_dir.display()
    );

    let tmp = qymux_testsupport::TempDir::new("qymux-bench")?;
    let certs = Certs::create(tmp.path())?;

    let go_bin: Result<PathBuf, String> = if args.no_go {
        Err("left out (--no-go)".into())
    } else if STREAM_MEASURES_WANTED.iter().any(|m| args.wants(m)) {
        match qymux_testsupport::build_go_program("go-bench") {
            Ok(bin) => Ok(bin),
            Err(qymux_testsupport::GoBuildError::Missing(why)) => {
                if qymux_testsupport::peers_required() {
                    bail!("{why} ({}=1 is set)", qymux_testsupport::REQUIRE_PEERS_VAR);
                }
                println!("Go column skipped: {why}");
                Err(why)
            }
            Err(e) => return Err(anyhow::anyhow!(e).context("building interop/go-bench")),
        }
    } else {
        Err("not measured".into())
    };

    // The stream and gRPC measures, `--rounds` times, each round with fresh servers and
    // connections; idle memory and Auto mode once.
    let mut streams = stream_table(&args, &p, &certs, &go_bin).await?;
    let mut grpc = if args.wants("grpc") {
        Some(grpc_table(&p, &certs).await?)
    } else {
        None
    };
    for round in 2..=args.rounds {
        println!("round {round} of {} ...", args.rounds);
        streams.pool(&stream_table(&args, &p, &certs, &go_bin).await?);
        if let Some(grpc) = &mut grpc {
            grpc.pool(&grpc_table(&p, &certs).await?);
        }
    }
    let mut tables = vec![streams];
    tables.extend(grpc);
    if args.wants("idle") {
        tables.push(idle_table(&p, &certs).await?);
    }
    let mut connect_report = None;
    if args.wants("auto") {
        let (table, connect) = auto_table(&args, &p, &out_dir).await?;
        tables.push(table);
        connect_report = connect;
    }
    tables.retain(|t| !t.rows.is_empty());

    let load_after = loadavg();
    let targets = targets(&tables);
    let failed = tables
        .iter()
        .flat_map(|t| &t.rows)
        .flat_map(|r| &r.cells)
        .any(|c| matches!(c, Cell::Failed(_)));

    println!();
    print!("{}", report::text(&tables));
    print!("{}", report::targets_text(&targets));
    println!("\nload average: {load_before} before, {load_after} after");

    let machine = machine(&load_before, &load_after, p.smoke);
    let json = report::json(
        &machine,
        p.smoke,
        &tables,
        &targets,
        connect_report.as_ref(),
    );
    std::fs::write(out_dir.join("results.json"), json)?;
    let caption = format!(
        "Qymux and its baselines, loopback, {} CPUs, load {load_before}{}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if p.smoke {
            " (smoke run: not a measurement)"
        } else {
            ""
        }
    );
    std::fs::write(out_dir.join("results.svg"), report::svg(&tables, &caption))?;
    let md = format!(
        "{}\n{}\nLoad average {load_before} before, {load_after} after.\n",
        report::markdown(&tables),
        report::targets_markdown(&targets)
    );
    std::fs::write(out_dir.join("results.md"), md)?;
    println!(
        "wrote {0}/results.json, {0}/results.svg, {0}/results.md",
        out_dir.display()
    );
    Ok(!failed)
}

const STREAM_MEASURES_WANTED: &[&str] = &["bulk", "rtt", "open-rtt", "opens", "streams"];
