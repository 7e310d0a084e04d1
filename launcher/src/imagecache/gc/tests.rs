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
    let Attempt::Acquired(_held) = lock::try_acquire(&c.lock_path(&key('b')), None).unwrap() else {
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
    let Attempt::Acquired(held) = lock::try_acquire(&c.lock_path(&key('b')), None).unwrap() else {
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

/// A SIF recording `labels` (a JSON object).
fn sif_with_labels(path: &Path, labels: &str) {
    use sif::write::{self, CreateOptions, ObjectInput};
    let file = File::create(path).unwrap();
    let mut r = labels.as_bytes();
    let mut obj = ObjectInput::new(DataType::LABELS, &mut r);
    obj.name = "labels.json".into();
    write::create(file, &CreateOptions::default(), vec![obj]).unwrap();
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
}

const LABELS: &str = r#"{"io.sifrun.source.digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","io.sifrun.source.ref":"docker.io/x/y:1"}"#;

/// A scratch directory whose parents are root's or this user's and not
/// writable by others (the test binary's directory, not /tmp).
fn scratch() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().unwrap();
    let d = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
    fs::set_permissions(d.path(), PermissionsExt::from_mode(0o755)).unwrap();
    d
}

#[test]
fn add_refuses_symlinks_fifos_foreign_and_writable_files() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch();
    let me = nix::unistd::getuid().as_raw();
    let good = d.path().join("good.sif");
    sif_with_labels(&good, LABELS);
    let src = open_source(&good, me).unwrap();
    assert_eq!(src.digest, format!("sha256:{}", "a".repeat(64)));
    // A symlink to it: not followed.
    let link = d.path().join("link.sif");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let e = open_source(&link, me).unwrap_err();
    assert!(matches!(e, SourceError::Open { .. }), "{e}");
    // A FIFO: refused at once (no blocking open).
    let fifo = d.path().join("fifo.sif");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let e = open_source(&fifo, me).unwrap_err();
    assert!(matches!(e, SourceError::NotRegular { .. }), "{e}");
    // Writable by the group.
    fs::set_permissions(&good, PermissionsExt::from_mode(0o664)).unwrap();
    let e = open_source(&good, me).unwrap_err();
    assert!(matches!(e, SourceError::Writable { .. }), "{e}");
    fs::set_permissions(&good, PermissionsExt::from_mode(0o644)).unwrap();
    // Owned by another user (as root: give it away; else ask as another caller).
    let other = if me == 0 {
        std::os::unix::fs::chown(&good, Some(54321), None).unwrap();
        me
    } else {
        me + 1
    };
    if me != 0 {
        // The caller is not the owner, and the owner is not root.
        let e = open_source(&good, other).unwrap_err();
        assert!(matches!(e, SourceError::Owner { .. }), "{e}");
    } else {
        let e = open_source(&good, other).unwrap_err();
        assert!(e.to_string().contains("uid 54321"), "{e}");
    }
    // No digest recorded.
    let plain = d.path().join("plain.sif");
    sif_with_labels(&plain, "{}");
    let e = open_source(&plain, me).unwrap_err();
    assert!(matches!(e, SourceError::NoDigest { .. }), "{e}");
}

/// A file on FUSE is refused (its server chooses what each read returns);
/// a local file's filesystem is not taken for FUSE.
#[test]
fn add_refuses_a_file_on_fuse() {
    use nix::sys::statfs::{FsType, fstatfs};
    assert!(on_fuse(FsType(0x6573_5546)));
    let d = tempfile::tempdir().unwrap();
    let f = File::create(d.path().join("x")).unwrap();
    assert!(!on_fuse(fstatfs(&f).unwrap().filesystem_type()));
    let e = SourceError::Fuse {
        path: PathBuf::from("/mnt/u/app.sif"),
    };
    assert!(
        e.to_string()
            .starts_with("/mnt/u/app.sif: on a FUSE filesystem"),
        "{e}"
    );
}

