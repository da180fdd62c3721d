//! A certificate authority, and self-signed development certificates.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateRevocationListParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};

use crate::files::write_pair;
use crate::pem::{certs_to_pem, encode_block, parse_certs_pem, parse_key_pem};
use crate::x509::{self, CA_VALIDITY, LEAF_VALIDITY};
use crate::{CertError, Fingerprint, Identity, Result};

/// A certificate authority that signs server and client certificates.
///
/// Its certificate is what peers trust (a rustls `RootCertStore` entry): a server that
/// presents a certificate issued by it is verified the ordinary way, by name, and a
/// client certificate issued by it passes a webpki client verifier (mTLS).
///
/// A new CA has an ECDSA P-256 key, `CA:TRUE` with a path length of 0 (it signs end
/// entities only), the key usages `keyCertSign` and `cRLSign`, and is valid for about
/// ten years. Write it with [`write_pem_files`](Self::write_pem_files) and reload it
/// with [`from_pem`](Self::from_pem) to issue more certificates later.
///
/// Cloning is cheap (the key is shared). `Debug` shows the fingerprint, never the key.
///
/// ```
/// use qymux_cert::CertificateAuthority;
///
/// let ca = CertificateAuthority::new("Example CA")?;
/// let server = ca.issue_server(&["tunnel.example.com", "10.0.0.1"])?;
/// let agent = ca.issue_client("agent-17")?;
/// assert_ne!(server.fingerprint(), agent.fingerprint());
///
/// // Later, from the files it was saved to:
/// let reloaded = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem())?;
/// assert_eq!(reloaded.fingerprint(), ca.fingerprint());
/// let another = reloaded.issue_server(&["localhost"])?;
/// # let _ = another;
/// # Ok::<(), qymux_cert::CertError>(())
/// ```
#[derive(Clone)]
pub struct CertificateAuthority {
    cert: CertificateDer<'static>,
    issuer: Arc<Issuer<'static, KeyPair>>,
    not_after: OffsetDateTime,
    leaf_validity: Duration,
}

/// The longest validity [`CertificateAuthority::with_leaf_validity_days`] accepts: about
/// ten years (a CA's own validity).
pub const MAX_VALIDITY_DAYS: u32 = 3653;

impl CertificateAuthority {
    /// Creates a new CA with a fresh key and a self-signed certificate whose subject is
    /// `CN=<common_name>`.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidName`] for an empty or overlong (over 64 bytes) name,
    /// [`CertError::Generate`] if key generation or signing fails.
    pub fn new(common_name: &str) -> Result<Self> {
        let mut params = x509::base_params(Some(common_name), CA_VALIDITY, None)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let not_after = params.not_after;
        let key_pair = x509::generate_key()?;
        let cert = params.self_signed(&key_pair)?.der().clone();
        Ok(Self {
            cert,
            issuer: Arc::new(Issuer::new(params, key_pair)),
            not_after,
            leaf_validity: LEAF_VALIDITY,
        })
    }

    /// Loads a CA that was written before (by this crate or by other tools), so that it
    /// can issue certificates again.
    ///
    /// `cert_pem` holds the CA certificate (the first `CERTIFICATE` block is used);
    /// `key_pem` its private key, which must be PKCS#8 (`PRIVATE KEY`) to sign with.
    ///
    /// # Errors
    ///
    /// PEM errors as [`parse_certs_pem`](crate::parse_certs_pem) and
    /// [`parse_key_pem`](crate::parse_key_pem);
    /// [`CertError::InvalidCertificate`] if the certificate is not X.509 or not a CA
    /// certificate (`CA:TRUE`, and `keyCertSign` if it has key usages);
    /// [`CertError::UnsupportedKey`] if the key cannot sign here;
    /// [`CertError::KeyMismatch`] if the key does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        const CERT_NAME: &str = "CA certificate PEM";
        const KEY_NAME: &str = "CA private key PEM";

        let cert = parse_certs_pem(cert_pem, CERT_NAME)?.swap_remove(0);
        let key = parse_key_pem(key_pem, KEY_NAME)?;
        let parsed = x509::parse(&cert, CERT_NAME)?;

        let not_a_ca = |reason: &str| CertError::InvalidCertificate {
            source_name: CERT_NAME.to_owned(),
            reason: reason.to_owned(),
        };
        match parsed.basic_constraints() {
            Ok(Some(constraints)) if constraints.value.ca => {}
            Ok(_) => {
                return Err(not_a_ca(
                    "not a CA certificate (no basicConstraints CA:TRUE)",
                ));
            }
            Err(_) => return Err(not_a_ca("malformed basicConstraints extension")),
        }
        match parsed.key_usage() {
            Ok(Some(usage)) if !usage.value.key_cert_sign() => {
                return Err(not_a_ca("its key usage does not allow keyCertSign"));
            }
            Ok(_) => {}
            Err(_) => return Err(not_a_ca("malformed keyUsage extension")),
        }

