//! Hostile input at the dual listener (QUIC and TCP on one port), while good sessions of
//! both kinds carry checksummed data beside it.
//!
//! Over a thousand malformed attempts of twelve kinds (TCP: random bytes, plaintext
//! HTTP, TLS with another ALPN, a ClientHello cut short, valid TLS then garbage, yamux
//! frames with a bad version, type, length or stream id, window-update overflow; UDP:
//! random datagrams, broken QUIC Initials), and a thousand connections that never finish
//! their handshake (TCP silent, TCP half a ClientHello, QUIC Initials never followed up).
//!
//! Each TCP attempt must end with the server closing the connection (EOF or reset), and
//! where the listener says why — its log of failed handshakes, the close reason of a
//! session it accepted, the GoAway it sent — that reason is checked. Afterwards the good
//! sessions lost nothing, new good clients of both kinds get in, and nothing panicked.
//! The smaller TCP-only suite in `qymux-tcp/tests/hostile.rs` covers the basics.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures::StreamExt;
use qymux_conformance::{Pki, payload, sha256};
use qymux_dialer::Listener;
use qymux_transport::{BoxSession, CloseReason, Error, Mode, Options, QuicRetry, Session};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Upper bound for "the server hung up" and "the listener logged it": far above every
/// timeout the listener has, so it only catches a hang, never a slow machine.
const HANG: Duration = Duration::from_secs(60);

/// The listener's handshake timeout; what ends the stalled connections.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections that never finish their handshake, held open all at once.
const STALLED_TCP_SILENT: usize = 400;
const STALLED_TCP_HALF_HELLO: usize = 400;
const STALLED_QUIC: usize = 200;
const STALLED: usize = STALLED_TCP_SILENT + STALLED_TCP_HALF_HELLO + STALLED_QUIC;

/// Malformed attempts in flight at once.
const CONCURRENCY: usize = 32;

/// The listener's options. `max_pending_handshakes` is well above the stalled handshakes
/// plus the malformed attempts in flight, so they never use up the slots a good client
/// needs (the test checks that no connection was refused); the handshake timeout then
/// frees each slot within seconds.
fn listener_options() -> Options {
    let mut o = Options::default();
    // Every attacker here shares the good clients' address, and each stalled attempt
    // must be seen to time out: this test is about the global bounds, so the per-source
    // cap, the first-flight deadline and Retry (tests/admission.rs of each backend) are
    // set out of its way.
    o.handshake_timeout(HANDSHAKE_TIMEOUT)
        .max_pending_handshakes(4 * (STALLED + CONCURRENCY))
        .max_pending_per_source(4 * (STALLED + CONCURRENCY))
        .first_flight_timeout(HANDSHAKE_TIMEOUT)
        .quic_retry(QuicRetry::Never)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .idle_timeout(Duration::from_secs(15));
    o
}

fn client_options() -> Options {
    let mut o = Options::default();
    o.connect_timeout(Duration::from_secs(30))
        .handshake_timeout(Duration::from_secs(30));
    o
}

// ---------------------------------------------------------------------------------------
// Panics anywhere in the process (tokio swallows them in spawned tasks).

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

// ---------------------------------------------------------------------------------------
// What the listener logs about failed handshakes, by peer address.

#[derive(Clone)]
struct ListenerLog {
    /// (QUIC?, peer address) -> the message of its failed handshake. (A UDP and a TCP
    /// client may have the same address.)
    failures: watch::Sender<HashMap<(bool, SocketAddr), String>>,
    /// Connections refused because too many handshakes were pending.
    refused: Arc<AtomicUsize>,
}

impl ListenerLog {
    fn install() -> ListenerLog {
        let log = ListenerLog {
            failures: watch::Sender::new(HashMap::new()),
            refused: Arc::new(AtomicUsize::new(0)),
        };
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("qymux_tcp", tracing::Level::DEBUG)
            .with_target("qymux_quic", tracing::Level::DEBUG);
        tracing_subscriber::registry()
            .with(tracing_subscriber::Layer::with_filter(log.clone(), targets))
            .init();
        log
    }

