//! What the dialer remembers per target: whether QUIC got through, and how fast.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long QUIC is skipped after it first failed where TCP worked (then doubling).
pub const INITIAL_QUIC_PENALTY: Duration = Duration::from_secs(5 * 60);
/// The longest QUIC is skipped.
pub const MAX_QUIC_PENALTY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// QUIC is skipped until then.
    quic_broken_until: Option<Instant>,
    /// The penalty the next failure gets.
    next_penalty: Option<Duration>,
    /// The last QUIC round-trip time measured to this target.
    quic_rtt: Option<Duration>,
}

/// Per-target memory of QUIC failures and round-trip times, shared by the dials of one
/// [`Dialer`](crate::Dialer) (and its clones).
///
/// After QUIC failed to a target while TCP worked, the next dials there start with TCP at
/// once; QUIC is tried again after the penalty expires. The penalty starts at
/// `initial_penalty` and doubles on each repeated failure (up to `max_penalty`), as
/// browsers do for a broken alternative service; a QUIC success clears it.
#[derive(Debug)]
pub struct TransportMemory {
    entries: Mutex<HashMap<String, Entry>>,
    initial_penalty: Duration,
    max_penalty: Duration,
}

impl Default for TransportMemory {
    fn default() -> Self {
        Self::new(INITIAL_QUIC_PENALTY, MAX_QUIC_PENALTY)
    }
}

impl TransportMemory {
    /// A memory with the given penalties.
    pub fn new(initial_penalty: Duration, max_penalty: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            initial_penalty,
            max_penalty: max_penalty.max(initial_penalty),
        }
    }

    fn with<R>(&self, target: &str, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(entries.entry(target.to_owned()).or_default())
    }

    /// Whether QUIC is currently skipped for `target`, and until when.
    pub fn quic_broken_until(&self, target: &str) -> Option<Instant> {
        self.with(target, |e| {
            e.quic_broken_until.filter(|t| *t > Instant::now())
        })
    }

    /// The last QUIC round-trip time measured to `target`.
    pub fn quic_rtt(&self, target: &str) -> Option<Duration> {
        self.with(target, |e| e.quic_rtt)
    }

    /// QUIC failed (or lost the race) where TCP worked.
    pub fn quic_failed(&self, target: &str) -> Duration {
        let (initial, max) = (self.initial_penalty, self.max_penalty);
        self.with(target, |e| {
            let penalty = e.next_penalty.unwrap_or(initial);
            e.quic_broken_until = Some(Instant::now() + penalty);
            e.next_penalty = Some((penalty * 2).min(max));
            penalty
        })
    }

    /// QUIC worked, with this round-trip time.
    pub fn quic_worked(&self, target: &str, rtt: Duration) {
        self.with(target, |e| {
            *e = Entry {
                quic_rtt: Some(rtt),
                ..Entry::default()
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn penalty_doubles_and_resets_on_success() {
        let m = TransportMemory::new(Duration::from_secs(10), Duration::from_secs(25));
        assert!(m.quic_broken_until("a").is_none());
        assert_eq!(m.quic_failed("a"), Duration::from_secs(10));
        assert!(m.quic_broken_until("a").is_some());
        assert!(m.quic_broken_until("b").is_none(), "per target");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(m.quic_broken_until("a").is_none(), "expired");
        assert_eq!(m.quic_failed("a"), Duration::from_secs(20));
        assert_eq!(m.quic_failed("a"), Duration::from_secs(25), "capped");
        m.quic_worked("a", Duration::from_millis(3));
        assert!(m.quic_broken_until("a").is_none());
        assert_eq!(m.quic_rtt("a"), Some(Duration::from_millis(3)));
        assert_eq!(
            m.quic_failed("a"),
            Duration::from_secs(10),
            "back to the start"
        );
    }
}
