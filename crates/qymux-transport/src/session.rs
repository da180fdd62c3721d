//! The traits every backend implements: [`Session`], [`Stream`] and [`Listener`].

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::error::{Error, Result};
use crate::escape::PeerText;
use crate::incoming::Incoming;

/// The transport a session runs on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// QUIC v1 over UDP; one Qymux stream is one bidirectional QUIC stream.
    Quic,
    /// TLS over TCP, multiplexed with yamux.
    Tcp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Quic => "quic",
            Protocol::Tcp => "tcp",
        })
    }
}

/// Which transports a dialer may use and a listener serves.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Prefer QUIC, fall back to TCP where UDP does not get through (the default).
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Auto => "auto",
            Mode::Quic => "quic",
            Mode::Tcp => "tcp",
        })
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Mode::Auto),
            "quic" => Ok(Mode::Quic),
            "tcp" => Ok(Mode::Tcp),
            other => Err(Error::Config(format!(
                "unknown mode {other:?}: expected auto, quic or tcp"
            ))),
        }
    }
}

/// How a peer's certificate was checked, which says what [`PeerIdentity::chain`] holds.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verification {
    /// webpki built a path from the peer's certificate to a configured trust anchor (a
    /// CA, the webpki or the system roots), checking signatures, validity dates, key
    /// usage and, where CRLs were configured, revocation. The chain is that path.
    Path,
    /// The peer's certificate matched a pinned SHA-256 fingerprint. Nothing but the
    /// fingerprint (and the handshake signature) was checked; the chain is the leaf alone.
    Pinned,
    /// A verifier that Qymux did not build (a rustls config made elsewhere) accepted the
    /// peer; what it checked is unknown to Qymux. The chain is the leaf alone.
    Custom,
    /// Nothing was checked (`qymux_tls::dangerous`). The chain is the leaf alone.
    Unverified,
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verification::Path => "verified path",
            Verification::Pinned => "pinned",
            Verification::Custom => "custom verifier",
            Verification::Unverified => "NOT verified",
        })
    }
}

/// The names a peer's (end-entity) certificate carries: the subject's common names and
/// the DNS and IP address subject alternative names.
///
/// The names are whatever the certificate says; they are trustworthy as far as the
/// certificate was verified (see [`PeerIdentity::verification`]). Peer-controlled text:
/// escape it before printing ([`crate::PeerText`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertificateNames {
    /// The subject's common names (`CN=`), usually one.
    pub common_names: Vec<String>,
    /// The DNS names of the subject alternative name extension.
    pub dns_names: Vec<String>,
    /// The IP addresses of the subject alternative name extension.
    pub ip_addresses: Vec<IpAddr>,
}

/// Who the peer is, as far as it was verified: with mTLS, the client's certificate (on
/// the listener); on the dialer, the server's.
///
/// It holds only what was checked. When webpki verified the peer against trust anchors,
/// [`chain`](Self::chain) is the path it built, end-entity certificate first, then the
/// intermediates that path went through; a certificate the peer sent that is not on
/// that path (an unrelated one it appended) is left out, and the trust anchor itself is
/// not included. When the peer was pinned (or not verified at all) the chain is the
/// leaf alone, and [`verification`](Self::verification) says so.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    chain: Arc<[CertificateDer<'static>]>,
    verification: Verification,
    names: Arc<CertificateNames>,
}

impl PeerIdentity {
    /// An identity from what a verifier checked: `chain` is the verified path, end-entity
    /// certificate first, and `names` the end-entity certificate's names. Unless
    /// `verification` is [`Verification::Path`], only the end-entity certificate is kept.
    /// Returns `None` for an empty chain.
    ///
    /// Backends get identities from `qymux_tls`, which builds the path; this constructor
    /// is for code that verified a peer itself.
    pub fn from_verified(
        mut chain: Vec<CertificateDer<'static>>,
        verification: Verification,
        names: CertificateNames,
    ) -> Option<Self> {
        if chain.is_empty() {
            return None;
        }
        if verification != Verification::Path {
            chain.truncate(1);
        }
        Some(Self {
            chain: chain.into(),
            verification,
            names: Arc::new(names),
        })
    }