    /// Waits until the listener logged a failed handshake from `peer`, and returns it.
    async fn failure_of(&self, quic: bool, peer: SocketAddr) -> String {
        let mut rx = self.failures.subscribe();
        let key = (quic, peer);
        let waited = tokio::time::timeout(HANG, rx.wait_for(|m| m.contains_key(&key))).await;
        match waited {
            Ok(Ok(map)) => map[&key].clone(),
            _ => panic!("the listener never logged a failed handshake from {peer}"),
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    peer: Option<String>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "peer" => self.peer = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ListenerLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message.contains("too many handshakes") {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        let peer = fields.peer.and_then(|p| p.parse::<SocketAddr>().ok());
        if let (Some(peer), true) = (peer, fields.message.contains("handshake failed")) {
            let quic = fields.message.starts_with("QUIC");
            self.failures.send_modify(|m| {
                m.insert((quic, peer), fields.message);
            });
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server: echo every stream of every session, and note why each session ended.

#[derive(Clone)]
struct Server {
    addr: SocketAddr,
    /// Remote address -> why its session ended.
    ended: watch::Sender<HashMap<SocketAddr, CloseReason>>,
}

impl Server {
    fn start(listener: Arc<Listener>) -> (Server, tokio::task::JoinHandle<()>) {
        let server = Server {
            addr: listener.local_addr(),
            ended: watch::Sender::new(HashMap::new()),
        };
        let ended = server.ended.clone();
        let task = tokio::spawn(async move {
            while let Ok(session) = listener.accept().await {
                let ended = ended.clone();
                tokio::spawn(async move {
                    let echo = echo_all(session.clone());
                    let reason = session.closed().await;
                    echo.abort();
                    ended.send_modify(|m| {
                        m.insert(session.remote_addr(), reason);
                    });
                });
            }
        });
        (server, task)
    }

    /// Waits until the session whose peer is `peer` ended, and says why.
    async fn ended(&self, peer: SocketAddr) -> CloseReason {
        let mut rx = self.ended.subscribe();
        let waited = tokio::time::timeout(HANG, rx.wait_for(|m| m.contains_key(&peer))).await;
        match waited {
            Ok(Ok(map)) => map[&peer].clone(),
            _ => panic!("the server's session with {peer} never ended"),
        }
    }
}

fn echo_all(session: BoxSession) -> tokio::task::JoinHandle<()> {
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

// ---------------------------------------------------------------------------------------
// Good traffic: streams of checksummed data, over and over, until told to stop.

#[derive(Default)]
struct Traffic {
    streams: AtomicU64,
    bytes: AtomicU64,
}

/// Runs `workers` concurrent loops of open, write, echo, verify on `session` until `stop`.
fn good_traffic<S: Session + Clone>(
    session: S,
    seed: u64,
    workers: usize,
    stop: watch::Receiver<bool>,
    traffic: Arc<Traffic>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers as u64)
        .map(|w| {
            let session = session.clone();
            let mut stop = stop.clone();
            let traffic = traffic.clone();
            tokio::spawn(async move {
                let mut round = 0u64;
                while !*stop.borrow_and_update() {
                    let seed = seed * 1_000_000 + w * 10_000 + round;
                    let len = 1 + (seed.wrapping_mul(0x9E37_79B9) % (192 * 1024)) as usize;
                    round_trip(&session, &payload(seed, len)).await;
                    traffic.streams.fetch_add(1, Ordering::Relaxed);
                    traffic.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    round += 1;
                }
            })
        })
        .collect()
}

/// Sends `data` on a new stream and checks the echo (by checksum).
async fn round_trip<S: Session>(session: &S, data: &[u8]) {
    let mut stream = session.open().await.expect("a good session opens streams");
    let (mut r, mut w) = tokio::io::split(&mut stream);
    let (_, got) = tokio::join!(
        async {
            w.write_all(data).await.expect("good write");
            w.shutdown().await.expect("good shutdown");
        },
        async {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("good read");
            got
        }
    );
    assert_eq!(got.len(), data.len(), "echo length");
    assert_eq!(sha256(&got), sha256(data), "echo checksum");
}

// ---------------------------------------------------------------------------------------
// Malformed attempts.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    RandomBytes,
    PlainHttp,
    OtherAlpn,
    CutClientHello,
    TlsThenGarbage,
    YamuxBadVersion,
    YamuxBadType,
    YamuxBadLength,
    YamuxBadStreamId,
    WindowOverflow,
    RandomDatagram,
    BrokenQuicInitial,
}

/// Attempts per kind (1,350 in all).
const ATTEMPTS: &[(Kind, usize)] = &[
    (Kind::RandomBytes, 150),
    (Kind::PlainHttp, 100),
    (Kind::OtherAlpn, 100),
    (Kind::CutClientHello, 100),
    (Kind::TlsThenGarbage, 100),
    (Kind::YamuxBadVersion, 80),
    (Kind::YamuxBadType, 80),
    (Kind::YamuxBadLength, 80),
    (Kind::YamuxBadStreamId, 80),
    (Kind::WindowOverflow, 80),
    (Kind::RandomDatagram, 200),
    (Kind::BrokenQuicInitial, 200),
];

struct Ctx {
    pki: Pki,
    server: Server,
    log: ListenerLog,
    /// Real QUIC Initials (from qymux dials to a trap), to break.
    initials: Vec<Vec<u8>>,
    /// Version Negotiation packets the QUIC listener sent back to broken Initials.
    version_negotiations: AtomicUsize,
}

/// How the server ended a TCP connection.
#[derive(Debug)]
enum HungUp {
    Eof,
    Reset,
}

/// Reads until the server closes the connection; returns what was read and how it ended.
async fn server_hangs_up<R: AsyncRead + Unpin>(r: &mut R, what: &str) -> (Vec<u8>, HungUp) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let waited = tokio::time::timeout(HANG, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return HungUp::Eof,
                Ok(n) => got.extend_from_slice(&buf[..n]), // an alert or a GoAway, say
                Err(_) => return HungUp::Reset,
            }
        }
    })
    .await;
    match waited {
        Ok(how) => (got, how),
        Err(_) => panic!("the server kept the {what} connection open"),
    }
}

