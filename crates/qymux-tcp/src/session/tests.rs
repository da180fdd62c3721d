//! The driver's handling of a peer that hung up while this side wrote.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use qymux_transport::{CloseReason, Error, Options};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Session, Start};
use crate::engine::core::Role;
use crate::engine::frame::{Header, TYPE_GO_AWAY};

/// A connection whose peer already hung up: writes fail with `EPIPE`, and what the
/// peer sent before it went (`input`) can only be read once a write was tried, so the
/// driver meets the failed write before the peer's last frames.
struct HungUp {
    input: io::Cursor<Vec<u8>>,
    wrote: bool,
    reader: Option<std::task::Waker>,
}

impl HungUp {
    fn new(input: Vec<u8>) -> Self {
        Self {
            input: io::Cursor::new(input),
            wrote: false,
            reader: None,
        }
    }
}

impl AsyncRead for HungUp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.wrote {
            self.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for HungUp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.wrote = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Starts a session on `io` and opens a stream, which makes the driver write.
async fn session_on_hung_up(input: Vec<u8>) -> CloseReason {
    let addr = SocketAddr::from(([127, 0, 0, 1], 1));
    let session = Session::start(Start {
        io: HungUp::new(input),
        role: Role::Server,
        options: Options::default(),
        local_addr: addr,
        remote_addr: addr,
        peer_identity: None,
    });
    // Whether the open gets through before the session ends does not matter.
    let _ = session.open().await;
    session.closed().await
}

#[tokio::test]
async fn a_peer_that_closed_gracefully_while_we_wrote_closed_the_session() {
    // GoAway (normal termination); then the peer's socket closed.
    let go_away = Header::new(TYPE_GO_AWAY, 0, 0, 0).encode();
    let reason = session_on_hung_up(go_away.to_vec()).await;
    assert!(
        matches!(reason, CloseReason::Peer(None)),
        "expected a close by the peer, got {reason:?}"
    );
}

#[tokio::test]
async fn a_peer_that_hung_up_without_go_away_fails_the_session() {
    let reason = session_on_hung_up(Vec::new()).await;
    match reason {
        CloseReason::Failed(Error::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}")
        }
        other => panic!("expected the broken pipe, got {other:?}"),
    }
}
