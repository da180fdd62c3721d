//! Command-line parsing, by hand: a handful of flags does not need a parser crate.

use std::path::PathBuf;

/// The usage text of `cargo xtask`.
pub(crate) const USAGE: &str = "\
Qymux project tasks

USAGE:
    cargo xtask <TASK> [OPTIONS]

TASKS:
    cert        Make development certificates: a CA, a server and a client certificate
    coverage    Run the workspace tests instrumented and report line coverage
    fuzz        Run the cargo-fuzz targets in fuzz/ for a while each
    soak        Run many sessions x streams against one listener and check resources
    bench       Measure Qymux beside raw rustls, raw quinn, Go yamux and direct tonic
    help        Show this text

cargo xtask cert [OPTIONS]
    Writes ca.pem ca.key server.pem server.key client.pem client.key into DIR and prints
    each certificate's SHA-256 fingerprint. Refuses to touch anything if one of the six
    files exists, unless --force is given.

    --out DIR              Directory to write to, relative to the workspace root unless
                           absolute [default: certs]
    --ca-name NAME         Common name of the CA [default: Qymux Development CA]
    --server-name NAME     DNS name or IP address of the server; repeat for several
                           [default: localhost, 127.0.0.1, ::1]
    --client-name NAME     Common name of the client (agent) certificate
                           [default: qymux-agent]
    --days N               Validity of the server and client certificates, in days
                           [default: 731]; short-lived client certificates are how
                           agents rotate (docs/security.md)
    --force                Overwrite existing files
    --crl                  Instead: sign a certificate revocation list with the CA in
                           DIR (ca.pem, ca.key) and write it to DIR/crl.pem (replacing
                           it); with --days N, its next update is in N days [default: 7]
    --revoke FILE          With --crl: a certificate (PEM) the CRL revokes; repeat for
                           several. Without it, the CRL revokes nothing

cargo xtask coverage [OPTIONS] [-- ARGS...]
    Installs what is missing (cargo-llvm-cov; Debian's llvm-22), runs
    `cargo llvm-cov --workspace --no-report`, writes an HTML report to
    target/coverage/html and an lcov file to target/coverage/lcov.info, and prints
    lines covered per crate. If tests fail, the report of what ran is still written,
    and the task exits non-zero.

    --open                 Open the HTML report in a browser when done
    --include-ignored      Also run tests marked #[ignore]
    -- ARGS...             Passed on to `cargo llvm-cov --workspace --no-report` as they
                           are, e.g. `-- --exclude qymux-quic` or, for the test
                           binaries, `-- -- --test-threads=1`

cargo xtask fuzz [OPTIONS] [TARGET]...
    Installs cargo-fuzz if missing, seeds the corpora (a real certificate and key for
    `pem`, programs of frames and operations for yamux_engine), and runs each target
    (all of them if none is named: yamux_engine, pem, options, proxy_url) for the given
    time with the nightly toolchain. Corpora stay in fuzz/corpus/<target>; a crash stops the task, leaving its
    input in fuzz/artifacts/<target>.

    --seconds N            How long each target runs [default: 60]
    --jobs N               Parallel fuzzing processes per target [default: 1]

cargo xtask soak [OPTIONS]
    Builds and runs the soak example of qymux-dialer (release): sessions x streams
    cycling against one QUIC + TCP listener, printing RSS, open file descriptors, live
    sessions and totals at start, warm-up, end and after tear-down, and the rate
    reached. Fails on a data mismatch, an error, or resources that grew beyond the
    tolerance. The load is paced (--rate); --stress overloads on purpose.

    --minutes N            How long the load runs [default: 1]
    --seconds N            The same in seconds (for short CI runs)
    --sessions N           Concurrent session slots [default: 1000]
    --streams N            Concurrent streams per session [default: 10]
    --mode both|quic|tcp   Transports [default: both, half each]
    --rate N               Streams started per second over all sessions [default: 1000]
    --stress               No pacing: every session cycles flat out (overload mode)
    -- ARGS...             More options for the soak binary (--bytes, --warmup-seconds,
                           --rss-tolerance-mb, --fd-tolerance)

cargo xtask bench [OPTIONS]
    Builds (release) and runs the qymux-bench crate and the connect_bench example of
    qymux: servers and clients in separate processes on loopback, Go crypto/tls +
    hashicorp yamux built from Debian's packages (skipped with a message when missing).
    Prints a table with ratios and the targets, and writes results.json, results.svg
    and results.md. Fails on a measure's error, never on a missed target.

    --smoke                Every measure for a fraction of a second (CI); writes to
                           target/bench-smoke unless --out is given
    --out DIR              Where the results go [default: docs/bench]
    --only LIST            Comma-separated: bulk,rtt,open-rtt,opens,streams,grpc,idle,auto
    --stacks LIST          Columns of the stream measures: rustls,tcp,quinn,quic,go,
                           yamux,tokio-yamux
    --no-go                Leave out the Go column
    --rounds N             Run the stream and gRPC measures N times with fresh servers;
                           figures pool all rounds, ratios show the rounds' range
                           [default: 1]
";

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

/// Options of `cargo xtask bench`: passed on to the qymux-bench binary as they are.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct BenchArgs {
    pub(crate) args: Vec<String>,
}