    /// The peer's own (end-entity) certificate, DER encoded.
    pub fn end_entity(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The verified chain, end-entity first: the path webpki built (without the trust
    /// anchor), or the leaf alone when pinned. Certificates the peer sent that are not on
    /// the path are not here.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// How the peer was checked.
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// Whether the peer was accepted by a pinned fingerprint (the chain is the leaf alone).
    pub fn is_pinned(&self) -> bool {
        self.verification == Verification::Pinned
    }

    /// All the names of the end-entity certificate.
    pub fn names(&self) -> &CertificateNames {
        &self.names
    }

    /// The subject's common names (`CN=`) of the end-entity certificate.
    pub fn common_names(&self) -> &[String] {
        &self.names.common_names
    }

    /// The DNS subject alternative names of the end-entity certificate.
    pub fn dns_names(&self) -> &[String] {
        &self.names.dns_names
    }

    /// The IP address subject alternative names of the end-entity certificate.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.names.ip_addresses
    }

    /// Whether `name` is one of the certificate's names: a common name (exact), a DNS
    /// name (ASCII case-insensitive, no wildcard expansion) or an IP address (parsed).
    pub fn has_name(&self, name: &str) -> bool {
        if let Ok(ip) = name.parse::<IpAddr>()
            && self.names.ip_addresses.contains(&ip)
        {
            return true;
        }
        self.names.common_names.iter().any(|cn| cn == name)
            || self
                .names
                .dns_names
                .iter()
                .any(|dns| dns.eq_ignore_ascii_case(name))
    }
}

impl fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = |names: &[String]| -> Vec<String> {
            names.iter().map(|n| crate::escape_peer_text(n)).collect()
        };
        f.debug_struct("PeerIdentity")
            .field("verification", &self.verification)
            .field("certificates", &self.chain.len())
            .field("common_names", &escaped(&self.names.common_names))
            .field("dns_names", &escaped(&self.names.dns_names))
            .field("ip_addresses", &self.names.ip_addresses)
            .finish()
    }
}

/// Why a session ended.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// This side called [`Session::close`].
    Local,
    /// The peer closed the session cleanly.
    Peer(Option<String>),
    /// The session failed: connection lost, dead peer, protocol violation.
    Failed(Error),
}

impl CloseReason {
    /// The error that operations on the closed session report.
    pub fn to_error(&self) -> Error {
        match self {
            CloseReason::Local => Error::Closed,
            CloseReason::Peer(reason) => Error::ClosedByPeer(reason.clone()),
            CloseReason::Failed(err) => err.clone(),
        }
    }

    /// Whether the session ended cleanly (closed by either side on purpose).
    pub fn is_clean(&self) -> bool {
        !matches!(self, CloseReason::Failed(_))
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Peer(None) => f.write_str("closed by peer"),
            // The peer chose the reason: escaped, so it cannot forge log lines.
            CloseReason::Peer(Some(r)) => write!(f, "closed by peer: {}", PeerText(r)),
            CloseReason::Failed(e) => write!(f, "failed: {}", e.report()),
        }
    }
}

/// One bidirectional byte stream of a session.
///
/// Read and write with tokio's [`AsyncRead`] / [`AsyncWrite`]. `shutdown` (from
/// [`tokio::io::AsyncWriteExt::shutdown`]) finishes this side: the peer reads EOF and can
/// still write back. A read returns EOF only when the peer finished its side; a reset
/// stream or a lost session is an error ([`Error::StreamReset`], or the session's
/// [`CloseReason`]), never a silent EOF.
///
/// Dropping a stream that is not finished in both directions aborts it, as does
/// [`Stream::abort`].
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The stream's id on the wire (yamux stream id, QUIC stream id).
    fn id(&self) -> u64;

    /// Aborts the stream in both directions: the peer's reads and writes fail with
    /// [`Error::StreamReset`]. Data not yet delivered may be discarded.
    fn abort(&mut self);
}

/// What a session has carried so far: [`Session::stats`].
///
/// Bytes are stream payload (what applications wrote and read, without framing, TLS or
/// QUIC overhead); streams count both those finished and those still open.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStats {
    /// The transport.
    pub protocol: Protocol,
    /// The latest round-trip estimate: yamux pings over TCP (`None` until one was
    /// answered), quinn's smoothed RTT over QUIC.
    pub rtt: Option<Duration>,
    /// Stream bytes sent to the peer.
    pub bytes_sent: u64,
    /// Stream bytes received from the peer.
    pub bytes_received: u64,
    /// Streams this side opened.
    pub streams_opened: u64,
    /// Streams the peer opened that this side took (accepted or queued for `accept`).
    pub streams_accepted: u64,
    /// Streams open now, in both directions.
    pub open_streams: usize,
}

impl SessionStats {
    /// Stats with every count zero.
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            rtt: None,
            bytes_sent: 0,
            bytes_received: 0,
            streams_opened: 0,
            streams_accepted: 0,
            open_streams: 0,
        }
    }
}

