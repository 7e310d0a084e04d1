//! `[images]` of the admin file: the site cache of `docker://` images.

use std::path::{Component, PathBuf};

use serde::Deserialize;

/// `[images]`: the site cache of images converted from registries
/// (oci-design.md §6.5). Entries count only when owned by `cache_user`
/// (or root) and writable by no one else; without `cache_user` the cache
/// is read-only for sifrun (admins fill it with `sifrun pull` and
/// `sifrun sign`) and misses go to the user's cache.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesSection {
    /// The site cache directory (absolute), shared by every node.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// The account that owns the site cache; the holder converts misses
    /// into it as this user.
    #[serde(default)]
    pub cache_user: Option<String>,
    /// What `cache_user` converts: registry hosts (`registry.example`,
    /// `host:5000`) or host/repository prefixes (`docker.io/library`,
    /// whole path components). Unset: any image; others go to the user's
    /// cache (with a line). Entries already in the cache are used whatever
    /// their registry.
    #[serde(default)]
    pub site_registries: Option<Vec<String>>,
    /// The largest image `cache_user` converts, by the layers' sizes its
    /// manifest declares (compressed), in bytes or with a unit (`20G`;
    /// default [`DEFAULT_CACHE_MAX_IMAGE_SIZE`]); larger images go to the
    /// user's cache (with a line).
    #[serde(default)]
    pub cache_max_image_size: Option<Size>,
    /// What a conversion into the site cache must leave free on its
    /// filesystem, counting twice the layers' sizes (the downloaded layers
    /// and the SIF; default [`DEFAULT_CACHE_MIN_FREE`]); otherwise the
    /// image goes to the user's cache (with a line).
    #[serde(default)]
    pub cache_min_free: Option<Size>,
}

/// `images.cache_max_image_size` when unset: 20 GiB.
pub const DEFAULT_CACHE_MAX_IMAGE_SIZE: u64 = 20 << 30;

/// `images.cache_min_free` when unset: 10 GiB.
pub const DEFAULT_CACHE_MIN_FREE: u64 = 10 << 30;

