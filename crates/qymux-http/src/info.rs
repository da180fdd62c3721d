//! What a handler knows about the session its request arrived on.

use std::net::SocketAddr;

use qymux_transport::{PeerIdentity, Protocol, Session};

/// What a handler knows about the session its request (or call) arrived on: the
/// transport, both addresses, and the peer's verified certificate chain.
///
/// Where it is found:
///
/// - [`serve`](crate::serve) (and so [`serve_proxy`](crate::serve_proxy)) puts it into
///   every request's extensions: `request.extensions().get::<SessionInfo>()`;
/// - with axum (feature `axum`), it is the connect info of
///   `qymux_http::axum::SessionListener`: serve
///   `router.into_make_service_with_connect_info::<SessionInfo>()` and extract
///   `ConnectInfo<SessionInfo>`;
/// - `qymux-grpc` puts it into every gRPC request's extensions (it is the same type);
/// - every [`SessionIo`](crate::SessionIo) carries it ([`SessionIo::info`](crate::SessionIo::info)).
///
/// ```
/// use qymux_http::SessionInfo;
///
/// fn caller<B>(request: &http::Request<B>) -> Option<String> {
///     let info = request.extensions().get::<SessionInfo>()?;
///     let mtls = if info.peer_identity.is_some() { "with" } else { "without" };
///     Some(format!("{} peer at {} {mtls} a certificate", info.protocol, info.remote_addr))
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The transport the session runs on.
    pub protocol: Protocol,
    /// The peer's socket address.
    pub remote_addr: SocketAddr,
    /// This side's socket address.
    pub local_addr: SocketAddr,
    /// The peer's verified certificate chain: on the listener's side only when the agent
    /// presented a client certificate (mTLS); on the dialer's side, the server's.
    pub peer_identity: Option<PeerIdentity>,
}

impl SessionInfo {
    /// Takes what `session` says about itself.
    pub fn of<S: Session>(session: &S) -> Self {
        SessionInfo {
            protocol: session.protocol(),
            remote_addr: session.remote_addr(),
            local_addr: session.local_addr(),
            peer_identity: session.peer_identity(),
        }
    }
}
