//! Agents behind proxies: the TCP transport reaches the server through an HTTP CONNECT
//! or a SOCKS5 proxy.
//!
//! Networks that block UDP often let nothing out but an HTTP proxy. With
//! [`Options::proxy`](crate::Options::proxy) set, the TCP backend opens its connection
//! through the proxy (an HTTP `CONNECT`, or a SOCKS5 `CONNECT` with the server's host
//! *name*, so the proxy resolves it), then runs TLS and yamux end to end as always: the
//! proxy sees only the server's name and encrypted bytes.
//!
//! - [`Proxy::parse`]: `http://[user:password@]host:port` or
//!   `socks5://[user:password@]host:port` (`socks5h://` is the same: the proxy always
//!   resolves the name). Credentials in a URL are percent-decoded; or set them with
//!   [`Proxy::with_credentials`].
//! - [`Proxy::from_env`]: only when asked, from `HTTPS_PROXY` or `ALL_PROXY` (and
//!   `NO_PROXY`); nothing reads the environment on its own.
//! - A proxy carries TCP only. In `Mode::Auto` a dialer with a proxy dials TCP through
//!   it and does not try QUIC (an operator who configured a proxy expects every
//!   connection to go through it, and UDP is usually blocked there anyway), unless
//!   [`Proxy::allow_direct_quic`] says QUIC may go straight to the server. `Mode::Quic`
//!   with a proxy is a configuration error unless the same is allowed.
//! - Credentials never appear in `Debug`, `Display` or logs.
//! - Failures are [`Error::Proxy`](crate::Error::Proxy) with a [`ProxyError`] that says
//!   what the proxy answered (the HTTP status line, the SOCKS5 reply code).
//!
//! ```
//! use qymux_transport::{Options, Proxy};
//!
//! let proxy: Proxy = "http://agent:s3cret@proxy.corp.example:3128".parse()?;
//! assert_eq!(proxy.to_string(), "http://***@proxy.corp.example:3128"); // redacted
//! let mut options = Options::default();
//! options.proxy(proxy);
//! options.validate()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// The kind of proxy.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// An HTTP proxy: the tunnel is opened with `CONNECT host:port`, with
    /// `Proxy-Authorization: Basic` when there are credentials.
    Http,
    /// A SOCKS5 proxy (RFC 1928), with username/password authentication (RFC 1929) when
    /// there are credentials. The server's host name is sent as it is, for the proxy to
    /// resolve.
    Socks5,
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
        })
    }
}

/// A user name and password for a proxy. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyCredentials {
    username: String,
    password: String,
}

impl ProxyCredentials {
    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password.
    pub fn expose_password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for ProxyCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyCredentials(<redacted>)")
    }
}

/// A proxy the TCP transport dials through; see the [module docs](self).
///
/// `Display` gives the URL with any credentials replaced by `***`; `Debug` shows no
/// credentials either.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    host: String,
    port: u16,
    credentials: Option<ProxyCredentials>,
    no_proxy: NoProxy,
    direct_quic: bool,
}

