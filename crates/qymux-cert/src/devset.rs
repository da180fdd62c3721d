//! A development set of certificates in one directory: what `cargo xtask cert` and
//! `qymux cert` write.

use std::path::{Path, PathBuf};

use crate::files::{Output, write_all};
use crate::{CertError, CertificateAuthority, Fingerprint, Identity, Result};

/// The files [`write_dev_set`] writes, in the order they are written.
pub const DEV_SET_FILES: [&str; 6] = [
    "ca.pem",
    "ca.key",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];

/// What [`write_dev_set`] makes: the names in the certificates, and whether existing
/// files may be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSetOptions {
    /// The CA's common name (default `Qymux Development CA`).
    pub ca_name: String,
    /// The server certificate's names, DNS names or IP addresses (default `localhost`,
    /// `127.0.0.1`, `::1`).
    pub server_names: Vec<String>,
    /// The client (agent) certificate's common name, also its DNS name when it is a
    /// valid one (default `qymux-agent`).
    pub client_name: String,
    /// Replace files that exist already (default: refuse, and write nothing).
    pub overwrite: bool,
    /// How long the server and client certificates are valid, in days (default: the
    /// CA's default leaf validity).
    pub days: Option<u32>,
}

impl Default for DevSetOptions {
    fn default() -> Self {
        Self {
            ca_name: "Qymux Development CA".to_owned(),
            server_names: ["localhost", "127.0.0.1", "::1"]
                .map(str::to_owned)
                .to_vec(),
            client_name: "qymux-agent".to_owned(),
            overwrite: false,
            days: None,
        }
    }
}

/// What [`write_dev_set`] wrote: the fingerprints of the three certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevSet {
    /// The CA certificate's SHA-256 fingerprint.
    pub ca: Fingerprint,
    /// The server certificate's SHA-256 fingerprint (what a dialer can pin).
    pub server: Fingerprint,
    /// The client certificate's SHA-256 fingerprint.
    pub client: Fingerprint,
}

/// The files of [`DEV_SET_FILES`] that exist in `dir` already (a dangling symlink
/// counts).
pub fn existing_dev_set_files(dir: &Path) -> Vec<PathBuf> {
    DEV_SET_FILES
        .iter()
        .map(|name| dir.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .collect()
}

/// Makes a CA, a server certificate and a client certificate signed by it, and writes
/// them with their keys into `dir` (created if missing) as the six files of
/// [`DEV_SET_FILES`]; keys get mode `0600` on Unix. Everything is made before anything
/// is written, so a bad name leaves no files behind; the six files are written to
/// temporary files beside their targets and moved into place only when all are written,
/// so a failure leaves the old set (or none) rather than a mix; the server files are
/// read back to check the write.
///
/// # Errors
///
/// Without [`DevSetOptions::overwrite`], [`CertError::AlreadyExists`] naming the first
/// of the files that exist, and nothing is written. [`CertError::InvalidName`] for a
/// name that cannot be used, [`CertError::Symlink`] if a target is a symbolic link
/// (even with `overwrite`), [`CertError::Io`] if writing fails.
pub fn write_dev_set(dir: &Path, options: &DevSetOptions) -> Result<DevSet> {
    if !options.overwrite
        && let Some(path) = existing_dev_set_files(dir).into_iter().next()
    {
        return Err(CertError::AlreadyExists { path });
    }
    let server_names: Vec<&str> = options.server_names.iter().map(String::as_str).collect();
    let mut ca = CertificateAuthority::new(&options.ca_name)?;
    if let Some(days) = options.days {
        ca = ca.with_leaf_validity_days(days)?;
    }
    let server = ca.issue_server(&server_names)?;
    let client = ca.issue_client(&options.client_name)?;

    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let path = |name: &str| dir.join(name);
    // All six files or none: a failure never leaves a key beside a certificate it does
    // not belong to, nor a server certificate that the CA file beside it did not sign.
    let pems = [
        ("ca.pem", ca.cert_pem(), false),
        ("ca.key", ca.key_pem(), true),
        ("server.pem", server.cert_pem(), false),
        ("server.key", server.key_pem(), true),
        ("client.pem", client.cert_pem(), false),
        ("client.key", client.key_pem(), true),
    ];
    let paths: Vec<PathBuf> = pems.iter().map(|(name, _, _)| path(name)).collect();
    let outputs: Vec<Output<'_>> = pems
        .iter()
        .zip(&paths)
        .map(|((_, pem, secret), path)| Output {
            path,
            contents: pem.as_bytes(),
            secret: *secret,
        })
        .collect();
    write_all(&outputs, options.overwrite)?;

    let again = Identity::load_pem_files(path("server.pem"), path("server.key"))?;
    if again.fingerprint() != server.fingerprint() {
        return Err(CertError::InvalidCertificate {
            source_name: path("server.pem").display().to_string(),
            reason: "does not hold what was written".to_owned(),
        });
    }
    Ok(DevSet {
        ca: ca.fingerprint(),
        server: server.fingerprint(),
        client: client.fingerprint(),
    })
}

/// The next update of a CRL written by [`write_crl`] without a number of days.
pub const DEFAULT_CRL_DAYS: u32 = 7;

/// What [`write_crl`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlWritten {
    /// The file written: `crl.pem` in the directory.
    pub path: PathBuf,
    /// The fingerprints of the certificates it revokes, in order.
    pub revoked: Vec<Fingerprint>,
}

/// Signs a certificate revocation list with the CA in `dir` (`ca.pem`, `ca.key`, as
/// [`write_dev_set`] writes them) and writes it to `dir/crl.pem`, replacing it. It
/// revokes the first certificate of each PEM file in `revoke` (none: a CRL that revokes
/// nothing) and names its next update `days` days ahead ([`DEFAULT_CRL_DAYS`] if
/// `None`). What `cargo xtask cert --crl` and `qymux cert --crl` do.
///
/// # Errors
///
/// [`CertError::Io`] if a file cannot be read or written, the PEM errors for files
/// without a certificate or key, and [`CertError::InvalidCertificate`] for a
/// certificate this CA did not issue.
pub fn write_crl(dir: &Path, revoke: &[PathBuf], days: Option<u32>) -> Result<CrlWritten> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    let ca = CertificateAuthority::from_pem(&read("ca.pem")?, &read("ca.key")?)?;
    let mut certs = Vec::with_capacity(revoke.len());
    for path in revoke {
        let first = crate::pem::load_certs_pem(path)?.into_iter().next();
        // load_certs_pem fails on a file without a certificate, so there is a first.
        certs.extend(first);
    }
    let refs: Vec<_> = certs.iter().collect();
    let list = ca.revocation_list(&refs, days.unwrap_or(DEFAULT_CRL_DAYS))?;
    let path = dir.join("crl.pem");
    std::fs::write(&path, crate::pem::crl_to_pem(&list)).map_err(|source| CertError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(CrlWritten {
        path,
        revoked: certs.iter().map(Fingerprint::of).collect(),
    })
}
