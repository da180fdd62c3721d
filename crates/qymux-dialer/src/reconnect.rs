//! A session that stays up: redial with backoff, several servers, back to QUIC.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use qymux_transport::{BoxSession, CloseReason, Error, Mode, Protocol, Result, Session};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::dialer::{Concrete, Dialer};

/// How a [`Reconnecting`] session behaves.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ReconnectConfig {
    /// The waits between dials (default [`Backoff::default`]: 100 ms doubling to 30 s,
    /// full jitter, reset after a session lived 10 s).
    pub backoff: Backoff,
    /// In [`Mode::Auto`], while the session runs over TCP because QUIC failed, dial QUIC
    /// again in the background when the dialer's memory lets it
    /// ([`TransportMemory`](crate::TransportMemory)), and move to it when it connects
    /// (default `true`). Not while a proxy applies to the server
    /// ([`Options::proxy`](qymux_transport::Options::proxy)), unless it allows direct QUIC.
    pub upgrade_to_quic: bool,
    /// How long the streams of a session being replaced (after a move to QUIC) get to
    /// finish before it is closed anyway (default 30 s).
    pub drain_timeout: Duration,
    /// After the server closed the session cleanly (a graceful shutdown, a restart), the
    /// first redial waits a random time up to this (default 1 s), so that the agents of
    /// a server that shuts down do not all arrive at the next server in the same
    /// instant. Later retries follow [`backoff`](ReconnectConfig::backoff).
    pub clean_close_spread: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            upgrade_to_quic: true,
            drain_timeout: Duration::from_secs(30),
            clean_close_spread: Duration::from_secs(1),
        }
    }
}

impl ReconnectConfig {
    /// Sets [`ReconnectConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sets [`ReconnectConfig::upgrade_to_quic`].
    pub fn upgrade_to_quic(mut self, value: bool) -> Self {
        self.upgrade_to_quic = value;
        self
    }

    /// Sets [`ReconnectConfig::clean_close_spread`].
    pub fn clean_close_spread(mut self, value: Duration) -> Self {
        self.clean_close_spread = value;
        self
    }

    /// The wait before the first redial after the server closed the session cleanly:
    /// uniform between zero and [`clean_close_spread`](ReconnectConfig::clean_close_spread).
    pub fn clean_close_delay(&self) -> Duration {
        self.clean_close_spread
            .mul_f64(rand::random_range(0.0..=1.0))
    }

    /// Sets [`ReconnectConfig::drain_timeout`].
    pub fn drain_timeout(mut self, value: Duration) -> Self {
        self.drain_timeout = value;
        self
    }
}

/// Where a [`Reconnecting`] session is, as published on its
/// [`state`](Reconnecting::state) channel.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum ReconnectState {
    /// Dialing `server`. `attempt` counts the dials since the last session was up
    /// (1 for the first); `last_error` is why the previous one failed or ended.
    Connecting {
        /// The address being dialed.
        server: String,
        /// The dial's number since the last session (1 for the first).
        attempt: u32,
        /// Why the previous dial failed or the previous session ended.
        last_error: Option<Error>,
    },
    /// A session is up; [`Reconnecting::session`] returns it.
    Connected {
        /// The address of the server, as configured.
        server: String,
        /// The address the session is connected to.
        remote: SocketAddr,
        /// The transport the session runs on.
        protocol: Protocol,
        /// How many sessions were handed out so far, this one included (1 for the
        /// first; a move from TCP to QUIC counts as a new session).
        generation: u64,
    },
    /// Waiting `retry_in` before dialing again after `last_error`.
    Reconnecting {
        /// The number of the retry (0 for the first retry after a loss); the wait is
        /// drawn from [`Backoff::ceiling`] of it.
        retry: u32,
        /// The wait drawn for this retry.
        retry_in: Duration,
        /// Why the dial failed or the session ended.
        last_error: Error,
    },
    /// Stopped: by [`Reconnecting::shutdown`], or by a configuration error that no retry
    /// can fix (`last_error`).
    Stopped {
        /// The configuration error that stopped it, if one did.
        last_error: Option<Error>,
    },
}

