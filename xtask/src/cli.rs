//! The command line of `cargo xtask` (clap), and the options each task runs with.

use std::path::PathBuf;

use clap::{Args, CommandFactory as _, Parser, Subcommand};

/// Qymux project tasks: `cargo xtask <TASK> [OPTIONS]`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Option<Task>,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Make development certificates: a CA, a server and a client certificate.
    ///
    /// Writes ca.pem ca.key server.pem server.key client.pem client.key into DIR and
    /// prints each certificate's SHA-256 fingerprint. Refuses to touch anything if one of
    /// the six files exists, unless --force is given.
    Cert(CertCli),
    /// Run the workspace tests instrumented and report line coverage.
    ///
    /// Installs what is missing (cargo-llvm-cov; Debian's llvm-22), runs `cargo llvm-cov
    /// --workspace --no-report`, writes an HTML report to target/coverage/html and an
    /// lcov file to target/coverage/lcov.info, and prints lines covered per crate. If
    /// tests fail, the report of what ran is still written, and the task exits non-zero.
    Coverage(CoverageCli),
    /// Run the cargo-fuzz targets in fuzz/ for a while each.
    ///
    /// Installs cargo-fuzz if missing, seeds the corpora (a real certificate and key for
    /// `pem`, programs of frames and operations for yamux_engine), builds the targets,
    /// and runs each (all of them if none is named: yamux_engine, pem, options,
    /// proxy_url) for the given time with the nightly toolchain. Corpora stay in
    /// fuzz/corpus/TARGET; a crash stops the task, leaving its input in
    /// fuzz/artifacts/TARGET. A failed build is reported as such, with the disk space
    /// left.
    Fuzz(FuzzCli),
    /// Run many sessions x streams against one listener and check resources.
    ///
    /// Builds and runs the soak binary of qymux-bench (release): sessions x streams
    /// cycling against one QUIC + TCP listener, printing RSS, open file descriptors,
    /// live sessions and totals at start, warm-up, end and after tear-down, and the rate
    /// reached. Fails on a data mismatch, an error, or resources that grew beyond the
    /// tolerance. The load is paced (--rate); --stress overloads on purpose.
    Soak(SoakCli),
    /// Measure Qymux beside raw rustls, raw quinn, Go yamux and direct tonic.
    ///
    /// Builds (release) and runs the qymux-bench crate and its connect_bench binary:
    /// servers and clients in separate processes on loopback, Go crypto/tls + hashicorp
    /// yamux built from Debian's packages (skipped with a message when missing). Prints a
    /// table with ratios and the targets, and writes results.json, results.svg and
    /// results.md. Fails on a measure's error, never on a missed target.
    Bench(BenchCli),
}

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command {
    Help,
    Cert(CertArgs),
    Coverage(CoverageArgs),
    Fuzz(FuzzArgs),
    Soak(SoakArgs),
    Bench(BenchArgs),
}

/// Parses the arguments after the program name. `Err` carries clap's message (for
/// `--help` too); [`clap::Error::exit`] prints it and exits with its code.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, clap::Error> {
    let cli = Cli::try_parse_from(std::iter::once("cargo xtask".to_owned()).chain(args))?;
    Ok(match cli.task {
        None => Command::Help,
        Some(Task::Cert(cli)) => Command::Cert(cli.into()),
        Some(Task::Coverage(cli)) => Command::Coverage(CoverageArgs {
            open: cli.open,
            include_ignored: cli.include_ignored,
            passthrough: cli.passthrough,
        }),
        Some(Task::Fuzz(cli)) => Command::Fuzz(FuzzArgs {
            seconds: cli.seconds,
            jobs: cli.jobs,
            targets: cli.targets,
        }),
        Some(Task::Soak(cli)) => Command::Soak(cli.into()),
        Some(Task::Bench(cli)) => Command::Bench(cli.into()),
    })
}

/// The help of `cargo xtask`, for `cargo xtask` without a task.
pub(crate) fn usage() -> String {
    Cli::command().render_long_help().to_string()
}

