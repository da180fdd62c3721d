//! Certificate revocation lists: loaded from PEM or DER files, reloadable while a server
//! runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;

use crate::error::TlsError;

/// A set of certificate revocation lists (CRLs), shared by the configs that use it and
/// reloadable: [`reload`](Self::reload) re-reads the files it was loaded from and
/// [`replace`](Self::replace) swaps in new lists; every handshake that starts afterwards
/// is checked against the new set. Sessions already established are not touched (close
/// them yourself, or check them with an [`AllowList`](crate::AllowList)).
///
/// Give it to [`ServerTls::client_crls`](crate::ServerTls::client_crls) to revoke client
/// certificates (mTLS), or to [`ClientTls::server_crls`](crate::ClientTls::server_crls)
/// to revoke server certificates, and keep a clone to reload it:
///
/// ```no_run
/// use qymux_tls::{Crls, ServerTls};
///
/// let crls = Crls::from_files(["certs/agents.crl"])?;
/// let tls = ServerTls::from_pem_files("certs/server.pem", "certs/server.key")?
///     .client_ca_file("certs/ca.pem")?
///     .client_crls(crls.clone());
/// // ... later, when the CA published a new CRL (on SIGHUP, or when the file changes):
/// crls.reload()?; // a bad file is an error, and the previous lists stay in force
/// # Ok::<(), qymux_tls::TlsError>(())
/// ```
///
/// The checks are rustls's (webpki's): every certificate of the path is checked, a
/// certificate whose issuer has no CRL in the set is refused ("unknown revocation
/// status"), and a CRL past its next-update time is still used (publish new ones in time
/// and reload them). An empty set checks nothing.
#[derive(Clone, Default)]
pub struct Crls {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    files: Vec<PathBuf>,
    current: RwLock<Arc<CrlSet>>,
}

/// One version of the lists, parsed.
#[derive(Default)]
pub(crate) struct CrlSet {
    /// Increases with every reload or replace, so verifiers know to rebuild.
    pub(crate) generation: u64,
    pub(crate) ders: Vec<CertificateRevocationListDer<'static>>,
    pub(crate) parsed: Vec<webpki::CertRevocationList<'static>>,
}

impl Crls {
    /// An empty set (nothing revoked); fill it later with [`replace`](Self::replace).
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding these CRLs (DER). Not tied to files: [`reload`](Self::reload) keeps
    /// it as it is.
    ///
    /// # Errors
    ///
    /// [`TlsError::Crl`] if one of them is not a CRL webpki can use.
    pub fn from_ders(crls: Vec<CertificateRevocationListDer<'static>>) -> Result<Self, TlsError> {
        let set = parse_all(crls, |i| format!("CRL #{}", i + 1))?;
        Ok(Self {
            inner: Arc::new(Inner {
                files: Vec::new(),
                current: RwLock::new(Arc::new(CrlSet {
                    generation: 1,
                    ..set
                })),
            }),
        })
    }

    /// Loads CRLs from files: each holds one or more PEM blocks (`-----BEGIN X509
    /// CRL-----`) or a single DER-encoded CRL. [`reload`](Self::reload) reads the same
    /// files again.
    ///
    /// # Errors
    ///
    /// [`TlsError::Crl`] naming the file if it cannot be read, holds no CRL, or holds one
    /// that is not usable.
    pub fn from_files<P: AsRef<Path>>(
        paths: impl IntoIterator<Item = P>,
    ) -> Result<Self, TlsError> {
        let files: Vec<PathBuf> = paths.into_iter().map(|p| p.as_ref().to_owned()).collect();
        let set = load_files(&files)?;
        Ok(Self {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(Arc::new(CrlSet {
                    generation: 1,
                    ..set
                })),
            }),
        })
    }

    /// Reads the files this set was loaded from again and puts their CRLs in force for
    /// every handshake from now on. On error, nothing changes.
    ///
    /// # Errors
    ///
    /// As [`from_files`](Self::from_files).
    pub fn reload(&self) -> Result<(), TlsError> {
        if self.inner.files.is_empty() {
            return Ok(());
        }
        let set = load_files(&self.inner.files)?;
        self.install(set);
        tracing::info!(files = ?self.inner.files, crls = self.len(), "CRLs reloaded");
        Ok(())
    }

    /// Replaces the CRLs in force (for every handshake from now on). On error, nothing
    /// changes.
    ///
    /// # Errors
    ///
    /// [`TlsError::Crl`] if one of them is not a CRL webpki can use.
    pub fn replace(
        &self,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), TlsError> {
        let set = parse_all(crls, |i| format!("CRL #{}", i + 1))?;
        self.install(set);
        Ok(())
    }

    /// How many CRLs are in force.
    pub fn len(&self) -> usize {
        self.snapshot().ders.len()
    }

    /// Whether no CRL is in force (nothing is checked).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The CRLs in force now.
    pub(crate) fn snapshot(&self) -> Arc<CrlSet> {
        match self.inner.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn install(&self, set: CrlSet) {
        let mut current = match self.inner.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        let generation = current.generation + 1;
        *current = Arc::new(CrlSet { generation, ..set });
    }
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.snapshot();
        f.debug_struct("Crls")
            .field("files", &self.inner.files)
            .field("crls", &set.ders.len())
            .field("generation", &set.generation)
            .finish()
    }
}

fn load_files(files: &[PathBuf]) -> Result<CrlSet, TlsError> {
    let mut all = Vec::new();
    let mut names = Vec::new();
    for path in files {
        let crls = read_file(path)?;
        names.extend((0..crls.len()).map(|i| format!("{} (CRL #{})", path.display(), i + 1)));
        all.extend(crls);
    }
    parse_all(all, |i| names[i].clone())
}

/// One file's CRLs: PEM blocks if it looks like PEM, otherwise one DER CRL.
fn read_file(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let error = |reason: String| TlsError::Crl {
        source_name: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let is_pem = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|start| bytes[start..].starts_with(b"-----BEGIN"));
    if !is_pem {
        if bytes.is_empty() {
            return Err(error("empty file".into()));
        }
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("invalid PEM: {e}")))?;
    if crls.is_empty() {
        return Err(error("no X509 CRL block found".into()));
    }
    Ok(crls)
}

fn parse_all(
    ders: Vec<CertificateRevocationListDer<'static>>,
    name: impl Fn(usize) -> String,
) -> Result<CrlSet, TlsError> {
    let mut parsed = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let crl =
            webpki::OwnedCertRevocationList::from_der(der.as_ref()).map_err(|e| TlsError::Crl {
                source_name: name(i),
                reason: format!("not a usable CRL ({e})"),
            })?;
        parsed.push(webpki::CertRevocationList::from(crl));
    }
    Ok(CrlSet {
        generation: 0,
        ders,
        parsed,
    })
}
