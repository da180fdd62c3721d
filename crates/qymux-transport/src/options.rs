//! Options shared by every backend.

use std::time::Duration;

use crate::admission::{AdmissionHook, Admit, Attempt};
use crate::error::{Error, Result};
use crate::proxy::Proxy;

/// Timeouts, keep-alive and limits that every backend honours.
///
/// Build it from [`Options::default`] and the chaining setters; [`Options::validate`] says
/// whether a combination can work (the backends call it before they use the options).
///
/// ```
/// use std::time::Duration;
/// use qymux_transport::Options;
///
/// let mut options = Options::default();
/// options
///     .connect_timeout(Duration::from_secs(5))
///     .idle_timeout(Duration::from_secs(20))
///     .max_streams(256);
/// options.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    connect_timeout: Duration,
    handshake_timeout: Duration,
    keep_alive_interval: Option<Duration>,
    idle_timeout: Duration,
    max_streams: usize,
    close_timeout: Duration,
    max_pending_handshakes: usize,
    max_sessions: Option<usize>,
    open_timeout: Duration,
    accept_backlog: usize,
    receive_budget: usize,
    max_stream_window: u32,
    max_pending_per_source: usize,
    first_flight_timeout: Duration,
    quic_retry: QuicRetry,
    admission: Option<AdmissionHook>,
    quic_reset_secret: Option<Secret>,
    proxy: Option<Proxy>,
}

/// Secret bytes (see [`Options::quic_reset_secret`]), never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<[u8]>);

impl Secret {
    /// The secret's bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Secret {
    fn from(bytes: Vec<u8>) -> Self {
        Secret(bytes.into())
    }
}

impl From<&[u8]> for Secret {
    fn from(bytes: &[u8]) -> Self {
        Secret(bytes.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// When a QUIC listener asks clients to prove their address (a Retry packet, RFC 9000
/// section 8.1) before it keeps state for them.
///
/// A Retry costs a legitimate client one round trip, and lets a listener ignore floods of
/// Initials from addresses that cannot receive its answers (spoofed sources).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuicRetry {
    /// Validate once half of
    /// [`max_pending_handshakes`](Options::max_pending_handshakes) are in use, or when a
    /// source has half of its
    /// [`max_pending_per_source`](Options::max_pending_per_source): no cost when the
    /// listener is quiet.
    #[default]
    Auto,
    /// Validate every client.
    Always,
    /// Never send a Retry.
    Never,
}

/// The default [`Options::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            max_streams: 1024,
            close_timeout: Duration::from_secs(5),
            max_pending_handshakes: 1024,
            max_sessions: Some(DEFAULT_MAX_SESSIONS),
            open_timeout: Duration::from_secs(10),
            accept_backlog: 256,
            receive_budget: 256 * 1024 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            max_pending_per_source: 32,
            first_flight_timeout: Duration::from_secs(3),
            quic_retry: QuicRetry::Auto,
            admission: None,
            quic_reset_secret: None,
            proxy: None,
        }
    }
}

impl Options {
    /// Bound on establishing the transport connection (TCP connect).
    pub fn connect_timeout(&mut self, value: Duration) -> &mut Self {
        self.connect_timeout = value;
        self
    }

    /// Bound on the TLS / QUIC handshake, counted from the connection being made.
    pub fn handshake_timeout(&mut self, value: Duration) -> &mut Self {
        self.handshake_timeout = value;
        self
    }

    /// How often to send keep-alive probes while the peer is silent; `None` disables them.
    /// A live peer answers each probe, so it must be shorter than
    /// [`idle_timeout`](Options::idle_timeout) by at least a round trip; a third of it or
    /// less leaves room for a lost probe.
    pub fn keep_alive_interval(&mut self, value: Option<Duration>) -> &mut Self {
        self.keep_alive_interval = value;
        self
    }

