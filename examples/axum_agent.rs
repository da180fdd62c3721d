//! An agent serves an axum app on the session it dialed; the server, which cannot dial
//! the agent, calls that app through the session with an HTTP client. Once over QUIC,
//! once over TLS + yamux, in one process on loopback.
//!
//! Run: `cargo run --example axum_agent`
#![allow(clippy::print_stdout)]

use std::future::IntoFuture;

use axum::Router;
use axum::extract::{ConnectInfo, Path};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use qymux::cert::CertificateAuthority;
use qymux::http::SessionInfo;
use qymux::http::axum::SessionListener;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{Config, Mode, Qymux, Session};

/// Who is calling: the session's peer, as the agent sees it.
async fn hello(ConnectInfo(caller): ConnectInfo<SessionInfo>) -> String {
    format!("hello {} over {}", caller.remote_addr, caller.protocol)
}

async fn item(Path(id): Path<u32>) -> String {
    format!("item {id}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ca = CertificateAuthority::new("Qymux axum example CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?);
    let server = Qymux::new(Config::new().server_tls(server_tls));
    let sessions = server.listen("127.0.0.1:0").await?; // QUIC and TCP on one port
    let addr = sessions.local_addr();

    for mode in [Mode::Quic, Mode::Tcp] {
        let agent = Qymux::new(
            Config::new()
                .mode(mode)
                .server_addr(addr.to_string())
                .server_name("localhost")
                .client_tls(ClientTls::with_ca(vec![ca.certificate().clone()])),
        );
        let (agent_session, server_session) = tokio::try_join!(agent.dial(), sessions.accept())?;

        // The agent: an axum app on its session (no local port), until the session ends.
        let app = Router::new()
            .route("/hello", get(hello))
            .route("/items/{id}", get(item));
        let listener = SessionListener::new(agent_session);
        let until_closed = listener.shutdown_signal();
        let make_service = app.into_make_service_with_connect_info::<SessionInfo>();
        let serving = axum::serve(listener, make_service).with_graceful_shutdown(until_closed);
        let serving = tokio::spawn(serving.into_future());

        // The server: an HTTP client whose connections are streams on the session.
        let client = qymux::http::client::<_, Empty<Bytes>>(server_session.clone());
        for path in ["/hello", "/items/7"] {
            let response = client.get(format!("http://agent{path}").parse()?).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            println!(
                "server: GET {path} over {} -> {status} {:?}",
                server_session.protocol(),
                String::from_utf8_lossy(&body)
            );
        }

        server_session.close().await;
        serving.await??;
        println!("agent: axum::serve returned, the session has ended");
    }
    Ok(())
}