#[derive(Debug, Args)]
struct CertCli {
    /// Directory to write to, relative to the workspace root unless absolute
    #[arg(long, value_name = "DIR", default_value = "certs")]
    out: PathBuf,
    /// Common name of the CA
    #[arg(long, value_name = "NAME", default_value = "Qymux Development CA")]
    ca_name: String,
    /// DNS name or IP address of the server; repeat for several [default: localhost,
    /// 127.0.0.1, ::1]
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// Common name of the client (agent) certificate
    #[arg(long, value_name = "NAME", default_value = "qymux-agent")]
    client_name: String,
    /// Validity of the server and client certificates, in days [default: 731];
    /// short-lived client certificates are how agents rotate (docs/security.md). With
    /// --crl: the CRL's next update, in days [default: 7]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    days: Option<u32>,
    /// Overwrite existing files
    #[arg(long)]
    force: bool,
    /// Instead: sign a certificate revocation list with the CA in DIR (ca.pem, ca.key)
    /// and write it to DIR/crl.pem (replacing it)
    #[arg(long)]
    crl: bool,
    /// With --crl: a certificate (PEM) the CRL revokes; repeat for several. Without it,
    /// the CRL revokes nothing
    #[arg(long, value_name = "FILE", requires = "crl")]
    revoke: Vec<PathBuf>,
}

/// Options of `cargo xtask cert`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CertArgs {
    pub(crate) out: PathBuf,
    pub(crate) ca_name: String,
    pub(crate) server_names: Vec<String>,
    pub(crate) client_name: String,
    pub(crate) force: bool,
    /// Validity of the leaves (or, with `crl`, the CRL's next update), in days.
    pub(crate) days: Option<u32>,
    /// Write a CRL instead of certificates.
    pub(crate) crl: bool,
    /// The certificates the CRL revokes.
    pub(crate) revoke: Vec<PathBuf>,
}

impl Default for CertArgs {
    fn default() -> Self {
        Cli::try_parse_from(["cargo xtask", "cert"])
            .ok()
            .and_then(|cli| match cli.task {
                Some(Task::Cert(cert)) => Some(cert.into()),
                _ => None,
            })
            .expect("`cert` alone parses")
    }
}

impl From<CertCli> for CertArgs {
    fn from(cli: CertCli) -> Self {
        let server_names = if cli.server_names.is_empty() {
            ["localhost", "127.0.0.1", "::1"]
                .map(str::to_owned)
                .to_vec()
        } else {
            cli.server_names
        };
        CertArgs {
            out: cli.out,
            ca_name: cli.ca_name,
            server_names,
            client_name: cli.client_name,
            force: cli.force,
            days: cli.days,
            crl: cli.crl,
            revoke: cli.revoke,
        }
    }
}

#[derive(Debug, Args)]
struct CoverageCli {
    /// Open the HTML report in a browser when done
    #[arg(long)]
    open: bool,
    /// Also run the tests marked ignore (the long ones)
    #[arg(long)]
    include_ignored: bool,
    /// Passed on to `cargo llvm-cov --workspace --no-report` as they are, e.g. `--
    /// --exclude qymux-quic` or, for the test binaries, `-- -- --test-threads=1`
    #[arg(last = true, value_name = "ARGS")]
    passthrough: Vec<String>,
}

/// Options of `cargo xtask coverage`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CoverageArgs {
    pub(crate) open: bool,
    pub(crate) include_ignored: bool,
    /// Everything after `--`, for `cargo llvm-cov --workspace --no-report`.
    pub(crate) passthrough: Vec<String>,
}

#[derive(Debug, Args)]
struct FuzzCli {
    /// How long each target runs, in seconds
    #[arg(long, value_name = "N", default_value_t = 60)]
    seconds: u64,
    /// Parallel fuzzing processes per target
    #[arg(long, value_name = "N", default_value_t = 1)]
    jobs: u32,
    /// The targets to run [default: all]
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

/// Options of `cargo xtask fuzz`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FuzzArgs {
    pub(crate) seconds: u64,
    pub(crate) jobs: u32,
    /// The targets to run; all of them if empty.
    pub(crate) targets: Vec<String>,
}

