//! Interop with an independent peer: Go `crypto/tls` + `hashicorp/yamux`
//! (`interop/go-peer`), in both roles, streams opened from both ends, single 16 MB
//! writes from the Go side (larger than the yamux crate's 1 MiB frame limit), and our
//! keep-alive pings.
//!
//! Skips when Go or the yamux package is missing; fails instead with
//! `QYMUX_REQUIRE_PEERS=1`.

mod common;

use std::time::Duration;

use common::{Pki, options, payload, sha256};
use qymux_tcp::{Listener, Session, dial};
use qymux_testsupport::{GoPeer, TempDir, go_peer};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Error, HandshakeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MB16: usize = 16 * 1024 * 1024;
/// [`MB16`] as the Go peer's `--bytes` argument.
const MB16_ARG: &str = "16777216";
const _: () = assert!(MB16 == 16_777_216);
const WAIT: Duration = Duration::from_secs(120);

/// The PKI as PEM files for the Go peer (removed on drop).
struct PemFiles {
    _dir: TempDir,
    ca: String,
    server_pem: String,
    server_key: String,
    client_pem: String,
    client_key: String,
}

/// Writes the PKI as PEM files for the Go peer.
fn write_pem(pki: &Pki) -> PemFiles {
    let dir = TempDir::new("qymux-go-interop").unwrap();
    pki.ca
        .write_pem_files(dir.join("ca.pem"), dir.join("ca.key"), true)
        .unwrap();
    pki.server
        .write_pem_files(dir.join("server.pem"), dir.join("server.key"), true)
        .unwrap();
    pki.client
        .write_pem_files(dir.join("client.pem"), dir.join("client.key"), true)
        .unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    PemFiles {
        ca: path("ca.pem"),
        server_pem: path("server.pem"),
        server_key: path("server.key"),
        client_pem: path("client.pem"),
        client_key: path("client.key"),
        _dir: dir,
    }
}

/// Echoes every stream the Go side opens, until EOF, then finishes our side.
fn echo_all(session: Session) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(mut stream) = session.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut stream);
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    })
}

/// Opens a stream, sends `len` bytes, finishes our side and checks the Go side's echo.
async fn verify_echo(session: &Session, seed: u64, len: usize) {
    let data = payload(seed, len);
    let mut stream = session.open().await.unwrap();
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let (_, got) = tokio::join!(
        async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        },
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        }
    );
    assert_eq!(got.len(), data.len(), "echo length of stream {seed}");
    assert_eq!(sha256(&got), sha256(&data), "echo content of stream {seed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_dials_qymux() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();

    let server = async {
        let session = listener.accept().await.unwrap();
        let _echo = echo_all(session.clone());
        // Streams from our end to the Go dialer, which echoes them.
        let opens: Vec<_> = (0..3u64)
            .map(|i| {
                let session = session.clone();
                tokio::spawn(async move { verify_echo(&session, i, 4 * 1024 * 1024).await })
            })
            .collect();
        for o in opens {
            o.await.unwrap();
        }
        session
    };
    let client = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &f.ca,
            "--server-name",
            "localhost",
            "--streams",
            "16",
            "--bytes",
            MB16_ARG,
            "--expect-reverse",
            "3",
            "--timeout",
            "100s",
        ],
    );
    let (session, out) = tokio::time::timeout(WAIT, async { tokio::join!(server, client) })
        .await
        .expect("interop run finished");
    let out = out.unwrap();
    let counts = out
        .result()
        .unwrap_or_else(|| panic!("no RESULT line: {out}"));
    assert!(out.status.success(), "{out}");
    assert_eq!(
        (counts.ok, counts.failed, counts.reverse),
        (16, 0, 3),
        "{out}"
    );
    // The Go client closed its session: a clean close here.
    assert!(session.closed().await.is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qymux_dials_go() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = GoPeer::server(
        &bin,
        [
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &f.server_pem,
            "--key",
            &f.server_key,
            "--open",
            "3",
            "--bytes",
            MB16_ARG,
        ],
    )
    .await
    .unwrap();

    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), &options())
        .await
        .unwrap();
    let _echo = echo_all(session.clone());
    let opens: Vec<_> = (0..16u64)
        .map(|i| {
            let session = session.clone();
            tokio::spawn(async move { verify_echo(&session, 100 + i, 4 * 1024 * 1024).await })
        })
        .collect();
    for o in opens {
        o.await.unwrap();
    }
    // The Go server's own streams (16 MB single writes) came back intact.
    let reverse = server.next_reverse(WAIT).await.unwrap();
    assert_eq!((reverse.ok, reverse.failed), (3, 0), "{}", server.stderr());

    session.close().await;
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert_eq!(end, "SESSION-END EOF", "a clean close, not a reset");
    assert!(
        !server.stderr().contains("STREAM-ERROR"),
        "{}",
        server.stderr()
    );
    server.stop().await.unwrap();
}

