//! Property tests of the TCP engine's sans-IO core (`qymux_tcp::engine::core`): random
//! frame sequences split at random points and random interleavings of the application's
//! operations, against a model of what the core promises. The checks themselves live in
//! `engine_harness/` (shared with the fuzz target `fuzz/fuzz_targets/yamux_engine.rs`):
//! after every step the core matches the model (frames queued, results, typed errors, why
//! and when it ended), the bytes it holds stay within what it granted and the budget, the
//! open streams within `max_streams`, the control queue within one frame per header or
//! operation; a protocol violation ends it with `Error::Protocol` after GoAway(1), and
//! input after the end changes nothing.

mod engine_harness;

use engine_harness::{
    AppOp, Legal, Length, Limits, Pair, PairOp, PeerOp, Solo, SoloOp, Target, run_bytes,
};
use proptest::prelude::*;
use qymux_tcp::engine::core::{INITIAL_WINDOW, Role};
use qymux_tcp::engine::frame::{
    FLAG_ACK, FLAG_FIN, FLAG_RST, FLAG_SYN, HEADER_LEN, Header, TYPE_DATA, TYPE_GO_AWAY, TYPE_PING,
    TYPE_WINDOW_UPDATE,
};
use qymux_tcp::transport::{CloseReason, Error};

// ------------------------------------------------------------------------ strategies

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

/// Small limits, so that max_streams, the backlog and the budget are reached, now and
/// then larger ones, where windows grow, and the defaults (where 256 opens can wait for
/// their ACKs).
fn limits() -> impl Strategy<Value = Limits> {
    let defaults = Limits {
        max_streams: 1024,
        accept_backlog: 256,
        budget_windows: 1024,
        max_window_windows: 64,
        keep_alive_ms: 10_000,
        idle_ms: 30_000,
    };
    prop_oneof![4 => small_limits(), 1 => Just(defaults)]
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (
        prop_oneof![3 => 1usize..=6, 1 => Just(1024)],
        prop_oneof![3 => 1usize..=3, 1 => Just(256)],
        prop_oneof![3 => 1u64..=8, 1 => Just(80), 1 => Just(1024)],
        prop_oneof![1 => Just(1u32), 2 => 2u32..=8],
        prop_oneof![Just(0u64), Just(10_000), 500u64..=5_000],
    )
        .prop_map(
            |(max_streams, accept_backlog, budget_windows, max_window_windows, keep_alive_ms)| {
                Limits {
                    max_streams,
                    accept_backlog,
                    budget_windows,
                    max_window_windows,
                    keep_alive_ms,
                    idle_ms: 30_000,
                }
            },
        )
}

/// Read, write and chunk sizes: mostly small (headers split anywhere), sometimes around a
/// frame or a window, sometimes bulk.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..=40,
        3 => 0usize..=5_000,
        2 => 5_000usize..=400_000,
        1 => prop::sample::select(vec![
            12usize, 13, 65_536, 131_072, 262_143, 262_144, 262_145, 1 << 20,
        ]),
    ]
}

/// The application's operations; `end_weight` weighs drain and close against about 100
/// for the others (they end a run's interesting part early).
fn app_op(max_advance_ms: u64, end_weight: u32) -> impl Strategy<Value = AppOp> {
    prop_oneof![
        12 => prop_oneof![
            40 => Just(1u16),
            2 => 2u16..=300,
            1 => Just(257),
        ]
        .prop_map(|times| AppOp::Open { times }),
        12 => Just(AppOp::Accept),
        25 => (any::<usize>(), size()).prop_map(|(stream, len)| AppOp::Read { stream, len }),
        25 => (any::<usize>(), size())
            .prop_map(|(stream, len)| AppOp::Write { stream, len: len.max(1) }),
        8 => (any::<usize>(), 1u8..=3).prop_map(|(stream, times)| AppOp::Shutdown { stream, times }),
        3 => (any::<usize>(), 1u8..=2).prop_map(|(stream, times)| AppOp::Reset { stream, times }),
        6 => any::<usize>().prop_map(|stream| AppOp::Release { stream }),
        end_weight => prop_oneof![3 => Just(AppOp::Drain), 1 => Just(AppOp::Close)],
        8 => (0..=max_advance_ms).prop_map(|ms| AppOp::Advance { ms }),
    ]
}

