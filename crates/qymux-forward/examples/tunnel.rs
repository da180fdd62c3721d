//! A reverse TCP tunnel on the command line: a public port on the server reaches a TCP
//! service next to the agent, which only dials out.
//!
//! ```text
//! # On the server (reachable): agents connect on 7000, TCP clients on 8080.
//! cargo run --release -p qymux-forward --example tunnel -- \
//!     server --listen 0.0.0.0:7000 --public 0.0.0.0:8080
//!     fingerprint: 5f1c…   (self-signed; agents use --pin 5f1c…)
//!
//! # Next to the service (behind NAT): forward everything to the local web server.
//! cargo run --release -p qymux-forward --example tunnel -- \
//!     agent --connect server.example:7000 --pin 5f1c… --forward 127.0.0.1:80
//!
//! curl http://server.example:8080/     # answered by the agent's 127.0.0.1:80
//! ```
//!
//! Any TCP protocol goes through (HTTP, gRPC, iperf3, ssh): bytes are forwarded as they
//! are, half-close included, and a reset on one side resets the other.
//!
//! The **server** hands each public connection to the most recently connected agent
//! whose session is alive; with no agent connected, a connection waits up to
//! `--agent-wait` seconds for one, then is reset. The **agent** redials whenever its
//! session drops, with exponential backoff and full jitter (100 ms doubling to 30 s; a
//! session that lived 10 s resets it), printing each attempt and why it failed.
//!
//! Both run until Ctrl-C, which lets the connections in progress finish. Logs go to
//! stderr (default: warnings about connections); more with `RUST_LOG=qymux_forward=debug`.
//!
//! Exit codes: `0` stopped by Ctrl-C, `2` usage error, `3` could not start (bad
//! certificate files, address in use) or stopped on an error.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use qymux::cert::Fingerprint;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{Config, Mode, Qymux};
use qymux_forward::tunnel::{AgentConfig, AgentEvent, ServerConfig, run_agent, run_server};
use qymux_forward::{ForwardConfig, ForwardHandle, Stopped, Target};
use tokio::net::TcpListener;

const USAGE: &str = "\
usage:
  tunnel server --listen ADDR --public ADDR [--mode auto|quic|tcp]
                [--cert PEM --key PEM] [--client-ca PEM]
                [--max-connections N] [--agent-wait SECS]
  tunnel agent  --connect ADDR --forward ADDR [--mode auto|quic|tcp]
                [--server-name NAME] [--ca PEM | --pin SHA256] [--cert PEM --key PEM]
                [--max-connections N]

server:
  --listen ADDR          where agents connect (auto mode: UDP and TCP on this port)
  --public ADDR          where TCP clients connect; each connection reaches an agent
  --mode MODE            auto (default), quic or tcp
  --cert, --key PEM      certificate chain and key (default: a new self-signed
                         certificate, whose SHA-256 fingerprint is printed for --pin)
  --client-ca PEM        require agent certificates issued by this CA (mTLS)
  --max-connections N    public connections at once (default 1024); more are reset
  --agent-wait SECS      how long a public connection waits for an agent (default 5)

