//! Type-erased sessions, streams and listeners, for a transport chosen at run time.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::Result;
use crate::incoming::Incoming;
use crate::session::{
    CloseReason, Listener, PeerIdentity, Protocol, Session, SessionStats, Stream,
};

/// A stream of any backend.
pub struct BoxStream(Box<dyn Stream>);

impl BoxStream {
    /// Erases the type of `stream`.
    pub fn new<S: Stream>(stream: S) -> Self {
        BoxStream(Box::new(stream))
    }
}

impl fmt::Debug for BoxStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxStream")
            .field("id", &self.0.id())
            .finish()
    }
}

impl AsyncRead for BoxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl Stream for BoxStream {
    fn id(&self) -> u64 {
        self.0.id()
    }

    fn abort(&mut self) {
        self.0.abort()
    }
}

/// The object-safe face of [`Session`], implemented for every session type.
trait DynSession: Send + Sync + 'static {
    fn open(&self) -> BoxFuture<'_, Result<BoxStream>>;
    fn accept(&self) -> BoxFuture<'_, Result<BoxStream>>;
    fn incoming(&self) -> Incoming<BoxStream>;
    fn protocol(&self) -> Protocol;
    fn local_addr(&self) -> SocketAddr;
    fn remote_addr(&self) -> SocketAddr;
    fn peer_identity(&self) -> Option<PeerIdentity>;
    fn close(&self) -> BoxFuture<'_, ()>;
    fn drain(&self) -> BoxFuture<'_, ()>;
    fn closed(&self) -> BoxFuture<'_, CloseReason>;
    fn close_reason(&self) -> Option<CloseReason>;
    fn stats(&self) -> SessionStats;
}

impl<S: Session> DynSession for S {
    fn open(&self) -> BoxFuture<'_, Result<BoxStream>> {
        Box::pin(async move { Session::open(self).await.map(BoxStream::new) })
    }
    fn accept(&self) -> BoxFuture<'_, Result<BoxStream>> {
        Box::pin(async move { Session::accept(self).await.map(BoxStream::new) })
    }
    fn incoming(&self) -> Incoming<BoxStream> {
        Session::incoming(self).map(BoxStream::new)
    }
    fn protocol(&self) -> Protocol {
        Session::protocol(self)
    }
    fn local_addr(&self) -> SocketAddr {
        Session::local_addr(self)
    }
    fn remote_addr(&self) -> SocketAddr {
        Session::remote_addr(self)
    }
    fn peer_identity(&self) -> Option<PeerIdentity> {
        Session::peer_identity(self)
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(Session::close(self))
    }
    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(Session::drain(self))
    }
    fn closed(&self) -> BoxFuture<'_, CloseReason> {
        Box::pin(Session::closed(self))
    }
    fn close_reason(&self) -> Option<CloseReason> {
        Session::close_reason(self)
    }
    fn stats(&self) -> SessionStats {
        Session::stats(self)
    }
}

/// A session of any backend; its streams are [`BoxStream`]s.
#[derive(Clone)]
pub struct BoxSession(Arc<dyn DynSession>);

impl BoxSession {
    /// Erases the type of `session`.
    pub fn new<S: Session>(session: S) -> Self {
        BoxSession(Arc::new(session))
    }
}

impl fmt::Debug for BoxSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxSession")
            .field("protocol", &self.0.protocol())
            .field("remote_addr", &self.0.remote_addr())
            .finish()
    }
}

impl Session for BoxSession {
    type Stream = BoxStream;

    fn open(&self) -> impl std::future::Future<Output = Result<BoxStream>> + Send {
        self.0.open()
    }
    fn accept(&self) -> impl std::future::Future<Output = Result<BoxStream>> + Send {
        self.0.accept()
    }
    /// The backend's own [`Incoming`] (allocation-free per stream on both backends),
    /// each stream boxed.
    fn incoming(&self) -> Incoming<BoxStream> {
        self.0.incoming()
    }
    fn protocol(&self) -> Protocol {
        self.0.protocol()
    }
    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    fn remote_addr(&self) -> SocketAddr {
        self.0.remote_addr()
    }
    fn peer_identity(&self) -> Option<PeerIdentity> {
        self.0.peer_identity()
    }
    fn close(&self) -> impl std::future::Future<Output = ()> + Send {
        self.0.close()
    }
    fn drain(&self) -> impl std::future::Future<Output = ()> + Send {
        self.0.drain()
    }
    fn closed(&self) -> impl std::future::Future<Output = CloseReason> + Send {
        self.0.closed()
    }
    fn close_reason(&self) -> Option<CloseReason> {
        self.0.close_reason()
    }
    fn stats(&self) -> SessionStats {
        self.0.stats()
    }
}

trait DynListener: Send + Sync + 'static {
    fn accept(&self) -> BoxFuture<'_, Result<BoxSession>>;
    fn local_addr(&self) -> SocketAddr;
    fn close(&self);
}

impl<L: Listener> DynListener for L {
    fn accept(&self) -> BoxFuture<'_, Result<BoxSession>> {
        Box::pin(async move { Listener::accept(self).await.map(BoxSession::new) })
    }
    fn local_addr(&self) -> SocketAddr {
        Listener::local_addr(self)
    }
    fn close(&self) {
        Listener::close(self)
    }
}

/// A listener of any backend; it hands out [`BoxSession`]s.
pub struct BoxListener(Box<dyn DynListener>);

impl BoxListener {
    /// Erases the type of `listener`.
    pub fn new<L: Listener>(listener: L) -> Self {
        BoxListener(Box::new(listener))
    }
}

impl fmt::Debug for BoxListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxListener")
            .field("local_addr", &self.0.local_addr())
            .finish()
    }
}

impl Listener for BoxListener {
    type Session = BoxSession;

    fn accept(&self) -> impl std::future::Future<Output = Result<BoxSession>> + Send {
        self.0.accept()
    }
    fn local_addr(&self) -> SocketAddr {
        self.0.local_addr()
    }
    fn close(&self) {
        self.0.close()
    }
}
