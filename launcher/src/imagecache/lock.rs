//! The conversion lock of one cache entry (oci-design.md §6.3): a file
//! made with `O_CREAT|O_EXCL` (atomic on NFSv3+, Lustre, GPFS, BeeGFS,
//! unlike `flock`), holding its owner's record, its mtime touched by a
//! heartbeat thread (`futimens(fd, NULL)`: the file server's clock). A
//! lock is stale when its owner is a dead process on this host and boot,
//! the host rebooted, or the heartbeat is older than the limit compared
//! with a probe file made now in the same directory (server clock on
//! both sides). A stale lock is broken by renaming it away, after
//! checking that it is still the one judged (same inode and contents).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;
use serde::{Deserialize, Serialize};

use super::CacheError;

/// Longest lock record read.
const MAX_RECORD: u64 = 4096;

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Record format.
    pub version: u32,
    /// Host name.
    pub host: String,
    /// `/proc/sys/kernel/random/boot_id` of that host.
    pub boot_id: String,
    /// Process id.
    pub pid: u32,
    /// Start time of the process (field 22 of `/proc/PID/stat`).
    pub pid_start: u64,
    /// User id.
    pub uid: u32,
    /// Random, distinguishes this lock from a later one of the same process.
    pub token: String,
    /// Seconds since the epoch (the owner's clock), for messages.
    pub started: u64,
    /// The bytes the image's blobs declare, when the converter knows them
    /// (the site cache's admission counts them: see `Cache::reserved`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl Owner {
    /// This process.
    pub(crate) fn me() -> Owner {
        let pid = std::process::id();
        Owner {
            version: 1,
            host: host_name(),
            boot_id: boot_id(),
            pid,
            pid_start: process_start(pid).unwrap_or(0),
            uid: nix::unistd::geteuid().as_raw(),
            token: random_hex(),
            started: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            size: None,
        }
    }
}

pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Field 22 (start time in clock ticks) of `/proc/PID/stat`.
fn process_start(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// 128 random bits as hex.
pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 16];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b = (t ^ u128::from(std::process::id())).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A lock this process holds; released (unlinked if still ours) on drop.
pub(crate) struct Held {
    pub(crate) path: PathBuf,
    pub(crate) owner: Owner,
    file: File,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// A lock someone else holds, as read.
pub(crate) struct Seen {
    pub(crate) owner: Option<Owner>,
    raw: Vec<u8>,
    ino: u64,
    mtime: SystemTime,
}

/// What an attempt to take the lock gave.
pub(crate) enum Attempt {
    Acquired(Held),
    Busy(Seen),
    /// It went away between our create and our read: try again.
    Vanished,
}

fn io_err(path: &Path, error: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_owned(),
        error,
    }
}

