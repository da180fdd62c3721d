//! Loading certificates and keys from bytes (qymux-cert, as qymux-tls uses it): PEM text,
//! and DER wrapped in PEM so that the X.509 and key checks see arbitrary DER. Nothing may
//! panic; what loads must round-trip through PEM unchanged; fingerprints parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qymux_cert::{CertificateAuthority, Fingerprint, Identity, parse_certs_pem, parse_key_pem};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// One PEM block around `der` (an independent encoder, not the crate's).
fn pem(label: &str, der: &[u8]) -> String {
    let mut b64 = Vec::new();
    for chunk in der.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

const KEY_LABELS: [&str; 3] = ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

fn check_identity(cert: &str, key: &str) {
    if let Ok(certs) = parse_certs_pem(cert, "fuzz") {
        assert!(!certs.is_empty(), "Ok without a certificate");
    }
    let _ = parse_key_pem(key, "fuzz");
    if let Ok(identity) = Identity::from_pem(cert, key) {
        let again = Identity::from_pem(&identity.cert_pem(), &identity.key_pem())
            .expect("an identity loads again from its own PEM");
        assert_eq!(again.cert_chain(), identity.cert_chain());
        assert_eq!(again.fingerprint(), identity.fingerprint());
        // The TLS layer takes it or says why; it does not panic.
        let _ = qymux_tls::ServerTls::new(identity.clone()).build();
        let _ = qymux_tls::ClientTls::with_ca(identity.cert_chain().to_vec())
            .client_identity(identity)
            .build();
    }
    if let Ok(ca) = CertificateAuthority::from_pem(cert, key) {
        let again = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem())
            .expect("a CA loads again from its own PEM");
        assert_eq!(again.fingerprint(), ca.fingerprint());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The certificate part and the key part, split at the first 0xff.
    let split = rest.iter().position(|b| *b == 0xff).unwrap_or(rest.len());
    let (a, b) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    if mode & 1 == 0 {
        // PEM text as a user would hand it over.
        let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
        check_identity(&a, &b);
        check_identity(&a, &a);
        if let Ok(fp) = a.parse::<Fingerprint>() {
            let again: Fingerprint = fp.to_string().parse().expect("a fingerprint parses back");
            assert_eq!(again, fp);
        }
    } else {
        // Arbitrary DER in well-formed PEM.
        let label = KEY_LABELS[usize::from(mode >> 1) % KEY_LABELS.len()];
        check_identity(&pem("CERTIFICATE", a), &pem(label, b));
    }
});