impl ReconnectState {
    /// The transport of the session that is up, if one is.
    pub fn protocol(&self) -> Option<Protocol> {
        match self {
            ReconnectState::Connected { protocol, .. } => Some(*protocol),
            _ => None,
        }
    }

    /// Whether a session is up.
    pub fn is_connected(&self) -> bool {
        matches!(self, ReconnectState::Connected { .. })
    }
}

/// A session that keeps itself up, for agents: when it is lost it is dialed again, with
/// exponential backoff and full jitter, to the next of the configured servers.
///
/// - **Callback.** `on_session` runs for every new session (the first, after each
///   reconnect, after a move to QUIC), as its own task: serve gRPC on it again, register
///   again. It should return when the session ends (its `accept` then fails). It owns
///   the session: if it returns or panics while the session is still up, nobody would
///   serve it, so the session is closed and redialed (with backoff), and the state never
///   says `Connected` for a session nobody serves. A callback that only hands the
///   session elsewhere should end with `session.closed().await`.
/// - **Shutdown** waits, up to [`ReconnectConfig::drain_timeout`], for the last
///   session's callback and for sessions still draining after a move to QUIC.
/// - **State.** [`state`](Reconnecting::state) is a [`watch`] channel of
///   [`ReconnectState`]: connected (over which transport, to which server), connecting,
///   waiting to reconnect (retry number, wait, last error), stopped.
/// - **Several servers.** Given several [`Dialer`]s (one per server, for instance with
///   [`Dialer::with_addr`]), the first is dialed first; after a failed dial or a lost
///   session the next one in the list is dialed, round robin. A server that shuts down
///   gracefully ([`Listener::shutdown`](crate::Listener::shutdown)) sends its agents to
///   the others this way.
/// - **Back to QUIC.** In [`Mode::Auto`], a session over TCP because QUIC failed dials
///   QUIC again in the background once the dialer's
///   [`TransportMemory`](crate::TransportMemory) penalty for that server has expired
///   (a failure doubles the penalty). When QUIC connects, the new session is handed out
///   (state, callback), and the TCP session is drained
///   ([`Session::drain`](qymux_transport::Session::drain): the server opens no new
///   streams on it) and closed once its open streams have finished (at most
///   [`ReconnectConfig::drain_timeout`] later).
/// - **Backoff.** A failed dial, or a session that ended before
///   [`Backoff::reset_after`], makes the next wait longer; only an invalid configuration
///   ([`Error::Config`]) stops the loop.
///
/// Dropping it (or [`shutdown`](Reconnecting::shutdown)) stops redialing and closes the
/// current session.
///
/// ```no_run
/// # use std::sync::Arc;
/// use qymux_dialer::{Dialer, ReconnectConfig, ReconnectState, Reconnecting};
/// use qymux_transport::Session;
///
/// # async fn run(tls: Arc<rustls::ClientConfig>) -> qymux_transport::Result<()> {
/// let primary = Dialer::new("tunnel-a.example.com:4433", "tunnel.example.com", tls);
/// let backup = primary.with_addr("tunnel-b.example.com:4433");
/// let agent = Reconnecting::start(vec![primary, backup], ReconnectConfig::default(), |session| async move {
///     // Serve whatever the server opens, until the session ends.
///     while let Ok(stream) = session.accept().await {
///         drop(stream);
///     }
/// })?;
/// let mut state = agent.state();
/// while state.changed().await.is_ok() {
///     if let ReconnectState::Connected { protocol, server, .. } = &*state.borrow() {
///         println!("connected to {server} over {protocol}");
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Reconnecting {
    state: watch::Receiver<ReconnectState>,
    session: watch::Receiver<Option<BoxSession>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reconnecting {
    /// Starts keeping a session up to `servers` (tried in order, round robin). Fails with
    /// [`Error::Config`] when `servers` is empty or the backoff cannot work.
    ///
    /// The loop runs as a tokio task, so this must be called within a tokio runtime.
    pub fn start<F, Fut>(
        servers: Vec<Dialer>,
        config: ReconnectConfig,
        on_session: F,
    ) -> Result<Self>
    where
        F: FnMut(BoxSession) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_observed(servers, config, broadcast::Sender::new(1), on_session)
    }

    /// As [`start`](Reconnecting::start), and sends every state change to `events` as
    /// well, in order. The [`state`](Reconnecting::state) channel holds only the latest
    /// state, so a watcher may miss a short one (a wait of a few microseconds between two
    /// dials); a receiver of `events` subscribed before this call sees them all (as long
    /// as it keeps up with the channel's capacity). For code that reports each dial and
    /// each loss, like the tunnel agent of `qymux-forward`.
    pub fn start_observed<F, Fut>(
        servers: Vec<Dialer>,
        config: ReconnectConfig,
        events: broadcast::Sender<ReconnectState>,
        on_session: F,
    ) -> Result<Self>
    where
        F: FnMut(BoxSession) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if servers.is_empty() {
            return Err(Error::Config(
                "a reconnecting session needs at least one server".into(),
            ));
        }
        config.backoff.validate()?;
        let first = ReconnectState::Connecting {
            server: servers[0].addr().to_owned(),
            attempt: 1,
            last_error: None,
        };
        let (state_tx, state) = watch::channel(first);
        let (session_tx, session) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let run = Run {
            servers,
            config,
            on_session,
            state: state_tx,
            events,
            session: session_tx,
            stop: stop_rx,
            generation: 0,
            background: tokio::task::JoinSet::new(),
        };
        let task = tokio::spawn(run.run());
        Ok(Reconnecting {
            state,
            session,
            stop,
            task,
        })
    }

    /// A receiver of the state: `borrow()` for now, `changed()` / `wait_for` to follow it.
    pub fn state(&self) -> watch::Receiver<ReconnectState> {
        self.state.clone()
    }

    /// The session that is up right now, if one is.
    pub fn session(&self) -> Option<BoxSession> {
        self.session.borrow().clone()
    }

    /// Waits until a session is up and returns it. Fails with the error that stopped
    /// the loop once it has stopped.
    pub async fn connected(&self) -> Result<BoxSession> {
        let mut session = self.session.clone();
        let mut state = self.state.clone();
        loop {
            if let Some(s) = session.borrow_and_update().clone() {
                return Ok(s);
            }
            if let ReconnectState::Stopped { last_error } = &*state.borrow_and_update() {
                return Err(last_error.clone().unwrap_or(Error::Closed));
            }
            tokio::select! {
                changed = session.changed() => if changed.is_err() { return Err(Error::Closed) },
                changed = state.changed() => if changed.is_err() { return Err(Error::Closed) },
            }
        }
    }

    /// Stops redialing, closes the current session gracefully and waits until done.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Reconnecting {
    fn drop(&mut self) {
        // The loop sees it, closes its session and ends on its own.
        let _ = self.stop.send(true);
    }
}

