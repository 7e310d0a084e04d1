//! The execution control list: which signed images may run.
//!
//! Apptainer's `ecl.toml` semantics, read from the `[ecl]` table of the
//! admin file (or, for `sifrun ecl check --ecl FILE`, from a file with the
//! same keys at the top level, as Apptainer's own):
//!
//! ```toml
//! [ecl]
//! activated = true
//! legacyinsecure = false                  # check legacy signatures instead
//! keyring = "/etc/sifrun/ecl-keyring.asc" # the public keys signatures are checked against
//! certificate_roots = "/etc/sifrun/ecl-roots.pem"  # for `certificates` (PEM, any number)
//! certificate_intermediates = "/etc/sifrun/ecl-intermediates.pem"  # optional
//! [[ecl.execgroup]]
//! tagname = "admins"
//! mode = "whitelist"                      # whitelist | whitestrict | blacklist
//! dirpath = "/shared/images"              # the image's exact directory; "" = any
//! keyfp = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]
//! certificates = ["/etc/sifrun/ecl/build-bot.pem"]  # DSSE signers, by leaf certificate
//! ```
//!
//! `verdict_cache_entries` (in `[ecl]`, default 256, 0 = off) bounds the
//! per-node cache of `allowed` verdicts (the launcher's privileged path).
//!
//! A DSSE envelope does not carry the signer's certificate, so an execgroup
//! lists the leaf certificates it means, as `keyfp` lists keys; at every
//! check each is validated for code signing against `certificate_roots`
//! (through `certificate_intermediates`) and counts as a signer only when
//! it is valid then; a blacklisted certificate's key is forbidden whether
//! its certificate is valid or not.
//!
//! Stricter than Apptainer where that closes a hole (docs/security.md): an
//! activated ECL never lets an image through whose signatures did not
//! verify, in any mode — blacklist mode included, which in Apptainer passes
//! an image whose only signature is by an unknown key.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// How an execgroup judges the signers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// At least one listed key signed every object group.
    Whitelist,
    /// Every listed key signed every object group.
    Whitestrict,
    /// No listed key signed anything.
    Blacklist,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Whitelist => "whitelist",
            Mode::Whitestrict => "whitestrict",
            Mode::Blacklist => "blacklist",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    #[serde(default)]
    tagname: String,
    mode: Mode,
    #[serde(default)]
    dirpath: String,
    #[serde(default)]
    keyfp: Vec<String>,
    #[serde(default)]
    certificates: Vec<PathBuf>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEcl {
    #[serde(default)]
    activated: bool,
    #[serde(default)]
    legacyinsecure: bool,
    #[serde(default)]
    keyring: Option<PathBuf>,
    #[serde(default)]
    certificate_roots: Option<PathBuf>,
    #[serde(default)]
    certificate_intermediates: Option<PathBuf>,
    #[serde(default)]
    owners: Vec<u32>,
    #[serde(default)]
    execgroup: Vec<RawGroup>,
    #[serde(default)]
    verdict_cache_entries: Option<usize>,
}

/// One execgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecGroup {
    /// The group's name, in messages.
    pub tagname: String,
    /// How its keys decide.
    pub mode: Mode,
    /// The images' exact directory; `None` for the fallback group.
    pub dirpath: Option<PathBuf>,
    /// The fingerprints of the group's keys.
    pub keyfp: Vec<[u8; 20]>,
    /// The group's DSSE signers, by leaf certificate (PEM files).
    pub certificates: Vec<PathBuf>,
}

impl ExecGroup {
    /// Every signer the group lists: its keys, then its certificates.
    pub fn signers(&self) -> Vec<Signer> {
        self.keyfp
            .iter()
            .map(|k| Signer::Key(*k))
            .chain(self.certificates.iter().cloned().map(Signer::Certificate))
            .collect()
    }
}

/// Who made a signature that verified.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Signer {
    /// An OpenPGP key of the keyring, by primary fingerprint.
    Key([u8; 20]),
    /// The key of a certificate an execgroup lists, by its path.
    Certificate(PathBuf),
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Key(fp) => write!(f, "key {}", fp_hex(fp)),
            Signer::Certificate(p) => write!(f, "certificate {}", p.display()),
        }
    }
}

/// A checked ECL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ecl {
    /// Whether the ECL applies at all.
    pub activated: bool,
    /// Check legacy (SIF v1) signatures instead of current ones.
    pub legacy_insecure: bool,
    /// The public keyring signatures are verified against.
    pub keyring: Option<PathBuf>,
    /// The roots the listed certificates are validated against.
    pub certificate_roots: Option<PathBuf>,
    /// Certificates that may link a listed certificate to a root.
    pub certificate_intermediates: Option<PathBuf>,
    /// Owners (uids) besides root an admitted image may have (an image
    /// must be one its job's user cannot change: see the launcher's `pin`).
    pub owners: Vec<u32>,
    /// The execgroups, in file order.
    pub groups: Vec<ExecGroup>,
    /// How many `allowed` verdicts a node keeps (the launcher's verdict
    /// cache, per node; 0 = none).
    pub verdict_cache_entries: usize,
}

