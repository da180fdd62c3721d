//! Shared test helpers: sessions over TCP and QUIC, local hyper servers, bodies.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use qymux_conformance::{Backend, Pair};
use qymux_http::{ProxyHandle, ProxyOptions};
use qymux_transport::{CloseReason, PeerIdentity, Protocol, Result, Session};
use tokio::sync::{mpsc, oneshot};

pub use qymux_conformance::Pki;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Bound on any single wait in a test, so a bug fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(30);

#[allow(unused_imports)] // not every test file uses both
pub use qymux_conformance_backends::{Quic, Tcp};

/// Generates one `#[tokio::test]` per backend for each generic scenario:
/// `mod tcp { fn name() }` and `mod quic { fn name() }`.
macro_rules! on_both_backends {
    ($($(#[$meta:meta])* $name:ident),* $(,)?) => {
        mod tcp {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::common::Tcp>().await
                }
            )*
        }
        mod quic {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name::<super::common::Quic>().await
                }
            )*
        }
    };
}

/// The agent's session (the dialer) and the server's (the listener's).
pub type SessionOf<B> = <<B as Backend>::Listener as qymux_transport::Listener>::Session;

/// A connected pair of sessions.
pub async fn pair<B: Backend>() -> Pair<B> {
    qymux_conformance::pair::<B>().await
}

/// A pair whose agent side serves a proxy to `target`.
pub async fn proxied<B: Backend>(target: &str, options: ProxyOptions) -> (Pair<B>, ProxyHandle) {
    let pair = pair::<B>().await;
    let target: Uri = target.parse().expect("target URI");
    let proxy = qymux_http::serve_proxy(pair.client.clone(), target, options)
        .await
        .expect("serve_proxy");
    (pair, proxy)
}

/// Serves `handler` with hyper (HTTP/1.1 with upgrades, and HTTP/2) on 127.0.0.1.
pub async fn spawn_target<H, F>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<TestBody>> + Send + 'static,
{
    spawn_target_inner(handler, None).await
}

/// Like [`spawn_target`], behind TLS with `config`.
pub async fn spawn_tls_target<H, F>(handler: H, config: Arc<rustls::ServerConfig>) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<TestBody>> + Send + 'static,
{
    spawn_target_inner(handler, Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn spawn_target_inner<H, F>(handler: H, tls: Option<tokio_rustls::TlsAcceptor>) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind target");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tcp.set_nodelay(true).unwrap();
            let handler = handler.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let result = match tls {
                    None => {
                        builder
                            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                            .await
                    }
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => {
                            builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await
                        }
                        Err(e) => Err(e.into()),
                    },
                };
                let _ = result;
            });
        }
    });
    addr
}

/// A complete body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `200 OK` with a body.
pub fn ok(data: impl Into<Bytes>) -> Response<TestBody> {
    Response::new(full(data))
}

/// Reads a whole response body as text.
pub async fn text(body: Incoming) -> String {
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8 body")
}

/// A body whose chunks the test sends, one at a time.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// Deterministic pseudo-random bytes generated on the fly, `len` in all, in chunks of
/// `chunk`, hashed (SHA-256) as they are produced; the digest is sent at the end. The
/// length is not announced, so HTTP/1.1 sends it chunked.
pub struct Generated {
    remaining: u64,
    chunk: usize,
    state: u64,
    hasher: Option<ring::digest::Context>,
    done: Option<oneshot::Sender<Vec<u8>>>,
    announce_length: Option<u64>,
}

impl Generated {
    pub fn new(seed: u64, len: u64, chunk: usize) -> (Self, oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = oneshot::channel();
        let body = Generated {
            remaining: len,
            chunk,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            hasher: Some(ring::digest::Context::new(&ring::digest::SHA256)),
            done: Some(tx),
            announce_length: None,
        };
        (body, rx)
    }

