//! Port forwarding over Qymux sessions: plain TCP connections carried on streams, in
//! either direction, and a reverse tunnel that keeps itself connected.
//!
//! A Qymux session lets either side open streams. This crate joins those streams to TCP
//! connections, for any backend (it is generic over
//! [`qymux_transport::Session`]):
//!
//! - [`forward_accepted`]: every stream the session **accepts** is forwarded to a new TCP
//!   connection to a target — typically on the agent, to reach a service next to it;
//! - [`forward_listener`]: every connection a local [`TcpListener`] accepts is forwarded
//!   to a new stream **opened** on the session — typically on the server, to expose that
//!   service on a local port;
//! - [`splice`]: one TCP connection and one stream the caller picked, joined with the
//!   same guarantees, for protocols that choose the stream themselves (the `qymux`
//!   binary's services);
//! - [`tunnel`]: both put together, as a server that hands its public connections to the
//!   most recent agent, and an agent that redials with backoff when its session drops.
//!
//! # What a forwarded connection guarantees
//!
//! - **Byte-exact**, both directions at once, `TCP_NODELAY` on every socket.
//! - **Half-close passes through**: when one side finishes writing (TCP `shutdown(Write)`
//!   or a finished stream), the other side's write half is shut down and the other
//!   direction keeps going until it ends too. Request/response protocols that signal the
//!   end of a request with EOF work.
//! - **Errors stay errors**: if one side fails (reset, refused, session lost), the stream
//!   is aborted and the TCP connection reset with an RST, so the other end never reads a
//!   clean EOF after a truncated transfer. Dropping or aborting a forwarder resets its
//!   connections the same way.
//! - **Bounded**: at most [`ForwardConfig::max_connections`] connections at once; one
//!   more is refused at once (reset), logged and counted, not queued.
//! - **Resilient**: a failing connection is logged (`tracing`) and counted in [`Stats`];
//!   it never stops the forwarder. A forwarder stops when its session ends, or when it
//!   is asked to, and says which ([`Stopped`]).
//!
//! # Example
//!
//! An agent exposes a TCP service through the server's local port:
//!
//! ```
//! use qymux::cert::CertificateAuthority;
//! use qymux::tls::{ClientTls, ServerTls};
//! use qymux::{ClientConfig, Qymux, ServerConfig, Session};
//! use qymux_forward::{StopReason, forward_accepted, forward_listener};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A TCP service next to the agent: it replies once the request is complete (EOF).
//! let service = TcpListener::bind("127.0.0.1:0").await?;
//! let service_addr = service.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut conn, _)) = service.accept().await {
//!         let mut request = Vec::new();
//!         conn.read_to_end(&mut request).await.unwrap();
//!         conn.write_all(format!("got {} bytes", request.len()).as_bytes()).await.unwrap();
//!     }
//! });
//!
//! // A session: the agent dials the server (see the `qymux` crate).
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server = ServerConfig::new(ServerTls::new(ca.issue_server(&["localhost"])?));
//! let listener = Qymux::listen("127.0.0.1:0", server).await?;
//! let mut client = ClientConfig::new(listener.local_addr().to_string());
//! client
//!     .server_name("localhost")
//!     .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()]));
//! let agent = Qymux::new(client);
//! let (agent_session, server_session) = tokio::join!(agent.dial(), listener.accept());
//! let (agent_session, server_session) = (agent_session?, server_session?);
//!
//! // The agent forwards the streams the server opens to the service...
//! let agent_side = tokio::spawn(forward_accepted(agent_session, service_addr));
//! // ...and the server turns each connection to its local port into such a stream.
//! let local = TcpListener::bind("127.0.0.1:0").await?;
//! let local_addr = local.local_addr()?;
//! let server_side = forward_listener(local, server_session.clone());
//! let server_handle = server_side.handle();
//! tokio::spawn(server_side);
//!
//! let mut client = TcpStream::connect(local_addr).await?;
//! client.write_all(&[7; 100_000]).await?;
//! client.shutdown().await?; // the service reads EOF...
//! let mut reply = String::new();
//! client.read_to_string(&mut reply).await?; // ...and its reply comes back
//! assert_eq!(reply, "got 100000 bytes");
//! assert_eq!(server_handle.stats().tcp_to_stream_bytes, 100_000);
//!
//! // When the session ends, the agent's forwarder says so.
//! server_session.close().await;
//! let stopped = agent_side.await?;
//! assert!(matches!(stopped.reason, StopReason::SessionEnded(_)));
//! assert_eq!(stopped.stats.completed, 1);
//! # Ok(())
//! # }
//! ```
//!
//! [`TcpListener`]: tokio::net::TcpListener
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod config;
mod forwarder;
mod pump;
mod splice;
mod stats;
pub mod tunnel;

pub use config::{ForwardConfig, Target};
pub use forwarder::{
    ForwardHandle, Forwarder, StopReason, Stopped, forward_accepted, forward_listener,
};
pub use splice::{SpliceError, SpliceOptions, Spliced, splice};
pub use stats::Stats;