/// A ClientHello as a real rustls client writes it.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(pki.client_tls(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A client config like the good one, offering `alpn` instead of `qymux`.
fn client_tls_with_alpn(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = (*pki.client_tls()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

const TYPE_DATA: u8 = 0;
const TYPE_WINDOW_UPDATE: u8 = 1;
const SYN: u16 = 1;

fn frame(version: u8, kind: u8, flags: u16, stream: u32, length: u32) -> Vec<u8> {
    let mut h = vec![version, kind];
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&stream.to_be_bytes());
    h.extend_from_slice(&length.to_be_bytes());
    h
}

/// The bytes a hostile client sends after a valid TLS handshake, for the kinds that
/// have one.
fn yamux_garbage(kind: Kind, rng: &mut StdRng) -> Vec<u8> {
    let odd = |rng: &mut StdRng| rng.random_range(0..1u32 << 30) * 2 + 1;
    match kind {
        Kind::TlsThenGarbage => {
            let mut bytes = payload(rng.random(), rng.random_range(12..4096));
            bytes[0] = rng.random_range(1..=255); // not yamux version 0
            bytes
        }
        Kind::YamuxBadVersion => frame(
            rng.random_range(1..=255),
            rng.random_range(0..4),
            SYN,
            odd(rng),
            0,
        ),
        Kind::YamuxBadType => frame(0, rng.random_range(4..=255), SYN, odd(rng), 0),
        Kind::YamuxBadLength => {
            // A stream's first DATA frame larger than the window the protocol grants it
            // (256 KiB), body and all; half of them beyond the 1 MiB frame limit, which
            // the adapter splits.
            let len = if rng.random() {
                rng.random_range(256 * 1024 + 1..=1024 * 1024)
            } else {
                rng.random_range(1024 * 1024 + 1..=3 * 1024 * 1024)
            };
            let mut bytes = frame(0, TYPE_DATA, SYN, odd(rng), len);
            bytes.extend_from_slice(&payload(rng.random(), len as usize));
            bytes
        }
        Kind::YamuxBadStreamId => match rng.random_range(0..3) {
            // The dialer is the yamux client: its stream ids are odd.
            0 => frame(
                0,
                TYPE_WINDOW_UPDATE,
                SYN,
                rng.random_range(1..1u32 << 30) * 2,
                0,
            ),
            // Stream id 0 is the session itself.
            1 => frame(0, TYPE_DATA, SYN, 0, 0),
            // The same stream opened twice.
            _ => {
                let id = odd(rng);
                let mut bytes = frame(0, TYPE_WINDOW_UPDATE, SYN, id, 0);
                bytes.extend(frame(0, TYPE_DATA, SYN, id, 0));
                bytes
            }
        },
        Kind::WindowOverflow => {
            let id = odd(rng);
            if rng.random() {
                // Opening a stream with a credit that overflows the window.
                frame(
                    0,
                    TYPE_WINDOW_UPDATE,
                    SYN,
                    id,
                    u32::MAX - rng.random_range(0..1000),
                )
            } else {
                // Opening it, then a credit that overflows it.
                let mut bytes = frame(0, TYPE_WINDOW_UPDATE, SYN, id, 0);
                bytes.extend(frame(0, TYPE_WINDOW_UPDATE, 0, id, u32::MAX - 1000));
                bytes
            }
        }
        other => unreachable!("{other:?} has no yamux garbage"),
    }
}

/// Whether the yamux frames in `bytes` include a GoAway carrying a protocol error
/// (code 1). (The server may send a ping first.)
fn has_go_away_protocol_error(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 12 {
        let length = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if bytes[1] == 3 && length == 1 {
            return true;
        }
        let body = if bytes[1] == TYPE_DATA {
            length as usize
        } else {
            0
        };
        bytes = &bytes[(12 + body).min(bytes.len())..];
    }
    false
}

async fn connect(ctx: &Ctx) -> (TcpStream, SocketAddr) {
    let tcp = TcpStream::connect(ctx.server.addr)
        .await
        .expect("TCP connect");
    let local = tcp.local_addr().unwrap();
    (tcp, local)
}

/// Runs one malformed attempt and checks how the listener dealt with it.
async fn attempt(ctx: Arc<Ctx>, kind: Kind, seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let what = format!("{kind:?} #{seed}");
    match kind {
        Kind::RandomBytes | Kind::PlainHttp | Kind::CutClientHello => {
            let (mut tcp, local) = connect(&ctx).await;
            let bytes = match kind {
                Kind::RandomBytes => payload(rng.random(), rng.random_range(1..16 * 1024)),
                Kind::PlainHttp => http_request(&mut rng),
                _ => {
                    let hello = client_hello(&ctx.pki);
                    hello[..rng.random_range(1..hello.len())].to_vec()
                }
            };
            // Short random writes would leave the server waiting for more until its
            // handshake timeout; finishing the write side ends them sooner. Half of
            // them keep it open anyway.
            let _ = tcp.write_all(&bytes).await;
            if kind == Kind::CutClientHello || rng.random() {
                let _ = tcp.shutdown().await;
            }
            server_hangs_up(&mut tcp, &what).await;
            let logged = ctx.log.failure_of(false, local).await;
            let expected: &[&str] = match kind {
                Kind::PlainHttp => &["not speaking TLS"],
                Kind::CutClientHello => &["closed during the handshake", "TLS"],
                _ => &["handshake"],
            };
            check(expected.iter().any(|e| logged.contains(e)), &what, &logged)
        }
        Kind::OtherAlpn => {
            let (tcp, local) = connect(&ctx).await;
            let offers: &[&[&[u8]]] = &[&[b"h2"], &[b"http/1.1"], &[b"h2", b"qymux2"], &[]];
            let offer = offers[rng.random_range(0..offers.len())];
            let tls = client_tls_with_alpn(&ctx.pki, offer);
            let connected = tokio_rustls::TlsConnector::from(tls)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await;
            match connected {
                // Offering other protocols: the server refuses in the handshake.
                Err(e) => {
                    let alert = e.to_string();
                    check(
                        alert.contains("NoApplicationProtocol"),
                        &what,
                        &format!("client saw {alert}"),
                    )?;
                }
                // Offering none: TLS completes, then the server hangs up.
                Ok(mut tls) => {
                    check(offer.is_empty(), &what, "the server accepted another ALPN")?;
                    server_hangs_up(&mut tls, &what).await;
                }
            }
            let logged = ctx.log.failure_of(false, local).await;
            check(logged.contains("ALPN"), &what, &logged)
        }
        Kind::TlsThenGarbage
        | Kind::YamuxBadVersion
        | Kind::YamuxBadType
        | Kind::YamuxBadLength
        | Kind::YamuxBadStreamId
        | Kind::WindowOverflow => {
            let (tcp, local) = connect(&ctx).await;
            let mut tls = tokio_rustls::TlsConnector::from(ctx.pki.client_tls())
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| format!("{what}: TLS handshake failed: {e}"))?;
            let garbage = yamux_garbage(kind, &mut rng);
            // The server may hang up before it read everything.
            let _ = tls.write_all(&garbage).await;
            let _ = tls.flush().await;
            let (got, _) = server_hangs_up(&mut tls, &what).await;
            let reason = ctx.server.ended(local).await;
            let protocol =
                matches!(&reason, CloseReason::Failed(Error::Protocol(m)) if m.contains("yamux"));
            check(protocol, &what, &format!("session ended with {reason:?}"))?;
            if matches!(
                kind,
                Kind::YamuxBadLength | Kind::YamuxBadStreamId | Kind::WindowOverflow
            ) {
                // A frame the yamux crate could decode: it answers with GoAway
                // (protocol error) before hanging up.
                check(
                    has_go_away_protocol_error(&got),
                    &what,
                    &format!(
                        "read {:02x?} instead of a GoAway",
                        &got[..got.len().min(16)]
                    ),
                )?;
            }
            Ok(())
        }
        Kind::RandomDatagram => {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let len = rng.random_range(1..=1500);
            let mut bytes = payload(rng.random(), len);
            if rng.random() {
                // Looks like a QUIC long header, at least in its first bit.
                bytes[0] |= 0x80;
            }
            udp.send_to(&bytes, ctx.server.addr)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
        Kind::BrokenQuicInitial => {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut packet = ctx.initials[seed as usize % ctx.initials.len()].clone();
            let unknown_version = match rng.random_range(0..5) {
                0 => {
                    packet.truncate(rng.random_range(1..packet.len()));
                    false
                }
                1 => {
                    // Corrupt the protected payload: decryption fails.
                    for _ in 0..rng.random_range(1..16) {
                        let at = rng.random_range(20..packet.len());
                        packet[at] ^= rng.random_range(1..=255);
                    }
                    false
                }
                2 => {
                    // A version nobody speaks.
                    packet[1..5]
                        .copy_from_slice(&rng.random_range(2u32..0xff00_0000).to_be_bytes());
                    true
                }
                3 => {
                    // A connection id length beyond the maximum (20).
                    packet[5] = rng.random_range(21..=255);
                    false
                }
                _ => {
                    // Random header bits (form bit kept), random payload.
                    packet[0] = 0x80 | rng.random_range(0..0x80);
                    let tail = payload(rng.random(), packet.len() - 40);
                    packet[40..].copy_from_slice(&tail);
                    false
                }
            };
            udp.send_to(&packet, ctx.server.addr)
                .await
                .map_err(|e| e.to_string())?;
            if unknown_version {
                // The listener answers a long-enough Initial of an unknown version with
                // Version Negotiation (version 0), and nothing more.
                let mut buf = [0u8; 1500];
                let answer = tokio::time::timeout(HANG, udp.recv(&mut buf)).await;
                match answer {
                    Ok(Ok(n)) if n >= 5 && buf[1..5] == [0, 0, 0, 0] => {
                        ctx.version_negotiations.fetch_add(1, Ordering::Relaxed);
                    }
                    other => return Err(format!("{what}: no Version Negotiation: {other:?}")),
                }
            }
            Ok(())
        }
    }
}

fn http_request(rng: &mut StdRng) -> Vec<u8> {
    let requests: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET /\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
    ];
    requests[rng.random_range(0..requests.len())].to_vec()
}

