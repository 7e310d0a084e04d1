//! A step's `docker://` image already in the user's image cache: where
//! its entry would be, from the job's environment alone (no parsing of a
//! reference beyond the job's pin, no network). The plugin asks it to
//! choose the lean holder, which looks the entry up again, as the user,
//! with the cache's own checks.

use std::path::PathBuf;

/// The job's pin of its `docker://` image (`REGISTRY/NAME:TAG@sha256:HEX`).
pub const PIN_ENV: &str = "SLURM_SIFRUN_IMAGE_PIN";
/// The image (as given) the pin is the pin of.
pub const PIN_OF_ENV: &str = "SLURM_SIFRUN_IMAGE_PIN_OF";
/// The compression of the user's cache entries.
pub const COMPRESSION: &str = "gzip";

/// The user's cache directory of a job: `SIFRUN_CACHEDIR`, else
/// `XDG_CACHE_HOME/sifrun`, else `HOME/.cache/sifrun` (absolute only).
pub fn cache_root(job_env: &[(String, String)]) -> Option<PathBuf> {
    let get = |k: &str| {
        job_env
            .iter()
            .rev()
            .find(|(n, v)| n == k && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    let root = get("SIFRUN_CACHEDIR")
        .or_else(|| get("XDG_CACHE_HOME").map(|x| x.join("sifrun")))
        .or_else(|| get("HOME").map(|h| h.join(".cache/sifrun")))?;
    root.is_absolute().then_some(root)
}

/// The digest's hex of the job's pin of `image`: only when the pin names
/// exactly this image (`PIN_OF`) and ends in `@sha256:` and 64 lowercase
/// hex digits.
pub fn pinned_hex(image: &str, job_env: &[(String, String)]) -> Option<String> {
    let get = |k: &str| {
        job_env
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    if get(PIN_OF_ENV)? != image || !image.starts_with("docker://") {
        return None;
    }
    let (_, hex) = get(PIN_ENV)?.rsplit_once("@sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| hex.to_owned())
}

/// Where the user's cache keeps the entry of the job's pinned digest of
/// `image` (`ROOT/v1/sif/sha256/HEX.gzip.sif`); nothing is checked on disk.
pub fn entry_path(image: &str, job_env: &[(String, String)]) -> Option<PathBuf> {
    let hex = pinned_hex(image, job_env)?;
    Some(
        cache_root(job_env)?
            .join("v1/sif/sha256")
            .join(format!("{hex}.{COMPRESSION}.sif")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const HEX: &str = "9c22c3b62402c55877e94e9f3a7458d2400d768ed707a8adb891e08ddcb611e5";

    #[test]
    fn the_pins_entry_is_found_only_for_the_same_image() {
        let img = "docker://r.io/a/b:t";
        let pin = format!("r.io/a/b:t@sha256:{HEX}");
        let e = env(&[(PIN_ENV, &pin), (PIN_OF_ENV, img), ("HOME", "/home/u")]);
        assert_eq!(
            entry_path(img, &e).unwrap(),
            PathBuf::from(format!(
                "/home/u/.cache/sifrun/v1/sif/sha256/{HEX}.gzip.sif"
            ))
        );
        // Another image, a pin without a digest, a bad digest, a relative root.
        assert_eq!(entry_path("docker://r.io/a/c:t", &e), None);
        let e2 = env(&[(PIN_ENV, "r.io/a/b:t"), (PIN_OF_ENV, img), ("HOME", "/h")]);
        assert_eq!(entry_path(img, &e2), None);
        let bad = format!("r.io/a/b:t@sha256:{}", HEX.to_uppercase());
        let e3 = env(&[(PIN_ENV, &bad), (PIN_OF_ENV, img), ("HOME", "/h")]);
        assert_eq!(entry_path(img, &e3), None);
        let e4 = env(&[
            (PIN_ENV, &pin),
            (PIN_OF_ENV, img),
            ("SIFRUN_CACHEDIR", "rel"),
        ]);
        assert_eq!(entry_path(img, &e4), None);
    }

    #[test]
    fn the_cache_root_follows_the_users_variables() {
        let e = env(&[
            ("HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("SIFRUN_CACHEDIR", "/c"),
        ]);
        assert_eq!(cache_root(&e).unwrap(), PathBuf::from("/c"));
        let e = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(cache_root(&e).unwrap(), PathBuf::from("/x/sifrun"));
        assert_eq!(
            cache_root(&env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.cache/sifrun")
        );
        assert_eq!(cache_root(&[]), None);
    }
}
