//! A bidirectional QUIC stream as a Qymux [`Stream`](qymux_transport::Stream).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker, ready};

use quinn::{ReadError, VarInt, WriteError};
use qymux_transport::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::STREAM_ABORTED;
use crate::session::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    Open,
    /// `shutdown` sent FIN.
    Finished,
    /// `abort` reset the stream (both directions).
    Aborted,
}

/// One stream of a QUIC [`Session`](crate::Session): one bidirectional QUIC stream,
/// carrying exactly the bytes written to it (no framing of its own).
///
/// A read returns EOF only after the peer finished its side (QUIC FIN); a reset
/// (`RESET_STREAM`, or `STOP_SENDING` for writes) gives [`Error::StreamReset`] and a lost
/// session its close reason, as `io::Error`s that carry the Qymux [`Error`].
///
/// `shutdown` finishes the sending side; the data already written is still delivered
/// (and retransmitted) after the stream is dropped. Dropping a stream whose sending side
/// was not shut down aborts it, like [`qymux_transport::Stream::abort`]: the peer gets an
/// error, not a truncated stream that looks complete. (quinn on its own would finish a
/// dropped stream.)
pub struct Stream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    shared: Arc<Shared>,
    sending: Sending,
    /// The peer's FIN was read.
    read_eof: bool,
    outbound: bool,
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.stream_id())
            .field("sending", &self.sending)
            .field("read_eof", &self.read_eof)
            .finish()
    }
}

impl Stream {
    /// Wraps a QUIC stream; the caller has counted it in `shared.streams_open` (and, if
    /// `outbound`, in `shared.outbound_open`).
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        shared: Arc<Shared>,
        outbound: bool,
    ) -> Self {
        Self {
            send,
            recv,
            shared,
            sending: Sending::Open,
            read_eof: false,
            outbound,
        }
    }

    /// Makes the stream known to the peer now. quinn announces a stream only with its
    /// first `STREAM` frame; an empty write queues a `STREAM` frame of length zero (legal
    /// in QUIC, retransmitted if lost), which opens the stream on the peer without adding
    /// a byte to its content.
    pub(crate) async fn announce(&mut self) -> Result<()> {
        match self.send.write(&[]).await {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::io(self.write_error(e))),
        }
    }

    /// The QUIC stream id (bit 0: 0 for streams the dialer opened, 1 for the listener's).
    pub fn stream_id(&self) -> u64 {
        VarInt::from(self.send.id()).into_inner()
    }

    fn aborted() -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, "stream was aborted locally")
    }

    fn read_error(&self, err: ReadError) -> io::Error {
        match err {
            ReadError::Reset(_) => Error::StreamReset.into(),
            ReadError::ConnectionLost(e) => self.shared.error_for(&e).into(),
            ReadError::ClosedStream => Self::aborted(),
            other => Error::Protocol(format!("QUIC stream: {other}")).into(),
        }
    }

    fn write_error(&self, err: WriteError) -> io::Error {
        match err {
            WriteError::Stopped(_) => Error::StreamReset.into(),
            WriteError::ConnectionLost(e) => self.shared.error_for(&e).into(),
            WriteError::ClosedStream => self.closed_for_writing(),
            other => Error::Protocol(format!("QUIC stream: {other}")).into(),
        }
    }

    fn closed_for_writing(&self) -> io::Error {
        match self.sending {
            Sending::Aborted => Self::aborted(),
            _ => io::Error::new(io::ErrorKind::BrokenPipe, "stream was already shut down"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.sending == Sending::Aborted {
            return Poll::Ready(Err(Self::aborted()));
        }
        let before = buf.filled().len();
        match ready!(this.recv.poll_read_buf(cx, buf)) {
            Ok(()) => {
                let n = buf.filled().len() - before;
                if n == 0 && buf.remaining() > 0 {
                    this.read_eof = true;
                }
                this.shared
                    .bytes_in
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(this.read_error(e))),
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
        if this.sending != Sending::Open {
            return Poll::Ready(Err(this.closed_for_writing()));
        }
        if buf.is_empty() {
            // quinn would queue an empty STREAM frame; nothing to do.
            return Poll::Ready(Ok(0));
        }
        match ready!(Pin::new(&mut this.send).poll_write(cx, buf)) {
            Ok(n) => {
                this.shared
                    .bytes_out
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(this.write_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // quinn sends what was written as soon as flow and congestion control allow.
        match self.sending {
            Sending::Aborted => Poll::Ready(Err(Self::aborted())),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.sending {
            Sending::Aborted => return Poll::Ready(Err(Self::aborted())),
            Sending::Finished => return Poll::Ready(Ok(())),
            Sending::Open => {}
        }
        if let Some(reason) = this.shared.close_reason() {
            return Poll::Ready(Err(reason.to_error().into()));
        }
        // Resolves once the peer acknowledged everything up to FIN, or stopped the
        // stream, or the connection ended.
        let mut acked = Box::pin(this.send.stopped());
        if let Poll::Ready(Ok(Some(_))) =
            acked.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        {
            // The peer already sent STOP_SENDING: it will not read what we wrote.
            return Poll::Ready(Err(Error::StreamReset.into()));
        }
        if this.send.finish().is_err() {
            return Poll::Ready(Err(this.closed_for_writing()));
        }
        this.sending = Sending::Finished;
        this.shared.track_finishing(Box::pin(async move {
            let _ = acked.await;
        }));
        Poll::Ready(Ok(()))
    }
}

impl qymux_transport::Stream for Stream {
    fn id(&self) -> u64 {
        self.stream_id()
    }

    fn abort(&mut self) {
        if self.sending == Sending::Aborted {
            return;
        }
        self.sending = Sending::Aborted;
        let _ = self.send.reset(VarInt::from_u32(STREAM_ABORTED));
        let _ = self.recv.stop(VarInt::from_u32(STREAM_ABORTED));
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        match self.sending {
            // Not shut down: abort, so the peer cannot mistake it for a complete stream
            // (quinn's own drop would send FIN).
            Sending::Open => qymux_transport::Stream::abort(self),
            // Keep delivering what was written; only refuse further data from the peer.
            Sending::Finished if !self.read_eof => {
                let _ = self.recv.stop(VarInt::from_u32(STREAM_ABORTED));
            }
            _ => {}
        }
        if self.outbound {
            self.shared.outbound_open.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.release_stream();
    }
}
