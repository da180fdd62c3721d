//! Shared set-up for the forwarding tests: sessions over both backends, TCP targets,
//! payloads and checks.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use qymux_conformance::Backend;
use qymux_forward::{ForwardConfig, ForwardHandle, Stats, Stopped};
use qymux_transport::Listener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[allow(unused_imports)] // not every test file uses all of them
pub use qymux_conformance::{Pki, payload, sha256};

/// Bound on anything a test waits for, so a bug fails the test instead of hanging it.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

#[allow(unused_imports)] // not every test file uses both
pub use qymux_conformance_backends::{Quic, Tcp};

pub type SessionOf<B> = <<B as Backend>::Listener as Listener>::Session;

/// `local` (a TCP port on the listener's side) ⇒ stream ⇒ the dialer's side ⇒ `target`.
///
/// The listener's session runs [`forward_listener`](qymux_forward::forward_listener) on
/// `local`; the dialer's session runs [`forward_accepted`](qymux_forward::forward_accepted)
/// to the target: the tunnel's shape, with the server opening streams to the agent.
pub struct Rig<B: Backend> {
    pub pair: qymux_conformance::Pair<B>,
    /// Connect here to reach the target.
    pub local: SocketAddr,
    /// The forwarder on the listener's side (TCP connections to streams).
    pub listener_side: ForwardHandle,
    pub listener_task: JoinHandle<Stopped>,
    /// The forwarder on the dialer's side (streams to the target).
    pub accepted_side: ForwardHandle,
    pub accepted_task: JoinHandle<Stopped>,
}

impl<B: Backend> Rig<B> {
    pub async fn new(target: SocketAddr) -> Self {
        Self::with(target, ForwardConfig::default(), ForwardConfig::default()).await
    }

    /// With `listener_config` for the listener's side, `accepted_config` for the dialer's.
    pub async fn with(
        target: SocketAddr,
        listener_config: ForwardConfig,
        accepted_config: ForwardConfig,
    ) -> Self {
        let pair = qymux_conformance::pair::<B>().await;
        let local = TcpListener::bind("127.0.0.1:0").await.expect("bind local");
        let local_addr = local.local_addr().expect("local addr");
        let listener_fwd = listener_config.forward_listener(local, pair.server.clone());
        let accepted_fwd = accepted_config.forward_accepted(pair.client.clone(), target);
        Rig {
            pair,
            local: local_addr,
            listener_side: listener_fwd.handle(),
            listener_task: tokio::spawn(listener_fwd),
            accepted_side: accepted_fwd.handle(),
            accepted_task: tokio::spawn(accepted_fwd),
        }
    }

    /// Connects and reads to the end: for connections that are refused or reset (a
    /// reset can arrive before `connect` returns, which then reports it).
    pub async fn connect_and_read(&self) -> io::Result<Vec<u8>> {
        let mut tcp = TcpStream::connect(self.local).await?;
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await?;
        Ok(got)
    }

    pub async fn connect(&self) -> TcpStream {
        let tcp = TcpStream::connect(self.local).await.expect("connect local");
        tcp.set_nodelay(true).expect("nodelay");
        tcp
    }
}

/// Fails the test if `future` takes longer than [`HANG_GUARD`].
pub async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: still waiting after {HANG_GUARD:?}"))
}

/// Waits (bounded) until `check` holds for the forwarder's stats.
pub async fn stats_reach(handle: &ForwardHandle, what: &str, check: impl Fn(&Stats) -> bool) {
    let waited = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if check(&handle.stats()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!("{what}: stats are {:?}", handle.stats());
    }
}

/// A TCP server on loopback that echoes every connection until EOF, then finishes.
///
/// It never stops reading while a write waits: what it cannot send yet is queued in
/// memory. An echo that reads only once its last write went out ties both directions of
/// its connection together inside the kernel, and under a saturated transfer both ways
/// Linux's TCP could then sit in backed-off zero-window and retransmission timers for
/// longer than [`HANG_GUARD`] (docs/testing.md, `quic::transfer_256_mib_both_ways`).
pub async fn echo_target() -> SocketAddr {
    serve_target(|conn| async move {
        let (mut r, mut w) = conn.into_split();
        let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        // Returning drops `queue`, which ends the writer once it sent the rest.
        let reading = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) => return true,
                    Ok(n) => {
                        if queue.send(buf[..n].to_vec()).is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        };
        let writing = async move {
            while let Some(chunk) = queued.recv().await {
                w.write_all(&chunk).await?;
            }
            Ok::<_, io::Error>(w)
        };
        if let (true, Ok(mut w)) = tokio::join!(reading, writing) {
            let _ = w.shutdown().await;
        }
    })
    .await
}

/// A TCP server on loopback that runs `handle` for every connection.
pub async fn serve_target<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(handle(conn));
        }
    });
    addr
}

/// A loopback address where nothing listens (connections are refused).
pub async fn refusing_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
    // dropped: the port refuses connections now
}

/// Sends `data`, finishes, and returns everything read back.
pub async fn round_trip(tcp: TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    let (mut r, mut w) = tcp.into_split();
    let writer = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let reader = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (wrote, read) = tokio::join!(writer, reader);
    wrote?;
    read
}

/// Resets `tcp` (RST, not FIN) by closing it with `SO_LINGER` 0.
pub fn reset(tcp: TcpStream) {
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
    drop(tcp);
}

/// Asserts that `result` failed with a connection reset.
pub fn assert_reset<T: std::fmt::Debug>(what: &str, result: io::Result<T>) {
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected a connection reset, got {other:?}"),
    }
}

/// The `i`-th chunk of a long pseudo-random transfer.
pub fn chunk(i: u64, len: usize) -> Vec<u8> {
    payload(i.wrapping_add(0x5eed), len)
}

/// Streaming SHA-256.
pub struct Hasher(ring::digest::Context);

impl Hasher {
    pub fn new() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

/// Stamps out each listed `async fn name<B: Backend>()` as a test over TCP and over QUIC.
#[macro_export]
macro_rules! over_both_backends {
    ($($name:ident),* $(,)?) => {
        mod tcp {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::common::Tcp>().await;
                }
            )*
        }
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::common::Quic>().await;
                }
            )*
        }
    };
}
