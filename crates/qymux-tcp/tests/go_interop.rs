//! Interop with an independent peer: Go `crypto/tls` + `hashicorp/yamux`
//! (`interop/go-peer`), in both roles, streams opened from both ends, single 16 MB
//! writes from the Go side (larger than the yamux crate's 1 MiB frame limit), and our
//! keep-alive pings. Then hashicorp's semantics at the edges: a Go server's GoAway(0)
//! while streams are in flight (they finish, new ones are refused), single 16 MiB writes
//! both ways with 32 MiB Go windows, and a double `shutdown` that must reach Go as one
//! FIN. And a session closed as superseded (the loser of an Auto race): the Go server
//! ends it on the unknown GoAway code, cleanly.
//!
//! Skips when Go or the yamux package is missing; fails instead with
//! `QYMUX_REQUIRE_PEERS=1`.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{Pki, options, payload, sha256};
use qymux_tcp::{Listener, Session, Stream, dial};
use qymux_testsupport::{GoPeer, TempDir, go_peer};
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{CloseReason, Error, HandshakeError, Stream as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

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

impl PemFiles {
    /// Starts the Go peer as a server on a free loopback port with this server
    /// certificate, and `extra` arguments.
    async fn go_server(&self, bin: &Path, extra: &[&str]) -> (GoPeer, SocketAddr) {
        let args = [
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &self.server_pem,
            "--key",
            &self.server_key,
        ];
        GoPeer::server(bin, args.iter().chain(extra))
            .await
            .expect("the Go peer starts")
    }
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
    let (mut server, addr) = f
        .go_server(&bin, &["--open", "3", "--bytes", MB16_ARG])
        .await;

    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), options())
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

/// An Auto dial's TCP attempt that lost the race to QUIC is closed with
/// `close_superseded`: GoAway with the Qymux code `0x71790001` instead of GoAway(normal).
/// hashicorp yamux knows only codes 0 to 2, so a Go server logs
/// `[ERR] yamux: received unexpected go away` and ends that session with the error
/// `unexpected go away received`: at once, without a hang or a panic. It keeps serving:
/// a second session from the same process, closed normally, still ends as `EOF`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_server_ends_a_superseded_session_cleanly() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = f.go_server(&bin, &[]).await;
    let addr = addr.to_string();

    // The losing attempt completed its handshake and carried a stream before it lost.
    let superseded = dial(&addr, "localhost", pki.client_tls(), options())
        .await
        .unwrap();
    verify_echo(&superseded, 21, 64 * 1024).await;
    within("close_superseded", superseded.close_superseded()).await;
    let reason = superseded.closed().await;
    assert!(matches!(reason, CloseReason::Local), "{reason:?}");
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert_eq!(
        end,
        "SESSION-END unexpected go away received",
        "{}",
        server.stderr()
    );
    // Go logs this before it ends the session, but on stderr, a pipe of its own that
    // may be read after stdout's SESSION-END.
    server
        .stderr_containing("[ERR] yamux: received unexpected go away", WAIT)
        .await
        .unwrap();

    // The same Go process serves the next session; a normal close is a plain EOF there.
    let next = dial(&addr, "localhost", pki.client_tls(), options())
        .await
        .unwrap();
    verify_echo(&next, 22, 64 * 1024).await;
    next.close().await;
    let end = server
        .line_starting_with("SESSION-END", WAIT)
        .await
        .unwrap();
    assert_eq!(end, "SESSION-END EOF", "{}", server.stderr());
    let stderr = server.stderr();
    assert!(
        !stderr.contains("panic") && !stderr.contains("STREAM-ERROR"),
        "{stderr}"
    );
    let status = server.stop().await.unwrap();
    assert!(status.success(), "go-peer exited with {status}: {stderr}");
}

