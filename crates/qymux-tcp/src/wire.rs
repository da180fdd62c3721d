//! A read-side view of the yamux frames the peer sends, in front of the `yamux` crate.
//!
//! It does three things the `yamux` crate cannot:
//!
//! - it splits DATA frames over 1 MiB into frames of at most 1 MiB (SYN/ACK on the first
//!   piece, FIN/RST on the last), because the crate rejects larger bodies while a Go peer
//!   sends `min(window, len)` bytes in one frame and the crate's windows grow past 1 MiB;
//! - it records, per stream, whether the peer finished (FIN) or reset (RST) it, because the
//!   crate reports both, and a dead connection, as the same EOF;
//! - it notes when the peer last sent anything, for dead-peer detection, and when its
//!   first frame arrived, which proves the server accepted our TLS handshake;
//! - it keeps the answers to our own keep-alive pings (below) from the yamux crate, which
//!   would take an answer to a ping it did not send as a protocol violation.
//!
//! On the write side it changes two things. When the application aborts a stream that the
//! peer has already finished, the yamux crate closes it with FIN (it picks the frame when a
//! stream is dropped), which the peer would read as a clean end of a truncated reply. The
//! writer turns that FIN into RST. And when the session driver asks for a keep-alive
//! (the crate's own pings are fixed at one per 10 s, and only while there is traffic), it
//! sends a yamux Ping (SYN, stream 0, an opaque value with [`OWN_PING`] set) between two of
//! the crate's frames; any yamux peer answers it with an ACK carrying the same value.
//! Everything else passes through unchanged, but joined: the crate writes a frame's
//! header and body separately, which over TLS makes a 12-byte record and a system call
//! per frame; the writer holds a header back and sends it with its body in one vectored
//! write (see [`WriteState`]).
//!
//! When a write fails because the peer hung up (`EPIPE`, `ECONNRESET`: it closed its
//! socket while we were sending a window update, a ping or stream data), the error is held
//! back and writes are discarded from then on, so that the frames the peer sent before it
//! hung up are still read (the yamux crate writes before it reads, and would otherwise end
//! the session on the write error with the peer's GoAway unread). A peer that closed
//! gracefully sent GoAway first, and the session ends as closed by the peer; if the input
//! ends without a GoAway, reads fail with the held write error, and the session fails with
//! it as before.
//!
//! It also ends the connection when the peer breaks the protocol. The yamux crate answers
//! a violation (a stream id of the wrong parity, a window update that overflows, a first
//! frame larger than the window, ...) with GoAway and an error code, but then keeps reading
//! and even accepts new streams from that peer. Once such a GoAway went out, reads fail
//! with [`Error::Protocol`], which ends the session with that reason and drops the
//! connection, as hashicorp yamux does.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use qymux_transport::Error;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Length of a yamux frame header.
pub(crate) const HEADER_LEN: usize = 12;
/// The largest DATA body the `yamux` crate accepts.
pub(crate) const MAX_BODY: u32 = 1024 * 1024;

pub(crate) const TYPE_DATA: u8 = 0;
pub(crate) const TYPE_WINDOW_UPDATE: u8 = 1;
pub(crate) const TYPE_PING: u8 = 2;
pub(crate) const TYPE_GO_AWAY: u8 = 3;

pub(crate) const FLAG_SYN: u16 = 1;
pub(crate) const FLAG_ACK: u16 = 2;
pub(crate) const FLAG_FIN: u16 = 4;
pub(crate) const FLAG_RST: u16 = 8;

/// Set in the opaque value of our own keep-alive pings. The yamux crate numbers its pings
/// from 0, one per 10 s at most, so it never reaches this bit: an ACK carrying it answers
/// one of ours.
pub(crate) const OWN_PING: u32 = 1 << 31;

/// What the peer said about one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerEnd {
    pub(crate) fin: bool,
    pub(crate) rst: bool,
}

