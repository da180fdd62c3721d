//! The write side of the yamux frame adapter (qymux-tcp `wire.rs`): arbitrary bytes as
//! the yamux crate would write them, in writes of arbitrary sizes onto a socket that takes
//! arbitrary amounts, must reach the socket unchanged (a header cut short at the end
//! excepted: it waits for the rest), except that the first FIN of a stream the
//! application aborted becomes RST; and nothing panics.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashSet;

use common::*;
use libfuzzer_sys::fuzz_target;
use qymux_tcp::fuzzing::write_side;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (writes, socket) = (sizes(data[0]), sizes(data[1]));
    let input = &data[3..];
    let offsets = header_offsets(input);
    // Mark some of the streams that appear in the input as aborted.
    let aborted: Vec<u32> = offsets
        .iter()
        .enumerate()
        .filter(|(i, _)| data[2] >> (i % 8) & 1 == 1)
        .map(|(_, at)| Header::parse(&input[*at..]).stream_id)
        .collect();

    let out = write_side(input, &writes, &socket, &aborted);
    // A header is written once it is complete (with its body, or on flush): one that the
    // input cuts short stays back. The yamux crate only ever writes whole headers.
    let input = &input[..input.len() - partial_header_at_end(input)];
    assert_eq!(out.len(), input.len(), "bytes lost or added");
    if aborted.is_empty() {
        assert!(out == input, "bytes changed without an aborted stream");
        return;
    }
    // Only the flags of headers may differ, and only FIN -> RST, once per aborted stream.
    let mut rewritten = HashSet::new();
    let mut allowed = vec![false; input.len()];
    for &at in &offsets {
        let (was, now) = (Header::parse(&input[at..]), Header::parse(&out[at..]));
        if was == now {
            continue;
        }
        assert!(
            was.kind == TYPE_DATA || was.kind == TYPE_WINDOW_UPDATE,
            "{was:?} -> {now:?}"
        );
        assert!(aborted.contains(&was.stream_id), "{was:?} -> {now:?}");
        assert!(was.flags & FLAG_FIN != 0, "{was:?} -> {now:?}");
        assert_eq!(now.flags, (was.flags & !FLAG_FIN) | FLAG_RST);
        assert_eq!(
            Header {
                flags: was.flags,
                ..now
            },
            was
        );
        assert!(rewritten.insert(was.stream_id), "stream rewritten twice");
        allowed[at + 2] = true;
        allowed[at + 3] = true;
    }
    for (i, (a, b)) in input.iter().zip(&out).enumerate() {
        assert!(
            a == b || allowed[i],
            "byte {i} changed outside a header's flags"
        );
    }
});
