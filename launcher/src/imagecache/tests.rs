use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn cache(dir: &Path) -> Cache {
    let mut c = Cache::new(dir.to_owned());
    c.heartbeat = Duration::from_millis(100);
    c.wait_timeout = Duration::from_secs(60);
    c
}

fn key() -> Key {
    Key::new(DIGEST, "gzip").unwrap()
}

fn entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(d)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn keys_are_checked() {
    assert!(Key::new("sha256:abc", "gzip").is_err());
    assert!(Key::new(&DIGEST.to_uppercase(), "gzip").is_err());
    assert!(Key::new(DIGEST, "../x").is_err());
    assert!(Cache::new("/c".into()).entry_path(&key()).ends_with(
        "v1/sif/sha256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.gzip.sif"
    ));
}

#[test]
fn converts_once_then_uses_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let lines = Mutex::new(Vec::new());
    let progress = |l: &str| lines.lock().unwrap().push(l.to_owned());
    let first = c
        .ensure(&key(), "img", &progress, |out| {
            fs::write(out, b"SIF").map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(first.converted);
    assert_eq!(fs::read(&first.path).unwrap(), b"SIF");
    let mode = fs::metadata(&first.path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o444);
    let second = c
        .ensure(&key(), "img", &progress, |_| {
            panic!("must not convert again")
        })
        .unwrap();
    assert!(!second.converted);
    assert_eq!(second.path, first.path);
    assert!(entries(&c.dir("lock")).is_empty());
    assert!(entries(&c.dir("tmp")).is_empty());
    assert_eq!(*lines.lock().unwrap(), ["img: converting into the cache"]);
}

#[test]
fn a_failure_leaves_no_entry_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let e = c
        .ensure(&key(), "img", &|_| {}, |out| {
            fs::write(out, b"half").unwrap();
            Err("layer 2: digest mismatch".into())
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "layer 2: digest mismatch");
    assert!(entries(&c.dir("sif/sha256")).is_empty());
    assert!(entries(&c.dir("lock")).is_empty());
    assert!(entries(&c.dir("tmp")).is_empty());
    let f: Failure = serde_json::from_slice(&fs::read(c.fail_path(&key())).unwrap()).unwrap();
    assert_eq!(f.message, "layer 2: digest mismatch");
    // Not world-readable, even in a shared cache (0755 directories).
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(c.fail_path(&key()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let mut shared = cache(&dir.path().join("shared"));
    shared.shared = true;
    let other = Key::new(&format!("sha256:{}", "e".repeat(64)), "gzip").unwrap();
    shared
        .ensure(&other, "img", &|_| {}, |_| Err("registry text".into()))
        .unwrap_err();
    let mode = fs::metadata(shared.fail_path(&other))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    // A new request converts again, and success removes the record.
    c.ensure(&key(), "img", &|_| {}, |out| {
        fs::write(out, b"SIF").map_err(|e| e.to_string())
    })
    .unwrap();
    assert!(!c.fail_path(&key()).exists());
}

#[test]
fn threads_share_one_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let conversions = AtomicUsize::new(0);
    let paths = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let r = c
                    .ensure(&key(), "img", &|_| {}, |out| {
                        conversions.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(1500));
                        fs::write(out, b"SIF").map_err(|e| e.to_string())
                    })
                    .unwrap();
                paths.lock().unwrap().push(r.path);
            });
        }
    });
    assert_eq!(conversions.load(Ordering::SeqCst), 1);
    let paths = paths.into_inner().unwrap();
    assert_eq!(paths.len(), 4);
    assert!(paths.iter().all(|p| *p == c.entry_path(&key())));
}

