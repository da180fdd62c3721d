//! The configurations of the two roles: [`ServerConfig`] to listen, [`ClientConfig`] to
//! dial.
//!
//! Both follow quinn's style (see `docs/architecture.md`, "Configuration"): what a role
//! cannot work without is an argument of `new`, everything else has a default and a
//! chaining setter `fn name(&mut self, value) -> &mut Self`.
//!
//! A setting a role cannot do without is therefore a compile error when it is missing,
//! not an error from `listen` or `dial`. A server needs its certificate and key:
//!
//! ```compile_fail
//! # async fn f() -> qymux::Result<()> {
//! // error: ServerConfig has no constructor without the server's TLS
//! let listener = qymux::Qymux::listen("0.0.0.0:4433", qymux::ServerConfig::default()).await?;
//! # Ok(()) }
//! ```
//!
//! ```compile_fail
//! # async fn f() -> qymux::Result<()> {
//! // error: ServerConfig::new takes the server's TLS
//! let listener = qymux::Qymux::listen("0.0.0.0:4433", qymux::ServerConfig::new()).await?;
//! # Ok(()) }
//! ```
//!
//! An agent needs the server's address:
//!
//! ```compile_fail
//! // error: ClientConfig::new takes the server's address
//! let agent = qymux::Qymux::new(qymux::ClientConfig::new());
//! ```
//!
//! And one role's config does not fit the other's entry point:
//!
//! ```compile_fail
//! # async fn f() -> qymux::Result<()> {
//! // error: listen takes a ServerConfig
//! let config = qymux::ClientConfig::new("tunnel.example.com:4433");
//! let listener = qymux::Qymux::listen("0.0.0.0:4433", config).await?;
//! # Ok(()) }
//! ```
//!
//! The same with everything a role requires compiles:
//!
//! ```no_run
//! # async fn f(tls: qymux::tls::ServerTls) -> qymux::Result<()> {
//! let listener = qymux::Qymux::listen("0.0.0.0:4433", qymux::ServerConfig::new(tls)).await?;
//! let agent = qymux::Qymux::new(qymux::ClientConfig::new("tunnel.example.com:4433"));
//! # Ok(()) }
//! ```

use std::time::Duration;

use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Mode, Options, Proxy};

/// What [`Qymux::listen`](crate::Qymux::listen) needs: the server's certificate and key
/// (required), the mode, and the shared timeouts and limits.
///
/// Defaults: [`Mode::Auto`] (UDP and TCP on the same port); [`Options::default`].
///
/// ```
/// use std::time::Duration;
/// use qymux::{Mode, ServerConfig};
/// use qymux::cert::CertificateAuthority;
/// use qymux::tls::ServerTls;
///
/// let ca = CertificateAuthority::new("Example CA")?;
/// let mut config = ServerConfig::new(ServerTls::new(ca.issue_server(&["localhost"])?));
/// config.mode(Mode::Auto).idle_timeout(Duration::from_secs(60));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) mode: Mode,
    pub(crate) tls: ServerTls,
    pub(crate) options: Options,
}

impl ServerConfig {
    /// A server presenting `tls` (its certificate and key, and the client CA for mTLS),
    /// with the defaults otherwise.
    pub fn new(tls: ServerTls) -> Self {
        Self {
            mode: Mode::default(),
            tls,
            options: Options::default(),
        }
    }

