//! The two-phase drain seen by a busy agent: `shutdown(5 s)` while an agent keeps issuing
//! short request/response streams. Every stream the server started completes; the others
//! are turned away before the server saw them, and the shutdown returns because the
//! drain completed, not because the grace ran out.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{Config, Error, Mode, Qymux, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const GRACE: Duration = Duration::from_secs(5);

/// Streams the agent completes before the server shuts down.
const WARM_UP: usize = 200;

fn certs() -> (ServerTls, ClientTls) {
    let ca = CertificateAuthority::new("Drain CA").unwrap();
    (
        ServerTls::new(ca.issue_server(&["localhost", "127.0.0.1"]).unwrap()),
        ClientTls::with_ca(vec![ca.certificate().clone()]),
    )
}

fn qymux_error(err: &io::Error) -> Option<&Error> {
    err.get_ref().and_then(|e| e.downcast_ref::<Error>())
}

/// What became of the agent's streams.
#[derive(Debug, Default)]
struct Tally {
    completed: usize,
    /// `open` failed: the session said "no more streams here" (the agent goes elsewhere).
    open_refused: Vec<String>,
    /// Opened, but ended in an error before the server accepted the stream (refused by
    /// the drain, or cut by the session's close before it arrived).
    refused_unseen: Vec<String>,
    /// Ended in an error although the server had accepted it: a failed stream.
    failed: Vec<String>,
}

async fn busy_agent(
    session: qymux::BoxSession,
    served: Arc<Mutex<HashSet<u64>>>,
    progress: watch::Sender<usize>,
) -> Tally {
    let mut tally = Tally::default();
    for id in 0u64.. {
        let mut stream = match session.open().await {
            Ok(s) => s,
            Err(e) => {
                tally.open_refused.push(format!("{e:?}"));
                break;
            }
        };
        let exchange = async {
            stream.write_all(&id.to_be_bytes()).await?;
            stream.shutdown().await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        };
        match exchange.await {
            Ok(answer) if answer == id.to_be_bytes() => {
                tally.completed += 1;
                progress.send_replace(tally.completed);
            }
            Ok(answer) => tally
                .failed
                .push(format!("stream {id}: answered {answer:?}")),
            Err(e) => {
                let seen = served.lock().unwrap().contains(&id);
                let what = format!("stream {id}: {e} ({:?})", qymux_error(&e));
                if seen {
                    tally.failed.push(what);
                } else {
                    tally.refused_unseen.push(what);
                }
            }
        }
    }
    tally
}

/// Serves every stream of every session: reads the request, records it, echoes it.
fn serve(listener: &Arc<qymux::Listener>, served: Arc<Mutex<HashSet<u64>>>) {
    let listener = listener.clone();
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            let served = served.clone();
            tokio::spawn(async move {
                while let Ok(mut stream) = session.accept().await {
                    let served = served.clone();
                    tokio::spawn(async move {
                        let mut request = [0u8; 8];
                        if stream.read_exact(&mut request).await.is_err() {
                            return;
                        }
                        served.lock().unwrap().insert(u64::from_be_bytes(request));
                        let mut rest = Vec::new();
                        if stream.read_to_end(&mut rest).await.is_ok() {
                            let _ = stream.write_all(&request).await;
                            let _ = stream.shutdown().await;
                        }
                    });
                }
            });
        }
    });
}

async fn busy_agent_and_shutdown(mode: Mode) {
    let (server_tls, client_tls) = certs();
    let server = Qymux::new(Config::new().mode(mode).server_tls(server_tls));
    let listener = Arc::new(server.listen("127.0.0.1:0").await.unwrap());
    let served = Arc::new(Mutex::new(HashSet::new()));
    serve(&listener, served.clone());
    let agent = Qymux::new(
        Config::new()
            .mode(mode)
            .server_addr(listener.local_addr().to_string())
            .client_tls(client_tls),
    );
    let session = agent.dial().await.unwrap();
    let protocol = session.protocol();
    let (progress, mut warmed_up) = watch::channel(0);
    let agent = tokio::spawn(busy_agent(session, served.clone(), progress));
    warmed_up.wait_for(|n| *n >= WARM_UP).await.unwrap();

    // What a dual listener's `shutdown` does, per transport, to see each report.
    let started = tokio::time::Instant::now();
    let (tcp, quic) = tokio::join!(
        async {
            match listener.tcp_listener() {
                Some(l) => Some(l.shutdown(GRACE).await),
                None => None,
            }
        },
        async {
            match listener.quic_listener() {
                Some(l) => Some(l.shutdown(GRACE).await),
                None => None,
            }
        },
    );
    let took = started.elapsed();
    let tally = agent.await.unwrap();
    eprintln!(
        "{mode} ({protocol}): shutdown({GRACE:?}) returned after {took:?}; tcp {tcp:?}, quic {quic:?}; \
         {} streams completed, open refused {:?}, {} refused before the server saw them {:?}",
        tally.completed,
        tally.open_refused,
        tally.refused_unseen.len(),
        tally.refused_unseen.iter().take(3).collect::<Vec<_>>(),
    );
    assert!(
        tally.failed.is_empty(),
        "failed streams: {:?}",
        tally.failed
    );
    assert!(tally.completed >= WARM_UP);
    // The one session drained: its last stream finished and it closed, nothing was cut
    // at the deadline.
    let reports: Vec<_> = [tcp, quic].into_iter().flatten().collect();
    assert_eq!(
        reports.iter().map(|r| r.drained).sum::<usize>(),
        1,
        "{reports:?}"
    );
    assert_eq!(
        reports.iter().map(|r| r.cut).sum::<usize>(),
        0,
        "{reports:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_tcp_agent_loses_no_stream_to_shutdown() {
    busy_agent_and_shutdown(Mode::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "QUIC drain bug, seen once in 8 runs: the server closes once its last answer is acknowledged by the agent's QUIC stack, and the agent's quinn then fails a read of that answer the agent had not read yet (ClosedByPeer); see docs/reliability.md#graceful-shutdown"]
async fn a_busy_quic_agent_loses_no_stream_to_shutdown() {
    busy_agent_and_shutdown(Mode::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "QUIC drain bug, seen once in 8 runs: the server closes once its last answer is acknowledged by the agent's QUIC stack, and the agent's quinn then fails a read of that answer the agent had not read yet (ClosedByPeer); see docs/reliability.md#graceful-shutdown"]
async fn a_busy_auto_agent_loses_no_stream_to_shutdown() {
    busy_agent_and_shutdown(Mode::Auto).await;
}
