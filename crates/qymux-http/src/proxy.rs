//! A reverse proxy serving a local HTTP(S) service on the streams a session accepts.

use std::convert::Infallible;
use std::fmt;
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
use qymux_transport::{PeerText, Session};
use tokio::sync::watch;

use crate::serve::{ServeHandle, ServeOptions, StateGuard, StopReason, serve_with};
use crate::target::{BoxError, TargetConnector, system_roots_config};
use crate::{forwarded, headers, path};

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
///     .preserve_host(false)
///     .forwarded_headers(true);
/// ```
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    target_tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
    response_timeout: Option<Duration>,
    preserve_host: bool,
    forwarded_headers: bool,
    keep_incoming_forwarded: bool,
    target_idle_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            target_tls: None,
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            preserve_host: false,
            forwarded_headers: true,
            keep_incoming_forwarded: false,
            target_idle_timeout: Duration::from_secs(4),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ProxyOptions {
    /// TLS for an `https` target. Unset (the default), the operating system's root store
    /// is trusted (features `native-roots` and `ring` or `aws-lc-rs`, on by default;
    /// without them an `https` target needs this set). The ALPN list of a given config is
    /// replaced with `http/1.1`, so a Qymux config (ALPN `qymux`) can be reused as it is.
    /// Build it with an explicit crypto provider (`builder_with_provider`), such as
    /// `qymux_tls::provider()`.
    pub fn target_tls(&mut self, config: Arc<rustls::ClientConfig>) -> &mut Self {
        self.target_tls = Some(config);
        self
    }

    /// Bound on connecting to the target (TCP connect); past it the request gets a
    /// `502 Bad Gateway`. Default 10 s.
    pub fn connect_timeout(&mut self, value: Duration) -> &mut Self {
        self.connect_timeout = value;
        self
    }

    /// Bound on waiting for the target's response headers, counted from sending the
    /// request; past it the request gets a `504 Gateway Timeout`. Bodies are never timed:
    /// long-lived streaming responses (watch, logs) flow for as long as they last.
    /// Default `None` (no bound).
    pub fn response_timeout(&mut self, value: Option<Duration>) -> &mut Self {
        self.response_timeout = value;
        self
    }

    /// Forward the request's own `Host` (the authority the client used, for example
    /// `service.internal`) instead of the target's authority. Default `false`: the target
    /// sees its own authority, and the client's `Host` in `X-Forwarded-Host` and the
    /// `host=` of `Forwarded`.
    pub fn preserve_host(&mut self, value: bool) -> &mut Self {
        self.preserve_host = value;
        self
    }

    /// Add `Forwarded` (RFC 7239: `for="<session peer address>";proto=http;host="<the
    /// client's Host>"`), `X-Forwarded-For` (the session peer's IP), `X-Forwarded-Proto`
    /// and `X-Forwarded-Host` to every request, so the target can tell a request that
    /// came through the tunnel from a local caller. Default `true`.
    pub fn forwarded_headers(&mut self, value: bool) -> &mut Self {
        self.forwarded_headers = value;
        self
    }

    /// What to do with the `Forwarded` and `X-Forwarded-*` headers the request arrives
    /// with (set by the session peer, or by whoever it forwards for; not trusted as they
    /// are). `false` (the default): dropped. `true`: `Forwarded` and `X-Forwarded-For`
    /// are kept and this proxy's element is appended last, for targets that trust the
    /// peer to have set them (a target must still trust only the last element as this
    /// proxy's own); `X-Forwarded-Proto` and `-Host` are always this proxy's.
    pub fn keep_incoming_forwarded(&mut self, value: bool) -> &mut Self {
        self.keep_incoming_forwarded = value;
        self
    }

    /// How long idle connections to the target are kept for reuse. Default 4 s: shorter
    /// than the idle timeout of common servers (Node.js closes after 5 s), so a request
    /// never races the target closing an idle connection.
    pub fn target_idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.target_idle_timeout = value;
        self
    }

    /// Bound on the graceful part of [`ProxyHandle::shutdown`]: requests in flight may
    /// finish within it; whatever still runs afterwards (streaming responses, upgraded
    /// connections) is cut. Default 5 s.
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
/// - Requests stay under the target's path: the request's path is normalised (RFC 3986
///   §5.2.4, with `%2e` as a dot) before it is joined, and one that climbs above its root
///   (`/../admin`, `/%2e%2e/admin`, `/a/%2E%2E/%2e%2e/admin`) is refused with
///   `400 Bad Request`, as are segments servers disagree on (`..;x`, an encoded `/` or
///   `\`). The target receives the normalised path, with no dot segment in it.
/// - The target learns who sent the request: `Forwarded` and `X-Forwarded-For/-Proto/
///   -Host` name the session peer ([`ProxyOptions::forwarded_headers`]); the ones the
///   request came with are dropped ([`ProxyOptions::keep_incoming_forwarded`]). `Host`
///   is the target's authority unless [`ProxyOptions::preserve_host`] is on.
/// - Bodies stream both ways without being buffered: an upload flows to the target as it
///   arrives, a long-lived response (watch, logs, server-sent events) flows back chunk by
///   chunk.
/// - Hop-by-hop headers (`Connection` and the headers it names, `Keep-Alive`,
///   `Transfer-Encoding`, `TE` except `trailers`, `Trailer`, `Upgrade`,
///   `Proxy-Connection`, `Proxy-Authenticate`, `Proxy-Authorization`) are not forwarded,
///   in either direction.
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
        peer: session.remote_addr(),
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

    /// The target URI for a request to `incoming`: its path normalised and joined under
    /// the base path (refused if it leaves it), its query as it is.
    fn uri_for(&self, incoming: &Uri) -> Result<Uri, RewriteError> {
        let requested = incoming.path_and_query().map_or("/", PathAndQuery::as_str);
        let (path, query) = match requested.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (requested, None),
        };
        let path = if path.is_empty() { "/" } else { path };
        let mut path_and_query = path::join(&self.base_path, path).map_err(RewriteError::Path)?;
        if let Some(query) = query {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(RewriteError::Uri)
    }
}

