//! What the dialer remembers per server address: whether QUIC got through, and how fast.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long QUIC is skipped after it first failed where TCP worked (then doubling).
pub const INITIAL_QUIC_PENALTY: Duration = Duration::from_secs(5 * 60);
/// The longest QUIC is skipped.
pub const MAX_QUIC_PENALTY: Duration = Duration::from_secs(24 * 60 * 60);
/// Server addresses remembered at most; beyond it, those without a running penalty are
/// forgotten first.
pub const MAX_TARGETS: usize = 1024;
/// A penalty applied is its nominal length times a random factor from this up to 1, so
/// agents that failed together do not all try QUIC again in the same instant.
const PENALTY_JITTER_FLOOR: f64 = 0.75;
/// The shortest attempt delay (RFC 8305 section 5: never below 100 ms).
pub(crate) const MIN_ATTEMPT_DELAY: Duration = Duration::from_millis(100);
/// The longest attempt delay derived from a measurement.
const MAX_ATTEMPT_DELAY: Duration = Duration::from_secs(2);

/// The server a memory entry is about: its addresses as resolved (one name may have
/// several; two names of one server share its addresses, and so what is remembered).
///
/// Built from the resolved addresses (a [`SocketAddr`], a list of them), or from text:
/// a literal `ip:port` is taken as it is; a `host:port` name is resolved with the
/// system's resolver, **blocking** the calling thread, so from async code pass the
/// addresses instead (a [`Dialer`](crate::Dialer) resolves once per dial and keys the
/// memory with the result). Text that does not resolve names no address, and nothing is
/// remembered for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target(Vec<SocketAddr>);

impl Target {
    /// The addresses.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.0
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target(vec![addr])
    }
}

impl From<&SocketAddr> for Target {
    fn from(addr: &SocketAddr) -> Self {
        Target(vec![*addr])
    }
}

impl From<Vec<SocketAddr>> for Target {
    fn from(addrs: Vec<SocketAddr>) -> Self {
        Target(addrs)
    }
}

impl From<&[SocketAddr]> for Target {
    fn from(addrs: &[SocketAddr]) -> Self {
        Target(addrs.to_vec())
    }
}

impl From<&Vec<SocketAddr>> for Target {
    fn from(addrs: &Vec<SocketAddr>) -> Self {
        Target(addrs.clone())
    }
}

impl From<&str> for Target {
    fn from(text: &str) -> Self {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Target(vec![addr]);
        }
        Target(
            text.to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default(),
        )
    }
}

impl From<&String> for Target {
    fn from(text: &String) -> Self {
        Target::from(text.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// QUIC is skipped until then.
    quic_broken_until: Option<Instant>,
    /// The penalty the next failure gets.
    next_penalty: Option<Duration>,
    /// The last QUIC round-trip time measured to this address.
    quic_rtt: Option<Duration>,
    /// How long a QUIC dial that connected here took, smoothed.
    quic_dial_time: Option<Duration>,
}

/// Per-server memory of QUIC failures, round-trip times and dial times, shared by the
/// dials of one [`Dialer`](crate::Dialer) (and its clones), keyed by the server's
/// resolved addresses ([`Target`]): two names of one server share what is remembered.
///
/// After QUIC failed to a server while TCP worked, every address the dial resolved is
/// penalised, and the next dials to a target all of whose addresses are penalised start
/// with TCP at once; QUIC is tried again once one penalty expires. The penalty starts at
/// `initial_penalty` and doubles on each repeated failure (up to `max_penalty`), as
/// browsers do for a broken alternative service; a QUIC success clears it for the address
/// that answered. Each penalty applied is jittered down by up to a quarter, so a fleet
/// that failed at once spreads its next QUIC attempts.
///
/// A QUIC dial that connects records its time (smoothed: a quarter of each new
/// measurement) and the connection's round-trip time for the address that answered; the
/// Auto race's attempt delay follows the dial time ([`TransportMemory::attempt_delay`]).
///
/// At most [`MAX_TARGETS`] addresses are remembered.
#[derive(Debug)]
pub struct TransportMemory {
    entries: Mutex<HashMap<SocketAddr, Entry>>,
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

    /// Runs `f` on the entry of each of `addrs` (made when missing), keeping the bound.
    fn update<R>(&self, addrs: &[SocketAddr], mut f: impl FnMut(&mut Entry) -> R) -> Vec<R> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if entries.len() >= MAX_TARGETS && !entries.contains_key(addr) {
                let now = Instant::now();
                entries.retain(|_, e| e.quic_broken_until.is_some_and(|t| t > now));
                if entries.len() >= MAX_TARGETS {
                    // All penalised: forget the one whose penalty ends first.
                    let first = entries
                        .iter()
                        .min_by_key(|(_, e)| e.quic_broken_until)
                        .map(|(k, _)| *k);
                    if let Some(first) = first {
                        entries.remove(&first);
                    }
                }
            }
            out.push(f(entries.entry(*addr).or_default()));
        }
        out
    }

