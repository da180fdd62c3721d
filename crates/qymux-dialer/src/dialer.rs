//! Dialing in any [`Mode`]; in Auto, QUIC raced against TCP.

use std::sync::Arc;
use std::time::Duration;

use qymux_transport::{BoxSession, Error, HandshakeError, Mode, Options, Result};
use tokio::time::sleep;
use tracing::debug;

use crate::memory::TransportMemory;

/// How long QUIC gets on its own before TCP starts too (RFC 8305's connection attempt
/// delay), when no QUIC round-trip time to the target is known yet.
pub const DEFAULT_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The shortest attempt delay derived from a measured round-trip time (RFC 8305 section
/// 5: never below 100 ms).
const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(100);

/// How long a QUIC attempt that lost the race to TCP may still finish in the background
/// (so that a slow but working path is told from a broken one); then it is dropped.
const LOSER_GRACE: Duration = Duration::from_secs(1);

/// The close reason of a QUIC session that connected after TCP had won the race.
pub const SUPERSEDED: &str = "superseded";

/// Dials one server in a [`Mode`], returning a type-erased session.
///
/// In [`Mode::Auto`] QUIC starts first. If it has not connected after the attempt delay
/// (250 ms, or 1.5 × the QUIC round-trip time measured to this target before, at least
/// 100 ms), TCP starts as well; the first to complete wins, QUIC in a tie. A TCP attempt
/// that lost is dropped (its socket closed). A QUIC attempt still running when TCP won
/// gets one more second in the background: if it connects, it is closed at once with
/// the reason `superseded` (so the server can tell it from a departing agent) and QUIC
/// counts as working for this target; otherwise it is dropped with its socket. When QUIC fails or is still
/// silent while TCP works, the dialer remembers it for this target
/// ([`TransportMemory`]): the next dials start with TCP at once, until the penalty
/// expires; an answer from the server over UDP (a refusal, a handshake error) is not a
/// broken path and clears it. If TCP fails, QUIC gets one more attempt delay before the
/// dial fails with TCP's error (not its whole connect timeout).
///
/// With a proxy in the options ([`Options::proxy`]) that applies to the target, Auto
/// dials TCP through the proxy alone, and [`Mode::Quic`] is a configuration error: an
/// operator who sets a proxy expects every connection to go through it, and where one is
/// needed UDP is usually blocked, so a QUIC attempt would only cost its attempt delay.
/// [`Proxy::allow_direct_quic`](qymux_transport::Proxy::allow_direct_quic) lets QUIC go
/// straight to the server instead (Auto then races it against TCP through the proxy).
///
/// Cheap to clone; clones share the memory.
#[derive(Debug, Clone)]
pub struct Dialer {
    addr: String,
    server_name: String,
    tls: Arc<rustls::ClientConfig>,
    options: Options,
    mode: Mode,
    attempt_delay: Duration,
    memory: Arc<TransportMemory>,
}

impl Dialer {
    /// A dialer for `addr` (`host:port`, the same port for UDP and TCP) whose certificate
    /// must be valid for `server_name`. `tls` is a client config from
    /// `qymux_tls::ClientTls::build` (ALPN `qymux`, TLS 1.3).
    pub fn new(
        addr: impl Into<String>,
        server_name: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            addr: addr.into(),
            server_name: server_name.into(),
            tls,
            options: Options::default(),
            mode: Mode::Auto,
            attempt_delay: DEFAULT_ATTEMPT_DELAY,
            memory: Arc::new(TransportMemory::default()),
        }
    }

    /// Which transports to use (default [`Mode::Auto`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Timeouts, keep-alive and limits (default [`Options::default`]).
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// How long QUIC runs alone before TCP starts too, while no QUIC round-trip time to
    /// the target is known (default [`DEFAULT_ATTEMPT_DELAY`]).
    pub fn attempt_delay(mut self, delay: Duration) -> Self {
        self.attempt_delay = delay;
        self
    }

    /// Shares a memory of QUIC failures with other dialers (to the same targets).
    pub fn memory(mut self, memory: Arc<TransportMemory>) -> Self {
        self.memory = memory;
        self
    }

    /// The memory of QUIC failures this dialer uses.
    pub fn transport_memory(&self) -> &Arc<TransportMemory> {
        &self.memory
    }

    /// The target address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The mode this dialer dials in.
    pub fn transport_mode(&self) -> Mode {
        self.mode
    }

    /// The same dialer (server name, TLS, options, mode, shared memory) for another
    /// address: one per server of a fleet, for [`Reconnecting`](crate::Reconnecting).
    pub fn with_addr(&self, addr: impl Into<String>) -> Dialer {
        Dialer {
            addr: addr.into(),
            ..self.clone()
        }
    }

    /// The name the server's certificate must be valid for (set by [`Dialer::new`]); for
    /// a server of a fleet whose certificate carries its own name.
    pub fn with_server_name(mut self, server_name: impl Into<String>) -> Self {
        self.server_name = server_name.into();
        self
    }

    /// Dials and returns a session over whichever transport won.
    pub async fn dial(&self) -> Result<BoxSession> {
        self.dial_concrete().await.map(|s| s.boxed())
    }

    /// [`dial`](Dialer::dial), keeping the backend's own session type.
    pub(crate) async fn dial_concrete(&self) -> Result<Concrete> {
        self.options.validate()?;
        match self.mode {
            Mode::Tcp => self.tcp().await,
            Mode::Quic if !self.quic_allowed() => Err(Error::Config(format!(
                "Mode::Quic cannot reach {} through the proxy {}: a proxy carries TCP only \
                 (use Mode::Tcp or Mode::Auto, or Proxy::allow_direct_quic to dial QUIC directly)",
                self.addr,
                self.options
                    .proxy
                    .as_ref()
                    .map_or(String::new(), ToString::to_string),
            ))),
            Mode::Quic => self.quic().await.map(Concrete::Quic),
            _ if !self.quic_allowed() => {
                debug!(target = %self.addr, "a proxy is configured: TCP through it, no QUIC");
                self.tcp().await
            }
            _ => self.auto().await,
        }
    }

    /// Whether this dialer may dial QUIC: not when a proxy applies to the target
    /// (everything then goes through the proxy, which carries TCP only), unless the
    /// proxy allows QUIC to go straight to the server.
    pub(crate) fn quic_allowed(&self) -> bool {
        match &self.options.proxy {
            Some(proxy) if proxy.applies_to(&self.addr) => proxy.allows_direct_quic(),
            _ => true,
        }
    }

    /// Dials QUIC alone and records the outcome in the memory: a success clears the
    /// target's penalty, a failure extends it.
    pub(crate) async fn dial_quic_remembered(&self) -> Result<Concrete> {
        self.options.validate()?;
        match self.quic().await {
            Ok(session) => Ok(self.quic_won(session)),
            Err(e) if server_answered(&e) => {
                debug!(target = %self.addr, error = %e.report(), "QUIC reached the server, which said no; not a broken path");
                Err(e)
            }
            Err(e) => {
                let penalty = self.memory.quic_failed(&self.addr);
                debug!(target = %self.addr, error = %e.report(), ?penalty, "QUIC still fails here");
                Err(e)
            }
        }
    }

    async fn tcp(&self) -> Result<Concrete> {
        qymux_tcp::dial(
            &self.addr,
            &self.server_name,
            self.tls.clone(),
            &self.options,
        )
        .await
        .map(Concrete::Tcp)
    }

    async fn quic(&self) -> Result<qymux_quic::Session> {
        qymux_quic::dial(
            &self.addr,
            &self.server_name,
            self.tls.clone(),
            &self.options,
        )
        .await
    }

    /// A QUIC dial that owns what it needs, so that it can be finished in the
    /// background after losing the race.
    fn quic_owned(&self) -> impl Future<Output = Result<qymux_quic::Session>> + Send + 'static {
        let (addr, name, tls, options) = (
            self.addr.clone(),
            self.server_name.clone(),
            self.tls.clone(),
            self.options.clone(),
        );
        async move { qymux_quic::dial(&addr, &name, tls, &options).await }
    }

    /// TCP won while QUIC was still connecting: QUIC is finished in the background. A
    /// QUIC session that completes is closed as `superseded`, and QUIC counts as working
    /// (it merely lost); a server that answered over UDP clears the penalty too; only
    /// silence keeps it.
    fn finish_losing_quic(
        &self,
        quic: impl Future<Output = Result<qymux_quic::Session>> + Send + 'static,
    ) {
        let (memory, addr) = (self.memory.clone(), self.addr.clone());
        tokio::spawn(async move {
            let Ok(finished) = tokio::time::timeout(LOSER_GRACE, quic).await else {
                // Silent all along: dropped with its socket; the penalty stands.
                debug!(target = %addr, "the QUIC attempt that lost the race got no answer; dropped");
                return;
            };
            match finished {
                Ok(session) => {
                    let connection = session.connection();
                    memory.quic_worked(&addr, connection.rtt());
                    debug!(target = %addr, "QUIC connected after losing the race; closing it as superseded");
                    connection.close(
                        qymux_quic::quinn::VarInt::from_u32(0),
                        SUPERSEDED.as_bytes(),
                    );
                }
                Err(e) if server_answered(&e) => memory.quic_answered(&addr),
                Err(e) => {
                    debug!(target = %addr, error = %e.report(), "the QUIC attempt that lost the race failed")
                }
            }
        });
    }

    fn quic_won(&self, session: qymux_quic::Session) -> Concrete {
        self.memory
            .quic_worked(&self.addr, session.connection().rtt());
        Concrete::Quic(session)
    }

    fn tcp_won(&self, session: Concrete, quic: &str) -> Concrete {
        let penalty = self.memory.quic_failed(&self.addr);
        debug!(target = %self.addr, %quic, ?penalty, "TCP won; QUIC skipped for this target for a while");
        session
    }

    async fn auto(&self) -> Result<Concrete> {
        if self.memory.quic_broken_until(&self.addr).is_some() {
            debug!(target = %self.addr, "QUIC failed here recently; dialing TCP at once");
            return match self.tcp().await {
                Ok(session) => Ok(session),
                // TCP fails too: the network may have changed; QUIC after all.
                Err(tcp_err) => self
                    .quic()
                    .await
                    .map(|s| self.quic_won(s))
                    .map_err(|quic_err| {
                        debug!(%quic_err, "QUIC failed too");
                        tcp_err
                    }),
            };
        }

        let delay = match self.memory.quic_rtt(&self.addr) {
            Some(rtt) => (rtt * 3 / 2).clamp(MIN_ATTEMPT_DELAY, Duration::from_secs(2)),
            None => self.attempt_delay,
        };
        let mut quic = Box::pin(self.quic_owned());
        let early = tokio::select! {
            biased;
            result = &mut quic => Some(result),
            () = sleep(delay) => None,
        };
        match early {
            Some(Ok(session)) => return Ok(self.quic_won(session)),
            Some(Err(quic_err)) => {
                if refuses_us(&quic_err) {
                    // The server answered and refused the certificate: TCP would hear the same.
                    return Err(quic_err);
                }
                debug!(%quic_err, "QUIC failed early; dialing TCP");
                let answered = server_answered(&quic_err);
                return match self.tcp().await {
                    // A busy server refused QUIC: TCP now, QUIC again next time.
                    Ok(session) if answered => Ok(session),
                    Ok(session) => Ok(self.tcp_won(session, &quic_err.report().to_string())),
                    Err(tcp_err) => Err(pick(quic_err, tcp_err)),
                };
            }
            None => debug!(?delay, "QUIC not connected yet; starting TCP as well"),
        }

        let tcp = self.tcp();
        tokio::pin!(tcp);
        // Once TCP has failed, QUIC gets one more attempt delay, not its whole timeout:
        // a host where TCP is refused almost never has a Qymux server on UDP alone.
        let grace = sleep(Duration::MAX);
        tokio::pin!(grace);
        let (mut quic_err, mut tcp_err) = (None, None);
        loop {
            tokio::select! {
                // QUIC first: in a tie it wins.
                biased;
                result = &mut quic, if quic_err.is_none() => match result {
                    Ok(session) => return Ok(self.quic_won(session)),
                    Err(e) => quic_err = Some(e),
                },
                result = &mut tcp, if tcp_err.is_none() => match result {
                    Ok(session) if quic_err.as_ref().is_some_and(server_answered) => {
                        return Ok(session);
                    }
                    Ok(session) => {
                        let why = quic_err.as_ref().map_or("still connecting".to_owned(), ToString::to_string);
                        let session = self.tcp_won(session, &why);
                        if quic_err.is_none() {
                            self.finish_losing_quic(quic);
                        }
                        return Ok(session);
                    }
                    Err(e) => {
                        debug!(error = %e.report(), ?delay, "TCP failed; QUIC gets one more attempt delay");
                        grace.as_mut().reset(tokio::time::Instant::now() + delay);
                        tcp_err = Some(e);
                    }
                },
                () = &mut grace, if tcp_err.is_some() => {
                    return Err(tcp_err.take().unwrap_or(Error::Closed));
                }
            }
            if let (Some(q), Some(t)) = (&quic_err, &tcp_err) {
                return Err(pick(q.clone(), t.clone()));
            }
        }
    }
}

