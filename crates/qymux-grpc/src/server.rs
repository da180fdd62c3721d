//! gRPC servers on a session: tonic serving the streams the session accepts.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::Stream;
use qymux_transport::{CloseReason, Error, Session};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tonic::body::Body;
use tonic::transport::Server;
use tonic::transport::server::TcpConnectInfo;
use tower::{BoxError, Layer, Service};

use crate::io::{SessionInfo, SessionIo};

/// The streams a session accepts, as [`SessionIo`]s for
/// [`tonic::transport::Server::serve_with_incoming`].
///
/// Made by [`incoming`]. After the session ends it yields the error that ended it, once,
/// and then ends.
pub struct Incoming<T> {
    inner: qymux_transport::Incoming<SessionIo<T>>,
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl<T> Stream for Incoming<T> {
    type Item = Result<SessionIo<T>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Accepts the streams `session`'s peer opens, each wrapped with the session's
/// [`SessionInfo`]: the incoming connections of a tonic server run by hand.
///
/// [`serve`] and [`serve_with`] do this for you (and also make
/// [`tonic::Request::remote_addr`] work).
pub fn incoming<S: Session>(session: S) -> Incoming<S::Stream> {
    let accepted = session.incoming();
    Incoming {
        inner: accepted.map(move |stream| SessionIo::new(stream, &session)),
    }
}

/// Why serving stopped, when it was not [`ServeHandle::shutdown`].
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The session ended (closed by either side, or failed); its close reason says which.
    /// Calls in flight on it were cut off.
    #[error("the session ended: {0}")]
    SessionClosed(CloseReason),
    /// tonic's server failed.
    #[error("the gRPC server failed")]
    Server(#[source] tonic::transport::Error),
    /// The serving task panicked or was cancelled (its runtime shut down).
    #[error("the gRPC serving task failed")]
    Task(#[source] JoinError),
}

impl ServeError {
    /// The session's close reason, when serving stopped because the session ended.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match self {
            ServeError::SessionClosed(reason) => Some(reason),
            _ => None,
        }
    }
}

/// A gRPC server running on a session, made by [`serve`] or [`serve_with`].
///
/// Await it to learn when and why serving stopped: `Ok(())` after
/// [`shutdown`](ServeHandle::shutdown), otherwise a [`ServeError`] — typically
/// [`ServeError::SessionClosed`] with the session's [`CloseReason`].
///
/// Dropping the handle does not stop the server: it keeps serving until the session ends.
#[must_use = "dropping a ServeHandle detaches the server; keep it to shut down or learn why it stopped"]
pub struct ServeHandle {
    task: JoinHandle<Result<(), ServeError>>,
    shutdown: watch::Sender<bool>,
}

impl fmt::Debug for ServeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeHandle")
            .field("finished", &self.task.is_finished())
            .field("shutdown_requested", &*self.shutdown.borrow())
            .finish()
    }
}

impl ServeHandle {
    /// Stops serving gracefully: no more streams are accepted, every HTTP/2 connection is
    /// sent `GOAWAY`, and calls in flight may finish. The handle resolves to `Ok(())`
    /// once they have. The session itself stays open; streams its peer opens from now on
    /// are not accepted by this server.
    ///
    /// A call that never finishes holds the shutdown up; to cut calls off, close the
    /// session (perhaps after a `tokio::time::timeout` on the handle). Calling it again
    /// is harmless.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether serving has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Future for ServeHandle {
    type Output = Result<(), ServeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|joined| joined.unwrap_or_else(|err| Err(ServeError::Task(err))))
    }
}

