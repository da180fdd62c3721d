//! The hashicorp-yamux state machine, without I/O.
//!
//! [`Connection`] takes the bytes the peer sent ([`Connection::handle_input`]), the
//! application's operations (open, accept, read, write, shutdown, reset, release) and the
//! passing of time ([`Connection::handle_timeout`]), and produces the control frames to
//! send ([`Connection::take_control`]), the header of each DATA frame the application may
//! write, and the wakers of whoever can make progress ([`Connection::take_wakers`]). It
//! owns no socket and no runtime: the tokio driver in `session.rs` moves the bytes, and
//! the unit, property and fuzz tests drive it directly.
//!
//! # Memory
//!
//! A stream's received data lives in its receive buffer (`recv.rs`): 64 KiB chunks from
//! a pool the connection's streams share, so a chunk a reader emptied is the next one
//! filled and stays in the CPU's cache. Large frame bodies are read by the driver
//! straight into a chunk ([`Connection::lend_body_buffer`]); small ones are copied in,
//! so one-byte frames allocate nothing per frame.
//! A peer can make a stream buffer at most the window this side granted it, and the sum
//! of all granted windows is capped by [`Config::receive_budget`]. Beyond that a session
//! holds a fixed amount per open stream (its state, about 200 bytes) and a bounded queue
//! of control frames; frames for unknown streams, and streams opened and reset in the
//! same frame, leave nothing behind.

use std::collections::{HashMap, VecDeque};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use qymux_transport::{CloseReason, Error, Limit, TimeoutKind};

use super::frame::{
    FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL,
    GO_AWAY_PROTOCOL_ERROR, GO_AWAY_SUPERSEDED, HEADER_LEN, Header, SUPERSEDED, TYPE_DATA,
    TYPE_GO_AWAY, TYPE_PING, TYPE_WINDOW_UPDATE,
};
use super::recv::{Lent, Pool, RecvBuf};

/// The window every stream starts with, in both directions (fixed by the spec).
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// How many of our streams may wait for the peer's ACK before `open` waits: a hashicorp
/// peer ACKs only when its application accepts, and its accept backlog is 256.
pub const MAX_UNACKED_OPENS: usize = 256;

/// The largest DATA body this side sends in one frame.
pub const MAX_WRITE_FRAME: usize = 256 * 1024;

/// While more control frames than this wait for the socket, the driver stops reading
/// (the peer is not reading what it makes us answer).
pub const CONTROL_HIGH_WATER: usize = 64 * 1024;

/// How many new streams' initial windows window growth leaves room for.
const GROWTH_HEADROOM_STREAMS: usize = 64;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The dialer: odd stream ids.
    Client,
    /// The listener: even stream ids.
    Server,
}

/// Limits and timers of one connection: [`Config::default`] (the defaults of
/// [`Options`](qymux_transport::Options)) or [`Config::from_options`], and the chaining
/// setters.
#[derive(Debug, Clone)]
pub struct Config {
    max_streams: usize,
    accept_backlog: usize,
    receive_budget: u64,
    max_stream_window: u32,
    keep_alive_interval: Option<Duration>,
    idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self::from_options(&qymux_transport::Options::default())
    }
}

impl Config {
    /// The engine's settings for a set of Qymux options.
    pub fn from_options(o: &qymux_transport::Options) -> Self {
        Self {
            max_streams: o.max_streams_value(),
            accept_backlog: o.accept_backlog_value(),
            receive_budget: o.receive_budget_value() as u64,
            max_stream_window: o.max_stream_window_value(),
            keep_alive_interval: o.keep_alive_interval_value(),
            idle_timeout: o.idle_timeout_value(),
        }
    }

    /// Streams open at once, both directions together (accept queue included).
    pub fn max_streams(&mut self, value: usize) -> &mut Self {
        self.max_streams = value;
        self
    }

    /// Streams the peer opened that wait for `accept`; beyond it they are reset.
    pub fn accept_backlog(&mut self, value: usize) -> &mut Self {
        self.accept_backlog = value;
        self
    }

    /// The most stream data the peer may make this side buffer: the sum of the windows
    /// granted. Each stream takes [`INITIAL_WINDOW`] of it when it opens.
    pub fn receive_budget(&mut self, value: u64) -> &mut Self {
        self.receive_budget = value;
        self
    }

    /// The largest window one stream grows to.
    pub fn max_stream_window(&mut self, value: u32) -> &mut Self {
        self.max_stream_window = value;
        self
    }

    /// Send a ping after this much silence from the peer (`None`: never).
    pub fn keep_alive_interval(&mut self, value: Option<Duration>) -> &mut Self {
        self.keep_alive_interval = value;
        self
    }