/// Our keep-alive pings are answered by hashicorp yamux, and its answers never reach the
/// yamux crate (which would take them for a protocol violation): a session to a Go peer
/// with a 2 s idle timeout stays up through several idle timeouts without traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_answers_our_keep_alives() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = f.go_server(&bin, &[]).await;
    let mut short = options();
    short
        .idle_timeout(Duration::from_secs(2))
        .keep_alive_interval(Some(Duration::from_millis(500)));
    let session = dial(
        &addr.to_string(),
        "localhost",
        pki.client_tls(),
        short.clone(),
    )
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
    let (go, go_addr) = f.go_server(&bin, &["--ca", &f.ca]).await;
    match dial(
        &go_addr.to_string(),
        "localhost",
        pki.client_tls(),
        options(),
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
    let session = dial(&go_addr.to_string(), "localhost", tls, options())
        .await
        .unwrap();
    verify_echo(&session, 7, 100_000).await;
    session.close().await;
    go.stop().await.unwrap();
}

// ------------------------------------------------------------------ hashicorp's edges

/// A bound for one step of the tests below (a transfer, a line from Go).
const STEP: Duration = Duration::from_secs(60);
/// A 32 MiB yamux `MaxStreamWindowSize` for the Go side, as go-peer's `--max-window`.
const WINDOW_32M_ARG: &str = "33554432";

/// Awaits `fut`, failing the test with `what` if it takes longer than [`STEP`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {STEP:?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// The data of a stream go-peer opens (verify-open): splitmix64 seeded with the yamux
/// stream id, each output little-endian.
fn go_pattern(id: u64, len: usize) -> Vec<u8> {
    let mut state = id;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What go-peer (`--report`) received on the streams we opened: id → (bytes, SHA-256
/// in hex), from its `ECHOED <id> bytes=<n> sha256=<hex>` lines.
fn echoed(lines: &str) -> HashMap<u64, (u64, String)> {
    lines
        .lines()
        .filter_map(|line| {
            let mut fields = line.strip_prefix("ECHOED ")?.split_whitespace();
            let id = fields.next()?.parse().ok()?;
            let bytes = fields.next()?.strip_prefix("bytes=")?.parse().ok()?;
            let sum = fields.next()?.strip_prefix("sha256=")?.to_owned();
            Some((id, (bytes, sum)))
        })
        .collect()
}

/// Reads the Go server's stdout until a line starts with each of `prefixes` (in any
/// order), and returns all lines read, one per line.
async fn lines_until(server: &mut GoPeer, prefixes: &[&str]) -> String {
    let mut lines = String::new();
    let mut missing: Vec<&str> = prefixes.to_vec();
    while !missing.is_empty() {
        let line = tokio::time::timeout(STEP, server.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!("no {missing:?} line from go-peer within {STEP:?}; so far:\n{lines}")
            })
            .unwrap()
            .unwrap_or_else(|| panic!("go-peer exited before {missing:?}; so far:\n{lines}"));
        missing.retain(|prefix| !line.starts_with(prefix));
        lines.push_str(&line);
        lines.push('\n');
    }
    lines
}

/// A stream to the Go side in three phases: write `cuts[0]` bytes, then (when `stage`
/// reaches 1) up to `cuts[1]`, then (stage 2) the rest and FIN, while a task reads the
/// echo to EOF and publishes how much came back.
struct Phased {
    id: u64,
    data: Vec<u8>,
    echoed: watch::Receiver<usize>,
    writer: tokio::task::JoinHandle<std::io::Result<()>>,
    reader: tokio::task::JoinHandle<std::io::Result<Vec<u8>>>,
}

impl Phased {
    async fn open(
        session: &Session,
        seed: u64,
        len: usize,
        cuts: [usize; 2],
        stage: &watch::Receiver<u8>,
    ) -> Phased {
        let data = payload(seed, len);
        let stream = session.open().await.unwrap();
        let id = stream.id();
        let (mut r, mut w) = tokio::io::split(stream);
        let (progress, echoed) = watch::channel(0);
        let reader = tokio::spawn(async move {
            let mut got = Vec::with_capacity(len);
            let mut buf = vec![0; 64 * 1024];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    return Ok(got);
                }
                got.extend_from_slice(&buf[..n]);
                progress.send_replace(got.len());
            }
        });
        let mut stage = stage.clone();
        let to_send = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&to_send[..cuts[0]]).await?;
            let _ = stage.wait_for(|s| *s >= 1).await;
            w.write_all(&to_send[cuts[0]..cuts[1]]).await?;
            let _ = stage.wait_for(|s| *s >= 2).await;
            w.write_all(&to_send[cuts[1]..]).await?;
            w.shutdown().await
        });
        Phased {
            id,
            data,
            echoed,
            writer,
            reader,
        }
    }
}

