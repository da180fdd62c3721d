//! An HTTP client whose connections are streams on a session.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::body::Body;
use hyper_util::client::legacy::{Builder, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use qymux_transport::{Error, Session};

use crate::io::SessionIo;

/// How long an idle pooled connection (an open stream) is kept by [`client_builder`].
///
/// Shorter than the 30 s after which [`serve_proxy`](crate::serve_proxy) closes a
/// connection that sends no request, so the client retires a connection before the
/// server does and a request never races the server's close.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// A connector whose every connection is a new stream on a session: a
/// [`tower::Service<Uri>`](tower::Service), so any client that takes a connector runs
/// over the session.
///
/// - hyper-util's [`Client`](hyper_util::client::legacy::Client):
///   `client_builder().build(SessionConnector::new(session))`, which is what [`client`]
///   and [`http2_client`] do;
/// - tonic: `Endpoint::connect_with_connector(SessionConnector::new(session))`, which is
///   what `qymux-grpc`'s channel does.
///
/// The URI is not dialed: whatever host a request names, its connection is a stream
/// opened with [`Session::open`], and it reaches whatever the peer serves on the streams
/// it accepts (for example [`serve`](crate::serve), [`serve_proxy`](crate::serve_proxy)
/// or an axum app). The request's authority still travels as its `Host` header
/// (`:authority` with HTTP/2), and a pooling client keeps one pool per scheme and
/// authority.
///
/// Each connection is a [`SessionIo`], which fails a waiting read or write with the
/// session's close reason once the session has ended; once it has, opening fails at
/// once with that reason. The session is already encrypted, so the connector never adds
/// TLS, also for `https://` URIs.
///
/// ```
/// # fn f(session: qymux_transport::BoxSession) {
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use qymux_http::SessionConnector;
///
/// let client = qymux_http::client_builder()
///     .build::<_, Empty<Bytes>>(SessionConnector::new(session));
/// # drop(client);
/// # }
/// ```
#[derive(Clone)]
pub struct SessionConnector<S> {
    session: S,
}

impl<S: Session> SessionConnector<S> {
    /// A connector opening its connections on `session`.
    pub fn new(session: S) -> Self {
        Self { session }
    }

    /// The session connections are opened on.
    pub fn session(&self) -> &S {
        &self.session
    }
}

impl<S: Session> fmt::Debug for SessionConnector<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConnector")
            .field("protocol", &self.session.protocol())
            .field("remote_addr", &self.session.remote_addr())
            .finish()
    }
}

/// The future of [`SessionConnector`]'s `call`: opening one stream.
pub struct Connecting<T> {
    inner: Pin<Box<dyn Future<Output = Result<SessionIo<T>, Error>> + Send>>,
}

impl<T> fmt::Debug for Connecting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting").finish_non_exhaustive()
    }
}

impl<T> Future for Connecting<T> {
    type Output = Result<SessionIo<T>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S: Session> tower::Service<Uri> for SessionConnector<S> {
    type Response = SessionIo<S::Stream>;
    type Error = Error;
    type Future = Connecting<S::Stream>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Opening is cheap and bounded by the session; a closed session fails the open.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let session = self.session.clone();
        Connecting {
            inner: Box::pin(async move {
                match session.open().await {
                    Ok(stream) => {
                        tracing::trace!(%uri, protocol = %session.protocol(), "opened a stream for HTTP");
                        Ok(SessionIo::new(stream, &session))
                    }
                    Err(err) => {
                        tracing::debug!(%uri, error = %err, "cannot open a stream for an HTTP connection");
                        Err(err)
                    }
                }
            }),
        }
    }
}

/// A hyper-util client builder set up for sessions: tokio executor and timer, and
/// [`POOL_IDLE_TIMEOUT`].
///
/// Change what you need, then `build(SessionConnector::new(session))`; for example
/// `.http2_only(true)` speaks HTTP/2 with prior knowledge, as [`http2_client`] does.
pub fn client_builder() -> Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT);
    builder
}

/// An HTTP/1.1 client whose connections are streams on `session`.
///
/// Requests need an absolute URI (`http://service.internal/path`); its authority is sent
/// as the `Host` header. Responses stream as they arrive, and HTTP/1.1 upgrades work:
/// [`hyper::upgrade::on`] on a `101 Switching Protocols` response gives the raw stream.
///
/// Each HTTP/1.1 connection is one stream, and a connection carries one request at a
/// time: concurrent requests use as many streams (kept in the pool for reuse), within
/// the session's stream limit. For many concurrent requests, [`http2_client`] shares
/// one stream.
///
/// `B` is the request body type, for example [`http_body_util::Empty`] or
/// [`http_body_util::Full`] of [`bytes::Bytes`], or a streaming body.
pub fn client<S, B>(session: S) -> Client<SessionConnector<S>, B>
where
    S: Session,
    B: Body + Send,
    B::Data: Send,
{
    client_builder().build(SessionConnector::new(session))
}

/// An HTTP/2 client (prior knowledge, no upgrade dance) whose connections are streams on
/// `session`: all requests share one stream, multiplexed by HTTP/2.
///
/// The peer must speak HTTP/2 on the streams it accepts; [`serve_proxy`](crate::serve_proxy)
/// does (it detects the HTTP/2 preface). HTTP/1.1 upgrades do not exist in HTTP/2.
pub fn http2_client<S, B>(session: S) -> Client<SessionConnector<S>, B>
where
    S: Session,
    B: Body + Send,
    B::Data: Send,
{
    client_builder()
        .http2_only(true)
        .build(SessionConnector::new(session))
}
