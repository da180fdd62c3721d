//! Qymux in one process: a server and an agent on loopback, certificates made in memory.
//!
//! 1. The agent dials in Auto mode (QUIC raced against TCP); both sides open streams.
//! 2. The fallback: the agent dials a server whose UDP port is blackholed (a socket that
//!    never answers). Auto mode falls back to TCP, and remembers it for the next dial.
//!
//! Run: `cargo run --example quickstart`
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use qymux::cert::CertificateAuthority;
use qymux::tls::{ClientTls, ServerTls};
use qymux::{BoxSession, Config, Mode, Qymux, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Echoes every stream the peer opens on `session`.
async fn echo(session: BoxSession) {
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
async fn ask(session: &BoxSession, message: &str) -> anyhow::Result<String> {
    let mut stream = session.open().await?;
    stream.write_all(message.as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    Ok(reply)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ca = CertificateAuthority::new("Qymux Quickstart CA")?;
    let server_tls = ServerTls::new(ca.issue_server(&["localhost", "127.0.0.1"])?);
    let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()]);

    // --- 1. A server in Auto mode: QUIC and TCP on the same port.
    let server = Qymux::new(Config::new().server_tls(server_tls.clone()));
    let listener = server.listen("127.0.0.1:0").await?;
    let addr = listener.local_addr();
    println!("server: listening on {addr} (QUIC/UDP and TLS+yamux/TCP)");
    tokio::spawn(async move {
        while let Ok(session) = listener.accept().await {
            println!(
                "server: agent {} connected over {}",
                session.remote_addr(),
                session.protocol()
            );
            tokio::spawn(echo(session.clone()));
            tokio::spawn(async move {
                // The server reaches into the agent, which it could not dial itself.
                match ask(&session, "hello from the server").await {
                    Ok(reply) => println!("server: the agent echoed {reply:?}"),
                    Err(e) => println!("server: stream to the agent failed: {e}"),
                }
            });
        }
    });

    let agent = Qymux::new(
        Config::new()
            .server_addr(addr.to_string())
            .server_name("localhost")
            .client_tls(client_tls.clone()),
    );
    let started = Instant::now();
    let session = agent.dial().await?;
    println!(
        "agent: session over {} in {:.1} ms",
        session.protocol(),
        ms(started.elapsed())
    );
    tokio::spawn(echo(session.clone()));
    for i in 1..=3 {
        let reply = ask(&session, &format!("agent message {i}")).await?;
        println!("agent: the server echoed {reply:?}");
    }
    // Let the server's stream to us finish before closing.
    tokio::time::sleep(Duration::from_millis(100)).await;
    session.close().await;

    // --- 2. The fallback: a server whose UDP port is blackholed.
    let tcp_only = Qymux::new(Config::new().mode(Mode::Tcp).server_tls(server_tls));
    let listener = tcp_only.listen("127.0.0.1:0").await?;
    let addr = listener.local_addr();
    let _blackhole = std::net::UdpSocket::bind(addr)?; // receives, never answers
    tokio::spawn(async move {
        // Hold each session until the agent closes it (dropping it would close it).
        while let Ok(session) = listener.accept().await {
            tokio::spawn(async move { session.closed().await });
        }
    });
    println!("\nblackholed UDP on {addr}: QUIC packets go nowhere, TCP works");

    let plain_tcp = Qymux::new(
        Config::new()
            .mode(Mode::Tcp)
            .server_addr(addr.to_string())
            .server_name("localhost")
            .client_tls(client_tls.clone()),
    );
    let started = Instant::now();
    let s = plain_tcp.dial().await?;
    let tcp_ms = ms(started.elapsed());
    println!("plain TCP dial:                  {tcp_ms:7.1} ms");
    s.close().await;

    let auto = Qymux::new(
        Config::new()
            .server_addr(addr.to_string())
            .server_name("localhost")
            .client_tls(client_tls),
    );
    for label in [
        "Auto, first dial (fallback):",
        "Auto, QUIC failure remembered:",
    ] {
        let started = Instant::now();
        let s = auto.dial().await?;
        let took = ms(started.elapsed());
        println!(
            "{label:32} {took:7.1} ms over {} ({:+.1} ms vs plain TCP)",
            s.protocol(),
            took - tcp_ms
        );
        s.close().await;
    }
    println!("\n(the Go original waits for QUIC to time out, about 5 s, before it tries TCP)");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