/// Why a request cannot be rewritten for the target (the client gets a 400).
#[derive(Debug)]
enum RewriteError {
    Path(path::PathError),
    Uri(http::Error),
}

impl fmt::Display for RewriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RewriteError::Path(e) => e.fmt(f),
            RewriteError::Uri(e) => e.fmt(f),
        }
    }
}

struct Proxy {
    client: Client<TargetConnector, Incoming>,
    /// The session peer: who sends the requests (for `Forwarded`).
    peer: std::net::SocketAddr,
    target: Target,
    options: ProxyOptions,
    /// Turns true when the proxy stops: upgraded connections end.
    cut: watch::Receiver<bool>,
}

impl Proxy {
    /// Rewrites a request for the target: URI (path kept under the base path), `Host`,
    /// hop-by-hop and forwarding headers. For a request that cannot be forwarded, the
    /// body of the `400 Bad Request` it gets.
    fn rewrite(
        &self,
        parts: &mut http::request::Parts,
        upgrade: Option<HeaderValue>,
    ) -> Result<(), String> {
        let uri = self.target.uri_for(&parts.uri).map_err(|err| {
            // The path is the client's: escaped before it reaches a log line.
            let shown = PeerText(parts.uri.path()).to_string();
            tracing::debug!(path = %shown, "request refused: {err}");
            format!("qymux-http: cannot forward {shown}: {err}\n")
        })?;
        // The authority the client asked for: Host (HTTP/1.1), or the URI's (HTTP/2
        // :authority, absolute-form).
        let client_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let proto = match parts.uri.scheme_str() {
            Some("https") => "https",
            _ => "http",
        };
        headers::remove_hop_by_hop(&mut parts.headers, upgrade);
        forwarded::rewrite(
            &mut parts.headers,
            &forwarded::Hop {
                peer: self.peer,
                proto,
                host: client_host.as_ref(),
            },
            self.options.forwarded_headers,
            self.options.keep_incoming_forwarded,
        );
        parts.headers.remove(HOST);
        match client_host {
            Some(host) if self.options.preserve_host => {
                parts.headers.insert(HOST, host);
            }
            // hyper's client sets Host from the target URI.
            _ => {}
        }
        parts.uri = uri;
        Ok(())
    }

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
        if let Err(refused) = self.rewrite(&mut parts, upgrade) {
            return plain(StatusCode::BAD_REQUEST, refused);
        }
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
