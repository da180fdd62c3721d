//! Connections from the proxy to its local target: TCP, and TLS for `https`.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::io::PlainIo;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials the target: plain TCP for `http`, TCP then TLS for `https`.
#[derive(Clone)]
pub(crate) struct TargetConnector {
    http: HttpConnector,
    tls: Option<TlsConnector>,
}

impl TargetConnector {
    pub(crate) fn new(http: HttpConnector, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            http,
            tls: tls.map(TlsConnector::from),
        }
    }
}

impl tower::Service<Uri> for TargetConnector {
    type Response = PlainIo<TargetStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            if uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
                return Ok(PlainIo::new(TargetStream::Plain(tcp)));
            }
            let tls = tls.ok_or("no TLS configuration for an https target")?;
            let host = uri.host().ok_or("the target URI has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .map_err(|e| format!("invalid TLS server name {host:?}: {e}"))?;
            let stream = tls.connect(name, tcp).await.map_err(TlsHandshakeError)?;
            Ok(PlainIo::new(TargetStream::Tls(Box::new(stream))))
        })
    }
}

/// The TLS handshake with the target failed.
#[derive(Debug)]
struct TlsHandshakeError(std::io::Error);

impl fmt::Display for TlsHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TLS handshake with the target failed")
    }
}

impl std::error::Error for TlsHandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A connection to the target.
#[derive(Debug)]
pub(crate) enum TargetStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for TargetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            TargetStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TargetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TargetStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            TargetStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Plain(s) => Pin::new(s).poll_flush(cx),
            TargetStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TargetStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TargetStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TargetStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TargetStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            TargetStream::Plain(s) => s.is_write_vectored(),
            TargetStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The root store for an https target when none is configured: the system's (features
/// `native-roots` and `ring` or `aws-lc-rs`).
#[cfg(all(feature = "native-roots", any(feature = "ring", feature = "aws-lc-rs")))]
pub(crate) fn system_roots_config() -> Result<rustls::ClientConfig, String> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::debug!("system root store: {err}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("the system root store holds no usable certificate".into());
    }
    #[cfg(feature = "ring")]
    let provider = rustls::crypto::ring::default_provider();
    #[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Without the system's root store or a crypto provider compiled in, there is no
/// default: an https target needs `ProxyOptions::target_tls`.
#[cfg(not(all(feature = "native-roots", any(feature = "ring", feature = "aws-lc-rs"))))]
pub(crate) fn system_roots_config() -> Result<rustls::ClientConfig, String> {
    Err(
        "an https target needs ProxyOptions::target_tls: the default (the system's \
         root store) needs the features `native-roots` and `ring` or `aws-lc-rs`"
            .into(),
    )
}
