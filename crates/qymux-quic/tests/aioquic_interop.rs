//! Interop with an independent QUIC stack: aioquic (Python, `interop/aioquic-peer`), in
//! both roles, with streams opened from both ends; a stream is visible to aioquic as soon
//! as Qymux opens it; ALPN other than `qymux` is refused both ways.
//!
//! Skips when Python or aioquic is missing; fails instead with `QYMUX_REQUIRE_PEERS=1`.
//! Real UDP sockets on loopback. The timeouts only guard against hangs.

mod common;

use std::time::Duration;

use common::{Pki, init_tracing, options, payload, sha256};
use qymux_quic::{Listener, Session, dial};
use qymux_testsupport::{AioquicPeer, GoPeer, TempDir, aioquic_peer};
use qymux_transport::{CloseReason, Error, HandshakeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;
/// [`MIB`] as the peer's `--bytes` argument.
const MIB_ARG: &str = "1048576";
const _: () = assert!(MIB == 1_048_576);
/// Bounds every wait; aioquic is Python, so generous.
const WAIT: Duration = Duration::from_secs(120);

/// The PKI as PEM files for the peer (removed on drop).
struct PemFiles {
    _dir: TempDir,
    ca: String,
    server_pem: String,
    server_key: String,
}

fn write_pem(pki: &Pki) -> PemFiles {
    let dir = TempDir::new("qymux-aioquic-interop").unwrap();
    pki.ca
        .write_pem_files(dir.join("ca.pem"), dir.join("ca.key"), true)
        .unwrap();
    pki.server
        .write_pem_files(dir.join("server.pem"), dir.join("server.key"), true)
        .unwrap();
    let path = |name: &str| dir.join(name).display().to_string();
    PemFiles {
        ca: path("ca.pem"),
        server_pem: path("server.pem"),
        server_key: path("server.key"),
        _dir: dir,
    }
}

/// Echoes every stream the peer opens, until EOF, then finishes our side.
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

/// Sends `len` bytes on `stream`, finishes our side and checks the peer's echo.
async fn check_echo(stream: &mut qymux_quic::Stream, seed: u64, len: usize) {
    let data = payload(seed, len);
    let (mut r, mut w) = tokio::io::split(stream);
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

/// Opens a stream and checks the peer's echo of `len` bytes.
async fn verify_echo(session: &Session, seed: u64, len: usize) {
    let mut stream = session.open().await.unwrap();
    check_echo(&mut stream, seed, len).await;
}

/// Opens `n` streams at once, each checked with [`verify_echo`].
async fn verify_echoes(session: &Session, first_seed: u64, n: u64, len: usize) {
    let opens: Vec<_> = (first_seed..first_seed + n)
        .map(|seed| {
            let session = session.clone();
            tokio::spawn(async move { verify_echo(&session, seed, len).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap();
    }
}

/// An aioquic server with the test PKI; `extra` flags follow the certificate.
async fn aioquic_server(script: &std::path::Path, f: &PemFiles, extra: &[&str]) -> GoPeer {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &f.server_pem,
        "--key",
        &f.server_key,
    ];
    args.extend_from_slice(extra);
    AioquicPeer::server(script, args).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_dials_qymux() {
    init_tracing();
    let Some(script) = aioquic_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();

    let server = async {
        let session = listener.accept().await.unwrap();
        let _echo = echo_all(session.clone());
        // Streams from our end to the aioquic dialer, which echoes them.
        verify_echoes(&session, 0, 3, MIB).await;
        session
    };
    let client = AioquicPeer::client(
        &script,
        [
            "--connect",
            &addr,
            "--ca",
            &f.ca,
            "--server-name",
            "localhost",
            "--streams",
            "8",
            "--bytes",
            MIB_ARG,
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
        (8, 0, 3),
        "{out}"
    );
    // The aioquic client closed its session (application close, code 0, "done").
    let reason = tokio::time::timeout(WAIT, session.closed())
        .await
        .expect("the session ended");
    assert!(
        matches!(reason, CloseReason::Peer(_)),
        "a clean close by the peer, got {reason:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qymux_dials_aioquic() {
    init_tracing();
    let Some(script) = aioquic_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let mut server = aioquic_server(&script, &f, &["--open", "3", "--bytes", MIB_ARG]).await;

    let session = dial(
        &server.addr().to_string(),
        "localhost",
        pki.client_tls(),
        options(),
    )
    .await
    .unwrap();
    let _echo = echo_all(session.clone());
    tokio::time::timeout(WAIT, verify_echoes(&session, 100, 8, MIB))
        .await
        .expect("our streams were echoed");
    // aioquic's own streams (opened right after the handshake) came back intact.
    let reverse = server.next_reverse(WAIT).await.unwrap();
    assert_eq!((reverse.ok, reverse.failed), (3, 0), "{}", server.stderr());

    session.close().await;
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert!(
        end.starts_with("SESSION-END app-close code=0 "),
        "a graceful application close, not an error or a timeout: {end}"
    );
    assert!(
        !server.stderr().contains("STREAM-ERROR"),
        "{}",
        server.stderr()
    );
    server.stop().await.unwrap();
}

/// Qymux promises that a stream is visible to the peer as soon as `open` returns;
/// quinn alone announces it only with its first data. aioquic must see the stream
/// before we write a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_stream_reaches_aioquic_before_any_data() {
    init_tracing();
    let Some(script) = aioquic_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let mut server = aioquic_server(&script, &f, &[]).await;
    let session = dial(
        &server.addr().to_string(),
        "localhost",
        pki.client_tls(),
        options(),
    )
    .await
    .unwrap();

    let mut stream = session.open().await.unwrap();
    let accepted = server.line_starting_with("ACCEPTED ", WAIT).await.unwrap();
    assert_eq!(
        accepted,
        format!("ACCEPTED {}", stream.stream_id()),
        "aioquic saw the stream we opened"
    );
    // The empty announcement added no byte: the echo is exactly what we send.
    tokio::time::timeout(WAIT, check_echo(&mut stream, 7, 100_000))
        .await
        .expect("echo finished");

    session.close().await;
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert!(end.starts_with("SESSION-END app-close code=0 "), "{end}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_other_than_qymux_is_refused() {
    init_tracing();
    let Some(script) = aioquic_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);

    // aioquic clients offering only "h3", or no ALPN at all (QUIC requires one) → Qymux
    // listener: refused in the handshake.
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let client = |alpn: &'static str| {
        let (script, addr, ca) = (script.clone(), addr.clone(), f.ca.clone());
        async move {
            let alpn = format!("--alpn={alpn}");
            let args = [
                "--connect",
                &addr,
                "--ca",
                &ca,
                "--streams",
                "1",
                "--bytes",
                "1000",
                "--timeout",
                "30s",
                &alpn,
            ];
            tokio::time::timeout(WAIT, AioquicPeer::client(&script, args))
                .await
                .expect("client finished")
                .unwrap()
        }
    };
    for alpn in ["h3", ""] {
        let out = client(alpn).await;
        assert!(out.handshake_failed(), "ALPN {alpn:?}: {out}");
        // QUIC CRYPTO_ERROR 0x100 + TLS alert 120 (no_application_protocol).
        assert!(
            out.stdout.contains("code=0x178"),
            "ALPN {alpn:?}: refused with no_application_protocol: {out}"
        );
    }
    // No session came out of them (accept hands out the next client's); the listener
    // still serves a qymux client.
    let accept = async {
        let session = listener.accept().await.unwrap();
        let _echo = echo_all(session.clone());
        session.closed().await
    };
    let (reason, out) = tokio::time::timeout(WAIT, async { tokio::join!(accept, client("qymux")) })
        .await
        .expect("second client finished");
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.result().map(|c| (c.ok, c.failed)),
        Some((1, 0)),
        "{out}"
    );
    assert!(reason.is_clean(), "{reason:?}");

    // Qymux dialer → aioquic server that speaks only "h3", or selects no ALPN at all: a
    // typed handshake error.
    for alpn in ["--alpn=h3", "--alpn="] {
        let server = aioquic_server(&script, &f, &[alpn]).await;
        match dial(
            &server.addr().to_string(),
            "localhost",
            pki.client_tls(),
            options(),
        )
        .await
        {
            Err(Error::Handshake(HandshakeError::AlpnMismatch)) => {}
            other => panic!("{alpn}: expected an ALPN mismatch, got {other:?}"),
        }
        server.stop().await.unwrap();
    }
}
