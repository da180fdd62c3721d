//! A checked driver of the TCP engine's sans-IO core (`qymux_tcp::engine::core`), shared
//! by the property tests (`tests/engine_props.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/yamux_engine.rs`, which includes this file by path).
//!
//! A [`Side`] is one [`Connection`] next to a model of what the core promises in its docs
//! and in hashicorp's spec: which streams exist, each stream's windows and the exact
//! bytes it holds, the frames every input and every application operation must queue,
//! when the connection ends and why. Every operation goes to both; the side then
//! compares the results, the frames queued, and the core's observable state with the
//! model, and checks the bounds:
//!
//! - bytes held (`buffered().0`) <= `granted()` <= `Config::receive_budget` (per stream:
//!   credit left + bytes held + the rest of a DATA body on its way <= its window), the
//!   allocated capacity within twice what is granted, `open_streams()` <= `max_streams`;
//! - the control queue holds at most one frame per header of input or per operation
//!   (and the GoAway of a violation);
//! - every error is the typed error the situation calls for;
//! - a protocol violation ends the connection with `Error::Protocol` after queueing
//!   GoAway(1), and input after the end changes nothing;
//! - no missed wake-up: an operation that returned `Pending` and could now complete was
//!   woken (one waker per waiter: each stream's reads and writes, accept, open, the end,
//!   the first frame).
//!
//! A [`Solo`] drives one side against a peer that keeps to the protocol or not
//! (well-formed frames computed from the model, frames with anything in their headers
//! aimed at live, released and unknown streams, arbitrary bytes, SYN and SYN|RST floods,
//! one-byte DATA frames, EOF and I/O errors); a [`Pair`] wires a client and a server back
//! to back, moves their bytes in chunks of random sizes, and checks that every stream
//! delivers exactly what was written, with FIN as EOF and a reset as an error, never EOF.
//!
//! Application operations go through the core the way `Stream` (`stream.rs`) uses it: no
//! reads or writes after the application's own abort, no writes after its shutdown, no
//! empty writes; the rest as the application pleases.
//!
//! Panics (`assert!`) report a broken promise, with the last operations of the side that
//! broke it; the callers turn them into failures.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use qymux_tcp::engine::core::{
    Config, Connection, Counters, INITIAL_WINDOW, MAX_UNACKED_OPENS, MAX_WRITE_FRAME, Role,
};
use qymux_tcp::engine::frame::{
    FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, HEADER_LEN,
    Header, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING, TYPE_WINDOW_UPDATE,
};
use qymux_tcp::transport::{CloseReason, Error, Limit, TimeoutKind};

const INITIAL: u64 = INITIAL_WINDOW as u64;
/// The most one application operation may queue (one frame).
const ONE_FRAME: usize = HEADER_LEN;
/// Window growth keeps room for this many new streams (the core's documented headroom).
const GROWTH_HEADROOM_STREAMS: u64 = 64;
/// Who waits for what: one waker per waiter, so a missed wake-up shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Waiter {
    Read(u32),
    Write(u32),
    Accept,
    Open,
    End,
    FirstFrame,
}

/// A waker that notes which waiter it woke.
#[derive(Debug)]
struct Flag {
    waiter: Waiter,
    woken: Arc<Mutex<BTreeSet<Waiter>>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.lock().unwrap().insert(self.waiter);
    }
}

// ------------------------------------------------------------------------ operations

/// What the application does to one side.
#[derive(Debug, Clone)]
pub(crate) enum AppOp {
    /// `open`, `times` times in a row (past 256 unacknowledged opens, it waits).
    Open {
        times: u16,
    },
    Accept,
    /// Reads into a buffer of `len` bytes (0 included) from the held stream
    /// `stream % held`.
    Read {
        stream: usize,
        len: usize,
    },
    /// Writes `len` (at least 1) bytes of the stream's pattern.
    Write {
        stream: usize,
        len: usize,
    },
    /// `shutdown`, called `times` times in a row (one FIN however often).
    Shutdown {
        stream: usize,
        times: u8,
    },
    /// `reset` (abort), `times` times in a row.
    Reset {
        stream: usize,
        times: u8,
    },
    /// The application drops the stream.
    Release {
        stream: usize,
    },
    Drain,
    Close,
    /// Time passes; then `handle_timeout`.
    Advance {
        ms: u64,
    },
}

/// Which stream id a hostile frame is aimed at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// A stream the application holds.
    Held(usize),
    /// A stream the core has (held or waiting for accept).
    Live(usize),
    /// A stream the application released.
    Released(usize),
    /// The peer's next unused id.
    NextPeer,
    /// Any id.
    Id(u32),
}

/// The length field of a hostile frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Length {
    Exact(u32),
    /// The credit the peer has left on the target (legal to the byte).
    Credit,
    /// That credit plus this much (a violation, unless the stream is gone).
    CreditPlus(u32),
}

/// A frame a well-behaved peer could send now (computed from the model at the time:
/// credit left, live streams, our unacknowledged SYNs); it reaches the core at once, in
/// pieces of `piece` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Legal {
    /// Opens a stream (SYN as a WINDOW_UPDATE, or as DATA with up to `data` bytes).
    Open {
        data: u32,
        fin: bool,
    },
    /// Up to `len` bytes (within the credit left) on a live stream the peer has not
    /// finished.
    Data {
        stream: usize,
        len: u32,
        fin: bool,
    },
    /// More credit for a live stream.
    Credit {
        stream: usize,
        len: u32,
    },
    /// Acknowledges one of our streams.
    Ack {
        stream: usize,
    },
    Fin {
        stream: usize,
    },
    Rst {
        stream: usize,
    },
    Ping,
    /// Answers our latest ping.
    Pong,
    GoAway,
}

/// What the hostile peer of a [`Solo`] does.
#[derive(Debug, Clone)]
pub(crate) enum PeerOp {
    /// A frame a well-behaved peer could send.
    Legal { frame: Legal, piece: usize },
    /// Arbitrary bytes.
    Raw(Vec<u8>),
    /// A frame (DATA, WINDOW_UPDATE, PING, GO_AWAY, or an unknown type; any flags); a
    /// DATA frame's body follows, up to 512 KiB of it.
    Frame {
        kind: u8,
        flags: u16,
        target: Target,
        length: Length,
    },
    /// `count` SYN frames for new ids, as WINDOW_UPDATE or DATA, with RST or without.
    SynFlood { count: u16, rst: bool, data: bool },
    /// `count` one-byte DATA frames on a stream.
    TinyData { target: Target, count: u16 },
    /// Hands the next `len` bytes of what the peer sent to the core.
    Deliver { len: usize },
    /// Hands everything the peer sent to the core, in pieces of `piece` bytes.
    DeliverAll { piece: usize },
    /// The connection's input ends (TLS close_notify).
    Eof,
    /// Reading or writing fails: one of a few `io::ErrorKind`s; `after_write` takes the
    /// `handle_eof_after_write_error` path.
    IoError { kind: u8, after_write: bool },
}

/// One step of a [`Solo`] run.
#[derive(Debug, Clone)]
pub(crate) enum SoloOp {
    App(AppOp),
    Peer(PeerOp),
}

/// One step of a [`Pair`] run.
#[derive(Debug, Clone)]
pub(crate) enum PairOp {
    /// An application operation on the client (`client`) or the server.
    App { client: bool, op: AppOp },
    /// Moves the next `len` bytes the client (`from_client`) or the server wrote to the
    /// other side.
    Move { from_client: bool, len: usize },
    /// Time passes for both; then `handle_timeout` on both.
    Advance { ms: u64 },
    /// An application loop moving `len` bytes over one stream of the client
    /// (`from_client`) or the server: write, move the bytes (in pieces of `piece`), accept,
    /// read (`read` at a time) and move the credit back, until all went or nothing moves.
    Flow {
        from_client: bool,
        stream: usize,
        len: usize,
        piece: usize,
        read: usize,
    },
}

/// The limits of a run, chosen small enough that the limits are reached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_streams: usize,
    pub(crate) accept_backlog: usize,
    /// In initial windows.
    pub(crate) budget_windows: u64,
    /// In initial windows.
    pub(crate) max_window_windows: u32,
    /// Milliseconds; 0 is none.
    pub(crate) keep_alive_ms: u64,
    pub(crate) idle_ms: u64,
}

impl Limits {
    pub(crate) fn config(&self) -> Config {
        Config {
            max_streams: self.max_streams.max(1),
            accept_backlog: self.accept_backlog.max(1),
            receive_budget: self.budget_windows.max(1) * INITIAL,
            max_stream_window: INITIAL_WINDOW * self.max_window_windows.clamp(1, 64),
            keep_alive_interval: (self.keep_alive_ms > 0)
                .then(|| Duration::from_millis(self.keep_alive_ms)),
            idle_timeout: Duration::from_millis(self.idle_ms.max(1)),
        }
    }
}

/// The byte at `offset` of what `role`'s side writes on stream `id`.
pub(crate) fn pattern(role: Role, id: u32, offset: u64) -> u8 {
    let salt = match role {
        Role::Client => 0x5au64,
        Role::Server => 0xa5,
    };
    let x = offset
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(id).wrapping_mul(0x632B_E59B_D9B4_E019))
        ^ salt;
    (x >> 29) as u8 ^ (x as u8)
}

