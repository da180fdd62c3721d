//! `qymux server`: accepts agent sessions, grants their claims, and forwards each
//! service's public connections to the pool of agents holding it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use metrics::{counter, gauge, histogram};
use qymux::cert::{CertNames, Identity};
use qymux::forward::{SpliceOptions, splice};
use qymux::tls::{Crls, ServerTls};
use qymux::transport::admission::Source;
use qymux::{BoxSession, BoxStream, Config, Qymux, Session};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::{ServerConfig, ServerFlags, ServiceDef};
use crate::proto::{self, Msg};

/// How long a public connection waits for an agent of its service when none holds it.
const AGENT_WAIT: Duration = Duration::from_secs(5);
/// How often the server pings each agent's control stream (RTT metric, liveness).
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// How long an agent has to open its control stream, and to answer a challenge.
const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the server until SIGTERM or SIGINT, then drains.
pub(crate) async fn run(path: Option<PathBuf>, flags: ServerFlags) -> Result<()> {
    let config = match &path {
        Some(path) => ServerConfig::load(path)?,
        None => ServerConfig::from_flags(&flags)?,
    };
    let identity = Identity::load_pem_files(&config.cert, &config.key).with_context(|| {
        format!(
            "loading {} and {}",
            config.cert.display(),
            config.key.display()
        )
    })?;
    let fingerprint = identity.fingerprint();
    let mut tls = ServerTls::new(identity);
    if let Some(ca) = &config.client_ca {
        tls = tls
            .client_ca_file(ca)
            .with_context(|| format!("loading client_ca {}", ca.display()))?;
    }
    if !config.client_crl.is_empty() {
        tls = tls
            .client_crl_files(&config.client_crl)
            .context("loading client_crl")?;
    }
    let crls = tls.client_revocation().cloned();
    let qymux = Qymux::new(
        Config::new()
            .mode(config.mode)
            .server_tls(tls)
            .options(config.options.clone()),
    );
    let listener = Arc::new(
        qymux
            .listen(&config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?,
    );
    if let Some(addr) = &config.metrics {
        let listener = Arc::downgrade(&listener);
        let upkeep: crate::metrics::Upkeep = Arc::new(move || {
            if let Some(l) = listener.upgrade() {
                counter!("qymux_handshakes_total", "outcome" => "failed")
                    .absolute(l.handshake_failures());
            }
        });
        crate::metrics::serve(addr, Some(upkeep)).await?;
    }
    let state = Arc::new(State {
        services: Mutex::new(BTreeMap::new()),
        changed: watch::Sender::new(0),
        draining: watch::Sender::new(false),
        fingerprint: fingerprint.as_bytes().to_vec(),
        next_session: AtomicU64::new(1),
    });
    state.apply(&config.services).await?;
    info!(
        addr = %listener.local_addr(),
        mode = %config.mode,
        fingerprint = %fingerprint,
        services = config.services.len(),
        "listening for agents"
    );
    let accepting = tokio::spawn(accept_agents(listener.clone(), state.clone()));
    wait_for_stop(path.as_deref(), &state, crls.as_ref()).await;
    info!(grace = ?config.shutdown_grace, "SIGTERM: draining");
    accepting.abort();
    state.stop_public();
    state.draining.send_replace(true);
    listener.shutdown(config.shutdown_grace).await;
    info!("drained; bye");
    Ok(())
}

/// Reloads on SIGHUP (the services, and the CRL files the server started with); returns
/// on SIGTERM or SIGINT.
async fn wait_for_stop(path: Option<&Path>, state: &Arc<State>, crls: Option<&Crls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stopping with the process only");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                if let Some(crls) = crls {
                    match crls.reload() {
                        Ok(()) => info!(crls = crls.len(), "SIGHUP: client_crl reloaded"),
                        Err(e) => warn!(error = %e, "SIGHUP: client_crl refused; keeping the lists in force"),
                    }
                }
                let Some(path) = path else {
                    warn!("SIGHUP: started from flags, there is no config file to reload");
                    continue;
                };
                match ServerConfig::load(path) {
                    Ok(new) => match state.apply(&new.services).await {
                        Ok(()) => info!(services = new.services.len(), "SIGHUP: services reloaded"),
                        Err(e) => warn!(error = %format!("{e:#}"), "SIGHUP: reload failed; some services may be missing"),
                    },
                    Err(e) => warn!(error = %format!("{e:#}"), "SIGHUP: config refused; keeping the running services"),
                }
            }
            _ = term.recv() => return,
            _ = int.recv() => return,
        }
    }
}