/// Options of `cargo xtask fuzz`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FuzzArgs {
    pub(crate) seconds: u64,
    pub(crate) jobs: u32,
    /// The targets to run; all of them if empty.
    pub(crate) targets: Vec<String>,
}

impl Default for FuzzArgs {
    fn default() -> Self {
        Self {
            seconds: 60,
            jobs: 1,
            targets: Vec::new(),
        }
    }
}

/// Options of `cargo xtask soak`: passed on to the soak binary as flags.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SoakArgs {
    /// `--flag value` pairs for the soak binary, in order.
    pub(crate) flags: Vec<(String, String)>,
    /// Everything after `--`.
    pub(crate) passthrough: Vec<String>,
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
        Self {
            out: PathBuf::from("certs"),
            ca_name: "Qymux Development CA".to_owned(),
            server_names: ["localhost", "127.0.0.1", "::1"]
                .map(str::to_owned)
                .to_vec(),
            client_name: "qymux-agent".to_owned(),
            force: false,
            days: None,
            crl: false,
            revoke: Vec::new(),
        }
    }
}

/// Options of `cargo xtask coverage`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CoverageArgs {
    pub(crate) open: bool,
    pub(crate) include_ignored: bool,
    /// Everything after `--`, for `cargo llvm-cov --workspace --no-report`.
    pub(crate) passthrough: Vec<String>,
}

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let Some(task) = args.next() else {
        return Ok(Command::Help);
    };
    match task.as_str() {
        "help" | "-h" | "--help" => Ok(Command::Help),
        "cert" => parse_cert(args),
        "coverage" => parse_coverage(args),
        "fuzz" => parse_fuzz(args),
        "soak" => parse_soak(args),
        "bench" => parse_bench(args),
        other => Err(format!("unknown task {other:?}")),
    }
}

fn parse_cert(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = CertArgs::default();
    let (mut out, mut ca_name, mut client_name, mut days) = (None, None, None, None);
    let mut server_names = Vec::new();
    let mut args = Args::new(args);
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--out" => set_once(&mut out, &flag, args.value(&flag)?)?,
            "--ca-name" => set_once(&mut ca_name, &flag, args.value(&flag)?)?,
            "--client-name" => set_once(&mut client_name, &flag, args.value(&flag)?)?,
            "--server-name" => server_names.push(args.value(&flag)?),
            "--days" => set_once(&mut days, &flag, args.value(&flag)?)?,
            "--revoke" => parsed.revoke.push(PathBuf::from(args.value(&flag)?)),
            "--crl" => {
                args.no_value(&flag)?;
                parsed.crl = true;
            }
            "--force" => {
                args.no_value(&flag)?;
                parsed.force = true;
            }
            _ => return Err(format!("unknown option {flag:?} for `cert`")),
        }
    }
    if let Some(out) = out {
        parsed.out = PathBuf::from(out);
    }
    if let Some(ca_name) = ca_name {
        parsed.ca_name = ca_name;
    }
    if let Some(client_name) = client_name {
        parsed.client_name = client_name;
    }
    if !server_names.is_empty() {
        parsed.server_names = server_names;
    }
    if let Some(days) = days {
        match days.parse::<u32>() {
            Ok(n) if n > 0 => parsed.days = Some(n),
            _ => {
                return Err(format!(
                    "--days needs a positive whole number, not {days:?}"
                ));
            }
        }
    }
    if !parsed.revoke.is_empty() && !parsed.crl {
        return Err("--revoke needs --crl".to_owned());
    }
    Ok(Command::Cert(parsed))
}

fn parse_coverage(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = CoverageArgs::default();
    let mut args = Args::new(args);
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--open" => {
                args.no_value(&flag)?;
                parsed.open = true;
            }
            "--include-ignored" => {
                args.no_value(&flag)?;
                parsed.include_ignored = true;
            }
            _ => return Err(format!("unknown option {flag:?} for `coverage`")),
        }
    }
    parsed.passthrough = args.rest;
    Ok(Command::Coverage(parsed))
}

