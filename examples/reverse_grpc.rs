//! Reverse gRPC: the agent dials the server, then *serves* gRPC on its session, and the
//! server *calls* the agent through the tunnel, although the agent cannot be dialed.
//!
//! Both run in this one process, on loopback, with Auto mode (QUIC, falling back to TCP):
//!
//! ```sh
//! cargo run --example reverse_grpc
//! ```

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
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

type Replies = BoxStream<'static, Result<EchoReply, Status>>;

#[tonic::async_trait]
impl Echo for AgentEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let info = request.extensions().get::<SessionInfo>();
        let caller = info.map_or(String::new(), |i| {
            format!("{} over {}", i.remote_addr, i.protocol)
        });
        let message = format!("agent got {:?} from {caller}", request.get_ref().message);
        Ok(Response::new(reply(message, 0)))
    }

    type ServerStreamStream = Replies;
    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Replies>, Status> {
        let StreamRequest { message, count } = request.into_inner();
        let replies = futures::stream::iter(0..u64::from(count))
            .map(move |sequence| Ok(reply(format!("{message} #{sequence}"), sequence)));
        Ok(Response::new(replies.boxed()))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let requests = request.into_inner();
        let count = requests
            .try_fold(0, |n, _| async move { Ok(n + 1) })
            .await?;
        let message = format!("agent counted {count} requests");
        Ok(Response::new(reply(message, count)))
    }

    type BidiStream = Replies;
    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Replies>, Status> {
        let replies = (request.into_inner())
            .map(|request| request.map(|request| reply(request.message.to_uppercase(), 0)));
        Ok(Response::new(replies.boxed()))
    }
}

fn reply(message: String, sequence: u64) -> EchoReply {
    EchoReply {
        message,
        payload: Vec::new(),
        sequence,
    }
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        payload: Vec::new(),
    }
}

/// Requests carrying `messages`, one after the other.
fn requests<const N: usize>(messages: [&str; N]) -> impl Stream<Item = EchoRequest> + use<N> {
    futures::stream::iter(messages.map(request))
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
        let dialer = Dialer::new(addr.to_string(), "localhost", client_tls);
        let session = dialer.dial().await?;
        let protocol = session.protocol();
        println!("agent:  connected over {protocol}, serving Echo");
        let stopped = qymux_grpc::serve(session, EchoServer::new(AgentEcho)).await;
        let Err(qymux_grpc::ServeError::SessionClosed(reason)) = &stopped else {
            anyhow::bail!("unexpected end of serving: {stopped:?}");
        };
        println!("agent:  serving stopped, the session ended ({reason})");
        anyhow::Ok(())
    });

    // The server: accepts the agent's session and calls the agent through it.
    let session = listener.accept().await?;
    let (remote, protocol) = (session.remote_addr(), session.protocol());
    println!("server: agent {remote} connected over {protocol}");
    let mut echo = EchoClient::new(qymux_grpc::channel(session.clone()));

    let reply = echo.unary(request("hello, agent")).await?;
    println!("server: unary         -> {}", reply.get_ref().message);

    let ticks = StreamRequest {
        message: "tick".into(),
        count: 3,
    };
    let mut replies = echo.server_stream(ticks).await?.into_inner();
    while let Some(reply) = replies.message().await? {
        println!("server: server stream -> {}", reply.message);
    }

    let reply = echo.client_stream(requests(["a", "b", "c", "d"])).await?;
    println!("server: client stream -> {}", reply.get_ref().message);

    let replies = echo.bidi(requests(["one", "two", "three"])).await?;
    let mut replies = replies.into_inner();
    while let Some(reply) = replies.message().await? {
        println!("server: bidi          -> {}", reply.message);
    }

    // Done: closing the session ends the agent's serving too.
    session.close().await;
    agent.await??;
    println!("done");
    Ok(())
}
