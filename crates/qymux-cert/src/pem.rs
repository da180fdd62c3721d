//! PEM in and out, and the files that hold it.

use std::fs;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertError, Result};

/// Parses every `CERTIFICATE` block of a PEM text, in order.
///
/// Other kinds of blocks (keys, for instance) and text around the blocks are skipped.
/// `source_name` names the input in error messages (a file name, say).
///
/// # Errors
///
/// [`CertError::NoCertificate`] if there is no certificate block at all,
/// [`CertError::Pem`] if the PEM is malformed.
pub fn parse_certs_pem(pem: &str, source_name: &str) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(pem.as_bytes(), source_name)
}

/// Parses the first private key of a PEM text: `PRIVATE KEY` (PKCS#8),
/// `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
///
/// `source_name` names the input in error messages (a file name, say).
///
/// # Errors
///
/// [`CertError::NoPrivateKey`] if there is no key block, [`CertError::Pem`] if the PEM is
/// malformed or holds only an encrypted key (`ENCRYPTED PRIVATE KEY` is not supported).
pub fn parse_key_pem(pem: &str, source_name: &str) -> Result<PrivateKeyDer<'static>> {
    parse_key(pem.as_bytes(), source_name)
}

/// Reads every certificate of a PEM file, in order (see [`parse_certs_pem`]).
///
/// # Errors
///
/// [`CertError::Io`] if the file cannot be read, otherwise as [`parse_certs_pem`].
pub fn load_certs_pem(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>> {
    let path = path.as_ref();
    parse_certs(&read(path)?, &path.display().to_string())
}

/// Reads the first private key of a PEM file (see [`parse_key_pem`]).
///
/// # Errors
///
/// [`CertError::Io`] if the file cannot be read, otherwise as [`parse_key_pem`].
pub fn load_key_pem(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>> {
    let path = path.as_ref();
    parse_key(&read(path)?, &path.display().to_string())
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn parse_certs(pem: &[u8], source_name: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(source_name, &error))?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            source_name: source_name.to_owned(),
        });
    }
    Ok(certs)
}

pub(crate) fn parse_key(pem: &[u8], source_name: &str) -> Result<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound)
            if contains(pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") =>
        {
            Err(CertError::Pem {
                source_name: source_name.to_owned(),
                reason: "encrypted private keys are not supported; decrypt it first \
                         (openssl pkcs8 -in KEY -out KEY.plain)"
                    .to_owned(),
            })
        }
        Err(pem::Error::NoItemsFound) => Err(CertError::NoPrivateKey {
            source_name: source_name.to_owned(),
        }),
        Err(error) => Err(pem_error(source_name, &error)),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn pem_error(source_name: &str, error: &pem::Error) -> CertError {
    let reason = match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("missing end line {:?}", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(reason) => format!("bad base64 ({reason})"),
        other => other.to_string(),
    };
    CertError::Pem {
        source_name: source_name.to_owned(),
        reason,
    }
}

/// Encodes certificates as consecutive `CERTIFICATE` blocks.
pub(crate) fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        encode_block(&mut out, "CERTIFICATE", cert.as_ref());
    }
    out
}

/// Encodes a private key with the label of its format.
pub(crate) fn key_to_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        // PKCS#8, and any future format, which this crate never produces.
        _ => "PRIVATE KEY",
    };
    let mut out = String::new();
    encode_block(&mut out, label, key.secret_der());
    out
}

/// Appends one PEM block (RFC 7468: base64 with 64 characters a line, LF line ends),
/// encoded by the `pem` crate.
pub(crate) fn encode_block(out: &mut String, label: &str, der: &[u8]) {
    let block = ::pem::Pem::new(label, der);
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    out.push_str(&::pem::encode_config(&block, config));
}