agent:
  --connect ADDR         the server's --listen address, host:port
  --forward ADDR         the TCP service to reach, host:port (e.g. 127.0.0.1:80)
  --mode MODE            auto (default: QUIC, falling back to TCP), quic or tcp
  --server-name NAME     the name the server certificate must hold (default: host of ADDR)
  --ca PEM               trust this CA (default: the system's root store)
  --pin SHA256           accept only the server certificate with this fingerprint
  --cert, --key PEM      client certificate and key (mTLS)
  --max-connections N    forwarded connections at once (default 1024); more are reset

exit codes: 0 stopped by Ctrl-C, 2 usage error, 3 error";

const EXIT_OK: u8 = 0;
const EXIT_USAGE: u8 = 2;
const EXIT_ERROR: u8 = 3;

/// Keep-alive and dead-peer timeout for tunnel sessions: a dead server is noticed (and
/// redialed) within about 15 s, not the default 30 s.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    // By default: warnings (refused or failed connections), except the tunnel's own,
    // which are printed below as events.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,qymux_forward::tunnel=error")
            }),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let command = match parse(std::env::args().skip(1).collect()) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::from(EXIT_OK);
        }
        Ok(command) => command,
        Err(message) => {
            eprintln!("error: {message}\n\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match command {
            Command::Server(args) => server(args).await,
            Command::Agent(args) => agent(args).await,
            Command::Help => Ok(EXIT_OK),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Command line

#[derive(Debug)]
enum Command {
    Help,
    Server(ServerArgs),
    Agent(AgentArgs),
}

#[derive(Debug)]
struct ServerArgs {
    listen: String,
    public: String,
    mode: Mode,
    identity: Option<(PathBuf, PathBuf)>,
    client_ca: Option<PathBuf>,
    max_connections: usize,
    agent_wait: Duration,
}

#[derive(Debug)]
enum Verify {
    SystemRoots,
    Ca(PathBuf),
    Pin(Fingerprint),
}

#[derive(Debug)]
struct AgentArgs {
    connect: String,
    forward: Target,
    mode: Mode,
    server_name: Option<String>,
    verify: Verify,
    identity: Option<(PathBuf, PathBuf)>,
    max_connections: usize,
}

/// `--name value` or `--name=value` options, each allowed once and only if known.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(args: &[String], known: &[&str]) -> Result<Self, String> {
        let mut found: Vec<(String, String)> = Vec::new();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if !arg.starts_with("--") {
                return Err(format!("unexpected argument {arg:?}"));
            }
            let (name, value) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = rest
                        .next()
                        .filter(|v| !v.starts_with("--"))
                        .ok_or_else(|| format!("{arg} needs a value"))?;
                    (arg.clone(), value.clone())
                }
            };
            if !known.contains(&name.as_str()) {
                return Err(format!("unknown option {name}"));
            }
            if found.iter().any(|(n, _)| *n == name) {
                return Err(format!("{name} given twice"));
            }
            found.push((name, value));
        }
        Ok(Options(found))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str, what: &str) -> Result<String, String> {
        self.get(name)
            .map(str::to_owned)
            .ok_or_else(|| format!("{what}: {name} ADDR is required"))
    }

    fn mode(&self) -> Result<Mode, String> {
        self.get("--mode").map_or(Ok(Mode::Auto), |m| {
            m.parse()
                .map_err(|_| format!("--mode {m:?}: expected auto, quic or tcp"))
        })
    }

    fn identity(&self) -> Result<Option<(PathBuf, PathBuf)>, String> {
        match (self.get("--cert"), self.get("--key")) {
            (Some(c), Some(k)) => Ok(Some((c.into(), k.into()))),
            (None, None) => Ok(None),
            (Some(_), None) => Err("--cert needs --key".into()),
            (None, Some(_)) => Err("--key needs --cert".into()),
        }
    }

    fn max_connections(&self) -> Result<usize, String> {
        match self.get("--max-connections") {
            None => Ok(1024),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "--max-connections {v:?}: expected a number of at least 1"
                )),
            },
        }
    }
}

fn parse(args: Vec<String>) -> Result<Command, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err("no command: expected `server` or `agent`".into());
    };
    if rest.iter().any(|a| a == "-h" || a == "--help") {
        return Ok(Command::Help);
    }
    match command.as_str() {
        "-h" | "--help" | "help" => Ok(Command::Help),
        "server" => parse_server(rest).map(Command::Server),
        "agent" => parse_agent(rest).map(Command::Agent),
        other => Err(format!(
            "unknown command {other:?}: expected `server` or `agent`"
        )),
    }
}

fn parse_server(args: &[String]) -> Result<ServerArgs, String> {
    let o = Options::parse(
        args,
        &[
            "--listen",
            "--public",
            "--mode",
            "--cert",
            "--key",
            "--client-ca",
            "--max-connections",
            "--agent-wait",
        ],
    )?;
    let agent_wait = match o.get("--agent-wait") {
        None => Duration::from_secs(5),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("--agent-wait {v:?}: expected seconds, 0 to 3600"))?,
    };
    Ok(ServerArgs {
        listen: o.required("--listen", "server")?,
        public: o.required("--public", "server")?,
        mode: o.mode()?,
        identity: o.identity()?,
        client_ca: o.get("--client-ca").map(PathBuf::from),
        max_connections: o.max_connections()?,
        agent_wait,
    })
}

fn parse_agent(args: &[String]) -> Result<AgentArgs, String> {
    let o = Options::parse(
        args,
        &[
            "--connect",
            "--forward",
            "--mode",
            "--server-name",
            "--ca",
            "--pin",
            "--cert",
            "--key",
            "--max-connections",
        ],
    )?;
    let verify = match (o.get("--ca"), o.get("--pin")) {
        (Some(_), Some(_)) => return Err("use either --ca or --pin, not both".into()),
        (Some(ca), None) => Verify::Ca(ca.into()),
        (None, Some(pin)) => Verify::Pin(pin.parse().map_err(|e| format!("--pin {pin:?}: {e}"))?),
        (None, None) => Verify::SystemRoots,
    };
    let forward = o.required("--forward", "agent")?;
    let forward = forward
        .parse::<Target>()
        .map_err(|e| format!("--forward {forward:?}: {e}"))?;
    Ok(AgentArgs {
        connect: o.required("--connect", "agent")?,
        forward,
        mode: o.mode()?,
        server_name: o.get("--server-name").map(str::to_owned),
        verify,
        identity: o.identity()?,
        max_connections: o.max_connections()?,
    })
}

// ---------------------------------------------------------------------------------------
// Server

