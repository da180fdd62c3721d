//! go-peer against go-peer, through the process wrappers: checks the peer and the harness
//! before any Rust backend is tested against them.

use std::time::Duration;

use qymux_cert::CertificateAuthority;
use qymux_testsupport::{GoCounts, GoPeer, TempDir, go_peer};

const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, as
/// PEM files.
struct Certs {
    _dir: TempDir,
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Certs {
    fn new() -> Self {
        let dir = TempDir::new("go-vs-go").expect("temp dir");
        let path = |name: &str| dir.join(name).to_str().expect("UTF-8 temp path").to_owned();
        let certs = Certs {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server.key"),
            client_cert: path("client.pem"),
            client_key: path("client.key"),
            _dir: dir,
        };
        let ca = CertificateAuthority::new("go-peer test CA").expect("CA");
        ca.write_pem_files(&certs.ca, certs.ca.replace(".pem", ".key"), false)
            .expect("write CA");
        ca.issue_server(&["localhost", "127.0.0.1"])
            .expect("server certificate")
            .write_pem_files(&certs.server_cert, &certs.server_key, false)
            .expect("write server certificate");
        ca.issue_client("agent-1")
            .expect("client certificate")
            .write_pem_files(&certs.client_cert, &certs.client_key, false)
            .expect("write client certificate");
        certs
    }
}

#[tokio::test]
async fn go_vs_go_streams_both_ways() {
    let Some(bin) = go_peer() else { return };
    let certs = Certs::new();
    let (mut server, addr) = GoPeer::server(
        &bin,
        [
            "--cert",
            &certs.server_cert,
            "--key",
            &certs.server_key,
            "--open",
            "2",
            "--bytes",
            "1048576",
        ],
    )
    .await
    .expect("go-peer server starts");

    let out = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr.to_string(),
            "--ca",
            &certs.ca,
            "--streams",
            "4",
            "--bytes",
            "1048576",
            "--expect-reverse",
            "2",
            "--timeout",
            "60s",
        ],
    )
    .await
    .expect("go-peer client runs");
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.result(),
        Some(GoCounts {
            ok: 4,
            failed: 0,
            reverse: 2
        }),
        "{out}"
    );
    assert_eq!(
        server
            .next_reverse(LINE_TIMEOUT)
            .await
            .expect("REVERSE line"),
        GoCounts {
            ok: 2,
            failed: 0,
            reverse: 0
        },
        "server stderr:\n{}",
        server.stderr()
    );
    let end = server
        .line_starting_with("SESSION-END ", LINE_TIMEOUT)
        .await
        .expect("SESSION-END line");
    assert_eq!(end, "SESSION-END EOF");
    assert!(
        !server.stderr().contains("STREAM-ERROR"),
        "{}",
        server.stderr()
    );
    assert!(server.stop().await.expect("server exits").success());
}

#[tokio::test]
async fn go_vs_go_mutual_tls() {
    let Some(bin) = go_peer() else { return };
    let certs = Certs::new();
    let (mut server, addr) = GoPeer::server(
        &bin,
        [
            "--cert",
            &certs.server_cert,
            "--key",
            &certs.server_key,
            "--ca",
            &certs.ca,
            "--open",
            "1",
            "--bytes",
            "65536",
        ],
    )
    .await
    .expect("go-peer server starts");
    let addr = addr.to_string();

    let out = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &certs.ca,
            "--cert",
            &certs.client_cert,
            "--key",
            &certs.client_key,
            "--streams",
            "2",
            "--bytes",
            "65536",
            "--expect-reverse",
            "1",
        ],
    )
    .await
    .expect("go-peer client runs");
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.result(),
        Some(GoCounts {
            ok: 2,
            failed: 0,
            reverse: 1
        }),
        "{out}"
    );
    assert_eq!(
        server
            .next_reverse(LINE_TIMEOUT)
            .await
            .expect("REVERSE line"),
        GoCounts {
            ok: 1,
            failed: 0,
            reverse: 0
        }
    );
    server
        .line_starting_with("SESSION-END ", LINE_TIMEOUT)
        .await
        .expect("SESSION-END line");

    // Without a client certificate: with TLS 1.3 the client learns of the rejection only
    // after its handshake, from the server's alert; go-peer still reports it as a
    // handshake failure.
    let out = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &certs.ca,
            "--streams",
            "1",
            "--bytes",
            "1024",
        ],
    )
    .await
    .expect("go-peer client runs");
    assert!(out.handshake_failed(), "{out}");
    assert!(
        out.error().is_some_and(|e| e.starts_with("handshake: ")),
        "{out}"
    );
    let line = server
        .line_starting_with("HANDSHAKE-ERROR ", LINE_TIMEOUT)
        .await
        .expect("HANDSHAKE-ERROR line");
    assert!(line.contains("certificate"), "{line}");
}

#[tokio::test]
async fn go_vs_go_alpn_mismatch_fails_the_handshake() {
    let Some(bin) = go_peer() else { return };
    let certs = Certs::new();
    let (mut server, addr) = GoPeer::server(
        &bin,
        ["--cert", &certs.server_cert, "--key", &certs.server_key],
    )
    .await
    .expect("go-peer server starts");

    let out = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr.to_string(),
            "--ca",
            &certs.ca,
            "--alpn",
            "not-qymux",
            "--streams",
            "1",
        ],
    )
    .await
    .expect("go-peer client runs");
    assert!(out.handshake_failed(), "{out}");
    assert_eq!(out.result(), None, "{out}");
    let line = server
        .line_starting_with("HANDSHAKE-ERROR ", LINE_TIMEOUT)
        .await
        .expect("HANDSHAKE-ERROR line");
    assert!(line.contains("application protocol"), "{line}");
}

#[tokio::test]
async fn server_that_cannot_start_reports_its_stderr() {
    let Some(bin) = go_peer() else { return };
    let err = GoPeer::server(
        &bin,
        ["--cert", "/nonexistent.pem", "--key", "/nonexistent.key"],
    )
    .await
    .expect_err("no certificate, no server");
    let msg = err.to_string();
    assert!(msg.contains("ERROR config"), "{msg}");
}
