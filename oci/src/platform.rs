//! The platform to import: the host's, or `--arch`; and its choice among an
//! index's entries (design §2.2).

use std::fmt;

use crate::manifest::{Descriptor, Index};

/// How deep nested indexes are followed.
pub const MAX_INDEX_DEPTH: usize = 4;

/// A wanted platform (the OS is always `linux`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// OCI/Go architecture name.
    pub architecture: String,
    /// CPU variant, if one is wanted.
    pub variant: Option<String>,
}

/// Why a platform could not be chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlatformError {
    /// `--arch` names no known architecture.
    #[error(
        "unknown architecture {arch:?} (expected amd64, x86_64, arm64, aarch64, ppc64le, s390x, riscv64, \
         optionally ARCH/VARIANT)"
    )]
    UnknownArch {
        /// The value given.
        arch: String,
    },
    /// The host architecture has no OCI name.
    #[error("host architecture {machine:?} has no OCI name; choose one with --arch")]
    UnknownHost {
        /// `uname -m`.
        machine: String,
    },
    /// No index entry matches.
    #[error("{what} has no image for {wanted}; it offers: {offered}")]
    NoMatch {
        /// The index.
        what: String,
        /// The wanted platform.
        wanted: String,
        /// The platforms offered, comma-separated.
        offered: String,
    },
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "linux/{}", self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn arch_name(a: &str) -> Option<&'static str> {
    Some(match a {
        "amd64" | "x86_64" => "amd64",
        "arm64" | "aarch64" => "arm64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        _ => return None,
    })
}

impl Wanted {
    /// The platform of a machine whose `uname -m` is `machine`.
    pub fn from_uname(machine: &str) -> Result<Self, PlatformError> {
        let architecture = arch_name(machine).ok_or_else(|| PlatformError::UnknownHost {
            machine: machine.to_owned(),
        })?;
        let variant = (architecture == "arm64").then(|| "v8".to_owned());
        Ok(Self {
            architecture: architecture.to_owned(),
            variant,
        })
    }

    /// The platform this program was built for.
    pub fn host() -> Result<Self, PlatformError> {
        let machine = match std::env::consts::ARCH {
            "powerpc64" => "ppc64le",
            m => m,
        };
        Self::from_uname(machine)
    }

    /// Parses `--arch`: `ARCH` or `ARCH/VARIANT`, with uname aliases.
    pub fn parse_arch(value: &str) -> Result<Self, PlatformError> {
        let unknown = || PlatformError::UnknownArch {
            arch: value.to_owned(),
        };
        let (arch, variant) = match value.split_once('/') {
            Some((a, v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                (a, Some(v))
            }
            Some(_) => return Err(unknown()),
            None => (value, None),
        };
        let architecture = arch_name(arch).ok_or_else(unknown)?;
        Ok(Self {
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        })
    }
}

/// `arm64` without a variant is `arm64/v8`.
fn norm_variant<'a>(arch: &str, variant: Option<&'a str>) -> Option<&'a str> {
    match (arch, variant) {
        ("arm64", None) => Some("v8"),
        (_, v) => v.filter(|v| !v.is_empty()),
    }
}

/// Whether an index entry is a BuildKit attestation (or otherwise not an
/// image for a platform).
pub fn is_attestation(d: &Descriptor) -> bool {
    d.annotations
        .get("vnd.docker.reference.type")
        .is_some_and(|t| t == "attestation-manifest")
        || d.platform
            .as_ref()
            .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown")
}

/// The entry of `index` for `wanted`: `linux` entries of its architecture,
/// attestations skipped; the exact variant first, then an entry without a
/// variant (when a variant is wanted); `os.version`/`os.features` ignored.
/// An index whose only image entry has no platform yields that entry.
pub fn select<'a>(
    index: &'a Index,
    wanted: &Wanted,
    what: &str,
) -> Result<&'a Descriptor, PlatformError> {
    let images: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .collect();
    if let [only] = images.as_slice()
        && only.platform.is_none()
    {
        return Ok(only);
    }
    let want_variant = norm_variant(&wanted.architecture, wanted.variant.as_deref());
    let rank = |d: &Descriptor| -> Option<u8> {
        let p = d.platform.as_ref()?;
        if p.os != "linux" || p.architecture != wanted.architecture {
            return None;
        }
        let have = norm_variant(&p.architecture, p.variant.as_deref());
        match (want_variant, have) {
            (w, h) if w == h => Some(0),
            (Some(_), None) => Some(1),
            (None, Some(_)) => Some(2),
            _ => None,
        }
    };
    let best = images
        .iter()
        .filter_map(|d| rank(d).map(|r| (r, *d)))
        .min_by_key(|(r, _)| *r);
    best.map(|(_, d)| d).ok_or_else(|| PlatformError::NoMatch {
        what: what.to_owned(),
        wanted: wanted.to_string(),
        offered: offered(&images),
    })
}