fn legal() -> impl Strategy<Value = Legal> {
    prop_oneof![
        3 => (prop_oneof![Just(0u32), 1u32..300_000], prop::bool::weighted(0.2))
            .prop_map(|(data, fin)| Legal::Open { data, fin }),
        8 => (any::<usize>(), size(), prop::bool::weighted(0.15))
            .prop_map(|(stream, len, fin)| Legal::Data { stream, len: len as u32, fin }),
        2 => (any::<usize>(), 0u32..1_000_000)
            .prop_map(|(stream, len)| Legal::Credit { stream, len }),
        3 => any::<usize>().prop_map(|stream| Legal::Ack { stream }),
        2 => any::<usize>().prop_map(|stream| Legal::Fin { stream }),
        1 => any::<usize>().prop_map(|stream| Legal::Rst { stream }),
        1 => prop_oneof![Just(Legal::Ping), Just(Legal::Pong)],
        // hashicorp's drain: rare, it stops new streams.
        1 => prop::bool::weighted(0.2).prop_map(|go| if go { Legal::GoAway } else { Legal::Ping }),
    ]
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        3 => any::<usize>().prop_map(Target::Held),
        2 => any::<usize>().prop_map(Target::Live),
        1 => any::<usize>().prop_map(Target::Released),
        2 => Just(Target::NextPeer),
        1 => (0u32..8).prop_map(Target::Id),
        1 => any::<u32>().prop_map(Target::Id),
    ]
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        3 => (0u32..64).prop_map(Length::Exact),
        1 => any::<u32>().prop_map(Length::Exact),
        2 => Just(Length::Credit),
        2 => (1u32..1000).prop_map(Length::CreditPlus),
    ]
}

fn kind() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(TYPE_DATA),
        4 => Just(TYPE_WINDOW_UPDATE),
        1 => Just(TYPE_PING),
        1 => Just(TYPE_GO_AWAY),
        1 => 4u8..=255,
    ]
}

fn flags() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(0u16),
        2 => Just(FLAG_SYN),
        1 => Just(FLAG_ACK),
        2 => Just(FLAG_FIN),
        1 => Just(FLAG_RST),
        1 => 0u16..16,
        1 => any::<u16>(),
    ]
}

fn frame() -> impl Strategy<Value = PeerOp> {
    (kind(), flags(), target(), length()).prop_map(|(kind, flags, target, length)| PeerOp::Frame {
        kind,
        flags,
        target,
        length,
    })
}

fn flood() -> impl Strategy<Value = PeerOp> {
    prop_oneof![
        (0u16..400, any::<bool>(), any::<bool>()).prop_map(|(count, rst, data)| PeerOp::SynFlood {
            count,
            rst,
            data
        }),
        (target(), 0u16..700).prop_map(|(target, count)| PeerOp::TinyData { target, count }),
    ]
}

fn deliver() -> impl Strategy<Value = PeerOp> {
    prop_oneof![
        3 => size().prop_map(|len| PeerOp::Deliver { len }),
        1 => (1usize..=4096).prop_map(|piece| PeerOp::DeliverAll { piece }),
    ]
}

/// A peer that is legal most of the time, and hostile with weight `hostile` (against 40
/// for legal frames): arbitrary bytes, frames with valid headers but anything in them,
/// floods.
fn peer_op(hostile: u32) -> impl Strategy<Value = PeerOp> {
    prop_oneof![
        40 => (legal(), prop_oneof![1usize..=30, 31usize..=70_000])
            .prop_map(|(frame, piece)| PeerOp::Legal { frame, piece }),
        hostile => prop::collection::vec(any::<u8>(), 0..40).prop_map(PeerOp::Raw),
        hostile * 2 => frame(),
        hostile + 1 => flood(),
        24 => deliver(),
        1 => prop_oneof![
            Just(PeerOp::Eof),
            (any::<u8>(), any::<bool>())
                .prop_map(|(kind, after_write)| PeerOp::IoError { kind, after_write }),
        ],
    ]
}

fn solo_op(hostile: u32) -> impl Strategy<Value = SoloOp> {
    prop_oneof![
        2 => app_op(3_000, 3).prop_map(SoloOp::App),
        3 => peer_op(hostile).prop_map(SoloOp::Peer),
    ]
}

