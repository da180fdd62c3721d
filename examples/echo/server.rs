//! The echo server: echoes every stream a client opens, and with `--reverse N` opens N
//! streams of its own to each client and checks their echo.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use qymux::tls::ServerTls;
use qymux::{BoxSession, Config, Qymux, Session};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::cli::ServerArgs;
use crate::streams::{echo, exchange};
use crate::{describe, error_chain};

/// Bytes the server sends on each of its `--reverse` streams.
const REVERSE_BYTES: u64 = 64 * 1024;
/// How long the server holds back its echo waiting for the client to echo on its reverse
/// streams (a client that never echoes still gets served after this).
const REVERSE_GATE: Duration = Duration::from_secs(10);
/// Bound on each reverse stream.
const REVERSE_TIMEOUT: Duration = Duration::from_secs(60);

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
    let qymux = Qymux::new(Config::new().mode(args.mode).server_tls(tls));
    let listener = qymux
        .listen(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;

    println!("fingerprint: {fingerprint}");
    if args.identity.is_none() {
        println!("(self-signed: clients verify it with --pin {fingerprint})");
    }
    let protocols: Vec<String> = listener
        .protocols()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "listening on {} ({})",
        listener.local_addr(),
        protocols.join(", ")
    );
    if args.client_ca.is_some() {
        println!("client certificates required (mTLS)");
    }

    loop {
        let session = listener.accept().await.context("accepting sessions")?;
        tokio::spawn(serve_session(session, args.reverse));
    }
}

/// Serves one client: echoes its streams and, with `reverse > 0`, checks streams of our own.
async fn serve_session(session: BoxSession, reverse: usize) {
    let remote = session.remote_addr();
    let identity = match session.peer_identity() {
        Some(id) => describe(&id),
        None => "none".to_owned(),
    };
    println!(
        "[{remote}] session over {}, client certificate: {identity}",
        session.protocol()
    );

    // The client's streams are echoed once `echo_gate` opens: at once without reverse
    // streams, else when the client has echoed on all of them (see the module docs).
    let (gate_tx, echo_gate) = watch::channel(reverse == 0);
    let reverse_task = (reverse > 0).then(|| {
        let session = session.clone();
        tokio::spawn(async move {
            let (ok, failed) = reverse_streams(&session, reverse, gate_tx).await;
            println!("[{remote}] reverse: {ok} ok, {failed} failed");
        })
    });

    let mut echoes = JoinSet::new();
    let reason = loop {
        match session.accept().await {
            Ok(stream) => {
                let mut gate = echo_gate.clone();
                echoes.spawn(async move {
                    // A dropped sender means the gate has been given up on: echo anyway.
                    let _ = gate.wait_for(|open| *open).await;
                    echo(stream).await
                });
            }
            Err(e) => break e,
        }
    };
    let (mut echoed, mut failed) = (0, 0);
    while let Some(result) = echoes.join_next().await {
        match result {
            Ok(Ok(_)) => echoed += 1,
            _ => failed += 1,
        }
    }
    if let Some(task) = reverse_task {
        let _ = task.await;
    }
    let why = session
        .close_reason()
        .map_or_else(|| reason.to_string(), |r| r.to_string());
    println!("[{remote}] session ended ({why}): echoed {echoed} streams, {failed} failed");
}

/// Opens `n` streams, sends [`REVERSE_BYTES`] random bytes on each and checks the echo.
/// Opens `gate` once the client echoed a first byte on every stream (or after
/// [`REVERSE_GATE`]). Returns (ok, failed).
async fn reverse_streams(
    session: &BoxSession,
    n: usize,
    gate: watch::Sender<bool>,
) -> (usize, usize) {
    let echoed_once = Arc::new(Semaphore::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let session = session.clone();
        let mut signal = Signal(Some(echoed_once.clone()));
        tasks.spawn(async move {
            let stream = session.open().await?;
            let result = timeout(
                REVERSE_TIMEOUT,
                exchange(stream, REVERSE_BYTES, || signal.fire()),
            )
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {REVERSE_TIMEOUT:?}"))?;
            drop(signal);
            result
        });
    }
    let permits = u32::try_from(n).unwrap_or(u32::MAX);
    if timeout(REVERSE_GATE, echoed_once.acquire_many(permits))
        .await
        .is_err()
    {
        println!(
            "[{}] the client has not echoed on all {n} reverse streams within {REVERSE_GATE:?}; \
             echoing its streams anyway",
            session.remote_addr()
        );
    }
    let _ = gate.send(true);

    let (mut ok, mut failed) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                failed += 1;
                println!(
                    "[{}] reverse stream failed: {}",
                    session.remote_addr(),
                    error_chain(&e)
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "[{}] reverse stream task failed: {e}",
                    session.remote_addr()
                );
            }
        }
    }
    (ok, failed)
}

/// Adds one permit to its semaphore exactly once: when fired, or when dropped unfired.
struct Signal(Option<Arc<Semaphore>>);

impl Signal {
    fn fire(&mut self) {
        if let Some(s) = self.0.take() {
            s.add_permits(1);
        }
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        self.fire();
    }
}