// ------------------------------------------------------------------------ the model

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Local,
    Peer,
}

/// How the model expects the connection to have ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Local,
    Peer,
    /// The peer broke the protocol: GoAway(1) queued, `Error::Protocol`.
    Violation,
    /// The peer's GoAway with this error code.
    PeerError(u32),
    Idle,
    Io(io::ErrorKind),
}

/// One stream as the model sees it.
#[derive(Debug, Clone)]
struct MStream {
    outbound: bool,
    acked: bool,
    /// The application has it (else it waits in the accept queue).
    held: bool,
    /// The window granted in all (the stream's charge against the budget).
    window: u64,
    /// Credit the peer has left.
    credit: u64,
    /// Received, not yet read: the exact bytes.
    buffered: VecDeque<u8>,
    send_window: u64,
    fin_sent: bool,
    fin_rx: bool,
    reset: Option<By>,
    /// Bytes the application wrote (accepted by `poll_write`).
    written: u64,
    /// Bytes the application read.
    read: u64,
    /// The application read EOF.
    eof: bool,
    /// Reset at some point (by either side).
    ever_reset: bool,
}

impl MStream {
    fn new(outbound: bool, send_window: u64) -> Self {
        Self {
            outbound,
            acked: !outbound,
            held: outbound,
            window: INITIAL,
            credit: INITIAL,
            buffered: VecDeque::new(),
            send_window,
            fin_sent: false,
            fin_rx: false,
            reset: None,
            written: 0,
            read: 0,
            eof: false,
            ever_reset: false,
        }
    }

    fn done(&self) -> bool {
        self.reset.is_some() || (self.fin_sent && self.fin_rx)
    }
}

/// The parser's position in the input, as the model tracks it.
#[derive(Debug)]
enum Parse {
    Header {
        buf: [u8; HEADER_LEN],
        len: usize,
    },
    Body {
        id: u32,
        remaining: u32,
        deliver: bool,
        fin: bool,
    },
}

const NEW_HEADER: Parse = Parse::Header {
    buf: [0; HEADER_LEN],
    len: 0,
};

/// What a stream looked like when the application released it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Released {
    pub(crate) written: u64,
    pub(crate) read: u64,
    pub(crate) eof: bool,
    pub(crate) fin_sent: bool,
    pub(crate) ever_reset: bool,
}

/// One connection and its model; see the module docs.
#[derive(Debug)]
pub(crate) struct Side {
    pub(crate) conn: Connection,
    cfg: Config,
    role: Role,
    pub(crate) now: Instant,
    last_rx: Instant,
    last_ping: Instant,
    ping_seq: u32,
    streams: BTreeMap<u32, MStream>,
    accept_queue: VecDeque<u32>,
    /// Streams the application holds, in the order it got them.
    held: Vec<u32>,
    released: BTreeMap<u32, Released>,
    next_id: u64,
    unacked: usize,
    go_away_sent: bool,
    go_away_received: bool,
    first_frame: bool,
    ended: Option<Ending>,
    parse: Parse,
    counters: Counters,
    /// Everything this side queued for the wire (control frames and DATA frames), in
    /// order, not yet moved to the peer.
    pub(crate) out: VecDeque<u8>,
    /// Sum of the streams' windows and of the bytes they hold (kept as they change).
    window_total: u64,
    held_total: usize,
    /// Waiters whose operation returned `Pending` and that were not woken since.
    waiting: BTreeSet<Waiter>,
    woken: Arc<Mutex<BTreeSet<Waiter>>>,
    /// One waker per waiter, reused as a task reuses its own.
    wakers: BTreeMap<Waiter, Waker>,
    read_buf: Vec<u8>,
    /// The operations so far, for failure messages.
    pub(crate) trace: String,
}

/// Takes the first `n` bytes of `queue`.
fn take_front(queue: &mut VecDeque<u8>, n: usize) -> Vec<u8> {
    let (a, b) = queue.as_slices();
    let in_a = n.min(a.len());
    let mut out = Vec::with_capacity(n);
    out.extend_from_slice(&a[..in_a]);
    out.extend_from_slice(&b[..n - in_a]);
    queue.drain(..n);
    out
}

fn headers(bytes: &[u8]) -> Vec<Header> {
    assert!(
        bytes.len().is_multiple_of(HEADER_LEN),
        "control frames come whole: {} bytes",
        bytes.len()
    );
    bytes
        .chunks(HEADER_LEN)
        .map(|b| Header::decode(b.try_into().unwrap()).expect("the core queues valid frames"))
        .collect()
}

impl Side {
    pub(crate) fn new(role: Role, cfg: Config, now: Instant) -> Self {
        let conn = Connection::new(role, cfg.clone(), now);
        let mut side = Self {
            conn,
            cfg,
            role,
            now,
            last_rx: now,
            last_ping: now,
            ping_seq: 0,
            streams: BTreeMap::new(),
            accept_queue: VecDeque::new(),
            held: Vec::new(),
            released: BTreeMap::new(),
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            unacked: 0,
            go_away_sent: false,
            go_away_received: false,
            first_frame: false,
            ended: None,
            parse: NEW_HEADER,
            counters: Counters::default(),
            out: VecDeque::new(),
            window_total: 0,
            held_total: 0,
            waiting: BTreeSet::new(),
            woken: Arc::default(),
            wakers: BTreeMap::new(),
            read_buf: Vec::new(),
            trace: String::new(),
        };
        // A ping at once, to time the round trip.
        let mut want = Vec::new();
        side.model_ping(&mut want);
        let got = side.take_control();
        side.expect_frames("Connection::new", &want, &got);
        side.check("Connection::new");
        side
    }

    fn waker(&mut self, waiter: Waiter) -> Waker {
        let woken = &self.woken;
        self.wakers
            .entry(waiter)
            .or_insert_with(|| {
                Waker::from(Arc::new(Flag {
                    waiter,
                    woken: woken.clone(),
                }))
            })
            .clone()
    }

    fn insert_stream(&mut self, id: u32, s: MStream) {
        self.window_total += s.window;
        self.held_total += s.buffered.len();
        self.streams.insert(id, s);
    }

    fn remove_stream(&mut self, id: u32) -> Option<MStream> {
        let s = self.streams.remove(&id)?;
        self.window_total -= s.window;
        self.held_total -= s.buffered.len();
        self.wakers.remove(&Waiter::Read(id));
        self.wakers.remove(&Waiter::Write(id));
        Some(s)
    }

    /// Whether the operation `waiter` waits for would no longer wait (by the model).
    fn ready(&self, waiter: Waiter) -> bool {
        let ended = self.ended.is_some();
        match waiter {
            Waiter::Read(id) => self
                .streams
                .get(&id)
                .is_none_or(|s| ended || s.reset.is_some() || s.fin_rx || !s.buffered.is_empty()),
            Waiter::Write(id) => self
                .streams
                .get(&id)
                .is_none_or(|s| ended || s.reset.is_some() || s.send_window > 0),
            Waiter::Accept => ended || !self.accept_queue.is_empty(),
            Waiter::Open => {
                ended
                    || self.go_away_sent
                    || self.go_away_received
                    || self.unacked < MAX_UNACKED_OPENS
            }
            Waiter::End => ended,
            Waiter::FirstFrame => self.first_frame,
        }
    }

    /// Wakes what the core says can make progress; every waiter whose operation could
    /// complete now must be among them.
    fn check_wakers(&mut self, what: &str) {
        for waker in self.conn.take_wakers() {
            waker.wake();
        }
        let woken = std::mem::take(&mut *self.woken.lock().unwrap());
        self.waiting.retain(|w| !woken.contains(w));
        // Streams the application let go of have no waiters any more.
        let streams = &self.streams;
        self.waiting.retain(|w| match w {
            Waiter::Read(id) | Waiter::Write(id) => streams.get(id).is_some_and(|s| s.held),
            _ => true,
        });
        for &waiter in &self.waiting {
            assert!(
                !self.ready(waiter),
                "{what}: {waiter:?} can go on but was not woken\n{}",
                self.trace
            );
        }
    }

    fn log(&mut self, what: impl std::fmt::Display) {
        // Keep the last few kilobytes: enough to read a failure.
        if self.trace.len() > 16 * 1024 {
            let cut = self.trace.len() - 8 * 1024;
            let cut = (cut..self.trace.len())
                .find(|&i| self.trace.is_char_boundary(i))
                .unwrap_or(self.trace.len());
            self.trace.drain(..cut);
        }
        let _ = writeln!(self.trace, "{what}");
    }