impl Proxy {
    /// Parses `http://[user:password@]host:port` or `socks5://[user:password@]host:port`
    /// (`socks5h://` alike; without a scheme, HTTP). The port is required; an IPv6
    /// address goes in brackets. Percent-encode `@`, `:` or `/` in credentials.
    pub fn parse(url: &str) -> Result<Proxy, InvalidProxy> {
        let url = url.trim();
        if url.is_empty() {
            return Err(InvalidProxy::MissingHost);
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("http".to_owned(), url),
        };
        let kind = match scheme.as_str() {
            "http" => ProxyKind::Http,
            "socks5" | "socks5h" => ProxyKind::Socks5,
            _ => return Err(InvalidProxy::UnsupportedScheme(printable(&scheme))),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if !(tail.is_empty() || tail == "/") {
            return Err(InvalidProxy::UnexpectedPath);
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (host, port) = parse_host_port(hostport)?;
        let credentials = match userinfo {
            None => None,
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                Some(ProxyCredentials {
                    username: percent_decode(user)?,
                    password: percent_decode(password)?,
                })
            }
        };
        let proxy = Proxy {
            kind,
            host,
            port,
            credentials,
            no_proxy: NoProxy::default(),
            direct_quic: false,
        };
        proxy.validate()?;
        Ok(proxy)
    }

    /// The proxy from the environment, for programs that want to honour it (Qymux never
    /// reads the environment on its own): the first non-empty of `https_proxy`,
    /// `HTTPS_PROXY`, `all_proxy` and `ALL_PROXY`, with the hosts of `no_proxy` /
    /// `NO_PROXY` reached directly ([`Proxy::no_proxy`]). `HTTP_PROXY` is not read: it
    /// is for plain `http://` URLs, and a Qymux session is TLS.
    ///
    /// `Ok(None)` when no proxy is set; an error names the variable whose value does not
    /// parse (without the value, which may hold a password).
    pub fn from_env() -> Result<Option<Proxy>, InvalidProxy> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<Proxy>, InvalidProxy> {
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let found = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
            .into_iter()
            .find_map(|var| set(var).map(|value| (var, value)));
        let Some((var, value)) = found else {
            return Ok(None);
        };
        let proxy = Proxy::parse(&value).map_err(|error| InvalidProxy::Env {
            var: var.to_owned(),
            error: Box::new(error),
        })?;
        let no_proxy = set("no_proxy").or_else(|| set("NO_PROXY"));
        Ok(Some(match no_proxy {
            Some(list) => proxy.no_proxy(&list),
            None => proxy,
        }))
    }

    /// Sets the user name and password (replacing any from the URL). For SOCKS5 both
    /// must be 1 to 255 bytes; for HTTP the user name cannot contain `:` (checked by
    /// [`Options::validate`](crate::Options::validate)).
    pub fn with_credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some(ProxyCredentials {
            username: username.into(),
            password: password.into(),
        });
        self
    }

    /// Hosts reached directly, not through the proxy: a comma- or space-separated list
    /// in the `NO_PROXY` style. `*` matches every host; `example.com` (or
    /// `.example.com`) matches it and its subdomains; an IP address matches itself and
    /// `10.0.0.0/8` a network. A `:port` on an entry is ignored. Replaces any earlier
    /// list.
    pub fn no_proxy(mut self, list: &str) -> Self {
        self.no_proxy = NoProxy::parse(list);
        self
    }

    /// Whether, in `Mode::Auto`, QUIC may go straight to the server (over UDP, not
    /// through the proxy) beside TCP through the proxy; likewise `Mode::Quic` dials
    /// directly. Off by default: with a proxy configured every connection goes through
    /// it, and no UDP leaves the machine.
    pub fn allow_direct_quic(mut self, allow: bool) -> Self {
        self.direct_quic = allow;
        self
    }

    /// The kind of proxy.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The proxy's `host:port` (`[v6]:port`), to connect to.
    pub fn addr(&self) -> String {
        join_host_port(&self.host, self.port)
    }

    /// The credentials, if any.
    pub fn credentials(&self) -> Option<&ProxyCredentials> {
        self.credentials.as_ref()
    }

    /// Whether QUIC may go straight to the server ([`Proxy::allow_direct_quic`]).
    pub fn allows_direct_quic(&self) -> bool {
        self.direct_quic
    }

    /// Whether a dial to `target` (`host:port`) goes through this proxy: false when the
    /// host matches the [`no_proxy`](Proxy::no_proxy) list.
    pub fn applies_to(&self, target: &str) -> bool {
        match split_host_port(target) {
            Some((host, _)) => !self.no_proxy.matches(host),
            None => !self.no_proxy.matches(target),
        }
    }

    /// Checks what the wire formats require of the credentials.
    pub fn validate(&self) -> Result<(), InvalidProxy> {
        let Some(c) = &self.credentials else {
            return Ok(());
        };
        if c.username.is_empty() {
            return Err(InvalidProxy::InvalidCredentials("the user name is empty"));
        }
        match self.kind {
            ProxyKind::Http if c.username.contains(':') => Err(InvalidProxy::InvalidCredentials(
                "an HTTP Basic user name cannot contain ':'",
            )),
            ProxyKind::Socks5 if c.username.len() > 255 || c.password.len() > 255 => {
                Err(InvalidProxy::InvalidCredentials(
                    "SOCKS5 user names and passwords are at most 255 bytes",
                ))
            }
            ProxyKind::Socks5 if c.password.is_empty() => Err(InvalidProxy::InvalidCredentials(
                "SOCKS5 passwords are 1 to 255 bytes (RFC 1929)",
            )),
            _ => Ok(()),
        }
    }
}

