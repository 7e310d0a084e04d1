use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use super::*;

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A scratch directory whose parents are root's or this user's and not
/// writable by others (the test binary's directory, not /tmp).
fn scratch() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    let d = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn me() -> Account {
    Account {
        name: "me".into(),
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

fn key() -> Key {
    Key::new(DIGEST, "gzip").unwrap()
}

/// A site cache owned by this user, with one published entry.
fn filled() -> (tempfile::TempDir, Site) {
    let d = scratch();
    let site = Site::new(d.path().join("site"), Some(me()));
    site.cache
        .ensure(&key(), "img", &|_| {}, |out| {
            std::fs::write(out, b"SIF").map_err(|e| e.to_string())
        })
        .unwrap();
    (d, site)
}

type Lines = Mutex<Vec<String>>;

fn lines() -> (Lines, impl Fn(&Lines, &str)) {
    (Mutex::new(Vec::new()), |m: &Mutex<Vec<String>>, l: &str| {
        m.lock().unwrap().push(l.to_owned())
    })
}

#[test]
fn the_owners_entry_is_used_and_the_directories_are_world_readable() {
    let (_d, site) = filled();
    let got = site.lookup(&key(), &|l| panic!("{l}")).unwrap();
    assert_eq!(got, site.cache.entry_path(&key()));
    for sub in ["v1", "v1/sif", "v1/sif/sha256", "v1/lock"] {
        let mode = std::fs::metadata(site.cache.root.join(sub)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o755, "{sub}");
    }
    let missing = Key::new(&DIGEST.replace('0', "f"), "gzip").unwrap();
    assert_eq!(site.lookup(&missing, &|l| panic!("{l}")), None);
}

/// The attack: a user plants (or leaves writable) an entry of the shared
/// cache. An entry others may write, one in a directory others may write,
/// or (as root, which can make one) one owned by another user: each is
/// ignored, with a line that says why.
#[test]
fn a_planted_entry_is_ignored_with_a_line() {
    let (_d, site) = filled();
    let entry = site.cache.entry_path(&key());
    let (seen, push) = lines();
    let say = |l: &str| push(&seen, l);
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(site.lookup(&key(), &say), None);
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o444)).unwrap();
    let dir = entry.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_eq!(site.lookup(&key(), &say), None);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(site.lookup(&key(), &say).is_some());
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[0].starts_with("site cache entry ignored: ")
            && seen[0].contains("lets others write it"),
        "{seen:?}"
    );
    assert!(seen[1].contains("sif/sha256: mode 0777"), "{seen:?}");
    if nix::unistd::geteuid().is_root() {
        let other = 54321;
        nix::unistd::chown(&entry, Some(nix::unistd::Uid::from_raw(other)), None).unwrap();
        let (seen, push) = lines();
        assert_eq!(site.lookup(&key(), &|l| push(&seen, l)), None);
        let seen = seen.into_inner().unwrap();
        assert!(
            seen[0].contains("owned by uid 54321, must be owned by root or me"),
            "{seen:?}"
        );
        // Without cache_user only root's entries count.
        let ro = Site::new(site.cache.root.clone(), None);
        let (seen, push) = lines();
        assert_eq!(ro.lookup(&key(), &|l| push(&seen, l)), None);
        assert!(
            seen.into_inner().unwrap()[0].contains("must be owned by root"),
            "read-only"
        );
        nix::unistd::chown(&entry, Some(nix::unistd::Uid::from_raw(0)), None).unwrap();
        assert!(ro.lookup(&key(), &|l| panic!("{l}")).is_some());
    }
}

#[test]
fn a_link_is_no_entry() {
    let (d, site) = filled();
    let entry = site.cache.entry_path(&key());
    let elsewhere = d.path().join("mine.sif");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    let (seen, push) = lines();
    assert_eq!(site.lookup(&key(), &|l| push(&seen, l)), None);
    assert!(seen.into_inner().unwrap()[0].contains("not a regular file"));
}

