//! UDP socket settings every Qymux endpoint gets.

use std::net::SocketAddr;

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
