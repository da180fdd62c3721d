//! What a listener keeps of the sessions it accepted: the session cap and graceful
//! shutdown, written once for every backend.
//!
//! Application code does not need this module; backends implement [`Tracked`] for their
//! session type and hold a [`SessionRegistry`] in their listener.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::Session;

/// A session a listener can hold without keeping it alive, and drain before closing.
pub trait Tracked: Session + Clone + Send + Sync + 'static {
    /// A reference that does not keep the session alive.
    type Weak: Send + 'static;

    /// A reference that lets the session close as usual when the application drops it.
    fn downgrade(&self) -> Self::Weak;

    /// The session behind a [`downgrade`](Tracked::downgrade)d reference, while the
    /// application still holds it (or one of its streams).
    fn upgrade(weak: &Self::Weak) -> Option<Self>;

    /// How many streams are open on the session, in both directions.
    fn open_streams(&self) -> usize;
}

/// The sessions a listener accepted, held weakly: a session the application dropped
/// still closes as usual, and one that ended is forgotten.
pub struct SessionRegistry<S: Tracked> {
    sessions: Mutex<Tracking<S>>,
}

/// The references, and when to drop those of ended sessions next: pruning on every
/// accept would scan every session per accept.
struct Tracking<S: Tracked> {
    weak: Vec<S::Weak>,
    prune_at: usize,
}

/// The fewest references kept before ended sessions are pruned.
const MIN_PRUNE_AT: usize = 64;

impl<S: Tracked> Tracking<S> {
    /// Forgets the sessions that ended or were dropped; calls `live` with the others.
    fn prune(&mut self, mut live: impl FnMut(S)) {
        self.weak.retain(|weak| match S::upgrade(weak) {
            Some(s) if s.close_reason().is_none() => {
                live(s);
                true
            }
            _ => false,
        });
        self.prune_at = (self.weak.len() * 2).max(MIN_PRUNE_AT);
    }
}

impl<S: Tracked> Default for SessionRegistry<S> {
    fn default() -> Self {
        Self {
            sessions: Mutex::new(Tracking {
                weak: Vec::new(),
                prune_at: MIN_PRUNE_AT,
            }),
        }
    }
}

impl<S: Tracked> std::fmt::Debug for SessionRegistry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("tracked", &self.lock().weak.len())
            .finish()
    }
}

impl<S: Tracked> SessionRegistry<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracking<S>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sessions still alive and not closed, forgetting the others.
    pub fn live(&self) -> Vec<S> {
        let mut live = Vec::new();
        self.lock().prune(|s| live.push(s));
        live
    }

    /// Counts `session` in, unless `max` sessions are alive already (then `false`: the
    /// caller refuses it).
    ///
    /// Ended sessions are forgotten when the references double since the last pruning, or
    /// when there are `max` of them: fewer than `max` references mean fewer than `max`
    /// live sessions, so the count is exact where it decides.
    pub fn admit(&self, session: &S, max: Option<usize>) -> bool {
        let mut tracking = self.lock();
        let at_max = |t: &Tracking<S>| max.is_some_and(|max| t.weak.len() >= max);
        if tracking.weak.len() >= tracking.prune_at || at_max(&tracking) {
            tracking.prune(drop);
        }
        if at_max(&tracking) {
            return false;
        }
        tracking.weak.push(session.downgrade());
        true
    }

    /// Drains every live session ([`Session::drain`]: no new streams, the open ones
    /// carry on) and closes it once its last stream is dropped, or when its deadline has
    /// passed, whichever comes first; returns when all are closed, with how many drained
    /// and how many were cut at their deadline.
    ///
    /// The drains do not all begin at once: with `n` sessions they begin
    /// [`SHUTDOWN_SPACING`] apart (closer if that does not fit in half of `grace`), so
    /// that the sessions' closes, and their agents' redials onto the next server, do not
    /// come in one burst. Each session gets the same time to drain, `grace` less the
    /// spread, at least half of `grace`; the last deadline is `grace` after the call. See
    /// [`shutdown_schedule`].
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let now = Instant::now();
        let live = self.live();
        let schedule = shutdown_schedule(live.len(), grace);
        // A deadline too large for the clock means "no deadline".
        let far = now + Duration::from_secs(100 * 365 * 24 * 3600);
        let mut closing = tokio::task::JoinSet::new();
        for (session, (begin, end)) in live.into_iter().zip(schedule) {
            let begin = now.checked_add(begin).unwrap_or(far);
            let end = now.checked_add(end).unwrap_or(far);
            closing.spawn(drain_and_close(session, begin, end));
        }
        let mut report = ShutdownReport::default();
        while let Some(drained) = closing.join_next().await {
            match drained {
                Ok(true) => report.drained += 1,
                _ => report.cut += 1,
            }
        }
        report
    }
}

