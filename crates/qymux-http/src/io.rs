//! The IO type HTTP runs on: a session stream that knows its session.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use qymux_transport::{CloseReason, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::info::SessionInfo;

/// A session stream carrying one HTTP connection, with the [`SessionInfo`] of its
/// session.
///
/// It is both a tokio IO ([`AsyncRead`] / [`AsyncWrite`]) and a hyper IO
/// ([`hyper::rt::Read`] / [`hyper::rt::Write`], and hyper-util's [`Connection`]), so
/// it serves wherever a connection is needed: it is what
/// [`SessionConnector`](crate::SessionConnector) hands to a client (hyper-util's, or
/// tonic's), what [`serve`](crate::serve) serves, and the IO of the axum listener.
///
/// It watches its session: a read or write that is waiting when the session ends fails
/// with the session's close reason, whatever the backend does with its streams then. So
/// an HTTP connection never outlives its session, and no request waits on a session
/// that is gone. The watch costs nothing on the data path (it is polled only while the
/// stream waits).
pub struct SessionIo<T> {
    inner: TokioIo<Watched<T>>,
}

impl<T> SessionIo<T> {
    /// Wraps `stream`, a stream of `session`.
    pub fn new<S: Session<Stream = T>>(stream: T, session: &S) -> Self {
        SessionIo {
            inner: TokioIo::new(Watched {
                stream,
                info: SessionInfo::of(session),
                read_end: SessionEnd::new(session),
                write_end: SessionEnd::new(session),
            }),
        }
    }

    /// What is known about the session.
    pub fn info(&self) -> &SessionInfo {
        &self.inner.inner().info
    }

    /// The stream.
    pub fn get_ref(&self) -> &T {
        &self.inner.inner().stream
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner.inner_mut().stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> T {
        self.inner.into_inner().stream
    }
}

impl<T: Unpin> SessionIo<T> {
    fn watched(&mut self) -> Pin<&mut Watched<T>> {
        Pin::new(self.inner.inner_mut())
    }
}

impl<T> fmt::Debug for SessionIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let watched = self.inner.inner();
        f.debug_struct("SessionIo")
            .field("info", &watched.info)
            .field("ended", &watched.read_end.ended)
            .finish_non_exhaustive()
    }
}

impl<T> Connection for SessionIo<T> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// The stream with its session's end watched.
struct Watched<T> {
    stream: T,
    info: SessionInfo,
    read_end: SessionEnd,
    write_end: SessionEnd,
}

/// Resolves when the session ends. Polled only while the stream itself is waiting, so it
/// costs nothing on the data path. Reading and writing each have one, because a future
/// remembers only the last task that polled it and the two halves may run on two tasks.
struct SessionEnd {
    waiting: Option<Pin<Box<dyn Future<Output = CloseReason> + Send>>>,
    ended: Option<CloseReason>,
}

impl SessionEnd {
    fn new<S: Session>(session: &S) -> Self {
        let session = session.clone();
        SessionEnd {
            waiting: Some(Box::pin(async move { session.closed().await })),
            ended: None,
        }
    }

    /// Turns a `Pending` of the stream into the session's end, once it has ended.
    fn check<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if let Some(waiting) = self.waiting.as_mut()
            && let Poll::Ready(reason) = waiting.as_mut().poll(cx)
        {
            self.waiting = None;
            self.ended = Some(reason);
        }
        match &self.ended {
            Some(reason) => Poll::Ready(Err(reason.to_error().into())),
            None => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => this.read_end.check(cx),
            ready => ready,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_shutdown(cx) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SessionIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.watched().poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SessionIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.watched().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.watched().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.watched().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.watched().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.inner().is_write_vectored()
    }
}

impl<T: AsyncRead + Unpin> Read for SessionIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Write for SessionIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

/// Any tokio IO as a hyper client connection (the proxy's connections to its target).
pub(crate) struct PlainIo<T>(TokioIo<T>);

impl<T> PlainIo<T> {
    pub(crate) fn new(io: T) -> Self {
        PlainIo(TokioIo::new(io))
    }
}

impl<T> Connection for PlainIo<T> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl<T: AsyncRead + Unpin> Read for PlainIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> Write for PlainIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
