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
    /// unknown, not checked); else why not. A conversion needs about twice
    /// `size` there: the downloaded blobs and the SIF.
    pub fn admit(&self, size: u64, free: Option<u64>) -> Result<(), String> {
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
            && free.saturating_sub(need) < reserve
        {
            return Err(format!(
                "converting it needs about {} of the site cache's {} free, \
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
        l.admit(2 * G, Some(100 * G)).unwrap();
        let e = l.admit(3 * G, Some(100 * G)).unwrap_err();
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
        l.admit(5 * G, Some(20 * G)).unwrap();
        let e = l.admit(5 * G + 1, Some(20 * G)).unwrap_err();
        assert!(
            e.contains("leave less than images.cache_min_free (10.0 GiB)"),
            "{e}"
        );
        assert!(e.contains("of the site cache's 20.0 GiB free"), "{e}");
        // Less free than the reserve already: even a tiny image.
        assert!(l.admit(1, Some(9 * G)).is_err());
        // Free space unknown: not checked.
        l.admit(5 * G, None).unwrap();
        // No limits: anything.
        Limits::default().admit(u64::MAX, Some(0)).unwrap();
    }

    #[test]
    fn sizes_read_for_a_person() {
        assert_eq!(human(7), "7 bytes");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(300 << 20), "300.0 MiB");
        assert_eq!(human(3 << 40), "3.0 TiB");
    }
}