/// The most time between the beginnings of two sessions' drains in a listener's
/// shutdown: 1 ms, so at most 1,000 sessions a second are told to go (and, once idle,
/// closed). A shutdown of 10,000 sessions spreads them over 10 s when the grace is at
/// least 20 s, and over half the grace when it is shorter.
pub const SHUTDOWN_SPACING: Duration = Duration::from_millis(1);

/// When each of `n` sessions begins to drain and when it is closed at the latest, as
/// offsets from the beginning of a shutdown with `grace`, in the order the sessions are
/// drained.
///
/// The drains begin evenly spaced, [`SHUTDOWN_SPACING`] apart, or closer so that all of
/// them begin within the first half of `grace`; the first at once. Every session gets the
/// same time to drain: `grace` less the offset of the last beginning, so the last
/// deadline is `grace` and each session has at least half of it.
pub fn shutdown_schedule(
    n: usize,
    grace: Duration,
) -> impl ExactSizeIterator<Item = (Duration, Duration)> {
    let count = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    let spacing = SHUTDOWN_SPACING.min(grace / 2 / count);
    let last = spacing * count.saturating_sub(1);
    let drain_time = grace.saturating_sub(last);
    (0..n).map(move |k| {
        let begin = spacing * u32::try_from(k).unwrap_or(u32::MAX);
        (begin, begin.saturating_add(drain_time))
    })
}

/// What a listener's graceful shutdown did with its sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Sessions whose drain completed: every stream finished before the deadline, and the
    /// session closed without cutting one.
    pub drained: usize,
    /// Sessions still draining at their deadline, closed with their open streams cut.
    pub cut: usize,
}

/// Drains `session` from `begin` until `end`, then closes it (a no-op if the drain
/// completed). Returns whether the drain completed.
async fn drain_and_close<S: Tracked>(session: S, begin: Instant, end: Instant) -> bool {
    tokio::time::sleep_until(begin).await;
    let drained = tokio::time::timeout_at(end, session.drain()).await.is_ok();
    session.close().await;
    drained
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_spreads_the_drains_and_gives_each_the_same_time() {
        let grace = Duration::from_secs(5);
        // One session: drained at once, with the whole grace.
        let one: Vec<_> = shutdown_schedule(1, grace).collect();
        assert_eq!(one, [(Duration::ZERO, grace)]);
        assert_eq!(shutdown_schedule(0, grace).len(), 0);

        // 10,000 sessions, 5 s: spaced 0.25 ms apart, over the first 2.5 s.
        let many: Vec<_> = shutdown_schedule(10_000, grace).collect();
        assert_eq!(many.len(), 10_000);
        let spacing = Duration::from_micros(250);
        let mut per_tenth = [0usize; 10];
        for (k, (begin, end)) in many.iter().enumerate() {
            assert_eq!(*begin, spacing * k as u32);
            assert_eq!(*end - *begin, many[0].1, "every session gets the same time");
            assert!(*end <= grace);
            assert!(*end - *begin >= grace / 2);
            per_tenth[(begin.as_micros() / 250_000) as usize] += 1;
        }
        assert_eq!(many.last().unwrap().1, grace);
        // No burst: the same number of drains begins in each tenth of the first half.
        assert_eq!(per_tenth, [1000; 10]);

        // Few sessions on a long grace: 1 ms apart, no more (a small fleet is not held
        // back for half the grace).
        let few: Vec<_> = shutdown_schedule(300, Duration::from_secs(30)).collect();
        assert_eq!(few[299].0, Duration::from_millis(299));
        assert_eq!(
            few[0].1,
            Duration::from_secs(30) - Duration::from_millis(299)
        );

        // No grace: everything at once.
        assert!(
            shutdown_schedule(50, Duration::ZERO).all(|s| s == (Duration::ZERO, Duration::ZERO))
        );
        // "No deadline" (a grace too large for the clock) still spreads by 1 ms.
        let endless: Vec<_> = shutdown_schedule(3, Duration::MAX).collect();
        assert_eq!(endless[2].0, Duration::from_millis(2));
    }
}