    /// Which transports to listen on: [`Mode::Auto`] (default: UDP and TCP on the same
    /// port), [`Mode::Quic`] or [`Mode::Tcp`].
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.mode = mode;
        self
    }

    /// The listener's certificate and key, and the client CA for mTLS (replaces what
    /// [`ServerConfig::new`] was given).
    pub fn tls(&mut self, tls: ServerTls) -> &mut Self {
        self.tls = tls;
        self
    }

    /// All timeouts, keep-alive and limits at once.
    pub fn options(&mut self, options: Options) -> &mut Self {
        self.options = options;
        self
    }

    /// The keep-alive interval (`None` disables keep-alive probes); see
    /// [`Options::keep_alive_interval`].
    pub fn keep_alive(&mut self, interval: impl Into<Option<Duration>>) -> &mut Self {
        self.options.keep_alive_interval(interval.into());
        self
    }

    /// The dead-peer timeout: a session that hears nothing for this long fails.
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.idle_timeout(timeout);
        self
    }

    /// The bound on the TLS / QUIC handshake.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.handshake_timeout(timeout);
        self
    }

    /// The maximum number of concurrent streams per session.
    pub fn max_streams(&mut self, max: usize) -> &mut Self {
        self.options.max_streams(max);
        self
    }

    /// The most sessions the listener holds at once (`None`: no cap); see
    /// [`Options::max_sessions`].
    pub fn max_sessions(&mut self, max: impl Into<Option<usize>>) -> &mut Self {
        self.options.max_sessions(max);
        self
    }

    /// The mode set by [`ServerConfig::mode`].
    pub fn mode_value(&self) -> Mode {
        self.mode
    }

    /// The TLS set by [`ServerConfig::new`] or [`ServerConfig::tls`].
    pub fn tls_value(&self) -> &ServerTls {
        &self.tls
    }

    /// The timeouts, keep-alive and limits.
    pub fn options_value(&self) -> &Options {
        &self.options
    }
}

/// What [`Qymux::new`](crate::Qymux::new) needs to dial: the server's address
/// (required), how to verify it, the mode, and the shared timeouts and limits.
///
/// Defaults: [`Mode::Auto`]; the server verified against the system's root store for
/// the host of its address (set a CA, or a pinned fingerprint, with
/// [`ClientConfig::client_tls`], and another name with [`ClientConfig::server_name`]);
/// [`Options::default`].
///
/// ```
/// use std::time::Duration;
/// use qymux::{ClientConfig, Mode};
/// use qymux::tls::ClientTls;
///
/// let mut config = ClientConfig::new("tunnel.example.com:9090");
/// config
///     .mode(Mode::Auto)
///     .client_tls(ClientTls::with_webpki_roots())
///     .keep_alive(Duration::from_secs(15))
///     .connect_timeout(Duration::from_secs(5));
/// assert_eq!(config.server_name_or_host(), "tunnel.example.com");
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) mode: Mode,
    pub(crate) server_addr: String,
    pub(crate) more_server_addrs: Vec<String>,
    pub(crate) server_name: Option<String>,
    /// `None`: the system roots (feature `native-roots`), resolved when dialing.
    pub(crate) client_tls: Option<ClientTls>,
    pub(crate) options: Options,
}

impl ClientConfig {
    /// Dials `server_addr` (`host:port`, the same port for UDP and TCP), with the
    /// defaults otherwise.
    pub fn new(server_addr: impl Into<String>) -> Self {
        Self {
            mode: Mode::default(),
            server_addr: server_addr.into(),
            more_server_addrs: Vec::new(),
            server_name: None,
            client_tls: None,
            options: Options::default(),
        }
    }

    /// Which transports to use: [`Mode::Auto`] (default), [`Mode::Quic`] or [`Mode::Tcp`].
    pub fn mode(&mut self, mode: Mode) -> &mut Self {
        self.mode = mode;
        self
    }

    /// The server to dial (replaces what [`ClientConfig::new`] was given).
    pub fn server_addr(&mut self, addr: impl Into<String>) -> &mut Self {
        self.server_addr = addr.into();
        self
    }