/// What every agent session and public listener share.
struct State {
    services: Mutex<BTreeMap<String, Arc<Service>>>,
    /// Bumped when the services change (a reload).
    changed: watch::Sender<u64>,
    /// Set on SIGTERM: control streams end, so sessions can drain.
    draining: watch::Sender<bool>,
    fingerprint: Vec<u8>,
    next_session: AtomicU64,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Service>>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn service(&self, name: &str) -> Option<Arc<Service>> {
        self.lock().get(name).cloned()
    }

    /// Makes the running services those of `defs`: unchanged ones keep running with
    /// their connections; removed or changed ones stop (their agents are told).
    async fn apply(&self, defs: &BTreeMap<String, ServiceDef>) -> Result<()> {
        let current: BTreeMap<String, Arc<Service>> = self.lock().clone();
        let mut next = BTreeMap::new();
        let mut stopped = Vec::new();
        for (name, svc) in &current {
            match defs.get(name) {
                Some(def) if *def == svc.def => {
                    next.insert(name.clone(), svc.clone());
                }
                _ => stopped.push(svc.clone()),
            }
        }
        // Stop first, so a changed service can bind its public address again.
        for svc in &stopped {
            info!(service = %svc.def.name, "service stopped");
            svc.stop().await;
        }
        let mut first_error = None;
        for (name, def) in defs {
            if next.contains_key(name) {
                continue;
            }
            match Service::start(def.clone()).await {
                Ok(svc) => {
                    next.insert(name.clone(), svc);
                }
                Err(e) => {
                    warn!(service = %name, error = %format!("{e:#}"), "service not started");
                    first_error.get_or_insert(e);
                }
            }
        }
        *self.lock() = next;
        self.changed.send_modify(|n| *n += 1);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop_public(&self) {
        for svc in self.lock().values() {
            svc.stop_accepting();
        }
    }
}

/// One `[services.NAME]` running.
struct Service {
    def: ServiceDef,
    pool: Pool,
    /// The public accept loop and its connections.
    public: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set to stop accepting public connections (a drain).
    stop_accept: watch::Sender<bool>,
}

impl Service {
    async fn start(def: ServiceDef) -> Result<Arc<Service>> {
        let listener = TcpListener::bind(&def.public)
            .await
            .with_context(|| format!("service {:?}: binding public {}", def.name, def.public))?;
        let local = listener.local_addr()?;
        let svc = Arc::new(Service {
            def,
            pool: Pool::default(),
            public: Mutex::new(None),
            stop_accept: watch::Sender::new(false),
        });
        let task = tokio::spawn(
            serve_public(svc.clone(), listener, svc.stop_accept.subscribe())
                .instrument(info_span!("service", service = %svc.def.name)),
        );
        *svc.public.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        info!(
            service = %svc.def.name,
            public = %local,
            max_connections = svc.def.max_connections,
            max_connections_per_source = svc.def.max_connections_per_source,
            idle_timeout = ?svc.def.idle_timeout,
            "service listening"
        );
        Ok(svc)
    }

    /// Stops accepting public connections; the ones in progress go on.
    fn stop_accepting(&self) {
        self.stop_accept.send_replace(true);
    }

    /// Stops the service: its public connections are reset, and its public address is
    /// free again when this returns.
    async fn stop(&self) {
        self.stop_accepting();
        self.pool.clear();
        let task = self.public.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The agent sessions holding a service: new connections go round-robin over the
/// live ones, so a second agent adds capacity and failover, and takes nothing away
/// from the first.
#[derive(Default)]
struct Pool {
    members: Mutex<Vec<(u64, BoxSession)>>,
    next: AtomicUsize,
    changed: watch::Sender<u64>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, BoxSession)>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, id: u64, session: BoxSession) -> usize {
        let n = {
            let mut m = self.lock();
            m.retain(|(i, s)| *i != id && s.close_reason().is_none());
            m.push((id, session));
            m.len()
        };
        self.changed.send_modify(|n| *n += 1);
        n
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|(i, _)| *i != id);
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn pick(&self, skip: &[u64]) -> Option<(u64, BoxSession)> {
        let m = self.lock();
        let live: Vec<&(u64, BoxSession)> = m
            .iter()
            .filter(|(i, s)| s.close_reason().is_none() && !skip.contains(i))
            .collect();
        if live.is_empty() {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[k].clone())
    }

