//! `cargo xtask fuzz`: run the cargo-fuzz targets in `fuzz/` for a while each.
//!
//! cargo-fuzz needs the nightly toolchain (`cargo +nightly`), through rustup's `cargo`
//! on `PATH`; the fuzz crate is its own workspace, outside the main one.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use qymux_cert::CertificateAuthority;

use crate::cli::FuzzArgs;
use crate::coverage::{run_checked, succeeds};

/// Every target in `fuzz/Cargo.toml`.
pub(crate) const TARGETS: [&str; 4] = ["yamux_engine", "pem", "options", "proxy_url"];

pub(crate) fn run(args: &FuzzArgs, root: &Path) -> Result<()> {
    let targets = selected_targets(&args.targets)?;
    ensure_cargo_fuzz()?;
    let fuzz_dir = root.join("fuzz");
    seed_corpora(&fuzz_dir).context("writing the seed corpora")?;

    // Build first, so that a failed build (a compiler error, a full disk) is reported as
    // what it is and not as a crash with an input in fuzz/artifacts.
    for target in &targets {
        let mut build = Command::new("cargo");
        build
            .current_dir(root)
            .args(["+nightly", "fuzz", "build", target]);
        run_checked(build).with_context(|| {
            format!(
                "building fuzz target {target} failed (no input was run); see the build \
                 output above{}",
                free_space_hint(&fuzz_dir)
            )
        })?;
    }

    let mut summary = Vec::new();
    for target in &targets {
        eprintln!("== fuzzing {target} for {} s", args.seconds);
        let corpus = fuzz_dir.join("corpus").join(target);
        let mut command = Command::new("cargo");
        command
            .current_dir(root)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-print_final_stats=1");
        if args.jobs > 1 {
            command.arg(format!("-fork={}", args.jobs));
        }
        let outcome = run_reporting(command)?;
        let status = if outcome.success { "ok" } else { "FAILED" };
        summary.push(format!(
            "  {target:<11} {status:<6} {:>12} runs in {:>5} s",
            outcome.runs.map_or("?".to_owned(), |r| r.to_string()),
            outcome.seconds.map_or("?".to_owned(), |s| s.to_string()),
        ));
        if !outcome.success {
            eprintln!("\nFuzzing summary so far:\n{}", summary.join("\n"));
            bail!(
                "fuzz target {target} failed; the input is in fuzz/artifacts/{target}/ \
                 (reproduce: cargo +nightly fuzz run {target} <that file>)"
            );
        }
    }
    println!("Fuzzing summary:\n{}", summary.join("\n"));
    Ok(())
}

/// ", with N MiB free on its disk" where `df` can tell: a build that dies of a signal in
/// `ar` or the linker has more than once been a full disk.
fn free_space_hint(dir: &Path) -> String {
    let output = Command::new("df").args(["-Pm"]).arg(dir).output();
    let Ok(output) = output else {
        return String::new();
    };
    available_mib(&String::from_utf8_lossy(&output.stdout))
        .map(|mib| format!(", with {mib} MiB free on its disk"))
        .unwrap_or_default()
}

/// The "Available" column of `df -Pm`'s one filesystem line.
pub(crate) fn available_mib(df: &str) -> Option<u64> {
    df.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()
}

