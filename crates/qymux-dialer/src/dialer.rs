//! Dialing in any [`Mode`]; in Auto, QUIC raced against TCP.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use qymux_transport::{BoxSession, Error, HandshakeError, Mode, Options, Result, TimeoutKind};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};
use tracing::debug;

use crate::memory::TransportMemory;

/// How long QUIC gets on its own before TCP starts too (RFC 8305's connection attempt
/// delay), when nothing about QUIC to the target has been measured yet.
pub const DEFAULT_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How long a QUIC attempt that lost the race to TCP may still get its first answer from
/// the server in the background (so that a slow but working path is told from a broken
/// one); an attempt still unanswered then is dropped. One the server has answered runs
/// on to its end (bounded by its handshake timeout).
const LOSER_GRACE: Duration = Duration::from_secs(1);

/// The close reason of an attempt that completed after the other transport had won the
/// race (or with it, in a tie QUIC wins): a QUIC session is closed with this reason, a
/// TCP one with yamux GoAway code
/// [`GO_AWAY_SUPERSEDED`](qymux_tcp::engine::frame::GO_AWAY_SUPERSEDED); at the server
/// either ends with `CloseReason::Peer(Some(SUPERSEDED))`, not like an agent that left.
pub const SUPERSEDED: &str = qymux_tcp::engine::frame::SUPERSEDED;

/// A QUIC session with how long its dial took.
pub(crate) type TimedQuic = (qymux_quic::Session, Duration);

/// The QUIC side of the race: owned, so that it can be finished in the background.
pub(crate) type QuicAttempt = Pin<Box<dyn Future<Output = Result<TimedQuic>> + Send>>;