#[derive(Debug, Args)]
struct SoakCli {
    /// How long the load runs [default: 1]
    #[arg(long, value_name = "N", value_parser = positive)]
    minutes: Option<String>,
    /// The same in seconds (for short CI runs)
    #[arg(long, value_name = "N", value_parser = positive)]
    seconds: Option<String>,
    /// Concurrent session slots [default: 1000]
    #[arg(long, value_name = "N", value_parser = positive)]
    sessions: Option<String>,
    /// Concurrent streams per session [default: 10]
    #[arg(long, value_name = "N", value_parser = positive)]
    streams: Option<String>,
    /// Transports: both (half each), quic or tcp [default: both]
    #[arg(long, value_parser = ["both", "quic", "tcp"])]
    mode: Option<String>,
    /// Streams started per second over all sessions [default: 1000]
    #[arg(long, value_name = "N", value_parser = positive)]
    rate: Option<String>,
    /// No pacing: every session cycles flat out (overload mode)
    #[arg(long)]
    stress: bool,
    /// More options for the soak binary (--bytes, --warmup-seconds, --rss-tolerance-mb,
    /// --fd-tolerance)
    #[arg(last = true, value_name = "ARGS")]
    passthrough: Vec<String>,
}

/// A positive number, kept as written (the soak binary parses it again).
fn positive(value: &str) -> Result<String, String> {
    if value.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0) {
        Ok(value.to_owned())
    } else {
        Err(format!("not a positive number: {value:?}"))
    }
}

/// Options of `cargo xtask soak`: passed on to the soak binary as flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SoakArgs {
    /// `--flag value` pairs for the soak binary, in order.
    pub(crate) flags: Vec<(String, String)>,
    /// `--stress`, then everything after `--`.
    pub(crate) passthrough: Vec<String>,
}

impl From<SoakCli> for SoakArgs {
    fn from(cli: SoakCli) -> Self {
        let flags = [
            ("--minutes", cli.minutes),
            ("--seconds", cli.seconds),
            ("--sessions", cli.sessions),
            ("--streams", cli.streams),
            ("--mode", cli.mode),
            ("--rate", cli.rate),
        ]
        .into_iter()
        .filter_map(|(flag, value)| Some((flag.to_owned(), value?)))
        .collect();
        let stress = cli.stress.then(|| "--stress".to_owned());
        SoakArgs {
            flags,
            passthrough: stress.into_iter().chain(cli.passthrough).collect(),
        }
    }
}

#[derive(Debug, Args)]
struct BenchCli {
    /// Every measure for a fraction of a second (CI); writes to target/bench-smoke
    /// unless --out is given
    #[arg(long)]
    smoke: bool,
    /// Where the results go [default: docs/bench]
    #[arg(long, value_name = "DIR")]
    out: Option<String>,
    /// Comma-separated: bulk,rtt,open-rtt,opens,streams,grpc,idle,auto
    #[arg(long, value_name = "LIST")]
    only: Option<String>,
    /// Columns of the stream measures: rustls,tcp,quinn,quic,go,yamux,tokio-yamux
    #[arg(long, value_name = "LIST")]
    stacks: Option<String>,
    /// Leave out the Go column
    #[arg(long)]
    no_go: bool,
    /// Run the stream and gRPC measures N times with fresh servers; figures pool all
    /// rounds, ratios show the rounds' range [default: 1]
    #[arg(long, value_name = "N")]
    rounds: Option<String>,
}

/// Options of `cargo xtask bench`: passed on to the qymux-bench binary, which checks
/// them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BenchArgs {
    pub(crate) args: Vec<String>,
}

impl From<BenchCli> for BenchArgs {
    fn from(cli: BenchCli) -> Self {
        let mut args = Vec::new();
        for (flag, on) in [("--smoke", cli.smoke), ("--no-go", cli.no_go)] {
            if on {
                args.push(flag.to_owned());
            }
        }
        for (flag, value) in [
            ("--only", cli.only),
            ("--out", cli.out),
            ("--stacks", cli.stacks),
            ("--rounds", cli.rounds),
        ] {
            if let Some(value) = value {
                args.extend([flag.to_owned(), value]);
            }
        }
        BenchArgs { args }
    }
}
