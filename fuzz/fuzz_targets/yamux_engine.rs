//! The TCP engine's sans-IO core (qymux-tcp `engine::core`), driven by a program read from
//! the input: the first byte picks one connection against a hostile peer (frames that keep
//! to the protocol, frames with anything in their headers, arbitrary bytes, SYN and
//! SYN|RST floods, one-byte DATA frames, the input split anywhere, EOF and I/O errors) or
//! a client and a server wired back to back (their bytes moved in pieces of any size);
//! the rest are the peer's and the application's operations (open, accept, read and
//! write of any size, shutdown twice, reset, release, drain, close, time passing).
//!
//! After every step the connection must match the model in
//! `crates/qymux-tcp/tests/engine_harness/` (shared with the property tests
//! `crates/qymux-tcp/tests/engine_props.rs`): the frames it queues, every result and
//! typed error, why and when it ends (a protocol violation: `Error::Protocol` after
//! GoAway(1); input after the end changes nothing), the exact bytes each stream holds and
//! delivers; bytes held <= granted <= the receive budget, open streams <= max_streams, the
//! control queue within one frame per header or operation. Back to back, every byte
//! written arrives exactly once and in order, EOF only after the writer's FIN, and a
//! reset is an error, never EOF. Nothing panics.
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/qymux-tcp/tests/engine_harness/mod.rs"]
mod harness;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| harness::run_bytes(data));
