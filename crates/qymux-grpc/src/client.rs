//! gRPC clients over a session: a tonic [`Channel`] whose connections are session streams.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use qymux_transport::{CloseReason, Error, Session};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Status, TimeoutExpired};
use tower::{BoxError, Service};

use qymux_http::SessionConnector;

/// The default interval between HTTP/2 keep-alive pings while calls are in flight.
///
/// Six minutes, on purpose: gRPC servers count pings that come more often than every
/// 5 minutes (grpc-go's `MinTime`, gRPC C-core's
/// `GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS`, grpc-java's
/// `permitKeepAliveTime`) and answer the third with `GOAWAY ENHANCE_YOUR_CALM`
/// ("too_many_pings"), which kills every call on the connection. A dead peer does not
/// need these pings to be found: the session's own keep-alive and dead-peer timeout
/// ([`Options`](qymux_transport::Options)) end the session, and with it every call,
/// within seconds. The pings only catch an HTTP/2 peer that hangs on a live session.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6 * 60);

/// The default bound on a ping's answer before the connection counts as dead.
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The default bound on opening the stream that carries a new HTTP/2 connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The URI that requests carry by default (`:scheme` and `:authority`); nothing is
/// dialed with it.
const DEFAULT_ORIGIN: &str = "http://qymux";

/// Makes a [`SessionChannel`] (a tonic [`Channel`]) over `session` with the default
/// settings of [`ChannelBuilder`].
///
/// Every HTTP/2 connection of the channel is a new stream on the session, opened when the
/// first call needs it (the channel is lazy) and again after a connection is lost. Hand
/// the channel to any generated client, on either side of the session: the server can
/// call the agent (the usual reverse direction), or the agent the server.
///
/// Once the session has ended, every call fails at once with
/// [`Code::Unavailable`](tonic::Code::Unavailable) and the session's close reason as its
/// message (say, "session closed by peer"); calls in flight when it ends fail the same
/// way, promptly. Nothing is retried and nothing waits for a session that is gone.
///
/// A call whose deadline expires fails with
/// [`Code::DeadlineExceeded`](tonic::Code::DeadlineExceeded), as gRPC specifies
/// (tonic's own channel says `Cancelled`); see [`SessionChannel`].
///
/// Must be called within a tokio runtime.
pub fn channel<S: Session>(session: S) -> SessionChannel {
    ChannelBuilder::new().connect(session)
}

/// Settings for a [`Channel`] over a session.
///
/// ```
/// use std::time::Duration;
/// use qymux_grpc::ChannelBuilder;
///
/// let builder = ChannelBuilder::new()
///     .timeout(Duration::from_secs(30))
///     .keep_alive_interval(None)
///     // Anything else tonic's `Endpoint` offers:
///     .endpoint(|e| e.initial_stream_window_size(4 << 20));
/// # let _ = builder;
/// ```
#[derive(Debug, Clone)]
pub struct ChannelBuilder {
    endpoint: Endpoint,
    keep_alive_interval: Option<Duration>,
    keep_alive_timeout: Duration,
    connect_timeout: Option<Duration>,
}

impl Default for ChannelBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelBuilder {
    /// The defaults: HTTP/2 keep-alive pings every [`DEFAULT_KEEP_ALIVE_INTERVAL`] while
    /// calls are in flight and never while idle (`keep_alive_while_idle(false)`), answered
    /// within [`DEFAULT_KEEP_ALIVE_TIMEOUT`]; stream opens bounded by
    /// [`DEFAULT_CONNECT_TIMEOUT`]; no default deadline on calls; requests carry the
    /// origin `http://qymux`.
    pub fn new() -> Self {
        ChannelBuilder {
            endpoint: Endpoint::from_static(DEFAULT_ORIGIN).keep_alive_while_idle(false),
            keep_alive_interval: Some(DEFAULT_KEEP_ALIVE_INTERVAL),
            keep_alive_timeout: DEFAULT_KEEP_ALIVE_TIMEOUT,
            connect_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
        }
    }

    /// A deadline for every call that does not set its own (tonic sends it as
    /// `grpc-timeout`; the call fails with `DeadlineExceeded` when it runs out).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.endpoint = self.endpoint.timeout(timeout);
        self
    }

    /// How long opening the stream for a new HTTP/2 connection may take; `None` for no
    /// bound.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The interval between HTTP/2 keep-alive pings while calls are in flight; `None`
    /// sends none. Keep it at 5 minutes or more when the peer may be a gRPC server that
    /// polices pings (grpc-go, gRPC C-core, grpc-java): see
    /// [`DEFAULT_KEEP_ALIVE_INTERVAL`]. A tonic / hyper server does not police them.
    pub fn keep_alive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive_interval = interval;
        self
    }

    /// How long to wait for the answer to a keep-alive ping before the HTTP/2 connection
    /// counts as dead and its calls fail.
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.keep_alive_timeout = timeout;
        self
    }

    /// The URI requests carry as `:scheme` and `:authority` (by default `http://qymux`).
    /// Only the peer's routing sees it; nothing is dialed.
    pub fn origin(mut self, origin: Uri) -> Self {
        self.endpoint = self.endpoint.origin(origin);
        self
    }

    /// Changes any other setting of tonic's [`Endpoint`] (window sizes, concurrency
    /// limit, user agent, ...). TLS settings do not apply (the session is already
    /// encrypted), nor do TCP settings; keep-alive and connect timeout are set with this
    /// builder's own methods, which take precedence.
    pub fn endpoint(mut self, configure: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        self.endpoint = configure(self.endpoint);
        self
    }

    /// Makes the channel: lazy, so nothing happens on the session until the first call.
    ///
    /// Must be called within a tokio runtime.
    pub fn connect<S: Session>(&self, session: S) -> SessionChannel {
        let mut endpoint = self
            .endpoint
            .clone()
            .keep_alive_timeout(self.keep_alive_timeout);
        if let Some(interval) = self.keep_alive_interval {
            endpoint = endpoint.http2_keep_alive_interval(interval);
        }
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        let watched = session.clone();
        SessionChannel {
            inner: endpoint.connect_with_connector_lazy(SessionConnector::new(session)),
            session_end: Arc::new(move || watched.close_reason()),
        }
    }
}

