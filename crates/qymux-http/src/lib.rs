//! HTTP over Qymux sessions, with [hyper].
//!
//! An agent behind NAT dials the server once; over that session the server can reach an
//! HTTP service that runs next to the agent, although nothing can dial the agent:
//!
//! - **On the agent**, [`serve`] runs any hyper service on every stream the session
//!   accepts (HTTP/1.1 and HTTP/2, detected per stream; upgrades passed through), and
//!   with the feature `axum`, `axum::SessionListener` lets `axum::serve` serve an
//!   axum app there. [`serve_proxy`] serves a local HTTP or HTTPS service (a URL such as
//!   `http://127.0.0.1:8080`) the same way: a reverse proxy that forwards each request
//!   to the target, streaming bodies both ways. Handlers find the session's
//!   [`SessionInfo`] (protocol, addresses, the peer's certificate with mTLS) in the
//!   request's extensions, or as axum's `ConnectInfo`.
//! - **On the server**, [`client`] (HTTP/1.1) or [`http2_client`] (HTTP/2 with prior
//!   knowledge) is a hyper-util [`Client`](hyper_util::client::legacy::Client) whose
//!   connections are new streams on the session ([`SessionConnector`], a
//!   `tower::Service<Uri>` that any client taking a connector can use, tonic's
//!   included). Requests name any host (`http://agent-service/healthz`); it travels as
//!   `Host`, and the stream reaches whatever the agent serves.
//!
//! Both sides are generic over [`qymux_transport::Session`], so they work the same on a
//! QUIC session, a TLS + yamux session, or a [`BoxSession`](qymux_transport::BoxSession).
//! Either side may play either role: the roles above are the usual reverse-tunnel ones.
//!
//! # What passes through
//!
//! - Bodies of any size, streamed: nothing is buffered whole. A long-lived response
//!   (watch, logs, server-sent events) reaches the client chunk by chunk as the service
//!   produces it.
//! - HTTP/1.1 upgrades (`Connection: upgrade`, e.g. WebSocket): [`hyper::upgrade::on`]
//!   on the client's `101 Switching Protocols` response gives a raw byte stream to the
//!   service, both ways.
//! - HTTPS targets: the proxy verifies the service's certificate (system roots by
//!   default, or any rustls config, see [`ProxyOptions::target_tls`]). The default
//!   config needs the features `native-roots` and a crypto provider: `ring` (both on by
//!   default) or `aws-lc-rs`.
//! - Failures are HTTP answers: a service that is down gives `502 Bad Gateway` with the
//!   reason in the body.
//!
//! # Example
//!
//! A local service, a session over TLS + yamux on loopback, the agent's proxy, and the
//! server's request through it:
//!
//! ```
//! use std::convert::Infallible;
//!
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Empty, Full};
//! use hyper::{Request, Response};
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use qymux_cert::CertificateAuthority;
//! use qymux_tls::{ClientTls, ServerTls};
//! use qymux_transport::Options;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The agent's local HTTP service on 127.0.0.1.
//! let local = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let service_addr = local.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = local.accept().await {
//!         let hello = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
//!             let text = format!("hello from {}", req.uri().path());
//!             Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
//!         });
//!         tokio::spawn(
//!             hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
//!                 .serve_connection(TokioIo::new(tcp), hello)
//!                 .into_owned(),
//!         );
//!     }
//! });
//!
//! // A session: the server listens, the agent dials.
//! let ca = CertificateAuthority::new("Example CA")?;
//! let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
//! let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
//! let options = Options::default();
//! let listener = qymux_tcp::Listener::bind("127.0.0.1:0", server_tls, options.clone()).await?;
//! let addr = listener.local_addr().to_string();
//! let (agent, server) = tokio::join!(
//!     qymux_tcp::dial(&addr, "localhost", client_tls, options.clone()),
//!     listener.accept(),
//! );
//! let (agent, server) = (agent?, server?);
//!
//! // The agent serves its local service on the session...
//! let target = format!("http://{service_addr}").parse()?;
//! let proxy = qymux_http::serve_proxy(agent, target, Default::default()).await?;
//!
//! // ...and the server reaches it through the session.
//! let client = qymux_http::client::<_, Empty<Bytes>>(server);
//! let response = client.get("http://agent-service/status".parse()?).await?;
//! assert_eq!(response.status(), 200);
//! let body = response.into_body().collect().await?.to_bytes();
//! assert_eq!(body, "hello from /status");
//!
//! proxy.shutdown();
//! println!("proxy {}", proxy.stopped().await);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "axum")]
pub mod axum;
mod client;
mod forwarded;
mod headers;
mod info;
mod io;
mod path;
mod proxy;
mod serve;
mod target;

pub use client::{
    Connecting, POOL_IDLE_TIMEOUT, SessionConnector, client, client_builder, http2_client,
};
pub use info::SessionInfo;
pub use io::SessionIo;
pub use proxy::{ProxyError, ProxyHandle, ProxyOptions, serve_proxy};
pub use serve::{ServeHandle, ServeOptions, StopReason, serve, serve_with};
