//! The four Rust stacks under test, client and server side: raw rustls over TCP, Qymux
//! TCP, raw quinn and Qymux QUIC. Raw quinn gets the transport settings and UDP buffers
//! Qymux QUIC uses, so that the ratio between the two is the cost of Qymux's own layer.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

/// A bidirectional byte stream of any stack.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type BoxIo = Box<dyn Io>;

/// The name in the server certificate.
pub(crate) const SERVER_NAME: &str = "localhost";

/// Qymux QUIC's flow-control windows and stream limit (see the qymux-quic crate docs),
/// given to raw quinn too.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
const SEND_WINDOW: u64 = 32 * 1024 * 1024;
const MAX_STREAMS: u32 = 1024;
const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// The certificates of one run: written by the orchestrator, read by every server.
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    pub(crate) ca: std::path::PathBuf,
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
}

impl Certs {
    pub(crate) fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    /// Makes a CA and a server certificate for `localhost` in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = qymux_cert::CertificateAuthority::new("Qymux bench CA")?;
        let server = ca.issue_server(&[SERVER_NAME, "127.0.0.1"])?;
        let certs = Self::in_dir(dir);
        std::fs::write(&certs.ca, ca.cert_pem())?;
        std::fs::write(&certs.cert, server.cert_pem())?;
        std::fs::write(&certs.key, server.key_pem())?;
        Ok(certs)
    }

    pub(crate) fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        Ok(qymux_tls::ServerTls::from_pem_files(&self.cert, &self.key)?.build()?)
    }

    pub(crate) fn client_tls(&self) -> Result<Arc<rustls::ClientConfig>> {
        Ok(qymux_tls::ClientTls::with_ca_file(&self.ca)?.build()?)
    }
}

/// Qymux options for the bench: the defaults, except the per-source handshake cap: every
/// client of the bench comes from 127.0.0.1 (the idle measure dials 10,000 sessions at
/// once), and raw quinn and raw rustls have no such cap to compare with.
pub(crate) fn options() -> qymux_transport::Options {
    let mut options = qymux_transport::Options::default();
    let handshakes = options.max_pending_handshakes_value();
    options.max_pending_per_source(handshakes);
    if let Some(window) = std::env::var("QYMUX_BENCH_TCP_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.max_stream_window(window);
    }
    options
}

/// Raw quinn's stream limit: Qymux's default, unless `QYMUX_BENCH_QUINN_STREAMS` says
/// otherwise (to see what the limit costs; quinn allocates per allowed stream).
fn quinn_max_streams() -> u32 {
    std::env::var("QYMUX_BENCH_QUINN_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_STREAMS)
}

fn quinn_transport() -> quinn::TransportConfig {
    let mut config = quinn::TransportConfig::default();
    config
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(quinn_max_streams()))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW);
    config
}

fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // Best effort, as Qymux does: the kernel caps these at net.core.[rw]mem_max.
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    Ok(socket)
}

/// A raw quinn server endpoint on 127.0.0.1.
pub(crate) fn quinn_server(tls: Arc<rustls::ServerConfig>) -> Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(quinn_transport()));
    let socket = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

