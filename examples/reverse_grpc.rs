//! Reverse gRPC: the agent dials the server, then *serves* gRPC on its session, and the
//! server *calls* the agent through the tunnel, although the agent cannot be dialed.
//!
//! Both run in this one process, on loopback, with Auto mode (QUIC, falling back to TCP):
//!
//! ```sh
//! cargo run --example reverse_grpc
//! ```

use std::pin::Pin;

use futures::{Stream, StreamExt};
use qymux_cert::CertificateAuthority;
use qymux_dialer::{Dialer, Listener};
use qymux_grpc::SessionInfo;
use qymux_grpc_testproto::echo_client::EchoClient;
use qymux_grpc_testproto::echo_server::{Echo, EchoServer};
use qymux_grpc_testproto::{EchoReply, EchoRequest, StreamRequest};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Mode, Options, Session};
use tonic::{Request, Response, Status, Streaming};

/// The service the agent runs.
struct AgentEcho;

type Replies = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for AgentEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let caller = request
            .extensions()
            .get::<SessionInfo>()
            .map(|info| format!("{} over {}", info.remote_addr, info.protocol))
            .unwrap_or_default();
        let message = format!("agent got {:?} from {caller}", request.get_ref().message);
        Ok(Response::new(EchoReply {
            message,
            ..Default::default()
        }))
    }

    type ServerStreamStream = Replies;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Replies>, Status> {
        let StreamRequest { message, count } = request.into_inner();
        let replies = futures::stream::iter(0..u64::from(count)).map(move |sequence| {
            Ok(EchoReply {
                message: format!("{message} #{sequence}"),
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
        let mut count = 0;
        while requests.message().await?.is_some() {
            count += 1;
        }
        Ok(Response::new(EchoReply {
            message: format!("agent counted {count} requests"),
            payload: Vec::new(),
            sequence: count,
        }))
    }

    type BidiStream = Replies;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let replies = request.into_inner().map(|request| {
            request.map(|request| EchoReply {
                message: request.message.to_uppercase(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Certificates: the server presents one signed by a CA that the agent trusts.
    let ca = CertificateAuthority::new("reverse_grpc example CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
    let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;

    let listener =
        Listener::bind("127.0.0.1:0", server_tls, Options::default(), Mode::Auto).await?;
    let addr = listener.local_addr();
    println!("server: listening on {addr} (UDP and TCP)");

    // The agent: dials out once, then serves gRPC on its session until the session ends.
    let agent = tokio::spawn(async move {
        let session = Dialer::new(addr.to_string(), "localhost", client_tls)
            .dial()
            .await?;
        println!(
            "agent:  connected over {}, serving Echo",
            session.protocol()
        );
        let stopped = qymux_grpc::serve(session, EchoServer::new(AgentEcho)).await;
        match stopped {
            Err(qymux_grpc::ServeError::SessionClosed(reason)) => {
                println!("agent:  serving stopped, the session ended ({reason})");
            }
            other => anyhow::bail!("unexpected end of serving: {other:?}"),
        }
        anyhow::Ok(())
    });

    // The server: accepts the agent's session and calls the agent through it.
    let session = listener.accept().await?;
    println!(
        "server: agent {} connected over {}",
        session.remote_addr(),
        session.protocol()
    );
    let mut echo = EchoClient::new(qymux_grpc::channel(session.clone()));

    let reply = echo
        .unary(EchoRequest {
            message: "hello, agent".into(),
            payload: Vec::new(),
        })
        .await?;
    println!("server: unary         -> {}", reply.get_ref().message);

    let mut replies = echo
        .server_stream(StreamRequest {
            message: "tick".into(),
            count: 3,
        })
        .await?
        .into_inner();
    while let Some(reply) = replies.message().await? {
        println!("server: server stream -> {}", reply.message);
    }

    let requests = futures::stream::iter(["a", "b", "c", "d"].map(|m| EchoRequest {
        message: m.into(),
        payload: Vec::new(),
    }));
    let reply = echo.client_stream(requests).await?;
    println!("server: client stream -> {}", reply.get_ref().message);

    let requests = futures::stream::iter(["one", "two", "three"].map(|m| EchoRequest {
        message: m.into(),
        payload: Vec::new(),
    }));
    let mut replies = echo.bidi(requests).await?.into_inner();
    while let Some(reply) = replies.message().await? {
        println!("server: bidi          -> {}", reply.message);
    }

    // Done: closing the session ends the agent's serving too.
    session.close().await;
    agent.await??;
    println!("done");
    Ok(())
}