    // -------------------------------------------------------------------- observation

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.is_some()
    }

    /// Whether the next byte of input starts a frame.
    pub(crate) fn at_frame_boundary(&self) -> bool {
        matches!(self.parse, Parse::Header { len: 0, .. })
    }

    pub(crate) fn held(&self) -> &[u32] {
        &self.held
    }

    pub(crate) fn live_ids(&self) -> Vec<u32> {
        self.streams.keys().copied().collect()
    }

    pub(crate) fn released_ids(&self) -> Vec<u32> {
        self.released.keys().copied().collect()
    }

    /// The credit the peer has left on `id`, if the core has the stream.
    pub(crate) fn credit(&self, id: u32) -> Option<u64> {
        self.streams.get(&id).map(|s| s.credit)
    }

    /// What the application wrote and read on stream `id`, live or released:
    /// (written, read, eof, fin_sent, ever_reset).
    pub(crate) fn stream_record(&self, id: u32) -> Option<Released> {
        if let Some(s) = self.streams.get(&id) {
            return Some(Released {
                written: s.written,
                read: s.read,
                eof: s.eof,
                fin_sent: s.fin_sent,
                ever_reset: s.ever_reset,
            });
        }
        self.released.get(&id).copied()
    }

    fn pick(&self, stream: usize) -> Option<u32> {
        (!self.held.is_empty()).then(|| self.held[stream % self.held.len()])
    }

    fn granted(&self) -> u64 {
        self.window_total
    }

    /// The part of a DATA body on stream `id` that the peer sent credit for and that
    /// has not arrived yet.
    fn in_flight(&self, id: u32) -> u64 {
        match self.parse {
            Parse::Body {
                id: body_id,
                remaining,
                ..
            } if body_id == id => u64::from(remaining),
            _ => 0,
        }
    }

    pub(crate) fn is_peer_id(&self, id: u32) -> bool {
        match self.role {
            Role::Client => id.is_multiple_of(2),
            Role::Server => !id.is_multiple_of(2),
        }
    }

    // -------------------------------------------------------------------- checking

    fn take_control(&mut self) -> Vec<Header> {
        let mut bytes = Vec::new();
        self.conn.take_control(&mut bytes);
        self.out.extend(&bytes);
        headers(&bytes)
    }

    fn expect_frames(&self, what: &str, want: &[Header], got: &[Header]) {
        assert!(
            want == got,
            "{what}: the core queued {got:?}, the model expects {want:?}\n{}",
            self.trace
        );
    }

    /// The error a call must return once the connection has ended.
    fn end_error(&self) -> Error {
        self.conn
            .ended()
            .map(CloseReason::to_error)
            .expect("checked: the core has ended when the model has")
    }

    fn assert_error(&self, what: &str, got: &Error, want: &Error) {
        assert!(
            format!("{got:?}") == format!("{want:?}"),
            "{what}: got {got:?}, expected {want:?}\n{}",
            self.trace
        );
    }

    /// Compares the core's observable state with the model and checks the bounds.
    pub(crate) fn check(&mut self, what: &str) {
        let (end, first) = (self.waker(Waiter::End), self.waker(Waiter::FirstFrame));
        let t = &self.trace;
        // The end, and why.
        match (&self.ended, self.conn.ended()) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                let ok = match (want, got) {
                    (Ending::Local, CloseReason::Local) => true,
                    (Ending::Peer, CloseReason::Peer(None)) => true,
                    (Ending::Violation, CloseReason::Failed(Error::Protocol(m))) => {
                        m.starts_with("yamux: ")
                    }
                    (Ending::PeerError(code), CloseReason::Failed(Error::Protocol(m))) => {
                        m.contains("GoAway") && (*code > 2 || m.contains(&format!("GoAway {code}")))
                    }
                    (
                        Ending::Idle,
                        CloseReason::Failed(Error::Timeout {
                            what: TimeoutKind::Idle,
                            after,
                        }),
                    ) => *after == self.cfg.idle_timeout,
                    (Ending::Io(kind), CloseReason::Failed(Error::Io(e))) => e.kind() == *kind,
                    _ => false,
                };
                assert!(ok, "{what}: ended with {got:?}, expected {want:?}\n{t}");
            }
            (want, got) => panic!("{what}: the core ended {got:?}, the model {want:?}\n{t}"),
        }
        let ended = self.ended.is_some();
        assert_eq!(self.conn.poll_timeout().is_none(), ended, "{what}\n{t}");
        assert_eq!(self.conn.poll_end(&end), ended, "{what}\n{t}");
        assert_eq!(
            self.conn.poll_first_frame(&first),
            self.first_frame,
            "{what}: first frame\n{t}"
        );
        // Streams and what they hold.
        let open = self.conn.open_streams();
        assert_eq!(open, self.streams.len(), "{what}: open streams\n{t}");
        assert!(
            open <= self.cfg.max_streams,
            "{what}: {open} streams open, max_streams {}\n{t}",
            self.cfg.max_streams
        );
        let granted = self.conn.granted();
        assert_eq!(granted, self.window_total, "{what}: granted\n{t}");
        assert!(
            granted <= self.cfg.receive_budget,
            "{what}: granted {granted} over the budget {}\n{t}",
            self.cfg.receive_budget
        );
        let (held, capacity) = self.conn.buffered();
        assert_eq!(held, self.held_total, "{what}: bytes buffered\n{t}");
        assert!(
            held as u64 <= granted,
            "{what}: {held} bytes held, {granted} granted\n{t}"
        );
        assert!(
            capacity as u64 <= 2 * granted + 64 * open as u64,
            "{what}: {capacity} bytes allocated for {held} held, {granted} granted\n{t}"
        );
        assert_eq!(
            self.conn.unacked_opens(),
            self.unacked,
            "{what}: unacked\n{t}"
        );
        assert!(self.unacked <= MAX_UNACKED_OPENS, "{what}\n{t}");
        assert_eq!(
            self.conn.is_draining(),
            self.go_away_sent || self.go_away_received,
            "{what}: draining\n{t}"
        );
        let (c, m) = (self.conn.counters(), &self.counters);
        assert_eq!(
            (
                c.bytes_in,
                c.bytes_out,
                c.streams_in,
                c.streams_out,
                c.streams_refused
            ),
            (
                m.bytes_in,
                m.bytes_out,
                m.streams_in,
                m.streams_out,
                m.streams_refused
            ),
            "{what}: counters (in, out, streams in, out, refused)\n{t}"
        );
        assert_eq!(
            self.conn.control_len(),
            0,
            "{what}: control left untaken\n{t}"
        );
        if !ended {
            self.waiting.insert(Waiter::End);
        }
        if !self.first_frame {
            self.waiting.insert(Waiter::FirstFrame);
        }
        self.check_wakers(what);
    }

    // -------------------------------------------------------------------- model: input

    fn end(&mut self, why: Ending) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(why);
        // Streams nobody accepted die with the connection.
        for id in std::mem::take(&mut self.accept_queue) {
            self.remove_stream(id);
        }
    }

    fn end_if_drained(&mut self) {
        if self.streams.is_empty() && self.ended.is_none() {
            if self.go_away_sent {
                self.end(Ending::Local);
            } else if self.go_away_received {
                self.end(Ending::Peer);
            }
        }
    }

    fn violation(&mut self, want: &mut Vec<Header>) {
        want.push(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR));
        self.go_away_sent = true;
        self.end(Ending::Violation);
    }

    fn model_ping(&mut self, want: &mut Vec<Header>) {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        want.push(Header::new(TYPE_PING, FLAG_SYN, 0, self.ping_seq));
    }

    fn model_input(&mut self, mut data: &[u8], want: &mut Vec<Header>) {
        if self.ended.is_some() {
            return;
        }
        if !data.is_empty() {
            self.last_rx = self.now;
        }
        while !data.is_empty() && self.ended.is_none() {
            match &mut self.parse {
                Parse::Header { buf, len } => {
                    let take = (HEADER_LEN - *len).min(data.len());
                    buf[*len..*len + take].copy_from_slice(&data[..take]);
                    *len += take;
                    data = &data[take..];
                    if *len == HEADER_LEN {
                        let header = *buf;
                        self.parse = NEW_HEADER;
                        self.model_header(header, want);
                    }
                }
                Parse::Body {
                    id,
                    remaining,
                    deliver,
                    fin,
                } => {
                    let (id, deliver, fin) = (*id, *deliver, *fin);
                    let take = (*remaining as usize).min(data.len());
                    *remaining -= take as u32;
                    let done = *remaining == 0;
                    if deliver {
                        self.counters.bytes_in += take as u64;
                        if let Some(s) = self.streams.get_mut(&id)
                            && s.reset.is_none()
                        {
                            s.buffered.extend(&data[..take]);
                            self.held_total += take;
                        }
                    }
                    data = &data[take..];
                    if done {
                        self.parse = NEW_HEADER;
                        if fin {
                            self.model_fin(id);
                        }
                    }
                }
            }
        }
    }

    fn model_fin(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.fin_rx = true;
        }
    }

    fn discard(&mut self, body: u32) {
        if body > 0 {
            self.parse = Parse::Body {
                id: 0,
                remaining: body,
                deliver: false,
                fin: false,
            };
        }
    }

    fn model_header(&mut self, b: [u8; HEADER_LEN], want: &mut Vec<Header>) {
        // Version 0 and the four types of the spec; anything else is a violation.
        if b[0] != 0 || b[1] > TYPE_GO_AWAY {
            return self.violation(want);
        }
        let h = Header::decode(&b).expect("valid version and type");
        self.first_frame = true;
        match h.kind {
            TYPE_PING => {
                if h.has(FLAG_SYN) {
                    want.push(Header::new(TYPE_PING, FLAG_ACK, 0, h.length));
                }
            }
            TYPE_GO_AWAY => {
                if h.length == GO_AWAY_NORMAL {
                    self.go_away_received = true;
                    self.end_if_drained();
                } else {
                    self.end(Ending::PeerError(h.length));
                }
            }
            _ => self.model_stream_frame(h, want),
        }
    }

    fn model_stream_frame(&mut self, h: Header, want: &mut Vec<Header>) {
        let id = h.stream_id;
        let body = if h.kind == TYPE_DATA { h.length } else { 0 };
        if id == 0 {
            return self.violation(want);
        }
        if h.has(FLAG_SYN) {
            if !self.is_peer_id(id) || self.streams.contains_key(&id) {
                return self.violation(want);
            }
            if h.has(FLAG_RST) {
                return self.discard(body);
            }
            let refused = self.go_away_sent
                || self.streams.len() >= self.cfg.max_streams
                || self.accept_queue.len() >= self.cfg.accept_backlog
                || self.granted() + INITIAL > self.cfg.receive_budget;
            if refused {
                self.counters.streams_refused += 1;
                want.push(Header::new(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0));
                return self.discard(body);
            }
            let send_window = if h.kind == TYPE_WINDOW_UPDATE {
                INITIAL + u64::from(h.length)
            } else {
                INITIAL
            };
            if send_window > u64::from(u32::MAX) {
                return self.violation(want);
            }
            self.insert_stream(id, MStream::new(false, send_window));
            self.counters.streams_in += 1;
            want.push(Header::new(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 0));
            self.accept_queue.push_back(id);
        } else {
            let Some(s) = self.streams.get_mut(&id) else {
                return self.discard(body);
            };
            if h.has(FLAG_ACK) && s.outbound && !s.acked {
                s.acked = true;
                self.unacked -= 1;
            }
            if h.kind == TYPE_WINDOW_UPDATE && h.length > 0 {
                let w = s.send_window + u64::from(h.length);
                if w > u64::from(u32::MAX) {
                    return self.violation(want);
                }
                s.send_window = w;
            }
        }
        let s = self.streams.get_mut(&id).expect("found or inserted");
        if h.has(FLAG_RST) {
            if s.reset.is_none() {
                s.reset = Some(By::Peer);
                s.ever_reset = true;
                // What the peer finished before its reset is complete: it stays readable
                // up to EOF.
                if !s.fin_rx {
                    self.held_total -= s.buffered.len();
                    s.buffered.clear();
                }
            }
            return self.discard(body);
        }
        if body > 0 {
            if u64::from(body) > s.credit {
                return self.violation(want);
            }
            s.credit -= u64::from(body);
            let deliver = s.reset.is_none() && !s.fin_rx;
            self.parse = Parse::Body {
                id,
                remaining: body,
                deliver,
                fin: h.has(FLAG_FIN),
            };
        } else if h.has(FLAG_FIN) {
            self.model_fin(id);
        }
    }

    // -------------------------------------------------------------------- input

    /// Hands `data` from the peer to the core and the model.
    pub(crate) fn input(&mut self, data: &[u8]) {
        self.log(format_args!("input {} bytes", data.len()));
        let was_ended = self.ended.is_some();
        let before = was_ended.then(|| self.snapshot());
        let mut want = Vec::new();
        self.model_input(data, &mut want);
        // Half the inputs that start inside a DATA body go the driver's way for large
        // bodies (read straight into the stream's buffer, lent out for the read); the
        // result must not differ.
        let lent = if data.len().is_multiple_of(2) {
            self.conn.lend_body_buffer(data.len())
        } else {
            None
        };
        match lent {
            Some(mut lent) => {
                let room = lent.room();
                let n = room.len().min(data.len());
                room[..n].copy_from_slice(&data[..n]);
                lent.filled(n);
                self.conn.return_body_buffer(lent, self.now);
                self.conn.handle_input(&data[n..], self.now);
            }
            None => self.conn.handle_input(data, self.now),
        }
        // At most one frame per header, and the GoAway of a violation that ends it all
        // (a SYN with a body over the window: ACK, then GoAway).
        let bound = ONE_FRAME * (data.len() / HEADER_LEN + 1) + ONE_FRAME;
        assert!(
            self.conn.control_len() <= bound,
            "{} bytes of input queued {} bytes of control\n{}",
            data.len(),
            self.conn.control_len(),
            self.trace
        );
        let got = self.take_control();
        self.expect_frames("input", &want, &got);
        if let Some(before) = before {
            assert_eq!(
                before,
                self.snapshot(),
                "input after the end changed the core\n{}",
                self.trace
            );
        }
        if !was_ended && matches!(self.ended, Some(Ending::Violation)) {
            assert_eq!(
                got.last(),
                Some(&Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR)),
                "a violation queues GoAway(protocol error) last\n{}",
                self.trace
            );
        }
        self.check("input");
    }

    fn snapshot(&self) -> String {
        format!(
            "{:?} {} {} {:?} {:?} {} {:?}",
            self.conn.ended(),
            self.conn.open_streams(),
            self.conn.granted(),
            self.conn.buffered(),
            self.conn.counters(),
            self.conn.unacked_opens(),
            self.conn.poll_timeout(),
        )
    }

    /// The input ended cleanly.
    pub(crate) fn eof(&mut self) {
        self.log("eof");
        self.conn.handle_eof();
        self.end(Ending::Peer);
        let got = self.take_control();
        self.expect_frames("eof", &[], &got);
        self.check("eof");
    }

    pub(crate) fn io_error(&mut self, kind: io::ErrorKind, after_write: bool) {
        self.log(format_args!(
            "io error {kind:?} (after write: {after_write})"
        ));
        let err = io::Error::new(kind, "injected");
        if after_write {
            self.conn.handle_eof_after_write_error(err);
        } else {
            self.conn.handle_io_error(err);
        }
        let why = if after_write && self.go_away_received {
            Ending::Peer
        } else if kind == io::ErrorKind::TimedOut {
            Ending::Idle
        } else if self.go_away_received && kind == io::ErrorKind::UnexpectedEof {
            Ending::Peer
        } else {
            Ending::Io(kind)
        };
        self.end(why);
        let got = self.take_control();
        self.expect_frames("io error", &[], &got);
        self.check("io error");
    }

    // -------------------------------------------------------------------- application

    pub(crate) fn app(&mut self, op: &AppOp) {
        self.log(format_args!("{op:?}"));
        match *op {
            AppOp::Open { times } => {
                for _ in 0..times.max(1) {
                    self.open();
                }
            }
            AppOp::Accept => {
                self.accept();
            }
            AppOp::Read { stream, len } => {
                if let Some(id) = self.pick(stream) {
                    self.read(id, len);
                }
            }
            AppOp::Write { stream, len } => {
                if let Some(id) = self.pick(stream) {
                    self.write(id, len.max(1));
                }
            }
            AppOp::Shutdown { stream, times } => {
                if let Some(id) = self.pick(stream) {
                    for _ in 0..times.max(1) {
                        self.shutdown(id);
                    }
                }
            }
            AppOp::Reset { stream, times } => {
                if let Some(id) = self.pick(stream) {
                    for _ in 0..times.max(1) {
                        self.reset(id);
                    }
                }
            }
            AppOp::Release { stream } => {
                if let Some(id) = self.pick(stream) {
                    self.release(id);
                }
            }
            AppOp::Drain => self.drain(),
            AppOp::Close => self.close(),
            AppOp::Advance { ms } => {
                self.now += Duration::from_millis(ms);
                self.timeout();
            }
        }
    }

    pub(crate) fn open(&mut self) -> Option<u32> {
        let want_err = if self.ended.is_some() {
            Some(self.end_error())
        } else if self.go_away_received {
            Some(Error::ClosedByPeer(Some(String::new())))
        } else if self.go_away_sent {
            Some(Error::Closed)
        } else if self.streams.len() >= self.cfg.max_streams {
            Some(Error::LimitReached(Limit::Streams(self.cfg.max_streams)))
        } else if self.granted() + INITIAL > self.cfg.receive_budget {
            Some(Error::LimitReached(Limit::ReceiveBudget(
                self.cfg.receive_budget,
            )))
        } else if self.next_id > u64::from(u32::MAX) {
            Some(Error::LimitReached(Limit::StreamIds))
        } else {
            None
        };
        let waker = self.waker(Waiter::Open);
        let result = self.conn.poll_open(&waker);
        let got = self.take_control();
        let mut want = Vec::new();
        let opened = match (result, want_err) {
            (Poll::Ready(Err(e)), Some(want)) => {
                if let (Error::ClosedByPeer(Some(_)), Error::ClosedByPeer(Some(_))) = (&e, &want) {
                    // The text is the core's; the variant is the promise.
                } else {
                    self.assert_error("open", &e, &want);
                }
                None
            }
            (Poll::Pending, None) => {
                self.waiting.insert(Waiter::Open);
                assert!(
                    self.unacked >= MAX_UNACKED_OPENS,
                    "open waits with {} unacknowledged\n{}",
                    self.unacked,
                    self.trace
                );
                None
            }
            (Poll::Ready(Ok(id)), None) => {
                assert!(
                    self.unacked < MAX_UNACKED_OPENS,
                    "open went past {MAX_UNACKED_OPENS} unacknowledged\n{}",
                    self.trace
                );
                assert_eq!(u64::from(id), self.next_id, "stream ids in order");
                self.next_id += 2;
                self.unacked += 1;
                self.counters.streams_out += 1;
                self.insert_stream(id, MStream::new(true, INITIAL));
                self.held.push(id);
                want.push(Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0));
                Some(id)
            }
            (got, want) => panic!("open: got {got:?}, expected {want:?}\n{}", self.trace),
        };
        self.expect_frames("open", &want, &got);
        self.check("open");
        opened
    }

    pub(crate) fn accept(&mut self) -> Option<u32> {
        let waker = self.waker(Waiter::Accept);
        let result = self.conn.poll_accept(&waker);
        let got = self.take_control();
        self.expect_frames("accept", &[], &got);
        let accepted = match result {
            Poll::Ready(Err(e)) => {
                assert!(self.ended.is_some(), "accept failed: {e:?}\n{}", self.trace);
                self.assert_error("accept", &e, &self.end_error());
                None
            }
            Poll::Ready(Ok(id)) => {
                assert!(self.ended.is_none(), "accept after the end\n{}", self.trace);
                assert_eq!(self.accept_queue.pop_front(), Some(id), "{}", self.trace);
                self.streams.get_mut(&id).expect("queued").held = true;
                self.held.push(id);
                Some(id)
            }
            Poll::Pending => {
                self.waiting.insert(Waiter::Accept);
                assert!(
                    self.ended.is_none() && self.accept_queue.is_empty(),
                    "accept waits with {:?} queued\n{}",
                    self.accept_queue,
                    self.trace
                );
                None
            }
        };
        self.check("accept");
        accepted
    }

    /// Reads from a held stream; returns what it read, `None` for a wait, an error as
    /// `Err`.
    pub(crate) fn read(&mut self, id: u32, len: usize) -> Option<Result<Vec<u8>, Error>> {
        let s = self.streams.get(&id).expect("held streams are in the core");
        if s.reset == Some(By::Local) {
            // The application aborted it: `Stream` answers without the core.
            return None;
        }
        // One buffer for every read (what a read returns is compared byte by byte with
        // what the stream holds, so nothing left from an earlier read can pass for it).
        let mut storage = std::mem::take(&mut self.read_buf);
        if storage.len() < len {
            storage.resize(len, 0);
        }
        let buf = &mut storage[..len];
        let waker = self.waker(Waiter::Read(id));
        let result = self.conn.poll_read(id, &waker, buf, self.now);
        let got = self.take_control();
        let s = self.streams.get_mut(&id).expect("held");
        let outcome = match result {
            Poll::Ready(Err(e)) => {
                if s.reset == Some(By::Peer) && !s.fin_rx {
                    assert!(
                        matches!(e, Error::StreamReset),
                        "read of a reset stream: {e:?}\n{}",
                        self.trace
                    );
                } else {
                    assert!(
                        s.buffered.is_empty() && !s.fin_rx && self.ended.is_some(),
                        "read failed with {e:?}\n{}",
                        self.trace
                    );
                    self.assert_error("read", &e, &self.end_error());
                }
                self.expect_frames("read error", &[], &got);
                Some(Err(e))
            }
            Poll::Pending => {
                assert!(
                    s.reset.is_none() && s.buffered.is_empty() && !s.fin_rx && self.ended.is_none(),
                    "read waits on {s:?}\n{}",
                    self.trace
                );
                self.expect_frames("read wait", &[], &got);
                self.waiting.insert(Waiter::Read(id));
                None
            }
            Poll::Ready(Ok(n)) => {
                assert!(
                    s.reset.is_none() || s.fin_rx,
                    "read {n} from a stream the peer reset before finishing it\n{}",
                    self.trace
                );
                if n == 0 {
                    assert!(
                        len == 0 || (s.buffered.is_empty() && s.fin_rx),
                        "EOF before the peer finished or with data left: {s:?}\n{}",
                        self.trace
                    );
                    if len > 0 {
                        s.eof = true;
                    }
                    self.expect_frames("read eof", &[], &got);
                    Some(Ok(Vec::new()))
                } else {
                    let expect_n = len.min(s.buffered.len());
                    assert_eq!(n, expect_n, "read length\n{}", self.trace);
                    let (a, b) = s.buffered.as_slices();
                    let in_a = n.min(a.len());
                    assert!(
                        buf[..in_a] == a[..in_a] && buf[in_a..n] == b[..n - in_a],
                        "read returned other bytes\n{}",
                        self.trace
                    );
                    let want = buf[..n].to_vec();
                    s.buffered.drain(..n);
                    self.held_total -= n;
                    s.read += n as u64;
                    self.read_grant(id, &got);
                    Some(Ok(want))
                }
            }
        };
        self.read_buf = storage;
        self.check("read");
        outcome
    }

    /// After `n` bytes were read: at most one window update for the stream, sent when
    /// half the window is free to grant again, growing the window at most twofold within
    /// `max_stream_window` and the budget (less room for 64 new streams).
    fn read_grant(&mut self, id: u32, got: &[Header]) {
        let headroom = (self.cfg.max_streams.saturating_sub(self.streams.len()) as u64)
            .min(GROWTH_HEADROOM_STREAMS)
            * INITIAL;
        let granted = self.granted();
        let budget = self.cfg.receive_budget;
        let max_window = u64::from(self.cfg.max_stream_window);
        let alive = self.ended.is_none();
        // The rest of a DATA body still arriving was paid for when its header came.
        let in_flight = self.in_flight(id);
        let t = &self.trace;
        let s = self.streams.get_mut(&id).expect("held");
        let held = s.credit + s.buffered.len() as u64 + in_flight;
        let free = s.window.saturating_sub(held);
        let due = alive && !s.fin_rx && s.reset.is_none() && free >= s.window / 2;
        if !due {
            assert!(
                got.is_empty(),
                "no window update due on stream {id} (window {}, credit {}, held {}, body in \
                 flight {in_flight}), got {got:?}\n{t}",
                s.window,
                s.credit,
                s.buffered.len()
            );
            return;
        }
        let [h] = got else {
            panic!(
                "one window update due (free {free} of {}), got {got:?}\n{t}",
                s.window
            );
        };
        assert!(
            h.kind == TYPE_WINDOW_UPDATE && h.flags == 0 && h.stream_id == id,
            "{h:?}\n{t}"
        );
        let credit = u64::from(h.length);
        assert!(credit >= free, "credit {credit} < free {free}\n{t}");
        let grow = credit - free;
        if grow > 0 {
            assert!(
                s.window < max_window && grow == s.window.min(max_window - s.window),
                "window {} grew by {grow} (max {max_window})\n{t}",
                s.window
            );
            assert!(
                granted + grow + headroom <= budget,
                "growth by {grow} leaves no headroom: granted {granted}, budget {budget}\n{t}"
            );
        }
        s.window += grow;
        s.credit += credit;
        // The peer's credit, what the stream holds and the rest of a frame on its way
        // stay within the window (only a window update raises the credit).
        let owed = s.credit + s.buffered.len() as u64 + in_flight;
        assert!(
            owed <= s.window && s.window <= max_window.max(INITIAL),
            "stream {id}: credit {} + held {} + body in flight {in_flight} > window {} \
             (max {max_window})\n{t}",
            s.credit,
            s.buffered.len(),
            s.window
        );
        self.window_total += grow;
    }

    /// Writes `len` bytes of the stream's pattern; returns how many went.
    pub(crate) fn write(&mut self, id: u32, len: usize) -> usize {
        let s = self.streams.get(&id).expect("held");
        if s.fin_sent || s.reset == Some(By::Local) {
            // `Stream` refuses writes after shutdown or abort without the core.
            return 0;
        }
        let waker = self.waker(Waiter::Write(id));
        let result = self.conn.poll_write(id, &waker, len);
        let got = self.take_control();
        self.expect_frames("write", &[], &got);
        let ended = self.ended.is_some();
        let end_error = ended.then(|| self.end_error());
        let s = self.streams.get_mut(&id).expect("held");
        let sent = match result {
            Poll::Ready(Err(e)) => {
                if let Some(want) = end_error {
                    self.assert_error("write", &e, &want);
                } else {
                    assert!(
                        s.reset.is_some() && matches!(e, Error::StreamReset),
                        "write failed with {e:?} on {s:?}\n{}",
                        self.trace
                    );
                }
                0
            }
            Poll::Pending => {
                assert!(
                    !ended && s.reset.is_none() && s.send_window == 0,
                    "write waits on {s:?}\n{}",
                    self.trace
                );
                self.waiting.insert(Waiter::Write(id));
                0
            }
            Poll::Ready(Ok((header, n))) => {
                assert!(
                    !ended && s.reset.is_none(),
                    "wrote on {s:?}\n{}",
                    self.trace
                );
                let expect_n = (len as u64).min(s.send_window).min(MAX_WRITE_FRAME as u64);
                assert_eq!(n as u64, expect_n, "write length\n{}", self.trace);
                assert_eq!(
                    Header::decode(&header),
                    Ok(Header::new(TYPE_DATA, 0, id, n as u32)),
                    "{}",
                    self.trace
                );
                s.send_window -= n as u64;
                let start = s.written;
                s.written += n as u64;
                self.counters.bytes_out += n as u64;
                self.out.extend(&header);
                let role = self.role;
                self.out
                    .extend((start..start + n as u64).map(|k| pattern(role, id, k)));
                n
            }
        };
        self.check("write");
        sent
    }

    pub(crate) fn shutdown(&mut self, id: u32) {
        let s = self.streams.get(&id).expect("held");
        if s.reset == Some(By::Local) {
            return;
        }
        let result = self.conn.shutdown(id);
        let got = self.take_control();
        let end_error = self.ended.is_some().then(|| self.end_error());
        let s = self.streams.get_mut(&id).expect("held");
        let mut want = Vec::new();
        match (result, end_error) {
            (Err(e), Some(end)) => self.assert_error("shutdown", &e, &end),
            (Err(e), None) => assert!(
                s.reset.is_some() && matches!(e, Error::StreamReset),
                "shutdown failed with {e:?} on {s:?}\n{}",
                self.trace
            ),
            (Ok(()), None) => {
                assert!(s.reset.is_none(), "shutdown of {s:?}\n{}", self.trace);
                if !s.fin_sent {
                    s.fin_sent = true;
                    want.push(Header::new(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0));
                }
            }
            (Ok(()), Some(_)) => panic!("shutdown succeeded after the end\n{}", self.trace),
        }
        self.expect_frames("shutdown", &want, &got);
        self.check("shutdown");
    }

    fn model_reset(&mut self, id: u32, want: &mut Vec<Header>) {
        let ended = self.ended.is_some();
        let s = self.streams.get_mut(&id).expect("held");
        if s.done() {
            return;
        }
        s.reset = Some(By::Local);
        s.ever_reset = true;
        self.held_total -= s.buffered.len();
        s.buffered.clear();
        if !ended {
            want.push(Header::new(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0));
        }
    }

    pub(crate) fn reset(&mut self, id: u32) {
        let mut want = Vec::new();
        self.model_reset(id, &mut want);
        self.conn.reset(id);
        let got = self.take_control();
        self.expect_frames("reset", &want, &got);
        self.check("reset");
    }

    pub(crate) fn release(&mut self, id: u32) {
        let mut want = Vec::new();
        self.model_reset(id, &mut want);
        let s = self.remove_stream(id).expect("held");
        if s.outbound && !s.acked {
            self.unacked -= 1;
        }
        self.held.retain(|h| *h != id);
        self.released.insert(
            id,
            Released {
                written: s.written,
                read: s.read,
                eof: s.eof,
                fin_sent: s.fin_sent,
                ever_reset: s.ever_reset,
            },
        );
        self.end_if_drained();
        self.conn.release(id);
        let got = self.take_control();
        self.expect_frames("release", &want, &got);
        self.check("release");
    }

    pub(crate) fn drain(&mut self) {
        let mut want = Vec::new();
        if self.ended.is_none() && !self.go_away_sent {
            self.go_away_sent = true;
            want.push(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
            self.end_if_drained();
        }
        self.conn.drain();
        let got = self.take_control();
        self.expect_frames("drain", &want, &got);
        self.check("drain");
    }

    pub(crate) fn close(&mut self) {
        let mut want = Vec::new();
        if self.ended.is_none() {
            if !self.go_away_sent {
                self.go_away_sent = true;
                want.push(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
            }
            self.end(Ending::Local);
        }
        self.conn.close();
        let got = self.take_control();
        self.expect_frames("close", &want, &got);
        self.check("close");
    }

    /// Runs `handle_timeout` at the side's current time: the peer is declared dead after
    /// `idle_timeout` of silence, pinged after `keep_alive_interval` of silence (its own
    /// or ours), and the next check is never later than either.
    pub(crate) fn timeout(&mut self) {
        let now = self.now;
        let due = self.conn.poll_timeout();
        self.conn.handle_timeout(now);
        let got = self.take_control();
        let mut want = Vec::new();
        if self.ended.is_none() {
            let due = due.expect("a live connection has a timer");
            let silent = now.saturating_duration_since(self.last_rx);
            let ping_due = self
                .cfg
                .keep_alive_interval
                .is_some_and(|k| now >= self.last_ping.max(self.last_rx) + k);
            if now < due {
                assert!(
                    silent < self.cfg.idle_timeout && !ping_due,
                    "the timer ({:?} from now) is later than the idle timeout or a ping \
                     (silent {silent:?})\n{}",
                    due - now,
                    self.trace
                );
            } else if silent >= self.cfg.idle_timeout {
                self.end(Ending::Idle);
            } else if ping_due {
                self.last_ping = now;
                self.model_ping(&mut want);
            }
            if let Some(next) = self.conn.poll_timeout() {
                assert!(next > now, "the timer does not move on\n{}", self.trace);
            }
        }
        self.expect_frames("handle_timeout", &want, &got);
        self.check("handle_timeout");
    }
}

// ------------------------------------------------------------------------ one side

/// One side against a hostile peer; see the module docs.
#[derive(Debug)]
pub(crate) struct Solo {
    pub(crate) side: Side,
    /// What the peer sent and the core has not been handed yet.
    outbox: VecDeque<u8>,
    /// The peer's next stream id.
    peer_next: u32,
    body_byte: u8,
    /// Streams the peer finished or reset.
    peer_done: std::collections::BTreeSet<u32>,
}

impl Solo {
    pub(crate) fn new(role: Role, limits: &Limits) -> Self {
        let side = Side::new(role, limits.config(), Instant::now());
        Self {
            side,
            outbox: VecDeque::new(),
            peer_next: match role {
                Role::Client => 2,
                Role::Server => 1,
            },
            body_byte: 0,
            peer_done: std::collections::BTreeSet::new(),
        }
    }

    fn target(&mut self, t: Target) -> u32 {
        let pick = |ids: Vec<u32>, i: usize| (!ids.is_empty()).then(|| ids[i % ids.len()]);
        let id = match t {
            Target::Held(i) => pick(self.side.held().to_vec(), i),
            Target::Live(i) => pick(self.side.live_ids(), i),
            Target::Released(i) => pick(self.side.released_ids(), i),
            Target::NextPeer => None,
            Target::Id(id) => Some(id),
        };
        id.unwrap_or_else(|| {
            let id = self.peer_next;
            self.peer_next = self.peer_next.wrapping_add(2);
            id
        })
    }

    fn frame(&mut self, kind: u8, flags: u16, id: u32, length: u32) {
        self.outbox
            .extend(&Header::new(kind, flags, id, length).encode());
        if kind == TYPE_DATA {
            // The body, whole when the credit allows it; beyond that (a violation, or a
            // frame for a stream the core does not have) up to 64 KiB of it: a longer
            // frame eats what the peer sends next.
            let credit = self.side.credit(id).unwrap_or(INITIAL);
            let n = if u64::from(length) <= credit {
                length as usize
            } else {
                length.min(64 * 1024) as usize
            };
            let b = self.body_byte;
            self.outbox
                .extend((0..n).map(|i| b.wrapping_add(i as u8).rotate_left(3)));
            self.body_byte = b.wrapping_add(1);
        }
    }

    pub(crate) fn step(&mut self, op: &SoloOp) {
        match op {
            SoloOp::App(op) => self.side.app(op),
            SoloOp::Peer(op) => self.peer(op),
        }
        // The core's answers go nowhere: this peer does not listen.
        self.side.out.clear();
    }

    fn peer(&mut self, op: &PeerOp) {
        self.side.log(format_args!("peer {op:?}"));
        match op {
            &PeerOp::Legal { frame, piece } => {
                self.legal(frame);
                self.peer(&PeerOp::DeliverAll { piece });
            }
            PeerOp::Raw(bytes) => self.outbox.extend(bytes),
            &PeerOp::Frame {
                kind,
                flags,
                target,
                length,
            } => {
                let (id, length) = match kind {
                    TYPE_PING => (0, self.length_of(None, length)),
                    TYPE_GO_AWAY => (0, self.length_of(None, length) % 4),
                    _ => {
                        let id = self.target(target);
                        (id, self.length_of(Some(id), length))
                    }
                };
                self.frame(kind, flags, id, length);
            }
            &PeerOp::SynFlood { count, rst, data } => {
                let kind = if data { TYPE_DATA } else { TYPE_WINDOW_UPDATE };
                let flags = if rst { FLAG_SYN | FLAG_RST } else { FLAG_SYN };
                for _ in 0..count {
                    let id = self.target(Target::NextPeer);
                    self.frame(kind, flags, id, 0);
                }
            }
            &PeerOp::TinyData { target, count } => {
                let id = self.target(target);
                for _ in 0..count {
                    self.frame(TYPE_DATA, 0, id, 1);
                }
            }
            &PeerOp::Deliver { len } => {
                let n = len.min(self.outbox.len());
                let chunk = take_front(&mut self.outbox, n);
                self.side.input(&chunk);
            }
            &PeerOp::DeliverAll { piece } => {
                // Small pieces split headers anywhere; bulk goes in at most ~64 of them.
                let piece = piece.max(self.outbox.len() / 64).max(1);
                while !self.outbox.is_empty() {
                    let n = piece.min(self.outbox.len());
                    let chunk = take_front(&mut self.outbox, n);
                    self.side.input(&chunk);
                }
            }
            PeerOp::Eof => self.side.eof(),
            &PeerOp::IoError { kind, after_write } => {
                let kind = [
                    io::ErrorKind::TimedOut,
                    io::ErrorKind::UnexpectedEof,
                    io::ErrorKind::ConnectionReset,
                    io::ErrorKind::BrokenPipe,
                ][usize::from(kind) % 4];
                self.side.io_error(kind, after_write);
            }
        }
    }

    fn legal(&mut self, frame: Legal) {
        let live: Vec<u32> = self
            .side
            .live_ids()
            .into_iter()
            .filter(|id| !self.peer_done.contains(id))
            .collect();
        let pick = |i: usize| (!live.is_empty()).then(|| live[i % live.len()]);
        match frame {
            Legal::Open { data, fin } => {
                let id = self.target(Target::NextPeer);
                let flags = if fin { FLAG_SYN | FLAG_FIN } else { FLAG_SYN };
                if fin {
                    self.peer_done.insert(id);
                }
                if data == 0 {
                    self.frame(TYPE_WINDOW_UPDATE, flags, id, 0);
                } else {
                    self.frame(TYPE_DATA, flags, id, data.min(INITIAL_WINDOW));
                }
            }
            Legal::Data { stream, len, fin } => {
                if let Some(id) = pick(stream) {
                    let credit = self.side.credit(id).unwrap_or(0);
                    let len = (u64::from(len)).min(credit) as u32;
                    if fin {
                        self.peer_done.insert(id);
                    }
                    self.frame(TYPE_DATA, if fin { FLAG_FIN } else { 0 }, id, len);
                }
            }
            Legal::Credit { stream, len } => {
                if let Some(id) = pick(stream) {
                    self.frame(TYPE_WINDOW_UPDATE, 0, id, len);
                }
            }
            Legal::Ack { stream } => {
                let ours: Vec<u32> = live
                    .iter()
                    .copied()
                    .filter(|id| !self.side.is_peer_id(*id))
                    .collect();
                if !ours.is_empty() {
                    let id = ours[stream % ours.len()];
                    self.frame(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 0);
                }
            }
            Legal::Fin { stream } => {
                if let Some(id) = pick(stream) {
                    self.peer_done.insert(id);
                    self.frame(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0);
                }
            }
            Legal::Rst { stream } => {
                if let Some(id) = pick(stream) {
                    self.peer_done.insert(id);
                    self.frame(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0);
                }
            }
            Legal::Ping => self.frame(TYPE_PING, FLAG_SYN, 0, 7),
            Legal::Pong => {
                let seq = self.side.ping_seq;
                self.frame(TYPE_PING, FLAG_ACK, 0, seq);
            }
            Legal::GoAway => self.frame(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL),
        }
    }

    fn length_of(&self, id: Option<u32>, length: Length) -> u32 {
        let credit = id.and_then(|id| self.side.credit(id)).unwrap_or(INITIAL);
        match length {
            Length::Exact(n) => n,
            Length::Credit => credit as u32,
            Length::CreditPlus(k) => (credit as u32).saturating_add(k.max(1)),
        }
    }

    /// Everything the peer sent reaches the core, in one piece.
    pub(crate) fn finish(&mut self) {
        self.peer(&PeerOp::DeliverAll { piece: usize::MAX });
    }
}

// ------------------------------------------------------------------------ two sides

/// A client and a server wired back to back; see the module docs.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) client: Side,
    pub(crate) server: Side,
    /// Whether each side's transport has closed toward the other (after it ended and
    /// its last bytes were moved): [client → server, server → client].
    closed: [bool; 2],
}

