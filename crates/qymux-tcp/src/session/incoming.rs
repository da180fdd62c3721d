//! Opening and accepting by polling: [`Session::poll_open`], [`Session::poll_accept`]
//! and the allocation-free [`Session::incoming`].

use std::pin::Pin;
use std::task::{Context, Poll};

use qymux_transport::{Incoming, Result};

use super::Session;
use crate::stream::Stream;

impl Session {
    /// Polls to open a stream: [`open`](Session::open) as a poll function, for
    /// hand-written futures and connectors that should not box a future per stream.
    /// The SYN is sent as `open`'s is. Registers `cx`'s waker while the peer has 256 of
    /// our streams unacknowledged; unlike `open`, it puts no bound
    /// ([`Options::open_timeout`](qymux_transport::Options::open_timeout)) on that wait:
    /// the caller bounds it. Fails with the session's close reason once it has ended, or
    /// with the limit reached. Allocates nothing beyond the stream's own state in the
    /// engine.
    pub fn poll_open(&self, cx: &mut Context<'_>) -> Poll<Result<Stream>> {
        let shared = &self.handle.shared;
        let id = match shared.with_conn(|c| c.poll_open(cx.waker())) {
            Poll::Ready(Ok(id)) => id,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        };
        // From here on the stream's Drop releases it.
        let stream = Stream::new(id, self.handle.clone());
        // The SYN goes with the stream's first write when the opener writes before it
        // yields (one TLS record and one socket write fewer, and the peer reads both in
        // one go); otherwise the driver, woken here, sends it as soon as this task yields.
        shared.wake_driver();
        Poll::Ready(Ok(stream))
    }

    /// Polls for a stream the peer opened: [`accept`](Session::accept) as a poll
    /// function, for hand-written futures and streams. Registers `cx`'s waker while no
    /// stream waits; fails with the session's close reason once it has ended. Allocates
    /// nothing (the stream's state was made when the peer's SYN arrived).
    pub fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<Result<Stream>> {
        let shared = &self.handle.shared;
        shared
            .with_conn(|c| c.poll_accept(cx.waker()))
            .map_ok(|id| Stream::new(id, self.handle.clone()))
    }

    /// The streams the peer opens, then the session's close reason: see
    /// [`qymux_transport::Session::incoming`]. Polls the engine's accept queue
    /// directly ([`poll_accept`](Session::poll_accept)); nothing is allocated per
    /// stream.
    pub fn incoming(&self) -> Incoming<Stream> {
        Incoming::new(Accepting(self.clone()))
    }
}

/// [`Session::poll_accept`] as a [`futures::Stream`]; [`Incoming`] ends it at the first
/// error.
struct Accepting(Session);

impl futures::Stream for Accepting {
    type Item = Result<Stream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Stream>>> {
        self.0.poll_accept(cx).map(Some)
    }
}
