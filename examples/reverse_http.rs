//! Reaching an agent's local HTTP service through its session, in one process on loopback.
//!
//! 1. The agent runs an HTTP service on 127.0.0.1 (hyper): `/hello`, a streamed `/events`,
//!    and `/upload` that counts the bytes it receives.
//! 2. The agent dials the server (once over TLS + yamux, once over QUIC) and serves the
//!    reverse proxy to its service on the session.
//! 3. The server, which cannot dial the agent, sends requests through the session with
//!    the session's HTTP client, and prints the answers.
//!
//! ```sh
//! cargo run --example reverse_http
//! ```

use std::{convert::Infallible, error::Error, net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, ClientConfig, Mode, Qymux, ServerConfig, Session};

type BoxError = Box<dyn Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let service = local_service().await?;
    println!("agent: local HTTP service on http://{service}");

    for mode in [Mode::Tcp, Mode::Quic] {
        let (agent, server) = session(mode).await?;
        let (local, remote, protocol) =
            (agent.local_addr(), agent.remote_addr(), server.protocol());
        println!("\n== session over {protocol} (agent {local} -> server {remote})");

        // The agent: every stream the server opens is proxied to the local service.
        let target = format!("http://{service}").parse()?;
        let proxy = qymux_http::serve_proxy(agent, target, Default::default()).await?;
        println!("agent: serving {} on the session", proxy.target());

        // The server: an HTTP client whose connections are streams on the session.
        let client = qymux_http::client::<_, Body>(server.clone());
        let response = client.request(get("http://agent.internal/hello")?).await?;
        println!("server: GET /hello -> {}", answer(response).await?);

        let response = client.request(get("http://agent.internal/events")?).await?;
        println!("server: GET /events -> {}", response.status());
        let mut events = response.into_body().into_data_stream();
        while let Some(event) = events.try_next().await? {
            print!("server:   event {}", String::from_utf8_lossy(&event));
        }

        let upload = full(vec![7u8; 8 * 1024 * 1024]);
        let request = Request::post("http://agent.internal/upload").body(upload)?;
        let uploaded = answer(client.request(request).await?).await?;
        println!("server: POST /upload (8 MiB) -> {uploaded}");

        // HTTP/2 with prior knowledge: all requests share one stream.
        let h2 = qymux_http::http2_client::<_, Body>(server.clone());
        let response = h2.request(get("http://agent.internal/hello")?).await?;
        let (version, hello) = (response.version(), answer(response).await?);
        println!("server: GET /hello over {version:?} -> {hello}");

        proxy.shutdown();
        println!("agent: proxy {}", proxy.stopped().await);
        server.close().await;
    }
    Ok(())
}

fn get(uri: &str) -> Result<Request<Body>, http::Error> {
    Request::get(uri).body(Empty::new().map_err(|never| match never {}).boxed_unsync())
}

fn full(data: impl Into<Bytes>) -> Body {
    UnsyncBoxBody::new(Full::new(data.into()).map_err(|never| match never {}))
}

/// The status and the body, as text.
async fn answer(response: Response<Incoming>) -> Result<String, BoxError> {
    let (status, body) = (response.status(), response.into_body().collect().await?);
    let body = body.to_bytes();
    Ok(format!("{status} {:?}", String::from_utf8(body.to_vec())?))
}

/// A server and an agent connected over loopback in `mode`; returns `(agent, server)`.
async fn session(mode: Mode) -> Result<(BoxSession, BoxSession), BoxError> {
    let ca = CertificateAuthority::new("Example CA")?;
    let mut server = ServerConfig::new(ServerTls::new(ca.issue_server(&["localhost"])?));
    server.mode(mode);
    let listener = Qymux::listen("127.0.0.1:0", server).await?;
    let mut agent = ClientConfig::new(listener.local_addr().to_string());
    let trust = ClientTls::with_ca(vec![ca.certificate().clone()]);
    agent.mode(mode).server_name("localhost").client_tls(trust);
    let agent = Qymux::new(agent);
    let (agent, server) = tokio::join!(agent.dial(), listener.accept());
    Ok((agent?, server?))
}

/// The agent's local service.
async fn local_service() -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = http.serve_connection_with_upgrades(TokioIo::new(tcp), service_fn(handle));
            tokio::spawn(conn.into_owned());
        }
    });
    Ok(addr)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body = match req.uri().path() {
        "/hello" => {
            let host = req.headers().get(http::header::HOST);
            let host = host.and_then(|h| h.to_str().ok()).unwrap_or("?");
            full(format!("hello, {host} (asked over {:?})", req.version()))
        }
        // Three events, 100 ms apart: they reach the server as they happen.
        "/events" => {
            let events = futures::stream::iter(1..=3).then(|i| async move {
                if i > 1 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok::<_, BoxError>(Frame::data(Bytes::from(format!("{i} of 3\n"))))
            });
            StreamBody::new(events).boxed_unsync()
        }
        "/upload" => match req.into_body().collect().await {
            Ok(body) => full(format!("received {} bytes", body.to_bytes().len())),
            Err(err) => full(format!("upload failed: {err}")),
        },
        _ => {
            let mut response = Response::new(full("not found"));
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            return Ok(response);
        }
    };
    Ok(Response::new(body))
}
