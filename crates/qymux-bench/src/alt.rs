//! Two bare yamux multiplexers over the same TLS, without Qymux's layer: the `yamux`
//! crate (rust-libp2p's, which Qymux TCP was built on before it got its own engine) and
//! `tokio-yamux`, the other maintained Rust implementation of the hashicorp protocol.
//! They are not Qymux: no keep-alive timeout, no limits, no stream announcement at
//! open, no close reasons. They show what the best Rust alternatives to Qymux's own
//! engine do over the same TLS.
//!
//! The `yamux` crate gets the settings Qymux TCP gave it: a 1 GiB connection receive
//! window and 64 KiB frames. tokio-yamux has no connection window; it gets a 16 MiB
//! stream window, and sends each write as one frame, up to the window.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::{Context, Result};
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use crate::stacks::{BoxFuture, BoxIo, connect_tls};

/// Which of the two crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mux {
    /// The `yamux` crate (the one Qymux TCP uses).
    YamuxCrate,
    /// The `tokio-yamux` crate.
    TokioYamux,
}

impl Mux {
    /// The crate whose bench server is `kind`, if it is one of these two.
    pub(crate) fn from_server_kind(kind: &str) -> Option<Self> {
        [Self::YamuxCrate, Self::TokioYamux]
            .into_iter()
            .find(|mux| mux.server_kind() == kind)
    }

    /// The kind of its bench server.
    pub(crate) fn server_kind(self) -> &'static str {
        match self {
            Self::YamuxCrate => "yamux-crate",
            Self::TokioYamux => "tokio-yamux",
        }
    }
}

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config
        .set_max_connection_receive_window(Some(1 << 30))
        .set_split_send_size(64 * 1024);
    config
}

fn tokio_yamux_config() -> tokio_yamux::Config {
    tokio_yamux::Config {
        max_stream_window_size: 16 << 20,
        ..tokio_yamux::Config::default()
    }
}

/// A request to the `yamux` crate's connection task for a new outbound stream.
type OpenRequest = oneshot::Sender<yamux::Result<yamux::Stream>>;

/// The `yamux` crate moves bytes only while one task polls its connection: this is that
/// task. It opens streams on request and hands inbound ones to `inbound`, until the
/// connection ends.
async fn drive_yamux<T>(
    mut conn: yamux::Connection<T>,
    mut opens: mpsc::UnboundedReceiver<OpenRequest>,
    inbound: impl Fn(yamux::Stream),
) where
    T: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    let mut waiting: VecDeque<OpenRequest> = VecDeque::new();
    poll_fn(|cx| {
        while let Poll::Ready(Some(request)) = opens.poll_recv(cx) {
            waiting.push_back(request);
        }
        while !waiting.is_empty() {
            let Poll::Ready(opened) = conn.poll_new_outbound(cx) else {
                break;
            };
            if let Some(request) = waiting.pop_front() {
                let _ = request.send(opened);
            }
        }
        loop {
            match conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(stream))) => inbound(stream),
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}

/// The client side of one bare multiplexer, over one TLS connection.
pub(crate) enum AltClient {
    YamuxCrate {
        opens: mpsc::UnboundedSender<OpenRequest>,
        task: JoinHandle<()>,
    },
    TokioYamux {
        control: tokio_yamux::Control,
        task: JoinHandle<()>,
    },
}

impl AltClient {
    pub(crate) async fn connect(
        mux: Mux,
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let tls = connect_tls(addr, &tokio_rustls::TlsConnector::from(tls)).await?;
        Ok(match mux {
            Mux::YamuxCrate => {
                let conn =
                    yamux::Connection::new(tls.compat(), yamux_config(), yamux::Mode::Client);
                let (opens, requests) = mpsc::unbounded_channel();
                // The bench protocol's client never accepts streams: drop any.
                let task = tokio::spawn(drive_yamux(conn, requests, drop));
                Self::YamuxCrate { opens, task }
            }
            Mux::TokioYamux => {
                let mut session = tokio_yamux::Session::new_client(tls, tokio_yamux_config());
                let control = session.control();
                let task = tokio::spawn(async move { while session.next().await.is_some() {} });
                Self::TokioYamux { control, task }
            }
        })
    }

    pub(crate) async fn open(&self) -> Result<BoxIo> {
        Ok(match self {
            Self::YamuxCrate { opens, .. } => {
                let (tx, rx) = oneshot::channel();
                opens
                    .send(tx)
                    .ok()
                    .context("the yamux connection task ended")?;
                let stream = rx.await.context("the yamux connection task ended")??;
                Box::new(stream.compat())
            }
            Self::TokioYamux { control, .. } => {
                let stream = control
                    .clone()
                    .open_stream()
                    .await
                    .map_err(|e| anyhow::anyhow!("tokio-yamux open: {e:?}"))?;
                Box::new(ReadWhileWriting::new(stream))
            }
        })
    }

    pub(crate) fn close(self) {
        match self {
            Self::YamuxCrate { task, .. } | Self::TokioYamux { task, .. } => task.abort(),
        }
    }
}

/// Serves the bench protocol on every stream of every TLS connection; `hold` counts the
/// connections while they last.
pub(crate) async fn serve(
    mux: Mux,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hold: fn(BoxFuture) -> BoxFuture,
) {
    crate::stacks::serve_tls(listener, tls, hold, move |tls| match mux {
        Mux::YamuxCrate => Box::pin(async move {
            let conn = yamux::Connection::new(tls.compat(), yamux_config(), yamux::Mode::Server);
            // Nothing asks this side to open streams; keep the sender so the request
            // channel stays open.
            let (_opens, requests) = mpsc::unbounded_channel();
            drive_yamux(conn, requests, |stream| {
                tokio::spawn(crate::proto::serve(stream.compat()));
            })
            .await;
        }),
        Mux::TokioYamux => Box::pin(async move {
            let mut session = tokio_yamux::Session::new_server(tls, tokio_yamux_config());
            while let Some(Ok(stream)) = session.next().await {
                tokio::spawn(crate::proto::serve(ReadWhileWriting::new(stream)));
            }
        }),
    })
    .await;
}

/// tokio-yamux takes in a stream's window updates only inside the stream's `poll_read`,
/// so a stream that only writes stalls for good once its send window is spent (the
/// crate says so at `StreamHandle::poll_write`; Qymux's streams and the `yamux` crate's do
/// not need it). This wrapper reads while a write waits, and keeps what it read for the
/// next read.
struct ReadWhileWriting {
    inner: tokio_yamux::StreamHandle,
    early: Vec<u8>,
    early_eof: bool,
}

impl ReadWhileWriting {
    fn new(inner: tokio_yamux::StreamHandle) -> Self {
        Self {
            inner,
            early: Vec::new(),
            early_eof: false,
        }
    }
}

impl AsyncRead for ReadWhileWriting {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = buf.remaining().min(this.early.len());
            buf.put_slice(&this.early[..n]);
            this.early.drain(..n);
            return Poll::Ready(Ok(()));
        }
        if this.early_eof {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadWhileWriting {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if written.is_pending() && !this.early_eof && this.early.len() < 64 * 1024 {
            let mut scratch = [0u8; 4096];
            let mut read = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.early_eof = true;
                    }
                    this.early.extend_from_slice(read.filled());
                    // The read may have opened the window: try the write again.
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