fn offered(images: &[&Descriptor]) -> String {
    let list: Vec<String> = images
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    if list.is_empty() {
        "nothing".to_owned()
    } else {
        list.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Parsed, parse_manifest};

    fn index(json: &[u8]) -> Index {
        match parse_manifest(json, None, "i").unwrap() {
            Parsed::Index(i) => i,
            Parsed::Manifest(_) => panic!("not an index"),
        }
    }

    fn chosen(i: &Index, arch: &str) -> Result<String, PlatformError> {
        let d = select(i, &Wanted::parse_arch(arch)?, "ubuntu:22.04")?;
        let p = d.platform.as_ref().unwrap();
        Ok(format!(
            "{}{}",
            p.architecture,
            p.variant
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        ))
    }

    #[test]
    fn arch_parsing_and_host() {
        assert_eq!(
            Wanted::parse_arch("x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Wanted::parse_arch("aarch64").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Wanted::parse_arch("arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        for bad in ["arm", "mips", "amd64/", "amd64/v 2", ""] {
            assert!(
                Wanted::parse_arch(bad)
                    .unwrap_err()
                    .to_string()
                    .starts_with("unknown architecture"),
                "{bad}"
            );
        }
        assert_eq!(
            Wanted::from_uname("aarch64").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            Wanted::from_uname("x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert!(Wanted::from_uname("sparc64").is_err());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(Wanted::host().unwrap().architecture, "amd64");
        }
    }

    #[test]
    fn selection_on_a_docker_hub_index_with_attestations() {
        let i = index(include_bytes!("../testdata/index-ubuntu.json"));
        assert_eq!(chosen(&i, "amd64").unwrap(), "amd64");
        assert_eq!(chosen(&i, "arm64").unwrap(), "arm64/v8");
        assert_eq!(chosen(&i, "arm64/v8").unwrap(), "arm64/v8");
        assert_eq!(chosen(&i, "s390x").unwrap(), "s390x");
        // amd64/v3 wanted, only a variant-less amd64 offered: that one.
        assert_eq!(chosen(&i, "amd64/v3").unwrap(), "amd64");
        let e = chosen(&i, "arm64/v9").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "ubuntu:22.04 has no image for linux/arm64/v9; it offers: linux/amd64, linux/arm/v7"
            ),
            "{e}"
        );
        assert!(!e.contains("unknown"), "attestations are not offered: {e}");
    }

    #[test]
    fn variant_preferences() {
        let d = |n: u8| crate::digest::Digest::of(&[n]);
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
              {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux","variant":"v3"}}}},
              {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"m","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"windows"}}}}]}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        );
        let i = index(json.as_bytes());
        // arm64 without variant ≡ arm64/v8.
        assert_eq!(
            select(&i, &Wanted::parse_arch("arm64/v8").unwrap(), "x")
                .unwrap()
                .digest,
            d(1)
        );
        // No variant wanted: the variant-less entry first.
        assert_eq!(
            select(&i, &Wanted::parse_arch("amd64").unwrap(), "x")
                .unwrap()
                .digest,
            d(3)
        );
        assert_eq!(
            select(&i, &Wanted::parse_arch("amd64/v3").unwrap(), "x")
                .unwrap()
                .digest,
            d(2)
        );
        assert!(select(&i, &Wanted::parse_arch("ppc64le").unwrap(), "x").is_err());
    }

    #[test]
    fn single_entry_without_platform() {
        let d = crate::digest::Digest::of(b"1");
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"m","digest":"{d}","size":1}}]}}"#
        );
        let i = index(json.as_bytes());
        assert_eq!(
            select(&i, &Wanted::parse_arch("s390x").unwrap(), "x")
                .unwrap()
                .digest,
            d
        );
        let empty = index(br#"{"schemaVersion":2,"manifests":[]}"#);
        let e = select(&empty, &Wanted::parse_arch("amd64").unwrap(), "x");
        assert_eq!(
            e.unwrap_err().to_string(),
            "x has no image for linux/amd64; it offers: nothing"
        );
    }
}
