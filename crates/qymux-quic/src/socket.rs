//! UDP socket settings every Qymux endpoint gets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::debug;

/// Kernel buffer size asked for on every UDP socket. Linux's default (~208 KiB) drops
/// packets of a single fast stream in bursts; the kernel caps the request at
/// `net.core.rmem_max` / `wmem_max`.
pub(crate) const UDP_BUFFER: usize = 4 * 1024 * 1024;

/// Enlarges the socket's kernel buffers (best effort).
pub(crate) fn configure(socket: &std::net::UdpSocket) {
    let sock = SockRef::from(socket);
    if let Err(e) = sock.set_recv_buffer_size(UDP_BUFFER) {
        debug!("UDP receive buffer: {e}");
    }
    if let Err(e) = sock.set_send_buffer_size(UDP_BUFFER) {
        debug!("UDP send buffer: {e}");
    }
}

/// A UDP socket for a client endpoint bound to `local`; an IPv6 one is made dual-stack
/// where the system allows.
pub(crate) fn client_socket(local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6()
        && let Err(e) = socket.set_only_v6(false)
    {
        debug!("UDP socket not dual-stack: {e}");
    }
    socket.bind(&local.into())?;
    let socket = std::net::UdpSocket::from(socket);
    configure(&socket);
    Ok(socket)
}

/// The wildcard address (any port) of `peer`'s family: where a socket to reach it binds.
pub(crate) fn unspecified_for(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// The local address the OS picks to send to `peer`: a UDP socket connected to it (which
/// sends nothing) reports it.
pub(crate) fn route_source(peer: SocketAddr) -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind(unspecified_for(peer)).ok()?;
    socket.connect(peer).ok()?;
    Some(socket.local_addr().ok()?.ip())
}
