//! A yamux stream as a Qymux [`Stream`](qymux_transport::Stream).

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::session::Handle;

/// One stream of a TCP [`Session`](crate::Session).
///
/// A read returns EOF only after the peer finished its side (yamux FIN); a reset gives
/// [`Error::StreamReset`](qymux_transport::Error::StreamReset) and a lost session its close reason, as `io::Error`s that
/// carry the Qymux [`Error`](qymux_transport::Error). Reading and writing wake independently, so the halves of a
/// [`tokio::io::split`] stream can live in different tasks. `shutdown` sends one FIN,
/// however often it is called. Dropping the stream (or [`abort`](qymux_transport::Stream::abort))
/// resets it unless both sides had finished, also after this side's own `shutdown`.
pub struct Stream {
    id: u32,
    /// Keeps the session alive while the application holds the stream.
    handle: Arc<Handle>,
    /// Our side was finished with `shutdown`.
    finished: bool,
    aborted: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("finished", &self.finished)
            .field("aborted", &self.aborted)
            .finish()
    }
}

impl Stream {
    /// Wraps a stream the engine has counted as open; its Drop releases it.
    pub(crate) fn new(id: u32, handle: Arc<Handle>) -> Self {
        Self {
            id,
            handle,
            finished: false,
            aborted: false,
        }
    }

    /// The yamux stream id (odd for streams the dialer opened, even for the listener's).
    pub fn stream_id(&self) -> u32 {
        self.id
    }

    fn aborted() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "stream was aborted locally")
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.aborted {
            return Poll::Ready(Err(Stream::aborted()));
        }
        let shared = &self.handle.shared;
        let id = self.id;
        let dst = buf.initialize_unfilled();
        let (read, control) = shared.with_conn(|c| {
            let before = c.control_len();
            let r = c.poll_read(id, cx.waker(), dst, Instant::now());
            (r, c.control_len() > before)
        });
        if control {
            // A window update: the driver sends it at the end of its turn, with those of
            // other streams read meanwhile, in one TLS record. Sent from here, each was a
            // record and a socket write of its own: with 100 streams sinking at once,
            // strace counted 38,000 writev and 152,000 futex calls per run against
            // 31,000 and 73,000 this way, and the rate rose.
            shared.wake_driver();
        }
        match read {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.aborted {
            return Poll::Ready(Err(Stream::aborted()));
        }
        if self.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown: this side of the stream is finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.handle
            .shared
            .poll_write_frame(self.id, cx, buf)
            .map_err(io::Error::from)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.aborted {
            return Poll::Ready(Err(Stream::aborted()));
        }
        self.handle.shared.poll_flush(cx).map_err(io::Error::from)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.aborted {
            return Poll::Ready(Err(Stream::aborted()));
        }
        if !self.finished {
            let id = self.id;
            self.handle.shared.with_conn(|c| c.shutdown(id))?;
            self.finished = true;
        }
        // The FIN goes out with whatever is still pending, in order.
        self.handle.shared.poll_flush(cx).map_err(io::Error::from)
    }
}

impl qymux_transport::Stream for Stream {
    fn id(&self) -> u64 {
        u64::from(self.id)
    }

    fn abort(&mut self) {
        if !self.aborted {
            self.aborted = true;
            let id = self.id;
            self.handle.shared.with_conn(|c| c.reset(id));
            self.handle.shared.flush_control();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let id = self.id;
        self.handle.shared.with_conn(|c| c.release(id));
        self.handle.shared.flush_control();
    }
}