impl Pair {
    pub(crate) fn new(client: &Limits, server: &Limits) -> Self {
        let now = Instant::now();
        Self {
            client: Side::new(Role::Client, client.config(), now),
            server: Side::new(Role::Server, server.config(), now),
            closed: [false; 2],
        }
    }

    fn sides(&mut self, client: bool) -> (&mut Side, &mut Side) {
        if client {
            (&mut self.client, &mut self.server)
        } else {
            (&mut self.server, &mut self.client)
        }
    }

    pub(crate) fn step(&mut self, op: &PairOp) {
        match *op {
            PairOp::App { client, ref op } => {
                let (me, peer) = self.sides(client);
                me.app(op);
                if let AppOp::Read { stream, len } = *op
                    && len > 0
                {
                    // An EOF is the peer's FIN after everything it wrote.
                    check_eof(me, peer, stream);
                }
            }
            PairOp::Move { from_client, len } => {
                self.transfer(from_client, len);
            }
            PairOp::Flow {
                from_client,
                stream,
                len,
                piece,
                read,
            } => self.flow(from_client, stream, len, piece.max(1), read.max(1)),
            PairOp::Advance { ms } => {
                for side in [&mut self.client, &mut self.server] {
                    side.now += Duration::from_millis(ms);
                    side.timeout();
                }
            }
        }
        self.hang_up();
        for side in [&self.client, &self.server] {
            assert!(
                !matches!(side.ended, Some(Ending::Violation | Ending::PeerError(_))),
                "two engines disagree on the protocol: {:?}\n{}",
                side.conn.ended(),
                side.trace
            );
        }
    }

