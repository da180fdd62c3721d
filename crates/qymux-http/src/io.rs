//! The IO adapter between tokio-style streams and hyper.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// A Qymux stream (or any tokio IO) as a hyper connection.
///
/// It wraps the stream in [`hyper_util::rt::TokioIo`] and adds
/// [`Connection`], which hyper-util's client needs from what a connector returns. It is
/// what [`SessionConnector`](crate::SessionConnector) hands to the client; the inner
/// stream is reachable with [`SessionIo::get_ref`] and [`SessionIo::into_inner`].
#[derive(Debug)]
pub struct SessionIo<T> {
    inner: TokioIo<T>,
}

impl<T> SessionIo<T> {
    /// Wraps `stream`.
    pub fn new(stream: T) -> Self {
        Self {
            inner: TokioIo::new(stream),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        self.inner.inner()
    }

    /// The wrapped stream, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.inner_mut()
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> T {
        self.inner.into_inner()
    }
}

impl<T> Connection for SessionIo<T> {
    fn connected(&self) -> Connected {
        Connected::new()
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