/// The loop behind a [`Reconnecting`].
struct Run<F> {
    servers: Vec<Dialer>,
    config: ReconnectConfig,
    on_session: F,
    state: watch::Sender<ReconnectState>,
    /// Every state change, for [`Reconnecting::start_observed`].
    events: broadcast::Sender<ReconnectState>,
    session: watch::Sender<Option<BoxSession>>,
    stop: watch::Receiver<bool>,
    generation: u64,
    /// Session callbacks and drains of replaced sessions.
    background: tokio::task::JoinSet<()>,
}

/// How holding a session ended.
enum Held {
    Ended(CloseReason),
    /// The callback panicked or returned while its session was up: the session was
    /// closed (this error says why) and is redialed.
    Abandoned(Error),
    Stop,
}

/// Why a callback that ended while its session was up is treated as a lost session.
fn abandoned(finished: std::result::Result<(), tokio::task::JoinError>) -> Error {
    let why = match finished {
        Err(e) if e.is_panic() => "the session callback panicked",
        Err(_) => "the session callback was cancelled",
        Ok(()) => "the session callback returned while its session was up",
    };
    Error::io(std::io::Error::other(why))
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the handle is gone: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

impl<F, Fut> Run<F>
where
    F: FnMut(BoxSession) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// Publishes a new state on the watch channel and to the observer.
    fn publish(&self, state: ReconnectState) {
        // No receiver is not an error: nobody observes.
        let _ = self.events.send(state.clone());
        self.state.send_replace(state);
    }

    async fn run(mut self) {
        let mut index = 0usize;
        let mut retry = 0u32;
        let mut attempt = 0u32;
        let mut last_error: Option<Error> = None;
        loop {
            attempt = attempt.saturating_add(1);
            let dialer = self.servers[index % self.servers.len()].clone();
            self.publish(ReconnectState::Connecting {
                server: dialer.addr().to_owned(),
                attempt,
                last_error: last_error.clone(),
            });
            debug!(server = dialer.addr(), attempt, "dialing");
            let dialed = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                dialed = dialer.dial_concrete() => dialed,
            };
            let mut closed_by_server = false;
            let error = match dialed {
                Ok(session) => {
                    attempt = 0;
                    let since = Instant::now();
                    let held = self.hold(&dialer, session).await;
                    let lived = since.elapsed();
                    if !matches!(held, Held::Stop) && lived >= self.config.backoff.reset_after {
                        retry = 0;
                    }
                    match held {
                        Held::Stop => break,
                        Held::Ended(reason) => {
                            closed_by_server = matches!(reason, CloseReason::Peer(_));
                            warn!(server = dialer.addr(), %reason, ?lived, "session ended; reconnecting");
                            reason.to_error()
                        }
                        Held::Abandoned(error) => {
                            warn!(server = dialer.addr(), error = %error.report(), ?lived, "closed the session its callback left; reconnecting");
                            error
                        }
                    }
                }
                Err(e @ Error::Config(_)) => {
                    warn!(error = %e.report(), "cannot dial: invalid configuration; stopping");
                    last_error = Some(e);
                    self.session.send_replace(None);
                    self.publish(ReconnectState::Stopped { last_error });
                    return;
                }
                Err(e) => {
                    warn!(server = dialer.addr(), attempt, error = %e.report(), "dial failed");
                    e
                }
            };
            // Lost or unreachable: the next server, after a jittered wait.
            index = index.wrapping_add(1);
            // A server that closed cleanly closed its other agents too: spread the herd.
            let retry_in = if closed_by_server && retry == 0 {
                self.config.clean_close_delay()
            } else {
                self.config.backoff.delay(retry)
            };
            self.publish(ReconnectState::Reconnecting {
                retry,
                retry_in,
                last_error: error.clone(),
            });
            last_error = Some(error);
            retry = retry.saturating_add(1);
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => break,
                () = tokio::time::sleep(retry_in) => {}
            }
        }
        self.session.send_replace(None);
        // Shutdown waits for what it started: the callback of the last session (which
        // sees its session closed) and the drains of replaced sessions, each bounded.
        self.finish_background().await;
        self.publish(ReconnectState::Stopped { last_error: None });
    }

    /// Waits, up to [`ReconnectConfig::drain_timeout`], for the callbacks and drains
    /// still running; aborts what is left after that.
    async fn finish_background(&mut self) {
        let all = async { while self.background.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.drain_timeout, all)
            .await
            .is_err()
        {
            warn!(
                left = self.background.len(),
                "session callbacks still running after the drain timeout; aborting them"
            );
            self.background.abort_all();
            while self.background.join_next().await.is_some() {}
        }
    }

    /// Hands `session` out and keeps it (or the QUIC session that replaces it) until it
    /// ends or the loop is stopped.
    async fn hold(&mut self, dialer: &Dialer, session: Concrete) -> Held {
        let mut current = session;
        let mut callback = self.hand_out(dialer, &current);
        loop {
            let boxed = current.boxed();
            let upgrade = self.config.upgrade_to_quic
                && dialer.transport_mode() == Mode::Auto
                && dialer.quic_allowed()
                && boxed.protocol() == Protocol::Tcp;
            if !upgrade {
                return tokio::select! {
                    biased;
                    () = stopped(&mut self.stop) => {
                        self.retire(&boxed).await;
                        Held::Stop
                    }
                    reason = boxed.closed() => {
                        self.session.send_replace(None);
                        Held::Ended(reason)
                    }
                    finished = callback.wait() => {
                        self.retire(&boxed).await;
                        Held::Abandoned(abandoned(finished))
                    }
                };
            }
            // Over TCP: try QUIC again once the memory allows it.
            let quic = async {
                let retry_at = dialer.quic_retry_at().await.unwrap_or_else(Instant::now);
                tokio::time::sleep_until(retry_at).await;
                debug!(server = dialer.addr(), "trying QUIC again");
                dialer.dial_quic_remembered().await
            };
            let result = tokio::select! {
                biased;
                () = stopped(&mut self.stop) => {
                    self.retire(&boxed).await;
                    return Held::Stop;
                }
                reason = boxed.closed() => {
                    self.session.send_replace(None);
                    return Held::Ended(reason);
                }
                finished = callback.wait() => {
                    self.retire(&boxed).await;
                    return Held::Abandoned(abandoned(finished));
                }
                result = quic => result,
            };
            match result {
                Ok(quic) => {
                    info!(
                        server = dialer.addr(),
                        "QUIC gets through again; moving the session to QUIC"
                    );
                    // The old session's callback serves it while it drains.
                    callback = self.hand_out(dialer, &quic);
                    self.background
                        .spawn(drain_and_close(current, self.config.drain_timeout));
                    current = quic;
                }
                Err(e) => debug!(error = %e.report(), "QUIC still fails; staying on TCP"),
            }
        }
    }

    /// Publishes a new session and runs the callback on it.
    fn hand_out(&mut self, dialer: &Dialer, session: &Concrete) -> Callback {
        let boxed = session.boxed();
        self.generation += 1;
        info!(server = dialer.addr(), protocol = %boxed.protocol(), generation = self.generation, "connected");
        self.session.send_replace(Some(boxed.clone()));
        self.publish(ReconnectState::Connected {
            server: dialer.addr().to_owned(),
            remote: boxed.remote_addr(),
            protocol: boxed.protocol(),
            generation: self.generation,
        });
        // Reap what has finished, so the set holds only what still runs.
        while self.background.try_join_next().is_some() {}
        let (done, finished) = tokio::sync::oneshot::channel();
        let task = tokio::spawn((self.on_session)(boxed));
        // Watched by `hold` through the oneshot; joined (and so awaited at shutdown)
        // through the set.
        self.background.spawn(async move {
            let _ = done.send(task.await);
        });
        Callback { finished }
    }

    /// Stops handing out `session` and closes it.
    async fn retire(&mut self, session: &BoxSession) {
        self.session.send_replace(None);
        session.close().await;
    }
}

/// The callback running on the current session.
struct Callback {
    finished: tokio::sync::oneshot::Receiver<std::result::Result<(), tokio::task::JoinError>>,
}

impl Callback {
    /// Waits until the callback returns or panics. Cancel-safe.
    async fn wait(&mut self) -> std::result::Result<(), tokio::task::JoinError> {
        match (&mut self.finished).await {
            Ok(finished) => finished,
            // The watcher was aborted (shutdown's bound): the callback is gone too.
            Err(_) => Ok(()),
        }
    }
}

/// Drains `session` (the server may open no new streams on it; the open ones finish)
/// for at most `timeout`, then closes it.
async fn drain_and_close(session: Concrete, timeout: Duration) {
    let boxed = session.boxed();
    if tokio::time::timeout(timeout, boxed.drain()).await.is_err() {
        debug!(protocol = %boxed.protocol(), "the replaced session's streams outlived the drain timeout");
    }
    debug!(protocol = %boxed.protocol(), "closing the replaced session");
    boxed.close().await;
}