    /// Declare the peer dead after this much silence.
    pub fn idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.idle_timeout = value;
        self
    }

    /// The value [`Config::max_streams`] set.
    pub fn max_streams_value(&self) -> usize {
        self.max_streams
    }

    /// The value [`Config::accept_backlog`] set.
    pub fn accept_backlog_value(&self) -> usize {
        self.accept_backlog
    }

    /// The value [`Config::receive_budget`] set.
    pub fn receive_budget_value(&self) -> u64 {
        self.receive_budget
    }

    /// The value [`Config::max_stream_window`] set.
    pub fn max_stream_window_value(&self) -> u32 {
        self.max_stream_window
    }

    /// The value [`Config::keep_alive_interval`] set.
    pub fn keep_alive_interval_value(&self) -> Option<Duration> {
        self.keep_alive_interval
    }

    /// The value [`Config::idle_timeout`] set.
    pub fn idle_timeout_value(&self) -> Duration {
        self.idle_timeout
    }
}

/// Who reset a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResetBy {
    Local,
    Peer,
}

#[derive(Debug)]
struct StreamState {
    /// Received, not yet read.
    recv: RecvBuf,
    /// Credit the peer still has.
    recv_window: u32,
    /// The window this stream is granted in all (its charge against the budget).
    window: u32,
    /// Credit the peer gave us.
    send_window: u32,
    /// When we last granted credit (window growth compares it with the RTT).
    last_grant: Option<Instant>,
    fin_sent: bool,
    fin_received: bool,
    reset: Option<ResetBy>,
    outbound: bool,
    /// For our streams: the peer acknowledged it.
    acked: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

impl StreamState {
    fn new(outbound: bool, send_window: u32) -> Self {
        Self {
            recv: RecvBuf::default(),
            recv_window: INITIAL_WINDOW,
            window: INITIAL_WINDOW,
            send_window,
            last_grant: None,
            fin_sent: false,
            fin_received: false,
            reset: None,
            outbound,
            acked: !outbound,
            read_waker: None,
            write_waker: None,
        }
    }

    /// Both sides finished, or someone reset it: nothing more goes on the wire.
    fn done(&self) -> bool {
        self.reset.is_some() || (self.fin_sent && self.fin_received)
    }
}

/// Where the parser is in the input.
#[derive(Debug)]
enum Parse {
    Header {
        buf: [u8; HEADER_LEN],
        len: usize,
    },
    Body {
        id: u32,
        remaining: u32,
        /// Append to the stream (false: discard).
        deliver: bool,
        /// The frame carried FIN: apply it after the body.
        fin: bool,
    },
}

const NEW_HEADER: Parse = Parse::Header {
    buf: [0; HEADER_LEN],
    len: 0,
};

/// Keep-alive and dead-peer detection.
#[derive(Debug)]
struct Liveness {
    keep_alive: Option<Duration>,
    idle_timeout: Duration,
    last_ping: Option<Instant>,
}

/// What the liveness check decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do before this time.
    Wait(Instant),
    /// Send a ping, then look again at this time.
    Ping(Instant),
    /// No sign of life for the idle timeout.
    Dead,
}

/// Checks are never scheduled closer than this, so a check a hair early does not spin.
const TICK: Duration = Duration::from_millis(1);

impl Liveness {
    /// The verdict at `now`, when the peer was last heard from at `heard`.
    fn check(&mut self, now: Instant, heard: Instant) -> Verdict {
        let silent = now.saturating_duration_since(heard);
        if silent >= self.idle_timeout {
            return Verdict::Dead;
        }
        let dead_at = heard + self.idle_timeout;
        let Some(interval) = self.keep_alive else {
            return Verdict::Wait(dead_at.max(now + TICK));
        };
        // Ping when the peer has been silent for an interval, and our last ping (if it
        // came after the peer's last frame) is an interval old.
        let quiet_since = self.last_ping.map_or(heard, |ping| ping.max(heard));
        let ping_at = quiet_since + interval;
        if now >= ping_at {
            self.last_ping = Some(now);
            Verdict::Ping(dead_at.min(now + interval).max(now + TICK))
        } else {
            Verdict::Wait(dead_at.min(ping_at).max(now + TICK))
        }
    }
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Stream data received (DATA bodies).
    pub bytes_in: u64,
    /// Stream data sent (DATA bodies).
    pub bytes_out: u64,
    /// Streams the peer opened that were accepted into the queue.
    pub streams_in: u64,
    /// Streams this side opened.
    pub streams_out: u64,
    /// Streams the peer opened that were refused (reset).
    pub streams_refused: u64,
}