fn parse_fuzz(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = FuzzArgs::default();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let mut value = || match inline {
            Some(v) => Ok(v.to_owned()),
            None => args
                .next()
                .filter(|v| !v.starts_with('-'))
                .ok_or_else(|| format!("{flag} needs a value")),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--seconds" => parsed.seconds = number(&flag, &value()?)?,
            "--jobs" => parsed.jobs = number(&flag, &value()?)?,
            target if !target.starts_with('-') => parsed.targets.push(target.to_owned()),
            _ => return Err(format!("unknown option {flag:?} for `fuzz`")),
        }
    }
    Ok(Command::Fuzz(parsed))
}

fn parse_soak(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = SoakArgs::default();
    let mut args = Args::new(args);
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--stress" => parsed.passthrough.push(flag),
            "--minutes" | "--seconds" | "--sessions" | "--streams" | "--mode" | "--rate" => {
                let value = args.value(&flag)?;
                if flag == "--mode" && !["both", "quic", "tcp"].contains(&value.as_str()) {
                    return Err(format!("--mode: expected both, quic or tcp, not {value:?}"));
                }
                if flag != "--mode" {
                    let ok = value.parse::<f64>().is_ok_and(|v| v.is_finite() && v > 0.0);
                    if !ok {
                        return Err(format!("{flag}: not a positive number: {value:?}"));
                    }
                }
                parsed.flags.push((flag, value));
            }
            _ => return Err(format!("unknown option {flag:?} for `soak`")),
        }
    }
    parsed.passthrough.extend(args.rest);
    Ok(Command::Soak(parsed))
}

fn parse_bench(args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut parsed = BenchArgs::default();
    let mut args = Args::new(args);
    while let Some(flag) = args.next_flag()? {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--smoke" | "--no-go" => {
                args.no_value(&flag)?;
                parsed.args.push(flag);
            }
            "--out" | "--only" | "--stacks" | "--rounds" => {
                let value = args.value(&flag)?;
                parsed.args.extend([flag, value]);
            }
            _ => return Err(format!("unknown option {flag:?} for `bench`")),
        }
    }
    Ok(Command::Bench(parsed))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: not a number: {value:?}"))
}

fn set_once(slot: &mut Option<String>, flag: &str, value: String) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("{flag} given more than once"));
    }
    Ok(())
}

/// Walks `--flag`, `--flag value` and `--flag=value` arguments up to a `--`.
struct Args<I> {
    inner: I,
    /// The `=value` part of the current flag, if it had one.
    inline_value: Option<String>,
    /// What followed `--`.
    rest: Vec<String>,
}

impl<I: Iterator<Item = String>> Args<I> {
    fn new(inner: I) -> Self {
        Self {
            inner,
            inline_value: None,
            rest: Vec::new(),
        }
    }

