use super::super::lock::Owner;
use super::*;

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn key(c: char) -> Key {
    Key::new(&digest(c), "gzip").unwrap()
}

fn put(cache: &Cache, k: &Key) {
    cache
        .ensure(k, "img", &|_| {}, |out| {
            fs::write(out, b"SIF-bytes").map_err(|e| e.to_string())
        })
        .unwrap();
}

fn age(p: &Path, secs: u64) {
    File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn entries_are_listed_with_their_last_use() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path().to_owned());
    assert!(c.entries().unwrap().is_empty(), "no cache yet: no entries");
    put(&c, &key('a'));
    put(&c, &key('b'));
    let used = c.dir("used").join(key('a').name());
    age(&used, 3600);
    let e = c.entries().unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].digest, digest('a'));
    assert_eq!(e[0].compression, "gzip");
    assert_eq!(e[0].size, 9);
    assert_eq!(e[0].reference, None, "not a SIF: no recorded source");
    // The publication counts as a use too; age it as well.
    let entry = &e[0].path;
    fs::set_permissions(entry, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    age(entry, 3600);
    let e = c.entries().unwrap();
    assert!(e[0].last_use.elapsed().unwrap() >= Duration::from_secs(3500));
    assert!(e[1].last_use.elapsed().unwrap() < Duration::from_secs(60));
    // A use (a lookup through ensure) moves it.
    c.ensure(&key('a'), "img", &|_| {}, |_| panic!("cached"))
        .unwrap();
    assert!(c.entries().unwrap()[0].last_use.elapsed().unwrap() < Duration::from_secs(60));
}

#[test]
fn clean_removes_old_entries_but_never_a_locked_one() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path().to_owned());
    for k in ['a', 'b', 'c'] {
        put(&c, &key(k));
    }
    for k in ['a', 'b'] {
        age(&c.dir("used").join(key(k).name()), 10 * 86400);
        let e = c.entry_path(&key(k));
        fs::set_permissions(&e, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
        age(&e, 10 * 86400);
    }
    // 'b' is being converted again right now (a live lock of this process).
    let Attempt::Acquired(_held) = lock::try_acquire(&c.lock_path(&key('b'))).unwrap() else {
        panic!("lock")
    };
    let done = c.clean(None, false).unwrap();
    assert!(
        done.removed.is_empty(),
        "no --older-than, no --all: entries stay"
    );
    let done = c.clean(Some(Duration::from_secs(86400)), false).unwrap();
    let removed: Vec<_> = done.removed.iter().map(|e| e.digest.clone()).collect();
    assert_eq!(removed, [digest('a')]);
    assert_eq!(done.locked.len(), 1);
    assert_eq!(done.locked[0].digest, digest('b'));
    assert!(!c.entry_path(&key('a')).exists());
    assert!(!c.dir("used").join(key('a').name()).exists());
    assert!(c.entry_path(&key('b')).exists() && c.entry_path(&key('c')).exists());
    let done = c.clean(None, true).unwrap();
    assert_eq!(done.removed.len(), 1, "--all: 'c'; 'b' stays locked");
    assert!(c.entry_path(&key('b')).exists());
}

#[test]
fn clean_removes_the_debris_of_dead_conversions() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path().to_owned());
    c.make_dirs().unwrap();
    // A dead converter: its lock and its work directory.
    let mut dead = Owner::me();
    dead.pid_start += 1;
    fs::write(c.lock_path(&key('a')), serde_json::to_vec(&dead).unwrap()).unwrap();
    let dead_work = c.work_dir(&key('a'), &dead);
    fs::create_dir(&dead_work).unwrap();
    fs::write(dead_work.join("image.sif"), b"half").unwrap();
    // A live converter: kept.
    let Attempt::Acquired(held) = lock::try_acquire(&c.lock_path(&key('b'))).unwrap() else {
        panic!("lock")
    };
    let live_work = c.work_dir(&key('b'), &held.owner);
    fs::create_dir(&live_work).unwrap();
    // An orphan work directory (no lock at all), a broken lock's leftover,
    // an old failure record and a recent one.
    let orphan = c.dir("tmp").join(format!(".{}.h.1.ffff", key('c').name()));
    fs::create_dir(&orphan).unwrap();
    let broken = c
        .dir("lock")
        .join(format!("{}.lock.broken.h.1.ab", key('c').name()));
    fs::write(&broken, b"{}").unwrap();
    age(&broken, 600);
    let old_fail = c.fail_path(&key('c'));
    fs::write(&old_fail, b"{}").unwrap();
    age(&old_fail, 3600);
    let new_fail = c.fail_path(&key('d'));
    fs::write(&new_fail, b"{}").unwrap();
    let done = c.clean(None, false).unwrap();
    let mut debris = done.debris.clone();
    debris.sort();
    let mut want = vec![c.lock_path(&key('a')), dead_work, orphan, broken, old_fail];
    want.sort();
    assert_eq!(debris, want);
    assert!(live_work.exists() && c.lock_path(&key('b')).exists());
    assert!(new_fail.exists());
    drop(held);
}
