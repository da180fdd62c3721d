//! `cargo xtask cert`: development certificates.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use qymux_cert::{DevSetOptions, Fingerprint, existing_dev_set_files, write_crl, write_dev_set};

use crate::cli::CertArgs;

/// Resolves `path` against the workspace root unless it is absolute.
pub(crate) fn resolve(root: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    }
}

/// The target files that exist already (a dangling symlink counts).
pub(crate) fn existing(dir: &Path) -> Vec<PathBuf> {
    existing_dev_set_files(dir)
}

/// Writes the set with `qymux_cert::write_dev_set`, the code `qymux cert` shares.
pub(crate) fn run(args: &CertArgs, root: &Path) -> Result<()> {
    if args.crl {
        return crl(args, root);
    }
    let dir = resolve(root, &args.out);
    if !args.force {
        let existing = existing(&dir);
        if !existing.is_empty() {
            let list = existing
                .iter()
                .map(|path| format!("  {}", path.display()))
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "refusing to overwrite existing file(s); nothing was written:\n{list}\n\
                 Pass --force to replace them, or --out DIR to write elsewhere."
            );
        }
    }
    let options = DevSetOptions {
        ca_name: args.ca_name.clone(),
        server_names: args.server_names.clone(),
        client_name: args.client_name.clone(),
        overwrite: args.force,
        days: args.days,
    };
    let set = write_dev_set(&dir, &options)
        .with_context(|| format!("writing certificates into {}", dir.display()))?;

    let server_desc = format!("server certificate for {}", args.server_names.join(", "));
    let client_desc = format!("client certificate CN={}", args.client_name);
    let ca_desc = format!("CA certificate CN={}", args.ca_name);
    println!("Wrote {}:", dir.display());
    print_pair("ca", &ca_desc, "CA private key", set.ca);
    print_pair("server", &server_desc, "server private key", set.server);
    print_pair("client", &client_desc, "client private key", set.client);
    println!();
    println!("Trust ca.pem on both sides (roots for the dialer, client roots for mTLS),");
    println!("or pin the server instead: sha256:{}", set.server);
    Ok(())
}

/// `cert --crl`: a CRL signed by the CA in the output directory, revoking `--revoke`
/// (`qymux_cert::write_crl`, the code `qymux cert --crl` shares).
fn crl(args: &CertArgs, root: &Path) -> Result<()> {
    let dir = resolve(root, &args.out);
    let revoke: Vec<PathBuf> = args.revoke.iter().map(|p| resolve(root, p)).collect();
    let written = write_crl(&dir, &revoke, args.days)
        .with_context(|| format!("writing a CRL into {}", dir.display()))?;
    println!(
        "Wrote {} revoking {} certificate(s):",
        written.path.display(),
        written.revoked.len()
    );
    for fingerprint in &written.revoked {
        println!("  SHA-256 {fingerprint}");
    }
    println!(
        "Load it with ServerTls::client_crl_files, and reload it (Crls::reload) when it changes."
    );
    Ok(())
}