    fn flow(&mut self, from_client: bool, stream: usize, len: usize, piece: usize, read: usize) {
        let (me, _) = self.sides(from_client);
        let Some(id) = me.pick(stream) else {
            return;
        };
        // Small pieces and reads as given; bulk in at most ~64 steps per round.
        let read = read.max(len / 64);
        let mut left = len;
        for _ in 0..10_000 {
            let (me, _) = self.sides(from_client);
            if !me.held().contains(&id) {
                return;
            }
            let wrote = if left > 0 { me.write(id, left) } else { 0 };
            left -= wrote;
            let mut moved = 0;
            while self.transfer_scaled(from_client, piece) > 0 {
                moved += 1;
            }
            let (_, peer) = self.sides(from_client);
            while peer.accept().is_some() {}
            let mut took = 0;
            if peer.held().contains(&id) {
                // `read` bytes at a time, more when a lot waits (about 64 reads for it).
                let held = peer.streams.get(&id).map_or(0, |s| s.buffered.len());
                let read = read.max(held / 64);
                while let Some(Ok(bytes)) = peer.read(id, read) {
                    if bytes.is_empty() {
                        break;
                    }
                    took += bytes.len();
                }
            }
            while self.transfer_scaled(!from_client, piece) > 0 {
                moved += 1;
            }
            if wrote == 0 && moved == 0 && took == 0 {
                return;
            }
        }
    }

