//! From Qymux [`Options`] and rustls configs to quinn's configuration.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use qymux_transport::{Error, Options, Result};

/// Per-stream receive window: how much one stream may have in flight before the reader
/// consumes it. One stream reaches full loopback speed at 8 MiB (see the crate docs).
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;

/// Connection-wide receive window: caps what all streams of one session together may
/// buffer on this side (quinn's default is unlimited).
pub(crate) const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// How much unacknowledged data this side may have in flight over all streams.
pub(crate) const SEND_WINDOW: u64 = 32 * 1024 * 1024;

/// How many concurrent streams the peer is granted at first, at most. quinn keeps an
/// entry per stream the peer may open, so granting all of [`Options::max_streams`] (1024
/// by default) up front cost about 80 KiB on every session, used or not (128 cost about
/// 10 KiB). The grant doubles as the peer opens streams (see
/// `Shared::grow_stream_credit`), up to `max_streams`.
pub(crate) const INITIAL_STREAM_CREDIT: usize = 128;

/// The peer's first stream grant: [`INITIAL_STREAM_CREDIT`], or less if
/// [`Options::max_streams`] or [`Options::accept_backlog`] is smaller (none of its streams
/// is accepted yet, so all of them would wait in the backlog).
pub(crate) fn initial_stream_credit(options: &Options) -> usize {
    INITIAL_STREAM_CREDIT
        .min(options.max_streams)
        .min(options.accept_backlog)
}

/// quinn's transport settings for `options`.
///
/// - The peer's limit of concurrent bidirectional streams (QUIC `MAX_STREAMS`) starts at
///   [`initial_stream_credit`] and grows with use up to [`Options::max_streams`], and no
///   further than [`Options::accept_backlog`] beyond the streams accepted; Qymux also
///   counts the streams this side opens against `max_streams`.
/// - [`Options::keep_alive_interval`] sends PINGs while idle.
/// - [`Options::idle_timeout`] is the QUIC idle timeout (the smaller of both sides' values
///   applies).
/// - No unidirectional streams and no datagrams: Qymux uses neither.
pub(crate) fn transport_config(options: &Options) -> Result<TransportConfig> {
    let idle = IdleTimeout::try_from(options.idle_timeout).map_err(|_| {
        Error::Config(format!(
            "idle_timeout {:?} is too large for QUIC",
            options.idle_timeout
        ))
    })?;
    let max_streams = u32::try_from(initial_stream_credit(options))
        .map_err(|_| Error::Config("max_streams is too large".into()))?;
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(options.keep_alive_interval)
        .stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None);
    Ok(config)
}

/// A quinn client configuration from a rustls one (it must allow TLS 1.3).
pub(crate) fn client_config(
    tls: Arc<rustls::ClientConfig>,
    options: &Options,
) -> Result<quinn::ClientConfig> {
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| {
        Error::Config(format!(
            "the TLS client config cannot be used for QUIC: {e}"
        ))
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(options)?));
    Ok(config)
}

/// A quinn server configuration from a rustls one (it must allow TLS 1.3).
pub(crate) fn server_config(
    tls: Arc<rustls::ServerConfig>,
    options: &Options,
) -> Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| {
        Error::Config(format!(
            "the TLS server config cannot be used for QUIC: {e}"
        ))
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(Arc::new(transport_config(options)?))
        // Clients behind NAT change address; QUIC follows them (path validation).
        .migration(true);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_map_to_a_transport_config() {
        transport_config(&Options::default()).unwrap();
        let mut o = Options::default();
        o.max_streams(1 << 20);
        transport_config(&o).unwrap();
    }
}
