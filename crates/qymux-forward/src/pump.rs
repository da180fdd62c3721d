//! Moving bytes between one TCP connection and one stream, both ways, with half-close
//! passed through and errors passed on as resets.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use qymux_transport::{CloseReason, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stats::{Counters, DirectionTrace, Step};

/// Which end of a forwarded connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Tcp,
    Stream,
}

/// What failed while forwarding, on which end.
#[derive(Debug)]
pub(crate) struct PumpError {
    end: End,
    op: &'static str,
    error: io::Error,
}

impl PumpError {
    pub(crate) fn end(&self) -> End {
        self.end
    }

    /// The session ended under a connection still in progress.
    pub(crate) fn session_ended(reason: CloseReason) -> Self {
        PumpError {
            end: End::Stream,
            op: "forwarding over",
            error: reason.to_error().into(),
        }
    }
}

impl fmt::Display for PumpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.end {
            End::Tcp => "the TCP connection",
            End::Stream => "the stream",
        };
        write!(f, "{} {end} failed: {}", self.op, self.error)
    }
}

/// Resets a TCP connection when it is dropped: `SO_LINGER` 0 makes the close send RST,
/// so the peer sees an error rather than a clean end of data.
pub(crate) fn reset_on_close(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// One forwarded connection. Unless [`Conn::finish`]ed after both directions ended
/// cleanly, dropping it (an error, a cancelled task) resets the TCP connection and
/// aborts the stream, so neither side can mistake a failure for the end of data.
pub(crate) struct Conn<T: Stream> {
    tcp: TcpStream,
    stream: T,
    clean: bool,
}

impl<T: Stream> Conn<T> {
    pub(crate) fn new(tcp: TcpStream, stream: T) -> Self {
        Self {
            tcp,
            stream,
            clean: false,
        }
    }

    pub(crate) fn stream_id(&self) -> u64 {
        self.stream.id()
    }

    /// Copies both ways until both directions ended. When one side finishes writing,
    /// the other side's write half is shut down and the other direction goes on. The
    /// first error ends both directions: the caller drops the connection, which resets
    /// both sides.
    pub(crate) async fn pump(
        &mut self,
        buffer: usize,
        counters: &Counters,
    ) -> Result<(), PumpError> {
        let mut up = Pipe::new(buffer, End::Tcp, End::Stream); // TCP -> stream
        let mut down = Pipe::new(buffer, End::Stream, End::Tcp); // stream -> TCP
        poll_fn(|cx| {
            let up_done = up
                .poll_copy(
                    cx,
                    &mut self.tcp,
                    &mut self.stream,
                    &counters.tcp_to_stream,
                    &counters.trace[0],
                )?
                .is_ready();
            let down_done = down
                .poll_copy(
                    cx,
                    &mut self.stream,
                    &mut self.tcp,
                    &counters.stream_to_tcp,
                    &counters.trace[1],
                )?
                .is_ready();
            if up_done && down_done {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Both directions ended cleanly: drop without resetting anything.
    pub(crate) fn finish(mut self) {
        self.clean = true;
    }
}

impl<T: Stream> Drop for Conn<T> {
    fn drop(&mut self) {
        if !self.clean {
            reset_on_close(&self.tcp);
            self.stream.abort();
        }
    }
}

/// One direction of a connection: read into the buffer, write it out, and at EOF flush
/// and shut the writer down.
struct Pipe {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    eof: bool,
    need_flush: bool,
    done: bool,
    reader: End,
    writer: End,
}

impl Pipe {
    fn new(size: usize, reader: End, writer: End) -> Self {
        Self {
            buf: vec![0; size].into_boxed_slice(),
            pos: 0,
            cap: 0,
            eof: false,
            need_flush: false,
            done: false,
            reader,
            writer,
        }
    }

    fn read_error(&self, error: io::Error) -> PumpError {
        PumpError {
            end: self.reader,
            op: "reading from",
            error,
        }
    }

    fn write_error(&self, op: &'static str, error: io::Error) -> PumpError {
        PumpError {
            end: self.writer,
            op,
            error,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        counter: &AtomicU64,
        trace: &DirectionTrace,
    ) -> Poll<Result<(), PumpError>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        trace.polled();
        loop {
            if self.done {
                trace.step(Step::Finished, 0);
                return Poll::Ready(Ok(()));
            }
            if self.pos == self.cap && !self.eof {
                let mut buf = ReadBuf::new(&mut self.buf);
                match Pin::new(&mut *reader).poll_read(cx, &mut buf) {
                    Poll::Pending => {
                        trace.step(Step::ReadPending, 0);
                        // Nothing more to read for now: push out what was written.
                        if self.need_flush {
                            let flushed = Pin::new(&mut *writer).poll_flush(cx);
                            if flushed.is_pending() {
                                trace.step(Step::FlushPending, 0);
                            }
                            ready!(flushed).map_err(|e| self.write_error("flushing", e))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => {
                        trace.step(Step::ReadError, 0);
                        return Poll::Ready(Err(self.read_error(e)));
                    }
                    Poll::Ready(Ok(())) => {
                        let n = buf.filled().len();
                        if n == 0 {
                            trace.step(Step::ReadEof, 0);
                            self.eof = true;
                        } else {
                            trace.step(Step::ReadData, n);
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let in_hand = self.cap - self.pos;
                let written = Pin::new(&mut *writer).poll_write(cx, &self.buf[self.pos..self.cap]);
                trace.step(
                    match written {
                        Poll::Pending => Step::WritePending,
                        Poll::Ready(Ok(_)) => Step::Wrote,
                        Poll::Ready(Err(_)) => Step::WriteError,
                    },
                    in_hand,
                );
                let n = ready!(written).map_err(|e| self.write_error("writing to", e))?;
                if n == 0 {
                    return Poll::Ready(Err(self.write_error(
                        "writing to",
                        io::Error::new(io::ErrorKind::WriteZero, "accepted no bytes"),
                    )));
                }
                self.pos += n;
                self.need_flush = true;
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.eof {
                // The reader finished its side: finish the writer's, passing the
                // half-close on; the other direction keeps going.
                let flushed = Pin::new(&mut *writer).poll_flush(cx);
                if flushed.is_pending() {
                    trace.step(Step::FlushPending, 0);
                }
                ready!(flushed).map_err(|e| self.write_error("flushing", e))?;
                let finished = Pin::new(&mut *writer).poll_shutdown(cx);
                if finished.is_pending() {
                    trace.step(Step::ShutdownPending, 0);
                }
                ready!(finished).map_err(|e| self.write_error("finishing", e))?;
                self.done = true;
            }
        }
    }
}
