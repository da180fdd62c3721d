//! The command line (clap), and the arguments the server and the agent run with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use qymux::Mode;
use qymux::cert::Fingerprint;
use qymux_forward::Target;

/// A reverse TCP tunnel: a public port on the server reaches a TCP service next to the
/// agent, which only dials out.
#[derive(Debug, Parser)]
#[command(
    name = "tunnel",
    after_help = "exit codes: 0 stopped by Ctrl-C, 2 usage error, 3 error"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Accept agents, and forward public TCP connections to the most recent one.
    Server(ServerCli),
    /// Dial the server and forward its streams to a TCP service.
    Agent(AgentCli),
}

#[derive(Debug, Args)]
pub(crate) struct IdentityCli {
    /// Certificate chain (PEM)
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM)
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServerCli {
    /// Where agents connect (auto mode: UDP and TCP on this port)
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Where TCP clients connect; each connection reaches an agent
    #[arg(long, value_name = "ADDR")]
    public: String,
    /// auto, quic or tcp
    #[arg(long, default_value = "auto")]
    mode: Mode,
    /// Certificate and key (default: a new self-signed certificate, whose SHA-256
    /// fingerprint is printed for --pin)
    #[command(flatten)]
    identity: IdentityCli,
    /// Require agent certificates issued by this CA (mTLS)
    #[arg(long, value_name = "PEM")]
    client_ca: Option<PathBuf>,
    /// Public connections at once; more are reset
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// How long a public connection waits for an agent, in seconds (0 to 3600)
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_wait)]
    agent_wait: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct AgentCli {
    /// The server's --listen address, host:port
    #[arg(long, value_name = "ADDR")]
    connect: String,
    /// The TCP service to reach, host:port (e.g. 127.0.0.1:80)
    #[arg(long, value_name = "ADDR")]
    forward: Target,
    /// auto (QUIC, falling back to TCP), quic or tcp
    #[arg(long, default_value = "auto")]
    mode: Mode,
    /// The name the server certificate must hold (default: host of ADDR)
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Trust this CA (default: the system's root store)
    #[arg(long, value_name = "PEM", conflicts_with = "pin")]
    ca: Option<PathBuf>,
    /// Accept only the server certificate with this SHA-256 fingerprint
    #[arg(long, value_name = "SHA256")]
    pin: Option<Fingerprint>,
    /// Client certificate and key (mTLS)
    #[command(flatten)]
    identity: IdentityCli,
    /// Forwarded connections at once; more are reset
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && (0.0..=3600.0).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{text:?}: expected seconds, 0 to 3600"))
}

/// What the server runs with.
#[derive(Debug)]
pub(crate) struct ServerArgs {
    pub(crate) listen: String,
    pub(crate) public: String,
    pub(crate) mode: Mode,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) client_ca: Option<PathBuf>,
    pub(crate) max_connections: usize,
    pub(crate) agent_wait: Duration,
}

impl From<ServerCli> for ServerArgs {
    fn from(cli: ServerCli) -> Self {
        ServerArgs {
            listen: cli.listen,
            public: cli.public,
            mode: cli.mode,
            identity: cli.identity.cert.zip(cli.identity.key),
            client_ca: cli.client_ca,
            max_connections: cli.max_connections as usize,
            agent_wait: cli.agent_wait,
        }
    }
}

/// How the agent verifies the server.
#[derive(Debug)]
pub(crate) enum Verify {
    SystemRoots,
    Ca(PathBuf),
    Pin(Fingerprint),
}

/// What the agent runs with.
#[derive(Debug)]
pub(crate) struct AgentArgs {
    pub(crate) connect: String,
    pub(crate) forward: Target,
    pub(crate) mode: Mode,
    pub(crate) server_name: Option<String>,
    pub(crate) verify: Verify,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) max_connections: usize,
}

impl From<AgentCli> for AgentArgs {
    fn from(cli: AgentCli) -> Self {
        let verify = match (cli.ca, cli.pin) {
            (Some(ca), _) => Verify::Ca(ca),
            (None, Some(pin)) => Verify::Pin(pin),
            (None, None) => Verify::SystemRoots,
        };
        AgentArgs {
            connect: cli.connect,
            forward: cli.forward,
            mode: cli.mode,
            server_name: cli.server_name,
            verify,
            identity: cli.identity.cert.zip(cli.identity.key),
            max_connections: cli.max_connections as usize,
        }
    }
}