impl FromStr for Proxy {
    type Err = InvalidProxy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Proxy::parse(s)
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = if self.credentials.is_some() {
            "***@"
        } else {
            ""
        };
        write!(f, "{}://{redacted}{}", self.kind, self.addr())
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("kind", &self.kind)
            .field("addr", &self.addr())
            .field("credentials", &self.credentials)
            .field("no_proxy", &self.no_proxy)
            .field("direct_quic", &self.direct_quic)
            .finish()
    }
}

/// Why a proxy setting was refused.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidProxy {
    /// A scheme other than `http`, `socks5` or `socks5h`.
    #[error("unsupported proxy scheme {0:?}: use http:// or socks5://")]
    UnsupportedScheme(String),
    /// No host.
    #[error("the proxy URL has no host")]
    MissingHost,
    /// A host that is not a name or an IP address.
    #[error("the proxy host {0:?} is not a host name or an IP address")]
    InvalidHost(String),
    /// No port.
    #[error("the proxy URL has no port (write host:port)")]
    MissingPort,
    /// A port that is not a number from 1 to 65535.
    #[error("the proxy port {0:?} is not a number from 1 to 65535")]
    InvalidPort(String),
    /// A path, query or fragment after the address.
    #[error("a proxy URL has no path, query or fragment (percent-encode '/' in credentials)")]
    UnexpectedPath,
    /// A `%` not followed by two hex digits, or credentials that do not decode to UTF-8.
    #[error("the proxy credentials are not correctly percent-encoded UTF-8")]
    InvalidPercentEncoding,
    /// Credentials the proxy's protocol cannot carry.
    #[error("invalid proxy credentials: {0}")]
    InvalidCredentials(&'static str),
    /// The proxy named by an environment variable does not parse.
    #[error("the proxy in ${var} is invalid")]
    Env {
        /// The variable.
        var: String,
        /// Why its value was refused.
        #[source]
        error: Box<InvalidProxy>,
    },
}

/// What went wrong opening a tunnel through a proxy: the `error` of
/// [`Error::Proxy`](crate::Error::Proxy).
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The proxy itself could not be reached.
    #[error("the proxy cannot be reached")]
    Unreachable(#[source] Arc<io::Error>),
    /// The proxy wants credentials, or refused the ones given: HTTP 407 (or 401), a
    /// SOCKS5 username/password failure, or no SOCKS5 method both sides accept. The text
    /// says what the proxy answered.
    #[error("the proxy refused the credentials: {0}")]
    AuthenticationRefused(String),
    /// An HTTP proxy answered `CONNECT` with a status other than 2xx (and other than
    /// the authentication ones): the target is not allowed, or cannot be reached.
    #[error("the proxy answered HTTP {status} {reason}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The reason phrase, as sent (control characters removed, at most 128 bytes).
        reason: String,
    },
    /// A SOCKS5 proxy answered the `CONNECT` with an error reply.
    #[error("the proxy answered SOCKS5 reply {0}")]
    Socks(SocksReply),
    /// The proxy's answer grew past the cap without ending.
    #[error("the proxy's answer exceeds {limit} bytes without ending")]
    ReplyTooLong {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The proxy's answer is not the protocol asked for.
    #[error("the proxy's answer is malformed: {0}")]
    Malformed(String),
    /// The connection to the proxy failed while it was being asked (for instance, it
    /// closed the connection before it answered).
    #[error("the connection to the proxy failed")]
    Io(#[source] Arc<io::Error>),
}

impl ProxyError {
    /// Whether asking the proxy again later may succeed: it could not be reached, the
    /// connection to it failed, or it could not reach the target (HTTP 5xx; SOCKS5
    /// general failure, network or host unreachable, refused, TTL expired). Refused
    /// credentials, a target the proxy does not allow, and answers that are not the
    /// protocol are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProxyError::Unreachable(_) | ProxyError::Io(_) => true,
            ProxyError::HttpStatus { status, .. } => *status >= 500,
            ProxyError::Socks(reply) => !matches!(
                reply,
                SocksReply::NotAllowed
                    | SocksReply::CommandNotSupported
                    | SocksReply::AddressTypeNotSupported
            ),
            ProxyError::AuthenticationRefused(_)
            | ProxyError::ReplyTooLong { .. }
            | ProxyError::Malformed(_) => false,
        }
    }

    /// The [`io::ErrorKind`] an [`Error::Proxy`](crate::Error::Proxy) converts to.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            ProxyError::Unreachable(e) | ProxyError::Io(e) => e.kind(),
            ProxyError::AuthenticationRefused(_) => io::ErrorKind::PermissionDenied,
            ProxyError::HttpStatus { status: 403, .. } => io::ErrorKind::PermissionDenied,
            ProxyError::HttpStatus { .. } => io::ErrorKind::ConnectionRefused,
            ProxyError::Socks(SocksReply::NotAllowed) => io::ErrorKind::PermissionDenied,
            ProxyError::Socks(SocksReply::NetworkUnreachable) => io::ErrorKind::NetworkUnreachable,
            ProxyError::Socks(SocksReply::HostUnreachable) => io::ErrorKind::HostUnreachable,
            ProxyError::Socks(_) => io::ErrorKind::ConnectionRefused,
            ProxyError::ReplyTooLong { .. } | ProxyError::Malformed(_) => {
                io::ErrorKind::InvalidData
            }
        }
    }
}

