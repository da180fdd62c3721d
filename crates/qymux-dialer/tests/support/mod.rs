//! Helpers shared by the Auto-mode, reconnect and limit tests: certificates, an echo service, a
//! UDP blackhole, hang guards.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qymux_cert::CertificateAuthority;
use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{BoxSession, BoxStream, Mode, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A hang guard: generous, only there to turn a hang into a clear failure.
pub const GUARD: Duration = Duration::from_secs(60);

/// Awaits `f`, failing with `what` if it hangs.
pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("hung for {GUARD:?}: {what}"),
    }
}

pub struct Pki {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

pub fn pki() -> Pki {
    let ca = CertificateAuthority::new("Reconnect CA").unwrap();
    Pki {
        server: ServerTls::new(ca.issue_server(&["localhost"]).unwrap())
            .build()
            .unwrap(),
        client: ClientTls::with_ca(vec![ca.certificate().clone()])
            .build()
            .unwrap(),
    }
}

/// A listener on a free loopback port with default options, and a dialer for it in the
/// same mode (the dialer's own default is Auto too).
pub async fn listen_and_dialer(
    pki: &Pki,
    mode: Mode,
) -> (qymux_dialer::Listener, qymux_dialer::Dialer) {
    let listener = qymux_dialer::Listener::bind(
        "127.0.0.1:0",
        pki.server.clone(),
        qymux_transport::Options::default(),
        mode,
    )
    .await
    .unwrap();
    let dialer = qymux_dialer::Dialer::new(
        listener.local_addr().to_string(),
        "localhost",
        pki.client.clone(),
    )
    .mode(mode);
    (listener, dialer)
}

/// Echoes every stream the peer opens on `session`, until the session ends.
pub async fn echo_streams(session: BoxSession) {
    while let Ok(stream) = session.accept().await {
        tokio::spawn(echo(stream));
    }
}

async fn echo(mut stream: BoxStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => {
                let _ = stream.shutdown().await;
                return;
            }
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Accepts until the server side of `agent` comes (same transport, same client port).
/// In Auto mode the attempt that lost the race may complete its handshake at the server
/// too, and is closed by the dialer right away: skip such sessions.
pub async fn accept_peer_of(listener: &qymux_dialer::Listener, agent: &BoxSession) -> BoxSession {
    loop {
        let session = listener.accept().await.expect("listener closed");
        if session.protocol() == agent.protocol()
            && session.remote_addr().port() == agent.local_addr().port()
        {
            return session;
        }
    }
}

/// Deterministic, non-repeating test bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8 ^ seed)
        .collect()
}

/// Writes `data` on `stream` and reads exactly as many bytes back.
pub async fn round_trip<S>(stream: &mut S, data: &[u8]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let write = async {
        w.write_all(data).await.unwrap();
    };
    let mut back = vec![0u8; data.len()];
    let read = async {
        r.read_exact(&mut back).await.unwrap();
    };
    tokio::join!(write, read);
    back
}

/// A UDP socket bound at `port` that never answers, counting what it receives.
pub struct Blackhole {
    ip: std::net::IpAddr,
    port: u16,
    received: Arc<AtomicUsize>,
    senders: Arc<Mutex<BTreeSet<u16>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Blackhole {
    pub fn bind(port: u16) -> Blackhole {
        Self::try_bind(port).unwrap()
    }

    /// Binds `port` (0: any free port), or says why it cannot.
    pub fn try_bind(port: u16) -> std::io::Result<Blackhole> {
        Self::try_bind_on("127.0.0.1", port)
    }

    /// Binds a free port on another loopback address (127.0.0.0/8): an address of its own
    /// where QUIC is silently dropped.
    pub fn bind_on(ip: &str) -> Blackhole {
        Self::try_bind_on(ip, 0).unwrap()
    }

    fn try_bind_on(ip: &str, port: u16) -> std::io::Result<Blackhole> {
        let socket = std::net::UdpSocket::bind((ip, port))?;
        let ip = socket.local_addr()?.ip();
        socket.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let socket = tokio::net::UdpSocket::from_std(socket)?;
        let received = Arc::new(AtomicUsize::new(0));
        let senders = Arc::new(Mutex::new(BTreeSet::new()));
        let (count, seen) = (received.clone(), senders.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((_, from)) = socket.recv_from(&mut buf).await {
                seen.lock().unwrap().insert(from.port());
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Blackhole {
            ip,
            port,
            received,
            senders,
            task: Some(task),
        })
    }

    /// The UDP port it holds.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address it holds.
    pub fn addr(&self) -> std::net::SocketAddr {
        (self.ip, self.port).into()
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// The source ports datagrams came from: each QUIC attempt has a socket of its own,
    /// so a new port here is a new attempt.
    pub fn senders(&self) -> BTreeSet<u16> {
        self.senders.lock().unwrap().clone()
    }

    /// Stops and frees the port; returns once the socket is closed.
    pub async fn remove(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