/// Dials one server in a [`Mode`], returning a type-erased session.
///
/// The host name is resolved once per dial and both transports get the same addresses
/// (or those given with [`Dialer::resolved_addrs`]); each transport races them as Happy
/// Eyeballs does (RFC 8305: families interleaved, attempts staggered by 250 ms, each with
/// its own connect deadline, the next at once when one fails), so an address that drops
/// packets silently does not keep QUIC or TCP from the next one. A TCP dial through a
/// proxy sends the name to the proxy instead, unresolved.
///
/// In [`Mode::Auto`] QUIC starts first. If it has not connected after the attempt delay
/// (1.5 × the QUIC dial time measured to this server before, else 1.5 × a measured QUIC
/// round-trip time, at least 100 ms and at most 2 s; the configured
/// [`attempt_delay`](Dialer::attempt_delay), 250 ms by default, while nothing was
/// measured), TCP starts as well; the first to complete wins, QUIC in a tie. A TCP attempt
/// that lost is dropped (its socket closed), or, if it had completed too (a tie), closed
/// with the reason `superseded` ([`SUPERSEDED`]; a yamux GoAway code of Qymux's own), so
/// the server can tell it from a departing agent. A QUIC attempt still running when TCP
/// won goes on in the background: one the server has answered over UDP (its handshake
/// flight arrived) runs to its end, one still unanswered after one more second is
/// dropped with its socket; if it connects, it is closed at once as `superseded` and its
/// dial time is recorded (so the next attempt delay gives QUIC the time it needs).
///
/// QUIC is remembered as failing for the server's addresses ([`TransportMemory`]: the
/// next dials start with TCP at once, until the penalty expires) only when the server
/// never answered over UDP: when TCP wins while QUIC is still silent, the penalty is
/// applied, and lifted the moment a late answer comes; a refusal (a busy server), a
/// handshake error, or a handshake that progressed but lost the race or timed out is
/// not a broken path. If TCP fails, QUIC gets one more attempt delay
/// before the dial fails with TCP's error (not its whole connect timeout).
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
    /// The addresses to dial instead of resolving `addr`.
    addrs: Option<Arc<[SocketAddr]>>,
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
            addrs: None,
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

    /// How long QUIC runs alone before TCP starts too, while nothing about QUIC to the
    /// target has been measured (default [`DEFAULT_ATTEMPT_DELAY`]).
    pub fn attempt_delay(mut self, delay: Duration) -> Self {
        self.attempt_delay = delay;
        self
    }

    /// Shares a memory of QUIC failures with other dialers (to the same servers).
    pub fn memory(mut self, memory: Arc<TransportMemory>) -> Self {
        self.memory = memory;
        self
    }

    /// Dials these addresses (raced as Happy Eyeballs does, in this order within each
    /// family) instead of resolving the address given to [`Dialer::new`], which then
    /// only names the target in errors and logs: for a resolver of your own (SRV
    /// records, DNS over HTTPS, a pinned list). A TCP dial through a proxy still sends
    /// the name to the proxy.
    pub fn resolved_addrs(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.addrs = Some(addrs.into_iter().collect());
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
    /// Addresses given with [`resolved_addrs`](Dialer::resolved_addrs) are not carried
    /// over.
    pub fn with_addr(&self, addr: impl Into<String>) -> Dialer {
        Dialer {
            addr: addr.into(),
            addrs: None,
            ..self.clone()
        }
    }

    /// The name the server's certificate must be valid for (set by [`Dialer::new`]); for
    /// a server of a fleet whose certificate carries its own name.
    pub fn with_server_name(mut self, server_name: impl Into<String>) -> Self {
        self.server_name = server_name.into();
        self
    }

    /// The target's addresses: those given with
    /// [`resolved_addrs`](Dialer::resolved_addrs), or the address resolved now (within
    /// the connect timeout). What a dial uses, and what its [`TransportMemory`] is keyed
    /// by.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let connect_error = |source: std::io::Error| Error::Connect {
            addr: self.addr.clone(),
            source: Arc::new(source),
        };
        let addrs: Vec<SocketAddr> = match &self.addrs {
            Some(addrs) => addrs.to_vec(),
            None => tokio::time::timeout(
                self.options.connect_timeout_value(),
                tokio::net::lookup_host(&self.addr),
            )
            .await
            .map_err(|_| Error::Timeout {
                what: TimeoutKind::Connect,
                after: self.options.connect_timeout_value(),
            })?
            .map_err(connect_error)?
            .collect(),
        };
        if addrs.is_empty() {
            return Err(connect_error(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address resolved",
            )));
        }
        Ok(addrs)
    }

    /// Dials and returns a session over whichever transport won.
    pub async fn dial(&self) -> Result<BoxSession> {
        self.dial_concrete().await.map(|s| s.boxed())
    }

    /// [`dial`](Dialer::dial), keeping the backend's own session type.
    pub(crate) async fn dial_concrete(&self) -> Result<Concrete> {
        self.options.validate()?;
        match self.mode {
            Mode::Tcp => self.tcp(self.addrs.as_deref().map(<[_]>::to_vec)).await,
            Mode::Quic if !self.quic_allowed() => Err(Error::Config(format!(
                "Mode::Quic cannot reach {} through the proxy {}: a proxy carries TCP only \
                 (use Mode::Tcp or Mode::Auto, or Proxy::allow_direct_quic to dial QUIC directly)",
                self.addr,
                self.options
                    .proxy_value()
                    .map_or(String::new(), ToString::to_string),
            ))),
            Mode::Quic => {
                let addrs = self.resolve().await?;
                self.quic_owned(addrs)
                    .0
                    .await
                    .map(|(session, _)| Concrete::Quic(session))
            }
            _ if !self.quic_allowed() => {
                debug!(target = %self.addr, "a proxy is configured: TCP through it, no QUIC");
                self.tcp(None).await
            }
            _ => {
                let addrs = self.resolve().await?;
                let delay = self
                    .memory
                    .attempt_delay(&addrs)
                    .unwrap_or(self.attempt_delay);
                if self.memory.quic_broken_until(&addrs).is_some() {
                    return self.tcp_first(addrs).await;
                }
                let (quic, answered) = self.quic_owned(addrs.clone());
                let tcp = self.tcp(Some(addrs.clone()));
                self.race(&addrs, Box::pin(quic), answered, tcp, delay)
                    .await
            }
        }
    }

    /// Whether this dialer may dial QUIC: not when a proxy applies to the target
    /// (everything then goes through the proxy, which carries TCP only), unless the
    /// proxy allows QUIC to go straight to the server.
    pub(crate) fn quic_allowed(&self) -> bool {
        match self.options.proxy_value() {
            Some(proxy) if proxy.applies_to(&self.addr) => proxy.allows_direct_quic(),
            _ => true,
        }
    }

    /// Dials QUIC alone and records the outcome in the memory: a success clears the
    /// target's penalty, a failure extends it.
    pub(crate) async fn dial_quic_remembered(&self) -> Result<Concrete> {
        self.options.validate()?;
        let addrs = self.resolve().await?;
        let (quic, answered) = self.quic_owned(addrs.clone());
        match quic.await {
            Ok(dialed) => Ok(self.quic_won(dialed)),
            Err(e) if *answered.borrow() || server_answered(&e) => {
                debug!(target = %self.addr, error = %e.report(), "QUIC reached the server, which said no; not a broken path");
                Err(e)
            }
            Err(e) => {
                let penalty = self.memory.quic_failed(&addrs);
                debug!(target = %self.addr, error = %e.report(), ?penalty, "QUIC still fails here");
                Err(e)
            }
        }
    }

    /// A TCP dial: to `addrs` when given (unless a proxy applies: it gets the name),
    /// else to the name resolved by the TCP backend.
    fn tcp(
        &self,
        addrs: Option<Vec<SocketAddr>>,
    ) -> impl Future<Output = Result<Concrete>> + Send + 'static {
        let (addr, name, tls, options) = (
            self.addr.clone(),
            self.server_name.clone(),
            self.tls.clone(),
            self.options.clone(),
        );
        async move {
            match addrs {
                Some(addrs) => qymux_tcp::dial_resolved(&addr, addrs, &name, tls, options).await,
                None => qymux_tcp::dial(&addr, &name, tls, options).await,
            }
            .map(Concrete::Tcp)
        }
    }

    /// A QUIC dial to `addrs` that owns what it needs (so that it can be finished in the
    /// background after losing the race), timed; with a receiver that turns `true` once
    /// the server has answered over UDP (then the path works, whatever the dial's end).
    fn quic_owned(
        &self,
        addrs: Vec<SocketAddr>,
    ) -> (
        impl Future<Output = Result<TimedQuic>> + Send + 'static,
        watch::Receiver<bool>,
    ) {
        let (addr, name, tls, options) = (
            self.addr.clone(),
            self.server_name.clone(),
            self.tls.clone(),
            self.options.clone(),
        );
        let (answered, heard) = watch::channel(false);
        let dial = async move {
            let started = Instant::now();
            let session = qymux_quic::dial_resolved_noting_answer(
                &addr, addrs, &name, tls, options, &answered,
            )
            .await?;
            Ok((session, started.elapsed()))
        };
        (dial, heard)
    }

    /// QUIC is remembered as failing here: TCP at once; if TCP fails too, the network may
    /// have changed, so QUIC after all.
    async fn tcp_first(&self, addrs: Vec<SocketAddr>) -> Result<Concrete> {
        debug!(target = %self.addr, "QUIC failed here recently; dialing TCP at once");
        match self.tcp(Some(addrs.clone())).await {
            Ok(session) => Ok(session),
            Err(tcp_err) => self
                .quic_owned(addrs)
                .0
                .await
                .map(|dialed| self.quic_won(dialed))
                .map_err(|quic_err| {
                    debug!(%quic_err, "QUIC failed too");
                    tcp_err
                }),
        }
    }

    /// TCP won while QUIC was still connecting: QUIC is finished in the background. The
    /// moment the server answers over UDP (its handshake flight arrives, or it refuses),
    /// a penalty is lifted: the path works, QUIC was merely slow. An attempt the server
    /// has not answered within [`LOSER_GRACE`] is dropped with its socket, and only then
    /// does the penalty stand; one it answered runs on to its end. A QUIC session that
    /// completes is closed as `superseded`, and its dial time is recorded (so the next
    /// attempt delay gives QUIC the time it needs).
    fn finish_losing_quic(
        &self,
        addrs: &[SocketAddr],
        mut quic: QuicAttempt,
        mut answered: watch::Receiver<bool>,
    ) {
        let (memory, addr, addrs) = (self.memory.clone(), self.addr.clone(), addrs.to_vec());
        tokio::spawn(async move {
            let grace = sleep(LOSER_GRACE);
            tokio::pin!(grace);
            let mut heard = *answered.borrow_and_update();
            let finished = loop {
                tokio::select! {
                    biased;
                    finished = &mut quic => break finished,
                    changed = answered.changed(), if !heard => {
                        if changed.is_err() {
                            // Only the finished dial drops its sender: the branch above
                            // is ready.
                            continue;
                        }
                        heard = *answered.borrow_and_update();
                        if heard {
                            debug!(target = %addr, "the server answered the QUIC attempt that lost the race: not a broken path");
                            memory.quic_answered(&addrs);
                        }
                    }
                    () = &mut grace, if !heard => {
                        // Silent all along: dropped with its socket; the penalty stands.
                        debug!(target = %addr, "the QUIC attempt that lost the race got no answer; dropped");
                        return;
                    }
                }
            };
            match finished {
                Ok((session, dial_time)) => {
                    let connection = session.connection();
                    memory.quic_dialed(connection.remote_address(), connection.rtt(), dial_time);
                    debug!(target = %addr, ?dial_time, "QUIC connected after losing the race; closing it as superseded");
                    connection.close(
                        qymux_quic::quinn::VarInt::from_u32(0),
                        SUPERSEDED.as_bytes(),
                    );
                }
                Err(e) if heard || server_answered(&e) => {
                    debug!(target = %addr, error = %e.report(), "the QUIC attempt that lost the race failed after an answer");
                    memory.quic_answered(&addrs);
                }
                Err(e) => {
                    debug!(target = %addr, error = %e.report(), "the QUIC attempt that lost the race failed")
                }
            }
        });
    }

    fn quic_won(&self, (session, dial_time): TimedQuic) -> Concrete {
        let connection = session.connection();
        self.memory
            .quic_dialed(connection.remote_address(), connection.rtt(), dial_time);
        Concrete::Quic(session)
    }

    fn tcp_won(&self, addrs: &[SocketAddr], session: Concrete, quic: &str) -> Concrete {
        let penalty = self.memory.quic_failed(addrs);
        debug!(target = %self.addr, %quic, ?penalty, "TCP won; QUIC skipped for this target for a while");
        session
    }

    /// The Auto race between a QUIC attempt (already made, not yet polled) and a TCP one
    /// (started only after `delay`), both to `addrs`, with the outcome recorded in the
    /// memory.
    pub(crate) async fn race(
        &self,
        addrs: &[SocketAddr],
        mut quic: QuicAttempt,
        answered: watch::Receiver<bool>,
        tcp: impl Future<Output = Result<Concrete>>,
        delay: Duration,
    ) -> Result<Concrete> {
        // Whether a failed or unfinished QUIC attempt heard from the server over UDP.
        let heard = |e: Option<&Error>| *answered.borrow() || e.is_some_and(server_answered);
        let early = tokio::select! {
            biased;
            result = &mut quic => Some(result),
            () = sleep(delay) => None,
        };
        tokio::pin!(tcp);
        match early {
            Some(Ok(dialed)) => return Ok(self.quic_won(dialed)),
            Some(Err(quic_err)) => {
                if refuses_us(&quic_err) {
                    // The server answered and refused the certificate: TCP would hear the same.
                    return Err(quic_err);
                }
                debug!(%quic_err, "QUIC failed early; dialing TCP");
                let answered = heard(Some(&quic_err));
                return match tcp.await {
                    // A busy server refused QUIC: TCP now, QUIC again next time.
                    Ok(session) if answered => Ok(session),
                    Ok(session) => Ok(self.tcp_won(addrs, session, &quic_err.report().to_string())),
                    Err(tcp_err) => Err(pick(quic_err, tcp_err)),
                };
            }
            None => debug!(?delay, "QUIC not connected yet; starting TCP as well"),
        }

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
                    Ok(dialed) => {
                        if tcp_err.is_none() {
                            close_completed_loser(tcp.as_mut()).await;
                        }
                        return Ok(self.quic_won(dialed));
                    }
                    Err(e) => quic_err = Some(e),
                },
                result = &mut tcp, if tcp_err.is_none() => match result {
                    // The server answered over UDP: QUIC works there (busy, or slow).
                    Ok(session) if heard(quic_err.as_ref()) => {
                        if quic_err.is_none() {
                            debug!(target = %self.addr, "TCP won; the server answered QUIC, which finishes in the background");
                            self.finish_losing_quic(addrs, quic, answered);
                        }
                        return Ok(session);
                    }
                    Ok(session) => {
                        let why = quic_err.as_ref().map_or("still connecting".to_owned(), ToString::to_string);
                        let session = self.tcp_won(addrs, session, &why);
                        if quic_err.is_none() {
                            self.finish_losing_quic(addrs, quic, answered);
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

/// QUIC won while TCP was connecting too: a TCP attempt that has completed as well (a
/// tie) already is a session at the server, so it is closed as superseded
/// ([`qymux_tcp::Session::close_superseded`]), in the background, for the server to tell
/// it from an agent that left; one still connecting is dropped (its handshake never
/// completes at the server). Polls `tcp` once, without waiting.
async fn close_completed_loser(tcp: Pin<&mut impl Future<Output = Result<Concrete>>>) {
    let polled = tokio::select! {
        biased;
        result = tcp => Some(result),
        () = std::future::ready(()) => None,
    };
    if let Some(Ok(Concrete::Tcp(session))) = polled {
        debug!("TCP completed too, in a tie QUIC won; closing it as superseded");
        tokio::spawn(async move { session.close_superseded().await });
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

#[cfg(test)]
mod tests {
    use super::*;
    use qymux_cert::CertificateAuthority;
    use qymux_tls::{ClientTls, ServerTls};
    use qymux_transport::{Protocol, Session};
    use tokio::sync::{oneshot, watch};

    /// A QUIC and a TCP session to the Auto listener at `at`, dialed directly (an Auto
    /// dial would leave a loser).
    async fn dial_both(
        at: SocketAddr,
        client_tls: &Arc<rustls::ClientConfig>,
    ) -> (qymux_quic::Session, qymux_tcp::Session) {
        let quic = qymux_quic::dial_resolved(
            "tie",
            vec![at],
            "localhost",
            client_tls.clone(),
            Options::default(),
        );
        let tcp = qymux_tcp::dial_resolved(
            "tie",
            vec![at],
            "localhost",
            client_tls.clone(),
            Options::default(),
        );
        (quic.await.unwrap(), tcp.await.unwrap())
    }

    /// A tie: the QUIC and the TCP attempt both complete before the race looks again,
    /// and QUIC wins. Both are real sessions to a real listener, dialed beforehand; each
    /// attempt hands its session over once a gate opens. The test opens the gate only
    /// after the race has started TCP and gone back to waiting (one thread: the test
    /// runs only once the race's task has returned from its poll, with both attempts
    /// pending in its `select`), and one opening makes both ready at the same poll: no
    /// timing involved. Repeated, since a fair (random) choice would pick QUIC half the
    /// time.
    #[tokio::test(flavor = "current_thread")]
    async fn a_tie_goes_to_quic() {
        let ca = CertificateAuthority::new("Tie CA").unwrap();
        let server_tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
            .build()
            .unwrap();
        let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()])
            .build()
            .unwrap();
        let listener =
            crate::Listener::bind("127.0.0.1:0", server_tls, Options::default(), Mode::Auto)
                .await
                .unwrap();
        let at = listener.local_addr();
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok(session) = listener.accept().await {
                held.push(session);
            }
        });
        let dialer = Dialer::new(at.to_string(), "localhost", client_tls.clone());

        for round in 0..32 {
            let (quic, tcp) = dial_both(at, &client_tls).await;
            let (open, gate) = watch::channel(false);
            let (tcp_started, started) = oneshot::channel();
            let quic_attempt: QuicAttempt = Box::pin({
                let mut gate = gate.clone();
                async move {
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok((quic, Duration::from_millis(1)))
                }
            });
            let tcp_attempt = {
                let mut gate = gate.clone();
                async move {
                    let _ = tcp_started.send(());
                    gate.wait_for(|open| *open).await.unwrap();
                    Ok(Concrete::Tcp(tcp))
                }
            };
            let race = tokio::spawn({
                let dialer = dialer.clone();
                async move {
                    dialer
                        .race(
                            &[at],
                            quic_attempt,
                            watch::channel(false).1,
                            tcp_attempt,
                            Duration::ZERO,
                        )
                        .await
                }
            });
            started.await.expect("the race started TCP");
            open.send_replace(true);
            let winner = race.await.unwrap().unwrap();
            assert_eq!(
                winner.boxed().protocol(),
                Protocol::Quic,
                "round {round}: a tie goes to QUIC"
            );
            assert!(
                dialer.transport_memory().quic_broken_until(at).is_none(),
                "a winner is not penalised"
            );
        }
        accepting.abort();
    }

    /// In a tie QUIC wins, and the TCP attempt, which completed as well and so is a
    /// session at the server, is closed as superseded: the server's session ends with
    /// that reason, not like an agent that left (as a dropped session would).
    #[tokio::test(flavor = "current_thread")]
    async fn a_tcp_attempt_that_completed_in_a_tie_is_closed_as_superseded() {
        let ca = CertificateAuthority::new("Tie CA").unwrap();
        let server_tls = ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
            .build()
            .unwrap();
        let client_tls = ClientTls::with_ca(vec![ca.certificate().clone()])
            .build()
            .unwrap();
        let listener =
            crate::Listener::bind("127.0.0.1:0", server_tls, Options::default(), Mode::Auto)
                .await
                .unwrap();
        let at = listener.local_addr();
        let (quic, tcp) = dial_both(at, &client_tls).await;
        // The server's side of the TCP attempt.
        let server_tcp = loop {
            let session = listener.accept().await.unwrap();
            if session.protocol() == Protocol::Tcp {
                break session;
            }
        };
        let (open, gate) = watch::channel(false);
        let (tcp_started, started) = oneshot::channel();
        let quic_attempt: QuicAttempt = Box::pin({
            let mut gate = gate.clone();
            async move {
                gate.wait_for(|open| *open).await.unwrap();
                Ok((quic, Duration::from_millis(1)))
            }
        });
        let tcp_attempt = {
            let mut gate = gate.clone();
            async move {
                let _ = tcp_started.send(());
                gate.wait_for(|open| *open).await.unwrap();
                Ok(Concrete::Tcp(tcp))
            }
        };
        let dialer = Dialer::new(at.to_string(), "localhost", client_tls);
        let race = tokio::spawn(async move {
            dialer
                .race(
                    &[at],
                    quic_attempt,
                    watch::channel(false).1,
                    tcp_attempt,
                    Duration::ZERO,
                )
                .await
        });
        started.await.expect("the race started TCP");
        open.send_replace(true);
        let winner = race.await.unwrap().unwrap();
        assert_eq!(winner.boxed().protocol(), Protocol::Quic);
        let reason = tokio::time::timeout(Duration::from_secs(60), server_tcp.closed())
            .await
            .expect("the losing TCP session was closed");
        assert!(
            matches!(&reason, qymux_transport::CloseReason::Peer(Some(r)) if r == SUPERSEDED),
            "the TCP loser is closed as superseded: {reason:?}"
        );
        drop(listener);
    }
}
