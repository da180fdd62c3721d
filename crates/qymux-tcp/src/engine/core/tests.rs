//! Unit tests of the engine, driven deterministically: two connections wired back to back
//! in memory, or one connection fed hand-made frames.

use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use qymux_transport::{CloseReason, Error, Limit, TimeoutKind};

use super::*;
use crate::engine::frame::{
    FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, HEADER_LEN,
    Header, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING, TYPE_WINDOW_UPDATE,
};

pub(super) fn config() -> Config {
    let mut config = Config::default();
    config
        .max_streams(1024)
        .accept_backlog(256)
        .receive_budget(256 * 1024 * 1024)
        .max_stream_window(16 * 1024 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .idle_timeout(Duration::from_secs(30));
    config
}

fn noop() -> &'static Waker {
    Waker::noop()
}

/// Frames a connection queued, decoded (bodies skipped: control frames have none).
fn control_frames(c: &mut Connection) -> Vec<Header> {
    let mut out = Vec::new();
    c.take_control(&mut out);
    out.chunks(HEADER_LEN)
        .map(|b| Header::decode(b.try_into().unwrap()).unwrap())
        .collect()
}

/// Moves control frames both ways until both are quiet.
fn pump(a: &mut Connection, b: &mut Connection, now: Instant) {
    loop {
        let mut ab = Vec::new();
        a.take_control(&mut ab);
        let mut ba = Vec::new();
        b.take_control(&mut ba);
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        b.handle_input(&ab, now);
        a.handle_input(&ba, now);
    }
}

/// Writes `data` on stream `id` of `from` into `to`, frame by frame, as far as the window
/// allows; returns how much went.
fn send(from: &mut Connection, to: &mut Connection, id: u32, data: &[u8], now: Instant) -> usize {
    let mut sent = 0;
    while sent < data.len() {
        match from.poll_write(id, noop(), data.len() - sent) {
            Poll::Ready(Ok((header, n))) => {
                to.handle_input(&header, now);
                to.handle_input(&data[sent..sent + n], now);
                sent += n;
            }
            Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            Poll::Pending => break,
        }
    }
    sent
}

fn read_all(c: &mut Connection, id: u32, now: Instant) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        match c.poll_read(id, noop(), &mut buf, now) {
            Poll::Ready(Ok(0)) => return Ok(out),
            Poll::Ready(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(out),
        }
    }
}

fn pair() -> (Connection, Connection, Instant) {
    let now = Instant::now();
    let mut client = Connection::new(Role::Client, config(), now);
    let mut server = Connection::new(Role::Server, config(), now);
    pump(&mut client, &mut server, now);
    (client, server, now)
}

fn open(c: &mut Connection) -> u32 {
    match c.poll_open(noop()) {
        Poll::Ready(Ok(id)) => id,
        other => panic!("open: {other:?}"),
    }
}

fn accept(c: &mut Connection) -> u32 {
    match c.poll_accept(noop()) {
        Poll::Ready(Ok(id)) => id,
        other => panic!("accept: {other:?}"),
    }
}

#[test]
fn a_stream_carries_data_both_ways_with_half_close() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    assert_eq!(id, 1, "the dialer's streams are odd");
    pump(&mut client, &mut server, now);
    assert_eq!(accept(&mut server), 1, "visible at open, before any data");
    assert_eq!(send(&mut client, &mut server, 1, b"hello", now), 5);
    client.shutdown(1).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(read_all(&mut server, 1, now).unwrap(), b"hello");
    assert_eq!(send(&mut server, &mut client, 1, b"world", now), 5);
    server.shutdown(1).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(read_all(&mut client, 1, now).unwrap(), b"world");
    client.release(1);
    server.release(1);
    assert!(
        control_frames(&mut client).is_empty(),
        "finished both ways: no RST"
    );
    assert_eq!(client.open_streams(), 0);
    assert_eq!(client.granted(), 0);
}

#[test]
fn shutdown_sends_one_fin_however_often_called() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    client.shutdown(id).unwrap();
    client.shutdown(id).unwrap();
    let fins = control_frames(&mut client)
        .into_iter()
        .filter(|h| h.has(FLAG_FIN))
        .count();
    assert_eq!(fins, 1);
}

#[test]
fn release_after_our_fin_resets_while_the_peer_still_sends() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    client.shutdown(id).unwrap();
    pump(&mut client, &mut server, now);
    client.release(id);
    let frames = control_frames(&mut client);
    assert!(
        frames.iter().any(|h| h.stream_id == id && h.has(FLAG_RST)),
        "{frames:?}"
    );
}