    fn next_flag(&mut self) -> Result<Option<String>, String> {
        let Some(arg) = self.inner.next() else {
            return Ok(None);
        };
        if arg == "--" {
            self.rest = self.inner.by_ref().collect();
            return Ok(None);
        }
        if !arg.starts_with('-') || arg == "-" {
            return Err(format!("unexpected argument {arg:?}"));
        }
        match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                self.inline_value = Some(value.to_owned());
                Ok(Some(flag.to_owned()))
            }
            _ => {
                self.inline_value = None;
                Ok(Some(arg))
            }
        }
    }

    fn value(&mut self, flag: &str) -> Result<String, String> {
        if let Some(value) = self.inline_value.take() {
            return Ok(value);
        }
        match self.inner.next() {
            Some(value) if value != "--" => Ok(value),
            _ => Err(format!("{flag} needs a value")),
        }
    }

    fn no_value(&mut self, flag: &str) -> Result<(), String> {
        match self.inline_value.take() {
            Some(_) => Err(format!("{flag} takes no value")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Command, String> {
        parse(line.split_whitespace().map(str::to_owned))
    }

    fn cert(line: &str) -> CertArgs {
        match parse_str(line) {
            Ok(Command::Cert(args)) => args,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn coverage(line: &str) -> CoverageArgs {
        match parse_str(line) {
            Ok(Command::Coverage(args)) => args,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn no_task_or_help_shows_usage() {
        for line in ["", "help", "--help", "-h", "cert --help", "coverage -h"] {
            assert_eq!(parse_str(line), Ok(Command::Help), "{line:?}");
        }
    }

    #[test]
    fn cert_defaults() {
        let args = cert("cert");
        assert_eq!(args, CertArgs::default());
        assert_eq!(args.out, PathBuf::from("certs"));
        assert_eq!(args.ca_name, "Qymux Development CA");
        assert_eq!(args.server_names, ["localhost", "127.0.0.1", "::1"]);
        assert_eq!(args.client_name, "qymux-agent");
        assert!(!args.force);
    }

    #[test]
    fn cert_options_in_both_forms() {
        let args = cert(
            "cert --out /tmp/x --ca-name=MyCA --server-name a.example --server-name=10.0.0.1 \
             --client-name agent-7 --force",
        );
        assert_eq!(args.out, PathBuf::from("/tmp/x"));
        assert_eq!(args.ca_name, "MyCA");
        assert_eq!(args.server_names, ["a.example", "10.0.0.1"]);
        assert_eq!(args.client_name, "agent-7");
        assert!(args.force);
    }

    #[test]
    fn cert_values_may_contain_spaces_and_equals() {
        let args =
            parse(["cert", "--ca-name", "My Dev CA", "--client-name=a=b"].map(str::to_owned));
        let Ok(Command::Cert(args)) = args else {
            panic!("{args:?}")
        };
        assert_eq!(args.ca_name, "My Dev CA");
        assert_eq!(args.client_name, "a=b");
    }

    #[test]
    fn cert_errors() {
        for (line, needle) in [
            ("cert --out", "--out needs a value"),
            ("cert --out --", "--out needs a value"),
            ("cert --bogus", "unknown option"),
            ("cert stray", "unexpected argument"),
            ("cert --force=yes", "takes no value"),
            ("cert --out a --out b", "more than once"),
            ("cert --ca-name a --ca-name=b", "more than once"),
            ("cert --days 0", "positive whole number"),
            ("cert --days soon", "positive whole number"),
            ("cert --revoke c.pem", "needs --crl"),
            ("frobnicate", "unknown task"),
        ] {
            match parse_str(line) {
                Err(message) => assert!(message.contains(needle), "{line}: {message}"),
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn fuzz_options_and_targets() {
        assert_eq!(parse_str("fuzz"), Ok(Command::Fuzz(FuzzArgs::default())));
        let Ok(Command::Fuzz(args)) = parse_str("fuzz --seconds 20 yamux_engine pem --jobs=2")
        else {
            panic!()
        };
        assert_eq!(args.seconds, 20);
        assert_eq!(args.jobs, 2);
        assert_eq!(args.targets, ["yamux_engine", "pem"]);
        assert!(parse_str("fuzz --seconds").is_err());
        assert!(parse_str("fuzz --seconds x").is_err());
        assert!(parse_str("fuzz --bogus").is_err());
        assert_eq!(parse_str("fuzz -h"), Ok(Command::Help));
    }

    #[test]
    fn soak_flags_pass_through() {
        let Ok(Command::Soak(args)) =
            parse_str("soak --minutes 3 --sessions=100 --mode quic -- --bytes 1000")
        else {
            panic!()
        };
        let flags: Vec<(&str, &str)> = args
            .flags
            .iter()
            .map(|(f, v)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            flags,
            [
                ("--minutes", "3"),
                ("--sessions", "100"),
                ("--mode", "quic")
            ]
        );
        assert_eq!(args.passthrough, ["--bytes", "1000"]);
        let Ok(Command::Soak(args)) = parse_str("soak --rate 2000 --stress -- --bytes 10") else {
            panic!()
        };
        assert_eq!(args.flags, [("--rate".to_owned(), "2000".to_owned())]);
        assert_eq!(args.passthrough, ["--stress", "--bytes", "10"]);
        assert!(parse_str("soak --rate 0").is_err());
        assert!(parse_str("soak --mode udp").is_err());
        assert!(parse_str("soak --minutes -1").is_err());
        assert!(parse_str("soak --streams").is_err());
        assert_eq!(parse_str("soak"), Ok(Command::Soak(SoakArgs::default())));
    }

    #[test]
    fn coverage_flags_and_passthrough() {
        assert_eq!(coverage("coverage"), CoverageArgs::default());
        let args =
            coverage("coverage --open --include-ignored -- --exclude xtask -- --test-threads=1");
        assert!(args.open && args.include_ignored);
        assert_eq!(
            args.passthrough,
            ["--exclude", "xtask", "--", "--test-threads=1"]
        );
        assert_eq!(coverage("coverage -- --open").passthrough, ["--open"]);
        assert!(!coverage("coverage -- --open").open);
        assert!(parse_str("coverage --html").is_err());
        assert!(parse_str("coverage extra").is_err());
    }
}
