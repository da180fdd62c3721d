//! Errors from real failed dials: each level's message says what happened there and the
//! cause comes from `source()`, so the chain prints every cause once; `is_timeout` and
//! `is_retryable` classify them.

use std::error::Error as _;
use std::time::Duration;

use qymux::cert::CertificateAuthority;
use qymux::tls::ClientTls;
use qymux::{ClientConfig, Error, Mode, Qymux, ServerConfig};

fn client_tls() -> ClientTls {
    let ca = CertificateAuthority::new("Errors CA").unwrap();
    ClientTls::with_ca(vec![ca.certificate().clone()])
}

/// The messages of `error` and its causes, outermost first.
fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![error.to_string()];
    let mut cause = error.source();
    while let Some(e) = cause {
        out.push(e.to_string());
        cause = e.source();
    }
    out
}

/// No message repeats the text of a cause below it, so printing the chain (anyhow's
/// `{:#}`, `ErrorReport`) shows each cause once.
fn assert_each_cause_once(error: &Error) {
    let messages = chain(error);
    assert!(messages.len() >= 2, "no cause under {messages:?}");
    for (i, outer) in messages.iter().enumerate() {
        for inner in &messages[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?} (chain {messages:?})"
            );
        }
    }
    let report = error.report().to_string();
    assert_eq!(report, messages.join(": "));
    let anyhow = format!("{:#}", anyhow::Error::new(error.clone()));
    assert_eq!(anyhow, report);
}

/// A port on loopback that nothing listens on: bound, then closed.
async fn refused_addr() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    addr
}

#[tokio::test]
async fn a_refused_tcp_dial_is_retryable_not_a_timeout() {
    let addr = refused_addr().await;
    let mut config = ClientConfig::new(&addr);
    config
        .mode(Mode::Tcp)
        .server_name("localhost")
        .client_tls(client_tls());
    let agent = Qymux::new(config);
    let error = agent.dial().await.expect_err("nothing listens there");
    match &error {
        Error::Connect {
            addr: dialed,
            source,
        } => {
            assert_eq!(dialed, &addr);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(error.is_retryable(), "{error:?}");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(error.to_string(), format!("connecting to {addr} failed"));
    assert!(error.source().is_some());
    assert_each_cause_once(&error);
}

/// A TCP listener on loopback that accepts and never says a word: the TLS handshake
/// runs out of time.
#[tokio::test]
async fn a_silent_tcp_server_times_out_and_is_retryable() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut config = ClientConfig::new(&addr);
    config
        .mode(Mode::Tcp)
        .server_name("localhost")
        .handshake_timeout(Duration::from_millis(300))
        .client_tls(client_tls());
    let agent = Qymux::new(config);
    let error = agent.dial().await.expect_err("the server never answers");
    assert!(
        matches!(
            error,
            Error::Timeout {
                what: qymux::TimeoutKind::Handshake,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.is_retryable(), "{error:?}");
    holder.abort();
}

/// A UDP socket on loopback that reads nothing and answers nothing: the QUIC dial runs
/// out of time.
#[tokio::test]
async fn a_silent_quic_server_times_out_and_is_retryable() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let mut config = ClientConfig::new(&addr);
    config
        .mode(Mode::Quic)
        .server_name("localhost")
        .connect_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_millis(300))
        .client_tls(client_tls());
    let agent = Qymux::new(config);
    let error = agent.dial().await.expect_err("the server never answers");
    assert!(error.is_timeout(), "{error:?}");
    assert!(error.is_retryable(), "{error:?}");
    drop(silent);
}

/// A server with a certificate the dialer does not trust: the handshake fails, which
/// retrying does not change; the chain names the handshake, then why.
#[tokio::test]
async fn an_untrusted_server_is_not_retryable_and_its_chain_says_why_once() {
    let server_ca = CertificateAuthority::new("Other CA").unwrap();
    let mut server = ServerConfig::new(qymux::tls::ServerTls::new(
        server_ca.issue_server(&["localhost"]).unwrap(),
    ));
    server.mode(Mode::Tcp);
    let listener = Qymux::listen("127.0.0.1:0", server).await.unwrap();
    let mut config = ClientConfig::new(listener.local_addr().to_string());
    config
        .mode(Mode::Tcp)
        .server_name("localhost")
        .client_tls(client_tls());
    let agent = Qymux::new(config);
    // The listener handshakes on its own tasks; it stays bound while the agent dials.
    let error = agent
        .dial()
        .await
        .expect_err("the certificate is not trusted");
    drop(listener);
    assert!(
        matches!(
            error,
            Error::Handshake(qymux::HandshakeError::UntrustedCertificate(_))
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable(), "{error:?}");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(error.to_string(), "handshake failed");
    assert_each_cause_once(&error);
}