fn print_pair(stem: &str, cert_desc: &str, key_desc: &str, fingerprint: Fingerprint) {
    println!("  {:<11} {cert_desc}", format!("{stem}.pem"));
    println!("  {:<11} SHA-256 {fingerprint}", "");
    let mode = if cfg!(unix) { " (mode 0600)" } else { "" };
    println!("  {:<11} {key_desc}{mode}", format!("{stem}.key"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use qymux_cert::CertificateAuthority;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("qymux-xtask-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn relative_paths_are_under_the_root() {
        let root = Path::new("/work/repo");
        assert_eq!(
            resolve(root, Path::new("certs")),
            PathBuf::from("/work/repo/certs")
        );
        assert_eq!(resolve(root, Path::new("/tmp/c")), PathBuf::from("/tmp/c"));
    }

    #[test]
    fn short_lived_certificates_and_a_crl() {
        let dir = TempDir::new("cert-crl");
        let mut args = CertArgs {
            out: dir.0.clone(),
            days: Some(3),
            ..CertArgs::default()
        };
        run(&args, Path::new("/")).unwrap();
        let client = std::fs::read_to_string(dir.0.join("client.pem")).unwrap();
        // Both leaves live three days (plus the hour they are backdated); the CA does not.
        for leaf in ["client.pem", "server.pem", "ca.pem"] {
            let cert = &qymux_cert::load_certs_pem(dir.0.join(leaf)).unwrap()[0];
            let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
            let validity = parsed.validity();
            let span = validity.not_after.timestamp() - validity.not_before.timestamp();
            if leaf == "ca.pem" {
                assert!(span > 365 * 86_400, "{leaf}: {span} s");
            } else {
                assert_eq!(span, 3 * 86_400 + 3_600, "{leaf}");
            }
        }

        args.crl = true;
        args.days = None;
        args.revoke = vec![dir.0.join("client.pem")];
        run(&args, Path::new("/")).unwrap();
        let crl = std::fs::read_to_string(dir.0.join("crl.pem")).unwrap();
        assert!(crl.starts_with("-----BEGIN X509 CRL-----\n"), "{crl}");
        assert!(crl.trim_end().ends_with("-----END X509 CRL-----"), "{crl}");
        // The file is what a server loads.
        let crls = qymux_tls::Crls::from_files([dir.0.join("crl.pem")]).unwrap();
        assert_eq!(crls.len(), 1);

        // A certificate of another CA cannot be revoked by this one.
        let other = CertificateAuthority::new("Other").unwrap();
        let stranger = dir.0.join("stranger.pem");
        std::fs::write(&stranger, other.issue_client("x").unwrap().cert_pem()).unwrap();
        args.revoke = vec![stranger];
        let error = format!("{:#}", run(&args, Path::new("/")).unwrap_err());
        assert!(error.contains("not issued by this CA"), "{error}");
        assert!(!client.is_empty());
    }

    #[test]
    fn writes_six_files_then_refuses_then_forces() {
        let dir = TempDir::new("cert");
        let mut args = CertArgs {
            out: dir.0.clone(),
            ..CertArgs::default()
        };
        run(&args, Path::new("/nonexistent-root")).unwrap();
        assert_eq!(existing(&dir.0).len(), 6);
        let ca_pem = std::fs::read_to_string(dir.0.join("ca.pem")).unwrap();
        let ca_key = std::fs::read_to_string(dir.0.join("ca.key")).unwrap();
        let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key).unwrap();

        let error = run(&args, Path::new("/")).unwrap_err().to_string();
        assert!(
            error.contains("ca.pem") && error.contains("--force"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.0.join("ca.pem")).unwrap(),
            ca_pem
        );

        // One file is enough to refuse, and nothing else is written.
        std::fs::remove_dir_all(&dir.0).unwrap();
        std::fs::create_dir_all(&dir.0).unwrap();
        std::fs::write(dir.0.join("client.key"), "mine").unwrap();
        let error = run(&args, Path::new("/")).unwrap_err().to_string();
        assert!(error.contains("client.key"), "{error}");
        assert_eq!(existing(&dir.0), [dir.0.join("client.key")]);

        args.force = true;
        run(&args, Path::new("/")).unwrap();
        assert_eq!(existing(&dir.0).len(), 6);
        let new_ca = std::fs::read_to_string(dir.0.join("ca.pem")).unwrap();
        assert_ne!(new_ca, ca.cert_pem());
    }

    /// What `cargo xtask cert` writes loads into qymux-tls and carries a real mTLS session.
    #[tokio::test]
    async fn written_files_carry_an_mtls_session() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let dir = TempDir::new("session");
        let args = CertArgs {
            out: dir.0.clone(),
            ..CertArgs::default()
        };
        run(&args, Path::new("/")).unwrap();
        let file = |name: &str| dir.0.join(name);

        let server = qymux_tls::ServerTls::from_pem_files(file("server.pem"), file("server.key"))
            .unwrap()
            .client_ca_file(file("ca.pem"))
            .unwrap()
            .build()
            .unwrap();
        let client = qymux_tls::ClientTls::with_ca_file(file("ca.pem"))
            .unwrap()
            .client_identity_files(file("client.pem"), file("client.key"))
            .unwrap()
            .build()
            .unwrap();
        let options = qymux_tcp::Options::default();
        let listener = qymux_tcp::Listener::bind("127.0.0.1:0", server, options.clone())
            .await
            .unwrap();
        let addr = listener.local_addr().to_string();
        // The default server names include localhost and 127.0.0.1.
        for name in ["localhost", "127.0.0.1"] {
            let (session, accepted) = tokio::join!(
                qymux_tcp::dial(&addr, name, client.clone(), &options),
                listener.accept()
            );
            let (session, accepted) = (session.unwrap(), accepted.unwrap());
            let identity = accepted.peer_identity().expect("client certificate");
            let client_pem = std::fs::read_to_string(file("client.pem")).unwrap();
            assert_eq!(
                identity.end_entity(),
                &qymux_cert::parse_certs_pem(&client_pem, "client.pem").unwrap()[0]
            );
            let mut stream = session.open().await.unwrap();
            stream.write_all(b"over xtask certificates").await.unwrap();
            stream.shutdown().await.unwrap();
            let mut got = String::new();
            accepted
                .accept()
                .await
                .unwrap()
                .read_to_string(&mut got)
                .await
                .unwrap();
            assert_eq!(got, "over xtask certificates");
        }
    }

    /// `--force` replaces files, but never writes a key through a symlink at its path.
    #[cfg(unix)]
    #[test]
    fn force_refuses_a_symlink_at_a_key_path() {
        let dir = TempDir::new("symlink");
        let mut args = CertArgs {
            out: dir.0.clone(),
            ..CertArgs::default()
        };
        run(&args, Path::new("/")).unwrap();
        let before: Vec<_> = existing(&dir.0)
            .iter()
            .map(|path| std::fs::read(path).unwrap())
            .collect();
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "not a key").unwrap();
        std::fs::remove_file(dir.0.join("server.key")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.0.join("server.key")).unwrap();

        args.force = true;
        let error = format!("{:#}", run(&args, Path::new("/")).unwrap_err());
        assert!(
            error.contains("symbolic link") && error.contains("server.key"),
            "{error}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "not a key");
        // Nothing of the set was replaced: the old files, the link, no temporary files.
        for (path, old) in existing(&dir.0).iter().zip(&before) {
            if !path.ends_with("server.key") {
                assert_eq!(&std::fs::read(path).unwrap(), old, "{}", path.display());
            }
        }
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 7);
    }

    #[test]
    fn a_bad_name_writes_nothing() {
        let dir = TempDir::new("badname");
        let args = CertArgs {
            out: dir.0.clone(),
            server_names: vec!["not a name".to_owned()],
            ..CertArgs::default()
        };
        let error = format!("{:#}", run(&args, Path::new("/")).unwrap_err());
        assert!(error.contains("not a name"), "{error}");
        assert!(!dir.0.exists());
    }
}
