//! The entry points: `Qymux::listen(addr, server_config)` for a server,
//! `Qymux::new(client_config)` then `dial` or `connect_forever` for an agent.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use qymux_dialer::{Dialer, ReconnectConfig, Reconnecting};
use qymux_tls::ClientTls;
use qymux_transport::{BoxSession, Error, ErrorReport, Result};

use crate::config::{ClientConfig, ServerConfig};

/// The listener [`Qymux::listen`] returns: sessions over QUIC and TCP on one port (or one
/// of them, by [`Mode`](crate::Mode)).
pub type Listener = qymux_dialer::Listener;

/// An agent's way to the server: dials as its [`ClientConfig`] says, once
/// ([`Qymux::dial`]) or for as long as it runs ([`Qymux::connect_forever`]); a server
/// listens with [`Qymux::listen`] and a [`ServerConfig`]. Cheap to clone; clones share
/// the memory of where QUIC failed.
#[derive(Debug, Clone)]
pub struct Qymux {
    config: Arc<ClientConfig>,
    dialer: Arc<OnceLock<Dialer>>,
}

impl Qymux {
    /// Listens on `addr` (`host:port`; port 0 picks one) for the transports of the
    /// configured mode: in Auto, UDP and TCP on the same port.
    ///
    /// Unless [`Options::quic_reset_secret`](crate::Options::quic_reset_secret) is set,
    /// the server's private key is that secret: a server restarted with the same key
    /// resets its predecessor's QUIC connections on their next packet, so agents redial
    /// at once instead of waiting out their idle timeout.
    pub async fn listen(addr: &str, config: ServerConfig) -> Result<Listener> {
        let ServerConfig {
            mode,
            tls: server_tls,
            mut options,
        } = config;
        let tls = server_tls
            .build()
            .map_err(|e| Error::Config(ErrorReport::new(&e).to_string()))?;
        if options.quic_reset_secret_value().is_none() {
            options.quic_reset_secret(server_tls.identity().private_key().secret_der());
        }
        Listener::bind(addr, tls, options, mode).await
    }

    /// Wraps a client configuration. Nothing is checked until `dial` or
    /// `connect_forever`.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config: Arc::new(config),
            dialer: Arc::new(OnceLock::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Dials the server of [`ClientConfig::new`] and returns a session over whichever transport
    /// won; see [`Session::protocol`](crate::Session::protocol).
    pub async fn dial(&self) -> Result<BoxSession> {
        let dialer = match self.dialer.get() {
            Some(d) => d,
            None => {
                let d = self.make_dialer()?;
                self.dialer.get_or_init(|| d)
            }
        };
        dialer.dial().await
    }

    /// Keeps a session up to the configured server(s), for an agent: dials at once,
    /// runs `on_session` on every new session, and when the session is lost dials again,
    /// with exponential backoff and full jitter, moving on to the next of
    /// [`ClientConfig::server_addrs`]. In Auto mode a session that fell back to TCP moves to
    /// QUIC once QUIC gets through again. The returned [`Reconnecting`] publishes its
    /// state on a watch channel, hands out the current session, and stops when dropped
    /// or shut down. See [`Reconnecting`] for the details.
    ///
    /// Shares this `Qymux`'s memory of where QUIC failed with [`Qymux::dial`]. Must be
    /// called within a tokio runtime.
    pub fn connect_forever<F, Fut>(
        &self,
        config: ReconnectConfig,
        on_session: F,
    ) -> Result<Reconnecting>
    where
        F: FnMut(BoxSession) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let servers = self.dialers()?;
        Reconnecting::start(servers, config, on_session)
    }

    /// One [`Dialer`] per configured server ([`ClientConfig::server_addrs`]), sharing this `Qymux`'s memory of where QUIC failed: the
    /// servers [`connect_forever`](Qymux::connect_forever) goes through, for code that
    /// runs its own [`Reconnecting`] (the tunnel agent of the `forward` feature, for
    /// one).
    pub fn dialers(&self) -> Result<Vec<Dialer>> {
        let first = match self.dialer.get() {
            Some(d) => d,
            None => {
                let d = self.make_dialer()?;
                self.dialer.get_or_init(|| d)
            }
        };
        let more = self.config.more_server_addrs.iter().map(|addr| {
            first
                .with_addr(addr.clone())
                .with_server_name(self.config.server_name_for(addr))
        });
        Ok(std::iter::once(first.clone()).chain(more).collect())
    }

    fn make_dialer(&self) -> Result<Dialer> {
        let config = &self.config;
        let client_tls = match config.client_tls.clone() {
            Some(tls) => tls,
            None => default_client_tls()?,
        };
        let tls = client_tls
            .build()
            .map_err(|e| Error::Config(ErrorReport::new(&e).to_string()))?;
        Ok(Dialer::new(
            config.server_addr.clone(),
            config.server_name_or_host().to_owned(),
            tls,
        )
        .mode(config.mode)
        .options(config.options.clone()))
    }
}

/// What a dialer trusts when `ClientConfig::client_tls` is not set: the system roots
/// (feature `native-roots`).
#[cfg(feature = "native-roots")]
fn default_client_tls() -> Result<ClientTls> {
    Ok(ClientTls::with_system_roots())
}

/// Without the `native-roots` feature there is no default trust: the configuration
/// must say what to trust.
#[cfg(not(feature = "native-roots"))]
fn default_client_tls() -> Result<ClientTls> {
    Err(Error::Config(
        "dialing needs ClientConfig::client_tls (the `native-roots` feature, which trusts the \
         system roots by default, is off)"
            .into(),
    ))
}
