//! A yamux stream as a Qymux [`Stream`](qymux_transport::Stream).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use qymux_transport::{CloseReason, Error};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

use crate::session::{Handle, Shared};

type ReasonFuture = Pin<Box<dyn Future<Output = CloseReason> + Send>>;

/// One stream of a TCP [`Session`](crate::Session).
///
/// A read returns EOF only after the peer finished its side (yamux FIN); a reset gives
/// [`Error::StreamReset`] and a lost session its close reason, as `io::Error`s that
/// carry the Qymux [`Error`].
pub struct Stream {
    inner: Option<Compat<yamux::Stream>>,
    id: u32,
    shared: Arc<Shared>,
    /// Keeps the session alive while the application holds the stream.
    handle: Option<Arc<Handle>>,
    reason: Option<ReasonFuture>,
    /// Our side was finished with `shutdown`.
    finished: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("aborted", &self.inner.is_none())
            .finish()
    }
}

impl Stream {
    /// Wraps a yamux stream; the caller has counted it in `shared.streams_open`.
    pub(crate) fn new(inner: yamux::Stream, shared: Arc<Shared>) -> Self {
        let id = inner.id().val();
        shared.wire.register(id);
        Self {
            inner: Some(inner.compat()),
            id,
            shared,
            handle: None,
            reason: None,
            finished: false,
        }
    }

    pub(crate) fn attach(&mut self, handle: Arc<Handle>) {
        self.handle = Some(handle);
    }

    /// The yamux stream id (odd for streams the dialer opened, even for the listener's).
    pub fn stream_id(&self) -> u32 {
        self.id
    }

    /// Why a read saw EOF or a write failed, as the peer and the session tell it; `None`
    /// when the peer really finished its side.
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<Option<Error>> {
        let end = self.shared.wire.peer_end(self.id);
        if end.rst {
            return Poll::Ready(Some(Error::StreamReset));
        }
        if end.fin {
            return Poll::Ready(None);
        }
        // Neither FIN nor RST: the connection ended. The driver records why right after
        // the yamux crate closed the streams, so wait for that.
        if let Some(reason) = self.shared.close_reason() {
            return Poll::Ready(Some(reason.to_error()));
        }
        let shared = self.shared.clone();
        let fut = self
            .reason
            .get_or_insert_with(|| Box::pin(async move { shared.closed().await }));
        let reason = ready!(fut.as_mut().poll(cx));
        Poll::Ready(Some(reason.to_error()))
    }

    /// For an operation the yamux crate left pending: fails it once the session has ended.
    /// The crate wakes waiting readers and writers when the peer ends the connection, but
    /// not when this side closes it.
    fn poll_session_end<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if let Some(reason) = self.shared.close_reason() {
            return Poll::Ready(Err(reason.to_error().into()));
        }
        let shared = self.shared.clone();
        let fut = self
            .reason
            .get_or_insert_with(|| Box::pin(async move { shared.closed().await }));
        match fut.as_mut().poll(cx) {
            Poll::Ready(reason) => Poll::Ready(Err(reason.to_error().into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn aborted() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "stream was aborted locally")
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Stream::aborted()));
        };
        let before = buf.filled().len();
        match Pin::new(inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return this.explain_error(cx, e).map(Err),
            Poll::Pending => return this.poll_session_end(cx),
        }
        if buf.filled().len() > before || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(this.poll_failure(cx)) {
            None => Poll::Ready(Ok(())),
            Some(err) => Poll::Ready(Err(err.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Stream::aborted()));
        };
        match Pin::new(inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n)),
            Poll::Ready(Err(e)) => this.explain_error(cx, e).map(Err),
            Poll::Pending => this.poll_session_end(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Stream::aborted()));
        };
        match ready!(Pin::new(inner).poll_flush(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => this.explain_error(cx, e).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(Stream::aborted()));
        };
        match ready!(Pin::new(inner).poll_shutdown(cx)) {
            Ok(()) => {
                this.finished = true;
                Poll::Ready(Ok(()))
            }
            Err(e) => this.explain_error(cx, e).map(Err),
        }
    }
}

impl Stream {
    /// The yamux crate fails reads and writes with a bare "connection is closed"; say
    /// whether the peer reset the stream or the session ended, and why.
    ///
    /// When neither we finished our side nor the peer reset the stream, that error means
    /// the connection is going down, and the driver records why right after: wait for it
    /// (`Pending`, woken when the reason is set) rather than pass on an unexplained error.
    fn explain_error(&mut self, cx: &mut Context<'_>, err: io::Error) -> Poll<io::Error> {
        if self.shared.wire.peer_end(self.id).rst {
            return Poll::Ready(Error::StreamReset.into());
        }
        if let Some(reason) = self.shared.close_reason() {
            return Poll::Ready(reason.to_error().into());
        }
        if self.finished {
            // Writing after our own shutdown: the caller's mistake, reported as it is.
            return Poll::Ready(err);
        }
        match self.poll_session_end::<()>(cx) {
            Poll::Ready(Err(explained)) => Poll::Ready(explained),
            _ => Poll::Pending,
        }
    }
}

impl qymux_transport::Stream for Stream {
    fn id(&self) -> u64 {
        u64::from(self.id)
    }

    fn abort(&mut self) {
        self.reset();
    }
}

impl Stream {
    /// Drops the yamux stream so that the peer sees RST unless both sides had finished.
    fn reset(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Unless the peer reset it already, dropping the yamux stream makes the crate send
        // RST, or FIN if the peer had finished its side; the wire writer makes that FIN a
        // RST. Mark it before the drop: the driver may write the frame at once.
        if !self.finished && !self.shared.wire.peer_end(self.id).rst {
            self.shared.wire.mark_aborted(self.id);
        }
        drop(inner);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reset();
        self.shared.wire.unregister(self.id);
        self.shared.streams_open.fetch_sub(1, Ordering::AcqRel);
    }
}
