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
    /// carry on) and closes it once its last stream is dropped, or when `grace` has
    /// passed, whichever comes first; returns when all are closed.
    pub async fn shutdown(&self, grace: Duration) {
        // A grace too large for the clock means "no deadline".
        let now = Instant::now();
        let until = now
            .checked_add(grace)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        let mut closing = tokio::task::JoinSet::new();
        for session in self.live() {
            closing.spawn(drain_and_close(session, until));
        }
        while closing.join_next().await.is_some() {}
    }
}

/// Drains `session` until `until`, then closes it (a no-op if the drain completed).
async fn drain_and_close<S: Tracked>(session: S, until: Instant) {
    let _ = tokio::time::timeout_at(until, session.drain()).await;
    session.close().await;
}