#[test]
fn a_one_byte_frame_flood_stays_within_the_window() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let _ = accept(&mut server);
    // The server never reads: the client can send exactly one window, in 1-byte frames.
    let mut sent = 0usize;
    while let Poll::Ready(Ok((header, n))) = client.poll_write(id, noop(), 1) {
        server.handle_input(&header, now);
        server.handle_input(&[7u8][..n], now);
        sent += n;
    }
    assert_eq!(sent, INITIAL_WINDOW as usize);
    let (len, cap) = server.buffered();
    assert_eq!(len, INITIAL_WINDOW as usize);
    assert!(cap <= 2 * INITIAL_WINDOW as usize, "capacity {cap}");
    assert!(server.ended().is_none());
}

#[test]
fn data_beyond_the_window_is_a_protocol_violation() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let too_much = Header::new(TYPE_DATA, 0, id, INITIAL_WINDOW + 1).encode();
    server.handle_input(&too_much, now);
    assert!(matches!(
        server.ended(),
        Some(CloseReason::Failed(Error::Protocol(m))) if m.contains("beyond its window")
    ));
    let frames = control_frames(&mut server);
    assert!(
        frames
            .iter()
            .any(|h| h.kind == TYPE_GO_AWAY && h.length == GO_AWAY_PROTOCOL_ERROR)
    );
}

#[test]
fn syn_rst_floods_leave_no_state() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, config(), now);
    let _ = control_frames(&mut server);
    let mut input = Vec::new();
    for i in 0..10_000u32 {
        input
            .extend_from_slice(&Header::new(TYPE_DATA, FLAG_SYN | FLAG_RST, 2 * i + 1, 0).encode());
    }
    server.handle_input(&input, now);
    assert!(server.ended().is_none());
    assert_eq!(server.open_streams(), 0);
    assert!(control_frames(&mut server).is_empty(), "nothing to answer");
    assert!(matches!(server.poll_accept(noop()), Poll::Pending));
}

#[test]
fn frames_for_unknown_streams_change_nothing() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, config(), now);
    let _ = control_frames(&mut server);
    let mut input = Header::new(TYPE_DATA, 0, 5, 3).encode().to_vec();
    input.extend_from_slice(b"abc");
    input.extend_from_slice(&Header::new(TYPE_WINDOW_UPDATE, FLAG_FIN, 7, 100).encode());
    input.extend_from_slice(&Header::new(TYPE_DATA, FLAG_RST, 9, 0).encode());
    server.handle_input(&input, now);
    assert!(server.ended().is_none());
    assert_eq!(server.open_streams(), 0);
    assert!(control_frames(&mut server).is_empty());
}

#[test]
fn streams_beyond_max_streams_or_the_backlog_are_reset() {
    let now = Instant::now();
    let mut cfg = config();
    cfg.accept_backlog = 2;
    let mut server = Connection::new(Role::Server, cfg, now);
    let _ = control_frames(&mut server);
    for id in [1u32, 3, 5] {
        server.handle_input(
            &Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0).encode(),
            now,
        );
    }
    let frames = control_frames(&mut server);
    assert_eq!(
        frames.iter().filter(|h| h.has(FLAG_ACK)).count(),
        2,
        "{frames:?}"
    );
    assert!(frames.iter().any(|h| h.stream_id == 5 && h.has(FLAG_RST)));
    assert_eq!(server.open_streams(), 2, "the refused stream left nothing");
}

#[test]
fn open_waits_while_256_streams_are_unacknowledged() {
    let now = Instant::now();
    let mut client = Connection::new(Role::Client, config(), now);
    for _ in 0..MAX_UNACKED_OPENS {
        open(&mut client);
    }
    assert!(client.poll_open(noop()).is_pending());
    // An ACK from the peer makes room.
    client.handle_input(
        &Header::new(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0).encode(),
        now,
    );
    assert!(matches!(client.poll_open(noop()), Poll::Ready(Ok(_))));
}

#[test]
fn go_away_normal_lets_open_streams_finish_then_ends() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let sid = accept(&mut server);
    server.drain();
    pump(&mut client, &mut server, now);
    assert!(client.ended().is_none(), "in-flight streams go on");
    assert!(matches!(
        client.poll_open(noop()),
        Poll::Ready(Err(Error::ClosedByPeer(_)))
    ));
    // Streams the peer opens after the drain are refused.
    server.handle_input(
        &Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, 101, 0).encode(),
        now,
    );
    assert!(
        control_frames(&mut server)
            .iter()
            .any(|h| h.stream_id == 101 && h.has(FLAG_RST))
    );
    assert_eq!(send(&mut client, &mut server, id, b"last call", now), 9);
    client.shutdown(id).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(read_all(&mut server, sid, now).unwrap(), b"last call");
    server.shutdown(sid).unwrap();
    pump(&mut client, &mut server, now);
    server.release(sid);
    assert!(matches!(server.ended(), Some(CloseReason::Local)));
    client.release(id);
    assert!(matches!(client.ended(), Some(CloseReason::Peer(None))));
}

