//! A reverse proxy serving a local HTTP(S) service on the streams a session accepts.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use qymux_transport::Session;
use tokio::sync::watch;

use crate::headers;
use crate::serve::{ServeHandle, ServeOptions, StateGuard, StopReason, serve_with};
use crate::target::{BoxError, TargetConnector, system_roots_config};

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How [`serve_proxy`] reaches its target and serves the session.
///
/// Start from [`ProxyOptions::default`] and change fields with the chaining setters:
///
/// ```
/// use std::time::Duration;
/// use qymux_http::ProxyOptions;
///
/// let mut options = ProxyOptions::default();
/// options
///     .connect_timeout(Duration::from_secs(2))
///     .response_timeout(Some(Duration::from_secs(30)))
///     .preserve_host(false);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// TLS for an `https` target. `None` (the default) trusts the operating system's root
    /// store. The ALPN list of a given config is replaced with `http/1.1`, so a Qymux
    /// config (ALPN `qymux`) can be reused as it is. Use the `ring` crypto provider.
    pub target_tls: Option<Arc<rustls::ClientConfig>>,
    /// Bound on connecting to the target (TCP connect); past it the request gets a
    /// `502 Bad Gateway`. Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on waiting for the target's response headers, counted from sending the
    /// request; past it the request gets a `504 Gateway Timeout`. Bodies are never timed:
    /// long-lived streaming responses (watch, logs) flow for as long as they last.
    /// Default `None` (no bound).
    pub response_timeout: Option<Duration>,
    /// Forward the request's own `Host` (the authority the client used, for example
    /// `service.internal`) instead of the target's authority. Default `true`.
    pub preserve_host: bool,
    /// How long idle connections to the target are kept for reuse. Default 4 s: shorter
    /// than the idle timeout of common servers (Node.js closes after 5 s), so a request
    /// never races the target closing an idle connection.
    pub target_idle_timeout: Duration,
    /// Bound on the graceful part of [`ProxyHandle::shutdown`]: requests in flight may
    /// finish within it; whatever still runs afterwards (streaming responses, upgraded
    /// connections) is cut. Default 5 s.
    pub shutdown_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            target_tls: None,
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            preserve_host: true,
            target_idle_timeout: Duration::from_secs(4),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyOptions {
    /// Sets [`ProxyOptions::target_tls`].
    pub fn target_tls(&mut self, config: Arc<rustls::ClientConfig>) -> &mut Self {
        self.target_tls = Some(config);
        self
    }

    /// Sets [`ProxyOptions::connect_timeout`].
    pub fn connect_timeout(&mut self, value: Duration) -> &mut Self {
        self.connect_timeout = value;
        self
    }

    /// Sets [`ProxyOptions::response_timeout`].
    pub fn response_timeout(&mut self, value: Option<Duration>) -> &mut Self {
        self.response_timeout = value;
        self
    }

    /// Sets [`ProxyOptions::preserve_host`].
    pub fn preserve_host(&mut self, value: bool) -> &mut Self {
        self.preserve_host = value;
        self
    }

    /// Sets [`ProxyOptions::target_idle_timeout`].
    pub fn target_idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.target_idle_timeout = value;
        self
    }

    /// Sets [`ProxyOptions::shutdown_timeout`].
    pub fn shutdown_timeout(&mut self, value: Duration) -> &mut Self {
        self.shutdown_timeout = value;
        self
    }
}

/// Why [`serve_proxy`] could not start.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The target is not an absolute `http://` or `https://` URI with a host.
    #[error("invalid proxy target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No TLS configuration could be made for an `https` target.
    #[error("TLS for the proxy target: {0}")]
    Tls(String),
}

/// Controls a running [`serve_proxy`] and tells when and why it stopped.
///
/// Cheap to clone. Dropping every handle does not stop the proxy: it serves until
/// [`ProxyHandle::shutdown`] or until the session ends.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    serving: ServeHandle,
    state: watch::Receiver<Option<StopReason>>,
    target: Uri,
}

impl ProxyHandle {
    /// Stops serving: no more streams are accepted, requests in flight get
    /// [`ProxyOptions::shutdown_timeout`] to finish, then every connection still open
    /// (also upgraded ones) is cut. Returns at once; [`ProxyHandle::stopped`] waits for
    /// the end. The session itself stays open. Calling it again is harmless.
    pub fn shutdown(&self) {
        self.serving.shutdown();
    }

    /// Waits until the proxy has stopped, and says why.
    pub async fn stopped(&self) -> StopReason {
        let mut state = self.state.clone();
        match state.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(StopReason::Aborted),
            Err(_) => self.stop_reason().unwrap_or(StopReason::Aborted),
        }
    }

    /// Why the proxy stopped, or `None` while it is serving.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.state.borrow().clone()
    }

    /// The target requests are forwarded to.
    pub fn target(&self) -> &Uri {
        &self.target
    }
}

