//! The IO type tonic's server runs on: a session stream plus what is known about the
//! session it belongs to.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use qymux_transport::{CloseReason, PeerIdentity, Protocol, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a gRPC handler knows about the session its call arrived on.
///
/// [`serve`](crate::serve) puts it into every request's extensions:
///
/// ```
/// use qymux_grpc::SessionInfo;
///
/// fn caller(request: &tonic::Request<()>) -> Option<String> {
///     let info = request.extensions().get::<SessionInfo>()?;
///     Some(format!("{} peer at {}", info.protocol, info.remote_addr))
/// }
/// ```
///
/// The addresses are also available the usual tonic way, through
/// [`tonic::Request::remote_addr`] and [`tonic::Request::local_addr`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The transport the session runs on.
    pub protocol: Protocol,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// This side's socket address.
    pub local_addr: SocketAddr,
    /// The peer's verified certificate chain: on the listener's side only when the agent
    /// presented a client certificate (mTLS); on the dialer's side, the server's.
    pub peer_identity: Option<PeerIdentity>,
}

impl SessionInfo {
    /// Takes what `session` says about itself.
    pub fn of<S: Session>(session: &S) -> Self {
        SessionInfo {
            protocol: session.protocol(),
            remote_addr: session.remote_addr(),
            local_addr: session.local_addr(),
            peer_identity: session.peer_identity(),
        }
    }
}

/// A session stream carrying one HTTP/2 connection, with the [`SessionInfo`] of its
/// session.
///
/// It implements tokio's [`AsyncRead`] / [`AsyncWrite`] and tonic's [`Connected`] (with
/// [`SessionInfo`] as the connect info), which is what
/// [`tonic::transport::Server::serve_with_incoming`] needs; [`incoming`](crate::incoming)
/// yields these, and the connections of a [`channel`](crate::channel) are these too.
///
/// It also watches the session: a read or write that is waiting when the session ends
/// fails with the session's close reason, whatever the backend does with its streams
/// then. So an HTTP/2 connection never outlives its session, and no call waits on a
/// session that is gone.
pub struct SessionIo<T> {
    stream: T,
    info: SessionInfo,
    read_end: SessionEnd,
    write_end: SessionEnd,
}

impl<T> fmt::Debug for SessionIo<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionIo")
            .field("info", &self.info)
            .field("ended", &self.read_end.ended)
            .finish_non_exhaustive()
    }
}

impl<T> SessionIo<T> {
    /// Wraps `stream`, a stream of `session`.
    pub fn new<S: Session<Stream = T>>(stream: T, session: &S) -> Self {
        SessionIo {
            stream,
            info: SessionInfo::of(session),
            read_end: SessionEnd::new(session),
            write_end: SessionEnd::new(session),
        }
    }

    /// What is known about the session.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The stream.
    pub fn get_ref(&self) -> &T {
        &self.stream
    }

    /// The stream, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.stream
    }

    /// Unwraps the stream.
    pub fn into_inner(self) -> T {
        self.stream
    }
}

impl<T> Connected for SessionIo<T> {
    type ConnectInfo = SessionInfo;

    fn connect_info(&self) -> SessionInfo {
        self.info.clone()
    }
}

/// Resolves when the session ends. Polled only while the stream itself is waiting, so it
/// costs nothing on the data path. Reading and writing each have one, because a future
/// remembers only the last task that polled it and the two halves may run on two tasks.
struct SessionEnd {
    waiting: Option<Pin<Box<dyn Future<Output = CloseReason> + Send>>>,
    ended: Option<CloseReason>,
}

impl SessionEnd {
    fn new<S: Session>(session: &S) -> Self {
        let session = session.clone();
        SessionEnd {
            waiting: Some(Box::pin(async move { session.closed().await })),
            ended: None,
        }
    }

    /// Turns a `Pending` of the stream into the session's end, once it has ended.
    fn check<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if let Some(waiting) = self.waiting.as_mut()
            && let Poll::Ready(reason) = waiting.as_mut().poll(cx)
        {
            self.waiting = None;
            self.ended = Some(reason);
        }
        match &self.ended {
            Some(reason) => Poll::Ready(Err(reason.to_error().into())),
            None => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SessionIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Pending => this.read_end.check(cx),
            ready => ready,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SessionIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_flush(cx) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_shutdown(cx) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.write_end.check(cx),
            ready => ready,
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
