//! TCP socket settings every Qymux connection gets.

use std::time::Duration;

use qymux_transport::Options;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tracing::debug;

/// `TCP_NODELAY` (small RPCs otherwise wait ~40–90 ms for delayed ACKs), TCP keep-alive
/// probes at the keep-alive interval, and `TCP_USER_TIMEOUT` at the dead-peer timeout,
/// so the kernel gives up on a peer that stopped acknowledging within the same bound.
pub(crate) fn configure(stream: &TcpStream, options: &Options) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!("TCP_NODELAY: {e}");
    }
    let sock = SockRef::from(stream);
    if let Some(interval) = options.keep_alive_interval_value() {
        let retries = probes(interval, options.idle_timeout_value());
        let keepalive = TcpKeepalive::new()
            .with_time(interval)
            .with_interval(interval)
            .with_retries(retries);
        if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
            debug!("TCP keep-alive: {e}");
        }
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(options.idle_timeout_value())) {
        debug!("TCP_USER_TIMEOUT: {e}");
    }
}

/// How many unanswered probes, one per `interval`, fit in the dead-peer timeout after the
/// first idle `interval`.
fn probes(interval: Duration, idle_timeout: Duration) -> u32 {
    let after_idle = idle_timeout.saturating_sub(interval);
    let n = after_idle.as_millis() / interval.as_millis().max(1);
    n.clamp(1, 127) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fit_the_dead_peer_timeout() {
        assert_eq!(probes(Duration::from_secs(10), Duration::from_secs(30)), 2);
        assert_eq!(probes(Duration::from_secs(1), Duration::from_secs(5)), 4);
        assert_eq!(probes(Duration::from_secs(20), Duration::from_secs(21)), 1);
    }
}