#[test]
fn go_away_with_an_error_code_is_a_failure() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Client, config(), now);
    c.handle_input(&Header::new(TYPE_GO_AWAY, 0, 0, 2).encode(), now);
    assert!(matches!(
        c.ended(),
        Some(CloseReason::Failed(Error::Protocol(_)))
    ));
    let mut c = Connection::new(Role::Client, config(), now);
    c.handle_input(
        &Header::new(TYPE_GO_AWAY, 0, 0, GO_AWAY_NORMAL).encode(),
        now,
    );
    assert!(
        matches!(c.ended(), Some(CloseReason::Peer(None))),
        "no streams: ends now"
    );
}

#[test]
fn pings_are_answered_and_time_the_round_trip() {
    let now = Instant::now();
    let mut c = Connection::new(Role::Server, config(), now);
    let sent = control_frames(&mut c);
    assert_eq!(sent.len(), 1, "a ping at start: {sent:?}");
    assert!(sent[0].kind == TYPE_PING && sent[0].has(FLAG_SYN));
    let later = now + Duration::from_millis(30);
    c.handle_input(
        &Header::new(TYPE_PING, FLAG_ACK, 0, sent[0].length).encode(),
        later,
    );
    assert_eq!(c.rtt(), Some(Duration::from_millis(30)));
    c.handle_input(&Header::new(TYPE_PING, FLAG_SYN, 0, 77).encode(), later);
    let answer = control_frames(&mut c);
    assert_eq!(answer, vec![Header::new(TYPE_PING, FLAG_ACK, 0, 77)]);
}

#[test]
fn silence_pings_then_declares_the_peer_dead() {
    let now = Instant::now();
    let mut cfg = config();
    cfg.keep_alive_interval = Some(Duration::from_millis(500));
    cfg.idle_timeout = Duration::from_millis(2000);
    let mut c = Connection::new(Role::Client, cfg, now);
    let _ = control_frames(&mut c);
    let t = now + Duration::from_millis(500);
    assert_eq!(c.poll_timeout(), Some(t));
    c.handle_timeout(t);
    assert_eq!(control_frames(&mut c).len(), 1, "a keep-alive ping");
    // A byte from the peer is a sign of life, even mid-frame.
    c.handle_input(&[0u8], now + Duration::from_millis(1900));
    c.handle_timeout(now + Duration::from_millis(2100));
    assert!(c.ended().is_none());
    let dead = now + Duration::from_millis(3900);
    c.handle_timeout(dead);
    assert!(matches!(
        c.ended(),
        Some(CloseReason::Failed(Error::Timeout {
            what: TimeoutKind::Idle,
            ..
        }))
    ));
}

#[test]
fn the_budget_caps_what_is_granted() {
    let now = Instant::now();
    let mut cfg = config();
    cfg.receive_budget = 3 * u64::from(INITIAL_WINDOW);
    let mut c = Connection::new(Role::Client, cfg, now);
    for _ in 0..3 {
        open(&mut c);
    }
    assert!(matches!(
        c.poll_open(noop()),
        Poll::Ready(Err(Error::LimitReached(Limit::ReceiveBudget(_))))
    ));
    // And the peer's new streams are refused.
    c.handle_input(
        &Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0).encode(),
        now,
    );
    assert!(
        control_frames(&mut c)
            .iter()
            .any(|h| h.stream_id == 2 && h.has(FLAG_RST))
    );
}

#[test]
fn windows_grow_when_the_reader_keeps_up_within_the_budget() {
    let (mut client, mut server, mut now) = pair();
    // Give the server an RTT of 10 ms.
    server.handle_timeout(now);
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let _ = accept(&mut server);
    server.rtt = Some(Duration::from_millis(10));
    let chunk = vec![1u8; 4 * 1024 * 1024];
    let mut received = 0usize;
    for _ in 0..40 {
        let n = send(&mut client, &mut server, id, &chunk, now);
        received += read_all(&mut server, id, now).unwrap().len();
        pump(&mut client, &mut server, now);
        now += Duration::from_millis(1);
        assert!(n > 0);
    }
    assert!(received > 0);
    let granted = server.granted();
    assert!(
        granted > u64::from(INITIAL_WINDOW),
        "the window grew: {granted}"
    );
    assert!(granted <= u64::from(config().max_stream_window));
}

