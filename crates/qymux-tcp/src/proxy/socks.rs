//! SOCKS5 (RFC 1928) with username/password (RFC 1929), by `tokio-socks`: its messages
//! have fixed sizes (at most 513 bytes), so a proxy cannot make it buffer more.

use qymux_transport::Proxy;
use qymux_transport::proxy::{ProxyError, SocksReply};
use tokio::net::TcpStream;
use tokio_socks::Error as Socks;
use tokio_socks::tcp::Socks5Stream;

use super::io_error;

/// Asks the SOCKS5 proxy on `tcp` to connect to `host:port`; a host name is sent as it
/// is (address type 3), for the proxy to resolve.
pub(super) async fn connect(
    tcp: TcpStream,
    proxy: &Proxy,
    host: &str,
    port: u16,
) -> Result<TcpStream, ProxyError> {
    let target = (host, port);
    let result = match proxy.credentials() {
        Some(c) => {
            Socks5Stream::connect_with_password_and_socket(
                tcp,
                target,
                c.username(),
                c.expose_password(),
            )
            .await
        }
        None => Socks5Stream::connect_with_socket(tcp, target).await,
    };
    result
        .map(Socks5Stream::into_inner)
        .map_err(|e| error(e, proxy.credentials().is_some()))
}

fn error(e: Socks, have_credentials: bool) -> ProxyError {
    let reply = |r| ProxyError::Socks(r);
    match e {
        Socks::Io(e) => io_error(e),
        Socks::NoAcceptableAuthMethods => ProxyError::AuthenticationRefused(if have_credentials {
            "SOCKS5: the proxy accepts neither no authentication nor username/password".into()
        } else {
            "SOCKS5: the proxy requires authentication and no credentials are configured".into()
        }),
        Socks::AuthorizationRequired => ProxyError::AuthenticationRefused(
            "SOCKS5: the proxy requires username/password and no credentials are configured".into(),
        ),
        Socks::PasswordAuthFailure(status) => ProxyError::AuthenticationRefused(format!(
            "SOCKS5: username/password refused (status {status})"
        )),
        Socks::GeneralSocksServerFailure => reply(SocksReply::GeneralFailure),
        Socks::ConnectionNotAllowedByRuleset => reply(SocksReply::NotAllowed),
        Socks::NetworkUnreachable => reply(SocksReply::NetworkUnreachable),
        Socks::HostUnreachable => reply(SocksReply::HostUnreachable),
        Socks::ConnectionRefused => reply(SocksReply::ConnectionRefused),
        Socks::TtlExpired => reply(SocksReply::TtlExpired),
        Socks::CommandNotSupported => reply(SocksReply::CommandNotSupported),
        Socks::AddressTypeNotSupported => reply(SocksReply::AddressTypeNotSupported),
        // tokio-socks reports an unknown reply code as an unknown method too.
        Socks::UnknownAuthMethod => {
            ProxyError::Malformed("SOCKS5: an unknown authentication method or reply code".into())
        }
        other => ProxyError::Malformed(format!("SOCKS5: {other}")),
    }
}