/// A Go server sends GoAway(0) (hashicorp's `Session.GoAway`: no new streams) while four
/// streams are in the middle of 4 MiB echoes. They all finish with every byte; a new
/// `open` here fails with a typed error; the session ends cleanly when Go closes it after
/// the last stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_goaway_lets_streams_in_flight_finish() {
    const STREAMS: u64 = 4;
    const LEN: usize = 4 * 1024 * 1024;
    const CUTS: [usize; 2] = [1024 * 1024, 2 * 1024 * 1024];
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    // GoAway once the first phase of every stream is echoed (and nothing more was sent).
    let goaway_after = (STREAMS as usize * CUTS[0]).to_string();
    let (mut server, addr) = f
        .go_server(&bin, &["--report", "--goaway-after", &goaway_after])
        .await;
    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), options())
        .await
        .unwrap();

    let (stage, stage_rx) = watch::channel(0u8);
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        streams.push(Phased::open(&session, 300 + i, LEN, CUTS, &stage_rx).await);
    }
    // Go sends GoAway after echoing the first phase of all four streams, then says so
    // (GOAWAY-FAILED: hashicorp's GoAway returned an error; the frame may have gone out
    // all the same, as the session ended around it).
    let said = tokio::select! {
        line = server.line_starting_with("GOAWAY-", STEP) => line.unwrap(),
        reason = session.closed() => panic!(
            "the session ended ({reason:?}) before or as go-peer reported its GoAway ({:?}): \
             GoAway(0) must leave the session and its streams in flight alone",
            server.line_starting_with("GOAWAY-", Duration::from_secs(1)).await
        ),
    };
    assert_eq!(
        said,
        "GOAWAY-SENT",
        "go-peer's GoAway returned an error (the session ended while it was sent); the session here: {:?}",
        session.close_reason()
    );
    stage.send_replace(1);
    // An echo byte of the second phase left Go after its GoAway, so once one arrived
    // the GoAway has been read here too.
    let first_id = streams[0].id;
    let mut progress = streams[0].echoed.clone();
    let arrived = within(
        "the second phase's echo after GoAway",
        progress.wait_for(|n| *n > CUTS[0]),
    )
    .await
    .is_ok();
    if !arrived {
        let got = streams.remove(0).reader.await.unwrap();
        panic!(
            "stream {first_id} in flight ended after the peer's GoAway(0) instead of going on: {:?}",
            got.map(|d| d.len())
        );
    }
    assert!(
        session.close_reason().is_none(),
        "the session ended on GoAway(0): {:?}",
        session.close_reason()
    );

    // No new streams after the peer's GoAway.
    match within("open after GoAway", session.open()).await {
        Ok(stream) => panic!(
            "open after the peer's GoAway(0) succeeded (stream {})",
            stream.id()
        ),
        Err(err @ (Error::ClosedByPeer(_) | Error::LimitReached(_))) => {
            eprintln!("open after the peer's GoAway(0) failed with {err:?} ({err})");
        }
        Err(other) => {
            panic!("open after GoAway(0): expected ClosedByPeer or LimitReached, got {other:?}")
        }
    }
    assert!(
        session.close_reason().is_none(),
        "the refused open ended the session: {:?}",
        session.close_reason()
    );

    // The streams in flight finish, every byte intact.
    stage.send_replace(2);
    let mut sums = HashMap::new();
    for s in streams {
        within("a writer in flight", s.writer)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("writing stream {} after GoAway: {err}", s.id));
        let got = within("an echo in flight", s.reader)
            .await
            .unwrap()
            .unwrap_or_else(|err| panic!("reading stream {} after GoAway: {err}", s.id));
        assert_eq!(got.len(), LEN, "echo length of stream {}", s.id);
        assert_eq!(
            sha256(&got),
            sha256(&s.data),
            "echo content of stream {}",
            s.id
        );
        sums.insert(s.id, hex(&sha256(&s.data)));
    }

    // Go saw every byte, drained, and closed: a clean close by the peer here. The two
    // lines come in either order: our side ends the session once the peer's GoAway is in
    // and our last stream is released, which can reach Go (SESSION-END) before its drain
    // poll notices its last echo is over (DRAINED).
    let lines = lines_until(&mut server, &["DRAINED", "SESSION-END"]).await;
    let go_got = echoed(&lines);
    for (id, sum) in &sums {
        assert_eq!(
            go_got.get(id),
            Some(&(LEN as u64, sum.clone())),
            "what go-peer received on stream {id}:\n{lines}"
        );
    }
    assert!(lines.contains("DRAINED open=0"), "{lines}");
    let reason = within("the session's end", session.closed()).await;
    assert!(
        matches!(reason, CloseReason::Peer(_)),
        "expected a clean close by the peer, got {reason:?}"
    );
    // Go's reason: its own Close after the drain, or our close reaching it first.
    assert!(
        lines.contains("SESSION-END session shutdown\n") || lines.contains("SESSION-END EOF\n"),
        "{lines}"
    );
    assert!(
        !server.stderr().contains("STREAM-ERROR"),
        "{}",
        server.stderr()
    );
    server.stop().await.unwrap();
}