    /// More servers to dial, in order, after the one of [`ClientConfig::new`] (what
    /// [`Qymux::dial`](crate::Qymux::dial) dials): a
    /// [`Qymux::connect_forever`](crate::Qymux::connect_forever) session moves on to the
    /// next one, round robin, when a dial fails or its session is lost. Without a
    /// [`ClientConfig::server_name`], each server's certificate is checked against the
    /// host of its own address. Replaces the servers set before; an empty list leaves
    /// only the first.
    pub fn more_server_addrs<I>(&mut self, addrs: I) -> &mut Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.more_server_addrs = addrs.into_iter().map(Into::into).collect();
        self
    }

    /// The name the server's certificate must be valid for; by default the host part of
    /// the server's address.
    pub fn server_name(&mut self, name: impl Into<String>) -> &mut Self {
        self.server_name = Some(name.into());
        self
    }

    /// How the dialer verifies the server, and its client certificate for mTLS. Default:
    /// the system's root store (`ClientTls::with_system_roots`, feature `native-roots`);
    /// without that feature, dialing without this set fails with [`Error::Config`](crate::Error::Config).
    pub fn client_tls(&mut self, tls: ClientTls) -> &mut Self {
        self.client_tls = Some(tls);
        self
    }

    /// All timeouts, keep-alive and limits at once.
    pub fn options(&mut self, options: Options) -> &mut Self {
        self.options = options;
        self
    }

    /// The keep-alive interval (`None` disables keep-alive probes); see
    /// [`Options::keep_alive_interval`].
    pub fn keep_alive(&mut self, interval: impl Into<Option<Duration>>) -> &mut Self {
        self.options.keep_alive_interval(interval.into());
        self
    }

    /// The dead-peer timeout: a session that hears nothing for this long fails.
    pub fn idle_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.idle_timeout(timeout);
        self
    }

    /// The bound on establishing the transport connection.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.connect_timeout(timeout);
        self
    }

    /// The bound on the TLS / QUIC handshake.
    pub fn handshake_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.options.handshake_timeout(timeout);
        self
    }

    /// The maximum number of concurrent streams per session.
    pub fn max_streams(&mut self, max: usize) -> &mut Self {
        self.options.max_streams(max);
        self
    }

    /// The HTTP CONNECT or SOCKS5 proxy the agent's TCP connections go through (`None`,
    /// the default: direct). With a proxy, [`Mode::Auto`] dials TCP through it and does
    /// not try QUIC, unless [`Proxy::allow_direct_quic`] lets QUIC go straight to the
    /// server; [`Mode::Quic`] is then a configuration error. The environment is read only
    /// when asked: `.proxy(Proxy::from_env()?)` honours `HTTPS_PROXY`, `ALL_PROXY` and
    /// `NO_PROXY`. See [`transport::proxy`](crate::transport::proxy).
    ///
    /// ```
    /// use qymux::{ClientConfig, Mode, Proxy};
    ///
    /// let mut config = ClientConfig::new("tunnel.example.com:443");
    /// config
    ///     .mode(Mode::Auto)
    ///     .proxy(Proxy::parse("http://agent:s3cret@proxy.corp.example:3128")?);
    /// # Ok::<(), qymux::transport::proxy::InvalidProxy>(())
    /// ```
    pub fn proxy(&mut self, proxy: impl Into<Option<Proxy>>) -> &mut Self {
        self.options.proxy(proxy);
        self
    }

    /// The mode set by [`ClientConfig::mode`].
    pub fn mode_value(&self) -> Mode {
        self.mode
    }

    /// Every server address: the one of [`ClientConfig::new`] first, then
    /// [`ClientConfig::more_server_addrs`].
    pub fn server_addrs(&self) -> Vec<&str> {
        std::iter::once(&self.server_addr)
            .chain(&self.more_server_addrs)
            .map(String::as_str)
            .collect()
    }

    /// The server name the dialer checks: [`ClientConfig::server_name`], or the host of
    /// the (first) server address.
    pub fn server_name_or_host(&self) -> &str {
        self.server_name_for(&self.server_addr)
    }

    /// The TLS set by [`ClientConfig::client_tls`]; `None` if it was not set (dialing
    /// then trusts the system roots, with the `native-roots` feature).
    pub fn client_tls_value(&self) -> Option<&ClientTls> {
        self.client_tls.as_ref()
    }

    /// The timeouts, keep-alive and limits.
    pub fn options_value(&self) -> &Options {
        &self.options
    }

    /// The server name to check when dialing `addr`.
    pub(crate) fn server_name_for<'a>(&'a self, addr: &'a str) -> &'a str {
        self.server_name.as_deref().unwrap_or_else(|| host_of(addr))
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn several_servers() {
        let mut c = super::ClientConfig::new("a.example:1");
        c.more_server_addrs(["b.example:2"]);
        assert_eq!(c.server_addrs(), ["a.example:1", "b.example:2"]);
        assert_eq!(c.server_name_or_host(), "a.example");
        assert_eq!(c.server_name_for("b.example:2"), "b.example");
        c.server_name("tunnel.example");
        assert_eq!(c.server_name_for("b.example:2"), "tunnel.example");
        c.more_server_addrs(Vec::<String>::new());
        assert_eq!(c.server_addrs(), ["a.example:1"]);
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("example.com:9090"), "example.com");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9090"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
