//! The shared conformance suite, over TLS + yamux.

mod common;

qymux_conformance::conformance_suite!(common::Tcp);