/// Reads a stream go-peer opened (16 MiB it wrote in one `Write`) to EOF, checks every
/// byte, and echoes it back in one `write_all`, then FIN; go-peer checks the echo.
async fn check_go_write_and_echo(mut stream: Stream, len: usize) {
    let id = stream.id();
    let mut got = Vec::with_capacity(len);
    within("Go's single write", stream.read_to_end(&mut got))
        .await
        .unwrap_or_else(|err| panic!("reading Go's stream {id}: {err}"));
    assert_eq!(got.len(), len, "length of Go's stream {id}");
    assert!(
        got == go_pattern(id, len),
        "content of Go's stream {id} differs"
    );
    within("our single write back", async {
        stream.write_all(&got).await.unwrap();
        stream.shutdown().await.unwrap();
    })
    .await;
}

/// Opens a stream, writes `len` bytes in one `write_all` and FIN, and checks the echo;
/// returns the id and the SHA-256 (hex) that go-peer must report.
async fn single_write_to_go(session: &Session, seed: u64, len: usize) -> (u64, String) {
    let data = payload(seed, len);
    let stream = session.open().await.unwrap();
    let id = stream.id();
    let (mut r, mut w) = tokio::io::split(stream);
    let (_, got) = within("a single 16 MiB write and its echo", async {
        tokio::join!(
            async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            },
            async {
                let mut got = Vec::new();
                r.read_to_end(&mut got).await.unwrap();
                got
            }
        )
    })
    .await;
    assert_eq!(got.len(), len, "echo length of stream {id}");
    assert_eq!(sha256(&got), sha256(&data), "echo content of stream {id}");
    (id, hex(&sha256(&data)))
}

/// A Go server with 32 MiB stream windows writes 16 MiB in one `Write` (frames as large
/// as the window we grant); we write 16 MiB in one `write_all`; both sides check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_16_mib_writes_with_large_windows_go_server() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = f
        .go_server(
            &bin,
            &[
                "--max-window",
                WINDOW_32M_ARG,
                "--report",
                "--open",
                "1",
                "--bytes",
                MB16_ARG,
            ],
        )
        .await;
    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), options())
        .await
        .unwrap();
    let ((), (id, sum)) = tokio::join!(
        async {
            let stream = within("Go's stream", session.accept()).await.unwrap();
            check_go_write_and_echo(stream, MB16).await;
        },
        single_write_to_go(&session, 400, MB16)
    );
    let lines = lines_until(&mut server, &["REVERSE", &format!("ECHOED {id} ")]).await;
    assert!(
        lines.contains("REVERSE ok=1 failed=0"),
        "{lines}{}",
        server.stderr()
    );
    assert_eq!(
        echoed(&lines).get(&id),
        Some(&(MB16 as u64, sum)),
        "{lines}"
    );
    session.close().await;
    let end = within(
        "SESSION-END",
        server.line_starting_with("SESSION-END", STEP),
    )
    .await
    .unwrap();
    assert_eq!(end, "SESSION-END EOF");
    assert!(
        !server.stderr().contains("STREAM-ERROR"),
        "{}",
        server.stderr()
    );
    server.stop().await.unwrap();
}

