//! How long to wait before dialing again: exponential backoff with full jitter.

use std::time::Duration;

use qymux_transport::{Error, Result};
use rand::Rng;

/// When to redial after a failure: exponential backoff with full jitter.
///
/// The n-th consecutive retry (n = 0 first) waits a random time between zero and
/// [`ceiling(n)`](Backoff::ceiling) = `initial × 2ⁿ`, capped at `max`. Random waits keep a
/// fleet of agents from redialing in lockstep after a server restart: a thousand agents
/// that lost their server at the same moment come back spread over the whole window,
/// not in the same second. A dial that fails counts as a retry; so does a session that
/// ended before `reset_after`, while a session that lived at least `reset_after` starts
/// the count again from zero.
///
/// Used by [`Reconnecting`](crate::Reconnecting) and by the tunnel agent of
/// `qymux-forward`.
///
/// ```
/// use std::time::Duration;
/// use qymux_dialer::Backoff;
///
/// let backoff = Backoff::default();
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(800));
/// assert_eq!(backoff.ceiling(20), Duration::from_secs(30)); // the cap
/// assert!(backoff.delay(3) <= Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// A backoff whose ceilings start at `initial` and double up to `max` (and the
    /// default `reset_after`).
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }

    /// The ceiling of the first retry (default 100 ms).
    pub fn initial(&mut self, value: Duration) -> &mut Self {
        self.initial = value;
        self
    }

    /// The largest ceiling (default 30 s).
    pub fn max(&mut self, value: Duration) -> &mut Self {
        self.max = value;
        self
    }

    /// A session that lived this long resets the backoff (default 10 s).
    pub fn reset_after(&mut self, value: Duration) -> &mut Self {
        self.reset_after = value;
        self
    }

    /// The value [`Backoff::initial`] set.
    pub fn initial_value(&self) -> Duration {
        self.initial
    }

    /// The value [`Backoff::max`] set.
    pub fn max_value(&self) -> Duration {
        self.max
    }

    /// The value [`Backoff::reset_after`] set.
    pub fn reset_after_value(&self) -> Duration {
        self.reset_after
    }

    /// The longest wait before retry `retry` (0 for the first): `initial × 2^retry`, at
    /// most `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.min(31);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A random wait before retry `retry`: uniform between zero and
    /// [`ceiling(retry)`](Backoff::ceiling) (full jitter).
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut rand::rng())
    }

    /// [`delay`](Backoff::delay) with the caller's random number generator (a seeded
    /// one makes the waits reproducible).
    pub fn delay_with<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// Checks that the bounds can work: `initial` above zero and `max` at least `initial`.
    pub fn validate(&self) -> Result<()> {
        if self.initial.is_zero() {
            return Err(Error::Config(
                "backoff initial must be greater than zero".into(),
            ));
        }
        if self.max < self.initial {
            return Err(Error::Config(format!(
                "backoff max ({:?}) must be at least initial ({:?})",
                self.max, self.initial
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_to_the_cap() {
        let b = Backoff::default();
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200]);
        assert_eq!(b.ceiling(9), Duration::from_secs(30)); // 51.2 s capped
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        let huge = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX, "overflow saturates at max");
    }

    #[test]
    fn validation_says_what_is_wrong() {
        Backoff::default().validate().unwrap();
        let zero = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert!(matches!(zero.validate(), Err(Error::Config(m)) if m.contains("initial")));
        let inverted = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(matches!(inverted.validate(), Err(Error::Config(m)) if m.contains("max")));
    }
}