/// A file in a directory others may write, or one that is not root's or
/// the caller's, is refused with a line naming that directory: whoever
/// may write it chooses what the path names.
#[test]
fn add_refuses_a_file_in_a_directory_others_control() {
    use std::os::unix::fs::PermissionsExt;
    let d = scratch();
    let me = nix::unistd::getuid().as_raw();
    let dir = d.path().join("shared");
    fs::create_dir(&dir).unwrap();
    let img = dir.join("app.sif");
    sif_with_labels(&img, LABELS);
    fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
    assert!(open_source(&img, me).is_ok());
    fs::set_permissions(&dir, PermissionsExt::from_mode(0o1777)).unwrap();
    let e = open_source(&img, me).unwrap_err();
    assert!(matches!(e, SourceError::Directory { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("a directory above it is not safe")
            && text.contains("shared: mode 1777 lets others write it"),
        "{text}"
    );
    fs::set_permissions(&dir, PermissionsExt::from_mode(0o755)).unwrap();
    if me == 0 {
        std::os::unix::fs::chown(&dir, Some(54321), None).unwrap();
        let e = open_source(&img, me).unwrap_err().to_string();
        assert!(
            e.contains("shared: owned by uid 54321, must be owned by root or you"),
            "{e}"
        );
    }
}

#[test]
fn add_copies_from_the_descriptor_it_checked() {
    let d = scratch();
    let me = nix::unistd::getuid().as_raw();
    let c = Cache::new(d.path().join("cache"));
    let img = d.path().join("app.sif");
    sif_with_labels(&img, LABELS);
    let original = fs::read(&img).unwrap();
    let src = open_source(&img, me).unwrap();
    // The path now names something else: the checked file is what goes in.
    let other = d.path().join("other");
    fs::write(&other, b"not what was checked").unwrap();
    fs::rename(&other, &img).unwrap();
    let key = Key::new(&src.digest, "gzip").unwrap();
    let entry = c.add(&key, &src).unwrap();
    assert_eq!(fs::read(&entry).unwrap(), original);
}

#[test]
fn printable_drops_control_characters() {
    assert_eq!(
        printable("doc\u{1b}[2Jker.io/x\n\r\u{7}:1"),
        "doc[2Jker.io/x:1"
    );
    assert_eq!(printable("plain/ref:1"), "plain/ref:1");
}

#[test]
fn clean_keeps_an_entry_whose_conversion_from_some_source_is_live() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path().to_owned());
    put(&c, &key('a'));
    let scoped = key('a').from_source("reg.example/team/app");
    let Attempt::Acquired(held) = lock::try_acquire(&c.lock_path(&scoped), None).unwrap() else {
        panic!("lock")
    };
    // Its work directory (named by the scoped lock) is not debris either.
    let work = c.work_dir(&scoped, &held.owner);
    fs::create_dir(&work).unwrap();
    let done = c.clean(None, true).unwrap();
    assert!(done.removed.is_empty(), "{:?}", done.removed);
    assert_eq!(done.locked.len(), 1);
    assert!(c.entry_path(&key('a')).exists() && work.exists());
}

/// Invisible format and separator characters go too: a bidi override
/// (`U+202E`) would show `gpj.exe` as `exe.jpg`, a zero-width space or a
/// line separator hides what a name is.
#[test]
fn printable_drops_format_and_separator_characters() {
    assert_eq!(
        printable(
            "a\u{202e}b\u{2066}c\u{2069}d\u{200b}e\u{200f}f\u{2060}g\u{feff}h\u{2028}i\u{2029}j\u{61c}k"
        ),
        "abcdefghijk"
    );
    // Other non-ASCII text stays.
    assert_eq!(printable("café/ημέρα:1"), "café/ημέρα:1");
    assert_eq!(
        crate::imagecache::detached::printable_line("x\u{202a}y\u{202d}\tz\u{2064}\n".as_bytes()),
        "xy\tz\n"
    );
}

/// LOW-4: a use stamp whose entry is gone (or never was) is removed by
/// any clean; an entry's own stamp stays.
#[test]
fn clean_removes_stamps_without_an_entry() {
    let d = tempfile::tempdir().unwrap();
    let c = Cache::new(d.path().to_owned());
    put(&c, &key('a'));
    for k in ['b', 'c'] {
        c.mark_used(&key(k));
    }
    let stamp = |k: char| c.dir("used").join(key(k).name());
    assert!(stamp('b').exists());
    let cleaned = c.clean(None, false).unwrap();
    assert!(stamp('a').exists(), "the entry's stamp stays");
    assert!(!stamp('b').exists() && !stamp('c').exists());
    assert!(cleaned.debris.contains(&stamp('b')), "{:?}", cleaned.debris);
    assert!(cleaned.removed.is_empty());
}
