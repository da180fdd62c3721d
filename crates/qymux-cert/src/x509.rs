//! Helpers over x509-parser and the crypto library: reading certificates, checking
//! keys; and over rcgen (feature `cert-gen`): names, and the parameters shared by every
//! certificate this crate makes.

#[cfg(feature = "cert-gen")]
use std::net::IpAddr;

#[cfg(feature = "cert-gen")]
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
#[cfg(feature = "cert-gen")]
use rustls_pki_types::DnsName;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
#[cfg(feature = "cert-gen")]
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;

use crate::crypto::signature::{self, KeyPair as _};
use crate::{CertError, Result};

#[cfg(feature = "cert-gen")]
/// How long a CA certificate is valid: about ten years.
pub(crate) const CA_VALIDITY: Duration = Duration::days(3653);
#[cfg(feature = "cert-gen")]
/// How long a server, client or self-signed certificate is valid: about two years
/// (never beyond its CA).
pub(crate) const LEAF_VALIDITY: Duration = Duration::days(731);
#[cfg(feature = "cert-gen")]
/// Certificates start being valid this long before they are made, so that a peer whose
/// clock is a little behind accepts them.
const BACKDATE: Duration = Duration::hours(1);

/// Parses a DER certificate, naming `source_name` on failure.
pub(crate) fn parse<'a>(
    cert: &'a CertificateDer<'_>,
    source_name: &str,
) -> Result<X509Certificate<'a>> {
    match x509_parser::parse_x509_certificate(cert.as_ref()) {
        Ok((_, parsed)) => Ok(parsed),
        Err(error) => Err(CertError::InvalidCertificate {
            source_name: source_name.to_owned(),
            reason: format!("not a valid X.509 certificate ({error})"),
        }),
    }
}

/// Whether `key` is the private key of `cert`'s public key; `None` when the key is in
/// a format that cannot be checked here (PKCS#1, SEC1, or an unsupported algorithm).
pub(crate) fn key_matches(cert: &X509Certificate<'_>, key: &PrivateKeyDer<'_>) -> Option<bool> {
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return None;
    };
    let public_key = pkcs8_public_key(pkcs8.secret_pkcs8_der())?;
    // Both are the raw key of the SubjectPublicKeyInfo BIT STRING (an EC point, an
    // Ed25519 key, or an RSAPublicKey).
    Some(cert.public_key().subject_public_key.data.as_ref() == public_key.as_slice())
}

/// The raw public key of a PKCS#8 private key the crypto library can load: Ed25519,
/// ECDSA P-256 or P-384, or RSA (the kinds rcgen signs with); `None` for anything else.
fn pkcs8_public_key(pkcs8: &[u8]) -> Option<Vec<u8>> {
    if let Ok(key) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8) {
        return Some(key.public_key().as_ref().to_vec());
    }
    for algorithm in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Some(key) = ecdsa_from_pkcs8(algorithm, pkcs8) {
            return Some(key.public_key().as_ref().to_vec());
        }
    }
    let key = signature::RsaKeyPair::from_pkcs8(pkcs8).ok()?;
    Some(key.public_key().as_ref().to_vec())
}

#[cfg(feature = "ring")]
fn ecdsa_from_pkcs8(
    algorithm: &'static signature::EcdsaSigningAlgorithm,
    pkcs8: &[u8],
) -> Option<signature::EcdsaKeyPair> {
    let rng = crate::crypto::rand::SystemRandom::new();
    signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8, &rng).ok()
}

#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
fn ecdsa_from_pkcs8(
    algorithm: &'static signature::EcdsaSigningAlgorithm,
    pkcs8: &[u8],
) -> Option<signature::EcdsaKeyPair> {
    signature::EcdsaKeyPair::from_pkcs8(algorithm, pkcs8).ok()
}