        let key_pair = KeyPair::try_from(&key).map_err(|error| CertError::UnsupportedKey {
            source_name: KEY_NAME.to_owned(),
            reason: format!(
                "{error}; a PKCS#8 (\"PRIVATE KEY\") ECDSA P-256/P-384, Ed25519 or RSA key \
                 is needed to sign"
            ),
        })?;
        if !x509::public_key_matches(&parsed, &key_pair) {
            return Err(CertError::KeyMismatch {
                source_name: KEY_NAME.to_owned(),
            });
        }
        let not_after = x509::not_after(&parsed);
        let issuer = Issuer::from_ca_cert_der(&cert, key_pair).map_err(|error| {
            CertError::InvalidCertificate {
                source_name: CERT_NAME.to_owned(),
                reason: error.to_string(),
            }
        })?;
        Ok(Self {
            cert,
            issuer: Arc::new(issuer),
            not_after,
            leaf_validity: LEAF_VALIDITY,
        })
    }

    /// Makes the certificates this CA issues from now on valid for `days` days (from an
    /// hour ago, never beyond the CA) instead of about two years.
    ///
    /// Short-lived client certificates are how agents rotate: an agent whose key leaks is
    /// locked out when its certificate expires even if nobody revokes it, and a fresh
    /// certificate from the same CA replaces it without touching the server.
    ///
    /// ```
    /// let ca = qymux_cert::CertificateAuthority::new("Agents CA")?.with_leaf_validity_days(7)?;
    /// let agent = ca.issue_client("agent-7")?; // valid for a week
    /// # let _ = agent;
    /// # Ok::<(), qymux_cert::CertError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidValidity`] for 0 days or more than [`MAX_VALIDITY_DAYS`].
    pub fn with_leaf_validity_days(mut self, days: u32) -> Result<Self> {
        if days == 0 || days > MAX_VALIDITY_DAYS {
            return Err(CertError::InvalidValidity(format!(
                "{days} days: expected 1 to {MAX_VALIDITY_DAYS}"
            )));
        }
        self.leaf_validity = Duration::days(i64::from(days));
        Ok(self)
    }

    /// Signs a certificate revocation list (CRL) naming `revoked` (certificates this CA
    /// issued) as revoked, valid until `next_update_days` days from now. Servers load it
    /// with `qymux_tls::Crls`; write it with [`crl_to_pem`](crate::crl_to_pem).
    ///
    /// An empty `revoked` makes a valid CRL that revokes nothing (what a server loads
    /// before anything was revoked). The CRL number is the current Unix time, so a newer
    /// CRL has a higher number.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidCertificate`] if one of `revoked` is not an X.509
    /// certificate or was not issued by this CA; [`CertError::InvalidValidity`] if
    /// `next_update_days` is 0 or over [`MAX_VALIDITY_DAYS`]; [`CertError::Generate`]
    /// if signing fails.
    pub fn revocation_list(
        &self,
        revoked: &[&CertificateDer<'_>],
        next_update_days: u32,
    ) -> Result<CertificateRevocationListDer<'static>> {
        if next_update_days == 0 || next_update_days > MAX_VALIDITY_DAYS {
            return Err(CertError::InvalidValidity(format!(
                "next update in {next_update_days} days: expected 1 to {MAX_VALIDITY_DAYS}"
            )));
        }
        let ca = x509::parse(&self.cert, "CA certificate")?;
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for (i, cert) in revoked.iter().enumerate() {
            let name = format!("revoked certificate #{}", i + 1);
            let parsed = x509::parse(cert, &name)?;
            if parsed.issuer().as_raw() != ca.subject().as_raw() {
                return Err(CertError::InvalidCertificate {
                    source_name: name,
                    reason: "not issued by this CA".to_owned(),
                });
            }
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(parsed.raw_serial()),
                revocation_time: now,
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let number = u64::try_from(now.unix_timestamp()).unwrap_or_default();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(next_update_days)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.der().clone())
    }

    /// The CA certificate (what peers add to their trust roots).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        certs_to_pem(std::slice::from_ref(&self.cert))
    }

    /// The CA private key as PKCS#8 PEM. Keep it secret: it can issue certificates that
    /// everyone who trusts this CA accepts.
    pub fn key_pem(&self) -> String {
        let mut out = String::new();
        encode_block(&mut out, "PRIVATE KEY", self.issuer.key().serialized_der());
        out
    }

    /// The SHA-256 fingerprint of the CA certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert)
    }

    /// Issues a server certificate for `names`, with a fresh ECDSA P-256 key.
    ///
    /// Each name that is an IP address literal (`127.0.0.1`, `::1`) becomes an IP
    /// address subject alternative name, any other a DNS name (`*.example.com` is
    /// allowed). The subject's common name is the first name (left out if it is longer than
    /// the 64 bytes a common name may have). The certificate has the
    /// extended key usage `serverAuth`, is not a CA, and is valid for about two years (or
    /// as [`with_leaf_validity_days`](Self::with_leaf_validity_days) says)
    /// (never beyond the CA). The identity's chain is just the leaf: peers are expected to
    /// trust the CA itself.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidName`] if `names` is empty or a name is neither an IP
    /// address nor a valid DNS name; [`CertError::InvalidCertificate`] if the CA has
    /// expired; [`CertError::Generate`] if key generation or signing fails.
    pub fn issue_server(&self, names: &[&str]) -> Result<Identity> {
        let mut params = self.leaf_params(x509::server_common_name(names)?)?;
        params.subject_alt_names = server_sans(names)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// Issues a client certificate (for mTLS) with the subject `CN=<common_name>` and a
    /// fresh ECDSA P-256 key.
    ///
    /// The certificate has the extended key usage `clientAuth`, is not a CA, and is valid
    /// for about two years, or as [`with_leaf_validity_days`](Self::with_leaf_validity_days)
    /// says (never beyond the CA). If `common_name` is a valid DNS name,
    /// it is also a DNS subject alternative name.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidName`] for an empty or overlong (over 64 bytes) name;
    /// [`CertError::InvalidCertificate`] if the CA has expired;
    /// [`CertError::Generate`] if key generation or signing fails.
    pub fn issue_client(&self, common_name: &str) -> Result<Identity> {
        let mut params = self.leaf_params(Some(common_name))?;
        params.subject_alt_names = x509::client_san(common_name).into_iter().collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// Writes the CA certificate to `cert` and its key to `key` as PEM. The key file gets
    /// mode `0600` on Unix.
    ///
    /// # Errors
    ///
    /// Without `overwrite`, [`CertError::AlreadyExists`] if either file exists, and then
    /// nothing is written. [`CertError::Symlink`] if either path is a symbolic link, even
    /// with `overwrite`. [`CertError::Io`] if writing fails (parent directories are not
    /// created). Both files are written to temporary files beside them first and moved
    /// into place together, so a failure leaves the old pair (or none), never a key with
    /// a certificate it does not belong to.
    pub fn write_pem_files(
        &self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
        overwrite: bool,
    ) -> Result<()> {
        write_pair(
            cert.as_ref(),
            &self.cert_pem(),
            key.as_ref(),
            &self.key_pem(),
            overwrite,
        )
    }

    fn leaf_params(&self, common_name: Option<&str>) -> Result<rcgen::CertificateParams> {
        let now = OffsetDateTime::now_utc();
        if self.not_after <= now {
            return Err(CertError::InvalidCertificate {
                source_name: "CA certificate".to_owned(),
                reason: format!("expired on {}", self.not_after),
            });
        }
        let mut params = x509::base_params(common_name, self.leaf_validity, Some(self.not_after))?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn sign(&self, params: rcgen::CertificateParams) -> Result<Identity> {
        let key_pair = x509::generate_key()?;
        let cert = params.signed_by(&key_pair, &self.issuer)?;
        Ok(Identity::from_parts(
            cert.der().clone(),
            x509::private_key_der(&key_pair),
        ))
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .field("leaf_validity", &self.leaf_validity)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Makes a self-signed end-entity certificate for `names` (development only).
///
/// Names become subject alternative names as in
/// [`CertificateAuthority::issue_server`]; the common name is the first name. The
/// certificate is *not* a CA (`CA:FALSE`), has the extended key usages `serverAuth`
/// and `clientAuth`, an ECDSA P-256 key, and is valid for about two years.
///
/// Peers verify it by pinning its [`fingerprint`](Identity::fingerprint), or by
/// trusting exactly this certificate as a root (webpki accepts a non-CA self-signed
/// certificate as its own trust anchor). It is deliberately not a CA: webpki refuses a
/// CA certificate presented as an end entity (`CaUsedAsEndEntity`). To trust many
/// certificates through one root, use a [`CertificateAuthority`].
///
/// ```
/// let dev = qymux_cert::self_signed(&["localhost", "127.0.0.1", "::1"])?;
/// let pin = dev.fingerprint().to_string(); // give this to the dialer
/// assert_eq!(pin.len(), 64);
/// # Ok::<(), qymux_cert::CertError>(())
/// ```
///
/// # Errors
///
/// [`CertError::InvalidName`] if `names` is empty or a name is neither an IP address
/// nor a valid DNS name; [`CertError::Generate`] if key generation or signing fails.
pub fn self_signed(names: &[&str]) -> Result<Identity> {
    let mut params = x509::base_params(x509::server_common_name(names)?, LEAF_VALIDITY, None)?;
    params.subject_alt_names = server_sans(names)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key_pair = x509::generate_key()?;
    let cert = params.self_signed(&key_pair)?;
    Ok(Identity::from_parts(
        cert.der().clone(),
        x509::private_key_der(&key_pair),
    ))
}

fn server_sans(names: &[&str]) -> Result<Vec<rcgen::SanType>> {
    let mut sans = Vec::with_capacity(names.len());
    for name in names {
        let san = x509::server_san(name)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}