    /// A stream to an agent holding the service, waiting up to [`AGENT_WAIT`] for one.
    async fn open(&self) -> Result<BoxStream, String> {
        let deadline = tokio::time::Instant::now() + AGENT_WAIT;
        let mut changed = self.changed.subscribe();
        let mut failed = Vec::new();
        loop {
            while let Some((id, session)) = self.pick(&failed) {
                match session.open().await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        debug!(agent = id, error = %e.report(), "opening a stream failed; trying another agent");
                        failed.push(id);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(format!(
                    "no agent holds the service (waited {AGENT_WAIT:?})"
                ));
            }
        }
    }
}

/// Per-source connection counts of one service. A source is an IPv4 address (also
/// written IPv4-mapped) or an IPv6 /64, as for the listeners' handshake caps: one IPv6
/// host can draw on a whole /64.
#[derive(Default)]
struct Sources(Mutex<HashMap<Source, usize>>);

struct SourceSlot {
    sources: Arc<Sources>,
    source: Source,
}

impl Sources {
    fn take(self: &Arc<Self>, peer: SocketAddr, max: usize) -> Option<SourceSlot> {
        let source = Source::of(peer);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(source).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// Accepts the service's public connections until stopped; dropping (aborting) it
/// resets the connections in progress.
async fn serve_public(svc: Arc<Service>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let total = Arc::new(Semaphore::new(svc.def.max_connections));
    let sources = Arc::new(Sources::default());
    let mut conns = JoinSet::new();
    let name = svc.def.name.clone();
    loop {
        while conns.try_join_next().is_some() {}
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accepting a public connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            refuse(&tcp, &name, "max_connections", peer);
            continue;
        };
        let Some(slot) = sources.take(peer, svc.def.max_connections_per_source) else {
            refuse(&tcp, &name, "max_connections_per_source", peer);
            continue;
        };
        conns.spawn(
            forward_public(svc.clone(), tcp, peer, permit, slot)
                .instrument(info_span!("public", %peer)),
        );
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

fn refuse(tcp: &TcpStream, service: &str, reason: &'static str, peer: SocketAddr) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    counter!("qymux_public_refused_total", "service" => service.to_owned(), "reason" => reason)
        .increment(1);
    warn!(service, %peer, reason, "public connection refused");
}

async fn forward_public(
    svc: Arc<Service>,
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    _slot: SourceSlot,
) {
    let name = &svc.def.name;
    let mut stream = match svc.pool.open().await {
        Ok(s) => s,
        Err(reason) => {
            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
            counter!("qymux_public_refused_total", "service" => name.clone(), "reason" => "no_agent")
                .increment(1);
            warn!(service = %name, %peer, %reason, "public connection reset");
            return;
        }
    };
    if let Err(e) = stream.write_all(&proto::header(name)).await {
        warn!(service = %name, error = %e, "writing the stream header failed");
        return;
    }
    counter!("qymux_streams_total", "service" => name.clone()).increment(1);
    let options = SpliceOptions::default().idle_timeout(Some(svc.def.idle_timeout));
    let moved = match splice(tcp, stream, &options).await {
        Ok(moved) => {
            debug!(service = %name, ?moved, "connection done");
            moved
        }
        Err(e) => {
            info!(service = %name, error = %e, "connection ended with an error");
            e.moved
        }
    };
    counter!("qymux_bytes_total", "service" => name.clone(), "direction" => "in")
        .increment(moved.tcp_to_stream);
    counter!("qymux_bytes_total", "service" => name.clone(), "direction" => "out")
        .increment(moved.stream_to_tcp);
}

async fn accept_agents(listener: Arc<qymux::Listener>, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok(session) => {
                counter!("qymux_handshakes_total", "outcome" => "ok").increment(1);
                let id = state.next_session.fetch_add(1, Ordering::Relaxed);
                let span = info_span!(
                    "agent",
                    session = id,
                    peer = %session.remote_addr(),
                    protocol = %session.protocol()
                );
                tokio::spawn(serve_agent(state.clone(), id, session).instrument(span));
            }
            Err(e) if e.is_session_closed() => return,
            Err(e) => {
                // Handshake failures are counted by the listener (`handshake_failures`).
                warn!(error = %e.report(), "accepting an agent failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The names in the agent's client certificate (common name and DNS names).
fn cert_names(session: &BoxSession) -> Vec<String> {
    let Some(identity) = session.peer_identity() else {
        return Vec::new();
    };
    match CertNames::of(identity.end_entity()) {
        Ok(n) => n.common_name.into_iter().chain(n.dns_names).collect(),
        Err(_) => Vec::new(),
    }
}

async fn serve_agent(state: Arc<State>, id: u64, session: BoxSession) {
    let protocol = session.protocol().to_string();
    let names = cert_names(&session);
    info!(names = ?names, "agent connected");
    gauge!("qymux_sessions", "protocol" => protocol.clone()).increment(1.0);
    let control = tokio::select! {
        s = session.accept() => s,
        reason = session.closed() => {
            info!(%reason, "agent session ended before its control stream");
            gauge!("qymux_sessions", "protocol" => protocol).decrement(1.0);
            return;
        }
        () = tokio::time::sleep(CLAIM_TIMEOUT) => {
            // Not an agent, or a stuck one: it holds no session slot for long.
            warn!(timeout = ?CLAIM_TIMEOUT, "no control stream in time; closing the session");
            session.close().await;
            gauge!("qymux_sessions", "protocol" => protocol).decrement(1.0);
            return;
        }
    };
    // Streams the agent opens after the control stream are not part of the protocol.
    let refuse_more = {
        let session = session.clone();
        tokio::spawn(async move {
            while let Ok(mut s) = session.accept().await {
                qymux::Stream::abort(&mut s);
            }
        })
    };
    let mut granted: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    let result = match control {
        Ok(stream) => {
            control_loop(
                &state,
                id,
                &session,
                &names,
                stream,
                &mut granted,
                &protocol,
            )
            .await
        }
        Err(e) => Err(format!("accepting the control stream: {e}")),
    };
    for svc in granted.values() {
        svc.pool.remove(id);
    }
    refuse_more.abort();
    match result {
        Ok(()) => {
            let reason = session.closed().await;
            let stats = session.stats();
            info!(
                %reason,
                bytes_sent = stats.bytes_sent,
                bytes_received = stats.bytes_received,
                streams = stats.streams_opened,
                "agent disconnected"
            );
        }
        Err(e) => {
            warn!(error = %e, "agent session closed");
            session.close().await;
        }
    }
    gauge!("qymux_sessions", "protocol" => protocol).decrement(1.0);
}

struct Pending {
    client_nonce: Vec<u8>,
    server_nonce: Vec<u8>,
    since: Instant,
}

async fn control_loop(
    state: &State,
    id: u64,
    session: &BoxSession,
    names: &[String],
    stream: BoxStream,
    granted: &mut BTreeMap<String, Arc<Service>>,
    protocol: &str,
) -> Result<(), String> {
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(reader);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut changed = state.changed.subscribe();
    let mut draining = state.draining.subscribe();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut ping_sent: Option<(u64, Instant)> = None;
    let mut ping_id = 0u64;
    loop {
        let mut out = Vec::new();
        tokio::select! {
            msg = proto::read_msg(&mut reader) => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        if session.close_reason().is_some() {
                            return Ok(());
                        }
                        return Err(e.to_string());
                    }
                };
                match msg {
                    Msg::Claim { service, nonce } => {
                        if pending.len() >= 64 {
                            return Err("too many claims in flight".into());
                        }
                        let server_nonce = proto::nonce();
                        out.push(Msg::Challenge { service: service.clone(), nonce: server_nonce.clone() });
                        pending.insert(service, Pending { client_nonce: nonce, server_nonce, since: Instant::now() });
                    }
                    Msg::Proof { service, mac } => {
                        let Some(p) = pending.remove(&service) else {
                            return Err(format!("proof for {service:?} without a claim"));
                        };
                        let verdict = judge(state, &service, names, &p, mac.as_deref());
                        match verdict {
                            Ok(svc) => {
                                let n = svc.pool.add(id, session.clone());
                                counter!("qymux_claims_granted_total", "service" => service.clone()).increment(1);
                                info!(service = %service, agents = n, "claim granted");
                                granted.insert(service.clone(), svc);
                                out.push(Msg::Granted { service });
                            }
                            Err((metric, reason)) => {
                                counter!("qymux_claims_refused_total", "service" => service.clone(), "reason" => metric).increment(1);
                                warn!(service = %service, reason = %reason, "claim refused");
                                out.push(Msg::Refused { service, reason });
                            }
                        }
                    }
                    Msg::Release { service } => {
                        if let Some(svc) = granted.remove(&service) {
                            svc.pool.remove(id);
                            info!(service = %service, "claim released by the agent");
                        }
                    }
                    Msg::Pong { id: pong } => {
                        if let Some((sent_id, at)) = ping_sent
                            && sent_id == pong
                        {
                            histogram!("qymux_rtt_seconds", "protocol" => protocol.to_owned()).record(at.elapsed().as_secs_f64());
                            ping_sent = None;
                        }
                    }
                    other => return Err(format!("unexpected control message from the agent: {other:?}")),
                }
            }
            _ = changed.changed() => {
                let current = state.lock().clone();
                granted.retain(|name, svc| {
                    let same = current.get(name).is_some_and(|c| Arc::ptr_eq(c, svc));
                    if !same {
                        svc.pool.remove(id);
                        out.push(Msg::Revoked { service: name.clone(), reason: "the service was changed or removed by a reload".into() });
                    }
                    same
                });
                out.push(Msg::Changed);
            }
            _ = ping.tick() => {
                ping_id += 1;
                ping_sent = Some((ping_id, Instant::now()));
                out.push(Msg::Ping { id: ping_id });
            }
            reason = session.closed() => {
                debug!(%reason, "session ended");
                return Ok(());
            }
            _ = async { let _ = draining.wait_for(|d| *d).await; } => {
                // The control stream ends, so the session drains with its data streams.
                let _ = writer.shutdown().await;
                return Ok(());
            }
        }
        pending.retain(|_, p| p.since.elapsed() < CLAIM_TIMEOUT);
        for m in out {
            writer
                .write_all(m.encode().as_bytes())
                .await
                .map_err(|e| format!("writing to the control stream: {e}"))?;
        }
        writer.flush().await.map_err(|e| e.to_string())?;
    }
}

/// Grants a claim, or says why not (a metric label and a reason for the agent).
fn judge(
    state: &State,
    service: &str,
    names: &[String],
    p: &Pending,
    mac: Option<&[u8]>,
) -> Result<Arc<Service>, (&'static str, String)> {
    let Some(svc) = state.service(service) else {
        return Err((
            "unknown_service",
            format!("no service {service:?} on this server"),
        ));
    };
    if let Some(token) = &svc.def.token {
        let ok = mac.is_some_and(|mac| {
            proto::verify(
                token,
                service,
                &p.server_nonce,
                &p.client_nonce,
                &state.fingerprint,
                mac,
            )
        });
        if !ok {
            return Err((
                "bad_token",
                "the token's proof does not match (wrong or missing token)".into(),
            ));
        }
    }
    if let Some(allow) = &svc.def.allow
        && !names.iter().any(|n| allow.contains(n))
    {
        return Err((
            "not_allowed",
            if names.is_empty() {
                "the service needs a client certificate with an allowed name".into()
            } else {
                format!("client certificate names {names:?} are not allowed")
            },
        ));
    }
    Ok(svc)
}

#[cfg(test)]
mod source_tests {
    use super::*;

    fn at(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn one_ipv6_slash_64_is_one_source() {
        let sources = Arc::new(Sources::default());
        let a = sources.take(at("[2001:db8:1:2::1]:1000"), 2).unwrap();
        let b = sources.take(at("[2001:db8:1:2:ffff::9]:1001"), 2).unwrap();
        assert!(
            sources.take(at("[2001:db8:1:2:abcd::1]:1002"), 2).is_none(),
            "a third address of the same /64 is over the cap of 2"
        );
        let other = sources.take(at("[2001:db8:1:3::1]:1003"), 2);
        assert!(other.is_some(), "the next /64 is another source");
        drop(a);
        assert!(sources.take(at("[2001:db8:1:2::7]:1004"), 2).is_some());
        drop((b, other));
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4_and_slots_are_given_back() {
        let sources = Arc::new(Sources::default());
        let a = sources.take(at("127.0.0.1:1"), 1).unwrap();
        assert!(sources.take(at("[::ffff:127.0.0.1]:2"), 1).is_none());
        assert!(sources.take(at("127.0.0.2:3"), 1).is_some());
        drop(a);
        assert_eq!(sources.held(), 0, "an emptied source leaves no entry");
    }
}