/// The same with a Go client (32 MiB windows) dialing a Qymux listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_16_mib_writes_with_large_windows_go_client() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let ours = async {
        let session = within("the Go client's session", listener.accept())
            .await
            .unwrap();
        let ((), ours) = tokio::join!(
            async {
                let stream = within("Go's stream", session.accept()).await.unwrap();
                check_go_write_and_echo(stream, MB16).await;
            },
            single_write_to_go(&session, 500, MB16)
        );
        (session, ours)
    };
    let client = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &f.ca,
            "--max-window",
            WINDOW_32M_ARG,
            "--report",
            "--streams",
            "1",
            "--bytes",
            MB16_ARG,
            "--expect-reverse",
            "1",
            "--timeout",
            "50s",
        ],
    );
    let ((session, (id, sum)), out) =
        within("the Go client's run", async { tokio::join!(ours, client) }).await;
    let out = out.unwrap();
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.result().map(|c| (c.ok, c.failed, c.reverse)),
        Some((1, 0, 1)),
        "{out}"
    );
    assert_eq!(
        echoed(&out.stdout).get(&id),
        Some(&(MB16 as u64, sum)),
        "{out}"
    );
    assert!(
        within("the session's end", session.closed())
            .await
            .is_clean()
    );
}

/// Opens a stream, writes 1 MiB, calls `shutdown` twice, and reads the echo (go-peer
/// `--hold-fin 1` holds its own FIN on it). Then a second stream round-trips, which
/// releases the first one's FIN; the first then reads EOF. Returns the first stream's
/// id and the SHA-256 (hex) go-peer must report for it, or what went wrong (the caller
/// shows it with go-peer's output).
async fn double_shutdown_then_probe(session: &Session) -> Result<(u64, String), String> {
    const LEN: usize = 1024 * 1024;
    let data = payload(600, LEN);
    let stream = within("open", session.open())
        .await
        .map_err(|err| format!("open: {err}"))?;
    let id = stream.id();
    let (mut r, mut w) = tokio::io::split(stream);
    let (shutdowns, echo) = within("the echo of the twice shut down stream", async {
        tokio::join!(
            async {
                w.write_all(&data).await?;
                let first = w.shutdown().await;
                let second = w.shutdown().await;
                Ok::<_, std::io::Error>((first, second))
            },
            async {
                let mut echo = vec![0; LEN];
                r.read_exact(&mut echo).await.map(|_| echo)
            }
        )
    })
    .await;
    let after = |what: &str, err: std::io::Error| {
        format!(
            "{what} of stream {id}: {err} (session: {:?})",
            session.close_reason()
        )
    };
    let (first, second) = shutdowns.map_err(|err| after("writing", err))?;
    first.map_err(|err| after("first shutdown", err))?;
    let echo = echo.map_err(|err| after("reading the echo", err))?;
    if sha256(&echo) != sha256(&data) {
        return Err(format!("the echo of stream {id} differs"));
    }

    // A second FIN would have reached Go while its side of the stream was still open
    // (it holds its FIN), where hashicorp ends the session with GoAway(protocol error).
    // A round trip on a new stream shows that the session is still healthy.
    let probe = async {
        let mut stream = session.open().await?;
        let sent = payload(601, 64 * 1024);
        stream.write_all(&sent).await?;
        stream.shutdown().await?;
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got == sent)
    };
    match within("a round trip after the double shutdown", probe).await {
        Ok(true) => {}
        Ok(false) => return Err("the probe stream's echo differs".into()),
        Err(err) => return Err(after("a new stream after the double shutdown", err)),
    }
    // Go's FIN on the first stream, released by the probe: EOF, nothing more.
    let mut rest = Vec::new();
    within(
        "Go's FIN on the twice shut down stream",
        r.read_to_end(&mut rest),
    )
    .await
    .map_err(|err| after("reading to EOF", err))?;
    if !rest.is_empty() {
        return Err(format!(
            "{} bytes after the echo on stream {id}",
            rest.len()
        ));
    }
    second.map_err(|err| after("second shutdown", err))?;
    Ok((id, hex(&sha256(&data))))
}