    /// Dead-peer timeout: a session that hears nothing from its peer for this long is
    /// closed with [`TimeoutKind::Idle`](crate::TimeoutKind::Idle), in both modes and also
    /// when the peer vanishes silently; every operation waiting on it fails with that
    /// error. Without keep-alive, a session on which neither side sends anything ends
    /// after this too.
    pub fn idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.idle_timeout = value;
        self
    }

    /// Maximum number of concurrently open streams on one session, counting both
    /// directions. Opening beyond it fails with [`Limit::Streams`](crate::Limit::Streams);
    /// streams the peer opens beyond it are reset.
    pub fn max_streams(&mut self, value: usize) -> &mut Self {
        self.max_streams = value;
        self
    }

    /// Bound on a graceful close: after it the connection is dropped.
    pub fn close_timeout(&mut self, value: Duration) -> &mut Self {
        self.close_timeout = value;
        self
    }

    /// Maximum number of handshakes a listener runs at once; further connections are
    /// refused until one finishes.
    pub fn max_pending_handshakes(&mut self, value: usize) -> &mut Self {
        self.max_pending_handshakes = value;
        self
    }

    /// Maximum number of live sessions a listener holds at once (handed out or waiting
    /// for `accept`); 10,000 by default ([`DEFAULT_MAX_SESSIONS`]), `None` for no cap.
    /// With the per-session receive budgets this bounds what a listener's peers can make
    /// it buffer; a server for a larger fleet raises it. A session whose handshake
    /// completes beyond it is refused at once, not queued: over QUIC it is closed with
    /// the reason `limit reached: at most N sessions per listener`, over TCP it gets a
    /// yamux GoAway (the wire has no room for a reason); the listener logs
    /// [`Limit::Sessions`](crate::Limit::Sessions). A session counts until it has ended
    /// or every handle to it is dropped. In Auto mode the cap covers QUIC and TCP
    /// together.
    pub fn max_sessions(&mut self, value: impl Into<Option<usize>>) -> &mut Self {
        self.max_sessions = value.into();
        self
    }

    /// How long [`Session::open`](crate::Session::open) waits for the peer to make room
    /// for another stream (a hashicorp yamux peer acknowledges at most 256 streams ahead
    /// of its application's accepts; QUIC peers grant streams in batches) before it fails
    /// with [`Limit::PeerStreams`](crate::Limit::PeerStreams).
    pub fn open_timeout(&mut self, value: Duration) -> &mut Self {
        self.open_timeout = value;
        self
    }

    /// Streams the peer opened that may wait for the application's `accept` (256 by
    /// default, as hashicorp yamux). Over TCP, streams beyond it are reset (the peer
    /// reads [`Error::StreamReset`](crate::Error::StreamReset)). Over QUIC it caps the
    /// stream grant instead: the peer is granted at most this many streams beyond those
    /// accepted when the grant grows (and at most 128 at first), so its `open` beyond it
    /// waits for a grant and fails with
    /// [`Limit::PeerStreams`](crate::Limit::PeerStreams).
    pub fn accept_backlog(&mut self, value: usize) -> &mut Self {
        self.accept_backlog = value;
        self
    }

    /// The most stream data a peer can make one session buffer, in bytes: the sum of the
    /// receive windows granted to it (256 MiB by default, enough for the default
    /// 1024 streams at their initial 256 KiB). Each TCP stream takes 256 KiB of it while
    /// it is open, so at most `receive_budget / 256 KiB` streams are open at once however
    /// high [`max_streams`](Options::max_streams) is; windows grow within what is left,
    /// keeping room for 64 more streams. Opens beyond it fail with
    /// [`Limit::ReceiveBudget`](crate::Limit::ReceiveBudget), the peer's are reset.
    pub fn receive_budget(&mut self, value: usize) -> &mut Self {
        self.receive_budget = value;
        self
    }

    /// The largest receive window one stream grows to (16 MiB by default). Windows start
    /// at 256 KiB and double while the reader keeps up with the round-trip time, so a
    /// fast stream over a long path is not held to 256 KiB per round trip.
    pub fn max_stream_window(&mut self, value: u32) -> &mut Self {
        self.max_stream_window = value;
        self
    }

    /// Handshakes one source may have in progress at once on a listener: an IPv4
    /// address, or an IPv6 /64 ([`admission::Source`](crate::admission::Source)). Beyond
    /// it a new TCP connection from that source is closed at once, and a QUIC attempt is
    /// ignored while its address is unvalidated (refused once validated), so one host
    /// cannot hold the [`max_pending_handshakes`](Options::max_pending_handshakes)
    /// slots that everyone shares. 32 by default: agents behind one NAT that all
    /// reconnect at once get in a few dozen at a time, the rest on their next attempt.
    pub fn max_pending_per_source(&mut self, value: usize) -> &mut Self {
        self.max_pending_per_source = value;
        self
    }

    /// How long a new connection has to send its first flight before it is dropped,
    /// whatever [`handshake_timeout`](Options::handshake_timeout) says: over TCP the
    /// whole TLS ClientHello; over QUIC, an attempt whose address is not validated must
    /// complete its handshake within it. Silent and trickling connections free their
    /// handshake slot after this, not after the handshake timeout. 3 s by default
    /// (a client 1 s of round trip away still makes it).
    pub fn first_flight_timeout(&mut self, value: Duration) -> &mut Self {
        self.first_flight_timeout = value;
        self
    }

    /// The application's say on every connection attempt a listener sees, before the
    /// caps above (none by default: every attempt goes on to them). See
    /// [`admission`](crate::admission).
    /// `decide` is called with every connection attempt a listener sees, before it keeps
    /// state for it.
    pub fn admission(
        &mut self,
        decide: impl Fn(&Attempt) -> Admit + Send + Sync + 'static,
    ) -> &mut Self {
        self.admission = Some(AdmissionHook::new(decide));
        self
    }

    /// The secret a QUIC listener derives its stateless-reset key from (a random key per
    /// process when `None`, the default).
    ///
    /// With a secret that survives a restart (the server's private key file is a good
    /// one), a restarted server answers the first packet of each connection its
    /// predecessor held with a stateless reset, and the agent redials at once; with a
    /// random key the new process cannot prove it is the same server, drops the packets,
    /// and each agent waits out its [`idle_timeout`](Options::idle_timeout). Anyone who
    /// knows the secret can end this server's connections, so keep it as secret as the
    /// server's key. Only the derived key is used: the secret itself is never sent.
    ///
    /// For instance the server's private key file (`std::fs::read("server.key")?`).
    pub fn quic_reset_secret(&mut self, secret: impl Into<Secret>) -> &mut Self {
        self.quic_reset_secret = Some(secret.into());
        self
    }

    /// The HTTP CONNECT or SOCKS5 proxy the TCP transport dials through (none by
    /// default). Listeners ignore it. With a proxy, `Mode::Auto` dials TCP only (through
    /// the proxy) unless [`Proxy::allow_direct_quic`] lets QUIC go straight to the
    /// server; see [`proxy`](crate::proxy). The proxy's connect and handshake are both
    /// bounded by [`connect_timeout`](Options::connect_timeout), and a session's
    /// `remote_addr` is then the proxy's address.
    ///
    /// For instance `options.proxy(Proxy::parse("http://user:password@proxy.corp:3128")?)`,
    /// or `options.proxy(Proxy::from_env()?)` to honour `HTTPS_PROXY` / `ALL_PROXY`.
    pub fn proxy(&mut self, proxy: impl Into<Option<Proxy>>) -> &mut Self {
        self.proxy = proxy.into();
        self
    }

    /// When a QUIC listener validates a client's address with a Retry before it keeps
    /// any state for it ([`QuicRetry::Auto`] by default).
    pub fn quic_retry(&mut self, value: QuicRetry) -> &mut Self {
        self.quic_retry = value;
        self
    }

    // Read accessors: each returns what the setter of the same name (without `_value`) set.

    /// The value [`Options::connect_timeout`] set.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The value [`Options::handshake_timeout`] set.
    pub fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    /// The value [`Options::keep_alive_interval`] set.
    pub fn keep_alive_interval_value(&self) -> Option<Duration> {
        self.keep_alive_interval
    }

    /// The value [`Options::idle_timeout`] set.
    pub fn idle_timeout_value(&self) -> Duration {
        self.idle_timeout
    }

    /// The value [`Options::max_streams`] set.
    pub fn max_streams_value(&self) -> usize {
        self.max_streams
    }

    /// The value [`Options::close_timeout`] set.
    pub fn close_timeout_value(&self) -> Duration {
        self.close_timeout
    }

    /// The value [`Options::max_pending_handshakes`] set.
    pub fn max_pending_handshakes_value(&self) -> usize {
        self.max_pending_handshakes
    }

    /// The value [`Options::max_sessions`] set.
    pub fn max_sessions_value(&self) -> Option<usize> {
        self.max_sessions
    }

    /// The value [`Options::open_timeout`] set.
    pub fn open_timeout_value(&self) -> Duration {
        self.open_timeout
    }

    /// The value [`Options::accept_backlog`] set.
    pub fn accept_backlog_value(&self) -> usize {
        self.accept_backlog
    }

    /// The value [`Options::receive_budget`] set.
    pub fn receive_budget_value(&self) -> usize {
        self.receive_budget
    }

    /// The value [`Options::max_stream_window`] set.
    pub fn max_stream_window_value(&self) -> u32 {
        self.max_stream_window
    }

    /// The value [`Options::max_pending_per_source`] set.
    pub fn max_pending_per_source_value(&self) -> usize {
        self.max_pending_per_source
    }

    /// The value [`Options::first_flight_timeout`] set.
    pub fn first_flight_timeout_value(&self) -> Duration {
        self.first_flight_timeout
    }

    /// The value [`Options::quic_retry`] set.
    pub fn quic_retry_value(&self) -> QuicRetry {
        self.quic_retry
    }

    /// The value [`Options::admission`] set.
    pub fn admission_value(&self) -> Option<&AdmissionHook> {
        self.admission.as_ref()
    }

    /// The value [`Options::quic_reset_secret`] set.
    pub fn quic_reset_secret_value(&self) -> Option<&Secret> {
        self.quic_reset_secret.as_ref()
    }

    /// The value [`Options::proxy`] set.
    pub fn proxy_value(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// The window every yamux stream starts with (fixed by the protocol): the least
    /// [`Options::receive_budget`] and [`Options::max_stream_window`] can be.
    pub const INITIAL_STREAM_WINDOW: u32 = 256 * 1024;

    /// The largest timeout [`Options::validate`] accepts: one year.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

    /// Checks that the options can work together: timeouts between zero (excluded) and
    /// [`Options::MAX_TIMEOUT`], keep-alive shorter than the idle timeout, limits in range.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("connect_timeout", self.connect_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("close_timeout", self.close_timeout),
            ("open_timeout", self.open_timeout),
            ("first_flight_timeout", self.first_flight_timeout),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
            // The backends compute deadlines as now + bound (and wait up to twice the
            // close timeout); an absurd bound would overflow the clock and panic there.
            if value > Self::MAX_TIMEOUT {
                return Err(Error::Config(format!(
                    "{name} ({value:?}) must be at most {:?} (one year)",
                    Self::MAX_TIMEOUT
                )));
            }
        }
        if let Some(interval) = self.keep_alive_interval {
            if interval.is_zero() {
                return Err(Error::Config(
                    "keep_alive_interval must be greater than zero (use None to disable)".into(),
                ));
            }
            if interval >= self.idle_timeout {
                return Err(Error::Config(format!(
                    "keep_alive_interval ({interval:?}) must be shorter than idle_timeout ({:?}), \
                     or a healthy idle session would be declared dead",
                    self.idle_timeout
                )));
            }
        }
        if self.max_streams == 0 || self.max_streams > (1 << 20) {
            return Err(Error::Config(
                "max_streams must be between 1 and 1048576".into(),
            ));
        }
        if self.max_pending_handshakes == 0 {
            return Err(Error::Config(
                "max_pending_handshakes must be at least 1".into(),
            ));
        }
        if self.max_pending_per_source == 0 {
            return Err(Error::Config(
                "max_pending_per_source must be at least 1".into(),
            ));
        }
        if self
            .quic_reset_secret
            .as_ref()
            .is_some_and(|secret| secret.expose().len() < 16)
        {
            // A short secret can be guessed, and its guesser can end every connection.
            return Err(Error::Config(
                "quic_reset_secret must be at least 16 bytes".into(),
            ));
        }
        if self.accept_backlog == 0 {
            return Err(Error::Config("accept_backlog must be at least 1".into()));
        }
        let initial = Self::INITIAL_STREAM_WINDOW;
        if self.receive_budget < initial as usize {
            return Err(Error::Config(format!(
                "receive_budget ({}) must be at least one stream's initial window ({initial})",
                self.receive_budget
            )));
        }
        if self.max_stream_window < initial {
            return Err(Error::Config(format!(
                "max_stream_window ({}) must be at least the initial window ({initial})",
                self.max_stream_window
            )));
        }
        if let Some(proxy) = &self.proxy {
            proxy
                .validate()
                .map_err(|e| Error::Config(format!("proxy {proxy}: {e}")))?;
        }
        if self.max_sessions == Some(0) {
            return Err(Error::Config(
                "max_sessions must be at least 1 (use None for no cap)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Options::default().validate().unwrap();
    }

    #[test]
    fn every_listener_cap_is_finite_by_default() {
        let o = Options::default();
        assert_eq!(o.max_sessions, Some(DEFAULT_MAX_SESSIONS));
        assert!(o.max_pending_per_source < o.max_pending_handshakes);
    }

    #[test]
    fn rejects_unworkable_values() {
        let mut o = Options::default();
        o.max_streams(0);
        assert!(matches!(o.validate(), Err(Error::Config(m)) if m.contains("max_streams")));

        let mut o = Options::default();
        o.keep_alive_interval(Some(Duration::from_secs(60)));
        assert!(
            matches!(o.validate(), Err(Error::Config(m)) if m.contains("shorter than idle_timeout"))
        );

        let mut o = Options::default();
        o.handshake_timeout(Duration::ZERO);
        assert!(matches!(o.validate(), Err(Error::Config(m)) if m.contains("handshake_timeout")));

        // Found by the `options` fuzz target: such a bound used to validate, and then
        // `Instant::now() + bound` panicked in dial.
        let mut o = Options::default();
        o.handshake_timeout(Duration::MAX);
        assert!(matches!(o.validate(), Err(Error::Config(m)) if m.contains("at most")));
        let mut o = Options::default();
        o.close_timeout(Options::MAX_TIMEOUT);
        o.validate().unwrap();

        let mut o = Options::default();
        o.max_sessions(0);
        assert!(matches!(o.validate(), Err(Error::Config(m)) if m.contains("max_sessions")));
        o.max_sessions(1);
        o.validate().unwrap();
        o.max_sessions(None);
        o.validate().unwrap();
    }
}