fn check(ok: bool, what: &str, detail: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {detail}"))
    }
}

/// Captures `n` real QUIC Initials: qymux dials a UDP socket that never answers.
async fn capture_initials(pki: &Pki, n: usize) -> Vec<Vec<u8>> {
    let trap = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let trap_addr = trap.local_addr().unwrap().to_string();
    let mut dials = Vec::new();
    for _ in 0..n {
        let (addr, tls) = (trap_addr.clone(), pki.client_tls());
        dials.push(tokio::spawn(async move {
            let _ = qymux_quic::dial(&addr, "localhost", tls, client_options()).await;
        }));
    }
    // The first datagram of each dial (retransmissions come from the same port).
    let mut seen = HashMap::new();
    let mut buf = [0u8; 2048];
    while seen.len() < n {
        let (len, from) = tokio::time::timeout(HANG, trap.recv_from(&mut buf))
            .await
            .expect("qymux dials send Initials")
            .unwrap();
        seen.entry(from).or_insert_with(|| buf[..len].to_vec());
    }
    for dial in dials {
        dial.abort();
    }
    let initials: Vec<Vec<u8>> = seen.into_values().collect();
    for i in &initials {
        assert!(i.len() >= 1200 && i[0] & 0xf0 == 0xc0, "a QUIC v1 Initial");
    }
    initials
}