/// A SOCKS5 error reply (RFC 1928 section 6).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocksReply {
    /// 1: general SOCKS server failure.
    GeneralFailure,
    /// 2: connection not allowed by ruleset.
    NotAllowed,
    /// 3: network unreachable.
    NetworkUnreachable,
    /// 4: host unreachable.
    HostUnreachable,
    /// 5: connection refused (by the target).
    ConnectionRefused,
    /// 6: TTL expired.
    TtlExpired,
    /// 7: command not supported.
    CommandNotSupported,
    /// 8: address type not supported.
    AddressTypeNotSupported,
}

impl SocksReply {
    /// The reply code on the wire.
    pub fn code(self) -> u8 {
        match self {
            SocksReply::GeneralFailure => 1,
            SocksReply::NotAllowed => 2,
            SocksReply::NetworkUnreachable => 3,
            SocksReply::HostUnreachable => 4,
            SocksReply::ConnectionRefused => 5,
            SocksReply::TtlExpired => 6,
            SocksReply::CommandNotSupported => 7,
            SocksReply::AddressTypeNotSupported => 8,
        }
    }
}

impl fmt::Display for SocksReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            SocksReply::GeneralFailure => "general SOCKS server failure",
            SocksReply::NotAllowed => "connection not allowed by ruleset",
            SocksReply::NetworkUnreachable => "network unreachable",
            SocksReply::HostUnreachable => "host unreachable",
            SocksReply::ConnectionRefused => "connection refused",
            SocksReply::TtlExpired => "TTL expired",
            SocksReply::CommandNotSupported => "command not supported",
            SocksReply::AddressTypeNotSupported => "address type not supported",
        };
        write!(f, "{} ({text})", self.code())
    }
}

/// Splits `host:port` or `[v6]:port` into the host (without brackets) and the port.
pub fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = match addr.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            (host, after.strip_prefix(':')?)
        }
        None => {
            let (host, port) = addr.rsplit_once(':')?;
            if host.contains(':') {
                return None;
            }
            (host, port)
        }
    };
    Some((host, port.parse().ok()?))
}

/// Whether `host` can be put in a request as it is: an IP address, or a name of
/// letters, digits, `-`, `_` and `.` (no spaces, no line breaks, at most 255 bytes).
pub fn is_valid_host(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_host_port(hostport: &str) -> Result<(String, u16), InvalidProxy> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| InvalidProxy::InvalidHost(printable(hostport)))?;
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(InvalidProxy::InvalidHost(printable(host)));
        }
        (
            host,
            after.strip_prefix(':').ok_or(InvalidProxy::MissingPort)?,
        )
    } else {
        let (host, port) = hostport.rsplit_once(':').ok_or(InvalidProxy::MissingPort)?;
        if host.contains(':') {
            // An IPv6 address without brackets: its last group would pass for a port.
            return Err(InvalidProxy::InvalidHost(printable(hostport)));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(InvalidProxy::MissingHost);
    }
    if !is_valid_host(host) {
        return Err(InvalidProxy::InvalidHost(printable(host)));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok((host.to_owned(), port)),
        _ if port.is_empty() => Err(InvalidProxy::MissingPort),
        _ => Err(InvalidProxy::InvalidPort(printable(port))),
    }
}

