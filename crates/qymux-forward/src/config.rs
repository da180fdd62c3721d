//! Where forwarded connections go, and the settings every forwarder shares.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use qymux_transport::Error;
use tokio::net::TcpStream;

/// The TCP address a forwarder connects to: a socket address, or a `host:port` that is
/// resolved again for every connection (so a name that moves is followed).
///
/// ```
/// use qymux_forward::Target;
///
/// let ip: Target = "127.0.0.1:8080".parse()?;
/// assert!(matches!(ip, Target::Addr(_)));
/// let name: Target = "localhost:8080".parse()?;
/// assert_eq!(name.to_string(), "localhost:8080");
/// assert!("localhost".parse::<Target>().is_err()); // no port
/// # Ok::<(), qymux_transport::Error>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IP address and port.
    Addr(SocketAddr),
    /// A `host:port` (or `[v6]:port`) resolved at each connection.
    HostPort(String),
}

impl Target {
    /// Connects to the target within `timeout`, with `TCP_NODELAY` set.
    pub(crate) async fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let connecting = async {
            match self {
                Target::Addr(addr) => TcpStream::connect(*addr).await,
                Target::HostPort(host) => TcpStream::connect(host.as_str()).await,
            }
        };
        let stream = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )
            })??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        Target::Addr(addr)
    }
}

/// A socket address becomes [`Target::Addr`]; anything else [`Target::HostPort`],
/// checked only when connecting (use [`str::parse`] to check it up front).
impl From<&str> for Target {
    fn from(text: &str) -> Self {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Target::Addr(addr),
            Err(_) => Target::HostPort(text.to_owned()),
        }
    }
}

impl From<String> for Target {
    fn from(text: String) -> Self {
        match text.parse::<SocketAddr>() {
            Ok(addr) => Target::Addr(addr),
            Err(_) => Target::HostPort(text),
        }
    }
}

impl From<&String> for Target {
    fn from(text: &String) -> Self {
        Target::from(text.as_str())
    }
}

/// Parses `ip:port`, `[v6]:port` or `host:port`; fails with [`Error::Config`] without a
/// valid port or host.
impl FromStr for Target {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let invalid = |why: &str| Error::Config(format!("target {text:?}: {why}"));
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected host:port"))?;
        port.parse::<u16>()
            .map_err(|_| invalid("the port must be a number from 0 to 65535"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(invalid("expected host:port"));
        }
        if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
            return Err(invalid("write an IPv6 address as [addr]:port"));
        }
        Ok(Target::HostPort(text.to_owned()))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(addr) => addr.fmt(f),
            Target::HostPort(host) => f.write_str(host),
        }
    }
}

/// Settings shared by every forwarder: a cap on concurrent connections, the bound on
/// connecting to the target, and the copy buffer size.
///
/// ```
/// use std::time::Duration;
/// use qymux_forward::ForwardConfig;
///
/// let mut config = ForwardConfig::default();
/// config
///     .max_connections(Some(256))
///     .connect_timeout(Duration::from_secs(5));
/// assert_eq!(config.max_connections_value(), Some(256));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    max_connections: Option<usize>,
    connect_timeout: Duration,
    buffer_size: usize,
}

impl Default for ForwardConfig {
    /// At most 1024 connections at once, 10 s to connect to the target, 64 KiB buffers.
    fn default() -> Self {
        Self {
            max_connections: Some(1024),
            connect_timeout: Duration::from_secs(10),
            buffer_size: 64 * 1024,
        }
    }
}

impl ForwardConfig {
    /// The defaults (see [`ForwardConfig::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// The most connections forwarded at once (`None`: no cap). One more is refused at
    /// once, not queued: a stream beyond the cap is aborted (its opener reads
    /// [`Error::StreamReset`]), a TCP connection beyond it is reset. Each refusal is
    /// logged and counted in [`Stats::refused`](crate::Stats::refused).
    pub fn max_connections(&mut self, max: Option<usize>) -> &mut Self {
        self.max_connections = max;
        self
    }

    /// The bound on connecting to the target (DNS included); after it the stream is
    /// aborted.
    pub fn connect_timeout(&mut self, timeout: Duration) -> &mut Self {
        self.connect_timeout = timeout;
        self
    }

    /// The size of each of the two copy buffers a connection holds (at least 1 KiB).
    pub fn buffer_size(&mut self, bytes: usize) -> &mut Self {
        self.buffer_size = bytes.max(1024);
        self
    }

    /// The value [`ForwardConfig::max_connections`] set.
    pub fn max_connections_value(&self) -> Option<usize> {
        self.max_connections
    }

    /// The value [`ForwardConfig::connect_timeout`] set.
    pub fn connect_timeout_value(&self) -> Duration {
        self.connect_timeout
    }

    /// The value [`ForwardConfig::buffer_size`] set.
    pub fn buffer_size_value(&self) -> usize {
        self.buffer_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            "127.0.0.1:80".parse::<Target>().unwrap(),
            Target::Addr("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "[::1]:80".parse::<Target>().unwrap(),
            Target::Addr("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            "example.com:443".parse::<Target>().unwrap(),
            Target::HostPort("example.com:443".into())
        );
        for bad in [
            "example.com",
            ":80",
            "example.com:http",
            "::1:80",
            "a b:1",
            "h:70000",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?}");
        }
        assert_eq!(Target::from("localhost:1").to_string(), "localhost:1");
    }

    #[test]
    fn buffer_size_has_a_floor() {
        let mut c = ForwardConfig::new();
        c.buffer_size(1);
        assert_eq!(c.buffer_size_value(), 1024);
    }
}
