//! Connection and byte counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a forwarder has done so far: connections by outcome, and bytes each way.
///
/// `accepted == active + completed + failed + refused` once every connection counted in
/// `accepted` has been classified (a connection is counted `accepted` first).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections (streams, or TCP connections) that arrived.
    pub accepted: u64,
    /// Connections being forwarded now.
    pub active: u64,
    /// Connections that ended cleanly, both directions finished.
    pub completed: u64,
    /// Connections that ended with an error: the target refused, a side reset, the
    /// session failed. Both sides were reset.
    pub failed: u64,
    /// Connections turned away at once: over
    /// [`ForwardConfig::max_connections`](crate::ForwardConfig::max_connections), or
    /// (tunnel server) no agent connected.
    pub refused: u64,
    /// Bytes read from TCP connections and written to streams.
    pub tcp_to_stream_bytes: u64,
    /// Bytes read from streams and written to TCP connections.
    pub stream_to_tcp_bytes: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    accepted: AtomicU64,
    active: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    pub(crate) tcp_to_stream: AtomicU64,
    pub(crate) stream_to_tcp: AtomicU64,
    /// The last step of each direction: TCP to stream, stream to TCP.
    pub(crate) trace: [DirectionTrace; 2],
}

/// A step of one copy direction, as [`DirectionTrace`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Step {
    ReadPending = 1,
    ReadData = 2,
    ReadEof = 3,
    ReadError = 4,
    WritePending = 5,
    Wrote = 6,
    WriteError = 7,
    FlushPending = 8,
    ShutdownPending = 9,
    Finished = 10,
}

impl Step {
    fn name(code: u64) -> &'static str {
        match code {
            0 => "not polled yet",
            1 => "read: Pending",
            2 => "read: data",
            3 => "read: EOF",
            4 => "read: error",
            5 => "write: Pending",
            6 => "write: accepted",
            7 => "write: error",
            8 => "flush: Pending",
            9 => "shutdown: Pending",
            10 => "finished",
            _ => "?",
        }
    }
}

/// The last step of one copy direction and how many times it was polled: a few relaxed
/// atomic stores per poll, read when a transfer stalls (which call returned `Pending`,
/// and so which waker should have woken the connection). With several connections in
/// progress it shows whichever was polled last.
#[derive(Debug, Default)]
pub(crate) struct DirectionTrace {
    /// Step code in bits 0..8, bytes read or still to write in bits 8..64.
    last: AtomicU64,
    polls: AtomicU64,
}

impl DirectionTrace {
    pub(crate) fn polled(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn step(&self, step: Step, bytes: usize) {
        self.last
            .store(step as u64 | ((bytes as u64) << 8), Ordering::Relaxed);
    }

    fn describe(&self) -> String {
        let last = self.last.load(Ordering::Relaxed);
        format!(
            "{} ({} bytes) after {} polls",
            Step::name(last & 0xff),
            last >> 8,
            self.polls.load(Ordering::Relaxed)
        )
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            accepted: get(&self.accepted),
            active: get(&self.active),
            completed: get(&self.completed),
            failed: get(&self.failed),
            refused: get(&self.refused),
            tcp_to_stream_bytes: get(&self.tcp_to_stream),
            stream_to_tcp_bytes: get(&self.stream_to_tcp),
        }
    }

    /// Both directions' last steps, for a stall report.
    pub(crate) fn trace(&self) -> String {
        format!(
            "TCP to stream: {}; stream to TCP: {}",
            self.trace[0].describe(),
            self.trace[1].describe()
        )
    }

    /// Counts a connection that was refused before it was forwarded.
    pub(crate) fn refused(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection that is being forwarded; the returned tally classifies it when
    /// it ends (as failed if it is dropped unclassified, e.g. by a cancelled task).
    pub(crate) fn start(self: &Arc<Self>) -> Tally {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        Tally {
            counters: self.clone(),
            outcome: None,
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Completed,
    Failed,
    Refused,
}

/// Classifies one active connection when dropped.
#[derive(Debug)]
pub(crate) struct Tally {
    counters: Arc<Counters>,
    outcome: Option<Outcome>,
}

impl Tally {
    pub(crate) fn set(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let c = &self.counters;
        let counter = match self.outcome.unwrap_or(Outcome::Failed) {
            Outcome::Completed => &c.completed,
            Outcome::Failed => &c.failed,
            Outcome::Refused => &c.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.active.fetch_sub(1, Ordering::Relaxed);
    }
}