/// Serves `target` on `session`: every stream the session accepts carries HTTP (HTTP/1.1
/// or HTTP/2, detected per stream), and every request on it is forwarded to `target`.
///
/// - `target` is `http://host:port` or `https://host:port`, optionally with a path
///   prefix (`http://127.0.0.1:8080/api` sends `/v1/pods` to `/api/v1/pods`). An
///   `https` target is verified with [`ProxyOptions::target_tls`] (the system roots by
///   default) under the target's host name.
/// - Bodies stream both ways without being buffered: an upload flows to the target as it
///   arrives, a long-lived response (watch, logs, server-sent events) flows back chunk by
///   chunk.
/// - Hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`,
///   `Transfer-Encoding`, `TE` except `trailers`, `Trailer`, `Upgrade`,
///   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`) are not forwarded,
///   in either direction. `Host` is the client's unless [`ProxyOptions::preserve_host`]
///   is off.
/// - HTTP/1.1 upgrades (`Connection: upgrade`, e.g. WebSocket) are passed through: when
///   the target answers `101 Switching Protocols`, the client's stream and the target's
///   connection are joined, bytes flowing both ways until both sides finish.
/// - A target that cannot be reached (refused, timed out, TLS failure) gives
///   `502 Bad Gateway` with the reason as a `text/plain` body; a response slower than
///   [`ProxyOptions::response_timeout`] gives `504 Gateway Timeout`. `CONNECT` requests
///   are refused with `405 Method Not Allowed`.
///
/// The proxy accepts every stream of the session, so nothing else may accept streams on
/// it. It runs in a spawned task (call it inside a tokio runtime) until the session ends
/// or [`ProxyHandle::shutdown`]; the returned handle says when and why it stopped.
/// Fails at once only when the target or its TLS configuration cannot work.
pub async fn serve_proxy<S: Session>(
    session: S,
    target: Uri,
    options: ProxyOptions,
) -> Result<ProxyHandle, ProxyError> {
    let parsed = Target::parse(&target)?;
    let tls = if parsed.scheme == Scheme::HTTPS {
        let config = match &options.target_tls {
            Some(config) => (**config).clone(),
            None => tokio::task::spawn_blocking(system_roots_config)
                .await
                .map_err(|e| ProxyError::Tls(format!("loading the system roots: {e}")))?
                .map_err(ProxyError::Tls)?,
        };
        Some(with_http11_alpn(config))
    } else {
        None
    };

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(options.connect_timeout));
    let client = Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(options.target_idle_timeout)
        .build(TargetConnector::new(http, tls));

    let (state_tx, state_rx) = watch::channel(None);
    let (cut_tx, cut_rx) = watch::channel(false);
    let mut serve_options = ServeOptions::default();
    serve_options.shutdown_timeout(Some(options.shutdown_timeout));
    let target_uri = parsed.uri.clone();
    let proxy = Arc::new(Proxy {
        client,
        target: parsed,
        options,
        cut: cut_rx,
    });
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.forward(req).await) }
    });
    // The one accept-and-serve path: the proxy is a service like any other.
    let serving = serve_with(session, service, serve_options);
    tokio::spawn(report_stop(
        serving.clone(),
        target_uri,
        cut_tx,
        StateGuard(Some(state_tx)),
    ));
    Ok(ProxyHandle {
        serving,
        state: state_rx,
        target,
    })
}

fn with_http11_alpn(mut config: rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Waits for serving to stop, then cuts the upgraded connections and reports why.
async fn report_stop(
    serving: ServeHandle,
    target: Uri,
    cut: watch::Sender<bool>,
    state: StateGuard,
) {
    let reason = serving.stopped().await;
    cut.send_replace(true);
    tracing::debug!(%target, "proxy stopped: {reason}");
    state.report(reason);
}

/// Where requests go.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    authority: Authority,
    /// The target's path without its trailing slash ("" for none).
    base_path: String,
    uri: Uri,
}

impl Target {
    fn parse(uri: &Uri) -> Result<Target, ProxyError> {
        let invalid = |reason: &str| ProxyError::InvalidTarget {
            target: uri.to_string(),
            reason: reason.to_owned(),
        };
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            Some(_) => return Err(invalid("the scheme must be http or https")),
            None => return Err(invalid("an absolute URI (http:// or https://) is needed")),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .cloned()
            .ok_or_else(|| invalid("the URI has no host"))?;
        if uri.query().is_some() {
            return Err(invalid("the URI must not have a query"));
        }
        Ok(Target {
            scheme,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            uri: uri.clone(),
        })
    }

