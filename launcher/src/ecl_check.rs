//! Applying the execution control list to an opened image: verify its
//! signatures against the ECL's keyring and listed certificates, then let
//! [`slurm_conf::ecl::decide`] judge. The caller passes the file it will
//! serve, so the bytes checked are the bytes served; an image the caller
//! could still change is refused.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sif::Image;
use sif::integrity::certificate::{self, Roots};
use sif::integrity::clearsign::Keyring;
use sif::integrity::dsse::PublicKey;
use sif::integrity::verify::{Verifier, VerifyOptions};
use slurm_conf::ecl::{Decision, Ecl, Evidence, Signer, decide};

/// Why the ECL could not be applied at all (not a denial).
#[derive(Debug, thiserror::Error)]
pub enum EclError {
    #[error("ECL keyring: {0}")]
    Keyring(String),
    #[error("ECL certificate: {0}")]
    Certificate(String),
    #[error("{}: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: sif::Error,
    },
}

/// The admin files an activated ECL names (keyring, listed certificates,
/// roots, intermediates), read by the caller with the trusted-path rules:
/// the bytes the verifier judges with. On the privileged path root reads
/// them and the unprivileged verifier parses them.
#[derive(Clone, Debug, Default)]
pub struct TrustFiles {
    /// The OpenPGP keyring (empty when the ECL names none).
    pub keyring: Vec<u8>,
    /// Every certificate an execgroup lists, by its path in the ECL.
    pub certificates: Vec<(PathBuf, Vec<u8>)>,
    /// `certificate_roots`.
    pub roots: Option<Vec<u8>>,
    /// `certificate_intermediates`.
    pub intermediates: Option<Vec<u8>>,
}

impl TrustFiles {
    /// Reads the files `ecl` names; `owner` gives the uid each must belong
    /// to (root, or `None` only in tests) — see
    /// [`slurm_conf::admin::read_trusted`].
    pub fn read(ecl: &Ecl, owner: &dyn Fn(&Path) -> Option<u32>) -> Result<TrustFiles, EclError> {
        let read =
            |p: &Path| slurm_conf::admin::read_trusted(p, owner(p)).map_err(|e| e.to_string());
        let keyring = match &ecl.keyring {
            Some(p) => read(p).map_err(EclError::Keyring)?,
            None => Vec::new(),
        };
        let mut certificates: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for c in ecl.groups.iter().flat_map(|g| &g.certificates) {
            if !certificates.iter().any(|(p, _)| p == c) {
                certificates.push((c.clone(), read(c).map_err(EclError::Certificate)?));
            }
        }
        let optional = |p: &Option<PathBuf>| match p {
            Some(p) if !certificates.is_empty() => read(p).map(Some).map_err(EclError::Certificate),
            _ => Ok(None),
        };
        Ok(TrustFiles {
            roots: optional(&ecl.certificate_roots)?,
            intermediates: optional(&ecl.certificate_intermediates)?,
            keyring,
            certificates,
        })
    }
}

/// The parsed trust material: the keyring, and a DSSE key per listed
/// certificate with whether its certificate is valid now.
pub(crate) struct Trust {
    ring: Keyring,
    keys: Vec<PublicKey>,
    /// (the key's identity in signature checks, the signer, valid now)
    certificates: Vec<([u8; 20], Signer, bool)>,
    /// Why listed certificates are not valid now, for the denial.
    problems: Vec<String>,
    /// Until when, as far as time goes, the certificates' states hold.
    until: Until,
}

/// Until when a verdict holds as far as time goes: the trust material it
/// was made with changes its meaning at the earliest end of validity of a
/// listed certificate's chain. Everything else a verdict depends on (the
/// image, the policy, the trust files' bytes) is not time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Nothing it relied on ends with time (no certificate listed).
    Always,
    /// Until this time (seconds since the epoch): the earliest end of
    /// validity of the certificates of the listed certificates' chains.
    At(i64),
    /// A time it cannot tell: a listed certificate is expired or not valid
    /// yet (a chain validated at another time could differ), or the
    /// verdict is a denial. Never cached.
    Unknown,
}

impl Until {
    /// The earlier of the two.
    fn min(self, other: Until) -> Until {
        match (self, other) {
            (Until::Unknown, _) | (_, Until::Unknown) => Until::Unknown,
            (Until::Always, u) | (u, Until::Always) => u,
            (Until::At(a), Until::At(b)) => Until::At(a.min(b)),
        }
    }
}