    /// The entries known for `addrs`, in their order (without making any).
    fn known(&self, addrs: &[SocketAddr]) -> Vec<Entry> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        addrs
            .iter()
            .filter_map(|a| entries.get(a).copied())
            .collect()
    }

    /// Whether QUIC is currently skipped for `target` (every one of its addresses is
    /// penalised), and until when (the first of those penalties to end).
    pub fn quic_broken_until(&self, target: impl Into<Target>) -> Option<Instant> {
        let target = target.into();
        if target.0.is_empty() {
            return None;
        }
        let now = Instant::now();
        let known = self.known(&target.0);
        if known.len() < target.0.len() {
            return None;
        }
        known
            .iter()
            .map(|e| e.quic_broken_until.filter(|t| *t > now))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .min()
    }

    /// The last QUIC round-trip time measured to `target` (its first address that has
    /// one).
    pub fn quic_rtt(&self, target: impl Into<Target>) -> Option<Duration> {
        self.known(&target.into().0).iter().find_map(|e| e.quic_rtt)
    }

    /// How long a QUIC dial to `target` took (smoothed; its first address that has one).
    pub fn quic_dial_time(&self, target: impl Into<Target>) -> Option<Duration> {
        self.known(&target.into().0)
            .iter()
            .find_map(|e| e.quic_dial_time)
    }

    /// How long the Auto race lets QUIC run alone to `target` before TCP starts too:
    /// 1.5 × the measured QUIC dial time, or while none is known 1.5 × the measured QUIC
    /// round-trip time; at least 100 ms (RFC 8305), at most 2 s. `None` when nothing was
    /// measured (the dialer then uses its configured delay).
    pub fn attempt_delay(&self, target: impl Into<Target>) -> Option<Duration> {
        let target = target.into();
        let measured = self
            .quic_dial_time(target.clone())
            .or_else(|| self.quic_rtt(target))?;
        Some((measured * 3 / 2).clamp(MIN_ATTEMPT_DELAY, MAX_ATTEMPT_DELAY))
    }

    /// QUIC failed (or stayed silent) on every address of `target` where TCP worked:
    /// each is penalised. Returns the penalty applied (to the first address).
    pub fn quic_failed(&self, target: impl Into<Target>) -> Duration {
        let (initial, max) = (self.initial_penalty, self.max_penalty);
        let factor = rand::random_range(PENALTY_JITTER_FLOOR..=1.0);
        let now = Instant::now();
        self.update(&target.into().0, |e| {
            let nominal = e.next_penalty.unwrap_or(initial);
            let penalty = nominal.mul_f64(factor);
            e.quic_broken_until = Some(now + penalty);
            e.next_penalty = Some((nominal * 2).min(max));
            penalty
        })
        .first()
        .copied()
        .unwrap_or(Duration::ZERO)
    }

    /// The server answered over UDP (refused, busy, failed the handshake): the path
    /// works, so the penalties of its addresses are lifted; what was measured is kept.
    pub fn quic_answered(&self, target: impl Into<Target>) {
        self.update(&target.into().0, |e| {
            e.quic_broken_until = None;
            e.next_penalty = None;
        });
    }

    /// How many server addresses are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// QUIC worked to `target`, with this round-trip time: penalties cleared, the time
    /// recorded (a dial time measured before is kept).
    pub fn quic_worked(&self, target: impl Into<Target>, rtt: Duration) {
        self.update(&target.into().0, |e| {
            *e = Entry {
                quic_rtt: Some(rtt),
                quic_dial_time: e.quic_dial_time,
                ..Entry::default()
            }
        });
    }

    /// A QUIC dial connected to `addr` (the address that answered) after `dial_time`,
    /// with this round-trip time: as [`quic_worked`](Self::quic_worked), and the dial
    /// time folded into the smoothed one (a quarter of the new measurement).
    pub fn quic_dialed(&self, addr: SocketAddr, rtt: Duration, dial_time: Duration) {
        self.update(&[addr], |e| {
            let smoothed = match e.quic_dial_time {
                Some(old) => (old * 3 + dial_time) / 4,
                None => dial_time,
            };
            *e = Entry {
                quic_rtt: Some(rtt),
                quic_dial_time: Some(smoothed),
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

    /// Server address number `i` (distinct for every `i` below 2^24).
    fn at(i: usize) -> SocketAddr {
        let [_, a, b, c] = (i as u32).to_be_bytes();
        SocketAddr::from(([10, a, b, c], 443))
    }

    #[tokio::test(start_paused = true)]
    async fn penalty_doubles_and_resets_on_success() {
        let m = TransportMemory::new(Duration::from_secs(10), Duration::from_secs(25));
        let (a, b) = (at(1), at(2));
        assert!(m.quic_broken_until(a).is_none());
        assert!(jittered(m.quic_failed(a), 10));
        assert!(m.quic_broken_until(a).is_some());
        assert!(m.quic_broken_until(b).is_none(), "per target");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(m.quic_broken_until(a).is_none(), "expired");
        assert!(jittered(m.quic_failed(a), 20));
        assert!(jittered(m.quic_failed(a), 25), "capped");
        m.quic_worked(a, Duration::from_millis(3));
        assert!(m.quic_broken_until(a).is_none());
        assert_eq!(m.quic_rtt(a), Some(Duration::from_millis(3)));
        assert!(jittered(m.quic_failed(a), 10), "back to the start");
    }

    #[test]
    fn penalties_of_agents_that_failed_together_spread() {
        let penalties: Vec<Duration> = (0..1000)
            .map(|_| TransportMemory::default().quic_failed(at(1)))
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
            m.quic_worked(at(i), Duration::from_millis(1));
        }
        assert!(m.len() <= MAX_TARGETS, "{} targets kept", m.len());
        // Penalties outlive mere round-trip records.
        let broken = |i: usize| at(1_000_000 + i);
        for i in 0..MAX_TARGETS {
            m.quic_failed(broken(i));
        }
        m.quic_worked(at(999_999), Duration::from_millis(1));
        assert!(m.len() <= MAX_TARGETS);
        let kept = (0..MAX_TARGETS)
            .filter(|i| m.quic_broken_until(broken(*i)).is_some())
            .count();
        assert!(kept >= MAX_TARGETS - 1, "only {kept} penalties kept");
        // A multi-address target counts each address, and stays within the bound too.
        let many: Vec<SocketAddr> = (0..2 * MAX_TARGETS).map(|i| at(2_000_000 + i)).collect();
        m.quic_failed(many);
        assert!(m.len() <= MAX_TARGETS);
    }

    /// Two names of one server (here: text naming the address, and the address as a
    /// resolver returns it) share one entry; a name with one more address is skipped only
    /// once that address failed too.
    #[tokio::test(start_paused = true)]
    async fn keyed_by_resolved_address() {
        let m = TransportMemory::default();
        let server = at(7);
        m.quic_failed("10.0.0.7:443");
        assert!(m.quic_broken_until(server).is_some(), "the same address");
        assert!(m.quic_broken_until(vec![server]).is_some());
        assert!(m.quic_broken_until(at(8)).is_none(), "another port or host");
        assert_eq!(m.len(), 1);

        let both = vec![server, at(8)];
        assert!(
            m.quic_broken_until(both.clone()).is_none(),
            "one address of the target was never tried: QUIC is"
        );
        m.quic_failed(&both);
        assert!(m.quic_broken_until(&both).is_some());
        // QUIC got through to one of them: the target is no longer skipped.
        m.quic_dialed(at(8), Duration::from_millis(1), Duration::from_millis(3));
        assert!(m.quic_broken_until(&both).is_none());
        assert!(m.quic_broken_until(server).is_some(), "per address");
        assert_eq!(
            m.quic_dial_time(&both),
            Some(Duration::from_millis(3)),
            "the first address with a measurement"
        );
        m.quic_answered(&both);
        assert!(m.quic_broken_until(server).is_none());
    }

    #[test]
    fn the_attempt_delay_follows_the_dial_time() {
        let m = TransportMemory::default();
        let (a, b, c) = (at(1), at(2), at(3));
        assert_eq!(m.attempt_delay(a), None, "nothing measured");
        // A round-trip time alone (the handshake's RTT, without the dial's own time).
        m.quic_worked(a, Duration::from_millis(200));
        assert_eq!(m.attempt_delay(a), Some(Duration::from_millis(300)));
        // A dial time wins over the RTT: 1.5 x 400 ms.
        m.quic_dialed(a, Duration::from_millis(200), Duration::from_millis(400));
        assert_eq!(m.attempt_delay(a), Some(Duration::from_millis(600)));
        // Smoothed: a quarter of the new measurement, 3/4 x 400 + 1/4 x 800 = 500 ms.
        m.quic_dialed(a, Duration::from_millis(200), Duration::from_millis(800));
        assert_eq!(m.quic_dial_time(a), Some(Duration::from_millis(500)));
        assert_eq!(m.attempt_delay(a), Some(Duration::from_millis(750)));
        // The RTT record alone keeps the dial time.
        m.quic_worked(a, Duration::from_millis(1));
        assert_eq!(m.quic_dial_time(a), Some(Duration::from_millis(500)));
        // Floor and ceiling.
        m.quic_dialed(b, Duration::from_micros(50), Duration::from_millis(2));
        assert_eq!(m.attempt_delay(b), Some(MIN_ATTEMPT_DELAY));
        m.quic_dialed(c, Duration::from_secs(1), Duration::from_secs(5));
        assert_eq!(m.attempt_delay(c), Some(MAX_ATTEMPT_DELAY));
    }
}
