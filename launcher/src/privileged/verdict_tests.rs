use super::*;

fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn trust() -> TrustFiles {
    TrustFiles {
        keyring: b"keys".to_vec(),
        ..TrustFiles::default()
    }
}

fn state(file: &Path) -> FileState {
    FileState::of(&std::fs::metadata(file).unwrap())
}

struct Fixture {
    _tmp: tempfile::TempDir,
    image: PathBuf,
    cache: Cache,
}

fn fixture(max: usize) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("img.sif");
    std::fs::write(&image, b"image bytes").unwrap();
    let cache = Cache::open(&tmp.path().join("ecl-verdicts"), max, me()).unwrap();
    Fixture {
        _tmp: tmp,
        image,
        cache,
    }
}

fn key(f: &Fixture) -> Key {
    Key::new(
        state(&f.image),
        Some(b"h1"),
        Path::new("/images"),
        b"[ecl]",
        &trust(),
    )
}

fn entry(k: Key) -> Entry {
    Entry::new(k, Some("g".into()), 4096, 1024, SystemTime::now())
}

fn entry_path(f: &Fixture, k: &Key) -> PathBuf {
    f.cache.dir.join(k.name())
}

#[test]
fn a_stored_verdict_is_found_again_for_the_same_key() {
    let f = fixture(4);
    let k = key(&f);
    assert_eq!(f.cache.lookup(&k, SystemTime::now()), None);
    f.cache.store(&entry(k.clone())).unwrap();
    let hit = f.cache.lookup(&k, SystemTime::now()).unwrap();
    assert_eq!(
        (hit.offset, hit.size, hit.group.as_deref()),
        (4096, 1024, Some("g"))
    );
    let m = std::fs::metadata(entry_path(&f, &k)).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o600);
}

#[test]
fn every_key_field_changes_the_key() {
    let f = fixture(4);
    let k = key(&f);
    let s = state(&f.image);
    let other_trust = TrustFiles {
        keyring: b"other keys".to_vec(),
        ..TrustFiles::default()
    };
    let variants = [
        Key::new(
            s.clone(),
            Some(b"h2"),
            Path::new("/images"),
            b"[ecl]",
            &trust(),
        ),
        Key::new(s.clone(), None, Path::new("/images"), b"[ecl]", &trust()),
        Key::new(
            s.clone(),
            Some(b"h1"),
            Path::new("/other"),
            b"[ecl]",
            &trust(),
        ),
        Key::new(
            s.clone(),
            Some(b"h1"),
            Path::new("/images"),
            b"[ecl] #",
            &trust(),
        ),
        Key::new(
            s.clone(),
            Some(b"h1"),
            Path::new("/images"),
            b"[ecl]",
            &other_trust,
        ),
        Key::new(
            FileState {
                ctime_ns: s.ctime_ns + 1,
                ..s.clone()
            },
            Some(b"h1"),
            Path::new("/images"),
            b"[ecl]",
            &trust(),
        ),
        Key::new(
            FileState {
                ino: s.ino + 1,
                ..s.clone()
            },
            Some(b"h1"),
            Path::new("/images"),
            b"[ecl]",
            &trust(),
        ),
        Key::new(
            FileState {
                mode: s.mode | 0o020,
                ..s.clone()
            },
            Some(b"h1"),
            Path::new("/images"),
            b"[ecl]",
            &trust(),
        ),
    ];
    f.cache.store(&entry(k.clone())).unwrap();
    for v in &variants {
        assert_ne!(v, &k);
        assert_eq!(f.cache.lookup(v, SystemTime::now()), None, "{v:?}");
    }
    assert!(f.cache.lookup(&k, SystemTime::now()).is_some());
}

#[test]
fn rewriting_the_file_in_place_is_a_miss() {
    let f = fixture(4);
    let k = key(&f);
    f.cache.store(&entry(k.clone())).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&f.image, b"other bytes").unwrap();
    assert_ne!(key(&f), k);
    assert_eq!(f.cache.lookup(&key(&f), SystemTime::now()), None);
}

#[test]
fn an_expired_entry_is_a_miss_and_removed() {
    let f = fixture(4);
    let k = key(&f);
    f.cache.store(&entry(k.clone())).unwrap();
    let later = SystemTime::now() + MAX_AGE + Duration::from_secs(60);
    assert_eq!(f.cache.lookup(&k, later), None);
    assert!(!entry_path(&f, &k).exists());
}

