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
//! [[ecl.execgroup]]
//! tagname = "admins"
//! mode = "whitelist"                      # whitelist | whitestrict | blacklist
//! dirpath = "/shared/images"              # the image's exact directory; "" = any
//! keyfp = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]
//! ```
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
    owners: Vec<u32>,
    #[serde(default)]
    execgroup: Vec<RawGroup>,
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
}

/// A checked ECL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ecl {
    /// Whether the ECL applies at all.
    pub activated: bool,
    /// Check legacy (SIF v1) signatures instead of current ones.
    pub legacy_insecure: bool,
    /// The public keyring signatures are verified against.
    pub keyring: Option<PathBuf>,
    /// Owners (uids) besides root an admitted image may have (an image
    /// must be one its job's user cannot change: see the launcher's `pin`).
    pub owners: Vec<u32>,
    /// The execgroups, in file order.
    pub groups: Vec<ExecGroup>,
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
            let mut keyfp = Vec::new();
            for f in &g.keyfp {
                keyfp.push(parse_fp(f).ok_or_else(|| {
                    format!("{name}: keyfp {f:?} is not a 40-digit hex fingerprint")
                })?);
            }
            groups.push(ExecGroup {
                tagname: g.tagname,
                mode: g.mode,
                dirpath,
                keyfp,
            });
        }
        if raw.activated && raw.keyring.is_none() {
            return Err("an activated ECL needs keyring = \"/path/to/public-keys.asc\"".into());
        }
        Ok(Ecl {
            activated: raw.activated,
            legacy_insecure: raw.legacyinsecure,
            keyring: raw.keyring,
            owners: raw.owners,
            groups,
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
    /// fingerprints whose signatures verified.
    pub tasks: Vec<(String, Vec<[u8; 20]>)>,
    /// Fingerprints recorded on signatures that did not verify.
    pub unvalidated: Vec<[u8; 20]>,
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
    let valid = |fp: &[u8; 20]| !evidence.unvalidated.contains(fp);
    let in_all = |fp: &[u8; 20]| evidence.tasks.iter().all(|(_, fps)| fps.contains(fp));
    let in_any = |fp: &[u8; 20]| {
        evidence.tasks.iter().any(|(_, fps)| fps.contains(fp)) || evidence.unvalidated.contains(fp)
    };
    let allow = |reason: String| Decision {
        allowed: true,
        group: Some(group.tagname.clone()),
        reason,
    };
    match group.mode {
        Mode::Whitelist => match group.keyfp.iter().find(|k| in_all(k) && valid(k)) {
            Some(k) => allow(format!("signed by the listed key {}", fp_hex(k))),
            None => deny(Some(group), "not signed by any listed key".into()),
        },
        Mode::Whitestrict => match group.keyfp.iter().find(|k| !(in_all(k) && valid(k))) {
            None if !group.keyfp.is_empty() => allow("signed by every listed key".into()),
            None => deny(Some(group), "whitestrict with no keys".into()),
            Some(k) => deny(
                Some(group),
                format!("not signed by the listed key {}", fp_hex(k)),
            ),
        },
        Mode::Blacklist => match group.keyfp.iter().find(|k| in_any(k)) {
            Some(k) => deny(
                Some(group),
                format!("signed by the forbidden key {}", fp_hex(k)),
            ),
            None => allow("signed, and by no forbidden key".into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 20] = [0xAA; 20];
    const B: [u8; 20] = [0xBB; 20];

    fn ecl(mode: Mode, dirpath: Option<&str>, keys: &[[u8; 20]]) -> Ecl {
        Ecl {
            activated: true,
            legacy_insecure: false,
            keyring: Some("/k".into()),
            owners: vec![],
            groups: vec![ExecGroup {
                tagname: "g".into(),
                mode,
                dirpath: dirpath.map(PathBuf::from),
                keyfp: keys.to_vec(),
            }],
        }
    }

    fn signed(tasks: &[&[[u8; 20]]]) -> Evidence {
        Evidence {
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("object group {}", i + 1), f.to_vec()))
                .collect(),
            ..Evidence::default()
        }
    }

    #[test]
    fn the_three_modes() {
        let dir = Path::new("/images");
        // (mode, listed keys, evidence, allowed)
        let unsigned = Evidence::default();
        let tampered = Evidence {
            failure: Some("object 2 changed".into()),
            ..signed(&[&[A]])
        };
        let unknown_only = Evidence {
            unvalidated: vec![A],
            tasks: vec![("object group 1".into(), vec![])],
            ..Evidence::default()
        };
        let cases: Vec<(Mode, Vec<[u8; 20]>, Evidence, bool)> = vec![
            (Mode::Whitelist, vec![A], signed(&[&[A]]), true),
            (Mode::Whitelist, vec![A, B], signed(&[&[B]]), true),
            (Mode::Whitelist, vec![A], signed(&[&[B]]), false),
            (Mode::Whitelist, vec![A], signed(&[&[A], &[B]]), false),
            (Mode::Whitelist, vec![A], unsigned.clone(), false),
            (Mode::Whitelist, vec![A], tampered.clone(), false),
            (
                Mode::Whitelist,
                vec![A],
                Evidence {
                    unvalidated: vec![A],
                    ..signed(&[&[A]])
                },
                false,
            ),
            (Mode::Whitestrict, vec![A, B], signed(&[&[A, B]]), true),
            (Mode::Whitestrict, vec![A, B], signed(&[&[A]]), false),
            (Mode::Whitestrict, vec![], signed(&[&[A]]), false),
            (Mode::Blacklist, vec![B], signed(&[&[A]]), true),
            (Mode::Blacklist, vec![A], signed(&[&[A]]), false),
            (
                Mode::Blacklist,
                vec![B],
                Evidence {
                    unvalidated: vec![B],
                    ..signed(&[&[A]])
                },
                false,
            ),
            // Stricter than Apptainer: no valid signature, no run.
            (Mode::Blacklist, vec![B], unsigned, false),
            (Mode::Blacklist, vec![B], unknown_only, false),
            (Mode::Blacklist, vec![B], tampered, false),
        ];
        for (i, (mode, keys, ev, want)) in cases.into_iter().enumerate() {
            let d = decide(&ecl(mode, None, &keys), dir, &ev);
            assert_eq!(d.allowed, want, "case {i}: {mode} {d:?}");
            assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn execgroups_by_exact_directory_then_fallback() {
        let mut e = ecl(Mode::Whitelist, Some("/images"), &[A]);
        e.groups.push(ExecGroup {
            tagname: "rest".into(),
            mode: Mode::Blacklist,
            dirpath: None,
            keyfp: vec![A],
        });
        let ev = signed(&[&[A]]);
        let d = decide(&e, Path::new("/images"), &ev);
        assert_eq!((d.allowed, d.group.as_deref()), (true, Some("g")));
        // A subdirectory is not the directory.
        let d = decide(&e, Path::new("/images/sub"), &ev);
        assert_eq!((d.allowed, d.group.as_deref()), (false, Some("rest")));
        e.groups.pop();
        let d = decide(&e, Path::new("/images-old"), &ev);
        assert!(
            !d.allowed && d.reason.contains("part of no execgroup"),
            "{d:?}"
        );
        e.activated = false;
        assert!(decide(&e, Path::new("/x"), &Evidence::default()).allowed);
    }

    #[test]
    fn validation_names_the_mistake() {
        let canon = |p: &Path| (p == Path::new("/images")).then(|| p.to_path_buf());
        let parse = |t: &str| {
            let raw: RawEcl = toml::from_str(t).map_err(|e| e.message().to_owned())?;
            Ecl::from_raw(raw, &canon)
        };
        let ok = parse(
            "activated = true\nkeyring = \"/k\"\n[[execgroup]]\ntagname = \"a\"\nmode = \"whitelist\"\ndirpath = \"/images\"\nkeyfp = [\"12045c8c0b1004d058de4beda20c27ee7ff7ba84\"]\n",
        )
        .unwrap();
        assert_eq!(ok.groups[0].keyfp[0][0], 0x12);
        for (text, want) in [
            ("[[execgroup]]\nmode = \"greylist\"", "greylist"),
            (
                "[[execgroup]]\nmode = \"whitelist\"\nkeyfp = [\"1234\"]",
                "40-digit",
            ),
            (
                "[[execgroup]]\nmode = \"whitelist\"\ndirpath = \"images\"",
                "absolute",
            ),
            (
                "[[execgroup]]\nmode = \"whitelist\"\ndirpath = \"/link\"",
                "without symlinks",
            ),
            (
                "[[execgroup]]\nmode = \"whitelist\"\n[[execgroup]]\nmode = \"blacklist\"",
                "earlier execgroup",
            ),
            ("activated = true", "keyring"),
            ("activated = true\nbogus = 1", "bogus"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
