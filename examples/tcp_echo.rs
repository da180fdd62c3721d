//! A Qymux server and agent in one process, over TLS + yamux on loopback: the `qymux-tcp`
//! backend alone, without the facade.
//!
//! The agent dials the server, then both sides open streams to each other: the agent's
//! streams are echoed by the server, and the server's by the agent (the reverse direction
//! is what tunnels are for). Certificates are generated in memory.
//!
//! Run: `cargo run --example tcp_echo`
//!
//! With `-- --certs DIR` it loads the files `cargo xtask cert --out DIR` writes instead
//! (`ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`) and requires the
//! agent's client certificate (mTLS).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use qymux_cert::CertificateAuthority;
use qymux_tcp::{Listener, Session, dial};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::Options;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes every stream the peer opens on `session`.
async fn echo(session: Session) {
    while let Ok(mut stream) = session.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut stream);
            if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                let _ = w.shutdown().await;
            }
        });
    }
}

/// Sends `message` on a new stream and returns the echo.
async fn ask(session: &Session, message: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = session.open().await?;
    stream.write_all(message.as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    Ok(reply)
}

/// The TLS-over-TCP backend alone: a server and an agent on loopback.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Load the files `cargo xtask cert --out DIR` writes (and require the agent's
    /// client certificate) instead of making certificates in memory
    #[arg(long, value_name = "DIR")]
    certs: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = <Cli as clap::Parser>::parse();
    let (server_tls, client_tls) = match &cli.certs {
        None => {
            let ca = CertificateAuthority::new("Qymux Demo CA")?;
            let server = ca.issue_server(&["localhost", "127.0.0.1"])?;
            (
                ServerTls::new(server).build()?,
                ClientTls::with_ca(vec![ca.certificate().clone()]).build()?,
            )
        }
        Some(dir) => {
            println!("using certificates from {} (mTLS)", dir.display());
            let server = ServerTls::from_pem_files(dir.join("server.pem"), dir.join("server.key"))?
                .client_ca_file(dir.join("ca.pem"))?
                .build()?;
            let client = ClientTls::with_ca_file(dir.join("ca.pem"))?
                .client_identity_files(dir.join("client.pem"), dir.join("client.key"))?
                .build()?;
            (server, client)
        }
    };

    let listener = Listener::bind("127.0.0.1:0", server_tls, Options::default()).await?;
    let addr = listener.local_addr().to_string();
    println!("server listening on {addr} (TLS + yamux, ALPN qymux)");

    let server = tokio::spawn(async move {
        let session = listener.accept().await?;
        println!(
            "server: agent connected from {} (client certificate: {})",
            session.remote_addr(),
            if session.peer_identity().is_some() {
                "verified"
            } else {
                "none"
            }
        );
        tokio::spawn(echo(session.clone()));
        // The server reaches back into the agent over the same session.
        let reply = ask(&session, "hello from the server")
            .await
            .map_err(|e| e.to_string());
        Ok::<_, qymux_transport::Error>((session, reply))
    });

    let started = Instant::now();
    let agent = dial(&addr, "localhost", client_tls, &Options::default()).await?;
    println!("agent: session up in {:?}", started.elapsed());
    tokio::spawn(echo(agent.clone()));

    for i in 1..=3 {
        let reply = ask(&agent, &format!("agent message {i}")).await?;
        println!("agent: echoed by the server: {reply:?}");
    }
    let (server_session, reply) = server.await??;
    println!("server: echoed by the agent: {:?}", reply?);

    agent.close().await;
    println!("server: session ended: {}", server_session.closed().await);
    Ok(())
}
