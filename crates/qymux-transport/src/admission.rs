//! Admission of new connections by source, shared by the listeners of every backend.
//!
//! A listener runs at most [`Options::max_pending_handshakes`](crate::Options) handshakes
//! at once. Without more, one host could hold every one of those slots (connections that
//! never send a byte, or QUIC Initials sent from many ports) and lock everyone else out.
//! [`SourceLimiter`] caps the handshakes in progress per *source*: an IPv4 address, or an
//! IPv6 /64 (one host, or one customer's network: an IPv6 attacker has a whole /64).
//!
//! Before any of that, an [`AdmissionHook`] set with
//! [`Options::admission`](crate::Options::admission) sees every attempt's address and
//! says what to do with it: the place for an application's own allow lists and rate
//! limits.
//!
//! ```
//! use qymux_transport::Options;
//! use qymux_transport::admission::Admit;
//!
//! let mut options = Options::default();
//! // Only loopback and one private network may even start a handshake.
//! options.admission(|attempt| match attempt.peer().ip() {
//!     ip if ip.is_loopback() => Admit::Accept,
//!     std::net::IpAddr::V4(v4) if v4.octets()[..2] == [10, 7] => Admit::Accept,
//!     _ => Admit::Ignore,
//! });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::Protocol;

/// What a listener does with a connection attempt, as an [`AdmissionHook`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admit {
    /// Go on: the listener's own caps and [`QuicRetry`](crate::QuicRetry) policy apply.
    Accept,
    /// Turn it away and say so: QUIC answers `CONNECTION_REFUSED`; a TCP connection is
    /// closed at once.
    Refuse,
    /// QUIC: ask the client to prove its address with a Retry first (the hook is asked
    /// again when it comes back, then [`Attempt::validated`] is true). An attempt that
    /// cannot be retried (already validated, or over TCP, whose handshake proved the
    /// address) goes on as with [`Admit::Accept`].
    Retry,
    /// Turn it away without an answer: QUIC sends nothing (the source may be forged,
    /// and answering would make the listener a reflector); a TCP connection is closed
    /// at once, as with [`Admit::Refuse`].
    Ignore,
}

/// A connection attempt, as an [`AdmissionHook`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    peer: SocketAddr,
    protocol: Protocol,
    validated: bool,
}

impl Attempt {
    /// An attempt from `peer` over `protocol`; `validated` says whether the peer has
    /// shown it receives what is sent to its address (always true over TCP).
    pub fn new(peer: SocketAddr, protocol: Protocol, validated: bool) -> Self {
        Self {
            peer,
            protocol,
            validated,
        }
    }

    /// The address the attempt comes from.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Its source as the per-source cap counts it.
    pub fn source(&self) -> Source {
        Source::of(self.peer)
    }

    /// The transport it arrives on.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether the peer has proved its address: always over TCP; over QUIC once it came
    /// back with a Retry token.
    pub fn validated(&self) -> bool {
        self.validated
    }
}

/// The application's say on each connection attempt, called by a listener before it
/// keeps any state for the attempt; set with
/// [`Options::admission`](crate::Options::admission).
///
/// It runs on the listener's accept loop: it must be quick and must not block (count in
/// a map, look up a set; no I/O).
#[derive(Clone)]
pub struct AdmissionHook(Arc<dyn Fn(&Attempt) -> Admit + Send + Sync>);

impl AdmissionHook {
    /// A hook calling `decide` for every attempt.
    pub fn new(decide: impl Fn(&Attempt) -> Admit + Send + Sync + 'static) -> Self {
        Self(Arc::new(decide))
    }

    /// What to do with `attempt`.
    pub fn decide(&self, attempt: &Attempt) -> Admit {
        (self.0)(attempt)
    }
}

impl fmt::Debug for AdmissionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionHook(..)")
    }
}

impl PartialEq for AdmissionHook {
    /// The same hook (one closure, cloned).
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AdmissionHook {}

/// Where a connection comes from, as far as admission is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(IpAddr);

impl Source {
    /// The source of a peer address: its IPv4 address (also when written as an
    /// IPv4-mapped IPv6 address), or the /64 its IPv6 address is in.
    pub fn of(peer: SocketAddr) -> Self {
        match peer.ip() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Source(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Counts handshakes in progress per [`Source`], up to a cap each.
///
/// Memory: one map entry per source with a handshake in progress, removed when its last
/// one ends, so at most one entry per pending handshake.
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    max: usize,
    pending: Arc<Mutex<HashMap<Source, usize>>>,
}

impl SourceLimiter {
    /// A limiter admitting at most `max_per_source` handshakes per source at once.
    pub fn new(max_per_source: usize) -> Self {
        Self {
            max: max_per_source,
            pending: Arc::default(),
        }
    }

    /// Takes a slot for a handshake from `peer`, or `None` when its source already has
    /// `max_per_source` in progress. The slot is given back when the returned guard is
    /// dropped.
    pub fn try_acquire(&self, peer: SocketAddr) -> Option<SourceSlot> {
        let source = Source::of(peer);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let count = pending.entry(source).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            source,
            pending: self.pending.clone(),
        })
    }

    /// Handshakes in progress from `peer`'s source.
    pub fn pending(&self, peer: SocketAddr) -> usize {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.get(&Source::of(peer)).copied().unwrap_or(0)
    }

    /// Sources with a handshake in progress.
    pub fn sources(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// One handshake's place in its source's count; dropping it gives the place back.
#[derive(Debug)]
pub struct SourceSlot {
    source: Source,
    pending: Arc<Mutex<HashMap<Source, usize>>>,
}

impl SourceSlot {
    /// The source this slot counts against.
    pub fn source(&self) -> Source {
        self.source
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pending.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn caps_each_source_and_forgets_it_when_done() {
        let limiter = SourceLimiter::new(2);
        let a1 = limiter.try_acquire(addr("127.0.0.2:1000")).unwrap();
        let a2 = limiter.try_acquire(addr("127.0.0.2:1001")).unwrap();
        assert!(
            limiter.try_acquire(addr("127.0.0.2:1002")).is_none(),
            "a third from one address"
        );
        // Another address is not affected.
        let b = limiter.try_acquire(addr("127.0.0.1:1000")).unwrap();
        assert_eq!(limiter.pending(addr("127.0.0.2:9")), 2);
        drop(a1);
        let a3 = limiter.try_acquire(addr("127.0.0.2:1003")).unwrap();
        drop((a2, a3, b));
        assert_eq!(limiter.sources(), 0, "no entry outlives its handshakes");
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            Source::of(addr("[2001:db8:1:2:aaaa::1]:1")),
            Source::of(addr("[2001:db8:1:2:bbbb::2]:2"))
        );
        assert_ne!(
            Source::of(addr("[2001:db8:1:2::1]:1")),
            Source::of(addr("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            Source::of(addr("[::ffff:127.0.0.2]:1")),
            Source::of(addr("127.0.0.2:5"))
        );
        assert_eq!(
            Source::of(addr("[2001:db8:1:2::1]:1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }
}
