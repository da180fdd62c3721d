//! One configuration for dialing and listening.

use std::time::Duration;

use qymux_tls::{ClientTls, ServerTls};
use qymux_transport::{Mode, Options, Proxy};

/// Everything a [`Qymux`](crate::Qymux) needs: the mode, the server's address, TLS for
/// either side, and the shared timeouts and limits.
///
/// Defaults: [`Mode::Auto`]; the server verified against the system's root store (set a
/// CA, or a pinned fingerprint, with [`Config::client_tls`]); [`Options::default`].
///
/// ```
/// use std::time::Duration;
/// use qymux::{Config, Mode};
/// use qymux::tls::ClientTls;
///
/// let config = Config::new()
///     .mode(Mode::Auto)
///     .server_addr("tunnel.example.com:9090")
///     .client_tls(ClientTls::with_webpki_roots())
///     .keep_alive(Duration::from_secs(15))
///     .connect_timeout(Duration::from_secs(5));
/// assert_eq!(config.server_name_or_host(), Some("tunnel.example.com"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub(crate) mode: Mode,
    pub(crate) server_addr: Option<String>,
    pub(crate) more_server_addrs: Vec<String>,
    pub(crate) server_name: Option<String>,
    pub(crate) client_tls: Option<ClientTls>,
    pub(crate) server_tls: Option<ServerTls>,
    pub(crate) options: Options,
}

impl Config {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Which transports to use: [`Mode::Auto`] (default), [`Mode::Quic`] or [`Mode::Tcp`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The server to dial: `host:port` (the same port for UDP and TCP).
    pub fn server_addr(mut self, addr: impl Into<String>) -> Self {
        self.server_addr = Some(addr.into());
        self
    }

    /// Several servers to dial, in order: the first is [`Config::server_addr`] (what
    /// [`Qymux::dial`](crate::Qymux::dial) dials); a
    /// [`Qymux::connect_forever`](crate::Qymux::connect_forever) session moves on to the
    /// next one, round robin, when a dial fails or its session is lost. Without a
    /// [`Config::server_name`], each server's certificate is checked against the host of
    /// its own address. An empty list clears the servers.
    pub fn server_addrs<I>(mut self, addrs: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut addrs = addrs.into_iter().map(Into::into);
        self.server_addr = addrs.next();
        self.more_server_addrs = addrs.collect();
        self
    }

    /// Every server address, [`Config::server_addr`] first.
    pub fn get_server_addrs(&self) -> Vec<&str> {
        self.server_addr
            .iter()
            .chain(&self.more_server_addrs)
            .map(String::as_str)
            .collect()
    }

    /// The name the server's certificate must be valid for; by default the host part of
    /// [`Config::server_addr`].
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// How the dialer verifies the server, and its client certificate for mTLS.
    pub fn client_tls(mut self, tls: ClientTls) -> Self {
        self.client_tls = Some(tls);
        self
    }

    /// The listener's certificate and key, and the client CA for mTLS.
    pub fn server_tls(mut self, tls: ServerTls) -> Self {
        self.server_tls = Some(tls);
        self
    }

    /// All timeouts, keep-alive and limits at once.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The keep-alive interval (`None` disables keep-alive probes).
    pub fn keep_alive(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.options.keep_alive_interval(interval.into());
        self
    }

    /// The dead-peer timeout: a session that hears nothing for this long fails.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.options.idle_timeout(timeout);
        self
    }

    /// The bound on establishing the transport connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.options.connect_timeout(timeout);
        self
    }

    /// The bound on the TLS / QUIC handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.options.handshake_timeout(timeout);
        self
    }

    /// The maximum number of concurrent streams per session.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.options.max_streams(max);
        self
    }

    /// The most sessions a listener holds at once; see [`Options::max_sessions`].
    pub fn max_sessions(mut self, max: usize) -> Self {
        self.options.max_sessions(max);
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
    /// use qymux::{Config, Mode, Proxy};
    ///
    /// let config = Config::new()
    ///     .mode(Mode::Auto)
    ///     .server_addr("tunnel.example.com:443")
    ///     .proxy(Proxy::parse("http://agent:s3cret@proxy.corp.example:3128")?);
    /// # Ok::<(), qymux::transport::proxy::InvalidProxy>(())
    /// ```
    pub fn proxy(mut self, proxy: impl Into<Option<Proxy>>) -> Self {
        self.options.proxy(proxy);
        self
    }

    /// The server name the dialer checks: [`Config::server_name`], or the host of
    /// [`Config::server_addr`].
    pub fn server_name_or_host(&self) -> Option<&str> {
        self.server_name.as_deref().or_else(|| {
            let addr = self.server_addr.as_deref()?;
            Some(host_of(addr))
        })
    }

    /// The timeouts, keep-alive and limits.
    pub fn get_options(&self) -> &Options {
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
        let c = super::Config::new().server_addrs(["a.example:1", "b.example:2"]);
        assert_eq!(c.get_server_addrs(), ["a.example:1", "b.example:2"]);
        assert_eq!(c.server_name_or_host(), Some("a.example"));
        assert_eq!(c.server_name_for("b.example:2"), "b.example");
        let c = c.server_name("tunnel.example");
        assert_eq!(c.server_name_for("b.example:2"), "tunnel.example");
        let c = c.server_addrs(Vec::<String>::new());
        assert!(c.get_server_addrs().is_empty());
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("example.com:9090"), "example.com");
        assert_eq!(host_of("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9090"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }
}
