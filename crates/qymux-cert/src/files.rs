//! Writing certificate and key files together: all or nothing, never through a symlink.
//!
//! Every file is first written in full to a temporary file in its target's directory
//! (keys created with mode `0600` on Unix), and only then moved into place. So a failure
//! while writing (a full disk, say) changes no target at all, and a key never sits beside
//! a certificate it does not belong to. A target that is a symbolic link is refused, even
//! when overwriting: the key would otherwise land wherever the link points.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CertError, Result};

/// One file to write.
pub(crate) struct Output<'a> {
    pub(crate) path: &'a Path,
    pub(crate) contents: &'a [u8],
    /// A private key: mode `0600` on Unix.
    pub(crate) secret: bool,
}

/// Writes a certificate file and its key file together (see [`write_all`]).
pub(crate) fn write_pair(
    cert_path: &Path,
    cert_pem: &str,
    key_path: &Path,
    key_pem: &str,
    overwrite: bool,
) -> Result<()> {
    write_all(
        &[
            Output {
                path: cert_path,
                contents: cert_pem.as_bytes(),
                secret: false,
            },
            Output {
                path: key_path,
                contents: key_pem.as_bytes(),
                secret: true,
            },
        ],
        overwrite,
    )
}

/// Writes every file of `outputs`, or none of them.
///
/// - A target that is a symbolic link (dangling or not) is refused with
///   [`CertError::Symlink`], and nothing is written.
/// - Without `overwrite`, a target that exists is refused with
///   [`CertError::AlreadyExists`], and nothing is written; a file that appears meanwhile
///   is not replaced either (the files are linked into place, which fails on an existing
///   name).
/// - The contents go to temporary files beside the targets first; only when all are
///   written and synced are they moved into place. If moving one fails, the ones moved
///   before it are put back as they were (the old files, or none).
pub(crate) fn write_all(outputs: &[Output<'_>], overwrite: bool) -> Result<()> {
    for output in outputs {
        check_target(output.path, overwrite)?;
    }
    let mut staged = Vec::with_capacity(outputs.len());
    for output in outputs {
        match stage(output) {
            Ok(temp) => staged.push(temp),
            Err(error) => {
                remove_all(&staged);
                return Err(error);
            }
        }
    }
    // Keep the old files reachable until every new one is in place.
    let mut backups: Vec<Option<PathBuf>> = Vec::with_capacity(outputs.len());
    for output in outputs {
        let backup = if overwrite && output.path.symlink_metadata().is_ok() {
            let backup = temp_path(output.path, "old");
            if let Err(source) = fs::hard_link(output.path, &backup) {
                remove_all(&staged);
                remove_all(&backups.iter().flatten().cloned().collect::<Vec<_>>());
                return Err(io_error(output.path, source));
            }
            Some(backup)
        } else {
            None
        };
        backups.push(backup);
    }
    for (done, (output, temp)) in outputs.iter().zip(&staged).enumerate() {
        let placed = if overwrite {
            fs::rename(temp, output.path)
        } else {
            fs::hard_link(temp, output.path).and_then(|()| fs::remove_file(temp))
        };
        if let Err(source) = placed {
            // Undo the ones already in place: the old file back, or no file.
            for (i, earlier) in outputs[..done].iter().enumerate() {
                match &backups[i] {
                    Some(backup) => {
                        let _ = fs::rename(backup, earlier.path);
                    }
                    None => {
                        let _ = fs::remove_file(earlier.path);
                    }
                }
            }
            remove_all(&staged[done..]);
            remove_all(
                &backups[done..]
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            let error = if source.kind() == io::ErrorKind::AlreadyExists {
                CertError::AlreadyExists {
                    path: output.path.to_owned(),
                }
            } else {
                io_error(output.path, source)
            };
            return Err(error);
        }
    }
    remove_all(&backups.into_iter().flatten().collect::<Vec<_>>());
    Ok(())
}

/// Refuses a symlink always, and an existing file without `overwrite`.
fn check_target(path: &Path, overwrite: bool) -> Result<()> {
    match path.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => Err(CertError::Symlink {
            path: path.to_owned(),
        }),
        Ok(_) if !overwrite => Err(CertError::AlreadyExists {
            path: path.to_owned(),
        }),
        Ok(meta) if meta.is_dir() => Err(io_error(
            path,
            io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
        )),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error(path, source)),
    }
}

/// Writes `output` to a new temporary file beside its target and syncs it.
fn stage(output: &Output<'_>) -> Result<PathBuf> {
    let temp = temp_path(output.path, "new");
    let mut options = OpenOptions::new();
    // `create_new` never follows a symlink, and never opens a file someone else made.
    options.write(true).create_new(true);
    #[cfg(unix)]
    if output.secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = output.secret;
    let written = options.open(&temp).and_then(|mut file: File| {
        file.write_all(output.contents)?;
        file.sync_all()
    });
    match written {
        Ok(()) => Ok(temp),
        Err(source) => {
            let _ = fs::remove_file(&temp);
            Err(io_error(output.path, source))
        }
    }
}

/// `.NAME.qymux-TAG-PID-N` in the target's directory (the same file system, so the move
/// into place is a rename).
fn temp_path(path: &Path, tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = format!(
        ".{name}.qymux-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    match path.parent() {
        Some(dir) => dir.join(temp),
        None => PathBuf::from(temp),
    }
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

fn io_error(path: &Path, source: io::Error) -> CertError {
    CertError::Io {
        path: path.to_owned(),
        source,
    }
}