/// A size in the admin file: a number of bytes, or a string of digits
/// with `K`, `M`, `G` or `T` (powers of 1024; `B` or `iB` after it
/// allowed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Size {
    /// A number of bytes.
    Bytes(u64),
    /// Digits and a unit.
    Text(String),
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"20G\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size::Bytes(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(n), &self))
            }
            fn visit_str<E: serde::de::Error>(self, t: &str) -> Result<Size, E> {
                Ok(Size::Text(t.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Size {
    /// The size in bytes, or why it is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        let t = match self {
            Size::Bytes(n) => return Ok(*n),
            Size::Text(t) => t,
        };
        let bad = || format!("{t:?} is not a size (bytes, or digits with K, M, G or T)");
        let s = t.trim();
        // `iB` only after a unit letter ("20GiB", not "20iB").
        let s = match s.strip_suffix("iB") {
            Some(u) if u.ends_with(|c: char| "KMGTkmgt".contains(c)) => u,
            Some(_) => return Err(bad()),
            None => s.strip_suffix('B').unwrap_or(s),
        };
        let (digits, shift) = match s.char_indices().last() {
            Some((i, 'K' | 'k')) => (&s[..i], 10),
            Some((i, 'M' | 'm')) => (&s[..i], 20),
            Some((i, 'G' | 'g')) => (&s[..i], 30),
            Some((i, 'T' | 't')) => (&s[..i], 40),
            _ => (s, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = digits.parse().map_err(|_| bad())?;
        n.checked_mul(1u64 << shift).ok_or_else(bad)
    }
}

impl ImagesSection {
    /// `cache_max_image_size` in bytes (checked when the file was read).
    pub fn max_image_size(&self) -> u64 {
        self.cache_max_image_size
            .as_ref()
            .and_then(|s| s.bytes().ok())
            .unwrap_or(DEFAULT_CACHE_MAX_IMAGE_SIZE)
    }

    /// `cache_min_free` in bytes (checked when the file was read).
    pub fn min_free(&self) -> u64 {
        self.cache_min_free
            .as_ref()
            .and_then(|s| s.bytes().ok())
            .unwrap_or(DEFAULT_CACHE_MIN_FREE)
    }
}

/// Whether the image `domain`/`path` (a normalised reference:
/// `docker.io`, `library/alpine`) is on the `images.site_registries`
/// list `allowed` (`None`: any).
pub fn site_registry_allowed(allowed: Option<&[String]>, domain: &str, path: &str) -> bool {
    let Some(list) = allowed else { return true };
    list.iter().any(|a| match a.split_once('/') {
        None => a == domain,
        Some((host, prefix)) => {
            host == domain
                && path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
    })
}

pub(super) fn check_images(i: &ImagesSection) -> Result<(), String> {
    if let Some(d) = &i.cache_dir
        && (!d.is_absolute() || d.components().any(|c| c == Component::ParentDir))
    {
        return Err(format!(
            "images.cache_dir: {}: must be an absolute path without ..",
            d.display()
        ));
    }
    for r in i.site_registries.iter().flatten() {
        let ok = !r.is_empty()
            && !r.contains("://")
            && !r.ends_with('/')
            && !r.starts_with('/')
            && !r.contains("//")
            && r.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(format!(
                "images.site_registries: {r:?}: not a registry host or host/repository prefix"
            ));
        }
    }
    if let Some(u) = &i.cache_user {
        if i.cache_dir.is_none() {
            return Err("images.cache_user: needs images.cache_dir".into());
        }
        let name_ok = !u.is_empty()
            && u.len() <= 32
            && !u.starts_with('-')
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !name_ok || u == "root" {
            return Err(format!(
                "images.cache_user: {u:?} is not an account name (nor may it be root)"
            ));
        }
    }
    for (key, v) in [
        ("cache_max_image_size", &i.cache_max_image_size),
        ("cache_min_free", &i.cache_min_free),
    ] {
        if let Some(v) = v {
            v.bytes().map_err(|why| format!("images.{key}: {why}"))?;
        }
    }
    if i.max_image_size() == 0 {
        return Err("images.cache_max_image_size: must be above 0".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminConfig;

    fn images(text: &str) -> Result<ImagesSection, String> {
        AdminConfig::parse(&format!("[images]\n{text}"), &[]).map(|c| c.images)
    }

    #[test]
    fn the_limits_have_defaults_and_take_units() {
        let i = images("").unwrap();
        assert_eq!(i.max_image_size(), DEFAULT_CACHE_MAX_IMAGE_SIZE);
        assert_eq!(i.min_free(), DEFAULT_CACHE_MIN_FREE);
        let i = images("cache_max_image_size = \"3G\"\ncache_min_free = 1000").unwrap();
        assert_eq!(i.max_image_size(), 3 << 30);
        assert_eq!(i.min_free(), 1000);
        for (t, n) in [
            ("512K", 512 << 10),
            ("7MiB", 7 << 20),
            ("2TB", 2 << 40),
            ("0", 0),
            ("12", 12),
        ] {
            assert_eq!(Size::Text(t.into()).bytes(), Ok(n), "{t}");
        }
        assert_eq!(images("cache_min_free = \"0\"").unwrap().min_free(), 0);
    }

    #[test]
    fn bad_limits_name_the_key() {
        for (text, want) in [
            (
                "cache_max_image_size = \"12Q\"",
                "images.cache_max_image_size: \"12Q\" is not a size",
            ),
            (
                "cache_min_free = \"20iB\"",
                "images.cache_min_free: \"20iB\" is not a size",
            ),
            (
                "cache_max_image_size = \"GiB\"",
                "images.cache_max_image_size: \"GiB\" is not a size",
            ),
            (
                "cache_max_image_size = \"G\"",
                "images.cache_max_image_size: \"G\" is not a size",
            ),
            (
                "cache_min_free = \"-1G\"",
                "images.cache_min_free: \"-1G\" is not a size",
            ),
            (
                "cache_min_free = \"99999999999T\"",
                "images.cache_min_free: \"99999999999T\" is not a size",
            ),
            (
                "cache_max_image_size = 0",
                "images.cache_max_image_size: must be above 0",
            ),
            (
                "cache_min_free = -1",
                "line 2: invalid value: integer `-1`, expected a size",
            ),
            (
                "cache_min_free = true",
                "line 2: invalid type: boolean `true`, expected a size",
            ),
        ] {
            let e = images(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
