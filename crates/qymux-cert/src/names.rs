//! The names a certificate is valid for.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;

use crate::{CertificateDer, Result, x509};

/// The names in a certificate: its subject's common name and its subject alternative
/// names (DNS names and IP addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    /// The subject's common name, if it has one (the first, if several).
    pub common_name: Option<String>,
    /// The DNS names among the subject alternative names.
    pub dns_names: Vec<String>,
    /// The IP addresses among the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
}

impl CertNames {
    /// Reads the names of a DER certificate.
    ///
    /// # Errors
    ///
    /// [`CertError::InvalidCertificate`](crate::CertError::InvalidCertificate) if it is
    /// not a valid X.509 certificate.
    pub fn of(cert: &CertificateDer<'_>) -> Result<Self> {
        let parsed = x509::parse(cert, "certificate")?;
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut names = CertNames {
            common_name,
            ..CertNames::default()
        };
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => {
                            let b: [u8; 4] = (*bytes).try_into().unwrap_or_default();
                            names.ip_addresses.push(IpAddr::from(b));
                        }
                        16 => {
                            let b: [u8; 16] = (*bytes).try_into().unwrap_or_default();
                            names.ip_addresses.push(IpAddr::from(b));
                        }
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(names)
    }

    /// Whether `name` is the common name or one of the DNS names (DNS names compared
    /// without regard to ASCII case; no wildcard matching).
    pub fn has_name(&self, name: &str) -> bool {
        self.common_name.as_deref() == Some(name)
            || self.dns_names.iter().any(|d| d.eq_ignore_ascii_case(name))
    }
}

#[cfg(all(test, feature = "cert-gen"))]
mod tests {
    use super::CertNames;
    use crate::CertificateAuthority;

    #[test]
    fn names_of_issued_certificates() {
        let ca = CertificateAuthority::new("Names CA").unwrap();
        let server = ca.issue_server(&["tunnel.example", "127.0.0.1"]).unwrap();
        let names = CertNames::of(server.end_entity()).unwrap();
        assert_eq!(names.common_name.as_deref(), Some("tunnel.example"));
        assert_eq!(names.dns_names, ["tunnel.example"]);
        assert_eq!(
            names.ip_addresses,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        let client = ca.issue_client("agent-1").unwrap();
        let names = CertNames::of(client.end_entity()).unwrap();
        assert!(names.has_name("agent-1") && names.has_name("AGENT-1"));
        assert!(!names.has_name("agent-2"));
    }
}