#[test]
fn hostile_entries_are_misses_and_removed() {
    let f = fixture(4);
    let k = key(&f);
    let good = serde_json::to_string(&entry(k.clone())).unwrap();
    let p = entry_path(&f, &k);
    let plant = |text: &str, mode: u32| {
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    // Garbage, a mode other than 0600, an oversized entry.
    for (text, mode) in [
        ("garbage".to_string(), 0o600),
        (good.clone(), 0o644),
        (good.clone(), 0o400),
        (format!("{good}{}", " ".repeat(5000)), 0o600),
    ] {
        plant(&text, mode);
        assert_eq!(f.cache.lookup(&k, SystemTime::now()), None, "{mode:o}");
        assert!(!p.exists());
    }
    // An entry under the right name holding another key.
    let mut other = entry(k.clone());
    other.key.dir = PathBuf::from("/elsewhere");
    plant(&serde_json::to_string(&other).unwrap(), 0o600);
    assert_eq!(f.cache.lookup(&k, SystemTime::now()), None);
    // A symlink to a good entry is not followed.
    let real = f.cache.dir.join("real");
    std::fs::write(&real, &good).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink(&real, &p).unwrap();
    assert_eq!(f.cache.lookup(&k, SystemTime::now()), None);
    // The control: the good entry itself is a hit.
    plant(&good, 0o600);
    assert!(f.cache.lookup(&k, SystemTime::now()).is_some());
}

#[test]
fn an_entry_of_another_owner_is_a_miss() {
    let f = fixture(4);
    let k = key(&f);
    f.cache.store(&entry(k.clone())).unwrap();
    let foreign = Cache {
        dir: f.cache.dir.clone(),
        max: 4,
        owner: me() + 1,
    };
    assert_eq!(foreign.lookup(&k, SystemTime::now()), None);
    assert!(!entry_path(&f, &k).exists());
}

#[test]
fn the_directory_must_be_the_owners_and_0700() {
    let f = fixture(4);
    std::fs::set_permissions(&f.cache.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(Cache::open(&f.cache.dir, 4, me()).is_err());
    std::fs::set_permissions(&f.cache.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(Cache::open(&f.cache.dir, 4, me()).is_ok());
    assert!(Cache::open(&f.cache.dir, 4, me() + 1).is_err());
}

#[test]
fn the_bound_drops_the_least_recently_used() {
    let f = fixture(2);
    let keys: Vec<Key> = (0..3u8)
        .map(|i| {
            Key::new(
                state(&f.image),
                Some(&[i]),
                Path::new("/images"),
                b"[ecl]",
                &trust(),
            )
        })
        .collect();
    let t0 = SystemTime::now();
    f.cache.store(&entry(keys[0].clone())).unwrap();
    f.cache.store(&entry(keys[1].clone())).unwrap();
    let age = |k: &Key, t: SystemTime| {
        File::options()
            .write(true)
            .open(entry_path(&f, k))
            .unwrap()
            .set_modified(t)
            .unwrap()
    };
    age(&keys[0], t0 - Duration::from_secs(20));
    age(&keys[1], t0 - Duration::from_secs(10));
    // A hit makes keys[0] the most recently used.
    assert!(f.cache.lookup(&keys[0], t0).is_some());
    f.cache.store(&entry(keys[2].clone())).unwrap();
    let names = std::fs::read_dir(&f.cache.dir).unwrap().count();
    assert_eq!(names, 2);
    assert!(entry_path(&f, &keys[0]).exists());
    assert!(!entry_path(&f, &keys[1]).exists());
    assert!(entry_path(&f, &keys[2]).exists());
}

#[test]
fn a_bound_of_zero_stores_nothing() {
    let f = fixture(0);
    let k = key(&f);
    f.cache.store(&entry(k.clone())).unwrap();
    assert!(!entry_path(&f, &k).exists());
    assert_eq!(f.cache.lookup(&k, SystemTime::now()), None);
}

#[test]
fn racy_ctime_is_not_stored() {
    let f = fixture(4);
    let s = state(&f.image);
    let ctime = UNIX_EPOCH + Duration::from_nanos(s.ctime_ns as u64);
    // Changed within RACY of the verification: not stored.
    assert!(!storable(&s, &s, ctime + Duration::from_secs(1)));
    assert!(!storable(&s, &s, ctime));
    // Old enough: stored.
    assert!(storable(&s, &s, ctime + RACY + Duration::from_millis(1)));
    // The file moved during the verification: not stored.
    let moved = FileState {
        mtime_ns: s.mtime_ns + 1,
        ..s.clone()
    };
    assert!(!storable(&s, &moved, ctime + Duration::from_secs(60)));
}

#[test]
fn a_denial_is_never_stored() {
    let f = fixture(4);
    let k = key(&f);
    let s = state(&f.image);
    let long_after = SystemTime::now() + Duration::from_secs(60);
    let mut v = Verdict {
        allowed: false,
        group: Some("g".into()),
        reason: "unsigned".into(),
        offset: 4096,
        size: 1024,
    };
    remember(&f.cache, k.clone(), &s, long_after, &v);
    assert!(!entry_path(&f, &k).exists());
    // The control: the same verdict allowed is stored.
    v.allowed = true;
    remember(&f.cache, k.clone(), &s, long_after, &v);
    assert!(entry_path(&f, &k).exists());
}

#[test]
fn a_racy_verdict_is_not_stored() {
    let f = fixture(4);
    let k = key(&f);
    let s = state(&f.image);
    let v = Verdict {
        allowed: true,
        group: None,
        reason: String::new(),
        offset: 0,
        size: 1,
    };
    remember(&f.cache, k.clone(), &s, SystemTime::now(), &v);
    assert!(!entry_path(&f, &k).exists());
}
