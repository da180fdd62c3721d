//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a stable API).
//!
//! They drive the yamux frame adapter (the only code in this crate that parses bytes from
//! the wire) synchronously over in-memory bytes, delivered in pieces of arbitrary sizes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::wire::{WireIo, WireState};

/// The largest DATA body the adapter hands to the yamux crate.
pub const MAX_BODY: u32 = crate::wire::MAX_BODY;

/// The bit that marks the opaque value of our own keep-alive pings; the adapter keeps
/// their answers from the yamux crate.
pub const OWN_PING: u32 = crate::wire::OWN_PING;

/// Bytes from the peer, handed out in pieces; every other poll is `Pending` first.
struct Pieces<'a> {
    input: &'a [u8],
    sizes: &'a [usize],
    turn: usize,
    pending_next: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.pending_next = !this.pending_next;
        if this.pending_next {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let size = piece_size(this.sizes, &mut this.turn);
        let n = size.min(this.input.len()).min(buf.remaining());
        buf.put_slice(&this.input[..n]);
        this.input = &this.input[n..];
        Poll::Ready(Ok(()))
    }
}

/// A socket that takes at most the next piece size per write.
struct Sink<'a> {
    out: Vec<u8>,
    sizes: &'a [usize],
    turn: usize,
}

impl AsyncWrite for Sink<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = piece_size(this.sizes, &mut this.turn).min(buf.len());
        this.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Sink<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The next size from `sizes` (cycled), at least 1.
fn piece_size(sizes: &[usize], turn: &mut usize) -> usize {
    let size = match sizes {
        [] => usize::MAX,
        _ => sizes[*turn % sizes.len()].max(1),
    };
    *turn += 1;
    size
}

/// Feeds `input` (bytes from the peer) through the read side of the frame adapter, in
/// pieces of `piece_sizes` (cycled), reading into buffers of `read_sizes` (cycled), until
/// end of input. Returns the bytes the yamux crate would see.
pub fn read_side(input: &[u8], piece_sizes: &[usize], read_sizes: &[usize]) -> Vec<u8> {
    let peer = Pieces {
        input,
        sizes: piece_sizes,
        turn: 0,
        pending_next: false,
    };
    let mut io = WireIo::new(peer, Arc::new(WireState::new()));
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut turn = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let size = piece_size(read_sizes, &mut turn).min(buf.len());
        let mut rb = ReadBuf::new(&mut buf[..size]);
        match Pin::new(&mut io).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return out,
            Poll::Ready(Ok(())) => out.extend_from_slice(rb.filled()),
            Poll::Ready(Err(e)) => panic!("in-memory reads cannot fail: {e}"),
            // The source wakes itself; poll again.
            Poll::Pending => {}
        }
    }
}

/// Feeds `input` (frames as the yamux crate writes them) through the write side of the
/// frame adapter in writes of `write_sizes` (cycled), onto a socket that accepts
/// `socket_sizes` (cycled) bytes per write. The streams in `aborted` are marked as aborted
/// by the application first. Returns what reaches the socket.
pub fn write_side(
    input: &[u8],
    write_sizes: &[usize],
    socket_sizes: &[usize],
    aborted: &[u32],
) -> Vec<u8> {
    let state = Arc::new(WireState::new());
    for id in aborted {
        state.mark_aborted(*id);
    }
    let sink = Sink {
        out: Vec::new(),
        sizes: socket_sizes,
        turn: 0,
    };
    let mut io = WireIo::new(sink, state);
    let mut cx = Context::from_waker(Waker::noop());
    let mut rest = input;
    let mut turn = 0;
    while !rest.is_empty() {
        let size = piece_size(write_sizes, &mut turn).min(rest.len());
        match Pin::new(&mut io).poll_write(&mut cx, &rest[..size]) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0, "a write of {size} bytes wrote nothing");
                assert!(n <= size, "wrote more than it was given");
                rest = &rest[n..];
            }
            Poll::Ready(Err(e)) => panic!("in-memory writes cannot fail: {e}"),
            Poll::Pending => unreachable!("the in-memory socket is always ready"),
        }
    }
    // Headers without a body wait for the flush, as the yamux crate flushes after writes.
    match Pin::new(&mut io).poll_flush(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => panic!("in-memory writes cannot fail: {e}"),
        Poll::Pending => unreachable!("the in-memory socket is always ready"),
    }
    io.into_inner().out
}