#[test]
fn a_waiter_reports_the_converters_failure() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    std::thread::scope(|s| {
        let converter = s.spawn(|| {
            c.ensure(&key(), "img", &|_| {}, |_| {
                std::thread::sleep(Duration::from_millis(1500));
                Err("manifest too big".into())
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let waiter = c
            .ensure(&key(), "img", &|_| {}, |_| panic!("must not convert"))
            .unwrap_err();
        assert!(
            waiter.to_string().contains("failed")
                && waiter.to_string().contains("manifest too big"),
            "{waiter}"
        );
        assert!(converter.join().unwrap().is_err());
    });
}

#[test]
fn a_dead_owners_lock_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.make_dirs().unwrap();
    let mut dead = Owner::me();
    dead.pid_start += 1;
    fs::write(c.lock_path(&key()), serde_json::to_vec(&dead).unwrap()).unwrap();
    let work = c.work_dir(&key(), &dead);
    fs::create_dir(&work).unwrap();
    fs::write(work.join("image.sif"), b"half").unwrap();
    let lines = Mutex::new(Vec::new());
    let r = c
        .ensure(
            &key(),
            "img",
            &|l| lines.lock().unwrap().push(l.to_owned()),
            |out| fs::write(out, b"SIF").map_err(|e| e.to_string()),
        )
        .unwrap();
    assert!(r.converted);
    let lines = lines.into_inner().unwrap();
    assert!(lines[0].contains("broke a stale cache lock"), "{lines:?}");
    assert!(
        entries(&c.dir("tmp")).is_empty(),
        "the dead converter's work is removed"
    );
    assert!(entries(&c.dir("lock")).is_empty());
}

#[test]
fn a_foreign_entry_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.make_dirs().unwrap();
    let p = c.entry_path(&key());
    fs::write(&p, b"planted").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(c.lookup(&key()).unwrap(), None);
}

/// A conversion of the same digest from another source (registry and
/// repository) neither stalls this one nor shows it its failure.
#[test]
fn sources_convert_apart_and_shared_failures_are_generic() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    c.make_dirs().unwrap();
    let slow = key().from_source("evil.example/library/python");
    let Attempt::Acquired(_held) = lock::try_acquire(&c.lock_path(&slow), None).unwrap() else {
        panic!("lock")
    };
    let mine = key().from_source("docker.io/library/python");
    assert_ne!(c.lock_path(&slow), c.lock_path(&mine));
    assert_eq!(c.entry_path(&slow), c.entry_path(&mine), "one entry");
    let started = std::time::Instant::now();
    let r = c
        .ensure(&mine, "img", &|_| {}, |out| {
            fs::write(out, b"SIF").map_err(|e| e.to_string())
        })
        .unwrap();
    assert!(r.converted && started.elapsed() < Duration::from_secs(5));
    // In a shared cache a waiter sees a generic line, not the other's text.
    let mut shared = cache(&dir.path().join("site"));
    shared.shared = true;
    std::thread::scope(|s| {
        let converter = s.spawn(|| {
            shared.ensure(&key(), "img", &|_| {}, |_| {
                std::thread::sleep(Duration::from_millis(1500));
                Err("\u{1b}[31mpwned by the registry".into())
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let e = shared
            .ensure(&key(), "img", &|_| {}, |_| panic!("must not convert"))
            .unwrap_err()
            .to_string();
        assert!(
            !e.contains("pwned") && e.contains(DIGEST) && e.contains("failed"),
            "{e}"
        );
        assert!(converter.join().unwrap().is_err());
    });
}

/// The site cache's converter (its owner) uses an entry root added (an
/// admin's signed copy) instead of replacing it; a private cache does not.
#[test]
fn a_shared_cache_owner_accepts_roots_entries() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root to own an entry as root; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = cache(dir.path());
    c.make_dirs().unwrap();
    fs::write(c.entry_path(&key()), b"admin's SIF").unwrap();
    fs::set_permissions(c.entry_path(&key()), fs::Permissions::from_mode(0o444)).unwrap();
    let cache_user = 65534;
    assert_eq!(c.lookup_as(&key(), cache_user).unwrap(), None, "private");
    c.shared = true;
    assert_eq!(
        c.lookup_as(&key(), cache_user).unwrap(),
        Some(c.entry_path(&key()))
    );
    std::os::unix::fs::chown(c.entry_path(&key()), Some(54321), None).unwrap();
    assert_eq!(
        c.lookup_as(&key(), cache_user).unwrap(),
        None,
        "another user's"
    );
}

/// L4: a process waiting for another's conversion hears each time that
/// conversion's work directory grows (the Slurm holder relays it, so the
/// plugin's set-up timeout does not run out while it moves).
#[test]
fn a_waiter_hears_the_conversion_it_waits_for_grow() {
    let dir = tempfile::tempdir().unwrap();
    let c = cache(dir.path());
    let grown = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        s.spawn(|| {
            c.ensure(&key(), "img", &|_| {}, |out| {
                for n in 1..=4 {
                    fs::write(out, vec![0u8; n * 1000]).map_err(|e| e.to_string())?;
                    std::thread::sleep(Duration::from_millis(1200));
                }
                Ok(())
            })
            .unwrap();
        });
        std::thread::sleep(Duration::from_millis(300));
        let watch = Watch {
            line: &|_| {},
            grew: &|n| grown.lock().unwrap().push(n),
        };
        let got = c
            .ensure_watched(&key(), "img", None, &watch, |_| panic!("must not convert"))
            .unwrap();
        assert!(!got.converted);
    });
    let grown = grown.into_inner().unwrap();
    assert!(grown.len() >= 2, "{grown:?}");
    assert!(grown.windows(2).all(|w| w[0] < w[1]), "{grown:?}");
    assert!(
        grown.iter().all(|&n| n % 1000 == 0 && n <= 4000),
        "{grown:?}"
    );
}

/// A waiter looks at the conversion it waits for at least every 2.4 s
/// (2 s and the jitter), however long it waits: with the holder's 2 s
/// between progress reports, a moving conversion is reported well within
/// a `setup_timeout` of 6 s (it looked every 5-6 s, and a step waiting
/// for a slow conversion failed at 6 s although the conversion moved).
#[test]
fn a_waiter_looks_often_enough_for_a_short_setup_timeout() {
    let mut d = Duration::from_secs(1);
    for _ in 0..20 {
        d = next_look(d);
        assert!(d <= Duration::from_secs(2), "{d:?}");
        assert!(jitter(d) <= Duration::from_millis(2400), "{d:?}");
    }
    assert_eq!(d, Duration::from_secs(2));
}