/// Tries to create the lock file `path` (its directory exists), recording
/// `size`, the bytes the image declares (if known).
pub(crate) fn try_acquire(path: &Path, size: Option<u64>) -> Result<Attempt, CacheError> {
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path);
    match created {
        Ok(mut file) => {
            let owner = Owner {
                size,
                ..Owner::me()
            };
            let mut text = serde_json::to_vec(&owner).unwrap_or_default();
            text.push(b'\n');
            file.write_all(&text)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_err(path, e))?;
            Ok(Attempt::Acquired(Held {
                path: path.to_owned(),
                owner,
                file,
                heartbeat: None,
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read(path) {
            Ok(seen) => Ok(Attempt::Busy(seen)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Attempt::Vanished),
            Err(e) => Err(io_err(path, e)),
        },
        Err(e) => Err(io_err(path, e)),
    }
}

/// The lock at `path` as [`try_acquire`] would see it, without creating
/// one: `Busy` when there is one, `Vanished` when there is none.
pub(crate) fn read_existing(path: &Path) -> Result<Attempt, CacheError> {
    match read(path) {
        Ok(seen) => Ok(Attempt::Busy(seen)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Attempt::Vanished),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Reads the lock at `path`: a regular file, not through a symlink (a
/// FIFO or a device there is refused, without waiting on it).
fn read(path: &Path) -> io::Result<Seen> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut raw = Vec::new();
    f.take(MAX_RECORD).read_to_end(&mut raw)?;
    Ok(Seen {
        owner: serde_json::from_slice(&raw).ok(),
        raw,
        ino: meta.ino(),
        mtime: meta.modified()?,
    })
}

/// The file server's "now": the mtime of a probe file made in `dir`.
fn server_now(dir: &Path) -> io::Result<SystemTime> {
    let probe = dir.join(format!(
        ".probe.{}.{}.{}",
        host_name(),
        std::process::id(),
        random_hex()
    ));
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)?;
    let t = f.metadata().and_then(|m| m.modified());
    let _ = fs::remove_file(&probe);
    t
}

/// Why `seen` is stale, or `None` while its owner may be at work.
pub(crate) fn stale_reason(seen: &Seen, dir: &Path, stale_after: Duration) -> Option<String> {
    let me = Owner::me();
    if let Some(o) = &seen.owner
        && o.host == me.host
    {
        if o.boot_id != me.boot_id {
            return Some(format!("{} rebooted since", o.host));
        }
        if process_start(o.pid) != Some(o.pid_start) {
            return Some(format!("process {} on {} is gone", o.pid, o.host));
        }
    }
    let now = server_now(dir).ok()?;
    let age = now.duration_since(seen.mtime).ok()?;
    (age > stale_after).then(|| format!("no heartbeat for {} s", age.as_secs()))
}

/// Breaks the stale lock `seen` at `path`: renamed away if it is still the
/// same lock (inode and contents), then removed. `Ok(false)`: someone else
/// changed or broke it first.
pub(crate) fn break_stale(path: &Path, seen: &Seen) -> Result<bool, CacheError> {
    match read(path) {
        Ok(now) if now.ino == seen.ino && now.raw == seen.raw => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(path, e)),
    }
    let mut broken = path.as_os_str().to_owned();
    broken.push(format!(
        ".broken.{}.{}.{}",
        host_name(),
        std::process::id(),
        random_hex()
    ));
    match fs::rename(path, &broken) {
        Ok(()) => {
            let _ = fs::remove_file(&broken);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

impl Held {
    /// Touches the lock's mtime every `every` until dropped.
    pub(crate) fn start_heartbeat(&mut self, every: Duration) -> Result<(), CacheError> {
        let file = self.file.try_clone().map_err(|e| io_err(&self.path, e))?;
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                if let Err(e) = futimens(&file, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW) {
                    tracing::warn!("cache lock heartbeat: {e}");
                }
            }
        });
        self.heartbeat = Some((tx, handle));
        Ok(())
    }

    /// Whether the lock file under its name is still ours.
    pub(crate) fn still_ours(&self) -> bool {
        read(&self.path)
            .ok()
            .and_then(|s| s.owner)
            .is_some_and(|o| o.token == self.owner.token)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((tx, handle)) = self.heartbeat.take() {
            drop(tx);
            let _ = handle.join();
        }
        if self.still_ours() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read() {
        let me = Owner::me();
        assert!(me.pid_start > 0);
        assert_eq!(process_start(me.pid), Some(me.pid_start));
        assert_ne!(random_hex(), random_hex());
    }

    #[test]
    fn lock_is_exclusive_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let Attempt::Acquired(held) = try_acquire(&p, None).unwrap() else {
            panic!("first attempt must win")
        };
        let Attempt::Busy(seen) = try_acquire(&p, None).unwrap() else {
            panic!("second attempt must see the lock")
        };
        assert_eq!(seen.owner.as_ref(), Some(&held.owner));
        // A live owner on this host with a fresh heartbeat is not stale.
        assert_eq!(
            stale_reason(&seen, dir.path(), Duration::from_secs(90)),
            None
        );
        // An old heartbeat is.
        std::thread::sleep(Duration::from_millis(50));
        let why = stale_reason(&seen, dir.path(), Duration::from_millis(10)).unwrap();
        assert!(why.contains("no heartbeat"), "{why}");
        drop(held);
        assert!(!p.exists());
    }

    #[test]
    fn dead_owner_is_stale_and_broken_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        let mut dead = Owner::me();
        dead.pid_start += 1; // this pid, another start: a reused pid
        fs::write(&p, serde_json::to_vec(&dead).unwrap()).unwrap();
        let Attempt::Busy(seen) = try_acquire(&p, None).unwrap() else {
            panic!("must be busy")
        };
        let why = stale_reason(&seen, dir.path(), Duration::from_secs(90)).unwrap();
        assert!(why.contains("is gone"), "{why}");
        assert!(break_stale(&p, &seen).unwrap());
        assert!(!break_stale(&p, &seen).unwrap(), "only one breaker wins");
        assert!(matches!(
            try_acquire(&p, None).unwrap(),
            Attempt::Acquired(_)
        ));
    }

    /// A lock that is a FIFO or a symlink (the cache's account can make
    /// either) is refused at once: reading it neither blocks nor follows.
    #[test]
    fn a_fifo_or_a_link_is_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.lock");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || tx.send(read_existing(&f).is_err()));
        let refused = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(
            refused,
            Ok(true),
            "a FIFO lock must be refused, not waited on"
        );
        let target = dir.path().join("real.lock");
        fs::write(&target, serde_json::to_vec(&Owner::me()).unwrap()).unwrap();
        assert!(matches!(read_existing(&target), Ok(Attempt::Busy(_))));
        let link = dir.path().join("l.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let Err(e) = read_existing(&link) else {
            panic!("a symlink must not be followed")
        };
        assert!(e.to_string().contains("l.lock"), "{e}");
    }

    #[test]
    fn a_replaced_lock_is_not_broken() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.lock");
        fs::write(&p, b"{}").unwrap();
        let Attempt::Busy(seen) = try_acquire(&p, None).unwrap() else {
            panic!("must be busy")
        };
        fs::remove_file(&p).unwrap();
        let Attempt::Acquired(_fresh) = try_acquire(&p, None).unwrap() else {
            panic!("must win")
        };
        assert!(!break_stale(&p, &seen).unwrap());
        assert!(p.exists());
    }
}