    /// Moves `piece` bytes, more when a lot waits (all of it in about 64 moves); returns
    /// how many moved.
    fn transfer_scaled(&mut self, from_client: bool, piece: usize) -> usize {
        let waiting = self.sides(from_client).0.out.len();
        self.transfer(from_client, piece.max(waiting / 64))
    }

    /// Moves up to `len` bytes; returns how many moved.
    fn transfer(&mut self, from_client: bool, len: usize) -> usize {
        let (from, to) = self.sides(from_client);
        let n = len.min(from.out.len());
        if n == 0 {
            return 0;
        }
        let chunk = take_front(&mut from.out, n);
        to.input(&chunk);
        n
    }

    /// A side that ended closes its transport once its last bytes are out: the other
    /// side's input ends.
    fn hang_up(&mut self) {
        for (i, client) in [(0, true), (1, false)] {
            let closed = &mut self.closed[i];
            let (me, peer) = if client {
                (&mut self.client, &mut self.server)
            } else {
                (&mut self.server, &mut self.client)
            };
            if me.is_ended() && me.out.is_empty() && !*closed {
                *closed = true;
                if !peer.is_ended() {
                    peer.eof();
                }
            }
        }
    }

    /// Lets both sides finish: every stream the application still holds is accepted,
    /// shut down and read to its end while the bytes move (in pieces of `piece`), until
    /// nothing moves any more. Then every stream that neither side reset delivered
    /// exactly what was written, in both directions, with EOF; releasing every stream
    /// leaves nothing behind.
    pub(crate) fn finish(&mut self, piece: usize) {
        let piece = piece.max(1);
        for _ in 0..100_000 {
            let mut progress = false;
            for client in [true, false] {
                let (me, _) = self.sides(client);
                while me.accept().is_some() {
                    progress = true;
                }
                for id in me.held().to_vec() {
                    me.shutdown(id);
                }
                for i in 0..me.held().len() {
                    let (me, peer) = self.sides(client);
                    let id = me.held()[i];
                    while let Some(Ok(bytes)) = me.read(id, 65_536) {
                        if bytes.is_empty() {
                            break;
                        }
                        progress = true;
                    }
                    check_eof(me, peer, i);
                }
            }
            while self.transfer_scaled(true, piece) + self.transfer_scaled(false, piece) > 0 {
                progress = true;
            }
            self.hang_up();
            if !progress {
                break;
            }
        }
        if !self.client.is_ended() && !self.server.is_ended() {
            for client in [true, false] {
                let (me, peer) = self.sides(client);
                for id in me.held().to_vec() {
                    let mine = me.stream_record(id).expect("held");
                    match peer.stream_record(id) {
                        Some(theirs) if !mine.ever_reset && !theirs.ever_reset => {
                            assert!(
                                mine.eof && mine.read == theirs.written,
                                "stream {id}: read {} of {} written, eof {}\n{}\n--- peer\n{}",
                                mine.read,
                                theirs.written,
                                mine.eof,
                                me.trace,
                                peer.trace
                            );
                        }
                        Some(_) => {}
                        None => {
                            // The peer refused it: a reset here.
                            assert!(
                                mine.ever_reset,
                                "stream {id} unknown to the peer but not reset\n{}",
                                me.trace
                            );
                        }
                    }
                }
            }
        }
        for client in [true, false] {
            let (me, _) = self.sides(client);
            for id in me.held().to_vec() {
                me.release(id);
            }
        }
        while self.transfer(true, usize::MAX) + self.transfer(false, usize::MAX) > 0 {}
        self.hang_up();
        for side in [&mut self.client, &mut self.server] {
            assert_eq!(side.conn.open_streams(), 0, "{}", side.trace);
            assert_eq!(side.conn.granted(), 0, "{}", side.trace);
            assert_eq!(side.conn.buffered(), (0, 0), "{}", side.trace);
        }
    }
}