/// The lines of hashicorp's log (go-peer's stderr) that show a second FIN: one on a
/// half-closed stream (a protocol error), or one for a stream already closed both ways.
fn second_fins(stderr: &str) -> Vec<&str> {
    const FIN: u32 = 4;
    stderr
        .lines()
        .filter(|line| {
            line.contains("unexpected FIN")
                || (line.contains("frame for missing stream")
                    && line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("Flags:"))
                        .and_then(|f| f.parse::<u32>().ok())
                        .is_some_and(|flags| flags & FIN != 0))
        })
        .collect()
}

/// `shutdown` twice on a stream to a Go server: Go sees one FIN (a second one while its
/// side is open would be a protocol error for hashicorp), and the session stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_shutdown_is_one_fin_go_server() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let (mut server, addr) = f.go_server(&bin, &["--report", "--hold-fin", "1"]).await;
    let session = dial(&addr.to_string(), "localhost", pki.client_tls(), options())
        .await
        .unwrap();
    let (id, sum) = double_shutdown_then_probe(&session)
        .await
        .unwrap_or_else(|err| panic!("{err}; go-peer's stderr:\n{}", server.stderr()));
    let lines = lines_until(&mut server, &[&format!("ECHOED {id} ")]).await;
    assert_eq!(
        echoed(&lines).get(&id),
        Some(&(1024 * 1024, sum)),
        "{lines}"
    );
    assert!(
        session.close_reason().is_none(),
        "{:?}",
        session.close_reason()
    );
    session.close().await;
    let end = within(
        "SESSION-END",
        server.line_starting_with("SESSION-END", STEP),
    )
    .await
    .unwrap();
    assert_eq!(end, "SESSION-END EOF", "{}", server.stderr());
    let stderr = server.stderr();
    assert_eq!(second_fins(&stderr), Vec::<&str>::new(), "{stderr}");
    assert!(!stderr.contains("STREAM-ERROR"), "{stderr}");
    server.stop().await.unwrap();
}

/// `shutdown` twice on a stream to a Go client, as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn double_shutdown_is_one_fin_go_client() {
    let Some(bin) = go_peer() else { return };
    let pki = Pki::new();
    let f = write_pem(&pki);
    let listener = Listener::bind("127.0.0.1:0", pki.server_tls(), options())
        .await
        .unwrap();
    let addr = listener.local_addr().to_string();
    let ours = async {
        let session = within("the Go client's session", listener.accept())
            .await
            .unwrap();
        let first = double_shutdown_then_probe(&session).await;
        (session, first)
    };
    // The Go client opens nothing, echoes our two streams (holding its FIN on the
    // first until the second comes), then closes.
    let client = GoPeer::client(
        &bin,
        [
            "--connect",
            &addr,
            "--ca",
            &f.ca,
            "--report",
            "--hold-fin",
            "1",
            "--streams",
            "0",
            "--expect-reverse",
            "2",
            "--timeout",
            "50s",
        ],
    );
    let ((session, first), out) =
        within("the Go client's run", async { tokio::join!(ours, client) }).await;
    let out = out.unwrap();
    let (id, sum) = first.unwrap_or_else(|err| panic!("{err}\n{out}"));
    assert!(out.status.success(), "{out}");
    assert_eq!(
        out.result().map(|c| (c.ok, c.failed, c.reverse)),
        Some((0, 0, 2)),
        "{out}"
    );
    assert_eq!(
        echoed(&out.stdout).get(&id),
        Some(&(1024 * 1024, sum)),
        "{out}"
    );
    assert_eq!(second_fins(&out.stderr), Vec::<&str>::new(), "{out}");
    assert!(
        within("the session's end", session.closed())
            .await
            .is_clean()
    );
}
