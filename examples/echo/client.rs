//! The echo client: opens `--streams` streams, sends `--bytes` on each, checks the echo,
//! and echoes the streams the server opens (see "When the client is done" in main.rs).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use qymux::tls::ClientTls;
use qymux::{Config, Qymux, Session};
use tokio::task::JoinSet;
use tokio::time::timeout_at;

use crate::cli::{ClientArgs, Verify};
use crate::streams::{echo, exchange};
use crate::{EXIT_MISMATCH, EXIT_OK, describe, error_chain};

pub(crate) async fn client(args: ClientArgs) -> anyhow::Result<u8> {
    let tls = match &args.verify {
        Verify::SystemRoots => ClientTls::with_system_roots(),
        Verify::Ca(path) => ClientTls::with_ca_file(path)
            .with_context(|| format!("loading the CA {}", path.display()))?,
        Verify::Pin(fingerprint) => ClientTls::with_pinned(*fingerprint),
        Verify::DangerousSkip => {
            eprintln!(
                "WARNING: --dangerous-skip-verify: the server's certificate is NOT verified.\n\
                 WARNING: anyone on the path can pose as the server and read or change \
                 everything sent.\n\
                 WARNING: use --ca or --pin outside of development."
            );
            qymux::tls::dangerous::skip_server_verification()
        }
    };
    let tls = match &args.identity {
        Some((cert, key)) => tls
            .client_identity_files(cert, key)
            .with_context(|| format!("loading {} and {}", cert.display(), key.display()))?,
        None => tls,
    };
    let mut config = Config::new()
        .mode(args.mode)
        .server_addr(args.connect.clone())
        .client_tls(tls);
    if let Some(name) = &args.server_name {
        config = config.server_name(name.clone());
    }
    let server_name = config.server_name_or_host().unwrap_or_default().to_owned();
    let qymux = Qymux::new(config);

    let started = Instant::now();
    let session = qymux.dial().await.with_context(|| {
        format!(
            "cannot connect to {} (mode {}, server name {server_name})",
            args.connect, args.mode
        )
    })?;
    println!(
        "connected to {} over {} in {:.1} ms",
        session.remote_addr(),
        session.protocol(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("protocol: {}", session.protocol());
    if let Some(id) = session.peer_identity() {
        println!("server certificate: {}", describe(&id));
    }
    let deadline = tokio::time::Instant::now() + args.timeout;

    // Echo the streams the server opens. Each is registered (under the lock) before its
    // echo task can send a byte: see "When the client is done" in the module docs.
    let inbound: Arc<Mutex<JoinSet<anyhow::Result<u64>>>> = Arc::default();
    let acceptor = tokio::spawn({
        let session = session.clone();
        let inbound = inbound.clone();
        async move {
            while let Ok(stream) = session.accept().await {
                let mut set = inbound.lock().unwrap_or_else(|e| e.into_inner());
                set.spawn(async move {
                    timeout_at(deadline, echo(stream))
                        .await
                        .map_err(|_| anyhow::anyhow!("timed out"))?
                });
            }
        }
    });

    // Our own streams, all at once.
    let sent_at = Instant::now();
    let mut own = JoinSet::new();
    for index in 0..args.streams {
        let session = session.clone();
        let bytes = args.bytes;
        own.spawn(async move {
            let result = timeout_at(deadline, async {
                let stream = session.open().await.context("opening the stream")?;
                exchange(stream, bytes, || {}).await
            })
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
            (index, result)
        });
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(joined) = own.join_next().await {
        match joined {
            Ok((_, Ok(()))) => ok += 1,
            Ok((index, Err(e))) => {
                failed += 1;
                eprintln!("stream {index}: {}", error_chain(&e));
            }
            Err(e) => {
                failed += 1;
                eprintln!("stream task: {e}");
            }
        }
    }
    let took = sent_at.elapsed().as_secs_f64();

    // Every stream the server opened is registered now; let those echoes finish.
    acceptor.abort();
    let _ = acceptor.await;
    let mut inbound = std::mem::take(&mut *inbound.lock().unwrap_or_else(|e| e.into_inner()));
    let (mut served, mut serve_failed) = (0usize, 0usize);
    while let Some(joined) = inbound.join_next().await {
        match joined {
            Ok(Ok(_)) => served += 1,
            Ok(Err(e)) => {
                serve_failed += 1;
                eprintln!("echoing a stream the server opened: {}", error_chain(&e));
            }
            Err(e) => {
                serve_failed += 1;
                eprintln!("echo task: {e}");
            }
        }
    }

    let total = args.bytes.saturating_mul(ok as u64) as f64;
    println!(
        "sent and checked {} × {} bytes in {:.1} ms ({:.1} MiB/s each way)",
        args.streams,
        args.bytes,
        took * 1e3,
        total / took.max(1e-9) / f64::from(1 << 20)
    );
    println!("echoed {served} streams the server opened, {serve_failed} failed");
    println!("{ok} ok, {failed} failed");

    session.close().await;
    println!("session closed");
    Ok(if failed == 0 && serve_failed == 0 {
        EXIT_OK
    } else {
        EXIT_MISMATCH
    })
}
