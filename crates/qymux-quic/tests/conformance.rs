//! The shared conformance suite, over QUIC.

mod common;

qymux_conformance::conformance_suite!(common::Quic);