fn pair_op() -> impl Strategy<Value = PairOp> {
    prop_oneof![
        5 => (any::<bool>(), app_op(1_000, 1))
            .prop_map(|(client, op)| PairOp::App { client, op }),
        4 => (any::<bool>(), size()).prop_map(|(from_client, len)| PairOp::Move { from_client, len }),
        1 => (0u64..=1_000).prop_map(|ms| PairOp::Advance { ms }),
        1 => (
            any::<bool>(),
            any::<usize>(),
            prop_oneof![0usize..=5_000, 5_000usize..=4_000_000],
            prop_oneof![1usize..=64, 64usize..=300_000],
            prop_oneof![1usize..=64, 64usize..=300_000],
        )
            .prop_map(|(from_client, stream, len, piece, read)| PairOp::Flow {
                from_client,
                stream,
                len,
                piece,
                read,
            }),
    ]
}

// ------------------------------------------------------------------------ properties

/// `cases` cases (`PROPTEST_CASES` overrides it, for a longer run); a failure prints its
/// shrunk input (and the trace of the side that failed) rather than writing a
/// regressions file into the source tree.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// One side against a peer that keeps to the protocol nearly always: opens (as
    /// WINDOW_UPDATE and as DATA), data within the credit left (in pieces of any size,
    /// the input split anywhere), credit, ACKs, FIN, RST, pings, now and then a drain,
    /// and rarely a frame with anything in its header; interleaved with every
    /// application operation and the passing of time. The core matches the model at
    /// every step: the exact bytes each stream holds and what every read returns, the
    /// frames it queues, typed errors, the bounds.
    #[test]
    fn one_side_against_a_plausible_peer(
        role in role(),
        limits in limits(),
        ops in prop::collection::vec(solo_op(0), 1..200),
    ) {
        let mut solo = Solo::new(role, &limits);
        for op in &ops {
            solo.step(op);
        }
        solo.finish();
    }

    /// One side against a hostile peer: frames with valid headers aimed at live, released
    /// and unknown streams (any flags, lengths around the credit left), arbitrary bytes,
    /// floods, the input split anywhere, interleaved with every application operation
    /// and the passing of time. The core matches the model at every step, within every
    /// bound, with typed errors; then everything sent is handed over at once.
    #[test]
    fn one_side_against_a_hostile_peer(
        role in role(),
        limits in limits(),
        ops in prop::collection::vec(solo_op(4), 1..160),
    ) {
        let mut solo = Solo::new(role, &limits);
        for op in &ops {
            solo.step(op);
        }
        solo.finish();
    }

    /// SYN floods (with and without RST, as WINDOW_UPDATE and as DATA) and one-byte DATA
    /// frames, against small limits and an application that accepts, reads and releases
    /// now and then: what the core holds stays within the windows it granted and the
    /// budget, the streams within max_streams and the backlog, and refused streams and
    /// streams opened and reset at once leave nothing behind.
    #[test]
    fn floods_stay_within_the_bounds(
        role in role(),
        limits in limits(),
        ops in prop::collection::vec(
            prop_oneof![
                4 => flood().prop_map(SoloOp::Peer),
                4 => deliver().prop_map(SoloOp::Peer),
                1 => frame().prop_map(SoloOp::Peer),
                2 => Just(SoloOp::App(AppOp::Accept)),
                2 => (any::<usize>(), size())
                    .prop_map(|(stream, len)| SoloOp::App(AppOp::Read { stream, len })),
                1 => any::<usize>().prop_map(|stream| SoloOp::App(AppOp::Release { stream })),
                1 => Just(SoloOp::App(AppOp::Open { times: 1 })),
            ],
            1..60,
        ),
    ) {
        let mut solo = Solo::new(role, &limits);
        for op in &ops {
            solo.step(op);
        }
        solo.finish();
    }

    /// Arbitrary bytes, mixed with well-formed and nearly well-formed headers, split at
    /// arbitrary points: no panic, the model's verdict on every header, and after the
    /// end (a violation, most of the time) nothing changes.
    #[test]
    fn arbitrary_bytes_split_anywhere(
        role in role(),
        limits in limits(),
        pieces in prop::collection::vec(
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..64),
                (any::<u8>(), any::<u8>(), any::<u16>(), 0u32..16, 0u32..300)
                    .prop_map(|(version, kind, flags, id, length)| {
                        let mut h = Header::new(kind % 5, flags % 16, id, length).encode();
                        if version < 16 {
                            h[0] = version;
                        }
                        h.to_vec()
                    }),
            ],
            1..40,
        ),
        splits in prop::collection::vec(1usize..50, 1..40),
    ) {
        let input: Vec<u8> = pieces.concat();
        let mut solo = Solo::new(role, &limits);
        let mut at = 0;
        for split in splits.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + split).min(input.len());
            solo.step(&SoloOp::Peer(PeerOp::Raw(input[at..end].to_vec())));
            solo.step(&SoloOp::Peer(PeerOp::Deliver { len: end - at }));
            at = end;
        }
    }

    /// Each kind of protocol violation, after a random stretch of legal traffic: the
    /// connection ends with `Error::Protocol`, GoAway(1) is the last frame queued, every
    /// operation then fails with that error (a held stream's buffered bytes and EOF
    /// excepted), and input after the end changes nothing.
    #[test]
    fn violations_end_with_go_away_and_a_typed_error(
        role in role(),
        limits in limits(),
        before in prop::collection::vec(solo_op(4), 0..40),
        violation in 0u8..9,
        split in 1usize..24,
        after in prop::collection::vec(solo_op(4), 0..20),
    ) {
        let mut solo = Solo::new(role, &limits);
        for op in &before {
            solo.step(op);
        }
        // Whatever the peer sent so far arrives; then the violation (unless a frame
        // announced a body longer than what was sent: the violation would be body).
        solo.finish();
        let unchecked = solo.side.is_ended() || !solo.side.at_frame_boundary();
        let own = match role {
            Role::Client => 1u32,
            Role::Server => 2,
        };
        let live = solo.side.live_ids();
        let data = |id: u32, n: u32| {
            let mut v = Header::new(TYPE_DATA, 0, id, n).encode().to_vec();
            v.resize(HEADER_LEN + n as usize, 7);
            v
        };
        let bad: Vec<u8> = match violation {
            0 => {
                let mut h = Header::new(TYPE_PING, FLAG_SYN, 0, 1).encode();
                h[0] = 1;
                h.to_vec()
            }
            1 => {
                let mut h = Header::new(TYPE_DATA, 0, 1, 0).encode();
                h[1] = 4;
                h.to_vec()
            }
            2 => Header::new(TYPE_WINDOW_UPDATE, 0, 0, 5).encode().to_vec(),
            // A SYN with an id of the core's own parity.
            3 => Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, own + 1000, 0).encode().to_vec(),
            // A SYN for a stream that exists (or, without one, an own-parity SYN).
            4 => match live.first() {
                Some(&id) => Header::new(TYPE_DATA, FLAG_SYN, id, 0).encode().to_vec(),
                None => Header::new(TYPE_DATA, FLAG_SYN, own, 0).encode().to_vec(),
            },
            // More data than the stream's credit.
            5 => match live.first() {
                Some(&id) => {
                    let credit = solo.side.credit(id).unwrap() as u32;
                    data(id, credit + 1)
                }
                None => {
                    let id = own ^ 1 | 1 << 20;
                    let mut v = Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, id, 0)
                        .encode()
                        .to_vec();
                    v.extend(data(id, INITIAL_WINDOW + 1));
                    v
                }
            },
            // A window update past 2^32 - 1.
            6 => match live.first() {
                Some(&id) => {
                    let mut v = Header::new(TYPE_WINDOW_UPDATE, 0, id, u32::MAX).encode().to_vec();
                    v.extend(Header::new(TYPE_WINDOW_UPDATE, 0, id, u32::MAX).encode());
                    v
                }
                None => Header::new(TYPE_DATA, FLAG_FIN, 0, 0).encode().to_vec(),
            },
            // A SYN whose window update overflows the initial window.
            7 => Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, own ^ 1 | 1 << 20, u32::MAX)
                .encode()
                .to_vec(),
            _ => vec![0xff; HEADER_LEN],
        };
        let mut input = bad;
        input.extend(Header::new(TYPE_PING, FLAG_SYN, 0, 9).encode());
        solo.step(&SoloOp::Peer(PeerOp::Raw(input)));
        solo.step(&SoloOp::Peer(PeerOp::DeliverAll { piece: split }));
        if !unchecked {
            // A core that refuses new streams (limits, drain) answers a new stream's SYN
            // with RST before looking further: no violation then.
            let refusal_possible = (violation == 5 && live.is_empty()) || violation == 7;
            if !refusal_possible {
                prop_assert!(
                    matches!(
                        solo.side.conn.ended(),
                        Some(CloseReason::Failed(Error::Protocol(_)))
                    ),
                    "violation {violation} did not end the connection: {:?}\n{}",
                    solo.side.conn.ended(),
                    solo.side.trace
                );
            }
        }
        if let Some(CloseReason::Failed(Error::Protocol(_))) = solo.side.conn.ended() {
            // Everything after fails with the same typed error (the model checks each).
            for op in &after {
                solo.step(op);
            }
            solo.finish();
            prop_assert!(solo.side.conn.open_streams() <= limits.config().max_streams_value());
        }
    }

    /// A client and a server back to back, their bytes moved in chunks of random sizes,
    /// under random interleavings of opens, accepts, reads and writes of random sizes,
    /// shutdowns (twice), resets, releases, drains, closes and time: every byte written
    /// on every stream arrives exactly once and in order, EOF comes only after the
    /// writer's FIN and everything it wrote, a reset shows as `StreamReset`, never EOF,
    /// and a closed session as its close reason. Finally everything is read to its end,
    /// and released, leaving nothing.
    #[test]
    fn two_sides_deliver_every_byte_exactly(
        client in limits(),
        server in limits(),
        ops in prop::collection::vec(pair_op(), 1..250),
        piece in prop_oneof![1usize..=24, 25usize..=70_000],
    ) {
        let mut pair = Pair::new(&client, &server);
        for op in &ops {
            pair.step(op);
        }
        pair.finish(piece);
    }

    /// Programs read from arbitrary bytes, as the fuzz target reads them: one side or two.
    #[test]
    fn byte_programs(data in prop::collection::vec(any::<u8>(), 0..600)) {
        run_bytes(&data);
    }
}

