//! Backends, services and fixtures for the gRPC-over-session tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use qymux_conformance::{Backend, Pair, Pki};
use qymux_grpc::SessionChannel as Channel;
use qymux_grpc::{ServeHandle, SessionInfo};
use qymux_grpc_testproto::echo_client::EchoClient;
use qymux_grpc_testproto::echo_server::{Echo, EchoServer};
use qymux_grpc_testproto::probe_client::ProbeClient;
use qymux_grpc_testproto::probe_server::{Probe, ProbeServer};
use qymux_grpc_testproto::{
    EchoReply, EchoRequest, StallReply, StallRequest, StreamRequest, WhoAmIReply, WhoAmIRequest,
};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Listener, Result};
use tokio::sync::mpsc;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// Bound on waits that must not hang. Generous: it only turns a hang into a failure.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// Message size limit of the test clients and servers (tonic decodes 4 MiB by default).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[allow(unused_imports)] // not every test file uses both
pub use qymux_conformance_backends::{Quic, Tcp};

pub type SessionOf<B> = <<B as Backend>::Listener as Listener>::Session;

/// Who serves gRPC and who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The reverse tunnel: the agent (dialer) serves, the server (listener) calls it.
    ServerCallsAgent,
    /// The agent calls a service on the server.
    AgentCallsServer,
}

/// Listens and dials with mTLS: the agent presents the PKI's client certificate.
pub async fn mtls_pair<B: Backend>(pki: &Pki) -> Pair<B> {
    let server_tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .expect("server config");
    let client_tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .client_identity(pki.client.clone())
        .build()
        .expect("client config");
    let options = qymux_conformance::options();
    let listener = B::listen(server_tls, options.clone())
        .await
        .expect("listen");
    let addr = listener.local_addr();
    let (c, s) = tokio::join!(
        B::dial(addr, "localhost", client_tls, options),
        listener.accept()
    );
    Pair {
        listener,
        client: c.expect("dial"),
        server: s.expect("accept"),
    }
}

/// What the probe handlers report: the tag of each call that started, and of each call
/// whose handler saw it cancelled.
pub struct ProbeEvents {
    pub started: mpsc::UnboundedReceiver<String>,
    pub cancelled: mpsc::UnboundedReceiver<String>,
}

impl ProbeEvents {
    pub async fn started(&mut self) -> String {
        tokio::time::timeout(HANG_GUARD, self.started.recv())
            .await
            .expect("a handler must start")
            .expect("probe service alive")
    }

    pub async fn cancelled(&mut self) -> String {
        tokio::time::timeout(HANG_GUARD, self.cancelled.recv())
            .await
            .expect("the handler must see the cancellation")
            .expect("probe service alive")
    }
}

/// A connected pair with gRPC served on one side and clients on the other.
pub struct Grpc<B: Backend> {
    pub pair: Pair<B>,
    /// The side that calls.
    pub caller: SessionOf<B>,
    /// The side that serves.
    pub callee: SessionOf<B>,
    pub serving: ServeHandle,
    pub echo: EchoClient<Channel>,
    pub probe: ProbeClient<Channel>,
    pub events: ProbeEvents,
}

impl<B: Backend> Grpc<B> {
    pub async fn new(direction: Direction) -> Self {
        Self::on(qymux_conformance::pair::<B>().await, direction)
    }

    pub fn on(pair: Pair<B>, direction: Direction) -> Self {
        let (caller, callee) = match direction {
            Direction::ServerCallsAgent => (pair.server.clone(), pair.client.clone()),
            Direction::AgentCallsServer => (pair.client.clone(), pair.server.clone()),
        };
        let (services, events) = services();
        let serving = qymux_grpc::serve(callee.clone(), services);
        let channel = qymux_grpc::channel(caller.clone());
        Grpc {
            pair,
            caller,
            callee,
            serving,
            echo: echo_client(channel.clone()),
            probe: ProbeClient::new(channel),
            events,
        }
    }
}

pub fn echo_client(channel: Channel) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// The Echo and Probe services, and the events of the probe.
pub fn services() -> (Routes, ProbeEvents) {
    let (started_tx, started) = mpsc::unbounded_channel();
    let (cancelled_tx, cancelled) = mpsc::unbounded_channel();
    let echo = EchoServer::new(EchoService)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let probe = ProbeServer::new(ProbeService {
        started: started_tx,
        cancelled: cancelled_tx,
    });
    (
        Routes::new(echo).add_service(probe),
        ProbeEvents { started, cancelled },
    )
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

pub struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let EchoRequest { message, payload } = request.into_inner();
        Ok(Response::new(EchoReply {
            message,
            payload,
            sequence: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest { message, count } = request.into_inner();
        let replies = futures::stream::iter(0..u64::from(count)).map(move |sequence| {
            Ok(EchoReply {
                message: format!("{message} {sequence}"),
                payload: Vec::new(),
                sequence,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut requests = request.into_inner();
        let mut messages = Vec::new();
        let mut payload = Vec::new();
        while let Some(request) = requests.message().await? {
            messages.push(request.message);
            payload.extend_from_slice(&request.payload);
        }
        Ok(Response::new(EchoReply {
            sequence: messages.len() as u64,
            message: messages.join(","),
            payload,
        }))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let replies = request.into_inner().enumerate().map(|(sequence, request)| {
            request.map(|EchoRequest { message, payload }| EchoReply {
                message,
                payload,
                sequence: sequence as u64,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

pub struct ProbeService {
    started: mpsc::UnboundedSender<String>,
    cancelled: mpsc::UnboundedSender<String>,
}

/// Reports `tag` as cancelled when dropped: a handler future dropped before it finished.
struct CancelGuard {
    tag: String,
    cancelled: mpsc::UnboundedSender<String>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let _ = self.cancelled.send(std::mem::take(&mut self.tag));
    }
}

#[tonic::async_trait]
impl Probe for ProbeService {
    async fn stall(&self, request: Request<StallRequest>) -> Result<Response<StallReply>, Status> {
        let tag = request.into_inner().tag;
        let _guard = CancelGuard {
            tag: tag.clone(),
            cancelled: self.cancelled.clone(),
        };
        let _ = self.started.send(tag);
        std::future::pending().await
    }

    type StallStreamStream = ReplyStream;

    async fn stall_stream(
        &self,
        request: Request<StallRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let tag = request.into_inner().tag;
        let (tx, rx) = mpsc::channel(1);
        let (started, cancelled) = (self.started.clone(), self.cancelled.clone());
        tokio::spawn(async move {
            let first = EchoReply {
                message: tag.clone(),
                payload: Vec::new(),
                sequence: 0,
            };
            if tx.send(Ok(first)).await.is_err() {
                let _ = cancelled.send(tag);
                return;
            }
            let _ = started.send(tag.clone());
            // Sending fails once the call is gone: wait for exactly that.
            tx.closed().await;
            let _ = cancelled.send(tag);
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIReply>, Status> {
        let info = request
            .extensions()
            .get::<SessionInfo>()
            .ok_or_else(|| Status::internal("no SessionInfo in the request"))?;
        let show = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_default();
        Ok(Response::new(WhoAmIReply {
            protocol: info.protocol.to_string(),
            remote_addr: info.remote_addr.to_string(),
            local_addr: info.local_addr.to_string(),
            peer_certificate: info
                .peer_identity
                .as_ref()
                .map(|id| id.end_entity().to_vec())
                .unwrap_or_default(),
            tonic_remote_addr: show(request.remote_addr()),
            tonic_local_addr: show(request.local_addr()),
        }))
    }
}
