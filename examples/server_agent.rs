//! A server and an agent on the facade (`Qymux`), the way a deployment runs them: the
//! server listens (QUIC and TCP on one port); the agent keeps a session up with
//! `connect_forever` and serves what the server opens; the server reaches back into the
//! agent over that session.
//!
//! Run: `cargo run --example server_agent`
//!
//! The agent's callback runs on every new session (after a reconnect too), and its state
//! (connecting, connected over which transport, waiting to reconnect) is a watch channel.
#![allow(clippy::print_stdout)]

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, Config, Qymux, ReconnectConfig, ReconnectState, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agent's service: answers every stream the server opens, upper-cased.
async fn serve(session: BoxSession) {
    while let Ok(mut stream) = session.accept().await {
        tokio::spawn(async move {
            let mut request = String::new();
            if stream.read_to_string(&mut request).await.is_ok() {
                let _ = stream.write_all(request.to_uppercase().as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Certificates: a CA, the server's certificate, and the CA for the agent to trust.
    let ca = CertificateAuthority::new("Example CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost"])?);
    let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]);

    // The server: one listener for QUIC and TCP.
    let server = Qymux::new(Config::new().server_tls(server_tls));
    let listener = server.listen("127.0.0.1:0").await?;
    let addr = listener.local_addr();
    println!("server: listening on {addr} ({:?})", listener.protocols());

    // The agent: keeps a session up and serves each one.
    let agent = Qymux::new(
        Config::new()
            .server_addr(addr.to_string())
            .server_name("localhost")
            .client_tls(client_tls),
    );
    let reconnecting = agent.connect_forever(ReconnectConfig::default(), serve)?;
    let mut state = reconnecting.state();
    let connected = state.wait_for(ReconnectState::is_connected).await?.clone();
    if let ReconnectState::Connected {
        server, protocol, ..
    } = connected
    {
        println!("agent: connected to {server} over {protocol}");
    }

    // The server reaches the agent over the session the agent dialed.
    let session = listener.accept().await?;
    println!(
        "server: agent {} connected over {}",
        session.remote_addr(),
        session.protocol()
    );
    for question in ["hello agent", "are you there?"] {
        let mut stream = session.open().await?;
        stream.write_all(question.as_bytes()).await?;
        stream.shutdown().await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        println!("server: asked {question:?}, the agent answered {answer:?}");
    }

    // The agent stops (closing its session); the server sees why the session ended.
    reconnecting.shutdown().await;
    println!("server: session ended: {}", session.closed().await);
    Ok(())
}