#[test]
fn a_reader_that_lags_keeps_its_window() {
    let (mut client, mut server, mut now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let _ = accept(&mut server);
    server.rtt = Some(Duration::from_millis(10));
    let chunk = vec![1u8; 4 * 1024 * 1024];
    let mut half = vec![0u8; INITIAL_WINDOW as usize / 2];
    for _ in 0..40 {
        send(&mut client, &mut server, id, &chunk, now);
        // Half a window within a round trip, as fast as before, but half a window stays
        // unread each time: the reader, not the window, limits the rate.
        match server.poll_read(id, noop(), &mut half, now) {
            Poll::Ready(Ok(n)) => assert_eq!(n, half.len()),
            other => panic!("read: {other:?}"),
        }
        pump(&mut client, &mut server, now);
        now += Duration::from_millis(1);
    }
    assert_eq!(
        server.granted(),
        u64::from(INITIAL_WINDOW),
        "the window grew"
    );
    let (held, _) = server.buffered();
    assert!(held as u64 <= u64::from(INITIAL_WINDOW));
}

#[test]
fn acks_alone_may_wait_other_control_frames_may_not() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    // pump delivered the SYN and took the ACK; open another to look at the queue.
    let _ = accept(&mut server);
    let id2 = open(&mut client);
    let mut syn = Vec::new();
    client.take_control(&mut syn);
    server.handle_input(&syn, now);
    assert!(server.control_len() > 0);
    assert!(!server.control_urgent(), "only an ACK is queued");
    // A window update joins it: now the queue must go out.
    let sent = send(
        &mut client,
        &mut server,
        id,
        &vec![0u8; INITIAL_WINDOW as usize],
        now,
    );
    assert_eq!(sent, INITIAL_WINDOW as usize);
    assert_eq!(read_all_available(&mut server, id, now), sent);
    assert!(server.control_urgent(), "a window update is queued");
    let frames = control_frames(&mut server);
    assert!(frames.iter().any(|h| h.stream_id == id2 && h.has(FLAG_ACK)));
    assert!(
        frames
            .iter()
            .any(|h| h.stream_id == id && h.kind == TYPE_WINDOW_UPDATE && h.length > 0)
    );
    assert!(!server.control_urgent(), "the queue was taken");
}

/// Reads what stream `id` holds now (not waiting for EOF).
fn read_all_available(c: &mut Connection, id: u32, now: Instant) -> usize {
    let mut buf = vec![0u8; 100_000];
    let mut total = 0;
    while let Poll::Ready(Ok(n)) = c.poll_read(id, noop(), &mut buf, now) {
        if n == 0 {
            break;
        }
        total += n;
    }
    total
}

#[test]
fn read_chunks_are_reused_and_freed_when_quiet() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let _ = accept(&mut server);
    let data = vec![5u8; INITIAL_WINDOW as usize];
    assert_eq!(send(&mut client, &mut server, id, &data, now), data.len());
    let (held, capacity) = server.buffered();
    assert_eq!(held, data.len());
    assert!(capacity >= held && capacity <= held + held / 3 + 128 * 1024);
    assert_eq!(read_all_available(&mut server, id, now), data.len());
    assert_eq!(
        server.buffered(),
        (0, 0),
        "an emptied stream holds no chunk"
    );
    assert!(server.pooled() > 0, "its chunks wait in the pool for reuse");
    // The next window's worth reuses them: the pool does not grow.
    pump(&mut client, &mut server, now);
    let pooled = server.pooled();
    let again = send(&mut client, &mut server, id, &data, now);
    assert!(again > 0);
    assert_eq!(read_all_available(&mut server, id, now), again);
    assert_eq!(server.pooled(), pooled);
    server.trim_buffers();
    assert_eq!(server.pooled(), 0);
}

#[test]
fn a_reset_after_the_peers_fin_keeps_its_data_readable() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let sid = accept(&mut server);
    // The server answers, finishes, and drops its stream while the client's side is
    // still open: FIN, then RST.
    assert_eq!(
        send(&mut server, &mut client, sid, b"complete reply", now),
        14
    );
    server.shutdown(sid).unwrap();
    server.release(sid);
    pump(&mut client, &mut server, now);
    assert_eq!(read_all(&mut client, id, now).unwrap(), b"complete reply");
    assert!(matches!(
        client.poll_write(id, noop(), 1),
        Poll::Ready(Err(Error::StreamReset))
    ));
}

#[test]
fn a_reset_without_fin_discards_the_truncated_data() {
    let (mut client, mut server, now) = pair();
    let id = open(&mut client);
    pump(&mut client, &mut server, now);
    let sid = accept(&mut server);
    assert_eq!(send(&mut server, &mut client, sid, b"half a rep", now), 10);
    server.reset(sid);
    pump(&mut client, &mut server, now);
    assert!(matches!(
        read_all(&mut client, id, now),
        Err(Error::StreamReset)
    ));
}

#[test]
fn a_syn_whose_credit_overflows_the_window_is_a_violation() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, config(), now);
    server.handle_input(
        &Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, u32::MAX - 5).encode(),
        now,
    );
    assert!(matches!(
        server.ended(),
        Some(CloseReason::Failed(Error::Protocol(m))) if m.contains("overflows")
    ));
}
