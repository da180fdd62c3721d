//! The read side of the yamux frame adapter (qymux-tcp `wire.rs`): an arbitrary byte
//! stream from the peer, delivered and read in pieces of arbitrary sizes, must come out
//! exactly as an independent model of the adapter says: every byte preserved, DATA frames
//! over 1 MiB split into well-formed frames of at most 1 MiB (SYN/ACK on the first piece,
//! FIN/RST on the last), the answers to our own keep-alive pings left out, and no panic.
#![no_main]

#[path = "common.rs"]
mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use qymux_tcp::fuzzing::{MAX_BODY, OWN_PING, read_side};

/// What the adapter hands to the yamux crate for `input`, by the rules in its docs.
fn model(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = input;
    while rest.len() >= HEADER_LEN {
        let h = Header::parse(rest);
        rest = &rest[HEADER_LEN..];
        if h.kind == TYPE_PING && h.flags & FLAG_ACK != 0 && h.length & OWN_PING != 0 {
            continue;
        }
        if h.kind != TYPE_DATA || h.length <= MAX_BODY {
            out.extend_from_slice(&h.bytes());
            let body = h.body_len().min(rest.len());
            out.extend_from_slice(&rest[..body]);
            rest = &rest[body..];
            if body < h.body_len() {
                return out;
            }
            continue;
        }
        let mut left = h.length;
        let mut first = true;
        while left > 0 {
            let piece = left.min(MAX_BODY);
            left -= piece;
            let mut flags = if first {
                h.flags & (FLAG_SYN | FLAG_ACK)
            } else {
                0
            };
            if left == 0 {
                flags |= h.flags & (FLAG_FIN | FLAG_RST);
            }
            first = false;
            let piece_header = Header {
                flags,
                length: piece,
                ..h
            };
            out.extend_from_slice(&piece_header.bytes());
            let body = (piece as usize).min(rest.len());
            out.extend_from_slice(&rest[..body]);
            rest = &rest[body..];
            if body < piece as usize {
                return out;
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (mut pieces, mut reads) = (sizes(data[0]), sizes(data[1]));
    let mut input = Vec::new();
    let big = data[2];
    if big & 0xf0 == 0xf0 {
        // A DATA frame around or over the 1 MiB limit first (the input is never that
        // long by itself), then the fuzzer's bytes. Large pieces keep it fast; the
        // small ones are exercised on everything else.
        for size in pieces.iter_mut().chain(reads.iter_mut()) {
            *size = (*size).max(65536) - usize::from(data[3]);
        }
        let mut length = MAX_BODY - 2 + u32::from(big & 0x07) * 4099;
        if big & 0x08 != 0 {
            length += MAX_BODY;
        }
        let header = Header {
            version: 0,
            kind: TYPE_DATA,
            flags: u16::from(data[3] & 0x0f),
            stream_id: u32::from(data[3] >> 4),
            length,
        };
        input.extend_from_slice(&header.bytes());
        let body = if data[3] & 0x80 != 0 {
            length / 2
        } else {
            length
        };
        input.resize(input.len() + body as usize, data[3]);
    }
    input.extend_from_slice(&data[4..]);

    let got = read_side(&input, &pieces, &reads);
    let want = model(&input);
    assert!(got == want, "adapter output differs from the model");
    // Every frame handed on is within the yamux crate's limit.
    for at in header_offsets(&got) {
        let h = Header::parse(&got[at..]);
        assert!(h.kind != TYPE_DATA || h.length <= MAX_BODY, "{h:?}");
    }
});
