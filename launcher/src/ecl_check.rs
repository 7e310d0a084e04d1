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
    // The bytes checked must stay the bytes served: an image the caller
    // owns or others may write could change after the check (item 1).
    let owners = crate::pin::Owners {
        listed: &ecl.owners,
        user: nix::unistd::geteuid().as_raw(),
    };
    if let Err(e) = crate::pin::check(file, owners) {
        return Ok(Decision {
            allowed: false,
            group: None,
            reason: format!(
                "{}: {e} (with the ECL activated only images you cannot change run)",
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

/// The verifier's answer: the decision and, when allowed, the bounds of
/// the verified primary partition (the only bytes that are then served).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the image may run.
    pub allowed: bool,
    /// The execgroup that decided.
    pub group: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// The primary partition's offset in the file.
    pub offset: u64,
    /// The primary partition's size.
    pub size: u64,
}

impl Verdict {
    fn denied(reason: String) -> Verdict {
        Verdict {
            allowed: false,
            group: None,
            reason,
            offset: 0,
            size: 0,
        }
    }

    /// The wire form: five lines.
    pub fn encode(&self) -> String {
        let line = |s: &str| s.replace(['\n', '\r'], " ");
        format!(
            "sifrun-verdict-1\n{}\n{} {}\n{}\n{}\n",
            if self.allowed { "allow" } else { "deny" },
            self.offset,
            self.size,
            self.group
                .as_deref()
                .map(|g| format!("g:{}", line(g)))
                .unwrap_or_default(),
            line(&self.reason)
        )
    }

    /// Reads [`Verdict::encode`]'s form; anything else is an error.
    pub fn decode(text: &str) -> Result<Verdict, String> {
        let bad = || {
            format!(
                "malformed verdict {:?}",
                text.chars().take(200).collect::<String>()
            )
        };
        let mut lines = text.split('\n');
        if lines.next() != Some("sifrun-verdict-1") {
            return Err(bad());
        }
        let allowed = match lines.next() {
            Some("allow") => true,
            Some("deny") => false,
            _ => return Err(bad()),
        };
        let (offset, size) = lines
            .next()
            .and_then(|l| l.split_once(' '))
            .and_then(|(o, s)| Some((o.parse().ok()?, s.parse().ok()?)))
            .ok_or_else(bad)?;
        let group = lines.next().ok_or_else(bad)?;
        let reason = lines.next().ok_or_else(bad)?.to_owned();
        if lines.next() != Some("") || lines.next().is_some() {
            return Err(bad());
        }
        Ok(Verdict {
            allowed,
            group: group.strip_prefix("g:").map(str::to_owned),
            reason,
            offset,
            size,
        })
    }
}

/// Judges `file` (found in directory `dir`) against `ecl` with the
/// keyring's bytes: parse, verify, decide, and find the primary
/// partition's bounds. Run by the unprivileged verifier.
pub fn judge(file: &File, dir: &Path, ecl: &Ecl, keyring: &[u8]) -> Verdict {
    let ring = match Keyring::from_bytes(keyring) {
        Ok(r) => r,
        Err(e) => return Verdict::denied(format!("ECL keyring: {e}")),
    };
    let image = match Image::open(file) {
        Ok(i) => i,
        Err(e) => return Verdict::denied(e.to_string()),
    };
    let d = decide(ecl, dir, &evidence(&image, &ring, ecl.legacy_insecure));
    let part = image.primary_partition().and_then(|p| {
        let fs = p.partition()?.fs_type;
        Ok((p.offset(), p.size(), fs))
    });
    match part {
        Ok((offset, size, fs)) if fs == sif::FsType::SQUASHFS => Verdict {
            allowed: d.allowed,
            group: d.group,
            reason: d.reason,
            offset,
            size,
        },
        Ok((_, _, fs)) if d.allowed => {
            Verdict::denied(format!("the primary partition is {fs}, not squashfs"))
        }
        Err(e) if d.allowed => Verdict::denied(e.to_string()),
        _ => Verdict {
            allowed: false,
            group: d.group,
            reason: d.reason,
            offset: 0,
            size: 0,
        },
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_and_garbage_is_refused() {
        let v = Verdict {
            allowed: true,
            group: Some("site\nimages".into()),
            reason: "signed by\nA".into(),
            offset: 4096,
            size: 123,
        };
        let back = Verdict::decode(&v.encode()).unwrap();
        assert!(back.allowed && back.offset == 4096 && back.size == 123);
        assert_eq!(back.group.as_deref(), Some("site images"));
        assert_eq!(back.reason, "signed by A");
        let denied = Verdict::denied("no".into());
        assert_eq!(Verdict::decode(&denied.encode()).unwrap(), denied);
        for bad in [
            "",
            "allow",
            "sifrun-verdict-1\nallow\n1 2\n\nr\nextra\n",
            "sifrun-verdict-1\nmaybe\n1 2\n\nr\n",
        ] {
            assert!(Verdict::decode(bad).is_err(), "{bad:?}");
        }
    }
}
