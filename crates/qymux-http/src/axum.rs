//! axum on a session (feature `axum`): [`SessionListener`] is an axum
//! [`Listener`] whose connections are the streams the session's
//! peer opens, so `axum::serve` serves an axum app to the peer, with no local port.
//!
//! ```no_run
//! # async fn f(session: qymux_transport::BoxSession) -> std::io::Result<()> {
//! use axum::Router;
//! use axum::extract::ConnectInfo;
//! use axum::routing::get;
//! use qymux_http::SessionInfo;
//! use qymux_http::axum::SessionListener;
//!
//! async fn who(ConnectInfo(info): ConnectInfo<SessionInfo>) -> String {
//!     format!("{} peer at {}", info.protocol, info.remote_addr)
//! }
//!
//! let app = Router::new().route("/who", get(who));
//! let listener = SessionListener::new(session);
//! let until_closed = listener.shutdown_signal(); // the session ends, or `shutdown()`
//! axum::serve(listener, app.into_make_service_with_connect_info::<SessionInfo>())
//!     .with_graceful_shutdown(until_closed)
//!     .await?; // returns once the session has ended
//! # Ok(())
//! # }
//! ```
//!
//! # How serving ends
//!
//! axum's `Listener::accept` cannot fail, and `axum::serve` ends only through its
//! graceful shutdown. So once the session has ended, [`SessionListener`] accepts
//! nothing more (its `accept` never completes), and the future of
//! [`SessionListener::shutdown_signal`] completes. Pass it to `with_graceful_shutdown`
//! and `axum::serve` returns `Ok(())` when the session ends: connections still open fail
//! with the session (their reads and writes report its close reason), so the graceful
//! wait is short. The same signal completes on [`ShutdownHandle::shutdown`], which stops
//! serving on demand while the session stays open: axum stops accepting, sends HTTP/2
//! connections `GOAWAY`, lets HTTP/1.1 connections finish their current request, and
//! waits for them. Without a graceful shutdown, `axum::serve` never returns after the
//! session has ended.
//!
//! # Who is calling
//!
//! Serve `router.into_make_service_with_connect_info::<SessionInfo>()` and handlers
//! extract `ConnectInfo<SessionInfo>`: the protocol, both addresses, and the peer's
//! verified certificate chain (with mTLS, on the listener's side, the agent's client
//! certificate). The listener's `Addr` is the peer's socket address.
//!
//! Upgrades work (axum's `ws` feature: WebSocket over an HTTP/1.1 connection on a
//! stream). Serving takes every stream the peer opens, so nothing else may accept
//! streams on this session.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use futures::StreamExt as _;
use qymux_transport::{Incoming, Session};
use tokio::sync::watch;

use crate::info::SessionInfo;
use crate::io::SessionIo;

/// An axum [`Listener`] over the streams a session's peer opens; see the
/// [module docs](self).
///
/// Each accepted stream is one HTTP connection (HTTP/1.1 or HTTP/2, as axum detects);
/// its IO is a [`SessionIo`], and its connect info a [`SessionInfo`].
pub struct SessionListener<S: Session> {
    session: S,
    incoming: Incoming<S::Stream>,
    shutdown: Arc<watch::Sender<bool>>,
}

impl<S: Session> SessionListener<S> {
    /// A listener on the streams `session`'s peer opens.
    pub fn new(session: S) -> Self {
        SessionListener {
            incoming: session.incoming(),
            session,
            shutdown: Arc::new(watch::Sender::new(false)),
        }
    }

    /// The session.
    pub fn session(&self) -> &S {
        &self.session
    }

    /// A handle that stops serving on demand: it completes every
    /// [`shutdown_signal`](SessionListener::shutdown_signal) of this listener.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// For `axum::serve(..).with_graceful_shutdown(..)`: completes when the session has
    /// ended (for whatever reason) or when [`ShutdownHandle::shutdown`] is called.
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        let session = self.session.clone();
        let mut requested = self.shutdown.subscribe();
        ShutdownSignal(Box::pin(async move {
            tokio::select! {
                reason = session.closed() => {
                    tracing::debug!("the session ended ({reason}): axum serving stops");
                }
                _ = requested.wait_for(|stop| *stop) => {
                    tracing::debug!("shutdown requested: axum serving stops");
                }
            }
        }))
    }
}

impl<S: Session> fmt::Debug for SessionListener<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionListener")
            .field("protocol", &self.session.protocol())
            .field("remote_addr", &self.session.remote_addr())
            .field("incoming", &self.incoming)
            .finish()
    }
}

impl<S: Session> Listener for SessionListener<S> {
    type Io = SessionIo<S::Stream>;
    type Addr = SocketAddr;

    /// The next stream the peer opens. Once the session has ended this never completes
    /// (axum's accept cannot fail): end `axum::serve` with
    /// [`shutdown_signal`](SessionListener::shutdown_signal).
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.next().await {
            Some(Ok(stream)) => (
                SessionIo::new(stream, &self.session),
                self.session.remote_addr(),
            ),
            Some(Err(reason)) => {
                tracing::debug!("the session ended ({reason}): accepting no more streams");
                std::future::pending().await
            }
            None => std::future::pending().await,
        }
    }

    /// This side's address on the session.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.session.local_addr())
    }
}

impl<S: Session> Connected<IncomingStream<'_, SessionListener<S>>> for SessionInfo {
    fn connect_info(stream: IncomingStream<'_, SessionListener<S>>) -> Self {
        stream.io().info().clone()
    }
}

/// Stops a [`SessionListener`]'s serving on demand; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Completes the listener's [`ShutdownSignal`]s, so `axum::serve` shuts down
    /// gracefully. The session stays open. Calling it again is harmless.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Completes when the session has ended or [`ShutdownHandle::shutdown`] was called;
/// made by [`SessionListener::shutdown_signal`].
pub struct ShutdownSignal(Pin<Box<dyn Future<Output = ()> + Send>>);

impl fmt::Debug for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownSignal").finish_non_exhaustive()
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
