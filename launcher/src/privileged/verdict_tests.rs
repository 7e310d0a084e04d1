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
    Entry::new(
        k,
        Some("g".into()),
        4096,
        1024,
        SystemTime::now(),
        Until::Always,
    )
    .unwrap()
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
        until: Until::Always,
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
        until: Until::Always,
    };
    remember(&f.cache, k.clone(), &s, SystemTime::now(), &v);
    assert!(!entry_path(&f, &k).exists());
}

/// A fixed clock: 2030-01-01.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_893_456_000)
}

fn at(t: SystemTime) -> Until {
    Until::At(secs(t) as i64)
}

/// A verdict that relied on a certificate ending in an hour is a hit
/// until then and a miss (removed) from then on, long before MAX_AGE.
#[test]
fn a_certificate_verdict_expires_with_the_certificate() {
    let f = fixture(4);
    let k = key(&f);
    let end = t0() + Duration::from_secs(3600);
    let e = Entry::new(k.clone(), None, 4096, 1024, t0(), at(end)).unwrap();
    f.cache.store(&e).unwrap();
    let hit = f
        .cache
        .lookup(&k, t0() + Duration::from_secs(3599))
        .unwrap();
    assert_eq!(hit.not_after, secs(end));
    assert_eq!(f.cache.lookup(&k, end), None);
    assert!(!entry_path(&f, &k).exists());
    // A certificate valid beyond MAX_AGE: MAX_AGE bounds the entry.
    let far = Entry::new(k, None, 0, 1, t0(), at(t0() + 10 * MAX_AGE)).unwrap();
    assert_eq!(far.not_after, secs(t0() + MAX_AGE));
}

/// A verdict whose time is unknown, or that holds no longer, is not kept.
#[test]
fn an_unbounded_or_past_verdict_is_not_stored() {
    let f = fixture(4);
    let k = key(&f);
    assert_eq!(
        Entry::new(k.clone(), None, 0, 1, t0(), Until::Unknown),
        None
    );
    assert_eq!(Entry::new(k.clone(), None, 0, 1, t0(), at(t0())), None);
    let past = at(t0() - Duration::from_secs(1));
    assert_eq!(Entry::new(k.clone(), None, 0, 1, t0(), past), None);
    let s = state(&f.image);
    let long_after = SystemTime::now() + Duration::from_secs(60);
    let mut v = Verdict {
        allowed: true,
        group: None,
        reason: String::new(),
        offset: 0,
        size: 1,
        until: Until::Unknown,
    };
    remember(&f.cache, k.clone(), &s, long_after, &v);
    assert!(!entry_path(&f, &k).exists());
    // The control: bounded an hour after the verification, stored.
    v.until = at(long_after + Duration::from_secs(3600));
    remember(&f.cache, k.clone(), &s, long_after, &v);
    assert!(entry_path(&f, &k).exists());
}

/// With certificates in the trust files, a change of the keyring, of a
/// listed certificate's bytes or of the roots still changes the key.
#[test]
fn a_trust_file_change_invalidates_a_certificate_verdict() {
    let f = fixture(4);
    let trust = |keyring: &[u8], cert: &[u8], roots: &[u8]| TrustFiles {
        keyring: keyring.to_vec(),
        certificates: vec![(PathBuf::from("/etc/sifrun/leaf.pem"), cert.to_vec())],
        roots: Some(roots.to_vec()),
        intermediates: None,
    };
    let k = |t: &TrustFiles| Key::new(state(&f.image), None, Path::new("/images"), b"[ecl]", t);
    let base = k(&trust(b"keys", b"leaf", b"root"));
    let end = SystemTime::now() + Duration::from_secs(3600);
    let e = Entry::new(base.clone(), None, 0, 1, SystemTime::now(), at(end)).unwrap();
    f.cache.store(&e).unwrap();
    for other in [
        trust(b"other keys", b"leaf", b"root"),
        trust(b"keys", b"renewed leaf", b"root"),
        trust(b"keys", b"leaf", b"other root"),
    ] {
        let o = k(&other);
        assert_ne!(o, base);
        assert_eq!(f.cache.lookup(&o, SystemTime::now()), None);
    }
    assert!(f.cache.lookup(&base, SystemTime::now()).is_some());
}

/// The verifier's verdict on an image signed by the one-day certificate
/// carries that certificate's end of validity, and the entry stored for it
/// ends then.
#[test]
fn the_verdict_on_a_certificate_image_carries_its_end() {
    use crate::ecl_check::certificate_tests::Pki;
    use slurm_conf::ecl::Mode;
    let pki = Pki::new();
    let (ecl, files) = pki.ecl(Mode::Whitelist, &["leaf-short"], "root");
    let image = pki.image("leaf-short");
    let v = crate::ecl_check::judge(&image, Path::new("/images"), &ecl, &files);
    assert!(v.allowed, "{v:?}");
    let end = pki.not_after("leaf-short");
    assert_eq!(v.until, Until::At(end));
    let f = fixture(4);
    let k = key(&f);
    let long_after = SystemTime::now() + Duration::from_secs(60);
    remember(&f.cache, k.clone(), &state(&f.image), long_after, &v);
    let e = f.cache.lookup(&k, long_after).unwrap();
    assert_eq!(e.not_after, end as u64);
    let expired = UNIX_EPOCH + Duration::from_secs(end as u64);
    assert_eq!(f.cache.lookup(&k, expired), None);
    // A ten-year certificate: bounded by MAX_AGE instead.
    let (ecl, files) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
    let v = crate::ecl_check::judge(&pki.image("leaf"), Path::new("/images"), &ecl, &files);
    assert!(matches!(v.until, Until::At(t) if t > end + 86_400), "{v:?}");
}