/// Whether `key_pair` holds the private key of `cert`'s public key.
#[cfg(feature = "cert-gen")]
pub(crate) fn public_key_matches(cert: &X509Certificate<'_>, key_pair: &KeyPair) -> bool {
    // Both are the raw key of the SubjectPublicKeyInfo BIT STRING (an EC point, an
    // Ed25519 key, or an RSAPublicKey).
    cert.public_key().subject_public_key.data.as_ref() == key_pair.public_key_raw()
}

#[cfg(feature = "cert-gen")]
/// The end of a certificate's validity period.
pub(crate) fn not_after(cert: &X509Certificate<'_>) -> OffsetDateTime {
    let timestamp = cert.validity().not_after.timestamp();
    OffsetDateTime::from_unix_timestamp(timestamp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(feature = "cert-gen")]
/// Parameters shared by everything this crate issues: a subject with just a common
/// name (if any), a validity from an hour ago for `validity` (capped at
/// `not_after_cap`).
pub(crate) fn base_params(
    common_name: Option<&str>,
    validity: Duration,
    not_after_cap: Option<OffsetDateTime>,
) -> Result<CertificateParams> {
    let now = OffsetDateTime::now_utc();
    let mut not_after = now + validity;
    if let Some(cap) = not_after_cap {
        not_after = not_after.min(cap);
    }
    let mut subject = DistinguishedName::new();
    if let Some(common_name) = common_name {
        check_common_name(common_name)?;
        subject.push(DnType::CommonName, common_name);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    Ok(params)
}

#[cfg(feature = "cert-gen")]
/// The common name of a server certificate: its first name, unless that is too long for
/// a common name (the subject alternative names are what TLS checks anyway).
pub(crate) fn server_common_name<'a>(names: &[&'a str]) -> Result<Option<&'a str>> {
    let first = names
        .first()
        .copied()
        .ok_or_else(|| invalid_name("", "at least one name is needed"))?;
    Ok((first.len() <= MAX_COMMON_NAME).then_some(first))
}

#[cfg(feature = "cert-gen")]
/// RFC 5280: ub-common-name is 64.
const MAX_COMMON_NAME: usize = 64;

#[cfg(feature = "cert-gen")]
fn check_common_name(name: &str) -> Result<()> {
    let reason = if name.trim().is_empty() {
        "empty"
    } else if name.chars().any(char::is_control) {
        "contains control characters"
    } else if name.len() > MAX_COMMON_NAME {
        "longer than 64 bytes"
    } else {
        return Ok(());
    };
    Err(invalid_name(name, reason))
}

#[cfg(feature = "cert-gen")]
/// A subject alternative name for a server certificate: an IP address for an IP
/// literal, otherwise a DNS name (a leading `*.` wildcard label is allowed).
pub(crate) fn server_san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let base = name.strip_prefix("*.").unwrap_or(name);
    if DnsName::try_from(base).is_err() || base.ends_with('.') {
        return Err(invalid_name(
            name,
            "not an IP address or a valid DNS name (letters, digits, '-', '_' and dots; \
             an optional leading '*.')",
        ));
    }
    dns_san(name)
}

#[cfg(feature = "cert-gen")]
/// The DNS subject alternative name for a client's common name, if it is a valid DNS
/// name.
pub(crate) fn client_san(common_name: &str) -> Option<SanType> {
    if common_name.parse::<IpAddr>().is_ok() || common_name.ends_with('.') {
        return None;
    }
    DnsName::try_from(common_name).ok()?;
    dns_san(common_name).ok()
}

#[cfg(feature = "cert-gen")]
fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|error: rcgen::Error| invalid_name(name, &error.to_string()))?;
    Ok(SanType::DnsName(ia5))
}

#[cfg(feature = "cert-gen")]
pub(crate) fn invalid_name(name: &str, reason: &str) -> CertError {
    CertError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    }
}

#[cfg(feature = "cert-gen")]
/// A fresh ECDSA P-256 key pair.
pub(crate) fn generate_key() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

#[cfg(feature = "cert-gen")]
/// The PKCS#8 form rustls takes of a key pair made here.
pub(crate) fn private_key_der(key_pair: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(key_pair.serialize_der().into())
}
