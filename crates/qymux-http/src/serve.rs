//! Serving any hyper service on the streams a session accepts: the one accept-and-serve
//! path of this crate (the reverse proxy runs on it too).

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use qymux_transport::{CloseReason, Error, Session};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::info::SessionInfo;
use crate::io::SessionIo;

type BoxError = Box<dyn StdError + Send + Sync>;

/// How [`serve_with`] serves: hyper's connection settings and the bound on a graceful
/// shutdown.
///
/// ```
/// use std::time::Duration;
/// use qymux_http::ServeOptions;
///
/// let mut options = ServeOptions::default();
/// options.shutdown_timeout(Some(Duration::from_secs(10)));
/// options.http().http2().max_concurrent_streams(64);
/// ```
#[derive(Debug, Clone)]
pub struct ServeOptions {
    shutdown_timeout: Option<Duration>,
    builder: auto::Builder<TokioExecutor>,
}

impl Default for ServeOptions {
    /// HTTP/1.1 and HTTP/2 (detected per stream from the HTTP/2 preface) with hyper's
    /// defaults and tokio's timer (so HTTP/1.1 connections that send no request headers
    /// within 30 s are closed), and a 5 s shutdown bound.
    fn default() -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        ServeOptions {
            shutdown_timeout: Some(Duration::from_secs(5)),
            builder,
        }
    }
}

impl ServeOptions {
    /// Bound on the graceful part of [`ServeHandle::shutdown`]: requests in flight may
    /// finish within it; connections still open afterwards are cut. `None` waits for
    /// them however long they take. Default 5 s.
    pub fn shutdown_timeout(&mut self, value: Option<Duration>) -> &mut Self {
        self.shutdown_timeout = value;
        self
    }

    /// hyper-util's connection builder, to change HTTP/1.1 and HTTP/2 settings
    /// (`.http1()`, `.http2()`), or to serve only one of them (`http1_only`,
    /// `http2_only`).
    pub fn http(&mut self) -> &mut auto::Builder<TokioExecutor> {
        &mut self.builder
    }
}

/// Why serving stopped (a [`serve`] or a [`serve_proxy`](crate::serve_proxy)).
#[non_exhaustive]
#[derive(Debug, Clone)]
pub enum StopReason {
    /// [`ServeHandle::shutdown`] (or [`ProxyHandle::shutdown`](crate::ProxyHandle::shutdown))
    /// was called.
    Shutdown,
    /// The session ended (closed by either side, or failed).
    SessionClosed(CloseReason),
    /// Accepting a stream failed while the session was still alive.
    AcceptFailed(Error),
    /// The serving task ended without a reason: it panicked, or its runtime shut down.
    Aborted,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Shutdown => f.write_str("shut down"),
            StopReason::SessionClosed(reason) => write!(f, "session {reason}"),
            StopReason::AcceptFailed(err) => write!(f, "accepting a stream failed: {err}"),
            StopReason::Aborted => f.write_str("the serving task ended unexpectedly"),
        }
    }
}

/// Controls a running [`serve`] and tells when and why it stopped.
///
/// Cheap to clone. Dropping every handle does not stop serving: it goes on until
/// [`ServeHandle::shutdown`] or until the session ends.
#[derive(Debug, Clone)]
pub struct ServeHandle {
    shutdown: Arc<watch::Sender<bool>>,
    state: watch::Receiver<Option<StopReason>>,
}

impl ServeHandle {
    /// Stops serving: no more streams are accepted, HTTP/1.1 connections close after
    /// their current request and HTTP/2 ones are sent `GOAWAY`, and requests in flight
    /// get [`ServeOptions::shutdown_timeout`] to finish; then every connection still
    /// open is cut. Connections the service upgraded (WebSocket) are the service's own
    /// and are not cut. Returns at once; [`ServeHandle::stopped`] waits for the end. The
    /// session stays open. Calling it again is harmless.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Waits until serving has stopped, and says why.
    pub async fn stopped(&self) -> StopReason {
        let mut state = self.state.clone();
        match state.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(StopReason::Aborted),
            Err(_) => self.stop_reason().unwrap_or(StopReason::Aborted),
        }
    }

    /// Why serving stopped, or `None` while it goes on.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.state.borrow().clone()
    }
}