    /// The target URI for a request to `incoming`.
    fn uri_for(&self, incoming: &Uri) -> Result<Uri, http::Error> {
        let requested = incoming.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if self.base_path.is_empty() || !requested.starts_with('/') {
            requested.to_owned()
        } else {
            format!("{}{requested}", self.base_path)
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

struct Proxy {
    client: Client<TargetConnector, Incoming>,
    target: Target,
    options: ProxyOptions,
    /// Turns true when the proxy stops: upgraded connections end.
    cut: watch::Receiver<bool>,
}

impl Proxy {
    async fn forward(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "qymux-http: CONNECT is not supported by this reverse proxy\n".into(),
            );
        }
        let upgrade = match req.version() {
            Version::HTTP_10 | Version::HTTP_11 => headers::upgrade_protocol(req.headers()),
            _ => None,
        };
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let uri = match self.target.uri_for(&parts.uri) {
            Ok(uri) => uri,
            Err(err) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!("qymux-http: cannot forward {}: {err}\n", parts.uri),
                );
            }
        };
        let host = if self.options.preserve_host {
            parts.headers.get(HOST).cloned().or_else(|| {
                parts
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            })
        } else {
            None
        };
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        parts.headers.remove(HOST);
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        let method = parts.method.clone();
        let request = Request::from_parts(parts, body);

        let sent = self.client.request(request);
        let result = match self.options.response_timeout {
            None => sent.await,
            Some(bound) => match tokio::time::timeout(bound, sent).await {
                Ok(result) => result,
                Err(_) => {
                    return plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "qymux-http: the target {} did not answer {method} within {bound:?}\n",
                            self.target.uri
                        ),
                    );
                }
            },
        };
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                let reason = error_chain(&err);
                tracing::warn!(target = %self.target.uri, "proxying {method} failed: {reason}");
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "qymux-http: bad gateway: {method} to the target {} failed: {reason}\n",
                        self.target.uri
                    ),
                );
            }
        };

        let mut upgrade_back = None;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "qymux-http: the target switched protocols without being asked to\n".into(),
                );
            };
            upgrade_back = response.headers().get(http::header::UPGRADE).cloned();
            let target_upgrade = hyper::upgrade::on(&mut response);
            let cut = self.cut.clone();
            tokio::spawn(tunnel(client_upgrade, target_upgrade, cut));
        }
        let (mut parts, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut parts.headers, upgrade_back);
        parts.version = Version::HTTP_11;
        Response::from_parts(parts, body.map_err(BoxError::from).boxed_unsync())
    }
}

/// Joins an upgraded client stream with the upgraded target connection.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    target: hyper::upgrade::OnUpgrade,
    mut cut: watch::Receiver<bool>,
) {
    let (client, target) = tokio::join!(client, target);
    let (client, target) = match (client, target) {
        (Ok(c), Ok(t)) => (c, t),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!("upgrade through the proxy failed: {err}");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut target = TokioIo::new(target);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection finished"),
            Err(err) => tracing::debug!("upgraded connection failed: {err}"),
        },
        _ = cut.wait_for(|cut| *cut) => tracing::debug!("upgraded connection cut: proxy stopped"),
    }
}

/// A `text/plain` response made by the proxy itself.
fn plain(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error and its sources, as one line.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;

    fn target(s: &str) -> Result<Target, ProxyError> {
        Target::parse(&s.parse().unwrap())
    }

    #[test]
    fn targets_are_checked() {
        assert!(target("http://127.0.0.1:8080").is_ok());
        assert!(target("https://localhost").is_ok());
        assert!(target("/just/a/path").is_err());
        assert!(target("ftp://host").is_err());
        assert!(target("http://host/?q=1").is_err());
    }

    #[test]
    fn request_paths_join_the_target_path() {
        let t = target("http://127.0.0.1:8080").unwrap();
        let uri = t.uri_for(&"/a/b?c=d".parse().unwrap()).unwrap();
        assert_eq!(uri, "http://127.0.0.1:8080/a/b?c=d");
        let uri = t
            .uri_for(&"http://service.internal/x".parse().unwrap())
            .unwrap();
        assert_eq!(uri, "http://127.0.0.1:8080/x");

        let t = target("https://localhost:8443/api/").unwrap();
        let uri = t.uri_for(&"/v1/pods?watch=1".parse().unwrap()).unwrap();
        assert_eq!(uri, "https://localhost:8443/api/v1/pods?watch=1");
        let uri = t.uri_for(&"/".parse().unwrap()).unwrap();
        assert_eq!(uri, "https://localhost:8443/api/");
    }

    #[derive(Debug)]
    struct Outer(&'static str, std::io::Error);

    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn error_chains_name_every_cause_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            error_chain(&Outer("client error (Connect)", refused())),
            "client error (Connect): refused"
        );
        assert_eq!(
            error_chain(&Outer("tcp connect: refused", refused())),
            "tcp connect: refused"
        );
    }
}