/// A raw quinn client endpoint on 127.0.0.1, with the bench's transport settings.
pub(crate) fn quinn_client(tls: Arc<rustls::ClientConfig>) -> Result<quinn::Endpoint> {
    let crypto = QuicClientConfig::try_from(tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(quinn_transport()));
    let socket = udp_socket(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A client side of one stack, connected to its server.
pub(crate) enum Client {
    /// Raw rustls over TCP has no streams: each `open` is a new TLS connection.
    RawTls {
        addr: SocketAddr,
        connector: tokio_rustls::TlsConnector,
    },
    QymuxTcp(qymux_tcp::Session),
    RawQuic {
        connection: quinn::Connection,
        endpoint: quinn::Endpoint,
    },
    QymuxQuic(qymux_quic::Session),
    /// A bare yamux crate over TLS (see `alt`).
    Alt(crate::alt::AltClient),
}

impl Client {
    pub(crate) async fn raw_tls(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::RawTls {
            addr,
            connector: tokio_rustls::TlsConnector::from(tls),
        }
    }

    pub(crate) async fn qymux_tcp(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let session = qymux_tcp::dial(&addr.to_string(), SERVER_NAME, tls, options()).await?;
        Ok(Self::QymuxTcp(session))
    }

    pub(crate) async fn raw_quic(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Self> {
        let endpoint = quinn_client(tls)?;
        let connection = endpoint.connect(addr, SERVER_NAME)?.await?;
        Ok(Self::RawQuic {
            connection,
            endpoint,
        })
    }

    pub(crate) async fn qymux_quic(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let session = qymux_quic::dial(&addr.to_string(), SERVER_NAME, tls, options()).await?;
        Ok(Self::QymuxQuic(session))
    }

    /// Opens a stream (raw TLS: connects).
    pub(crate) async fn open(&self) -> Result<BoxIo> {
        Ok(match self {
            Self::RawTls { addr, connector } => Box::new(connect_tls(*addr, connector).await?),
            Self::QymuxTcp(session) => Box::new(session.open().await?),
            Self::RawQuic { connection, .. } => {
                let (send, recv) = connection.open_bi().await?;
                Box::new(tokio::io::join(recv, send))
            }
            Self::QymuxQuic(session) => Box::new(session.open().await?),
            Self::Alt(client) => client.open().await?,
        })
    }

    pub(crate) async fn close(self) {
        match self {
            Self::RawTls { .. } => {}
            Self::QymuxTcp(session) => session.close().await,
            Self::RawQuic {
                connection,
                endpoint,
            } => {
                connection.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
            }
            Self::QymuxQuic(session) => session.close().await,
            Self::Alt(client) => client.close(),
        }
    }
}

/// Serves the bench protocol on every stream the peer opens on `session`.
pub(crate) async fn serve_session<S: qymux_transport::Session>(session: S) {
    while let Ok(stream) = session.accept().await {
        tokio::spawn(crate::proto::serve(stream));
    }
}

/// Serves the bench protocol on every TLS connection (one stream each); `hold` counts
/// the connections while they last.
pub(crate) async fn serve_raw_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hold: fn(BoxFuture) -> BoxFuture,
) {
    serve_tls(listener, tls, hold, |tls| {
        Box::pin(async move {
            let _ = crate::proto::serve(tls).await;
        })
    })
    .await;
}

/// A client-side TLS connection of the bench.
pub(crate) type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects over TCP (no Nagle) and completes TLS for [`SERVER_NAME`].
pub(crate) async fn connect_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
) -> Result<ClientTls> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(connector.connect(name, tcp).await?)
}

/// A server-side TLS connection of the bench.
pub(crate) type ServerTls = tokio_rustls::server::TlsStream<TcpStream>;

/// Accepts TCP connections, completes TLS on each and hands it to `serve`, each in a
/// task of its own; `hold` counts the connections while they last.
pub(crate) async fn serve_tls<F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hold: fn(BoxFuture) -> BoxFuture,
    serve: F,
) where
    F: Fn(ServerTls) -> BoxFuture + Clone + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, serve) = (acceptor.clone(), serve.clone());
        tokio::spawn(hold(Box::pin(async move {
            if tcp.set_nodelay(true).is_err() {
                return;
            }
            if let Ok(tls) = acceptor.accept(tcp).await {
                serve(tls).await;
            }
        })));
    }
}

pub(crate) type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves the bench protocol on every stream of every connection; `hold` counts the
/// connections while they last.
pub(crate) async fn serve_raw_quic(endpoint: quinn::Endpoint, hold: fn(BoxFuture) -> BoxFuture) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(hold(Box::pin(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(crate::proto::serve(tokio::io::join(recv, send)));
            }
        })));
    }
}