/// A number for each session of this process, counting from 1: the `id` of the session's
/// `qymux_session` tracing span.
pub fn next_session_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A multiplexed, encrypted connection between a dialer and a listener.
///
/// Handles are cheap to clone and every method takes `&self`, so one session can be used
/// from many tasks at once. Either side may open streams.
pub trait Session: Clone + Send + Sync + 'static {
    /// The stream type this session hands out.
    type Stream: Stream;

    /// Opens a stream. The peer's [`accept`](Session::accept) sees it as soon as this
    /// returns, before any data is written.
    fn open(&self) -> impl Future<Output = Result<Self::Stream>> + Send;

    /// Waits for the next stream the peer opens. Fails with the session's close reason
    /// once the session has ended.
    fn accept(&self) -> impl Future<Output = Result<Self::Stream>> + Send;

    /// The streams the peer opens, as a [`futures::Stream`] that ends with the session:
    /// `Ok(stream)` items in the order the peer opened them, then one `Err` with the
    /// session's close reason (as [`CloseReason::to_error`] gives it), then `None`. See
    /// [`Incoming`].
    ///
    /// It accepts as [`accept`](Session::accept) does, without allocating per stream (the
    /// default implementation keeps one `accept` future and replaces it in place; a
    /// backend may poll its accept queue directly).
    fn incoming(&self) -> Incoming<Self::Stream> {
        Incoming::from_session(self.clone())
    }

    /// The transport this session runs on.
    fn protocol(&self) -> Protocol;

    /// This side's socket address.
    fn local_addr(&self) -> SocketAddr;

    /// The peer's socket address.
    fn remote_addr(&self) -> SocketAddr;

    /// Who the peer is, as far as it was verified, where it presented a certificate
    /// (always for a server; for a client only with mTLS): the path webpki built, or the
    /// pinned leaf alone (see [`PeerIdentity`]).
    fn peer_identity(&self) -> Option<PeerIdentity>;

    /// Closes the session gracefully: tells the peer (yamux GoAway + TLS close_notify, or
    /// QUIC CONNECTION_CLOSE) and waits, within the close timeout, until that was sent.
    /// Streams still open fail with [`Error::Closed`]. Closing twice is harmless.
    fn close(&self) -> impl Future<Output = ()> + Send;

    /// Drains the session: no new streams either way, the streams already open carry on,
    /// and once the last of them is dropped the session closes as [`close`](Session::close)
    /// does. Returns when the session has closed (also when it ended for another reason
    /// meanwhile).
    ///
    /// This is how a server leaves without cutting anyone off (a listener's `shutdown`
    /// drains every session it accepted). What the peer sees:
    ///
    /// - **TCP** (yamux): a GoAway with code 0, hashicorp's drain. The peer's
    ///   [`open`](Session::open) fails at once with [`Error::ClosedByPeer`]; a stream it
    ///   opened before the GoAway reached it is reset ([`Error::StreamReset`]). Streams
    ///   already open, and those waiting for this side's [`accept`](Session::accept),
    ///   carry on. When the last one is dropped, the session closes (TLS close_notify) and
    ///   the peer sees a clean [`CloseReason::Peer`]. A Go hashicorp peer behaves the same.
    /// - **QUIC**: Qymux's wire has no GoAway (no control stream), so this side stops
    ///   granting streams (QUIC `MAX_STREAMS` does not grow any more). A stream the peer
    ///   opens with the grant it still holds is reset; once that grant is used up, its
    ///   `open` fails with [`Limit::PeerStreams`](crate::Limit::PeerStreams). Streams
    ///   already open, and those waiting for this side's `accept` when the drain began,
    ///   carry on; then `CONNECTION_CLOSE` as `close` sends it, a clean
    ///   [`CloseReason::Peer`] for the peer.
    ///
    /// Meanwhile this side's own `open` fails with [`Error::Closed`], and `accept` hands
    /// out the streams that were waiting, then fails once the session has closed.
    ///
    /// The drain has no bound of its own: a stream the peer never finishes keeps the
    /// session open. Bound it with a timeout and call `close` to cut it short (the
    /// streams still open then fail with [`Error::Closed`]):
    ///
    /// ```
    /// # async fn leave<S: qymux_transport::Session>(session: S) {
    /// use std::time::Duration;
    /// let _ = tokio::time::timeout(Duration::from_secs(30), session.drain()).await;
    /// session.close().await; // harmless if the drain completed
    /// # }
    /// ```
    ///
    /// Dropping the returned future does not stop the drain: the session still closes
    /// when its last stream is dropped. Draining twice, or after `close`, is harmless.
    fn drain(&self) -> impl Future<Output = ()> + Send;

    /// Waits until the session has ended, and says why.
    fn closed(&self) -> impl Future<Output = CloseReason> + Send;

    /// Why the session ended, or `None` while it is alive.
    fn close_reason(&self) -> Option<CloseReason>;

    /// What the session has carried so far, and its RTT. Cheap: counters, no I/O.
    fn stats(&self) -> SessionStats;
}

/// Accepts sessions from dialers.
pub trait Listener: Send + Sync + 'static {
    /// The session type this listener hands out.
    type Session: Session;

    /// Waits for the next session whose handshake completed. Connections that fail their
    /// handshake are dropped (and logged) without disturbing this call. Fails with
    /// [`Error::Closed`] after [`close`](Listener::close).
    fn accept(&self) -> impl Future<Output = Result<Self::Session>> + Send;

    /// The address the listener is bound to.
    fn local_addr(&self) -> SocketAddr;

    /// Stops accepting: new connections are refused, handshakes in progress are dropped.
    /// Sessions already accepted keep running.
    fn close(&self);
}
