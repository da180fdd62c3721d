//! gRPC unary calls per second: tonic straight over TCP, and tonic over a Qymux session
//! (`qymux_grpc::channel`), against the same service in a server process.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use qymux_grpc::SessionChannel;
use qymux_grpc_testproto::EchoRequest;
use qymux_grpc_testproto::echo_client::EchoClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::proto::MSG;
use crate::stacks::{self, SERVER_NAME};

/// A connected gRPC client, and what carries it.
#[derive(Clone)]
pub(crate) enum Grpc {
    Direct(EchoClient<Channel>),
    Tcp(EchoClient<SessionChannel>, qymux_tcp::Session),
    Quic(EchoClient<SessionChannel>, qymux_quic::Session),
}

impl Grpc {
    pub(crate) async fn direct(addr: std::net::SocketAddr) -> Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Self::Direct(EchoClient::new(channel)))
    }

    pub(crate) async fn over_tcp(
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let session =
            qymux_tcp::dial(&addr.to_string(), SERVER_NAME, tls, stacks::options()).await?;
        Ok(Self::Tcp(
            EchoClient::new(qymux_grpc::channel(session.clone())),
            session,
        ))
    }

    pub(crate) async fn over_quic(
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let session =
            qymux_quic::dial(&addr.to_string(), SERVER_NAME, tls, stacks::options()).await?;
        Ok(Self::Quic(
            EchoClient::new(qymux_grpc::channel(session.clone())),
            session,
        ))
    }

    /// One unary call with a 64-byte payload; checks the reply carries it back.
    async fn call(&mut self, seq: u64) -> Result<()> {
        let payload: Vec<u8> = crate::proto::message(seq).to_vec();
        debug_assert_eq!(payload.len(), MSG);
        let request = EchoRequest {
            message: String::new(),
            payload: payload.clone(),
        };
        let reply = match self {
            Self::Direct(client) => client.unary(request).await?,
            Self::Tcp(client, _) | Self::Quic(client, _) => client.unary(request).await?,
        }
        .into_inner();
        if reply.payload != payload {
            bail!("the gRPC reply carries another payload");
        }
        Ok(())
    }

    pub(crate) async fn close(self) {
        match self {
            Self::Direct(_) => {}
            Self::Tcp(_, session) => qymux_transport::Session::close(&session).await,
            Self::Quic(_, session) => qymux_transport::Session::close(&session).await,
        }
    }
}

/// `calls` unary calls, `in_flight` at a time: calls per second.
pub(crate) async fn calls(client: &Grpc, calls: usize, in_flight: usize) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..in_flight {
        let (mut client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= calls as u64 {
                    return Ok::<_, anyhow::Error>(());
                }
                client.call(seq).await?;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(calls as f64 / start.elapsed().as_secs_f64())
}
