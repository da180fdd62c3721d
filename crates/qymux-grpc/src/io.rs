//! The IO type tonic's server runs on: a session stream plus what is known about the
//! session it belongs to.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use qymux_transport::Session;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a gRPC handler knows about the session its call arrived on.
///
/// [`serve`](crate::serve) puts it into every request's extensions:
///
/// ```
/// use qymux_grpc::SessionInfo;
///
/// fn caller(request: &tonic::Request<()>) -> Option<String> {
///     let info = request.extensions().get::<SessionInfo>()?;
///     Some(format!("{} peer at {}", info.protocol, info.remote_addr))
/// }
/// ```
///
/// The addresses are also available the usual tonic way, through
/// [`tonic::Request::remote_addr`] and [`tonic::Request::local_addr`]. It is the same
/// type as `qymux_http::SessionInfo`, which HTTP handlers (hyper, axum) see.
pub use qymux_http::SessionInfo;

/// A session stream carrying one HTTP/2 connection, with the [`SessionInfo`] of its
/// session.
///
/// It implements tokio's [`AsyncRead`] / [`AsyncWrite`] and tonic's [`Connected`] (with
/// [`SessionInfo`] as the connect info), which is what
/// [`tonic::transport::Server::serve_with_incoming`] needs; [`incoming`](crate::incoming)
/// yields these.
///
/// It watches the session: a read or write that is waiting when the session ends fails
/// with the session's close reason, whatever the backend does with its streams then. So
/// an HTTP/2 connection never outlives its session, and no call waits on a session that
/// is gone. (It is [`qymux_http::SessionIo`], which the connections of a
/// [`channel`](crate::channel) are, plus tonic's `Connected`.)
pub struct SessionIo<T> {
    inner: qymux_http::SessionIo<T>,
}

impl<T> fmt::Debug for SessionIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T> SessionIo<T> {
    /// Wraps `stream`, a stream of `session`.
    pub fn new<S: Session<Stream = T>>(stream: T, session: &S) -> Self {
        SessionIo {
            inner: qymux_http::SessionIo::new(stream, session),
        }
    }

    /// What is known about the session.
    pub fn info(&self) -> &SessionInfo {
        self.inner.info()
    }

    /// The stream.
    pub fn get_ref(&self) -> &T {
        self.inner.get_ref()
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut()
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T> Connected for SessionIo<T> {
    type ConnectInfo = SessionInfo;

    fn connect_info(&self) -> SessionInfo {
        self.inner.info().clone()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SessionIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.inner), cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SessionIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.inner), cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write_vectored(Pin::new(&mut self.inner), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        AsyncWrite::is_write_vectored(&self.inner)
    }
}
