//! `qymux-bench server --kind KIND --certs DIR`: one server of the bench, in its own
//! process. Prints `LISTENING <addr>`, answers `stat` on stdin with
//! `STAT sessions=<n> rss_kib=<k>`, and exits when stdin closes.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use qymux_grpc_testproto::echo_server::{Echo, EchoServer};
use qymux_grpc_testproto::{EchoReply, EchoRequest, StreamRequest};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::alt;
use crate::stacks::{self, Certs};

/// Sessions (raw: connections) this server holds right now.
static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// The kinds of server, by name.
pub(crate) const KINDS: &[&str] = &[
    "raw-tls",
    "qymux-tcp",
    "raw-quic",
    "qymux-quic",
    "grpc-direct",
    "grpc-qymux-tcp",
    "grpc-qymux-quic",
    "yamux-crate",
    "tokio-yamux",
];

pub(crate) fn run(kind: &str, certs: &Certs) -> Result<()> {
    if !KINDS.contains(&kind) {
        bail!("unknown server kind {kind:?} (one of {})", KINDS.join(", "));
    }
    let runtime = crate::runtime()?;
    runtime.block_on(serve(kind, certs))
}

async fn serve(kind: &str, certs: &Certs) -> Result<()> {
    let tls = certs.server_tls()?;
    let local = "127.0.0.1:0";
    let addr = match kind {
        "raw-tls" => {
            let listener = TcpListener::bind(local).await?;
            let addr = listener.local_addr()?;
            tokio::spawn(stacks::serve_raw_tls(listener, tls, hold));
            addr
        }
        "qymux-tcp" => {
            let listener = qymux_tcp::Listener::bind(local, tls, stacks::options()).await?;
            let addr = listener.local_addr();
            tokio::spawn(async move {
                while let Ok(session) = listener.accept().await {
                    tokio::spawn(counted(stacks::serve_session(session)));
                }
            });
            addr
        }
        "raw-quic" => {
            let endpoint = stacks::quinn_server(tls)?;
            let addr = endpoint.local_addr()?;
            tokio::spawn(stacks::serve_raw_quic(endpoint, hold));
            addr
        }
        "qymux-quic" => {
            let listener = qymux_quic::Listener::bind(local, tls, stacks::options()).await?;
            let addr = listener.local_addr();
            tokio::spawn(async move {
                while let Ok(session) = listener.accept().await {
                    tokio::spawn(counted(stacks::serve_session(session)));
                }
            });
            addr
        }
        "grpc-direct" => {
            let incoming = tonic::transport::server::TcpIncoming::bind(
                "127.0.0.1:0".parse().context("parsing the address")?,
            )?
            .with_nodelay(Some(true));
            let addr = incoming.local_addr()?;
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(EchoServer::new(BenchEcho))
                    .serve_with_incoming(incoming),
            );
            addr
        }
        "grpc-qymux-tcp" => {
            let listener = qymux_tcp::Listener::bind(local, tls, stacks::options()).await?;
            let addr = listener.local_addr();
            tokio::spawn(async move {
                while let Ok(session) = listener.accept().await {
                    let serving = qymux_grpc::serve(session, EchoServer::new(BenchEcho));
                    tokio::spawn(counted(async move {
                        let _ = serving.await;
                    }));
                }
            });
            addr
        }
        "grpc-qymux-quic" => {
            let listener = qymux_quic::Listener::bind(local, tls, stacks::options()).await?;
            let addr = listener.local_addr();
            tokio::spawn(async move {
                while let Ok(session) = listener.accept().await {
                    let serving = qymux_grpc::serve(session, EchoServer::new(BenchEcho));
                    tokio::spawn(counted(async move {
                        let _ = serving.await;
                    }));
                }
            });
            addr
        }
        bare => {
            let mux = alt::Mux::from_server_kind(bare)
                .with_context(|| format!("unknown server kind {bare:?}"))?;
            let listener = TcpListener::bind(local).await?;
            let addr = listener.local_addr()?;
            tokio::spawn(alt::serve(mux, listener, tls, hold));
            addr
        }
    };

    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("LISTENING {addr}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "stat" {
            let stat = format!(
                "STAT sessions={} rss_kib={}\n",
                SESSIONS.load(Ordering::SeqCst),
                rss_kib().unwrap_or(0)
            );
            stdout.write_all(stat.as_bytes()).await?;
            stdout.flush().await?;
        }
    }
    Ok(())
}

/// [`counted`], boxed.
fn hold(serving: stacks::BoxFuture) -> stacks::BoxFuture {
    Box::pin(counted(serving))
}

/// Counts a session while `serving` runs.
async fn counted<F: Future<Output = ()>>(serving: F) {
    SESSIONS.fetch_add(1, Ordering::SeqCst);
    serving.await;
    SESSIONS.fetch_sub(1, Ordering::SeqCst);
}

/// This process's resident set size in KiB, from `/proc/self/status`.
pub(crate) fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The gRPC service of the bench: `Unary` echoes the payload; nothing else is used.
struct BenchEcho;

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for BenchEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let EchoRequest { message, payload } = request.into_inner();
        Ok(Response::new(EchoReply {
            message,
            payload,
            sequence: 0,
        }))
    }

    type ServerStreamStream = Replies;

    async fn server_stream(&self, _: Request<StreamRequest>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not used by the bench"))
    }

    async fn client_stream(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        Err(Status::unimplemented("not used by the bench"))
    }

    type BidiStream = Replies;

    async fn bidi(&self, _: Request<Streaming<EchoRequest>>) -> Result<Response<Replies>, Status> {
        Err(Status::unimplemented("not used by the bench"))
    }
}
