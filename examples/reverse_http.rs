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

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use qymux_cert::CertificateAuthority;
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{BoxSession, Options, Session};

type BoxError = Box<dyn Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let service = local_service().await?;
    println!("agent: local HTTP service on http://{service}");

    for quic in [false, true] {
        let (agent, server) = session(quic).await?;
        println!(
            "\n== session over {} (agent {} -> server {})",
            server.protocol(),
            agent.local_addr(),
            agent.remote_addr()
        );

        // The agent: every stream the server opens is proxied to the local service.
        let proxy = qymux_http::serve_proxy(
            agent,
            format!("http://{service}").parse()?,
            Default::default(),
        )
        .await?;
        println!("agent: serving {} on the session", proxy.target());

        // The server: an HTTP client whose connections are streams on the session.
        let client = qymux_http::client::<_, Body>(server.clone());

        let response = client.request(get("http://agent.internal/hello")?).await?;
        println!(
            "server: GET /hello -> {} {:?}",
            response.status(),
            text(response.into_body()).await?
        );

        let response = client.request(get("http://agent.internal/events")?).await?;
        println!("server: GET /events -> {}", response.status());
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                print!("server:   event {}", String::from_utf8_lossy(&data));
            }
        }

        let upload = Bytes::from(vec![7u8; 8 * 1024 * 1024]);
        let request = Request::post("http://agent.internal/upload").body(
            Full::new(upload)
                .map_err(|never| match never {})
                .boxed_unsync(),
        )?;
        let response = client.request(request).await?;
        println!(
            "server: POST /upload (8 MiB) -> {} {:?}",
            response.status(),
            text(response.into_body()).await?
        );

        // HTTP/2 with prior knowledge: all requests share one stream.
        let h2 = qymux_http::http2_client::<_, Body>(server.clone());
        let response = h2.request(get("http://agent.internal/hello")?).await?;
        println!(
            "server: GET /hello over {:?} -> {} {:?}",
            response.version(),
            response.status(),
            text(response.into_body()).await?
        );

        proxy.shutdown();
        println!("agent: proxy {}", proxy.stopped().await);
        server.close().await;
    }
    Ok(())
}

fn get(uri: &str) -> Result<Request<Body>, http::Error> {
    Request::get(uri).body(Empty::new().map_err(|never| match never {}).boxed_unsync())
}

async fn text(body: Incoming) -> Result<String, BoxError> {
    Ok(String::from_utf8(
        body.collect().await?.to_bytes().to_vec(),
    )?)
}

/// A server and an agent connected over loopback; returns `(agent, server)`.
async fn session(quic: bool) -> Result<(BoxSession, BoxSession), BoxError> {
    let ca = CertificateAuthority::new("Example CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?).build()?;
    let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]).build()?;
    let options = Options::default();
    if quic {
        let listener =
            qymux_quic::Listener::bind("127.0.0.1:0", server_tls, options.clone()).await?;
        let addr = listener.local_addr().to_string();
        let (agent, server) = tokio::join!(
            qymux_quic::dial(&addr, "localhost", client_tls, &options),
            listener.accept()
        );
        Ok((BoxSession::new(agent?), BoxSession::new(server?)))
    } else {
        let listener =
            qymux_tcp::Listener::bind("127.0.0.1:0", server_tls, options.clone()).await?;
        let addr = listener.local_addr().to_string();
        let (agent, server) = tokio::join!(
            qymux_tcp::dial(&addr, "localhost", client_tls, &options),
            listener.accept()
        );
        Ok((BoxSession::new(agent?), BoxSession::new(server?)))
    }
}

/// The agent's local service.
async fn local_service() -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = hyper::service::service_fn(handle);
            tokio::spawn(
                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .into_owned(),
            );
        }
    });
    Ok(addr)
}

async fn handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let body: Body = match req.uri().path() {
        "/hello" => {
            let host = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            full(format!("hello, {host} (asked over {:?})", req.version()))
        }
        "/events" => {
            // Three events, 100 ms apart: they reach the server as they happen.
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
            tokio::spawn(async move {
                for i in 1..=3 {
                    let line = format!("{i} of 3\n");
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            StreamBody::new(stream).boxed_unsync()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut received = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => received += frame.data_ref().map_or(0, Bytes::len),
                    Err(err) => return Ok(Response::new(full(format!("upload failed: {err}")))),
                }
            }
            full(format!("received {received} bytes"))
        }
        _ => {
            let mut response = Response::new(full("not found".to_owned()));
            *response.status_mut() = http::StatusCode::NOT_FOUND;
            return Ok(response);
        }
    };
    Ok(Response::new(body))
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync()
}