/// After a read of the held stream `stream % held` on `me`: if it hit EOF, the peer
/// finished the stream and `me` read every byte the peer wrote on it.
fn check_eof(me: &Side, peer: &Side, stream: usize) {
    let Some(id) = me.pick(stream) else {
        return;
    };
    let Some(mine) = me.stream_record(id) else {
        return;
    };
    if !mine.eof {
        return;
    }
    let theirs = peer
        .stream_record(id)
        .expect("an EOF comes from a stream the peer had");
    assert!(
        theirs.fin_sent && mine.read == theirs.written,
        "stream {id}: EOF after {} of {} bytes (peer finished: {})\n{}\n--- peer\n{}",
        mine.read,
        theirs.written,
        theirs.fin_sent,
        me.trace,
        peer.trace
    );
}

// ------------------------------------------------------------------------ from bytes

/// Reads operations from arbitrary bytes (the fuzz target's input).
#[derive(Debug)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Bytes<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// A size: mostly small, sometimes around a window or a frame.
    pub(crate) fn size(&mut self) -> usize {
        const SIZES: [usize; 16] = [
            0, 1, 2, 3, 5, 7, 11, 12, 13, 24, 100, 4096, 65_536, 131_072, 262_144, 262_145,
        ];
        let b = self.u8();
        if b & 0x80 != 0 {
            SIZES[usize::from(b & 0x0f)]
        } else {
            usize::from(b) * 37
        }
    }

    pub(crate) fn limits(&mut self) -> Limits {
        let b = self.u8();
        let c = self.u8();
        Limits {
            max_streams: if b & 0x80 != 0 {
                1024
            } else {
                usize::from(b & 7) + 1
            },
            accept_backlog: if b & 0x40 != 0 {
                256
            } else {
                usize::from((b >> 3) & 3) + 1
            },
            budget_windows: if c & 0x80 != 0 {
                1024
            } else {
                u64::from(c & 15) + 1
            },
            max_window_windows: u32::from((c >> 4) & 7) + 1,
            keep_alive_ms: if c & 1 == 0 { 10_000 } else { 0 },
            idle_ms: 30_000,
        }
    }

    pub(crate) fn app_op(&mut self) -> AppOp {
        let stream = usize::from(self.u8());
        match self.u8() % 16 {
            0 | 1 => AppOp::Open {
                times: if self.u8() == 0xff { 300 } else { 1 },
            },
            2 | 3 => AppOp::Accept,
            4..=6 => AppOp::Read {
                stream,
                len: self.size(),
            },
            7..=9 => AppOp::Write {
                stream,
                len: self.size().max(1),
            },
            10 => AppOp::Shutdown {
                stream,
                times: self.u8() % 3 + 1,
            },
            11 => AppOp::Reset {
                stream,
                times: self.u8() % 2 + 1,
            },
            12 => AppOp::Release { stream },
            13 => {
                if self.u8() & 1 == 0 {
                    AppOp::Drain
                } else {
                    AppOp::Close
                }
            }
            _ => AppOp::Advance {
                ms: u64::from(self.u16()) * 4,
            },
        }
    }

    fn target(&mut self) -> Target {
        let i = usize::from(self.u8());
        match self.u8() % 6 {
            0 | 1 => Target::Held(i),
            2 => Target::Live(i),
            3 => Target::Released(i),
            4 => Target::NextPeer,
            _ => Target::Id(self.u32()),
        }
    }

    fn length(&mut self) -> Length {
        match self.u8() % 4 {
            0 => Length::Exact(u32::from(self.u8())),
            1 => Length::Exact(self.u32()),
            2 => Length::Credit,
            _ => Length::CreditPlus(u32::from(self.u8())),
        }
    }

    pub(crate) fn legal(&mut self) -> Legal {
        let stream = usize::from(self.u8());
        match self.u8() % 12 {
            0 | 1 => Legal::Open {
                data: u32::from(self.u16()) * 4,
                fin: self.u8() & 3 == 0,
            },
            2..=4 => Legal::Data {
                stream,
                len: self.size() as u32,
                fin: self.u8() & 3 == 0,
            },
            5 => Legal::Credit {
                stream,
                len: u32::from(self.u16()) * 8,
            },
            6 | 7 => Legal::Ack { stream },
            8 => Legal::Fin { stream },
            9 => Legal::Rst { stream },
            10 => {
                if self.u8() & 1 == 0 {
                    Legal::Ping
                } else {
                    Legal::Pong
                }
            }
            _ => Legal::GoAway,
        }
    }

    pub(crate) fn peer_op(&mut self) -> PeerOp {
        if self.u8() & 1 == 0 {
            return PeerOp::Legal {
                frame: self.legal(),
                piece: self.size().max(1),
            };
        }
        match self.u8() % 16 {
            0 | 1 => {
                let n = usize::from(self.u8() % 64);
                let n = n.min(self.0.len());
                let (raw, rest) = self.0.split_at(n);
                self.0 = rest;
                PeerOp::Raw(raw.to_vec())
            }
            2..=6 => {
                let kind = self.u8();
                // Mostly valid types; sometimes not.
                let kind = if kind & 0x80 != 0 {
                    kind & 0x07
                } else {
                    kind & 3
                };
                PeerOp::Frame {
                    kind,
                    flags: u16::from(self.u8() & 0x1f),
                    target: self.target(),
                    length: self.length(),
                }
            }
            7 => PeerOp::SynFlood {
                count: self.u16() % 2048,
                rst: self.u8() & 1 == 0,
                data: self.u8() & 1 == 0,
            },
            8 => PeerOp::TinyData {
                target: self.target(),
                count: self.u16() % 4096,
            },
            9..=12 => PeerOp::Deliver { len: self.size() },
            13 | 14 => PeerOp::DeliverAll {
                piece: self.size().max(1),
            },
            _ => {
                if self.u8() & 3 == 0 {
                    PeerOp::Eof
                } else {
                    PeerOp::IoError {
                        kind: self.u8(),
                        after_write: self.u8() & 1 == 0,
                    }
                }
            }
        }
    }

    pub(crate) fn solo_op(&mut self) -> SoloOp {
        if self.u8() & 1 == 0 {
            SoloOp::App(self.app_op())
        } else {
            SoloOp::Peer(self.peer_op())
        }
    }

    pub(crate) fn pair_op(&mut self) -> PairOp {
        match self.u8() % 9 {
            8 => PairOp::Flow {
                from_client: self.u8() & 1 == 0,
                stream: usize::from(self.u8()),
                len: self.size() * 4,
                piece: self.size().max(1),
                read: self.size().max(1),
            },
            0..=3 => PairOp::App {
                client: self.u8() & 1 == 0,
                op: self.app_op(),
            },
            4..=6 => PairOp::Move {
                from_client: self.u8() & 1 == 0,
                len: self.size(),
            },
            _ => PairOp::Advance {
                ms: u64::from(self.u8()) * 8,
            },
        }
    }
}

/// Runs a whole program read from `data`: the first byte picks one side against a
/// hostile peer (bit 0 clear; bit 1 picks the role) or two sides back to back; then
/// the limits (two bytes, twice for two sides), for two sides the size of the pieces
/// their final exchange moves, then one operation after the other.
pub(crate) fn run_bytes(data: &[u8]) {
    let mut bytes = Bytes(data);
    let mode = bytes.u8();
    let limits = bytes.limits();
    if mode & 1 == 0 {
        let role = if mode & 2 == 0 {
            Role::Server
        } else {
            Role::Client
        };
        let mut solo = Solo::new(role, &limits);
        let mut steps = 0;
        while !bytes.is_empty() && steps < 4096 {
            let op = bytes.solo_op();
            solo.step(&op);
            steps += 1;
        }
        solo.finish();
    } else {
        let other = bytes.limits();
        // The pieces the final exchange moves bytes in.
        let piece = bytes.size().max(1);
        let mut pair = Pair::new(&limits, &other);
        let mut steps = 0;
        while !bytes.is_empty() && steps < 4096 {
            let op = bytes.pair_op();
            pair.step(&op);
            steps += 1;
        }
        pair.finish(piece);
    }
}
