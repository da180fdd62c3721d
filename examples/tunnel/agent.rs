//! `tunnel agent`: dials the server and forwards its streams to `--forward`.

use anyhow::Context as _;
use qymux::tls::ClientTls;
use qymux::{Config, Qymux};
use qymux_forward::tunnel::{AgentConfig, AgentEvent, run_agent};

use crate::cli::{AgentArgs, Verify};
use crate::{IDLE_TIMEOUT, KEEP_ALIVE, finish, forward_config, run_until_ctrl_c};

pub(crate) async fn agent(args: AgentArgs) -> anyhow::Result<u8> {
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
    let agent = run_agent(qymux.dialers()?, config);
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