/// Serves `service` — a generated server such as `EchoServer::new(..)`, tonic's
/// `Routes` for several (`tonic::service::Routes`, with tonic's `router` feature), or an
/// axum `Router` — on every stream that `session`'s peer opens, with tonic's default
/// server settings.
///
/// Each accepted stream carries one HTTP/2 connection. Handlers find the session's
/// [`SessionInfo`] in the request's extensions, and its addresses through
/// [`tonic::Request::remote_addr`] / [`local_addr`](tonic::Request::local_addr).
///
/// Serving takes every stream the peer opens on this session, so the peer should use
/// the session for gRPC only (or a separate session for anything else).
///
/// Must be called within a tokio runtime; the server runs on a task of its own.
pub fn serve<S, Svc, ResBody>(session: S, service: Svc) -> ServeHandle
where
    S: Session,
    Svc: Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    Svc::Future: Send + 'static,
    Svc::Error: Into<BoxError> + Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    serve_with(session, Server::builder(), service)
}

/// Like [`serve`], with a tonic [`Server`] configured by hand: HTTP/2 settings, a
/// timeout or concurrency limit per connection, tower layers, ...
///
/// TLS and TCP settings of the builder do not apply: the session provides the transport.
///
/// ```no_run
/// # fn f(session: qymux_transport::BoxSession, routes: tonic::service::Routes) {
/// use std::time::Duration;
/// use tonic::transport::Server;
///
/// let server = Server::builder()
///     .timeout(Duration::from_secs(30))
///     .concurrency_limit_per_connection(256);
/// let handle = qymux_grpc::serve_with(session, server, routes);
/// # drop(handle);
/// # }
/// ```
pub fn serve_with<S, L, Svc, ResBody>(session: S, server: Server<L>, service: Svc) -> ServeHandle
where
    S: Session,
    L: Layer<AddTcpConnectInfo<Svc>> + Send + 'static,
    L::Service:
        Service<http::Request<Body>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<http::Request<Body>>>::Future: Send,
    <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError> + Send + 'static,
    Svc: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (shutdown, mut shutdown_rx) = watch::channel(false);
    let requested = shutdown.subscribe();
    // Remembers the accept error that ended `incoming`, in case the session has no close
    // reason to show for it.
    let ended_by: Arc<Mutex<Option<Error>>> = Arc::default();
    let incoming = {
        let ended_by = ended_by.clone();
        incoming(session.clone()).inspect(move |item| {
            if let Err(err) = item {
                tracing::debug!(error = %err, "the session ended; gRPC serving stops");
                *ended_by.lock().expect("not poisoned") = Some(err.clone());
            }
        })
    };
    let signal = async move {
        // A dropped handle detaches the server: only an explicit shutdown stops it.
        if shutdown_rx.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(AddTcpConnectInfo::new(service), incoming, signal)
            .await
            .map_err(ServeError::Server)?;
        if *requested.borrow() {
            return Ok(());
        }
        let reason = session.close_reason().unwrap_or_else(|| {
            let err = ended_by.lock().expect("not poisoned").take();
            CloseReason::Failed(err.unwrap_or(Error::Closed))
        });
        Err(ServeError::SessionClosed(reason))
    });
    ServeHandle { task, shutdown }
}

/// Wraps a service so that [`tonic::Request::remote_addr`] and
/// [`local_addr`](tonic::Request::local_addr) return the session's addresses: it copies
/// them from the request's [`SessionInfo`] into the [`TcpConnectInfo`] that tonic reads.
///
/// [`serve`] and [`serve_with`] apply it; it is public only because it appears in
/// [`serve_with`]'s bounds.
#[derive(Debug, Clone)]
pub struct AddTcpConnectInfo<S> {
    inner: S,
}

impl<S> AddTcpConnectInfo<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        AddTcpConnectInfo { inner }
    }
}

impl<S, B> Service<http::Request<B>> for AddTcpConnectInfo<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        if let Some(info) = request.extensions().get::<SessionInfo>() {
            let addrs = TcpConnectInfo {
                local_addr: Some(info.local_addr),
                remote_addr: Some(info.remote_addr),
            };
            request.extensions_mut().insert(addrs);
        }
        self.inner.call(request)
    }
}
