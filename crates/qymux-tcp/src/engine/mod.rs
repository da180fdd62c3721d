//! Qymux's own hashicorp-yamux engine: the wire format ([`frame`]) and a sans-IO state
//! machine ([`core`]) that the tokio driver in `session.rs` runs.
//!
//! See `docs/architecture.md` ("The TCP engine") for the states, flow control and the
//! memory budget, and for why Qymux owns this protocol instead of using a crate.

pub mod core;
pub mod frame;
mod recv;

pub use recv::Lent;