/// The named targets, checked; all of them if none is named.
pub(crate) fn selected_targets(named: &[String]) -> Result<Vec<String>> {
    if named.is_empty() {
        return Ok(TARGETS.map(str::to_owned).to_vec());
    }
    for name in named {
        if !TARGETS.contains(&name.as_str()) {
            bail!(
                "unknown fuzz target {name:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    Ok(named.to_vec())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let works = || succeeds(Command::new("cargo").args(["+nightly", "fuzz", "--version"]));
    if works() {
        return Ok(());
    }
    eprintln!("cargo-fuzz is missing: installing it with cargo install");
    let mut install = Command::new("cargo");
    install.args(["install", "cargo-fuzz", "--locked"]);
    run_checked(install).context("installing cargo-fuzz")?;
    if !works() {
        bail!(
            "`cargo +nightly fuzz --version` fails: is the nightly toolchain installed \
             (rustup toolchain install nightly) and ~/.cargo/bin on PATH?"
        );
    }
    Ok(())
}

/// What libFuzzer said at the end of a run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) success: bool,
    pub(crate) runs: Option<u64>,
    pub(crate) seconds: Option<u64>,
}

/// Runs `command`, passing its output through, and notes libFuzzer's final line
/// (`Done 123456 runs in 20 second(s)`).
fn run_reporting(mut command: Command) -> Result<Outcome> {
    command.stderr(Stdio::piped());
    let mut child = command.spawn().context("starting cargo fuzz")?;
    let mut outcome = Outcome::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading cargo fuzz output")?;
            eprintln!("{line}");
            if let Some((runs, seconds)) = parse_done(&line) {
                outcome.runs = Some(runs);
                outcome.seconds = Some(seconds);
            }
        }
    }
    outcome.success = child.wait().context("waiting for cargo fuzz")?.success();
    Ok(outcome)
}

/// Parses libFuzzer's `Done N runs in S second(s)`.
pub(crate) fn parse_done(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("Done ")?;
    let (runs, rest) = rest.split_once(" runs in ")?;
    let seconds = rest.split_whitespace().next()?;
    Some((runs.parse().ok()?, seconds.parse().ok()?))
}

/// Writes seed inputs that the targets could not easily find alone: a real certificate
/// and key (as PEM text and as DER), and programs for the yamux engine (in the format
/// `crates/qymux-tcp/tests/engine_harness/mod.rs` reads, `Bytes`).
fn seed_corpora(fuzz_dir: &Path) -> Result<()> {
    let corpus = fuzz_dir.join("corpus");
    let ca = CertificateAuthority::new("Qymux Fuzz CA")?;
    let server = ca.issue_server(&["localhost"])?;
    let join = |mode: u8, a: &[u8], b: &[u8]| {
        let mut out = vec![mode];
        out.extend_from_slice(a);
        out.push(0xff);
        out.extend_from_slice(b);
        out
    };
    let leaf = server.cert_chain()[0].as_ref().to_vec();
    let key = server.private_key().secret_der().to_vec();
    seed(
        &corpus,
        "pem",
        "identity-pem",
        &join(0, server.cert_pem().as_bytes(), server.key_pem().as_bytes()),
    )?;
    seed(
        &corpus,
        "pem",
        "ca-pem",
        &join(0, ca.cert_pem().as_bytes(), ca.key_pem().as_bytes()),
    )?;
    seed(&corpus, "pem", "identity-der", &join(1, &leaf, &key))?;
    seed(
        &corpus,
        "pem",
        "fingerprint",
        format!("\0{}", server.fingerprint()).as_bytes(),
    )?;

    let frame = |kind: u8, flags: u16, id: u32, length: u32| {
        let mut h = vec![0, kind];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&length.to_be_bytes());
        h
    };
    // One server against a peer: mode 0, then its limits (max_streams 1024, backlog 256;
    // a budget of 1024 windows, keep-alive on). Each step is one byte for the
    // application (0) or the peer (1), then the operation's bytes.
    let solo = [0u8, 0xc0, 0x80];
    // Peer (1), raw bytes (1, then 0 picks Raw), their length, the bytes.
    let raw = |bytes: &[u8]| {
        let mut op = vec![1, 1, 0, bytes.len() as u8];
        op.extend_from_slice(bytes);
        op
    };
    // Peer (1), everything sent so far in 12-byte pieces (1, then 13 and size byte 0x87).
    let deliver = [1u8, 1, 13, 0x87];
    let mut frames = solo.to_vec();
    frames.extend(raw(&frame(1, 1, 1, 0))); // window update, SYN: the peer opens 1
    let mut data = frame(0, 4, 1, 5); // data, FIN
    data.extend_from_slice(b"hello");
    frames.extend(raw(&data));
    frames.extend(raw(&frame(2, 1, 0, 7))); // ping
    frames.extend(raw(&frame(1, 8, 3, 0))); // window update, RST on a stream never opened
    frames.extend(deliver);
    frames.extend([0, 0, 2]); // application: accept
    frames.extend([0, 0, 4, 0x8b]); // read 4096 bytes
    frames.extend([0, 0, 7, 0x8a]); // write 100 bytes
    frames.extend([0, 0, 10, 1]); // shutdown, twice
    frames.extend(raw(&frame(3, 0, 0, 1))); // GoAway, protocol error
    frames.extend(deliver);
    seed(&corpus, "yamux_engine", "frames", &frames)?;
    // The same server, with frames that keep to the protocol (peer 1, legal 0, stream 0,
    // then the kind): open with 400 bytes, data with FIN, then accept and read.
    let mut legal = solo.to_vec();
    legal.extend([1, 0, 0, 0, 100, 0, 1, 0x8c]); // open, 4 × 100 bytes, no FIN, 64 KiB pieces
    legal.extend([1, 0, 0, 2, 0x8a, 0, 0x81]); // data, 100 bytes, FIN, 1-byte pieces
    legal.extend([0, 0, 2, 0, 0, 4, 0x8c, 0, 0, 4, 0x8c]); // accept, read, read
    seed(&corpus, "yamux_engine", "legal", &legal)?;
    // A client and a server back to back: mode 1, both sides' limits, the final exchange
    // in 100-byte pieces, then a client open, a flow of 16 KiB to the server, the
    // server's accept, and the client's shutdown.
    let mut pair = vec![1u8, 0xc0, 0x80, 0xc0, 0x80, 0x8a];
    pair.extend([0, 0, 0, 0, 0]); // client: open
    pair.extend([8, 0, 0, 0x8b, 0x87, 0x8c]); // flow: 4 × 4096 bytes, 12-byte pieces
    pair.extend([0, 1, 0, 2]); // server: accept
    pair.extend([0, 0, 0, 10, 1]); // client: shutdown, twice
    pair.extend([4, 0, 0x8f]); // move the client's bytes
    seed(&corpus, "yamux_engine", "pair", &pair)?;
    let mut options = Vec::new();
    for value in [10_000u64, 0, 5, 1, 30, 2, 5, 3, 10, 0, 1024, 0, 1024, 0] {
        options.extend_from_slice(&value.to_le_bytes());
    }
    options.extend_from_slice(b"auto");
    seed(&corpus, "options", "defaults", &options)?;
    // A proxy URL with percent-encoded credentials, a NO_PROXY list, a target.
    seed(
        &corpus,
        "proxy_url",
        "socks5",
        b"socks5://agent:p%40ss@[::1]:1080\n.corp.example, 10.0.0.0/8 *\ngit.corp.example:443",
    )?;
    seed(&corpus, "proxy_url", "http", b"http://proxy.example:3128/")?;
    Ok(())
}