async fn server(args: ServerArgs) -> anyhow::Result<u8> {
    let mut tls = match &args.identity {
        Some((cert, key)) => ServerTls::from_pem_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?,
        None => ServerTls::new(
            qymux::cert::self_signed(&["localhost", "127.0.0.1", "::1"])
                .context("making a self-signed certificate")?,
        ),
    };
    if let Some(ca) = &args.client_ca {
        tls = tls
            .client_ca_file(ca)
            .with_context(|| format!("loading the client CA {}", ca.display()))?;
    }
    let fingerprint = tls.identity().fingerprint();
    let qymux = Qymux::new(
        Config::new()
            .mode(args.mode)
            .server_tls(tls)
            .keep_alive(KEEP_ALIVE)
            .idle_timeout(IDLE_TIMEOUT),
    );
    let agents = qymux
        .listen(&args.listen)
        .await
        .with_context(|| format!("listening for agents on {}", args.listen))?;
    let public = TcpListener::bind(&args.public)
        .await
        .with_context(|| format!("listening for public connections on {}", args.public))?;

    println!("fingerprint: {fingerprint}");
    if args.identity.is_none() {
        println!("(self-signed: agents verify it with --pin {fingerprint})");
    }
    let protocols: Vec<String> = agents.protocols().iter().map(ToString::to_string).collect();
    println!(
        "agents: listening on {} ({}){}",
        agents.local_addr(),
        protocols.join(", "),
        if args.client_ca.is_some() {
            ", client certificates required"
        } else {
            ""
        }
    );
    println!(
        "public: listening on {}, forwarding to the most recent agent",
        public.local_addr()?
    );

    let mut config = ServerConfig::default();
    config.agent_wait = args.agent_wait;
    config.forward = forward_config(args.max_connections);
    let server = run_server(agents, public, config);
    let mut events = server.subscribe();
    let handle = server.handle();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            println!("server: {event}");
        }
    });
    finish("server", run_until_ctrl_c(server, handle).await)
}

// ---------------------------------------------------------------------------------------
// Agent

async fn agent(args: AgentArgs) -> anyhow::Result<u8> {
    let mut tls = match &args.verify {
        Verify::SystemRoots => ClientTls::with_system_roots(),
        Verify::Ca(path) => ClientTls::with_ca_file(path)
            .with_context(|| format!("loading the CA {}", path.display()))?,
        Verify::Pin(fingerprint) => ClientTls::with_pinned(*fingerprint),
    };
    if let Some((cert, key)) = &args.identity {
        tls = tls
            .client_identity_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
    }
    let mut config = Config::new()
        .mode(args.mode)
        .server_addr(args.connect.clone())
        .client_tls(tls)
        .keep_alive(KEEP_ALIVE)
        .idle_timeout(IDLE_TIMEOUT);
    if let Some(name) = &args.server_name {
        config = config.server_name(name.clone());
    }
    let qymux = Qymux::new(config);
    println!(
        "agent: connecting to {} ({}), forwarding to {}",
        args.connect, args.mode, args.forward
    );

    let mut config = AgentConfig::new(args.forward);
    config.forward = forward_config(args.max_connections);
    let agent = run_agent(
        move || {
            let qymux = qymux.clone();
            async move { qymux.dial().await }
        },
        config,
    );
    let mut events = agent.subscribe();
    let handle = agent.handle();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if !matches!(event, AgentEvent::Dialing { .. }) {
                println!("agent: {event}");
            }
        }
    });
    finish("agent", run_until_ctrl_c(agent, handle).await)
}

// ---------------------------------------------------------------------------------------
// Shared

fn forward_config(max_connections: usize) -> ForwardConfig {
    let mut config = ForwardConfig::default();
    config.max_connections(Some(max_connections));
    config
}

/// Runs `task` until it stops by itself, or Ctrl-C asks it to shut down gracefully (a
/// second Ctrl-C aborts the connections still in progress).
async fn run_until_ctrl_c(
    task: impl std::future::Future<Output = Stopped> + Send + 'static,
    handle: ForwardHandle,
) -> Stopped {
    let mut task = tokio::spawn(task);
    let mut interrupts = 0;
    loop {
        tokio::select! {
            stopped = &mut task => {
                return stopped.unwrap_or_else(|e| panic!("the tunnel task failed: {e}"));
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts == 1 {
                    eprintln!("shutting down: waiting for connections in progress (Ctrl-C again to reset them)");
                    handle.shutdown();
                } else {
                    handle.abort();
                }
            }
        }
    }
}

fn finish(who: &str, stopped: Stopped) -> anyhow::Result<u8> {
    let s = stopped.stats;
    println!(
        "{who}: stopped ({}): {} connections, {} completed, {} failed, {} refused; \
         {} bytes TCP→tunnel, {} bytes tunnel→TCP",
        stopped.reason,
        s.accepted,
        s.completed,
        s.failed,
        s.refused,
        s.tcp_to_stream_bytes,
        s.stream_to_tcp_bytes
    );
    if stopped.reason.is_requested() {
        Ok(EXIT_OK)
    } else {
        Ok(EXIT_ERROR)
    }
}
