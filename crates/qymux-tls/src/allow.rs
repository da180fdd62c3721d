//! An allow-list of peer identities, for the application to apply to each session.

use std::fmt;

use qymux_cert::Fingerprint;
use qymux_transport::{PeerIdentity, PeerText, Verification};

/// Which verified peers an application accepts, beyond "the CA signed it": by the
/// SHA-256 fingerprint of the peer's certificate, or by a name in it.
///
/// The TLS layer decides whether a certificate is valid (chain, dates, CRLs); an
/// allow-list decides whether this particular valid peer may use the service. Check
/// each session as it is accepted (or dialed), and close it if the peer is not listed:
///
/// ```
/// # async fn serve<L: qymux_transport::Listener>(listener: L) -> qymux_transport::Result<()> {
/// use qymux_tls::AllowList;
/// use qymux_transport::{PeerText, Session};
///
/// let allowed = AllowList::new().name("agent-eu-1").name("agent-us-2");
/// loop {
///     let session = listener.accept().await?;
///     if let Err(refused) = allowed.check(session.peer_identity().as_ref()) {
///         tracing::warn!(peer = %session.remote_addr(), "{refused}");
///         session.close().await;
///         continue;
///     }
///     // serve the session
/// }
/// # }
/// ```
///
/// A fingerprint matches whatever way the certificate was checked (the handshake proved
/// the peer holds its key). A name matches only a certificate verified through a path to
/// a trust anchor ([`Verification::Path`]): in a pinned or unverified certificate, the
/// names are whatever its maker wrote. Names are compared as
/// [`PeerIdentity::has_name`] does: common names exactly, DNS names without regard to
/// ASCII case, IP addresses as addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    fingerprints: Vec<Fingerprint>,
    names: Vec<String>,
}

/// Why an [`AllowList`] refused a peer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    /// The peer presented no certificate.
    #[error("peer refused: it presented no certificate")]
    NoIdentity,
    /// The peer's certificate is neither listed by fingerprint nor carries a listed name.
    #[error("peer refused: certificate {fingerprint} ({names}) is not on the allow-list")]
    NotListed {
        /// The SHA-256 fingerprint of the peer's certificate.
        fingerprint: Fingerprint,
        /// The certificate's names, escaped for logs.
        names: String,
    },
}

impl AllowList {
    /// An empty list: it allows nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also allows the certificate with this SHA-256 fingerprint.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprints.push(fingerprint);
        self
    }

    /// Also allows certificates (verified through a path) that carry this name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.names.push(name.into());
        self
    }

    /// Whether the peer is allowed.
    pub fn allows(&self, identity: Option<&PeerIdentity>) -> bool {
        self.check(identity).is_ok()
    }

    /// Checks a peer: `Ok` if it is allowed, otherwise why not (the message is safe to
    /// log: the certificate's names are escaped).
    pub fn check(&self, identity: Option<&PeerIdentity>) -> Result<(), NotAllowed> {
        let identity = identity.ok_or(NotAllowed::NoIdentity)?;
        let fingerprint = Fingerprint::of(identity.end_entity());
        if self.fingerprints.contains(&fingerprint) {
            return Ok(());
        }
        if identity.verification() == Verification::Path
            && self.names.iter().any(|name| identity.has_name(name))
        {
            return Ok(());
        }
        Err(NotAllowed::NotListed {
            fingerprint,
            names: describe_names(identity),
        })
    }
}

/// The names of a peer's certificate on one line, escaped: `CN=a, DNS=b, IP=c`.
pub fn describe_names(identity: &PeerIdentity) -> String {
    struct Names<'a>(&'a PeerIdentity);
    impl fmt::Display for Names<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let mut first = true;
            let mut sep = |f: &mut fmt::Formatter<'_>| {
                let s = if first { "" } else { ", " };
                first = false;
                f.write_str(s)
            };
            for cn in self.0.common_names() {
                sep(f)?;
                write!(f, "CN={}", PeerText(cn))?;
            }
            for dns in self.0.dns_names() {
                sep(f)?;
                write!(f, "DNS={}", PeerText(dns))?;
            }
            for ip in self.0.ip_addresses() {
                sep(f)?;
                write!(f, "IP={ip}")?;
            }
            if first {
                f.write_str("no names")?;
            }
            Ok(())
        }
    }
    Names(identity).to_string()
}
