//! The admin's limits on what the cache's account converts into the site
//! cache (`[images] cache_max_image_size`, `cache_min_free`): an image
//! over them goes to the user's cache instead, with one line saying why.

use std::path::Path;

/// The limits (`None`: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes an image's blobs may declare.
    pub max_image_size: Option<u64>,
    /// The bytes a conversion must leave free on the cache's filesystem.
    pub min_free: Option<u64>,
}

impl Limits {
    /// Whether an image whose blobs declare `size` bytes may be converted
    /// into a cache whose filesystem has `free` bytes available (`None`:
    /// unknown, not checked) while the conversions already running there
    /// may still write `reserved` bytes of it; else why not. A conversion
    /// needs about twice `size` there: the downloaded blobs and the SIF.
    /// It is checked when the conversion starts: a quota or a filesystem
    /// of the cache's own is the hard limit.
    pub fn admit(&self, size: u64, free: Option<u64>, reserved: u64) -> Result<(), String> {
        if let Some(max) = self.max_image_size
            && size > max
        {
            return Err(format!(
                "its layers are {}, over images.cache_max_image_size ({})",
                human(size),
                human(max)
            ));
        }
        let need = size.saturating_mul(2);
        if let (Some(reserve), Some(free)) = (self.min_free, free)
            && free.saturating_sub(reserved).saturating_sub(need) < reserve
        {
            let others = if reserved == 0 {
                String::new()
            } else {
                format!(
                    " ({} of it kept for the conversions in progress)",
                    human(reserved)
                )
            };
            return Err(format!(
                "converting it needs about {} of the site cache's {} free{others}, \
                 which would leave less than images.cache_min_free ({})",
                human(need),
                human(free),
                human(reserve)
            ));
        }
        Ok(())
    }
}

/// The bytes available to unprivileged users on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// `n` bytes for a person: `1.5 GiB`, `300.0 MiB`, `12.0 KiB`, `7 bytes`.
fn human(n: u64) -> String {
    let units = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    for (shift, unit) in units {
        if n >= 1u64 << shift {
            return format!("{:.1} {unit}", n as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    #[test]
    fn an_image_over_the_size_limit_is_refused() {
        let l = Limits {
            max_image_size: Some(2 * G),
            min_free: None,
        };
        l.admit(2 * G, Some(100 * G), 0).unwrap();
        let e = l.admit(3 * G, Some(100 * G), 0).unwrap_err();
        assert_eq!(
            e,
            "its layers are 3.0 GiB, over images.cache_max_image_size (2.0 GiB)"
        );
    }

    #[test]
    fn a_conversion_must_leave_the_reserve_free() {
        let l = Limits {
            max_image_size: None,
            min_free: Some(10 * G),
        };
        // 2 × 5 GiB needed, 20 GiB free: 10 GiB left, just enough.
        l.admit(5 * G, Some(20 * G), 0).unwrap();
        let e = l.admit(5 * G + 1, Some(20 * G), 0).unwrap_err();
        assert!(
            e.contains("leave less than images.cache_min_free (10.0 GiB)"),
            "{e}"
        );
        assert!(e.contains("of the site cache's 20.0 GiB free"), "{e}");
        // Less free than the reserve already: even a tiny image.
        assert!(l.admit(1, Some(9 * G), 0).is_err());
        // Free space unknown: not checked.
        l.admit(5 * G, None, 0).unwrap();
        // No limits: anything.
        Limits::default().admit(u64::MAX, Some(0), 0).unwrap();
    }

    /// MEDIUM-1: five 20 GiB images at once on 100 GiB free with a
    /// 10 GiB reserve: each admitted one keeps twice its size, so the
    /// third is refused.
    #[test]
    fn conversions_in_progress_count() {
        let l = Limits {
            max_image_size: Some(20 * G),
            min_free: Some(10 * G),
        };
        let mut reserved = 0;
        let mut admitted = 0;
        for _ in 0..5 {
            if l.admit(20 * G, Some(100 * G), reserved).is_ok() {
                admitted += 1;
                reserved += 40 * G;
            }
        }
        assert_eq!(admitted, 2);
        let e = l.admit(20 * G, Some(100 * G), 80 * G).unwrap_err();
        assert_eq!(
            e,
            "converting it needs about 40.0 GiB of the site cache's 100.0 GiB free \
             (80.0 GiB of it kept for the conversions in progress), which would leave \
             less than images.cache_min_free (10.0 GiB)"
        );
        // Just enough: 100 - 50 - 40 = 10.
        l.admit(20 * G, Some(100 * G), 50 * G).unwrap();
        l.admit(20 * G, Some(100 * G), u64::MAX).unwrap_err();
        // Free space unknown: not checked, whatever the reserve.
        l.admit(20 * G, None, u64::MAX).unwrap();
    }

    #[test]
    fn sizes_read_for_a_person() {
        assert_eq!(human(7), "7 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(300 << 20), "300.0 MiB");
        assert_eq!(human(3 << 40), "3.0 TiB");
    }
}