impl Trust {
    /// Parses `files` (named by `ecl`), validating each certificate.
    pub(crate) fn parse(ecl: &Ecl, files: &TrustFiles) -> Result<Trust, String> {
        let ring = if files.keyring.is_empty() {
            Keyring::default()
        } else {
            Keyring::from_bytes(&files.keyring).map_err(|e| format!("ECL keyring: {e}"))?
        };
        let pool = |bytes: &Option<Vec<u8>>, name: &Option<PathBuf>| {
            bytes
                .as_deref()
                .map(certificate::pool_from_pem)
                .transpose()
                .map_err(|e| format!("ECL certificate file {}: {e}", shown(name)))
        };
        let roots = pool(&files.roots, &ecl.certificate_roots)?;
        let intermediates = pool(&files.intermediates, &ecl.certificate_intermediates)?;
        let mut trust = Trust {
            ring,
            keys: Vec::new(),
            certificates: Vec::new(),
            problems: Vec::new(),
            until: Until::Always,
        };
        for (path, pem) in &files.certificates {
            let bad =
                |e: &dyn std::fmt::Display| format!("ECL certificate {}: {e}", path.display());
            let leaf = certificate::leaf_from_pem(pem).map_err(|e| bad(&e))?;
            let digest = certificate::fingerprint(&leaf).map_err(|e| bad(&e))?;
            let id: [u8; 20] = digest[..20].try_into().unwrap_or([0; 20]);
            let valid = match &roots {
                Some(r) => certificate::validate_until(
                    &leaf,
                    intermediates.as_deref().unwrap_or_default(),
                    Roots::Only(r),
                    None,
                ),
                None => Err(certificate::CertificateError::Untrusted(
                    "the ECL names no certificate_roots".into(),
                )),
            };
            trust.until = trust.until.min(match &valid {
                Ok(t) => Until::At(*t),
                Err(
                    certificate::CertificateError::Expired { .. }
                    | certificate::CertificateError::NotYetValid { .. },
                ) => Until::Unknown,
                // A chain that does not lead to a root or allow code
                // signing does not come to by time.
                Err(_) => Until::Always,
            });
            if let Err(e) = &valid {
                trust
                    .problems
                    .push(format!("certificate {}: {e}", path.display()));
            }
            let key = PublicKey::from_certificate(&leaf).map_err(|e| bad(&e))?;
            trust.keys.push(key.named(id, path.display().to_string()));
            trust
                .certificates
                .push((id, Signer::Certificate(path.clone()), valid.is_ok()));
        }
        Ok(trust)
    }

    /// The signer an identity from a signature check stands for, and
    /// whether it counts (a certificate valid now, or any keyring key).
    fn signer(&self, id: [u8; 20]) -> (Signer, bool) {
        match self.certificates.iter().find(|(i, _, _)| *i == id) {
            Some((_, s, valid)) => (s.clone(), *valid),
            None => (Signer::Key(id), true),
        }
    }

    /// `reason`, with why listed certificates did not count.
    fn explain(&self, reason: String) -> String {
        if self.problems.is_empty() {
            reason
        } else {
            format!("{reason} ({})", self.problems.join("; "))
        }
    }
}

fn shown(p: &Option<PathBuf>) -> String {
    p.as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What verification establishes about `image` for the ECL.
pub(crate) fn evidence<R: sif::ReadAt>(image: &Image<R>, trust: &Trust, legacy: bool) -> Evidence {
    let mut unvalidated = Vec::new();
    let opts = VerifyOptions {
        legacy,
        ..VerifyOptions::default()
    };
    let result = Verifier::new(image, &trust.ring)
        .with_dsse_keys(&trust.keys)
        .verify(&opts, |_, fp| {
            if let Some(fp) = fp {
                unvalidated.push(Signer::Key(fp));
            }
            true
        });
    let checks = match result {
        Err(e) => {
            return Evidence {
                failure: Some(e.to_string()),
                unvalidated,
                ..Evidence::default()
            };
        }
        Ok(checks) => checks,
    };
    // The signers of each check that count; the others are unvalidated.
    let mut signers = |c: &sif::integrity::verify::SignatureCheck| {
        let mut out = Vec::new();
        for fp in c.fingerprints.iter().filter(|fp| **fp != [0; 20]) {
            match trust.signer(*fp) {
                (s, true) => out.push(s),
                (s, false) => unvalidated.push(s),
            }
        }
        out
    };
    let tasks = if legacy {
        vec![(
            "the primary partition".into(),
            checks.iter().flat_map(&mut signers).collect(),
        )]
    } else {
        image
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
                    .flat_map(&mut signers)
                    .collect();
                (format!("object group {g}"), fps)
            })
            .collect()
    };
    Evidence {
        tasks,
        unvalidated,
        failure: None,
    }
}

/// The path the open file really has (symlinks resolved).
fn real_path(file: &File) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
}