/// A dialed session with its backend's type.
#[derive(Debug, Clone)]
pub(crate) enum Concrete {
    Tcp(qymux_tcp::Session),
    Quic(qymux_quic::Session),
}

impl Concrete {
    pub(crate) fn boxed(&self) -> BoxSession {
        match self {
            Concrete::Tcp(s) => BoxSession::new(s.clone()),
            Concrete::Quic(s) => BoxSession::new(s.clone()),
        }
    }
}

/// Whether a failed QUIC dial heard from the server over UDP (its CONNECTION_REFUSED, a
/// handshake error, a close): the path works, so QUIC is not marked broken for this
/// target. (quinn reports no ICMP errors: a QUIC `ConnectionRefused` is always the
/// server's own answer.)
fn server_answered(err: &Error) -> bool {
    match err {
        Error::Connect { source, .. } => source.kind() == std::io::ErrorKind::ConnectionRefused,
        Error::ClosedByPeer(_) | Error::Handshake(_) | Error::LimitReached(_) => true,
        _ => false,
    }
}

/// Whether the server refused us in a way that does not depend on the transport.
fn refuses_us(err: &Error) -> bool {
    matches!(
        err,
        Error::Handshake(
            HandshakeError::UntrustedCertificate(_)
                | HandshakeError::PinMismatch { .. }
                | HandshakeError::ClientCertificateRequired
                | HandshakeError::ClientCertificateRefused(_)
        )
    )
}

/// The more useful of two failures: a handshake refusal says more than a timeout.
fn pick(quic: Error, tcp: Error) -> Error {
    debug!(%quic, %tcp, "both transports failed");
    match (&quic, &tcp) {
        (Error::Handshake(_), e) if !matches!(e, Error::Handshake(_)) => quic,
        _ => tcp,
    }
}