fn percent_decode(s: &str) -> Result<String, InvalidProxy> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(InvalidProxy::InvalidPercentEncoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| InvalidProxy::InvalidPercentEncoding)?;
            out.push(
                u8::from_str_radix(hex, 16).map_err(|_| InvalidProxy::InvalidPercentEncoding)?,
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| InvalidProxy::InvalidPercentEncoding)
}

/// At most 64 characters of `s`, without control characters, for an error message.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The hosts reached without the proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NoProxy {
    all: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    /// A name, lower case, without a leading dot: matches it and its subdomains.
    Domain(String),
    /// An address and a prefix length.
    Net(IpAddr, u8),
}

impl NoProxy {
    fn parse(list: &str) -> NoProxy {
        let mut no_proxy = NoProxy::default();
        for entry in list
            .split([',', ' ', '\t'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if entry == "*" {
                no_proxy.all = true;
                continue;
            }
            if let Some((addr, bits)) = entry.split_once('/') {
                let addr = addr.trim_start_matches('[').trim_end_matches(']');
                if let (Ok(ip), Ok(bits)) = (addr.parse::<IpAddr>(), bits.parse::<u8>()) {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    no_proxy.entries.push(NoProxyEntry::Net(ip, bits.min(max)));
                }
                continue;
            }
            let host = match split_host_port(entry) {
                Some((host, _)) => host,
                None => entry.trim_start_matches('[').trim_end_matches(']'),
            };
            match host.parse::<IpAddr>() {
                Ok(ip) => {
                    let bits = if ip.is_ipv4() { 32 } else { 128 };
                    no_proxy.entries.push(NoProxyEntry::Net(ip, bits));
                }
                Err(_) => {
                    let name = host.trim_start_matches("*.").trim_start_matches('.');
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    if !name.is_empty() {
                        no_proxy.entries.push(NoProxyEntry::Domain(name));
                    }
                }
            }
        }
        no_proxy
    }

    fn matches(&self, host: &str) -> bool {
        if self.all {
            return true;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip = host.parse::<IpAddr>().ok();
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|entry| match (entry, ip) {
            (NoProxyEntry::Net(net, bits), Some(ip)) => in_network(ip, *net, *bits),
            (NoProxyEntry::Domain(domain), None) => {
                name == *domain
                    || name
                        .strip_suffix(domain.as_str())
                        .is_some_and(|prefix| prefix.ends_with('.'))
            }
            _ => false,
        })
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_socks5_with_and_without_credentials() {
        let p = Proxy::parse("http://proxy.example:3128").unwrap();
        assert_eq!(
            (p.kind(), p.host(), p.port()),
            (ProxyKind::Http, "proxy.example", 3128)
        );
        assert!(p.credentials().is_none());

        let p = Proxy::parse("socks5://al%40ice:p%3Ass@10.0.0.1:1080/").unwrap();
        assert_eq!(
            (p.kind(), p.host(), p.port()),
            (ProxyKind::Socks5, "10.0.0.1", 1080)
        );
        let c = p.credentials().unwrap();
        assert_eq!((c.username(), c.expose_password()), ("al@ice", "p:ss"));

        let p = Proxy::parse("SOCKS5H://[::1]:1080").unwrap();
        assert_eq!(
            (p.kind(), p.host(), p.addr()),
            (ProxyKind::Socks5, "::1", "[::1]:1080".into())
        );

        // Without a scheme, as HTTPS_PROXY values often are: HTTP.
        let p = Proxy::parse("proxy:8080").unwrap();
        assert_eq!(p.kind(), ProxyKind::Http);
        // A password with an unencoded '@': the last '@' ends the credentials.
        let p = Proxy::parse("http://u:a@b@proxy:8080").unwrap();
        assert_eq!(p.credentials().unwrap().expose_password(), "a@b");
    }

    #[test]
    fn refuses_what_it_cannot_use_with_typed_errors() {
        use InvalidProxy::*;
        let cases: &[(&str, InvalidProxy)] = &[
            ("https://proxy:443", UnsupportedScheme("https".into())),
            ("socks4://proxy:1080", UnsupportedScheme("socks4".into())),
            ("http://proxy", MissingPort),
            ("http://proxy:", MissingPort),
            ("http://:3128", MissingHost),
            ("", MissingHost),
            ("http://proxy:0", InvalidPort("0".into())),
            ("http://proxy:99999", InvalidPort("99999".into())),
            ("http://proxy:3128/path", UnexpectedPath),
            ("http://proxy:3128?x", UnexpectedPath),
            ("http://::1:3128", InvalidHost("::1:3128".into())),
            ("http://pro xy:3128", InvalidHost("pro xy".into())),
            ("http://pro\r\nxy:3128", InvalidHost("proxy".into())),
            ("http://u:%zz@proxy:3128", InvalidPercentEncoding),
            ("http://u:%ff@proxy:3128", InvalidPercentEncoding),
            (
                "http://:pw@proxy:3128",
                InvalidCredentials("the user name is empty"),
            ),
            (
                "http://a%3Ab:pw@proxy:3128",
                InvalidCredentials("an HTTP Basic user name cannot contain ':'"),
            ),
            (
                "socks5://user@proxy:1080",
                InvalidCredentials("SOCKS5 passwords are 1 to 255 bytes (RFC 1929)"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Proxy::parse(input).as_ref(), Err(expected), "{input:?}");
        }
        let long = "x".repeat(256);
        let p = Proxy::parse("socks5://proxy:1080")
            .unwrap()
            .with_credentials("u", long);
        assert!(matches!(
            p.validate(),
            Err(InvalidProxy::InvalidCredentials(_))
        ));
    }

    #[test]
    fn credentials_never_show() {
        let p = Proxy::parse("http://alice:hunter2@proxy:3128").unwrap();
        let shown = format!("{p} {p:?} {:?}", p.credentials());
        assert!(
            !shown.contains("alice") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(p.to_string(), "http://***@proxy:3128");
        let p = Proxy::parse("socks5://[::1]:1080").unwrap();
        assert_eq!(p.to_string(), "socks5://[::1]:1080");
        // Nor in the error for a variable that does not parse.
        let err = Proxy::from_lookup(|v| (v == "HTTPS_PROXY").then(|| "ftp://bob:pw@x:1".into()))
            .unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        assert!(err.to_string().contains("$HTTPS_PROXY"), "{err}");
    }

    #[test]
    fn environment_only_when_asked_and_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Proxy::from_lookup(env(&[])).unwrap(), None);
        assert_eq!(
            Proxy::from_lookup(env(&[("HTTP_PROXY", "http://p:1")])).unwrap(),
            None
        );
        let p = Proxy::from_lookup(env(&[
            ("ALL_PROXY", "socks5://all:1080"),
            ("HTTPS_PROXY", "http://https:3128"),
            ("https_proxy", ""),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.host(), "https");
        let p = Proxy::from_lookup(env(&[
            ("ALL_PROXY", "socks5://all:1080"),
            ("NO_PROXY", "internal.example, 10.0.0.0/8"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.kind(), ProxyKind::Socks5);
        assert!(!p.applies_to("git.internal.example:443"));
        assert!(!p.applies_to("10.1.2.3:443"));
        assert!(p.applies_to("tunnel.example.com:443"));
    }

    #[test]
    fn no_proxy_matching() {
        let p = Proxy::parse("http://p:1")
            .unwrap()
            .no_proxy(".corp.example,localhost:8080 192.168.0.0/16, ::1, [fd00::]/8");
        for direct in [
            "corp.example:1",
            "a.b.corp.example:1",
            "A.Corp.Example.:1",
            "localhost:9",
            "192.168.7.7:1",
            "[::1]:1",
            "[fd12::1]:1",
        ] {
            assert!(!p.applies_to(direct), "{direct}");
        }
        for proxied in [
            "notcorp.example:1",
            "example:1",
            "192.169.0.1:1",
            "[::2]:1",
            "10.0.0.1:1",
        ] {
            assert!(p.applies_to(proxied), "{proxied}");
        }
        assert!(
            !Proxy::parse("http://p:1")
                .unwrap()
                .no_proxy("*")
                .applies_to("x:1")
        );
        assert!(Proxy::parse("http://p:1").unwrap().applies_to("x:1"));
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.example:443"), Some(("a.example", 443)));
        assert_eq!(split_host_port("[::1]:443"), Some(("::1", 443)));
        assert_eq!(split_host_port("::1:443"), None);
        assert_eq!(split_host_port("a.example"), None);
        assert!(is_valid_host("a-b_c.example") && is_valid_host("::1"));
        assert!(!is_valid_host("a b") && !is_valid_host("a\r\nX: y") && !is_valid_host(""));
    }
}