/// Checks `file` (opened from `shown`) against `ecl`. `owner` gives the
/// uid each admin file the ECL names must belong to (root; `None` only in
/// tests).
pub fn check(
    file: &File,
    shown: &Path,
    ecl: &Ecl,
    owner: &dyn Fn(&Path) -> Option<u32>,
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
    let files = TrustFiles::read(ecl, owner)?;
    let trust = Trust::parse(ecl, &files).map_err(EclError::Certificate)?;
    let image = Image::open(file).map_err(|source| EclError::Image {
        path: shown.to_owned(),
        source,
    })?;
    let mut d = decide(ecl, &dir, &evidence(&image, &trust, ecl.legacy_insecure));
    if !d.allowed {
        d.reason = trust.explain(d.reason);
    }
    Ok(d)
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
    /// Until when it holds as far as time goes.
    pub until: Until,
}

impl Verdict {
    fn denied(reason: String) -> Verdict {
        Verdict {
            allowed: false,
            group: None,
            reason,
            offset: 0,
            size: 0,
            until: Until::Unknown,
        }
    }

    /// The wire form: six lines.
    pub fn encode(&self) -> String {
        let line = |s: &str| s.replace(['\n', '\r'], " ");
        let until = match self.until {
            Until::Always => "always".to_owned(),
            Until::At(t) => t.to_string(),
            Until::Unknown => "unknown".to_owned(),
        };
        format!(
            "sifrun-verdict-2\n{}\n{} {}\n{until}\n{}\n{}\n",
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
        if lines.next() != Some("sifrun-verdict-2") {
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
        let until = match lines.next().ok_or_else(bad)? {
            "always" => Until::Always,
            "unknown" => Until::Unknown,
            t => Until::At(t.parse().map_err(|_| bad())?),
        };
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
            until,
        })
    }
}

/// Judges `file` (found in directory `dir`) against `ecl` with the bytes
/// of the admin files it names: parse, verify, decide, and find the
/// primary partition's bounds. Run by the unprivileged verifier.
pub fn judge(file: &File, dir: &Path, ecl: &Ecl, files: &TrustFiles) -> Verdict {
    let trust = match Trust::parse(ecl, files) {
        Ok(t) => t,
        Err(e) => return Verdict::denied(e),
    };
    let image = match Image::open(file) {
        Ok(i) => i,
        Err(e) => return Verdict::denied(e.to_string()),
    };
    let mut d = decide(ecl, dir, &evidence(&image, &trust, ecl.legacy_insecure));
    if !d.allowed {
        d.reason = trust.explain(d.reason);
    }
    let part = image.primary_partition().and_then(|p| {
        let fs = p.partition()?.fs_type;
        Ok((p.offset(), p.size(), fs))
    });
    match part {
        Ok((offset, size, fs)) if fs == sif::FsType::SQUASHFS => Verdict {
            until: if d.allowed {
                trust.until
            } else {
                Until::Unknown
            },
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
            until: Until::Unknown,
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
            until: Until::At(1_900_000_000),
        };
        let back = Verdict::decode(&v.encode()).unwrap();
        assert!(back.allowed && back.offset == 4096 && back.size == 123);
        assert_eq!(back.until, Until::At(1_900_000_000));
        for until in [Until::Always, Until::Unknown] {
            let v = Verdict { until, ..v.clone() };
            assert_eq!(Verdict::decode(&v.encode()).unwrap().until, until);
        }
        assert_eq!(back.group.as_deref(), Some("site images"));
        assert_eq!(back.reason, "signed by A");
        let denied = Verdict::denied("no".into());
        assert_eq!(Verdict::decode(&denied.encode()).unwrap(), denied);
        for bad in [
            "",
            "allow",
            "sifrun-verdict-1\nallow\n1 2\n\nr\n",
            "sifrun-verdict-2\nallow\n1 2\nalways\n\nr\nextra\n",
            "sifrun-verdict-2\nmaybe\n1 2\nalways\n\nr\n",
            "sifrun-verdict-2\nallow\n1 2\nsoon\n\nr\n",
            "sifrun-verdict-2\nallow\n1 2\n\nr\n",
        ] {
            assert!(Verdict::decode(bad).is_err(), "{bad:?}");
        }
    }
}

#[cfg(test)]
mod until_tests {
    use super::Until;

    /// The earliest end wins; an unknown time makes the whole unknown.
    #[test]
    fn the_earliest_end_wins() {
        let (a, b) = (Until::At(10), Until::At(20));
        assert_eq!(a.min(b), a);
        assert_eq!(b.min(a), a);
        assert_eq!(Until::Always.min(b), b);
        assert_eq!(b.min(Until::Always), b);
        assert_eq!(Until::Always.min(Until::Always), Until::Always);
        for u in [Until::Always, a] {
            assert_eq!(u.min(Until::Unknown), Until::Unknown);
            assert_eq!(Until::Unknown.min(u), Until::Unknown);
        }
    }
}

#[cfg(test)]
pub(crate) mod certificate_tests;