/// One yamux connection's state; see the module docs.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    streams: HashMap<u32, StreamState>,
    next_id: u64,
    accept_queue: VecDeque<u32>,
    /// Our streams the peer has not acknowledged.
    unacked: usize,
    /// Sum of the windows of all streams (what the peer may make us buffer).
    granted: u64,
    control: Vec<u8>,
    /// `control` holds a frame other than the ACKs of accepted streams.
    control_urgent: bool,
    parse: Parse,
    go_away_sent: bool,
    go_away_received: bool,
    ended: Option<CloseReason>,
    first_frame: bool,
    last_rx: Instant,
    liveness: Liveness,
    next_check: Instant,
    ping_seq: u32,
    outstanding_ping: Option<(u32, Instant)>,
    rtt: Option<Duration>,
    counters: Counters,
    /// Free receive-buffer chunks, shared by the streams.
    pool: Pool,
    to_wake: Vec<Waker>,
    accept_wakers: Vec<Waker>,
    open_wakers: Vec<Waker>,
    end_wakers: Vec<Waker>,
    first_frame_wakers: Vec<Waker>,
}

fn register(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}

fn set_waker(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl Connection {
    /// A new connection; it queues a ping at once, to measure the round-trip time (and, on
    /// the dialer, to learn that the server accepted the TLS handshake).
    pub fn new(role: Role, config: Config, now: Instant) -> Self {
        let liveness = Liveness {
            keep_alive: config.keep_alive_interval,
            idle_timeout: config.idle_timeout,
            last_ping: Some(now),
        };
        let mut conn = Self {
            role,
            next_id: match role {
                Role::Client => 1,
                Role::Server => 2,
            },
            config,
            streams: HashMap::new(),
            accept_queue: VecDeque::new(),
            unacked: 0,
            granted: 0,
            control: Vec::new(),
            control_urgent: false,
            parse: NEW_HEADER,
            go_away_sent: false,
            go_away_received: false,
            ended: None,
            first_frame: false,
            last_rx: now,
            liveness,
            next_check: now,
            ping_seq: 0,
            outstanding_ping: None,
            rtt: None,
            counters: Counters::default(),
            pool: Pool::default(),
            to_wake: Vec::new(),
            accept_wakers: Vec::new(),
            open_wakers: Vec::new(),
            end_wakers: Vec::new(),
            first_frame_wakers: Vec::new(),
        };
        conn.send_ping(now);
        conn.handle_timeout(now);
        conn
    }

    // ---------------------------------------------------------------- observation

    /// Why the connection ended, or `None` while it runs.
    pub fn ended(&self) -> Option<&CloseReason> {
        self.ended.as_ref()
    }

    /// Streams open now (both directions, the accept queue included).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The sum of the windows granted to the peer: the most it can make us buffer.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// Bytes buffered in receive buffers and their allocated capacity, summed over
    /// streams (free chunks kept for reuse: [`Connection::pooled`]).
    pub fn buffered(&self) -> (usize, usize) {
        self.streams.values().fold((0, 0), |(l, c), s| {
            (l + s.recv.len(), c + s.recv.capacity())
        })
    }

    /// Bytes of free receive-buffer chunks the connection keeps for reuse: at most 4.25 MiB,
    /// and none after [`Connection::trim_buffers`].
    pub fn pooled(&self) -> usize {
        self.pool.capacity()
    }

    /// The last measured round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Traffic counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Whether a peer's GoAway or our own drain forbids new streams.
    pub fn is_draining(&self) -> bool {
        self.go_away_sent || self.go_away_received
    }

    /// Control frames queued and not yet taken.
    pub fn control_len(&self) -> usize {
        self.control.len()
    }

    /// Whether the queued control frames hold anything but the ACKs of streams the peer
    /// opened. Those alone may wait a moment to go out with the application's first
    /// reply (one TLS record and one write fewer per stream); the peer waits for nothing
    /// on them but its count of unacknowledged streams.
    pub fn control_urgent(&self) -> bool {
        self.control_urgent
    }

    /// Moves the queued control frames to the end of `out`.
    pub fn take_control(&mut self, out: &mut Vec<u8>) {
        self.control_urgent = false;
        if out.is_empty() {
            std::mem::swap(out, &mut self.control);
        } else {
            out.extend_from_slice(&self.control);
            self.control.clear();
        }
    }

    /// The wakers of everyone who can make progress now; wake them after releasing
    /// whatever lock guards the connection.
    pub fn take_wakers(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.to_wake)
    }

    /// Whether wakers are waiting to be taken.
    pub fn has_wakers(&self) -> bool {
        !self.to_wake.is_empty()
    }

    // ---------------------------------------------------------------- input

    /// Consumes bytes the peer sent. Every byte counts as a sign of life. A protocol
    /// violation ends the connection (with GoAway(protocol error) queued); input after
    /// the end is ignored.
    pub fn handle_input(&mut self, mut data: &[u8], now: Instant) {
        if self.ended.is_some() {
            return;
        }
        if !data.is_empty() {
            self.last_rx = now;
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
                        self.on_header(&header, now);
                    }
                }
                Parse::Body {
                    id,
                    remaining,
                    deliver,
                    fin,
                } => {
                    let (id, fin, deliver) = (*id, *fin, *deliver);
                    let take = (*remaining as usize).min(data.len());
                    *remaining -= take as u32;
                    let done = *remaining == 0;
                    if deliver {
                        self.deliver(id, &data[..take]);
                    }
                    data = &data[take..];
                    if done {
                        self.parse = NEW_HEADER;
                        if fin {
                            self.on_fin(id);
                        }
                    }
                }
            }
        }
    }

    /// The DATA body being received, when its bytes go to a stream: how many are still
    /// to come. The driver may then read up to that many bytes straight into the
    /// stream's buffer ([`Connection::lend_body_buffer`]): no copy between the
    /// connection and the stream.
    pub fn body_in_progress(&self) -> Option<u32> {
        match self.parse {
            Parse::Body {
                remaining,
                deliver: true,
                ..
            } if self.ended.is_none() => Some(remaining),
            _ => None,
        }
    }

    /// Lends out the receive buffer of the stream whose DATA body is arriving, with room
    /// for `want` more bytes (at most what the body has left), so the driver can read the
    /// body into it without holding the engine. The driver then appends at most that many
    /// bytes and gives it back with [`Connection::return_body_buffer`]; until then the
    /// application reads nothing new from that stream. `None` when no body is arriving
    /// for a stream that takes it.
    pub fn lend_body_buffer(&mut self, want: usize) -> Option<Lent> {
        let Parse::Body {
            id,
            remaining,
            deliver: true,
            ..
        } = self.parse
        else {
            return None;
        };
        if self.ended.is_some() {
            return None;
        }
        let s = self.streams.get_mut(&id)?;
        if s.reset.is_some() {
            return None;
        }
        Some(s.recv.lend(want.min(remaining as usize), &mut self.pool))
    }

    /// Takes back the buffer [`Connection::lend_body_buffer`] lent, with the bytes of
    /// the body read into it ([`Lent::filled`]), and goes on as
    /// [`Connection::handle_input`] would have with those bytes.
    pub fn return_body_buffer(&mut self, buf: Lent, now: Instant) {
        let Parse::Body {
            id,
            remaining,
            deliver: true,
            fin,
        } = &mut self.parse
        else {
            debug_assert!(false, "a body buffer returned with no body in progress");
            return;
        };
        let (id, fin) = (*id, *fin);
        let added = buf.added();
        debug_assert!(added <= *remaining as usize);
        *remaining -= added as u32;
        let done = *remaining == 0;
        if added > 0 {
            self.last_rx = now;
            self.counters.bytes_in += added as u64;
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv.restore(buf, &mut self.pool);
            // A stream reset meanwhile keeps nothing.
            if s.reset.is_some() && !s.fin_received {
                s.recv.clear(&mut self.pool);
            }
            if added > 0
                && let Some(w) = s.read_waker.take()
            {
                self.to_wake.push(w);
            }
        }
        if self.ended.is_some() {
            return;
        }
        if done {
            self.parse = NEW_HEADER;
            if fin {
                self.on_fin(id);
            }
        }
    }

    /// Gives back the allocations of the streams' emptied receive buffers (the driver
    /// calls it when the connection has gone quiet).
    pub fn trim_buffers(&mut self) {
        self.pool.trim();
    }

    fn deliver(&mut self, id: u32, bytes: &[u8]) {
        self.counters.bytes_in += bytes.len() as u64;
        if let Some(s) = self.streams.get_mut(&id)
            && s.reset.is_none()
        {
            s.recv.push_slice(bytes, &mut self.pool);
            if let Some(w) = s.read_waker.take() {
                self.to_wake.push(w);
            }
        }
    }

    fn on_header(&mut self, bytes: &[u8; HEADER_LEN], now: Instant) {
        let header = match Header::decode(bytes) {
            Ok(h) => h,
            Err(msg) => return self.violation(msg),
        };
        if !self.first_frame {
            self.first_frame = true;
            self.to_wake.append(&mut self.first_frame_wakers);
        }
        match header.kind {
            TYPE_PING => self.on_ping(header, now),
            TYPE_GO_AWAY => self.on_go_away(header.length),
            _ => self.on_stream_frame(header),
        }
    }

    fn on_ping(&mut self, header: Header, now: Instant) {
        if header.has(FLAG_SYN) {
            self.queue(Header::new(TYPE_PING, FLAG_ACK, 0, header.length));
        } else if header.has(FLAG_ACK)
            && let Some((seq, sent)) = self.outstanding_ping
            && seq == header.length
        {
            self.rtt = Some(now.saturating_duration_since(sent));
            self.outstanding_ping = None;
        }
    }

    fn on_go_away(&mut self, code: u32) {
        match code {
            GO_AWAY_NORMAL => {
                self.go_away_received = true;
                self.to_wake.append(&mut self.open_wakers);
                self.end_if_drained();
            }
            GO_AWAY_PROTOCOL_ERROR => self.end(CloseReason::Failed(Error::Protocol(
                "the peer reported a protocol violation by this side (yamux GoAway 1)".into(),
            ))),
            GO_AWAY_INTERNAL_ERROR => self.end(CloseReason::Failed(Error::Protocol(
                "the peer failed internally (yamux GoAway 2)".into(),
            ))),
            // A dialer's attempt that lost its race: a clean close, with its reason.
            GO_AWAY_SUPERSEDED => self.end(CloseReason::Peer(Some(SUPERSEDED.into()))),
            other => self.end(CloseReason::Failed(Error::Protocol(format!(
                "the peer went away with unknown error code {other} (yamux GoAway)"
            )))),
        }
    }

    fn is_peer_id(&self, id: u32) -> bool {
        match self.role {
            Role::Client => id.is_multiple_of(2),
            Role::Server => !id.is_multiple_of(2),
        }
    }

    /// Why a stream the peer opens now is refused, if it is.
    fn refusal(&self) -> Option<&'static str> {
        if self.go_away_sent {
            Some("this side is going away")
        } else if self.streams.len() >= self.config.max_streams {
            Some("max_streams reached")
        } else if self.accept_queue.len() >= self.config.accept_backlog {
            Some("accept backlog full")
        } else if self.granted + u64::from(INITIAL_WINDOW) > self.config.receive_budget {
            Some("receive budget exhausted")
        } else {
            None
        }
    }

    fn on_stream_frame(&mut self, header: Header) {
        let id = header.stream_id;
        let body = if header.kind == TYPE_DATA {
            header.length
        } else {
            0
        };
        if id == 0 {
            return self.violation("a stream frame on stream 0".into());
        }
        if header.has(FLAG_SYN) {
            if !self.is_peer_id(id) {
                return self.violation(format!(
                    "the peer opened stream {id}, an id of this side's parity"
                ));
            }
            if self.streams.contains_key(&id) {
                return self.violation(format!("the peer opened stream {id} twice"));
            }
            if header.has(FLAG_RST) {
                // Opened and reset in one frame: nothing to keep, nothing to answer.
                return self.discard(body);
            }
            if let Some(why) = self.refusal() {
                tracing::debug!(id, why, "refusing a stream the peer opened");
                self.counters.streams_refused += 1;
                self.queue(Header::new(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0));
                return self.discard(body);
            }
            let mut state = StreamState::new(false, INITIAL_WINDOW);
            if header.kind == TYPE_WINDOW_UPDATE {
                let Some(window) = INITIAL_WINDOW.checked_add(header.length) else {
                    return self.violation(format!("window update overflows stream {id}"));
                };
                state.send_window = window;
            }
            self.streams.insert(id, state);
            self.granted += u64::from(INITIAL_WINDOW);
            self.counters.streams_in += 1;
            // Acknowledge as the stream enters the accept queue: a hashicorp peer stops
            // opening after 256 unacknowledged streams.
            self.queue_ack(id);
            self.accept_queue.push_back(id);
            self.to_wake.append(&mut self.accept_wakers);
        } else {
            let Some(s) = self.streams.get_mut(&id) else {
                // Unknown or already closed: change nothing.
                return self.discard(body);
            };
            if header.has(FLAG_ACK) && s.outbound && !s.acked {
                s.acked = true;
                self.unacked -= 1;
                self.to_wake.append(&mut self.open_wakers);
            }
            if header.kind == TYPE_WINDOW_UPDATE && header.length > 0 {
                let Some(w) = s.send_window.checked_add(header.length) else {
                    return self.violation(format!("window update overflows stream {id}"));
                };
                s.send_window = w;
                if let Some(w) = s.write_waker.take() {
                    self.to_wake.push(w);
                }
            }
        }
        let s = self
            .streams
            .get_mut(&id)
            .expect("the stream exists: found or inserted above");
        if header.has(FLAG_RST) {
            if s.reset.is_none() {
                s.reset = Some(ResetBy::Peer);
                // A reset ends the peer's side too, unless it had finished it: then the
                // data before its FIN is complete, and stays readable up to EOF; only
                // our writes fail.
                if !s.fin_received {
                    s.recv.clear(&mut self.pool);
                }
                self.to_wake.extend(s.read_waker.take());
                self.to_wake.extend(s.write_waker.take());
            }
            return self.discard(body);
        }
        if body > 0 {
            if body > s.recv_window {
                let window = s.recv_window;
                return self.violation(format!(
                    "the peer sent {body} bytes on stream {id}, beyond its window of {window}"
                ));
            }
            s.recv_window -= body;
            let deliver = s.reset.is_none() && !s.fin_received;
            self.parse = Parse::Body {
                id,
                remaining: body,
                deliver,
                fin: header.has(FLAG_FIN),
            };
        } else if header.has(FLAG_FIN) {
            self.on_fin(id);
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

    fn on_fin(&mut self, id: u32) {
        if let Some(s) = self.streams.get_mut(&id)
            && !s.fin_received
        {
            s.fin_received = true;
            self.to_wake.extend(s.read_waker.take());
        }
    }

    /// The input ended cleanly (TLS close_notify): the peer closed the connection.
    pub fn handle_eof(&mut self) {
        self.end(CloseReason::Peer(None));
    }

    /// The input ended cleanly after a write had failed (the peer hung up while we
    /// wrote): a close by the peer if it said GoAway first, else a failure with the write
    /// error.
    pub fn handle_eof_after_write_error(&mut self, err: std::io::Error) {
        if self.go_away_received {
            self.end(CloseReason::Peer(None));
        } else {
            self.handle_io_error(err);
        }
    }

    /// Reading or writing the connection failed.
    pub fn handle_io_error(&mut self, err: std::io::Error) {
        let reason = if err.kind() == std::io::ErrorKind::TimedOut {
            // The kernel gave up on a peer that stopped acknowledging (TCP_USER_TIMEOUT,
            // keep-alive probes; both set from the idle timeout).
            CloseReason::Failed(Error::Timeout {
                what: TimeoutKind::Idle,
                after: self.config.idle_timeout,
            })
        } else if self.go_away_received && err.kind() == std::io::ErrorKind::UnexpectedEof {
            // Went away (GoAway) and then hung up without TLS close_notify.
            CloseReason::Peer(None)
        } else {
            CloseReason::Failed(Error::io(err))
        };
        self.end(reason);
    }

    // ---------------------------------------------------------------- timers

    /// When [`handle_timeout`](Connection::handle_timeout) wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ended.is_none().then_some(self.next_check)
    }

    /// Runs keep-alive and dead-peer detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended.is_some() || now < self.next_check {
            return;
        }
        match self.liveness.check(now, self.last_rx) {
            Verdict::Dead => self.end(CloseReason::Failed(Error::Timeout {
                what: TimeoutKind::Idle,
                after: self.config.idle_timeout,
            })),
            Verdict::Ping(next) => {
                self.send_ping(now);
                self.next_check = next;
            }
            Verdict::Wait(next) => self.next_check = next,
        }
    }

    fn send_ping(&mut self, now: Instant) {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        let seq = self.ping_seq;
        self.queue(Header::new(TYPE_PING, FLAG_SYN, 0, seq));
        // Only the first of overlapping pings is timed; the others only keep alive.
        if self.outstanding_ping.is_none() {
            self.outstanding_ping = Some((seq, now));
        }
    }

    // ---------------------------------------------------------------- application

    /// Opens a stream: queues its SYN and returns its id. Waits (registering `waker`)
    /// while [`MAX_UNACKED_OPENS`] of our streams wait for the peer's ACK.
    pub fn poll_open(&mut self, waker: &Waker) -> Poll<Result<u32, Error>> {
        if let Some(reason) = &self.ended {
            return Poll::Ready(Err(reason.to_error()));
        }
        if self.go_away_received {
            return Poll::Ready(Err(Error::ClosedByPeer(Some(
                "the peer is going away (yamux GoAway): no new streams".into(),
            ))));
        }
        if self.go_away_sent {
            return Poll::Ready(Err(Error::Closed));
        }
        if self.streams.len() >= self.config.max_streams {
            return Poll::Ready(Err(Error::LimitReached(Limit::Streams(
                self.config.max_streams,
            ))));
        }
        if self.granted + u64::from(INITIAL_WINDOW) > self.config.receive_budget {
            return Poll::Ready(Err(Error::LimitReached(Limit::ReceiveBudget(
                self.config.receive_budget,
            ))));
        }
        if self.next_id > u64::from(u32::MAX) {
            return Poll::Ready(Err(Error::LimitReached(Limit::StreamIds)));
        }
        if self.unacked >= MAX_UNACKED_OPENS {
            register(&mut self.open_wakers, waker);
            return Poll::Pending;
        }
        let id = self.next_id as u32;
        self.next_id += 2;
        self.streams
            .insert(id, StreamState::new(true, INITIAL_WINDOW));
        self.unacked += 1;
        self.granted += u64::from(INITIAL_WINDOW);
        self.counters.streams_out += 1;
        self.queue(Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0));
        Poll::Ready(Ok(id))
    }

    /// How many of our streams wait for the peer's ACK.
    pub fn unacked_opens(&self) -> usize {
        self.unacked
    }

    /// Takes the next stream the peer opened.
    pub fn poll_accept(&mut self, waker: &Waker) -> Poll<Result<u32, Error>> {
        if let Some(reason) = &self.ended {
            return Poll::Ready(Err(reason.to_error()));
        }
        if let Some(id) = self.accept_queue.pop_front() {
            return Poll::Ready(Ok(id));
        }
        register(&mut self.accept_wakers, waker);
        Poll::Pending
    }

    /// Reads from a stream into `dst`: `Ok(0)` is EOF (the peer finished), a reset or the
    /// end of the session an error. Grants the peer more credit as data is consumed, and
    /// grows the stream's window when the reader keeps up with the round-trip time.
    pub fn poll_read(
        &mut self,
        id: u32,
        waker: &Waker,
        dst: &mut [u8],
        now: Instant,
    ) -> Poll<Result<usize, Error>> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(self.gone()));
        };
        if s.reset == Some(ResetBy::Peer) && !s.fin_received {
            return Poll::Ready(Err(Error::StreamReset));
        }
        if s.recv.readable() > 0 {
            if dst.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let n = s.recv.read(dst, &mut self.pool);
            self.grant(id, now);
            return Poll::Ready(Ok(n));
        }
        if s.fin_received {
            return Poll::Ready(Ok(0));
        }
        if let Some(reason) = &self.ended {
            return Poll::Ready(Err(reason.to_error()));
        }
        set_waker(&mut s.read_waker, waker);
        Poll::Pending
    }

    /// Sends a window update once half the stream's window is free to grant again.
    fn grant(&mut self, id: u32, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        let headroom = (self.config.max_streams.saturating_sub(self.streams.len()))
            .min(GROWTH_HEADROOM_STREAMS) as u64
            * u64::from(INITIAL_WINDOW);
        let budget = self.config.receive_budget;
        let max_window = self.config.max_stream_window;
        let rtt = self.rtt;
        let granted = self.granted;
        // The rest of a DATA body still arriving was paid for when its header came.
        let in_flight = match self.parse {
            Parse::Body {
                id: body,
                remaining,
                ..
            } if body == id => u64::from(remaining),
            _ => 0,
        };
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.fin_received || s.reset.is_some() {
            return;
        }
        let held = s.recv_window as u64 + s.recv.len() as u64 + in_flight;
        let mut credit = u64::from(s.window).saturating_sub(held);
        if credit < u64::from(s.window / 2) {
            return;
        }
        // The reader took half a window within two round trips and left little behind:
        // the window, not the reader, limits the rate. Double it, within the per-stream
        // cap and the budget. A reader that falls behind leaves the window as it is:
        // more would only be buffered here.
        if let (Some(last), Some(rtt)) = (s.last_grant, rtt)
            && s.recv.len() as u64 <= u64::from(s.window / 4)
            && now.saturating_duration_since(last) < 2 * rtt.max(Duration::from_micros(50))
            && s.window < max_window
        {
            let grow = u64::from(s.window.min(max_window - s.window));
            if granted + grow + headroom <= budget {
                s.window += grow as u32;
                self.granted += grow;
                credit += grow;
            }
        }
        s.last_grant = Some(now);
        s.recv_window += credit as u32;
        self.queue(Header::new(TYPE_WINDOW_UPDATE, 0, id, credit as u32));
    }

    /// Reserves up to `len` bytes of the stream's send window for one DATA frame and
    /// returns its header. `len` must be more than zero. Waits (registering `waker`) while
    /// the peer grants no credit.
    pub fn poll_write(
        &mut self,
        id: u32,
        waker: &Waker,
        len: usize,
    ) -> Poll<Result<([u8; HEADER_LEN], usize), Error>> {
        debug_assert!(len > 0);
        if let Some(reason) = &self.ended {
            return Poll::Ready(Err(reason.to_error()));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(Error::Closed));
        };
        if s.reset.is_some() {
            return Poll::Ready(Err(Error::StreamReset));
        }
        if s.send_window == 0 {
            set_waker(&mut s.write_waker, waker);
            return Poll::Pending;
        }
        let n = len.min(s.send_window as usize).min(MAX_WRITE_FRAME);
        s.send_window -= n as u32;
        self.counters.bytes_out += n as u64;
        let header = Header::new(TYPE_DATA, 0, id, n as u32);
        Poll::Ready(Ok((header.encode(), n)))
    }

    /// Finishes our side of a stream (one FIN, however often it is called).
    pub fn shutdown(&mut self, id: u32) -> Result<(), Error> {
        if let Some(reason) = &self.ended {
            return Err(reason.to_error());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(Error::Closed);
        };
        if s.reset.is_some() {
            return Err(Error::StreamReset);
        }
        if !s.fin_sent {
            s.fin_sent = true;
            self.queue(Header::new(TYPE_WINDOW_UPDATE, FLAG_FIN, id, 0));
        }
        Ok(())
    }

    /// Aborts a stream: RST unless both sides had finished; buffered data is dropped and
    /// this stream's own waiters wake.
    pub fn reset(&mut self, id: u32) {
        let ended = self.ended.is_some();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.done() {
            return;
        }
        s.reset = Some(ResetBy::Local);
        s.recv.clear(&mut self.pool);
        self.to_wake.extend(s.read_waker.take());
        self.to_wake.extend(s.write_waker.take());
        if !ended {
            self.queue(Header::new(TYPE_WINDOW_UPDATE, FLAG_RST, id, 0));
        }
    }

    /// The application let go of a stream: reset it unless it was finished both ways,
    /// and forget it.
    pub fn release(&mut self, id: u32) {
        self.reset(id);
        let Some(mut s) = self.streams.remove(&id) else {
            return;
        };
        s.recv.clear(&mut self.pool);
        self.granted -= u64::from(s.window);
        if s.outbound && !s.acked {
            self.unacked -= 1;
        }
        // A slot (max_streams, the budget) is free again.
        self.to_wake.append(&mut self.open_wakers);
        self.end_if_drained();
    }

    /// Closes the connection: GoAway(normal), and every operation fails with
    /// [`Error::Closed`].
    pub fn close(&mut self) {
        if self.ended.is_some() {
            return;
        }
        if !self.go_away_sent {
            self.go_away_sent = true;
            self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
        }
        self.end(CloseReason::Local);
    }

    /// Closes the connection as an attempt that lost a race to another transport:
    /// GoAway([`GO_AWAY_SUPERSEDED`]) instead of GoAway(normal), so that the peer can
    /// tell it from a departure; otherwise as [`close`](Self::close).
    pub fn close_superseded(&mut self) {
        if self.ended.is_some() {
            return;
        }
        if !self.go_away_sent {
            self.go_away_sent = true;
            self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_SUPERSEDED));
        }
        self.end(CloseReason::Local);
    }

    /// Starts a drain: GoAway(normal) tells the peer to open no more streams, streams it
    /// opens anyway are reset, and the connection ends (as a local close) once the last
    /// open stream is released.
    pub fn drain(&mut self) {
        if self.ended.is_some() || self.go_away_sent {
            return;
        }
        self.go_away_sent = true;
        self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL));
        self.to_wake.append(&mut self.open_wakers);
        self.end_if_drained();
    }

    fn end_if_drained(&mut self) {
        if self.streams.is_empty() && self.ended.is_none() {
            if self.go_away_sent {
                self.end(CloseReason::Local);
            } else if self.go_away_received {
                self.end(CloseReason::Peer(None));
            }
        }
    }

    /// Registers `waker` for the end of the connection; true once it has ended.
    pub fn poll_end(&mut self, waker: &Waker) -> bool {
        if self.ended.is_some() {
            return true;
        }
        register(&mut self.end_wakers, waker);
        false
    }

    /// Registers `waker` for the peer's first frame; true once it arrived.
    pub fn poll_first_frame(&mut self, waker: &Waker) -> bool {
        if self.first_frame {
            return true;
        }
        register(&mut self.first_frame_wakers, waker);
        false
    }

    /// Ends the connection for a reason found outside it (the driver stopped).
    pub fn fail(&mut self, reason: CloseReason) {
        self.end(reason);
    }

    // ---------------------------------------------------------------- internals

    fn gone(&self) -> Error {
        self.ended
            .as_ref()
            .map(CloseReason::to_error)
            .unwrap_or(Error::Closed)
    }

    fn queue(&mut self, header: Header) {
        self.control_urgent = true;
        self.control.extend_from_slice(&header.encode());
    }

    /// Queues the ACK of a stream the peer opened: the one control frame that may wait
    /// for the application's first reply ([`Connection::control_urgent`]).
    fn queue_ack(&mut self, id: u32) {
        let ack = Header::new(TYPE_WINDOW_UPDATE, FLAG_ACK, id, 0);
        self.control.extend_from_slice(&ack.encode());
    }

    fn violation(&mut self, msg: String) {
        tracing::debug!("yamux protocol violation: {msg}");
        self.queue(Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR));
        self.go_away_sent = true;
        self.end(CloseReason::Failed(Error::Protocol(format!(
            "yamux: {msg}"
        ))));
    }

    fn end(&mut self, reason: CloseReason) {
        if self.ended.is_some() {
            return;
        }
        tracing::debug!(%reason, "yamux session ended");
        self.ended = Some(reason);
        // Streams nobody accepted die with the connection.
        for id in std::mem::take(&mut self.accept_queue) {
            if let Some(s) = self.streams.remove(&id) {
                self.granted -= u64::from(s.window);
            }
        }
        for s in self.streams.values_mut() {
            self.to_wake.extend(s.read_waker.take());
            self.to_wake.extend(s.write_waker.take());
        }
        self.to_wake.append(&mut self.accept_wakers);
        self.to_wake.append(&mut self.open_wakers);
        self.to_wake.append(&mut self.end_wakers);
        self.to_wake.append(&mut self.first_frame_wakers);
    }
}

#[cfg(test)]
mod tests;