/// A read in the middle of a DATA frame must not grant again the credit the rest of that
/// frame already spent: a peer (or a Go writer sending a whole window in one frame, read
/// as TLS records arrive) could otherwise make a stream hold twice its window.
#[test]
fn a_read_in_the_middle_of_a_frame_grants_no_credit_already_spent() {
    use std::task::{Poll, Waker};
    use std::time::{Duration, Instant};

    use qymux_tcp::engine::core::{Config, Connection};

    let mut config = Config::default();
    config
        .max_streams(1024)
        .accept_backlog(256)
        .receive_budget(256 * 1024 * 1024)
        .max_stream_window(16 * 1024 * 1024)
        .keep_alive_interval(None)
        .idle_timeout(Duration::from_secs(30));
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, config, now);
    let mut control = Vec::new();
    server.take_control(&mut control);
    let window = INITIAL_WINDOW;
    server.handle_input(
        &Header::new(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0).encode(),
        now,
    );
    assert!(matches!(
        server.poll_accept(Waker::noop()),
        Poll::Ready(Ok(1))
    ));
    // One DATA frame of the whole window; its first byte arrives and is read.
    server.handle_input(&Header::new(TYPE_DATA, 0, 1, window).encode(), now);
    server.handle_input(&[0], now);
    let mut byte = [0u8; 1];
    assert!(matches!(
        server.poll_read(1, Waker::noop(), &mut byte, now),
        Poll::Ready(Ok(1))
    ));
    // Then the rest of the frame, and as much again as any credit granted meanwhile.
    server.handle_input(&vec![0; window as usize - 1], now);
    control.clear();
    server.take_control(&mut control);
    let credit: u32 = control
        .chunks(HEADER_LEN)
        .map(|b| Header::decode(b.try_into().unwrap()).unwrap())
        .filter(|h| h.kind == TYPE_WINDOW_UPDATE && h.stream_id == 1)
        .map(|h| h.length)
        .sum();
    let mut more = Header::new(TYPE_DATA, 0, 1, credit).encode().to_vec();
    more.resize(HEADER_LEN + credit as usize, 0);
    server.handle_input(&more, now);
    let (held, _) = server.buffered();
    assert!(
        held as u64 <= server.granted(),
        "{held} bytes held with {} granted (credit {credit} sent after 1 byte was read)",
        server.granted()
    );
}