fn seed(corpus: &Path, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("seed-{name}"));
    if !path.exists() {
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libfuzzer_final_line() {
        assert_eq!(
            parse_done("Done 123456 runs in 20 second(s)"),
            Some((123456, 20))
        );
        assert_eq!(parse_done("Done 1 runs in 0 second(s)\n"), Some((1, 0)));
        assert_eq!(parse_done("#2 INITED cov: 3"), None);
        assert_eq!(parse_done("Done many runs in 20 second(s)"), None);
    }

    #[test]
    fn free_space_from_df() {
        let df = "Filesystem     1048576-blocks  Used Available Capacity Mounted on\n\
                  /dev/vda               257827 65536     27648      71% /\n";
        assert_eq!(available_mib(df), Some(27648));
        assert_eq!(available_mib("Filesystem 1048576-blocks\n"), None);
        assert_eq!(available_mib(""), None);
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(selected_targets(&[]).unwrap(), TARGETS);
        assert_eq!(selected_targets(&["pem".to_owned()]).unwrap(), ["pem"]);
        assert!(selected_targets(&["nope".to_owned()]).is_err());
    }

    #[test]
    fn every_target_is_in_the_fuzz_manifest() {
        let manifest =
            fs::read_to_string(crate::workspace_root().unwrap().join("fuzz/Cargo.toml")).unwrap();
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
        }
    }
}