/// Our keep-alive pings are answered by hashicorp yamux, and its answers never reach the
/// yamux crate (which would take them for a protocol violation): a session to a Go peer
/// with a 2 s idle timeout stays up through several idle timeouts without traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_answers_our_keep_alives() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = GoPeer::server(
        &bin,
        [
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &f.server_pem,
            "--key",
            &f.server_key,
        ],
    )
    .await
    .unwrap();
    let mut short = options();
    short
        .idle_timeout(Duration::from_secs(2))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), &short)
        .await
        .unwrap();
    tokio::select! {
        reason = session.closed() => panic!("the idle session to Go ended: {reason:?}"),
        () = tokio::time::sleep(Duration::from_secs(6)) => {}
    }
    verify_echo(&session, 7, 64 * 1024).await;
    session.close().await;
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert_eq!(
        end, "SESSION-END EOF",
        "a clean close, not a protocol error"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_go_in_both_roles() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);

    // Go client with a certificate → Qymux listener that requires one.
    let tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .unwrap();
    let listener = Listener::bind("127.0.0.1:0", tls, options()).await.unwrap();
    let addr = listener.local_addr().to_string();
    let accept = async {
        let session = listener.accept().await.unwrap();
        let _echo = echo_all(session.clone());
        session
    };
    let client = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &f.ca,
            "--cert",
            &f.client_pem,
            "--key",
            &f.client_key,
            "--streams",
            "4",
            "--bytes",
            "1048576",
        ],
    );
    let (session, out) = tokio::join!(accept, client);
    let out = out.unwrap();
    assert!(out.status.success(), "{out}");
    let peer = session
        .peer_identity()
        .expect("the Go client's certificate");
    assert_eq!(peer.end_entity(), pki.client.end_entity());

    // Go client without a certificate: refused. In TLS 1.3 the client's handshake is done
    // before the server checks, so Go may see the alert in the handshake or at first use.
    let out = GoPeer::client(&bin, ["--connect", &addr, "--ca", &f.ca, "--streams", "1"])
        .await
        .unwrap();
    // (Go then reports the alert, or just a broken pipe if it wrote first.)
    assert!(!out.status.success(), "{out}");
    assert!(out.result().is_none_or(|r| r.ok == 0), "{out}");

    // Qymux dialer without a certificate → Go server that requires one: a typed error.
    let (go, go_addr) = GoPeer::server(
        &bin,
        [
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &f.server_pem,
            "--key",
            &f.server_key,
            "--ca",
            &f.ca,
        ],
    )
    .await
    .unwrap();
    match dial(
        &go_addr.to_string(),
        "localhost",
        pki.client_tls(),
        &options(),
    )
    .await
    {
        Err(Error::Handshake(
            HandshakeError::ClientCertificateRequired | HandshakeError::ClientCertificateRefused(_),
        )) => {}
        other => panic!("expected a refused client certificate, got {other:?}"),
    }
    // And with one, a working session.
    let tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .client_identity(pki.client.clone())
        .build()
        .unwrap();
    let session = dial(&go_addr.to_string(), "localhost", tls, &options())
        .await
        .unwrap();
    verify_echo(&session, 7, 100_000).await;
    session.close().await;
    go.stop().await.unwrap();
}
