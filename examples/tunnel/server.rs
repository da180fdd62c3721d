//! `tunnel server`: agents connect on `--listen`, TCP clients on `--public`.

use anyhow::Context as _;
use qymux::tls::ServerTls;
use qymux::{Config, Qymux};
use qymux_forward::tunnel::{ServerConfig, run_server};
use tokio::net::TcpListener;

use crate::cli::ServerArgs;
use crate::{IDLE_TIMEOUT, KEEP_ALIVE, finish, forward_config, run_until_ctrl_c};

pub(crate) async fn server(args: ServerArgs) -> anyhow::Result<u8> {
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