// ---------------------------------------------------------------------------------------
// Connections that never finish their handshake.

enum Stalled {
    Tcp(TcpStream, SocketAddr),
    Quic(UdpSocket, SocketAddr),
}

async fn stall(ctx: &Ctx) -> Vec<Stalled> {
    let hello = client_hello(&ctx.pki);
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED_TCP_SILENT + STALLED_TCP_HALF_HELLO {
        let (mut tcp, local) = connect(ctx).await;
        if i >= STALLED_TCP_SILENT {
            tcp.write_all(&hello[..hello.len() / 2]).await.unwrap();
        }
        stalled.push(Stalled::Tcp(tcp, local));
    }
    for initial in ctx.initials.iter().take(STALLED_QUIC) {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.send_to(initial, ctx.server.addr).await.unwrap();
        let local = udp.local_addr().unwrap();
        stalled.push(Stalled::Quic(udp, local));
    }
    stalled
}

/// Waits until the listener gave up on a stalled connection, and checks why.
async fn stalled_ends(ctx: Arc<Ctx>, stalled: Stalled) -> Result<(), String> {
    match stalled {
        Stalled::Tcp(mut tcp, local) => {
            server_hangs_up(&mut tcp, "stalled TCP").await;
            let logged = ctx.log.failure_of(false, local).await;
            check(logged.contains("timed out"), "stalled TCP", &logged)
        }
        Stalled::Quic(udp, local) => {
            // The listener answered the Initial (so a handshake was in progress) ...
            let mut buf = [0u8; 2048];
            let answered = tokio::time::timeout(HANG, udp.recv(&mut buf)).await;
            check(
                matches!(answered, Ok(Ok(n)) if n > 0),
                "stalled QUIC",
                "no answer to a valid Initial",
            )?;
            // ... and gave up on it.
            let logged = ctx.log.failure_of(true, local).await;
            check(logged.contains("timed out"), "stalled QUIC", &logged)
        }
    }
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_at_the_dual_listener_harms_no_good_session() {
    count_panics();
    let log = ListenerLog::install();
    let pki = Pki::new();
    let listener = Arc::new(
        Listener::bind(
            "127.0.0.1:0",
            pki.server_tls(),
            listener_options(),
            Mode::Auto,
        )
        .await
        .unwrap(),
    );
    let (server, server_task) = Server::start(listener.clone());
    let addr = server.addr.to_string();

    // Good sessions of both kinds, busy from the start to the end.
    let good_tcp = qymux_tcp::dial(&addr, "localhost", pki.client_tls(), client_options())
        .await
        .unwrap();
    let good_quic = qymux_quic::dial(&addr, "localhost", pki.client_tls(), client_options())
        .await
        .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let tcp_traffic = Arc::new(Traffic::default());
    let quic_traffic = Arc::new(Traffic::default());
    let mut workers = good_traffic(good_tcp.clone(), 1, 3, stop_rx.clone(), tcp_traffic.clone());
    workers.extend(good_traffic(
        good_quic.clone(),
        2,
        3,
        stop_rx,
        quic_traffic.clone(),
    ));

    let initials = capture_initials(&pki, STALLED_QUIC).await;
    let ctx = Arc::new(Ctx {
        pki,
        server,
        log: log.clone(),
        initials,
        version_negotiations: AtomicUsize::new(0),
    });

    // A thousand handshakes that never finish, all pending at once ...
    let stalled = stall(&ctx).await;
    // ... and new good clients of both kinds still get in meanwhile.
    {
        let tcp = qymux_tcp::dial(&addr, "localhost", ctx.pki.client_tls(), client_options())
            .await
            .expect("a good TCP client gets in beside the stalled handshakes");
        round_trip(&tcp, &payload(10, 100_000)).await;
        let quic = qymux_quic::dial(&addr, "localhost", ctx.pki.client_tls(), client_options())
            .await
            .expect("a good QUIC client gets in beside the stalled handshakes");
        round_trip(&quic, &payload(11, 100_000)).await;
        tcp.close().await;
        quic.close().await;
    }

    // The malformed attempts, many at once, while the stalled ones wait for their end.
    let mut jobs = Vec::new();
    let mut seed = 0u64;
    for &(kind, n) in ATTEMPTS {
        for _ in 0..n {
            jobs.push((kind, seed));
            seed += 1;
        }
    }
    let attempts = jobs.len();
    let malformed = futures::stream::iter(jobs)
        .map(|(kind, seed)| tokio::spawn(attempt(ctx.clone(), kind, seed)))
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    let stalled_ends = futures::future::join_all(
        stalled
            .into_iter()
            .map(|s| tokio::spawn(stalled_ends(ctx.clone(), s))),
    );
    let (malformed, stalled_ended) = tokio::join!(malformed, stalled_ends);
    let mut failures = Vec::new();
    for result in malformed.into_iter().chain(stalled_ended) {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e),
            Err(join) => failures.push(format!("an attempt panicked: {join}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} attempts went wrong, e.g.:\n{}",
        failures.len(),
        attempts + STALLED,
        {
            // One example of each way it went wrong.
            let mut seen = std::collections::BTreeMap::new();
            for f in &failures {
                let kind = f.split(' ').next().unwrap_or_default();
                seen.entry(kind).or_insert(f.as_str());
            }
            seen.into_values().collect::<Vec<_>>().join("\n")
        }
    );

    // The good sessions lost nothing and are still fine.
    stop.send_replace(true);
    for worker in workers {
        worker.await.expect("good traffic never fails");
    }
    round_trip(&good_tcp, &payload(20, 1 << 20)).await;
    round_trip(&good_quic, &payload(21, 1 << 20)).await;
    assert!(good_tcp.close_reason().is_none());
    assert!(good_quic.close_reason().is_none());
    let (tcp_streams, quic_streams) = (
        tcp_traffic.streams.load(Ordering::Relaxed),
        quic_traffic.streams.load(Ordering::Relaxed),
    );
    assert!(tcp_streams > 0 && quic_streams > 0);

    // The listener still serves new good clients of each kind.
    let tcp = qymux_tcp::dial(&addr, "localhost", ctx.pki.client_tls(), client_options())
        .await
        .unwrap();
    round_trip(&tcp, &payload(30, 300_000)).await;
    let quic = qymux_quic::dial(&addr, "localhost", ctx.pki.client_tls(), client_options())
        .await
        .unwrap();
    round_trip(&quic, &payload(31, 300_000)).await;

    assert_eq!(
        log.refused.load(Ordering::SeqCst),
        0,
        "no connection was refused for want of a handshake slot"
    );
    assert!(!server_task.is_finished(), "the listener still accepts");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
    eprintln!(
        "hostile: {attempts} malformed attempts ({}), {STALLED} stalled handshakes; \
         {} Version Negotiation answers; good TCP {tcp_streams} streams / {} bytes, \
         good QUIC {quic_streams} streams / {} bytes, all verified",
        ATTEMPTS
            .iter()
            .map(|(k, n)| format!("{k:?} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        ctx.version_negotiations.load(Ordering::Relaxed),
        tcp_traffic.bytes.load(Ordering::Relaxed),
        quic_traffic.bytes.load(Ordering::Relaxed),
    );
}
