//! The admission of a new conversion into a cache with limits (the site
//! cache's `cache_max_image_size` and `cache_min_free`), made when the
//! conversion takes its lock: the image's declared size is recorded in
//! that lock, so conversions running at once count one another, and a
//! process that waits for another's conversion of the same image is not
//! checked (it converts nothing).

use std::fs;

use super::lock::{self, Attempt};
use super::watch::dir_bytes;
use super::{Cache, Key};

/// The most lock files read for one admission.
const MAX_LOCKS: usize = 10_000;

/// What a new conversion declares, and the check it must pass.
pub struct Admission<'a> {
    /// The bytes its image's blobs declare (recorded in its lock).
    pub size: u64,
    /// Whether it may start while the cache's other conversions may still
    /// write `reserved` bytes there; else why not.
    pub check: &'a dyn Fn(u64) -> Result<(), String>,
}

impl Cache {
    /// The bytes the live conversions of this cache, other than `key`'s,
    /// may still write: for each whose lock declares a size, twice that
    /// size (its blobs and its SIF) less what its work directory holds
    /// already. A stale lock, or one without a size, counts nothing.
    pub(crate) fn reserved(&self, key: &Key) -> u64 {
        let dir = self.dir("lock");
        let mine = format!("{}.lock", key.work_name());
        let Ok(names) = fs::read_dir(&dir) else {
            return 0;
        };
        let mut total = 0u64;
        for e in names.flatten().take(MAX_LOCKS) {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(base) = name.strip_suffix(".lock").filter(|_| name != mine) else {
                continue;
            };
            let Ok(Attempt::Busy(seen)) = lock::read_existing(&dir.join(&name)) else {
                continue;
            };
            let Some((o, size)) = seen.owner.as_ref().and_then(|o| Some((o, o.size?))) else {
                continue;
            };
            if lock::stale_reason(&seen, &dir, self.stale_after).is_some() {
                continue;
            }
            let written = if o.host.contains('/') {
                0
            } else {
                let work = format!(".{base}.{}.{}.{}", o.host, o.pid, o.token);
                dir_bytes(&self.dir("tmp").join(work))
            };
            total = total.saturating_add(size.saturating_mul(2).saturating_sub(written));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::super::Watch;
    use super::super::lock::Owner;
    use super::*;

    fn key(c: char) -> Key {
        Key::new(&format!("sha256:{}", c.to_string().repeat(64)), "gzip").unwrap()
    }

    fn cache(dir: &std::path::Path) -> Cache {
        let mut c = Cache::new(dir.to_owned());
        c.shared = true;
        c.make_dirs().unwrap();
        c
    }

    /// MEDIUM-1: each live conversion of another image counts twice its
    /// declared size, less what it has written; this image's own lock, a
    /// dead owner's and one without a size count nothing.
    #[test]
    fn other_live_conversions_are_reserved() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path());
        let Attempt::Acquired(b) = lock::try_acquire(&c.lock_path(&key('b')), Some(1000)).unwrap()
        else {
            panic!("lock")
        };
        assert_eq!(c.reserved(&key('a')), 2000);
        assert_eq!(c.reserved(&key('b')), 0, "its own lock");
        // Its work directory holds 300 bytes already.
        let work = c.work_dir(&key('b'), &b.owner);
        fs::create_dir_all(work.join("blobs")).unwrap();
        fs::write(work.join("blobs/x"), [0u8; 300]).unwrap();
        assert_eq!(c.reserved(&key('a')), 1700);
        // Another source of this very image is another conversion.
        let scoped = key('a').from_source("reg.example/x");
        let Attempt::Acquired(_s) = lock::try_acquire(&c.lock_path(&scoped), Some(10)).unwrap()
        else {
            panic!("lock")
        };
        assert_eq!(c.reserved(&key('a')), 1720);
        assert_eq!(c.reserved(&scoped), 1700);
        // A dead owner's lock, and one that declares nothing.
        let dead = Owner {
            pid_start: b.owner.pid_start + 1,
            size: Some(1 << 40),
            ..b.owner.clone()
        };
        fs::write(c.lock_path(&key('c')), serde_json::to_vec(&dead).unwrap()).unwrap();
        let Attempt::Acquired(_n) = lock::try_acquire(&c.lock_path(&key('d')), None).unwrap()
        else {
            panic!("lock")
        };
        assert_eq!(c.reserved(&key('a')), 1720);
        drop(b);
        assert_eq!(c.reserved(&key('a')), 20);
    }

    /// MEDIUM-1: the converter checks its admission with the others'
    /// reserve once it holds the lock (its size recorded there); a
    /// refusal converts nothing and leaves no lock and no failure record.
    #[test]
    fn a_conversion_is_admitted_under_its_lock() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path());
        let Attempt::Acquired(_b) = lock::try_acquire(&c.lock_path(&key('b')), Some(50)).unwrap()
        else {
            panic!("lock")
        };
        let seen = Mutex::new(Vec::new());
        let size_in_lock = Mutex::new(None);
        let check = |reserved: u64| {
            seen.lock().unwrap().push(reserved);
            let lock = fs::read(c.lock_path(&key('a'))).unwrap();
            *size_in_lock.lock().unwrap() = serde_json::from_slice::<Owner>(&lock).unwrap().size;
            Err("no room".to_owned())
        };
        let admission = Admission {
            size: 7,
            check: &check,
        };
        let watch = Watch {
            line: &|_| {},
            grew: &|_| {},
        };
        let e = c
            .ensure_watched(&key('a'), "img", Some(&admission), &watch, |_| {
                panic!("refused: must not convert")
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "no room");
        assert_eq!(*seen.lock().unwrap(), [100]);
        assert_eq!(*size_in_lock.lock().unwrap(), Some(7));
        assert!(!c.lock_path(&key('a')).exists());
        assert!(!c.fail_path(&key('a')).exists());
        // Admitted: converts.
        let ok = |_| Ok(());
        let admission = Admission {
            size: 7,
            check: &ok,
        };
        let got = c
            .ensure_watched(&key('a'), "img", Some(&admission), &watch, |out| {
                fs::write(out, b"SIF").map_err(|e| e.to_string())
            })
            .unwrap();
        assert!(got.converted);
    }

    /// MEDIUM-1: a step that waits for a live conversion of the same image
    /// is not refused because of that very conversion: it is not checked.
    #[test]
    fn a_waiter_is_not_checked() {
        let d = tempfile::tempdir().unwrap();
        let c = cache(d.path());
        let refuse = |_| Err::<(), _>("the free space is the converter's".to_owned());
        let admission = Admission {
            size: 1 << 40,
            check: &refuse,
        };
        let watch = Watch {
            line: &|_| {},
            grew: &|_| {},
        };
        std::thread::scope(|s| {
            s.spawn(|| {
                c.ensure(&key('a'), "img", &|_| {}, |out| {
                    std::thread::sleep(Duration::from_millis(1500));
                    fs::write(out, b"SIF").map_err(|e| e.to_string())
                })
                .unwrap()
            });
            std::thread::sleep(Duration::from_millis(300));
            let got = c
                .ensure_watched(&key('a'), "img", Some(&admission), &watch, |_| {
                    panic!("must wait, not convert")
                })
                .unwrap();
            assert!(!got.converted);
        });
    }
}
