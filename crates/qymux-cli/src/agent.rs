//! `qymux agent`: keeps sessions to the server(s), claims its services, and forwards
//! the streams the server opens to each service's local address.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::counter;
use qymux::cert::Fingerprint;
use qymux::forward::{SpliceOptions, splice};
use qymux::tls::ClientTls;
use qymux::{
    BoxSession, BoxStream, ClientConfig, Mode, Protocol, Qymux, ReconnectConfig, ReconnectState,
    Session,
};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{AgentConfig, AgentFlags, AgentService, ConnectMode, Trust};
use crate::proto::{self, Msg};

/// How long the server gets to send a stream's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a service's local address may take.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's services, replaced by a SIGHUP reload.
type Services = Arc<watch::Sender<Arc<BTreeMap<String, AgentService>>>>;

/// The services this session holds. A stream for a service can arrive just before the
/// `granted` line that precedes it on the control stream is read: it waits for it.
type Granted = watch::Sender<HashSet<String>>;

/// Runs the agent until SIGTERM or SIGINT.
pub(crate) async fn run(path: Option<PathBuf>, flags: AgentFlags) -> Result<()> {
    let config = match &path {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::from_flags(&flags)?,
    };
    if let Some(addr) = &config.metrics {
        crate::metrics::serve(addr, None).await?;
    }
    let mut tls = match &config.trust {
        Trust::Ca(path) => ClientTls::with_ca_file(path)
            .with_context(|| format!("loading ca {}", path.display()))?,
        Trust::Pin(fp) => ClientTls::with_pinned(*fp),
    };
    if let Some((cert, key)) = &config.identity {
        tls = tls
            .client_identity_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?;
    }
    let services: Services = Arc::new(watch::Sender::new(Arc::new(config.services.clone())));
    let groups: Vec<Vec<String>> = match config.connect {
        ConnectMode::First => vec![config.servers.clone()],
        ConnectMode::All => config.servers.iter().map(|s| vec![s.clone()]).collect(),
    };
    info!(
        servers = ?config.servers,
        connect = ?config.connect,
        services = ?config.services.keys().collect::<Vec<_>>(),
        "agent starting"
    );
    let mut running = Vec::new();
    for group in groups {
        let Some((first, more)) = group.split_first() else {
            continue;
        };
        let mut c = ClientConfig::new(first.clone());
        c.mode(config.mode)
            .more_server_addrs(more.iter().cloned())
            .client_tls(tls.clone())
            .options(config.options.clone());
        if let Some(name) = &config.server_name {
            c.server_name(name.clone());
        }
        let qymux = Qymux::new(c);
        let sessions = Arc::new(AtomicU64::new(0));
        let services = services.clone();
        let mode = config.mode;
        let reconnecting = qymux
            .connect_forever(ReconnectConfig::default(), move |session| {
                if sessions.fetch_add(1, Ordering::Relaxed) > 0 {
                    counter!("qymux_reconnects_total").increment(1);
                }
                let span = info_span!(
                    "session",
                    server = %session.remote_addr(),
                    protocol = %session.protocol()
                );
                serve_session(services.clone(), session, mode).instrument(span)
            })
            .context("starting the agent")?;
        tokio::spawn(log_states(reconnecting.state()));
        running.push(reconnecting);
    }
    wait_for_stop(path.as_deref(), &config, &services).await;
    info!("stopping");
    for r in running {
        r.shutdown().await;
    }
    Ok(())
}

/// Reloads the services on SIGHUP; returns on SIGTERM or SIGINT.
async fn wait_for_stop(path: Option<&std::path::Path>, running: &AgentConfig, services: &Services) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match path.map(AgentConfig::load) {
                None => warn!("SIGHUP: started from flags, there is no config file to reload"),
                Some(Ok(new)) => {
                    if new.servers != running.servers || new.connect != running.connect {
                        warn!("SIGHUP: only [services] are reloaded; restart to change servers or TLS");
                    }
                    info!(services = ?new.services.keys().collect::<Vec<_>>(), "SIGHUP: services reloaded");
                    services.send_replace(Arc::new(new.services));
                }
                Some(Err(e)) => warn!(error = %format!("{e:#}"), "SIGHUP: config refused; keeping the running services"),
            },
        }
    }
}