/// Serves `service` — any hyper [`Service`], for example
/// [`hyper::service::service_fn`] — on every stream that `session`'s peer opens, with
/// the default [`ServeOptions`].
///
/// - Each stream carries one HTTP connection, HTTP/1.1 or HTTP/2, detected per stream;
///   so a peer's [`client`](crate::client) (HTTP/1.1, a stream per connection) and
///   [`http2_client`](crate::http2_client) (all requests on one stream) both work.
/// - HTTP/1.1 upgrades pass through: the service answers `101 Switching Protocols` and
///   takes the stream with [`hyper::upgrade::on`] on the request.
/// - Every request carries the session's [`SessionInfo`] in its extensions.
/// - It serves until the session ends ([`StopReason::SessionClosed`]; connections fail
///   with the session) or [`ServeHandle::shutdown`] (graceful).
///
/// Serving takes every stream the peer opens (it uses [`Session::incoming`]), so
/// nothing else may accept streams on this session. Must be called within a tokio
/// runtime: it runs on a task of its own.
///
/// ```no_run
/// # async fn f(session: qymux_transport::BoxSession) {
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http_body_util::Full;
///
/// let hello = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
///     let who = req.extensions().get::<qymux_http::SessionInfo>().map(|i| i.remote_addr);
///     let text = format!("hello {who:?}");
///     Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
/// });
/// let serving = qymux_http::serve(session, hello);
/// println!("stopped: {}", serving.stopped().await);
/// # }
/// ```
pub fn serve<S, Svc, B>(session: S, service: Svc) -> ServeHandle
where
    S: Session,
    Svc: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    serve_with(session, service, ServeOptions::default())
}

/// Like [`serve`], with [`ServeOptions`].
pub fn serve_with<S, Svc, B>(session: S, service: Svc, options: ServeOptions) -> ServeHandle
where
    S: Session,
    Svc: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(None);
    tokio::spawn(run(
        session,
        service,
        options,
        shutdown_rx,
        StateGuard(Some(state_tx)),
    ));
    ServeHandle {
        shutdown: Arc::new(shutdown_tx),
        state: state_rx,
    }
}

/// Reports the stop reason; reports [`StopReason::Aborted`] if the task ends without one.
pub(crate) struct StateGuard(pub(crate) Option<watch::Sender<Option<StopReason>>>);

impl StateGuard {
    pub(crate) fn report(mut self, reason: StopReason) {
        if let Some(tx) = self.0.take() {
            tx.send_replace(Some(reason));
        }
    }
}

impl Drop for StateGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            tx.send_replace(Some(StopReason::Aborted));
        }
    }
}

/// The accept loop.
async fn run<S, Svc, B>(
    session: S,
    service: Svc,
    options: ServeOptions,
    mut shutdown: watch::Receiver<bool>,
    state: StateGuard,
) where
    S: Session,
    Svc: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut incoming = session.incoming();

    let reason = loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break StopReason::Shutdown,
            accepted = incoming.next() => match accepted {
                Some(Ok(stream)) => {
                    let io = SessionIo::new(stream, &session);
                    let service = WithInfo {
                        inner: service.clone(),
                        info: io.info().clone(),
                    };
                    let connection = options
                        .builder
                        .serve_connection_with_upgrades(io, service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!("HTTP connection on a session stream ended: {err}");
                        }
                    });
                }
                Some(Err(err)) => {
                    break match session.close_reason() {
                        Some(reason) => StopReason::SessionClosed(reason),
                        None => StopReason::AcceptFailed(err),
                    };
                }
                // `Incoming` yields its error before it ends.
                None => break StopReason::AcceptFailed(Error::Closed),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };

    if matches!(reason, StopReason::Shutdown) {
        let graceful = graceful.shutdown();
        match options.shutdown_timeout {
            None => graceful.await,
            Some(timeout) => {
                if tokio::time::timeout(timeout, graceful).await.is_err() {
                    tracing::debug!(
                        "serve shutdown: connections still open after {timeout:?} are cut"
                    );
                }
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    tracing::debug!("serving on the session stopped: {reason}");
    state.report(reason);
}

/// Puts the session's [`SessionInfo`] into every request's extensions.
#[derive(Clone)]
struct WithInfo<Svc> {
    inner: Svc,
    info: SessionInfo,
}

impl<Svc> Service<Request<Incoming>> for WithInfo<Svc>
where
    Svc: Service<Request<Incoming>>,
{
    type Response = Svc::Response;
    type Error = Svc::Error;
    type Future = Svc::Future;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        self.inner.call(request)
    }
}
