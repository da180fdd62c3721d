//! gRPC over Qymux sessions, with [tonic] on both ends.
//!
//! A Qymux session lets either side open streams. This crate runs HTTP/2 — and so gRPC —
//! over those streams, in both directions:
//!
//! - [`channel`] turns a session into a [`SessionChannel`], a tonic
//!   [`Channel`](tonic::transport::Channel) whose HTTP/2 connections are streams on the
//!   session. Hand it to any generated client.
//! - [`serve`] runs a tonic service on every stream the session's peer opens, and gives
//!   a [`ServeHandle`] that says when and why serving stopped.
//!
//! The usual reverse tunnel: the agent, which cannot be dialed, dials the server, then
//! *serves* gRPC on its session; the server *calls* it through the tunnel. The other
//! direction (agent calls server) works the same way, also at the same time on two
//! sessions.
//!
//! # Example
//!
//! The agent serves a `Greeter` and the server calls it, over a TLS + yamux session on
//! loopback (any [`Session`](qymux_transport::Session) works: QUIC, TCP, or a
//! [`BoxSession`](qymux_transport::BoxSession) from Auto mode).
//!
//! ```
//! use qymux_grpc::SessionInfo;
//! use tonic::{Request, Response, Status};
//! # use qymux_grpc_testproto as pb;
//! use pb::greeter_client::GreeterClient;
//! use pb::greeter_server::{Greeter, GreeterServer};
//!
//! struct Hello;
//!
//! #[tonic::async_trait]
//! impl Greeter for Hello {
//!     async fn hello(
//!         &self,
//!         request: Request<pb::HelloRequest>,
//!     ) -> Result<Response<pb::HelloReply>, Status> {
//!         // Who is calling, and over what.
//!         let info = request.extensions().get::<SessionInfo>().expect("set by serve");
//!         let message = format!("hello {} over {}", request.get_ref().name, info.protocol);
//!         Ok(Response::new(pb::HelloReply { message }))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let ca = qymux_cert::CertificateAuthority::new("Example CA")?;
//! # let server_tls = qymux_tls::ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
//! # let client_tls = qymux_tls::ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
//! # let options = qymux_transport::Options::default();
//! # let listener = qymux_tcp::Listener::bind("127.0.0.1:0", server_tls, options.clone()).await?;
//! # let addr = listener.local_addr().to_string();
//! # let dialed = qymux_tcp::dial(&addr, "localhost", client_tls, options.clone());
//! // `agent`: the session the agent dialed; `server`: the one the server accepted.
//! let (agent, server) = tokio::join!(dialed, listener.accept());
//! let (agent, server) = (agent?, server?);
//!
//! // The agent serves gRPC on its session...
//! let serving = qymux_grpc::serve(agent.clone(), GreeterServer::new(Hello));
//!
//! // ...and the server calls it through the tunnel.
//! let mut greeter = GreeterClient::new(qymux_grpc::channel(server.clone()));
//! let reply = greeter.hello(pb::HelloRequest { name: "agent".into() }).await?;
//! assert_eq!(reply.get_ref().message, "hello agent over tcp");
//!
//! // Stop serving gracefully; without it, serving ends with the session.
//! serving.shutdown();
//! serving.await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! - **Fails fast, never hangs on a dead session.** A channel opens a stream per HTTP/2
//!   connection; once the session has ended, opening fails at once with the session's
//!   close reason, so calls fail with `Unavailable` instead of waiting. Calls in flight
//!   when the session dies fail as soon as the session has ended (at once for a close by
//!   either side, within the dead-peer timeout for a vanished peer): every connection
//!   watches its session ([`SessionIo`]).
//! - **Keep-alive that gRPC servers accept.** Dead peers are found by the session's own
//!   keep-alive. HTTP/2 pings go out only while calls are in flight and at most every
//!   [`DEFAULT_KEEP_ALIVE_INTERVAL`] (6 min), which no gRPC server's ping policing
//!   (`too_many_pings`) objects to. The server side sends no pings (tonic's default).
//! - **Who is calling.** Handlers read [`SessionInfo`] (protocol, addresses, the peer's
//!   verified certificate chain with mTLS) from the request extensions;
//!   [`tonic::Request::remote_addr`] works too.
//! - **Cancellation and deadlines.** A call whose deadline expires fails with
//!   `DeadlineExceeded` (tonic itself would say `Cancelled`); the deadline travels as
//!   `grpc-timeout`, and the expired or dropped call resets its HTTP/2 stream, so the
//!   handler's future is dropped (or its stream's next send fails).
//! - **Large messages** work as far as tonic's limits allow: raise
//!   `max_decoding_message_size` / `max_encoding_message_size` (4 MiB decoding by
//!   default) on the generated client and server.
//!
//! No TLS happens at the gRPC layer (the session is already encrypted and authenticated),
//! so no TLS feature of tonic is needed; the crate builds on tonic's `server` and
//! `channel` features only.
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod client;
mod io;
mod server;

pub use client::{
    ChannelBuilder, DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEP_ALIVE_INTERVAL,
    DEFAULT_KEEP_ALIVE_TIMEOUT, ResponseFuture, SessionChannel, channel,
};
pub use io::{SessionInfo, SessionIo};
/// The connector [`channel`] uses: a `tower::Service<Uri>` that opens a session stream
/// for every connection (the URI is ignored). It is `qymux_http`'s, shared by both
/// crates; use it for a tonic [`Endpoint`](tonic::transport::Endpoint) configured by
/// hand:
///
/// ```no_run
/// # fn f(session: qymux_transport::BoxSession) {
/// use qymux_grpc::SessionConnector;
/// use tonic::transport::Endpoint;
///
/// let channel = Endpoint::from_static("http://agent.example")
///     .connect_with_connector_lazy(SessionConnector::new(session));
/// # }
/// ```
///
/// Opening fails at once with the session's close reason once the session has ended, so
/// a channel never waits for a dead session.
pub use qymux_http::SessionConnector;
pub use server::{
    AddTcpConnectInfo, Incoming, ServeError, ServeHandle, incoming, serve, serve_with,
};