/// `verdict_cache_entries` when the admin file does not say.
pub const VERDICT_CACHE_ENTRIES: usize = 256;

impl Default for Ecl {
    /// No ECL (not activated), the default cache bound.
    fn default() -> Ecl {
        Ecl {
            activated: false,
            legacy_insecure: false,
            keyring: None,
            certificate_roots: None,
            certificate_intermediates: None,
            owners: Vec::new(),
            groups: Vec::new(),
            verdict_cache_entries: VERDICT_CACHE_ENTRIES,
        }
    }
}

fn parse_fp(s: &str) -> Option<[u8; 20]> {
    let s = s.trim();
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Upper-case hex of a fingerprint.
pub fn fp_hex(fp: &[u8; 20]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect()
}

/// An execgroup's key fingerprints, after checking them and its
/// certificates (absolute paths, with roots to validate them against
/// unless they are only forbidden).
fn signers(name: &str, g: &RawGroup, have_roots: bool) -> Result<Vec<[u8; 20]>, String> {
    let mut keyfp = Vec::new();
    for f in &g.keyfp {
        keyfp.push(
            parse_fp(f)
                .ok_or_else(|| format!("{name}: keyfp {f:?} is not a 40-digit hex fingerprint"))?,
        );
    }
    if let Some(c) = g.certificates.iter().find(|c| !c.is_absolute()) {
        return Err(format!(
            "{name}: certificate {:?} must be an absolute path",
            c.display().to_string()
        ));
    }
    if g.mode != Mode::Blacklist && !g.certificates.is_empty() && !have_roots {
        return Err(format!(
            "{name} lists certificates: they need certificate_roots = \"/path/to/roots.pem\" to be validated against"
        ));
    }
    Ok(keyfp)
}

impl Ecl {
    /// Checks the raw table; `canonical` resolves a directory's symlinks
    /// (dirpath must already be canonical, as Apptainer requires).
    pub(crate) fn from_raw(
        raw: RawEcl,
        canonical: &dyn Fn(&Path) -> Option<PathBuf>,
    ) -> Result<Ecl, String> {
        let mut groups = Vec::new();
        for (i, g) in raw.execgroup.into_iter().enumerate() {
            let name = if g.tagname.is_empty() {
                format!("execgroup {}", i + 1)
            } else {
                format!("execgroup {:?}", g.tagname)
            };
            let dirpath = if g.dirpath.is_empty() {
                None
            } else {
                let d = PathBuf::from(&g.dirpath);
                if !d.is_absolute() || d.components().any(|c| c == Component::ParentDir) {
                    return Err(format!(
                        "{name}: dirpath {:?} must be an absolute path",
                        g.dirpath
                    ));
                }
                if canonical(&d).as_deref() != Some(d.as_path()) {
                    return Err(format!(
                        "{name}: dirpath {:?} must be an existing directory without symlinks",
                        g.dirpath
                    ));
                }
                Some(d)
            };
            if groups.iter().any(|o: &ExecGroup| o.dirpath == dirpath) {
                return Err(format!(
                    "{name}: dirpath {:?} is used by an earlier execgroup",
                    g.dirpath
                ));
            }
            let keyfp = signers(&name, &g, raw.certificate_roots.is_some())?;
            groups.push(ExecGroup {
                tagname: g.tagname,
                mode: g.mode,
                dirpath,
                keyfp,
                certificates: g.certificates,
            });
        }
        for p in [&raw.certificate_roots, &raw.certificate_intermediates]
            .into_iter()
            .flatten()
        {
            if !p.is_absolute() {
                return Err(format!(
                    "{:?} must be an absolute path",
                    p.display().to_string()
                ));
            }
        }
        let any_certificates = groups.iter().any(|g| !g.certificates.is_empty());
        if raw.activated && raw.keyring.is_none() && !any_certificates {
            return Err(
                "an activated ECL needs keyring = \"/path/to/public-keys.asc\" (or certificates in an execgroup)"
                    .into(),
            );
        }
        Ok(Ecl {
            activated: raw.activated,
            legacy_insecure: raw.legacyinsecure,
            keyring: raw.keyring,
            certificate_roots: raw.certificate_roots,
            certificate_intermediates: raw.certificate_intermediates,
            owners: raw.owners,
            groups,
            verdict_cache_entries: raw.verdict_cache_entries.unwrap_or(VERDICT_CACHE_ENTRIES),
        })
    }

    /// Reads an ECL file that must be root-owned and writable by nobody else
    /// (see [`crate::admin::read_trusted`]), then [`Ecl::parse_file_text`].
    pub fn load(path: &Path) -> Result<Ecl, String> {
        Ecl::load_owned_by(path, 0)
    }

    /// [`Ecl::load`] for a file that must be owned by `owner` (for
    /// `sifrun ecl check` trying out a user's own draft; what gates a
    /// container is always root's).
    pub fn load_owned_by(path: &Path, owner: u32) -> Result<Ecl, String> {
        let bytes = crate::admin::read_trusted(path, Some(owner)).map_err(|e| e.to_string())?;
        let text =
            String::from_utf8(bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
        Ecl::parse_file_text(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses an ECL file with the keys at the top level (Apptainer's
    /// ecl.toml plus `keyring`) or in an `[ecl]` table (the admin file).
    pub fn parse_file_text(text: &str) -> Result<Ecl, String> {
        #[derive(Deserialize)]
        struct Wrapped {
            ecl: Option<toml::Value>,
        }
        let value: toml::Value = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let table = match toml::Value::try_into::<Wrapped>(value.clone()) {
            Ok(Wrapped { ecl: Some(t) }) => t,
            _ => value,
        };
        let raw: RawEcl = table
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        Ecl::from_raw(raw, &|p| std::fs::canonicalize(p).ok())
    }
}

/// What verification established about an image, for [`decide`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// Per object group (or, for legacy checks, per checked object): the
    /// signers whose signatures verified.
    pub tasks: Vec<(String, Vec<Signer>)>,
    /// Signers named by signatures that did not verify (an OpenPGP
    /// fingerprint recorded on a signature that failed), or whose signature
    /// verified but whose certificate is not valid now.
    pub unvalidated: Vec<Signer>,
    /// Why verification failed otherwise (unsigned, tampered, …).
    pub failure: Option<String>,
}

/// The ECL's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the image may run.
    pub allowed: bool,
    /// The execgroup that decided, if any.
    pub group: Option<String>,
    /// Why, for the user.
    pub reason: String,
}

/// Decides whether the image at `image_dir` (its canonical directory) may
/// run, given what verification established.
pub fn decide(ecl: &Ecl, image_dir: &Path, evidence: &Evidence) -> Decision {
    let deny = |group: Option<&ExecGroup>, reason: String| Decision {
        allowed: false,
        group: group.map(|g| g.tagname.clone()),
        reason,
    };
    if !ecl.activated {
        return Decision {
            allowed: true,
            group: None,
            reason: "the ECL is not activated".into(),
        };
    }
    let group = ecl
        .groups
        .iter()
        .find(|g| g.dirpath.as_deref() == Some(image_dir))
        .or_else(|| ecl.groups.iter().find(|g| g.dirpath.is_none()));
    let Some(group) = group else {
        return deny(
            None,
            format!("{} is part of no execgroup", image_dir.display()),
        );
    };
    if let Some(f) = &evidence.failure {
        return deny(Some(group), format!("signature verification failed: {f}"));
    }
    if evidence.tasks.is_empty() {
        return deny(Some(group), "the image is not signed".into());
    }
    if let Some((task, _)) = evidence.tasks.iter().find(|(_, fps)| fps.is_empty()) {
        return deny(
            Some(group),
            format!("{task} has no signature that verified"),
        );
    }
    let valid = |s: &Signer| !evidence.unvalidated.contains(s);
    let in_all = |s: &Signer| evidence.tasks.iter().all(|(_, fps)| fps.contains(s));
    let in_any = |s: &Signer| {
        evidence.tasks.iter().any(|(_, fps)| fps.contains(s)) || evidence.unvalidated.contains(s)
    };
    let listed = group.signers();
    let allow = |reason: String| Decision {
        allowed: true,
        group: Some(group.tagname.clone()),
        reason,
    };
    match group.mode {
        Mode::Whitelist => match listed.iter().find(|k| in_all(k) && valid(k)) {
            Some(k) => allow(format!("signed by the listed {k}")),
            None => deny(Some(group), "not signed by any listed key".into()),
        },
        Mode::Whitestrict => match listed.iter().find(|k| !(in_all(k) && valid(k))) {
            None if !listed.is_empty() => allow("signed by every listed key".into()),
            None => deny(Some(group), "whitestrict with no keys".into()),
            Some(k) => deny(Some(group), format!("not signed by the listed {k}")),
        },
        Mode::Blacklist => match listed.iter().find(|k| in_any(k)) {
            Some(k) => deny(Some(group), format!("signed by the forbidden {k}")),
            None => allow("signed, and by no forbidden key".into()),
        },
    }
}

#[cfg(test)]
mod tests;
