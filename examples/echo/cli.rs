//! The command line (clap), and the arguments the server and the client run with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use qymux::Mode;
use qymux::cert::Fingerprint;

/// An echo server and client over Qymux.
#[derive(Debug, Parser)]
#[command(
    name = "echo",
    after_help = "exit codes: 0 all streams matched, 1 some failed, 2 usage error, 3 connection failed"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Echo every stream clients open; runs until killed.
    Server(ServerCli),
    /// Dial, send random bytes on streams, check the echo.
    Client(ClientCli),
}

/// A certificate chain and its key (both or neither).
#[derive(Debug, Args)]
pub(crate) struct IdentityCli {
    /// Certificate chain (PEM)
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM)
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
}

impl IdentityCli {
    fn pair(self) -> Option<(PathBuf, PathBuf)> {
        self.cert.zip(self.key)
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServerCli {
    /// Address to listen on (port 0 picks one); in auto mode UDP and TCP
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// auto (QUIC and TCP on one port), quic or tcp
    #[arg(long, default_value = "auto")]
    mode: Mode,
    /// Certificate and key (default: a new self-signed certificate, whose SHA-256
    /// fingerprint is printed for the client's --pin)
    #[command(flatten)]
    identity: IdentityCli,
    /// Require client certificates issued by this CA (mTLS)
    #[arg(long, value_name = "PEM")]
    client_ca: Option<PathBuf>,
    /// Also open N streams to each client, 64 KiB each, and check the echo
    #[arg(long, value_name = "N", default_value_t = 0)]
    reverse: usize,
}

#[derive(Debug, Args)]
#[group(id = "verify", multiple = false)]
pub(crate) struct VerifyCli {
    /// Trust this CA (default: the system's root store)
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Accept only the server certificate with this SHA-256 fingerprint
    #[arg(long, value_name = "SHA256")]
    pin: Option<Fingerprint>,
    /// Do not verify the server at all (development only)
    #[arg(long)]
    dangerous_skip_verify: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClientCli {
    /// The server, host:port
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// auto (QUIC, falling back to TCP), quic or tcp
    #[arg(long, default_value = "auto")]
    mode: Mode,
    /// The name the server's certificate must hold (default: host of ADDR)
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    #[command(flatten)]
    verify: VerifyCli,
    /// Client certificate and key (mTLS)
    #[command(flatten)]
    identity: IdentityCli,
    /// Streams to open at once
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..))]
    streams: u32,
    /// Bytes to send on each stream: 1048576, 64K, 1M, 1G
    #[arg(long, value_name = "B", default_value = "1M", value_parser = parse_size)]
    bytes: u64,
    /// Bound on the exchange after connecting, in seconds
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
}

/// What the server runs with.
#[derive(Debug)]
pub(crate) struct ServerArgs {
    pub(crate) listen: String,
    pub(crate) mode: Mode,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) reverse: usize,
}

impl From<ServerCli> for ServerArgs {
    fn from(cli: ServerCli) -> Self {
        ServerArgs {
            listen: cli.listen,
            mode: cli.mode,
            identity: cli.identity.pair(),
            client_ca: cli.client_ca,
            reverse: cli.reverse,
        }
    }
}

/// How the client verifies the server.
#[derive(Debug)]
pub(crate) enum Verify {
    SystemRoots,
    Ca(PathBuf),
    Pin(Fingerprint),
    DangerousSkip,
}

/// What the client runs with.
#[derive(Debug)]
pub(crate) struct ClientArgs {
    pub(crate) connect: String,
    pub(crate) mode: Mode,
    pub(crate) server_name: Option<String>,
    pub(crate) verify: Verify,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) streams: usize,
    pub(crate) bytes: u64,
    pub(crate) timeout: Duration,
}

impl From<ClientCli> for ClientArgs {
    fn from(cli: ClientCli) -> Self {
        let verify = match cli.verify {
            VerifyCli { ca: Some(ca), .. } => Verify::Ca(ca),
            VerifyCli { pin: Some(pin), .. } => Verify::Pin(pin),
            VerifyCli {
                dangerous_skip_verify: true,
                ..
            } => Verify::DangerousSkip,
            _ => Verify::SystemRoots,
        };
        ClientArgs {
            connect: cli.connect,
            mode: cli.mode,
            server_name: cli.server_name,
            verify,
            identity: cli.identity.pair(),
            streams: cli.streams as usize,
            bytes: cli.bytes,
            timeout: Duration::from_secs(cli.timeout),
        }
    }
}

/// `1048576`, `64K`, `64KiB`, `1M`, `1MB`, `2G`: binary multiples (K = 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?}: expected a size like 1048576, 64K, 1M or 1G");
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    number.checked_mul(1 << shift).ok_or_else(bad)
}
