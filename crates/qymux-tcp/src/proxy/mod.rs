//! The TCP connection to the server through a proxy ([`Options::proxy`]): connect to
//! the proxy, then ask it for a tunnel (HTTP CONNECT or SOCKS5); TLS runs inside.
//!
//! Both steps together are bounded by [`Options::connect_timeout`]; what a proxy can
//! make us read is capped ([`http::MAX_REPLY`]; SOCKS5 replies have a fixed size).

pub(crate) mod http;
mod socks;

use std::sync::Arc;

use qymux_transport::proxy::{ProxyError, ProxyKind, is_valid_host, split_host_port};
use qymux_transport::{Error, Options, Proxy, Result, TimeoutKind};
use tokio::net::TcpStream;
use tracing::debug;

/// The proxy that applies to `target`, if any (none when `NO_PROXY` matches it).
pub(crate) fn for_target<'a>(options: &'a Options, target: &str) -> Option<&'a Proxy> {
    options.proxy_value().filter(|p| p.applies_to(target))
}

/// A TCP connection to `target` (`host:port`) through `proxy`, ready for TLS.
pub(crate) async fn connect(proxy: &Proxy, target: &str, options: &Options) -> Result<TcpStream> {
    let (host, port) = split_host_port(target)
        .filter(|(host, _)| is_valid_host(host))
        .ok_or_else(|| {
            Error::Config(format!(
                "cannot dial {target:?} through a proxy: expected host:port with a host name or IP address"
            ))
        })?;
    let fail = |error| Error::Proxy {
        proxy: proxy.to_string(),
        target: target.to_owned(),
        error,
    };
    debug!(%proxy, %target, "dialing through a proxy");
    let attempt = async {
        let mut tcp = match crate::dial::connect(&proxy.addr(), options).await {
            Ok(tcp) => tcp,
            Err(Error::Connect { source, .. }) => {
                return Err(fail(ProxyError::Unreachable(source)));
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!("TCP_NODELAY: {e}");
        }
        match proxy.kind() {
            ProxyKind::Socks5 => socks::connect(tcp, proxy, host, port).await.map_err(fail),
            _ => {
                http::connect(&mut tcp, proxy, host, port)
                    .await
                    .map_err(fail)?;
                Ok(tcp)
            }
        }
    };
    tokio::time::timeout(options.connect_timeout_value(), attempt)
        .await
        .map_err(|_| Error::Timeout {
            what: TimeoutKind::Connect,
            after: options.connect_timeout_value(),
        })?
}

fn io_error(e: std::io::Error) -> ProxyError {
    ProxyError::Io(Arc::new(e))
}