async fn log_states(mut states: tokio::sync::watch::Receiver<ReconnectState>) {
    loop {
        match &*states.borrow_and_update() {
            ReconnectState::Connecting {
                server, attempt, ..
            } => {
                debug!(%server, attempt, "dialing");
            }
            ReconnectState::Connected {
                server, protocol, ..
            } => info!(%server, %protocol, "connected"),
            ReconnectState::Reconnecting {
                retry_in,
                last_error,
                ..
            } => {
                warn!(error = %last_error.report(), ?retry_in, "session lost or dial failed; retrying")
            }
            ReconnectState::Stopped { last_error } => {
                match last_error {
                    Some(e) => warn!(error = %e.report(), "stopped"),
                    None => info!("stopped"),
                }
                return;
            }
            _ => {}
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_session(services: Services, session: BoxSession, mode: Mode) {
    counter!("qymux_handshakes_total", "outcome" => "ok").increment(1);
    if mode == Mode::Auto && session.protocol() == Protocol::Tcp {
        counter!("qymux_fallbacks_total").increment(1);
    }
    let Some(fingerprint) = session
        .peer_identity()
        .map(|id| Fingerprint::of(id.end_entity()))
    else {
        warn!("the server presented no certificate; closing");
        session.close().await;
        return;
    };
    let granted: Arc<Granted> = Arc::new(watch::Sender::new(HashSet::new()));
    let accepting = tokio::spawn(
        accept_streams(session.clone(), services.clone(), granted.clone()).in_current_span(),
    );
    let result = match session.open().await {
        Ok(control) => {
            control_loop(
                &session,
                &services,
                &granted,
                control,
                fingerprint.as_bytes(),
            )
            .await
        }
        Err(e) => Err(format!("opening the control stream: {e}")),
    };
    if let Err(e) = result {
        warn!(error = %e, "control stream failed; closing the session");
        session.close().await;
    }
    let reason = session.closed().await;
    info!(%reason, "session ended");
    accepting.abort();
}

async fn control_loop(
    session: &BoxSession,
    services: &Services,
    granted: &Granted,
    control: BoxStream,
    fingerprint: &[u8],
) -> Result<(), String> {
    let (reader, mut writer) = tokio::io::split(control);
    let mut reader = BufReader::new(reader);
    let mut pending: HashMap<String, Vec<u8>> = HashMap::new();
    let mut reloads = services.subscribe();
    let mut current = reloads.borrow_and_update().clone();
    let mut out = claims(&current, granted, &mut pending);
    loop {
        for m in out.drain(..) {
            writer
                .write_all(m.encode().as_bytes())
                .await
                .map_err(|e| format!("writing to the control stream: {e}"))?;
        }
        writer.flush().await.map_err(|e| e.to_string())?;
        let msg = tokio::select! {
            m = proto::read_msg(&mut reader) => m,
            _ = session.closed() => return Ok(()),
            Ok(()) = reloads.changed() => {
                let new = reloads.borrow_and_update().clone();
                // Services removed, or whose token changed, are given back.
                let held: Vec<String> = granted.borrow().iter().cloned().collect();
                for name in held {
                    let same = match (current.get(&name), new.get(&name)) {
                        (Some(old), Some(new)) => old.token == new.token,
                        _ => false,
                    };
                    if !same {
                        granted.send_modify(|g| {
                            g.remove(&name);
                        });
                        info!(service = %name, "claim released (reload)");
                        out.push(Msg::Release { service: name });
                    }
                }
                current = new;
                out.extend(claims(&current, granted, &mut pending));
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(_) if session.close_reason().is_some() => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match msg {
            Msg::Challenge { service, nonce } => {
                let (Some(client_nonce), Some(svc)) =
                    (pending.get(&service), current.get(&service))
                else {
                    debug!(service = %service, "challenge for a claim no longer pending; ignored");
                    continue;
                };
                let mac = svc
                    .token
                    .as_deref()
                    .map(|token| proto::prove(token, &service, &nonce, client_nonce, fingerprint));
                out.push(Msg::Proof { service, mac });
            }
            Msg::Granted { service } => {
                pending.remove(&service);
                granted.send_modify(|g| {
                    g.insert(service.clone());
                });
                info!(service = %service, "claim granted");
            }
            Msg::Refused { service, reason } => {
                pending.remove(&service);
                warn!(service = %service, reason = %reason, "claim refused");
                counter!("qymux_claims_refused_total", "service" => service).increment(1);
            }
            Msg::Revoked { service, reason } => {
                granted.send_modify(|g| {
                    g.remove(&service);
                });
                warn!(service = %service, reason = %reason, "claim revoked");
            }
            Msg::Changed => {
                debug!("the server's services changed; claiming again");
                out = claims(&current, granted, &mut pending);
            }
            Msg::Ping { id } => out.push(Msg::Pong { id }),
            other => return Err(format!("unexpected control message: {other:?}")),
        }
    }
}

/// Claims for the services neither granted nor being claimed.
fn claims(
    services: &BTreeMap<String, AgentService>,
    granted: &Granted,
    pending: &mut HashMap<String, Vec<u8>>,
) -> Vec<Msg> {
    let granted = granted.borrow();
    let mut out = Vec::new();
    for name in services.keys() {
        if granted.contains(name) || pending.contains_key(name) {
            continue;
        }
        let nonce = proto::nonce();
        pending.insert(name.clone(), nonce.clone());
        out.push(Msg::Claim {
            service: name.clone(),
            nonce,
        });
    }
    out
}

async fn accept_streams(session: BoxSession, services: Services, granted: Arc<Granted>) {
    while let Ok(stream) = session.accept().await {
        let services = services.clone();
        let granted = granted.clone();
        tokio::spawn(
            async move {
                if let Err(e) = forward_stream(stream, &services, &granted).await {
                    info!(error = %e, "stream not forwarded");
                }
            }
            .in_current_span(),
        );
    }
}

async fn forward_stream(
    mut stream: BoxStream,
    services: &Services,
    granted: &Granted,
) -> Result<(), String> {
    let name = match tokio::time::timeout(HEADER_TIMEOUT, proto::read_header(&mut stream)).await {
        Ok(Ok(name)) => name,
        Ok(Err(e)) => {
            qymux::Stream::abort(&mut stream);
            return Err(format!("reading the stream header: {e}"));
        }
        Err(_) => {
            qymux::Stream::abort(&mut stream);
            return Err("no stream header in time".into());
        }
    };
    let held = async {
        let mut rx = granted.subscribe();
        rx.wait_for(|g| g.contains(&name)).await.is_ok()
    };
    let svc = services.borrow().get(&name).cloned();
    let svc = match svc {
        Some(svc) if tokio::time::timeout(HEADER_TIMEOUT, held).await == Ok(true) => svc,
        _ => {
            qymux::Stream::abort(&mut stream);
            return Err(format!(
                "stream for {name:?}, which this session does not hold"
            ));
        }
    };
    let tcp =
        match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, TcpStream::connect(&svc.local)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                qymux::Stream::abort(&mut stream);
                return Err(format!("service {name}: connecting to {}: {e}", svc.local));
            }
            Err(_) => {
                qymux::Stream::abort(&mut stream);
                return Err(format!(
                    "service {name}: connecting to {} timed out",
                    svc.local
                ));
            }
        };
    counter!("qymux_streams_total", "service" => name.clone()).increment(1);
    let moved = match splice(tcp, stream, SpliceOptions::default()).await {
        Ok(m) => m,
        Err(e) => {
            debug!(service = %name, error = %e, "connection ended with an error");
            e.moved
        }
    };
    counter!("qymux_bytes_total", "service" => name.clone(), "direction" => "in")
        .increment(moved.stream_to_tcp);
    counter!("qymux_bytes_total", "service" => name, "direction" => "out")
        .increment(moved.tcp_to_stream);
    Ok(())
}