/// Encodes a certificate revocation list as PEM (`-----BEGIN X509 CRL-----`), the form
/// `openssl crl` and `qymux_tls::Crls` read.
pub fn crl_to_pem(crl: &rustls_pki_types::CertificateRevocationListDer<'_>) -> String {
    let mut out = String::new();
    encode_block(&mut out, "X509 CRL", crl.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_BLOCK: &str = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";

    #[test]
    fn encoding_round_trips_through_the_parser_at_every_length() {
        for len in 0..200usize {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let text = certs_to_pem(&[CertificateDer::from(der.clone())]);
            assert!(text.lines().all(|line| line.len() <= 64), "{text}");
            if len == 0 {
                continue;
            }
            let parsed = parse_certs_pem(&text, "test").unwrap();
            assert_eq!(parsed.len(), 1);
            assert_eq!(parsed[0].as_ref(), &der[..]);
        }
    }

    #[test]
    fn certificates_are_all_read_in_order_around_other_text() {
        let text = format!(
            "leading text\n{CERT_BLOCK}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n\
             -----BEGIN CERTIFICATE-----\nBgcI\n-----END CERTIFICATE-----\ntrailing\n"
        );
        let certs = parse_certs_pem(&text, "chain").unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].as_ref(), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(certs[1].as_ref(), &[6, 7, 8]);
    }

    #[test]
    fn missing_certificates_and_keys_are_reported_by_name() {
        for input in [
            "",
            "garbage, not PEM at all",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            match parse_certs_pem(input, "input.pem") {
                Err(CertError::NoCertificate { source_name }) => {
                    assert_eq!(source_name, "input.pem")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        for input in ["", "garbage, not PEM at all", CERT_BLOCK] {
            match parse_key_pem(input, "input.key") {
                Err(CertError::NoPrivateKey { source_name }) => {
                    assert_eq!(source_name, "input.key")
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_pem_is_a_pem_error() {
        let bad = [
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n",
            "-----BEGIN CERTIFICATE\nAAECAwQF\n-----END CERTIFICATE-----\n",
        ];
        for input in bad {
            match parse_certs_pem(input, "bad.pem") {
                Err(error @ CertError::Pem { .. }) => {
                    assert!(
                        error.to_string().starts_with("bad.pem: invalid PEM: "),
                        "{error}"
                    )
                }
                other => panic!("{input:?}: {other:?}"),
            }
        }
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        match parse_key_pem(encrypted, "enc.key") {
            Err(CertError::Pem { reason, .. }) => assert!(reason.contains("encrypted"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_key_format_is_accepted_and_keeps_its_label() {
        for (label, check) in [
            (
                "PRIVATE KEY",
                (|k: &PrivateKeyDer<'_>| matches!(k, PrivateKeyDer::Pkcs8(_)))
                    as fn(&PrivateKeyDer<'_>) -> bool,
            ),
            ("RSA PRIVATE KEY", |k| matches!(k, PrivateKeyDer::Pkcs1(_))),
            ("EC PRIVATE KEY", |k| matches!(k, PrivateKeyDer::Sec1(_))),
        ] {
            let text =
                format!("{CERT_BLOCK}-----BEGIN {label}-----\nAAECAwQF\n-----END {label}-----\n");
            let key = parse_key_pem(&text, "k").unwrap();
            assert!(check(&key), "{label}");
            assert_eq!(key.secret_der(), &[0, 1, 2, 3, 4, 5]);
            assert_eq!(
                key_to_pem(&key),
                format!("-----BEGIN {label}-----\nAAECAwQF\n-----END {label}-----\n")
            );
        }
    }

    #[test]
    fn loading_a_missing_file_is_an_io_error_naming_it() {
        let path = std::env::temp_dir().join("qymux-cert-test-does-not-exist/none.pem");
        match load_certs_pem(&path) {
            Err(error @ CertError::Io { .. }) => {
                assert!(error.to_string().contains("none.pem"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(load_key_pem(&path), Err(CertError::Io { .. })));
    }
}
