//! What the dialer remembers per target: whether QUIC got through, and how fast.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long QUIC is skipped after it first failed where TCP worked (then doubling).
pub const INITIAL_QUIC_PENALTY: Duration = Duration::from_secs(5 * 60);
/// The longest QUIC is skipped.
pub const MAX_QUIC_PENALTY: Duration = Duration::from_secs(24 * 60 * 60);
/// Targets remembered at most; beyond it, those without a running penalty are forgotten
/// first.
pub const MAX_TARGETS: usize = 1024;
/// A penalty applied is its nominal length times a random factor from this up to 1, so
/// agents that failed together do not all try QUIC again in the same instant.
const PENALTY_JITTER_FLOOR: f64 = 0.75;

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
/// browsers do for a broken alternative service; a QUIC success clears it. Each penalty
/// applied is jittered down by up to a quarter, so a fleet that failed at once spreads
/// its next QUIC attempts. At most [`MAX_TARGETS`] targets are remembered.
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
        if entries.len() >= MAX_TARGETS && !entries.contains_key(target) {
            let now = Instant::now();
            entries.retain(|_, e| e.quic_broken_until.is_some_and(|t| t > now));
            if entries.len() >= MAX_TARGETS {
                // All penalised: forget the one whose penalty ends first.
                let first = entries
                    .iter()
                    .min_by_key(|(_, e)| e.quic_broken_until)
                    .map(|(k, _)| k.clone());
                if let Some(first) = first {
                    entries.remove(&first);
                }
            }
        }
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

    /// QUIC failed (or lost the race) where TCP worked. Returns the penalty applied.
    pub fn quic_failed(&self, target: &str) -> Duration {
        let (initial, max) = (self.initial_penalty, self.max_penalty);
        let factor = rand::random_range(PENALTY_JITTER_FLOOR..=1.0);
        self.with(target, |e| {
            let nominal = e.next_penalty.unwrap_or(initial);
            let penalty = nominal.mul_f64(factor);
            e.quic_broken_until = Some(Instant::now() + penalty);
            e.next_penalty = Some((nominal * 2).min(max));
            penalty
        })
    }

    /// The server answered over UDP (refused, busy, failed the handshake): the path
    /// works, so any penalty is lifted; the measured round-trip time is kept.
    pub fn quic_answered(&self, target: &str) {
        self.with(target, |e| {
            e.quic_broken_until = None;
            e.next_penalty = None;
        });
    }

    /// How many targets are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no target is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Whether `penalty` is `nominal` seconds jittered down by at most a quarter.
    fn jittered(penalty: Duration, nominal: u64) -> bool {
        let nominal = Duration::from_secs(nominal);
        penalty <= nominal && penalty >= nominal.mul_f64(PENALTY_JITTER_FLOOR)
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_doubles_and_resets_on_success() {
        let m = TransportMemory::new(Duration::from_secs(10), Duration::from_secs(25));
        assert!(m.quic_broken_until("a").is_none());
        assert!(jittered(m.quic_failed("a"), 10));
        assert!(m.quic_broken_until("a").is_some());
        assert!(m.quic_broken_until("b").is_none(), "per target");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(m.quic_broken_until("a").is_none(), "expired");
        assert!(jittered(m.quic_failed("a"), 20));
        assert!(jittered(m.quic_failed("a"), 25), "capped");
        m.quic_worked("a", Duration::from_millis(3));
        assert!(m.quic_broken_until("a").is_none());
        assert_eq!(m.quic_rtt("a"), Some(Duration::from_millis(3)));
        assert!(jittered(m.quic_failed("a"), 10), "back to the start");
    }

    #[test]
    fn penalties_of_agents_that_failed_together_spread() {
        let penalties: Vec<Duration> = (0..1000)
            .map(|_| TransportMemory::default().quic_failed("a"))
            .collect();
        let nominal = INITIAL_QUIC_PENALTY.as_secs_f64();
        // Ten equal slices of [0.75, 1] x nominal: every slice gets a share.
        let mut slices = [0usize; 10];
        for p in &penalties {
            let at =
                (p.as_secs_f64() / nominal - PENALTY_JITTER_FLOOR) / (1.0 - PENALTY_JITTER_FLOOR);
            assert!((0.0..=1.0).contains(&at), "{p:?} outside the jitter range");
            slices[((at * 10.0) as usize).min(9)] += 1;
        }
        assert!(slices.iter().all(|n| *n > 50), "{slices:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_a_bounded_number_of_targets() {
        let m = TransportMemory::new(Duration::from_secs(10), Duration::from_secs(10));
        for i in 0..3 * MAX_TARGETS {
            m.quic_worked(&format!("host-{i}:443"), Duration::from_millis(1));
        }
        assert!(m.len() <= MAX_TARGETS, "{} targets kept", m.len());
        // Penalties outlive mere round-trip records.
        for i in 0..MAX_TARGETS {
            m.quic_failed(&format!("broken-{i}:443"));
        }
        m.quic_worked("one-more:443", Duration::from_millis(1));
        assert!(m.len() <= MAX_TARGETS);
        let kept = (0..MAX_TARGETS)
            .filter(|i| m.quic_broken_until(&format!("broken-{i}:443")).is_some())
            .count();
        assert!(kept >= MAX_TARGETS - 1, "only {kept} penalties kept");
    }
}
