//! [`Incoming`]: the streams a session's peer opens, as a [`futures::Stream`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{self, Stream as FuturesStream};

use crate::error::{Error, Result};
use crate::session::Session;

/// The streams a session's peer opens, in the order it opened them, as a
/// [`futures::Stream`]; made by [`Session::incoming`].
///
/// Each item is `Ok(stream)`, until the session ends: then one last item is `Err` with
/// the error the session's close reason stands for ([`CloseReason::to_error`]: say
/// [`Error::ClosedByPeer`] or [`Error::Closed`]; [`Session::close_reason`] gives the
/// reason itself), and after it the stream ends (`None`, also on every later poll). The
/// end is never silent: an `Incoming` that returns `None` has yielded the reason first.
///
/// ```
/// use futures::StreamExt as _;
/// use qymux_transport::Session;
///
/// async fn serve_all<S: Session>(session: S) {
///     let mut incoming = session.incoming();
///     while let Some(accepted) = incoming.next().await {
///         match accepted {
///             Ok(stream) => drop(stream), // hand it to a task
///             Err(reason) => assert!(reason.is_session_closed()), // the last item
///         }
///     }
/// }
/// ```
///
/// Making one costs one allocation; accepting costs none beyond what the backend's
/// accept does (on TCP nothing: it polls the engine's accept queue directly). Like
/// [`Session::accept`], it competes with every other `accept` on the session: each
/// stream goes to one of them. Dropping it between streams loses nothing; a stream the
/// peer opens stays queued for the next accept.
///
/// [`CloseReason::to_error`]: crate::CloseReason::to_error
pub struct Incoming<T> {
    inner: Option<Pin<Box<dyn FuturesStream<Item = Result<T>> + Send>>>,
}

impl<T: Send + 'static> Incoming<T> {
    /// Wraps a stream of accept results: `Ok` items pass through, the first `Err` is
    /// the last item. For backends and wrappers; users get one from
    /// [`Session::incoming`].
    pub fn new<St>(accepts: St) -> Self
    where
        St: FuturesStream<Item = Result<T>> + Send + 'static,
    {
        Incoming {
            inner: Some(Box::pin(accepts)),
        }
    }

    /// Accepts with [`Session::accept`], again and again. The accept future lives inside
    /// the one allocation this makes and is replaced in place for each stream.
    pub fn from_session<S: Session<Stream = T>>(session: S) -> Self {
        Incoming::new(stream::unfold(session, |session| async move {
            let accepted = session.accept().await;
            Some((accepted, session))
        }))
    }

    /// Maps each stream with `f`, keeping the end (the error, then `None`) as it is.
    pub fn map<U: Send + 'static>(self, f: impl FnMut(T) -> U + Send + 'static) -> Incoming<U> {
        use futures::TryStreamExt as _;
        match self.inner {
            Some(inner) => Incoming::new(inner.map_ok(f)),
            None => Incoming { inner: None },
        }
    }
}

impl<T> fmt::Debug for Incoming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("ended", &self.inner.is_none())
            .finish()
    }
}

impl<T> FuturesStream for Incoming<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Some(Ok(stream))),
            Poll::Ready(Some(Err(err))) => {
                self.inner = None;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                // A source that ends without an error: the end still carries a reason.
                self.inner = None;
                Poll::Ready(Some(Err(Error::Closed)))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self.inner {
            Some(_) => (0, None),
            None => (0, Some(0)),
        }
    }
}

impl<T> futures::stream::FusedStream for Incoming<T> {
    fn is_terminated(&self) -> bool {
        self.inner.is_none()
    }
}
