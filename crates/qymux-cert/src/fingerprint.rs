//! SHA-256 certificate fingerprints.

use std::fmt;
use std::str::FromStr;

use rustls_pki_types::CertificateDer;

use crate::{CertError, Result};

/// The SHA-256 digest of a DER-encoded certificate, as used for pinning.
///
/// It is displayed as 64 lowercase hex digits without separators:
///
/// ```
/// # use qymux_cert::Fingerprint;
/// let fp = Fingerprint([0xab; 32]);
/// assert_eq!(fp.to_string(), "ab".repeat(32));
/// ```
///
/// Parsing is lenient about the form people paste: upper- or lowercase hex, with or
/// without `:` between the bytes, with an optional `sha256:` prefix (any case) and
/// surrounding whitespace. The whole line that `openssl x509 -noout -fingerprint
/// -sha256` prints (`sha256 Fingerprint=AB:CD:…`) is accepted too.
///
/// ```
/// # use qymux_cert::Fingerprint;
/// let plain: Fingerprint = "ab".repeat(32).parse()?;
/// let colons: Fingerprint = vec!["AB"; 32].join(":").parse()?;
/// let prefixed: Fingerprint = format!("SHA256:{}", "ab".repeat(32)).parse()?;
/// assert_eq!(plain, colons);
/// assert_eq!(plain, prefixed);
/// # Ok::<(), qymux_cert::CertError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Computes the fingerprint of a DER-encoded certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        use crate::crypto::digest;
        let digest = digest::digest(&digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        // A SHA-256 digest is always 32 bytes long.
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether this is the fingerprint of `cert`.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        *self == Self::of(cert)
    }
}

impl From<[u8; 32]> for Fingerprint {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl AsRef<[u8]> for Fingerprint {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl FromStr for Fingerprint {
    type Err = CertError;

    fn from_str(input: &str) -> Result<Self> {
        let mut text = input.trim();
        // `openssl x509 -fingerprint -sha256` prints `sha256 Fingerprint=AB:CD:…`.
        if let Some((label, value)) = text.split_once('=')
            && label.trim().eq_ignore_ascii_case("sha256 fingerprint")
        {
            text = value.trim();
        }
        let text = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
            _ => text,
        };
        if text.is_empty() {
            return Err(invalid("empty input"));
        }

        let mut bytes = [0u8; 32];
        if text.contains(':') {
            let mut count = 0;
            for (index, group) in text.split(':').enumerate() {
                let &[high, low] = group.as_bytes() else {
                    return Err(invalid(format!(
                        "colon-separated form needs exactly two hex digits per byte, \
                         byte {} is {group:?}",
                        index + 1
                    )));
                };
                if index < bytes.len() {
                    bytes[index] = hex_byte(high, low)?;
                }
                count += 1;
            }
            if count != bytes.len() {
                return Err(invalid(format!("expected 32 bytes, got {count}")));
            }
        } else {
            let digits = text.as_bytes();
            if digits.len() != 64 {
                return Err(invalid(format!(
                    "expected 64 hex digits, got {} characters",
                    text.chars().count()
                )));
            }
            for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
                *byte = hex_byte(pair[0], pair[1])?;
            }
        }
        Ok(Self(bytes))
    }
}

fn invalid(reason: impl Into<String>) -> CertError {
    CertError::InvalidFingerprint(reason.into())
}

fn hex_byte(high: u8, low: u8) -> Result<u8> {
    Ok(hex_digit(high)? << 4 | hex_digit(low)?)
}

fn hex_digit(digit: u8) -> Result<u8> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(invalid(if digit.is_ascii() {
            format!("{:?} is not a hex digit", char::from(digit))
        } else {
            "non-ASCII character".to_owned()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Fingerprint {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
        }
        Fingerprint(bytes)
    }

    #[test]
    fn display_is_64_lowercase_hex() {
        let text = sample().to_string();
        assert_eq!(text.len(), 64);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(format!("{:?}", sample()), format!("Fingerprint({text})"));
    }

    #[test]
    fn round_trips_in_every_accepted_form() {
        let fp = sample();
        let plain = fp.to_string();
        let upper = plain.to_uppercase();
        let colons =
            fp.0.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":");
        for text in [
            plain.clone(),
            upper.clone(),
            colons.clone(),
            colons.to_lowercase(),
            format!("sha256:{plain}"),
            format!("SHA256:{colons}"),
            format!("Sha256:{upper}"),
            format!("  {plain}\n"),
            format!("sha256 Fingerprint={colons}"),
            format!("SHA256 Fingerprint={colons}\n"),
        ] {
            assert_eq!(text.parse::<Fingerprint>().unwrap(), fp, "{text}");
        }
    }

    #[test]
    fn of_matches_known_sha256() {
        // SHA-256("abc"), FIPS 180-2 test vector.
        let fp = Fingerprint::of(&CertificateDer::from(&b"abc"[..]));
        assert_eq!(
            fp.to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(fp.matches(&CertificateDer::from(&b"abc"[..])));
        assert!(!fp.matches(&CertificateDer::from(&b"abd"[..])));
    }

    #[test]
    fn rejects_bad_input() {
        let plain = sample().to_string();
        let colons = sample()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>();
        let bad = [
            String::new(),
            "   ".to_owned(),
            "sha256:".to_owned(),
            plain[..62].to_owned(),
            format!("{plain}00"),
            format!("{}zz", &plain[..62]),
            format!("{}é", &plain[..62]),
            format!("{}éé", &plain[..60]),
            colons[..31].join(":"),
            format!("{}:00", colons.join(":")),
            format!("{}:", colons.join(":")),
            colons.join("::"),
            format!("{}:0", colons[..31].join(":")),
            format!("md5:{plain}"),
            format!("md5 Fingerprint={colons}", colons = colons.join(":")),
            format!("={plain}"),
        ];
        for text in bad {
            match text.parse::<Fingerprint>() {
                Err(CertError::InvalidFingerprint(reason)) => assert!(!reason.is_empty()),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