    /// Announces the length (`Content-Length`) instead of streaming it chunked.
    pub fn with_length(mut self) -> Self {
        self.announce_length = Some(self.remaining);
        self
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            if let (Some(hasher), Some(done)) = (this.hasher.take(), this.done.take()) {
                let _ = done.send(hasher.finish().as_ref().to_vec());
            }
            return Poll::Ready(None);
        }
        let n = this.chunk.min(this.remaining as usize);
        let mut buf = Vec::with_capacity(n + 8);
        let mut x = this.state;
        while buf.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        buf.truncate(n);
        this.state = x;
        this.remaining -= n as u64;
        if let Some(h) = this.hasher.as_mut() {
            h.update(&buf);
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        match self.announce_length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Hashes a body as it arrives, never holding it whole: `(length, SHA-256)`.
pub async fn hash_body(mut body: Incoming) -> std::result::Result<(u64, Vec<u8>), hyper::Error> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            ctx.update(&data);
        }
    }
    Ok((len, ctx.finish().as_ref().to_vec()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The usual target: `/hash` hashes the request body and answers `"<len> <sha256>"`;
/// `/headers` answers the request line and headers it received, one per line; anything
/// else answers `hello <path>`.
pub async fn standard_target(req: Request<Incoming>) -> Response<TestBody> {
    match req.uri().path() {
        "/hash" => {
            let version = req.version();
            match hash_body(req.into_body()).await {
                Ok((len, digest)) => ok(format!("{len} {} {version:?}", hex(&digest))),
                Err(err) => {
                    let mut r = ok(format!("body failed: {err}"));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            }
        }
        "/headers" => {
            let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
            for (name, value) in req.headers() {
                out.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
            }
            let mut response = ok(out);
            let h = response.headers_mut();
            h.insert("connection", "x-resp-hop".parse().unwrap());
            h.insert("x-resp-hop", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-resp-end", "1".parse().unwrap());
            response
        }
        path => ok(format!("hello {path}")),
    }
}

/// A session that counts the streams it opens.
#[derive(Clone)]
pub struct Counting<S> {
    pub inner: S,
    pub opened: Arc<AtomicUsize>,
}

impl<S: Session> Counting<S> {
    pub fn new(inner: S) -> Self {
        Counting {
            inner,
            opened: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn opened(&self) -> usize {
        self.opened.load(Ordering::SeqCst)
    }
}

impl<S: Session> Session for Counting<S> {
    type Stream = S::Stream;

    fn open(&self) -> impl Future<Output = Result<S::Stream>> + Send {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.inner.open()
    }
    fn accept(&self) -> impl Future<Output = Result<S::Stream>> + Send {
        self.inner.accept()
    }
    fn protocol(&self) -> Protocol {
        self.inner.protocol()
    }
    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }
    fn remote_addr(&self) -> SocketAddr {
        self.inner.remote_addr()
    }
    fn peer_identity(&self) -> Option<PeerIdentity> {
        self.inner.peer_identity()
    }
    fn close(&self) -> impl Future<Output = ()> + Send {
        self.inner.close()
    }
    fn drain(&self) -> impl Future<Output = ()> + Send {
        self.inner.drain()
    }
    fn closed(&self) -> impl Future<Output = CloseReason> + Send {
        self.inner.closed()
    }
    fn close_reason(&self) -> Option<CloseReason> {
        self.inner.close_reason()
    }
    fn stats(&self) -> qymux_transport::SessionStats {
        self.inner.stats()
    }
}

/// A rustls server config for a local HTTPS target (ALPN `http/1.1`).
pub fn https_server_config(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.server.cert_chain().to_vec(), pki.server.private_key())
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Listens and dials with mTLS: the agent (the dialer) presents the PKI's client
/// certificate, the listener requires one from the PKI's CA.
pub async fn mtls_pair<B: Backend>(pki: &Pki) -> Pair<B> {
    use qymux_tls::{ClientTls, ServerTls};
    use qymux_transport::Listener as _;

    let server_tls = ServerTls::new(pki.server.clone())
        .client_ca(vec![pki.ca.certificate().clone()])
        .build()
        .expect("server config");
    let client_tls = ClientTls::with_ca(vec![pki.ca.certificate().clone()])
        .client_identity(pki.client.clone())
        .build()
        .expect("client config");
    let options = qymux_conformance::options();
    let listener = B::listen(server_tls, options.clone())
        .await
        .expect("listen");
    let addr = listener.local_addr();
    let (c, s) = tokio::join!(
        B::dial(addr, "localhost", client_tls, options),
        listener.accept()
    );
    Pair {
        listener,
        client: c.expect("dial"),
        server: s.expect("accept"),
    }
}

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}
