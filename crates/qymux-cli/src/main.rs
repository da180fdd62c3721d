//! `qymux`: reverse tunnels from a config file. See `qymux --help` and docs/cli.md.

mod agent;
mod config;
mod metrics;
mod probe;
mod proto;
mod server;

// One crypto library for the claims' HMAC and nonces, the one TLS uses.
#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
use aws_lc_rs as crypto;
#[cfg(feature = "ring")]
use ring as crypto;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use qymux::cert::{
    CertificateAuthority, DevSetOptions, existing_dev_set_files, write_crl, write_dev_set,
};

/// Reverse tunnels over QUIC or TLS+TCP: agents behind NAT dial a server, which
/// forwards each service's public TCP port to the agents that proved they hold it.
#[derive(Debug, Parser)]
#[command(name = "qymux", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (the level comes from RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server from a TOML config file (SIGHUP reloads its services, SIGTERM
    /// drains), or one service from flags (`--listen --cert --key --service`).
    Server {
        /// The config file.
        #[arg(
            long,
            short,
            required_unless_present = "listen",
            conflicts_with = "listen"
        )]
        config: Option<PathBuf>,
        /// Or one service from flags, without a file.
        #[command(flatten)]
        flags: config::ServerFlags,
    },
    /// Run an agent from a TOML config file (SIGHUP reloads its services), or one
    /// service from flags (`--server --ca|--pin --service`).
    Agent {
        /// The config file.
        #[arg(
            long,
            short,
            required_unless_present = "servers",
            conflicts_with = "servers"
        )]
        config: Option<PathBuf>,
        /// Or one service from flags, without a file.
        #[command(flatten)]
        flags: config::AgentFlags,
    },
    /// Write development certificates: a CA, a server and a client certificate.
    Cert(CertArgs),
    /// Report what works towards a server: QUIC, TCP, the fallback, RTT, certificate.
    Probe(probe::ProbeArgs),
}

/// The options of `cargo xtask cert`, which shares this code (`qymux_cert::write_dev_set`).
#[derive(Debug, clap::Args)]
struct CertArgs {
    /// The directory to write into (created if missing).
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// A name of the server certificate (DNS name or IP address); repeat for more.
    #[arg(long = "server-name", default_values_t = DevSetOptions::default().server_names_value().to_vec())]
    server_names: Vec<String>,
    /// The client (agent) certificate's common name.
    #[arg(long, default_value_t = DevSetOptions::default().client_name_value().to_owned())]
    client_name: String,
    /// The CA's common name.
    #[arg(long, default_value_t = DevSetOptions::default().ca_name_value().to_owned())]
    ca_name: String,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
    /// Instead of a new set: issue one more client certificate, NAME.pem and NAME.key,
    /// from the ca.pem and ca.key in --out.
    #[arg(long, value_name = "NAME", conflicts_with = "crl")]
    issue_client: Option<String>,
    /// Validity of the server and client certificates in days (default: the CA's
    /// default for leaves); with --crl, the CRL's next update [default: 7].
    #[arg(long, value_name = "N")]
    days: Option<u32>,
    /// Instead of a new set: sign a certificate revocation list with the ca.pem and
    /// ca.key in --out and write it to crl.pem there (replacing it).
    #[arg(long)]
    crl: bool,
    /// With --crl: a certificate (PEM) the CRL revokes; repeat for several. Without it,
    /// the CRL revokes nothing.
    #[arg(long, value_name = "FILE", requires = "crl")]
    revoke: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let result = match cli.command {
        Command::Cert(args) => cert(&args),
        Command::Server { config, flags } => {
            runtime().and_then(|rt| rt.block_on(server::run(config, flags)))
        }
        Command::Agent { config, flags } => {
            runtime().and_then(|rt| rt.block_on(agent::run(config, flags)))
        }
        Command::Probe(args) => runtime().and_then(|rt| rt.block_on(probe::run(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn cert(args: &CertArgs) -> Result<()> {
    if args.crl {
        let written = write_crl(&args.out, &args.revoke, args.days)
            .with_context(|| format!("writing a CRL into {}", args.out.display()))?;
        println!(
            "Wrote {} revoking {} certificate(s):",
            written.path.display(),
            written.revoked.len()
        );
        for fingerprint in &written.revoked {
            println!("  SHA-256 {fingerprint}");
        }
        println!("Give it to the server as client_crl; it is read again on SIGHUP.");
        return Ok(());
    }
    if let Some(name) = &args.issue_client {
        let read = |f: &str| {
            let path = args.out.join(f);
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca = CertificateAuthority::from_pem(&read("ca.pem")?, &read("ca.key")?)
            .context("loading the CA")?;
        let client = ca
            .issue_client(name)
            .with_context(|| format!("issuing a client certificate for {name:?}"))?;
        let (pem, key) = (
            args.out.join(format!("{name}.pem")),
            args.out.join(format!("{name}.key")),
        );
        client
            .write_pem_files(&pem, &key, args.force)
            .with_context(|| format!("writing {}", pem.display()))?;
        println!("Wrote {} and {}", pem.display(), key.display());
        println!(
            "  client certificate CN={name}, SHA-256 {}",
            client.fingerprint()
        );
        return Ok(());
    }
    if !args.force {
        let existing = existing_dev_set_files(&args.out);
        if !existing.is_empty() {
            let list: Vec<String> = existing
                .iter()
                .map(|p| format!("  {}", p.display()))
                .collect();
            bail!(
                "refusing to overwrite existing file(s); nothing was written:\n{}\n\
                 Pass --force to replace them, or --out DIR to write elsewhere.",
                list.join("\n")
            );
        }
    }
    let mut options = DevSetOptions::default();
    options
        .ca_name(args.ca_name.clone())
        .server_names(args.server_names.clone())
        .client_name(args.client_name.clone())
        .overwrite(args.force)
        .days(args.days);
    let set = write_dev_set(&args.out, options)
        .with_context(|| format!("writing certificates into {}", args.out.display()))?;
    println!("Wrote {}:", args.out.display());
    println!(
        "  ca.pem      CA certificate CN={}  SHA-256 {}",
        args.ca_name, set.ca
    );
    println!(
        "  server.pem  server certificate for {}  SHA-256 {}",
        args.server_names.join(", "),
        set.server
    );
    println!(
        "  client.pem  client certificate CN={}  SHA-256 {}",
        args.client_name, set.client
    );
    println!("  *.key       their private keys (mode 0600)");
    println!(
        "Agents trust ca.pem (`ca = \"ca.pem\"`), or pin the server: pin = \"{}\"",
        set.server
    );
    Ok(())
}