/// State shared between the frame reader, the session driver and the streams.
#[derive(Debug)]
pub(crate) struct WireState {
    base: Instant,
    last_rx_ms: AtomicU64,
    first_frame: AtomicBool,
    first_frame_notify: Notify,
    go_away: Mutex<Option<u32>>,
    streams: Mutex<HashMap<u32, PeerEnd>>,
    /// Streams the application aborted after the peer's FIN: their closing FIN must go
    /// out as RST.
    aborted: Mutex<HashSet<u32>>,
    /// The driver asked for a keep-alive ping.
    ping_wanted: AtomicBool,
    /// Keep-alive pings sent so far (their opaque values count up from [`OWN_PING`]).
    pings_sent: AtomicU32,
}

impl WireState {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_rx_ms: AtomicU64::new(0),
            first_frame: AtomicBool::new(false),
            first_frame_notify: Notify::new(),
            go_away: Mutex::new(None),
            streams: Mutex::new(HashMap::new()),
            aborted: Mutex::new(HashSet::new()),
            ping_wanted: AtomicBool::new(false),
            pings_sent: AtomicU32::new(0),
        }
    }

    /// Asks the writer to send a keep-alive ping at the next frame boundary. The driver
    /// must then poll the connection: the yamux crate flushes on every poll, and the
    /// writer sends the ping from there.
    pub(crate) fn request_ping(&self) {
        self.ping_wanted.store(true, Ordering::Release);
    }

    /// The opaque value of the next keep-alive ping, if one was asked for.
    fn take_ping_request(&self) -> Option<u32> {
        if !self.ping_wanted.swap(false, Ordering::AcqRel) {
            return None;
        }
        let n = self.pings_sent.fetch_add(1, Ordering::Relaxed);
        Some(OWN_PING | (n & !OWN_PING))
    }

    /// Time since the peer last sent a complete frame header (or since the start).
    pub(crate) fn silent_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_rx_ms.load(Ordering::Relaxed)))
    }

    /// Waits until the peer's first frame arrived.
    pub(crate) async fn first_frame(&self) {
        while !self.first_frame.load(Ordering::Acquire) {
            self.first_frame_notify.notified().await;
        }
    }

    /// The GoAway code the peer sent, if any.
    pub(crate) fn go_away(&self) -> Option<u32> {
        *lock(&self.go_away)
    }

    /// Starts tracking a stream (before its SYN is sent, for our own streams).
    pub(crate) fn register(&self, id: u32) {
        lock(&self.streams).entry(id).or_default();
    }

    /// Stops tracking a stream.
    pub(crate) fn unregister(&self, id: u32) {
        lock(&self.streams).remove(&id);
    }

    /// What the peer said about a stream so far.
    pub(crate) fn peer_end(&self, id: u32) -> PeerEnd {
        lock(&self.streams).get(&id).copied().unwrap_or_default()
    }

    /// Marks a stream the application aborts before finishing its side. The yamux crate
    /// then closes it with RST, or with FIN if the peer had finished already; the writer
    /// turns that FIN into RST. Either frame ends the mark.
    pub(crate) fn mark_aborted(&self, id: u32) {
        lock(&self.aborted).insert(id);
    }

    /// Whether `id` was aborted (and forgets it).
    fn take_aborted(&self, id: u32) -> bool {
        let mut aborted = lock(&self.aborted);
        !aborted.is_empty() && aborted.remove(&id)
    }

    fn on_header(&self, kind: u8, flags: u16, stream_id: u32, length: u32) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_rx_ms.store(now, Ordering::Relaxed);
        if !self.first_frame.swap(true, Ordering::AcqRel) {
            self.first_frame_notify.notify_one();
        }
        match kind {
            TYPE_DATA | TYPE_WINDOW_UPDATE if flags & (FLAG_SYN | FLAG_FIN | FLAG_RST) != 0 => {
                let mut streams = lock(&self.streams);
                let entry = if flags & FLAG_SYN != 0 {
                    Some(streams.entry(stream_id).or_default())
                } else {
                    streams.get_mut(&stream_id)
                };
                if let Some(end) = entry {
                    end.fin |= flags & FLAG_FIN != 0;
                    end.rst |= flags & FLAG_RST != 0;
                }
            }
            TYPE_GO_AWAY => *lock(&self.go_away) = Some(length),
            _ => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the plain
    // data inside is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
enum ReadState {
    /// Collecting a frame header from the peer.
    Header {
        buf: [u8; HEADER_LEN],
        filled: usize,
    },
    /// Handing a (possibly rewritten) header to the reader; then `piece` body bytes
    /// follow, and `rest` more in later pieces of a split frame.
    Emit {
        header: [u8; HEADER_LEN],
        pos: usize,
        piece: u32,
        rest: u32,
    },
    /// Passing `piece` body bytes through; `rest` more follow in later pieces.
    Body { piece: u32, rest: u32 },
}

/// How to write the headers of the later pieces of a split DATA frame.
#[derive(Debug, Clone, Copy)]
struct Split {
    version: u8,
    stream_id: u32,
    /// FIN / RST of the original frame: they belong on the last piece only.
    final_flags: u16,
}

/// The connection IO handed to the `yamux` crate: reads are parsed as above, writes
/// are joined frame by frame as described at [`WriteState`].
#[derive(Debug)]
pub(crate) struct WireIo<T> {
    inner: T,
    state: Arc<WireState>,
    read: ReadState,
    split: Option<Split>,
    write: WriteState,
    /// The error code of a GoAway the yamux crate sent because the peer broke the
    /// protocol: reads fail from then on.
    violation: Option<u32>,
    /// A write failed because the peer hung up; writes are discarded since, and the
    /// error is reported by the reader if the input ends without the peer's GoAway.
    hung_up: Option<io::Error>,
}

/// Whether a write error means that the peer closed its end of the connection.
fn is_hang_up(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// A copy of a held write error (`io::Error` is not `Clone`).
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Writes `head` and then `body` to `inner` in one vectored write (one TLS record for a
/// frame header and the start of its body, where two writes would make two), unless the
/// peer hung up: then the bytes are discarded, and the first such error is kept in
/// `hung_up`. Returns how many bytes of the two went out.
fn write_or_discard<T: AsyncWrite + Unpin>(
    inner: &mut T,
    hung_up: &mut Option<io::Error>,
    cx: &mut Context<'_>,
    head: &[u8],
    body: &[u8],
) -> Poll<io::Result<usize>> {
    if hung_up.is_some() {
        return Poll::Ready(Ok(head.len() + body.len()));
    }
    let written = if head.is_empty() {
        Pin::new(inner).poll_write(cx, body)
    } else if body.is_empty() {
        Pin::new(inner).poll_write(cx, head)
    } else {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        Pin::new(inner).poll_write_vectored(cx, &slices)
    };
    Poll::Ready(hold_hang_up(
        hung_up,
        ready!(written),
        head.len() + body.len(),
    ))
}

/// `result` of a write or flush, where a hang-up of the peer becomes `instead` and is kept
/// in `hung_up` (reported by the reader later, see the module docs).
fn hold_hang_up<T>(
    hung_up: &mut Option<io::Error>,
    result: io::Result<T>,
    instead: T,
) -> io::Result<T> {
    match result {
        Err(e) if is_hang_up(&e) => {
            tracing::debug!("the peer hung up ({e}); reading what it sent before");
            *hung_up = Some(e);
            Ok(instead)
        }
        other => other,
    }
}

/// How many bytes of headers (frames without a body, keep-alive pings) are held before
/// they are written even though no body or flush came to go with them.
const OUT_CAP: usize = 64 * HEADER_LEN;

/// Where the writer is in the stream of frames the yamux crate writes.
///
/// The crate writes a frame's header and its body with two separate writes. Written
/// through as they come, each would be a TLS record and a system call of its own. So a
/// header is taken into `out` and goes out with the body that follows (one vectored
/// write), or with the next flush; the crate flushes after every batch of frames.
#[derive(Debug)]
struct WriteState {
    /// Header bytes of the current frame seen so far (they may arrive in pieces).
    head: [u8; HEADER_LEN],
    /// How many bytes of `head` are known.
    head_filled: usize,
    /// Body bytes of the current frame still to pass.
    body_left: u32,
    /// Accepted bytes not written yet: complete (possibly rewritten) headers and our
    /// keep-alive pings, in order.
    out: Vec<u8>,
}

const NEW_HEADER: ReadState = ReadState::Header {
    buf: [0; HEADER_LEN],
    filled: 0,
};

impl<T> WireIo<T> {
    pub(crate) fn new(inner: T, state: Arc<WireState>) -> Self {
        Self {
            inner,
            state,
            read: NEW_HEADER,
            split: None,
            write: WriteState {
                head: [0; HEADER_LEN],
                head_filled: 0,
                body_left: 0,
                out: Vec::new(),
            },
            violation: None,
            hung_up: None,
        }
    }
}

#[cfg(feature = "fuzzing")]
impl<T> WireIo<T> {
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

/// A version 0 frame header.
#[cfg(test)]
pub(crate) fn header_bytes(kind: u8, flags: u16, stream_id: u32, length: u32) -> [u8; HEADER_LEN] {
    header(0, kind, flags, stream_id, length)
}

fn header(version: u8, kind: u8, flags: u16, stream_id: u32, length: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = version;
    h[1] = kind;
    h[2..4].copy_from_slice(&flags.to_be_bytes());
    h[4..8].copy_from_slice(&stream_id.to_be_bytes());
    h[8..12].copy_from_slice(&length.to_be_bytes());
    h
}

impl<T> WireIo<T> {
    /// Decides what to hand on for a complete header from the peer.
    fn on_peer_header(&mut self, h: [u8; HEADER_LEN]) -> ReadState {
        let kind = h[1];
        let flags = u16::from_be_bytes([h[2], h[3]]);
        let stream_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        self.state.on_header(kind, flags, stream_id, length);
        if kind == TYPE_PING && flags & FLAG_ACK != 0 && length & OWN_PING != 0 {
            // The answer to one of our keep-alive pings: it showed the peer is alive
            // (noted just above), and the yamux crate must not see it.
            return NEW_HEADER;
        }
        if kind != TYPE_DATA || length <= MAX_BODY {
            // Only DATA frames carry a body; the length of the others is a value.
            let piece = if kind == TYPE_DATA { length } else { 0 };
            return ReadState::Emit {
                header: h,
                pos: 0,
                piece,
                rest: 0,
            };
        }
        self.split = Some(Split {
            version: h[0],
            stream_id,
            final_flags: flags & (FLAG_FIN | FLAG_RST),
        });
        ReadState::Emit {
            header: header(
                h[0],
                kind,
                flags & (FLAG_SYN | FLAG_ACK),
                stream_id,
                MAX_BODY,
            ),
            pos: 0,
            piece: MAX_BODY,
            rest: length - MAX_BODY,
        }
    }

    /// The header of the next piece of a split frame.
    fn next_piece(&self, rest: u32) -> ReadState {
        let split = self.split.unwrap_or(Split {
            version: 0,
            stream_id: 0,
            final_flags: 0,
        });
        let piece = rest.min(MAX_BODY);
        let rest = rest - piece;
        let flags = if rest == 0 { split.final_flags } else { 0 };
        ReadState::Emit {
            header: header(split.version, TYPE_DATA, flags, split.stream_id, piece),
            pos: 0,
            piece,
            rest,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WireIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(code) = this.violation {
            // The yamux crate flushed the GoAway before it reads again (a peer that does
            // not read may not get it, and is disconnected all the same).
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                Error::Protocol(format!(
                    "the peer broke the yamux protocol (answered with GoAway code {code})"
                )),
            )));
        }
        let start = out.filled().len();
        loop {
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match &mut this.read {
                ReadState::Header { buf, filled } => {
                    let mut rb = ReadBuf::new(&mut buf[*filled..]);
                    match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) => {
                            let n = rb.filled().len();
                            if n == 0 {
                                // EOF from the peer. Within a header it is a truncated
                                // frame, which the yamux crate reports on its own.
                                return Poll::Ready(this.end_of_input());
                            }
                            *filled += n;
                            if *filled == HEADER_LEN {
                                let h = *buf;
                                this.read = this.on_peer_header(h);
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            if out.filled().len() > start {
                                // Deliver what we have; the error comes again next time.
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            if out.filled().len() > start {
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                ReadState::Emit {
                    header,
                    pos,
                    piece,
                    rest,
                } => {
                    let n = (HEADER_LEN - *pos).min(out.remaining());
                    out.put_slice(&header[*pos..*pos + n]);
                    *pos += n;
                    if *pos == HEADER_LEN {
                        this.read = if *piece > 0 {
                            ReadState::Body {
                                piece: *piece,
                                rest: *rest,
                            }
                        } else {
                            NEW_HEADER
                        };
                    }
                }
                ReadState::Body { piece, rest } => {
                    let want = (*piece as usize).min(out.remaining());
                    // Buffers from the compat layer are initialised already, so this
                    // costs nothing there.
                    let mut limited = ReadBuf::new(out.initialize_unfilled_to(want));
                    let poll = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
                    let n = limited.filled().len();
                    match (poll, n) {
                        (Poll::Ready(Ok(())), 0) => {
                            // EOF inside a body: hand on what we have; yamux reports
                            // the truncated frame.
                            return Poll::Ready(this.end_of_input());
                        }
                        (Poll::Ready(Ok(())), n) => {
                            out.advance(n);
                            *piece -= n as u32;
                            if *piece == 0 {
                                let rest = *rest;
                                this.read = if rest > 0 {
                                    this.next_piece(rest)
                                } else {
                                    NEW_HEADER
                                };
                            }
                        }
                        (Poll::Ready(Err(e)), _) => {
                            if out.filled().len() > start {
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Ready(Err(e));
                        }
                        (Poll::Pending, _) => {
                            if out.filled().len() > start {
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
    }
}

impl<T> WireIo<T> {
    /// What the reader reports when the peer's input ends: the end, or the held write
    /// error if the peer hung up without a GoAway.
    fn end_of_input(&self) -> io::Result<()> {
        match &self.hung_up {
            Some(e) if self.state.go_away().is_none() => Err(copy_error(e)),
            _ => Ok(()),
        }
    }

    /// The header to send for `h`: FIN becomes RST on a stream the application aborted
    /// after the peer's FIN.
    fn outgoing_header(&self, mut h: [u8; HEADER_LEN]) -> [u8; HEADER_LEN] {
        let kind = h[1];
        let flags = u16::from_be_bytes([h[2], h[3]]);
        if (kind == TYPE_DATA || kind == TYPE_WINDOW_UPDATE) && flags & (FLAG_FIN | FLAG_RST) != 0 {
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            if self.state.take_aborted(id) && flags & FLAG_FIN != 0 {
                h[2..4].copy_from_slice(&((flags & !FLAG_FIN) | FLAG_RST).to_be_bytes());
            }
        }
        h
    }

    /// Takes the complete header of the current frame: queues it (rewritten if need be)
    /// and notes how much body follows.
    fn header_done(&mut self) {
        let h = self.outgoing_header(self.write.head);
        let length = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        self.write.body_left = if h[1] == TYPE_DATA { length } else { 0 };
        self.write.head_filled = 0;
        if h[1] == TYPE_GO_AWAY && length != 0 {
            // Code 0 is a normal close; 1 and 2 answer a violation.
            self.violation = Some(length);
        }
        self.write.out.extend_from_slice(&h);
    }
}

impl<T: AsyncWrite + Unpin> WireIo<T> {
    /// Whether no frame of the yamux crate is partly written.
    fn between_frames(&self) -> bool {
        self.write.head_filled == 0 && self.write.body_left == 0
    }

    /// Queues the keep-alive ping the driver asked for, if any (between frames only).
    fn queue_ping(&mut self) {
        if self.between_frames()
            && let Some(value) = self.state.take_ping_request()
        {
            let ping = header(0, TYPE_PING, FLAG_SYN, 0, value);
            self.write.out.extend_from_slice(&ping);
        }
    }

    /// Writes out what `out` holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.write.out.is_empty() {
            let n = ready!(write_or_discard(
                &mut self.inner,
                &mut self.hung_up,
                cx,
                &self.write.out,
                &[]
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.write.out.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WireIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write.body_left == 0 {
            // A header, or part of one: taken, it goes out with what follows.
            this.queue_ping();
            if this.write.out.len() >= OUT_CAP {
                ready!(this.poll_drain(cx))?;
            }
            let at = this.write.head_filled;
            let n = (HEADER_LEN - at).min(buf.len());
            this.write.head[at..at + n].copy_from_slice(&buf[..n]);
            this.write.head_filled += n;
            if this.write.head_filled == HEADER_LEN {
                this.header_done();
            }
            return Poll::Ready(Ok(n));
        }
        // Body bytes, with whatever headers wait in front of them.
        let body = &buf[..(this.write.body_left as usize).min(buf.len())];
        loop {
            let queued = this.write.out.len();
            let n = ready!(write_or_discard(
                &mut this.inner,
                &mut this.hung_up,
                cx,
                &this.write.out,
                body
            ))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n <= queued {
                // Only queued bytes went out; no body byte is taken before they all did.
                this.write.out.drain(..n);
                continue;
            }
            this.write.out.clear();
            let taken = n - queued;
            this.write.body_left -= taken as u32;
            return Poll::Ready(Ok(taken));
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // The yamux crate flushes on every poll of the connection, also when it has
        // nothing to send: this is where a keep-alive goes out on an idle session.
        this.queue_ping();
        ready!(this.poll_drain(cx))?;
        if this.hung_up.is_some() {
            return Poll::Ready(Ok(()));
        }
        let flushed = ready!(Pin::new(&mut this.inner).poll_flush(cx));
        Poll::Ready(hold_hang_up(&mut this.hung_up, flushed, ()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if self.hung_up.is_some() {
            // Nothing reaches the peer any more.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    fn ping(flags: u16, value: u32) -> [u8; HEADER_LEN] {
        header(0, TYPE_PING, flags, 0, value)
    }

    #[tokio::test]
    async fn keep_alive_pings_go_out_between_frames_only() {
        let (ours, mut peer) = duplex(4096);
        let state = Arc::new(WireState::new());
        let mut wire = WireIo::new(ours, state.clone());
        let data = header(0, TYPE_DATA, 0, 1, 4);

        // Asked for in the middle of a frame: it waits for the frame to end.
        wire.write_all(&data).await.unwrap();
        state.request_ping();
        wire.write_all(b"body").await.unwrap();
        wire.flush().await.unwrap();
        // Asked for between frames: it goes before the next one.
        state.request_ping();
        wire.write_all(&data).await.unwrap();
        wire.write_all(b"more").await.unwrap();
        wire.flush().await.unwrap();

        let mut expected = Vec::new();
        expected.extend_from_slice(&data);
        expected.extend_from_slice(b"body");
        expected.extend_from_slice(&ping(FLAG_SYN, OWN_PING));
        expected.extend_from_slice(&ping(FLAG_SYN, OWN_PING | 1));
        expected.extend_from_slice(&data);
        expected.extend_from_slice(b"more");
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        // Nothing was asked for since: a flush sends nothing more.
        wire.flush().await.unwrap();
        drop(wire);
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    /// Records every write it gets, each vectored write as one.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.0
                .push(bufs.iter().flat_map(|b| b.iter().copied()).collect());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_header_goes_out_with_its_body_in_one_write() {
        let mut wire = WireIo::new(Writes::default(), Arc::new(WireState::new()));
        let update = header(0, TYPE_WINDOW_UPDATE, 0, 1, 4096);
        let data = header(0, TYPE_DATA, 0, 1, 5);
        // As the yamux crate writes: a window update, then a DATA header and its body in
        // two writes (the header in two pieces here), then a flush.
        wire.write_all(&update).await.unwrap();
        wire.write_all(&data[..5]).await.unwrap();
        wire.write_all(&data[5..]).await.unwrap();
        wire.write_all(b"hello").await.unwrap();
        wire.flush().await.unwrap();
        // A frame without a body waits for the flush.
        let fin = header(0, TYPE_DATA, FLAG_FIN, 1, 0);
        wire.write_all(&fin).await.unwrap();
        assert_eq!(wire.inner.0.len(), 1, "nothing written before the flush");
        wire.flush().await.unwrap();

        let mut first = Vec::new();
        first.extend_from_slice(&update);
        first.extend_from_slice(&data);
        first.extend_from_slice(b"hello");
        assert_eq!(wire.inner.0, vec![first, fin.to_vec()]);
    }

    #[tokio::test]
    async fn answers_to_our_pings_are_kept_from_the_yamux_crate() {
        let (ours, mut peer) = duplex(4096);
        let mut wire = WireIo::new(ours, Arc::new(WireState::new()));
        let theirs = ping(FLAG_ACK, 3); // an answer to a ping of the yamux crate
        let request = ping(FLAG_SYN, OWN_PING | 9); // the peer's own ping, to be answered
        let data = header(0, TYPE_DATA, 0, 2, 2);
        for frame in [
            ping(FLAG_ACK, OWN_PING),
            theirs,
            request,
            ping(FLAG_ACK, OWN_PING | 1),
        ] {
            peer.write_all(&frame).await.unwrap();
        }
        peer.write_all(&data).await.unwrap();
        peer.write_all(b"ok").await.unwrap();
        drop(peer);

        let mut got = Vec::new();
        wire.read_to_end(&mut got).await.unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&theirs);
        expected.extend_from_slice(&request);
        expected.extend_from_slice(&data);
        expected.extend_from_slice(b"ok");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_peer_that_hung_up_after_go_away_is_read_to_the_end() {
        let (ours, mut peer) = duplex(4096);
        let state = Arc::new(WireState::new());
        let mut wire = WireIo::new(ours, state.clone());
        let go_away = header(0, TYPE_GO_AWAY, 0, 0, 0);
        peer.write_all(&go_away).await.unwrap();
        drop(peer);

        // A window update, a ping and data to a peer that is gone: discarded, no error.
        wire.write_all(&header(0, TYPE_WINDOW_UPDATE, 0, 1, 4096))
            .await
            .unwrap();
        state.request_ping();
        wire.flush().await.unwrap();
        wire.write_all(&header(0, TYPE_DATA, 0, 1, 2))
            .await
            .unwrap();
        wire.write_all(b"hi").await.unwrap();
        wire.flush().await.unwrap();
        wire.shutdown().await.unwrap();

        // What the peer sent before it went is still read, then the input ends.
        let mut got = Vec::new();
        wire.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, go_away);
        assert_eq!(state.go_away(), Some(0));
    }

    #[tokio::test]
    async fn a_peer_that_hung_up_without_go_away_fails_the_reader() {
        let (ours, mut peer) = duplex(4096);
        let mut wire = WireIo::new(ours, Arc::new(WireState::new()));
        let data = header(0, TYPE_DATA, 0, 2, 2);
        peer.write_all(&data).await.unwrap();
        peer.write_all(b"ok").await.unwrap();
        drop(peer);

        // Written and flushed, as the yamux crate does (a header alone waits for a flush).
        wire.write_all(&header(0, TYPE_WINDOW_UPDATE, 0, 2, 4096))
            .await
            .unwrap();
        wire.flush().await.unwrap();
        let mut got = vec![0u8; HEADER_LEN + 2];
        wire.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..HEADER_LEN], &data);
        let mut rest = Vec::new();
        let err = wire.read_to_end(&mut rest).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(rest.is_empty());
    }
}