/// A tonic [`Channel`] over a session, made by [`channel`] or [`ChannelBuilder`]: hand it
/// to a generated client (`EchoClient::new(channel)`). Cheap to clone; clones share the
/// connection.
///
/// It is the tonic channel (available with [`into_inner`](SessionChannel::into_inner))
/// with gRPC's status codes where tonic's differ:
///
/// - a call whose deadline expires — [`tonic::Request::set_timeout`] or
///   [`ChannelBuilder::timeout`] — fails with
///   [`Code::DeadlineExceeded`](tonic::Code::DeadlineExceeded), where tonic says
///   `Cancelled` ("Timeout expired"), whether the client's timer runs out first or the
///   tonic server's (which answers `Cancelled` too);
/// - a call cut off because the session ended fails with
///   [`Code::Unavailable`](tonic::Code::Unavailable) and the session's close reason as
///   message (the original error stays in the source chain), where tonic says `Unknown`
///   ("transport error") or `Cancelled` ("connection closed"), depending on timing.
#[derive(Clone)]
pub struct SessionChannel {
    inner: Channel,
    session_end: SessionEnd,
}

/// Why the channel's session ended, if it has.
type SessionEnd = Arc<dyn Fn() -> Option<CloseReason> + Send + Sync>;

impl fmt::Debug for SessionChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionChannel")
            .field("session_end", &(self.session_end)())
            .finish_non_exhaustive()
    }
}

impl SessionChannel {
    /// The tonic channel underneath, with tonic's status codes.
    pub fn into_inner(self) -> Channel {
        self.inner
    }

    /// The tonic channel underneath.
    pub fn get_ref(&self) -> &Channel {
        &self.inner
    }
}

impl From<SessionChannel> for Channel {
    fn from(channel: SessionChannel) -> Channel {
        channel.inner
    }
}

impl Service<http::Request<Body>> for SessionChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        ResponseFuture {
            has_deadline: request.headers().contains_key(GRPC_TIMEOUT),
            inner: Service::call(&mut self.inner, request),
            session_end: self.session_end.clone(),
        }
    }
}

/// The response of a [`SessionChannel`] call.
pub struct ResponseFuture {
    inner: tonic::transport::channel::ResponseFuture,
    session_end: SessionEnd,
    has_deadline: bool,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(mut response)) => {
                if this.has_deadline {
                    server_timeout_is_deadline_exceeded(response.headers_mut());
                }
                let session_end = this.session_end.clone();
                Poll::Ready(Ok(response.map(|body| {
                    Body::new(ResponseBody {
                        inner: body,
                        session_end,
                    })
                })))
            }
            Poll::Ready(Err(err)) => {
                let status = if caused_by_timeout(&err) {
                    Some(Status::deadline_exceeded("the call's deadline expired"))
                } else {
                    session_ended(&this.session_end, &err)
                };
                Poll::Ready(Err(match status {
                    Some(mut status) => {
                        status.set_source(Arc::new(err));
                        Box::new(status)
                    }
                    None => err.into(),
                }))
            }
        }
    }
}

/// A response body whose errors say so when the session ended.
struct ResponseBody {
    inner: Body,
    session_end: SessionEnd,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map_err(|err| match session_ended(&this.session_end, &err) {
                Some(mut status) => {
                    status.set_source(Arc::new(err));
                    status
                }
                None => err,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

const GRPC_TIMEOUT: &str = "grpc-timeout";

/// A tonic server whose `grpc-timeout` ran out before the client's own timer answers
/// `Cancelled` ("Timeout expired"); gRPC says `DEADLINE_EXCEEDED`.
fn server_timeout_is_deadline_exceeded(headers: &mut http::HeaderMap) {
    let cancelled = headers.get("grpc-status").is_some_and(|code| code == "1");
    let timeout = headers
        .get("grpc-message")
        .is_some_and(|message| message == "Timeout%20expired" || message == "Timeout expired");
    if cancelled && timeout {
        headers.insert("grpc-status", http::HeaderValue::from_static("4"));
    }
}

fn caused_by_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(err) = cause {
        if err.is::<TimeoutExpired>() {
            return true;
        }
        cause = err.source();
    }
    false
}

/// `Unavailable` with the session's close reason, if the session has ended (or `err`
/// says it did).
fn session_ended(
    session_end: &SessionEnd,
    err: &(dyn std::error::Error + 'static),
) -> Option<Status> {
    let ended = session_end().map(|reason| reason.to_error()).or_else(|| {
        let mut cause = Some(err);
        while let Some(err) = cause {
            // An io::Error's source() skips the error it wraps, so look inside it too.
            let inner = err
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<Error>());
            if let Some(err) = err.downcast_ref::<Error>().or(inner)
                && err.is_session_closed()
            {
                return Some(err.clone());
            }
            cause = err.source();
        }
        None
    })?;
    Some(Status::unavailable(ended.to_string()))
}
