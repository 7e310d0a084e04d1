//! Applying the execution control list to an opened image: verify its
//! signatures against the ECL's keyring, then let [`slurm_conf::ecl::decide`]
//! judge. The caller passes the file it will serve, so the bytes checked are
//! the bytes served; an image the caller could still change is refused.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sif::Image;
use sif::integrity::clearsign::Keyring;
use sif::integrity::verify::{Verifier, VerifyOptions};
use slurm_conf::ecl::{Decision, Ecl, Evidence, decide};

/// Why the ECL could not be applied at all (not a denial).
#[derive(Debug, thiserror::Error)]
pub enum EclError {
    #[error("ECL keyring: {0}")]
    Keyring(String),
    #[error("{}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: sif::Error,
    },
}

/// What verification establishes about `image` for the ECL.
pub fn evidence<R: sif::ReadAt>(image: &Image<R>, ring: &Keyring, legacy: bool) -> Evidence {
    let mut unvalidated = Vec::new();
    let opts = VerifyOptions {
        legacy,
        ..VerifyOptions::default()
    };
    let result = Verifier::new(image, ring).verify(&opts, |_, fp| {
        if let Some(fp) = fp {
            unvalidated.push(fp);
        }
        true
    });
    match result {
        Err(e) => Evidence {
            failure: Some(e.to_string()),
            unvalidated,
            ..Evidence::default()
        },
        Ok(checks) if legacy => Evidence {
            tasks: vec![(
                "the primary partition".into(),
                checks.iter().map(|c| c.fingerprint).collect(),
            )],
            unvalidated,
            failure: None,
        },
        Ok(checks) => {
            let tasks = image
                .group_ids()
                .into_iter()
                .map(|g| {
                    let fps = checks
                        .iter()
                        .filter(|c| {
                            image
                                .descriptor(c.signature)
                                .is_ok_and(|d| d.link() == sif::Link::Group(g))
                        })
                        .map(|c| c.fingerprint)
                        .filter(|fp| *fp != [0; 20])
                        .collect();
                    (format!("object group {g}"), fps)
                })
                .collect();
            Evidence {
                tasks,
                unvalidated,
                failure: None,
            }
        }
    }
}

/// The path the open file really has (symlinks resolved).
fn real_path(file: &File) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Checks `file` (opened from `shown`) against `ecl`. `keyring_owner` is
/// the uid the keyring must belong to (root; `None` only in tests).
pub fn check(
    file: &File,
    shown: &Path,
    ecl: &Ecl,
    keyring_owner: Option<u32>,
) -> Result<Decision, EclError> {
    if !ecl.activated {
        return Ok(decide(ecl, Path::new("/"), &Evidence::default()));
    }
    let path = real_path(file).unwrap_or_else(|| shown.to_owned());
    let dir = path.parent().unwrap_or(Path::new("/")).to_owned();
    // The bytes checked must stay the bytes served (root can change any
    // file; the check is for the users the ECL constrains).
    if !nix::unistd::geteuid().is_root()
        && nix::unistd::faccessat(
            nix::fcntl::AT_FDCWD,
            &path,
            nix::unistd::AccessFlags::W_OK,
            nix::fcntl::AtFlags::AT_EACCESS,
        )
        .is_ok()
    {
        return Ok(Decision {
            allowed: false,
            group: None,
            reason: format!(
                "{} is writable by you; with the ECL activated only images you cannot change run",
                path.display()
            ),
        });
    }
    let ring_path = ecl
        .keyring
        .as_ref()
        .ok_or_else(|| EclError::Keyring("no keyring configured".into()))?;
    let bytes = slurm_conf::admin::read_trusted(ring_path, keyring_owner)
        .map_err(|e| EclError::Keyring(e.to_string()))?;
    let ring = Keyring::from_bytes(&bytes)
        .map_err(|e| EclError::Keyring(format!("{}: {e}", ring_path.display())))?;
    let image = Image::open(file).map_err(|source| EclError::Image {
        path: shown.to_owned(),
        source,
    })?;
    Ok(decide(
        ecl,
        &dir,
        &evidence(&image, &ring, ecl.legacy_insecure),
    ))
}