/// The converter child: the account's ids (all three), no groups, no
/// capabilities, no-new-privileges, not dumpable; its answer comes back.
#[test]
fn the_converter_child_has_nothing_but_the_account() {
    let root = nix::unistd::geteuid().is_root();
    let account = if root {
        Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    } else {
        me()
    };
    let status = as_account(&account, || {
        let dumpable = nix::sys::prctl::get_dumpable().unwrap_or(true);
        let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        Ok(PathBuf::from(format!("dumpable={dumpable}\n{s}")))
    })
    .unwrap();
    let text = status.to_string_lossy().into_owned();
    assert!(text.starts_with("dumpable=false"), "{text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    for caps in ["CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    let u = account.uid;
    assert_eq!(field("Uid"), format!("{u} {u} {u} {u}"));
    if root {
        assert_eq!(field("Gid"), "65534 65534 65534 65534");
        assert_eq!(field("Groups"), "");
    }
    let e = as_account(&account, || Err("manifest too big".into())).unwrap_err();
    assert_eq!(e, "manifest too big");
    if !root {
        let other = Account {
            uid: account.uid + 1,
            ..account
        };
        let e = as_account(&other, || Ok(PathBuf::new())).unwrap_err();
        assert!(e.contains("cannot become"), "{e}");
    }
}

/// The converter child keeps neither the holder's request socket (its
/// stdin) nor its protocol pipe to slurmstepd (its stdout): both are
/// /dev/null, and it works from `/`; its answer still comes back.
#[test]
fn the_converter_child_holds_none_of_the_holders_descriptors() {
    use std::os::fd::AsFd;
    let account = if nix::unistd::geteuid().is_root() {
        Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    } else {
        me()
    };
    let got = as_account(&account, || {
        let id = |s: nix::sys::stat::FileStat| (s.st_mode & libc::S_IFMT, s.st_rdev);
        let null = id(nix::sys::stat::stat("/dev/null").map_err(|e| e.to_string())?);
        let fd0 = id(nix::sys::stat::fstat(std::io::stdin().as_fd()).map_err(|e| e.to_string())?);
        let fd1 = id(nix::sys::stat::fstat(std::io::stdout().as_fd()).map_err(|e| e.to_string())?);
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        Ok(PathBuf::from(format!(
            "stdin null {} stdout null {} cwd {}",
            fd0 == null,
            fd1 == null,
            cwd.display()
        )))
    })
    .unwrap();
    assert_eq!(got, PathBuf::from("stdin null true stdout null true cwd /"));
}

/// A use is recorded in `used/` (by the account itself here), at most
/// once an hour.
#[test]
fn uses_are_recorded_by_the_account() {
    let (_d, site) = filled();
    let stamp = site.cache.dir("used").join(key().name());
    std::fs::remove_file(&stamp).unwrap();
    site.note_use(&key());
    let first = std::fs::metadata(&stamp).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    site.note_use(&key());
    assert_eq!(
        std::fs::metadata(&stamp).unwrap().modified().unwrap(),
        first
    );
    let ro = Site::new(site.cache.root.clone(), None);
    std::fs::remove_file(&stamp).unwrap();
    ro.note_use(&key());
    assert!(!stamp.exists(), "a read-only site cache records nothing");
}

/// Root's `cache … --site DIR` becomes the directory's owner (or stays
/// root for a root-owned, read-only site cache).
#[test]
fn the_site_commands_become_the_caches_owner() {
    let d = tempfile::tempdir().unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let owner = owner_of(d.path()).unwrap();
    if me == 0 {
        assert_eq!(owner, None, "root's directory: no one to become");
        std::os::unix::fs::chown(d.path(), Some(65534), Some(65534)).unwrap();
        let a = owner_of(d.path()).unwrap().unwrap();
        assert_eq!((a.uid, a.gid), (65534, 65534));
    } else {
        assert_eq!(owner.map(|a| a.uid), Some(me));
    }
}

/// Root's `cache … --site DIR` never becomes an owner it cannot fully
/// name or one that keeps group root, nor one that owns DIR but not
/// DIR/v1 (or the other way round).
#[test]
fn the_site_commands_refuse_an_owner_they_cannot_fully_name() {
    let dir = Path::new("/site");
    let nobody = || Some(("nobody".to_owned(), 65534));
    let a = owner_from(dir, 65534, Some(65534), nobody())
        .unwrap()
        .unwrap();
    assert_eq!((a.name.as_str(), a.uid, a.gid), ("nobody", 65534, 65534));
    assert_eq!(
        owner_from(dir, 65534, None, nobody())
            .unwrap()
            .map(|a| a.uid),
        Some(65534)
    );
    assert_eq!(owner_from(dir, 0, Some(0), None).unwrap(), None);
    let refused = |uid, v1, user| owner_from(dir, uid, v1, user).unwrap_err().to_string();
    let e = refused(65534, Some(0), nobody());
    assert!(
        e.starts_with("/site: owned by uid 65534 but its v1 by uid 0"),
        "{e}"
    );
    let e = refused(0, Some(65534), None);
    assert!(e.contains("owned by uid 0 but its v1 by uid 65534"), "{e}");
    let e = refused(54321, None, None);
    assert!(
        e.contains("owned by uid 54321, which has no account"),
        "{e}"
    );
    let e = refused(54321, None, Some(("cache".to_owned(), 0)));
    assert!(
        e.contains("owned by cache, whose primary group is root (gid 0)"),
        "{e}"
    );
}

/// The same on disk: a v1 that another account owns, an owner with no
/// account (root only: chown).
#[test]
fn owner_of_looks_at_v1_and_the_password_database() {
    let d = scratch();
    std::fs::create_dir(d.path().join("v1")).unwrap();
    let me = nix::unistd::geteuid().as_raw();
    if me != 0 {
        assert_eq!(owner_of(d.path()).unwrap().map(|a| a.uid), Some(me));
        return;
    }
    let chown = |p: &Path, uid| std::os::unix::fs::chown(p, Some(uid), None).unwrap();
    assert_eq!(owner_of(d.path()).unwrap(), None);
    chown(d.path(), 65534);
    let e = owner_of(d.path()).unwrap_err().to_string();
    assert!(e.contains("owned by uid 65534 but its v1 by uid 0"), "{e}");
    chown(&d.path().join("v1"), 65534);
    assert_eq!(owner_of(d.path()).unwrap().map(|a| a.uid), Some(65534));
    chown(d.path(), 54321);
    chown(&d.path().join("v1"), 54321);
    let e = owner_of(d.path()).unwrap_err().to_string();
    assert!(
        e.contains("owned by uid 54321, which has no account"),
        "{e}"
    );
}

/// A site cache owned by `nobody` (65534), with one entry, in a scratch
/// directory (root only).
fn nobodys(d: &tempfile::TempDir) -> Site {
    use std::os::unix::fs::chown;
    let root = d.path().join("site");
    for sub in ["", "v1", "v1/sif", "v1/sif/sha256", "v1/used"] {
        let p = root.join(sub);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let account = Account {
        name: "nobody".into(),
        uid: 65534,
        gid: 65534,
    };
    let site = Site::new(root, Some(account));
    let entry = site.cache.entry_path(&key());
    std::fs::write(&entry, b"SIF").unwrap();
    chown(&entry, Some(65534), Some(65534)).unwrap();
    site
}

/// L5: the holder's user side (root's real uid dropped) cannot record a
/// use itself; the account's child it started before dropping does.
#[test]
fn a_use_found_on_the_users_side_is_recorded_by_the_account() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root (to become the cache's account and a user); skipped");
        return;
    }
    let d = scratch();
    let site = nobodys(&d);
    let stamp = site.cache.dir("used").join(key().name());
    let user = Account {
        name: "user".into(),
        uid: 65533,
        gid: 65533,
    };
    let pid = match syscall::fork_single_threaded().unwrap() {
        Forked::Child => {
            let uses = uses::Uses::start(&site, "gzip");
            if become_account(&user).is_err() {
                std::process::exit(3)
            }
            // What the user's side did before: nothing recorded.
            site.note_use(&key());
            if stamp.exists() {
                std::process::exit(2)
            }
            match uses {
                Some(u) => u.record(&key()),
                None => std::process::exit(4),
            }
            std::process::exit(0)
        }
        Forked::Parent(pid) => pid,
    };
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
    assert_eq!(std::fs::metadata(&stamp).unwrap().uid(), 65534);
}

/// L4: the converter child's progress reaches the caller as rising counts
/// only (bytes per phase, one per line), and its answer still comes back.
#[test]
fn the_converter_childs_progress_is_relayed_as_counts() {
    let account = if nix::unistd::geteuid().is_root() {
        Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    } else {
        me()
    };
    let mut seen = Vec::new();
    let got = as_account_relaying(
        &account,
        |relay| {
            let sink = relay.sink();
            (sink.0)("download", 1000, 5000, "1/5");
            (sink.0)("download", 1000, 5000, "no progress");
            (sink.0)("download", 5000, 5000, "5/5");
            (sink.0)(relay::LINE_PHASE, 0, 0, "waiting");
            Ok(PathBuf::from("/done"))
        },
        &mut |n| seen.push(n),
    )
    .unwrap();
    assert_eq!(got, Path::new("/done"));
    assert_eq!(seen, [1000, 5000, 5001]);
}

/// The converter's answer is read once it has ended: a long one (an error
/// quoting a 70,000-character reference) is cut so it fits in the pipe.
#[test]
fn the_converters_answer_fits_in_its_pipe() {
    let long = format!("error\n{}", "é".repeat(40_000));
    let c = capped(long);
    assert!(
        c.len() <= MAX_ANSWER && c.len() >= MAX_ANSWER - 1,
        "{}",
        c.len()
    );
    assert!(c.starts_with("error\néé"));
    assert_eq!(capped("ok\n/site/v1/x".into()), "ok\n/site/v1/x");
}

/// Root's `--site DIR` refuses, with one line naming DIR, a DIR that is a
/// link or no directory, a DIR or DIR/v1 others may write, and a DIR
/// under a directory others may write.
#[test]
fn the_site_commands_refuse_a_dir_others_can_change() {
    let d = scratch();
    let uid = me().uid;
    let dir = d.path().join("site");
    let chmod = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    check_site_dir_for(&dir, uid).unwrap();
    let refused = |p: &Path, what: &str| {
        let e = check_site_dir_for(p, uid).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
        assert!(e.contains(what), "{what}: {e}");
        assert!(!e.contains('\n'), "{e}");
    };
    chmod(&dir, 0o775);
    refused(
        &dir,
        "it has mode 0775, which lets others write it: chmod go-w",
    );
    chmod(&dir, 0o755);
    let v1 = dir.join("v1");
    std::fs::create_dir(&v1).unwrap();
    chmod(&v1, 0o777);
    refused(&dir, "its v1 has mode 0777");
    chmod(&v1, 0o755);
    check_site_dir_for(&dir, uid).unwrap();
    std::fs::remove_dir(&v1).unwrap();
    std::os::unix::fs::symlink("/", &v1).unwrap();
    refused(&dir, "its v1 is a symlink");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    refused(&link, "it is a symlink");
    let file = d.path().join("file");
    std::fs::write(&file, "x").unwrap();
    refused(&file, "it is not a directory");
    let open = d.path().join("open");
    std::fs::create_dir_all(open.join("site")).unwrap();
    chmod(&open.join("site"), 0o755);
    chmod(&open, 0o1777);
    refused(&open.join("site"), "lets others write it, sticky or not");
    refused(
        &open.join("site"),
        "keep the cache under directories only root may write",
    );
}

/// LOW-4: the account's child stamps only an entry that is there and
/// trusted, in the cache's own compression: a name the user's side sends
/// for no entry (or for an entry of another compression) leaves no stamp.
#[test]
fn only_a_trusted_entry_of_the_caches_compression_is_stamped() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root (to become the cache's account); skipped");
        return;
    }
    let d = scratch();
    let site = nobodys(&d);
    let used = site.cache.dir("used");
    let missing = Key::new(&DIGEST.replace('0', "f"), "gzip").unwrap();
    let other = Key::new(DIGEST, "zstd").unwrap();
    let other_entry = site.cache.entry_path(&other);
    std::fs::write(&other_entry, b"SIF").unwrap();
    std::os::unix::fs::chown(&other_entry, Some(65534), Some(65534)).unwrap();
    let pid = match syscall::fork_single_threaded().unwrap() {
        Forked::Child => {
            for k in [&missing, &other, &key()] {
                match uses::Uses::start(&site, "gzip") {
                    Some(u) => u.record(k),
                    None => std::process::exit(4),
                }
            }
            std::process::exit(0)
        }
        Forked::Parent(pid) => pid,
    };
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
    assert!(used.join(key().name()).exists(), "the entry's use");
    assert!(!used.join(missing.name()).exists(), "no entry: no stamp");
    assert!(
        !used.join(other.name()).exists(),
        "not the cache's compression"
    );
}
