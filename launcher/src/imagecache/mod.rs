//! The image cache (oci-design.md §6.3): SIF images converted from a
//! registry, one per platform manifest digest and compression, made once
//! even when many processes on many nodes ask for the same new image at
//! once.
//!
//! ```text
//! CACHE/v1/sif/sha256/<hex>.<comp>.sif   published images (0444)
//! CACHE/v1/lock/<hex>.<comp>.lock        conversion lock (see `lock`)
//! CACHE/v1/fail/<hex>.<comp>.json        the last failed conversion
//! CACHE/v1/tmp/.<hex>.<comp>.<host>.<pid>.<token>/   work directories
//! ```
//!
//! [`Cache::ensure`]: a published entry is used as it is; otherwise the
//! caller that creates the lock converts into its work directory (same
//! filesystem), and publishes by renaming the complete, fsynced SIF; the
//! others wait, polling with back-off, and use the published file. A
//! stale lock (its owner killed) is broken and the entry converted again.
//! Only complete files ever appear under an entry's name.

mod admit;
pub mod detached;
pub mod gc;
pub mod lock;
pub mod site;
mod watch;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use admit::Admission;
use lock::{Attempt, Held, Owner};
pub use watch::Watch;
use watch::{Waiting, dir_bytes};

/// Why the cache could not give an image.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file of the cache could not be read or written.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What happened.
        error: io::Error,
    },
    /// The cache directory is not known (no `$HOME`).
    #[error("no cache directory: set SIFRUN_CACHEDIR (or HOME)")]
    NoDirectory,
    /// A digest that cannot name a cache entry.
    #[error("{0}: not a sha256 digest")]
    BadDigest(String),
    /// The conversion failed.
    #[error("{0}")]
    Convert(String),
    /// Another process's conversion of the same image failed recently.
    #[error("{what}: the conversion on {host} failed {age} s ago: {message}")]
    FailedElsewhere {
        /// The image.
        what: String,
        /// Where it failed.
        host: String,
        /// How long ago.
        age: u64,
        /// Its message.
        message: String,
    },
    /// A site cache whose owner root's `sifrun cache … --site` may not
    /// become.
    #[error("{}: {reason}", dir.display())]
    SiteOwner {
        /// The site cache's directory.
        dir: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// A new conversion the cache's limits do not admit (see
    /// [`Admission`]): why.
    #[error("{0}")]
    Refused(String),
    /// Waited too long for another process's conversion.
    #[error("{what}: gave up after {secs} s waiting for {owner} to convert it")]
    Timeout {
        /// The image.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// Who was converting.
        owner: String,
    },
}

/// A cache entry's name: the platform manifest digest and the compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    hex: String,
    compression: String,
    /// Who is asked for it (a hash of the registry and repository): the
    /// lock, the work directory and the failure record are per source, so
    /// that a requester naming a slow or hostile registry for a popular
    /// digest stalls or fails only the requests naming that source. The
    /// entry itself is the digest's (same content, whoever renames last).
    scope: Option<String>,
}

impl Key {
    /// The entry for manifest `digest` (`sha256:HEX`) compressed with
    /// `compression` (`gzip`, `zstd`...).
    pub fn new(digest: &str, compression: &str) -> Result<Key, CacheError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| CacheError::BadDigest(digest.to_owned()))?;
        if compression.is_empty() || !compression.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CacheError::BadDigest(format!("{digest} ({compression})")));
        }
        Ok(Key {
            hex: hex.to_owned(),
            compression: compression.to_owned(),
            scope: None,
        })
    }

    /// The same entry fetched from `source` (`[http:]REGISTRY/REPOSITORY`):
    /// its conversion is locked and recorded apart from other sources'.
    #[must_use]
    pub fn from_source(mut self, source: &str) -> Key {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(source.as_bytes());
        self.scope = Some(h[..8].iter().map(|b| format!("{b:02x}")).collect());
        self
    }

    /// The entry's name (`HEX.COMP`).
    pub(crate) fn name(&self) -> String {
        format!("{}.{}", self.hex, self.compression)
    }

    /// The conversion's name: the entry's, with the source's hash.
    pub(crate) fn work_name(&self) -> String {
        match &self.scope {
            Some(s) => format!("{}.{s}", self.name()),
            None => self.name(),
        }
    }
}

/// A cache and its timing.
#[derive(Clone, Debug)]
pub struct Cache {
    /// The cache directory (`CACHE` above).
    pub root: PathBuf,
    /// How often the converter touches its lock.
    pub heartbeat: Duration,
    /// A lock whose heartbeat is older than this is stale (6 heartbeats).
    pub stale_after: Duration,
    /// How long a waiter waits for another process's conversion.
    pub wait_timeout: Duration,
    /// A waiter whose converter failed less than this ago reports that
    /// failure instead of converting again.
    pub fail_memory: Duration,
    /// A cache every user reads (the site cache): directories 0755, not
    /// 0700.
    pub shared: bool,
}

/// What [`Cache::ensure`] gave.
#[derive(Debug)]
pub struct Ensured {
    /// The published image.
    pub path: PathBuf,
    /// Whether this call converted it.
    pub converted: bool,
}

/// A failed conversion, for the waiters.
#[derive(Serialize, Deserialize)]
struct Failure {
    time: u64,
    host: String,
    message: String,
}

pub(crate) fn io_err(path: &Path, error: io::Error) -> CacheError {
    CacheError::Io {
        path: path.to_owned(),
        error,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Cache {
    /// The cache at `root` with the default timing: heartbeat 15 s, stale
    /// after 90 s, waiting at most `SIFRUN_CACHE_WAIT` seconds (1 h).
    pub fn new(root: PathBuf) -> Cache {
        let wait = std::env::var("SIFRUN_CACHE_WAIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3600);
        Cache {
            root,
            heartbeat: Duration::from_secs(15),
            stale_after: Duration::from_secs(90),
            wait_timeout: Duration::from_secs(wait),
            fail_memory: Duration::from_secs(600),
            shared: false,
        }
    }

    /// The user's cache: `$SIFRUN_CACHEDIR`, else
    /// `${XDG_CACHE_HOME:-$HOME/.cache}/sifrun`.
    pub fn user_root() -> Result<PathBuf, CacheError> {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
        if let Some(d) = var("SIFRUN_CACHEDIR") {
            return Ok(PathBuf::from(d));
        }
        if let Some(d) = var("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(d).join("sifrun"));
        }
        var("HOME")
            .map(|h| PathBuf::from(h).join(".cache/sifrun"))
            .ok_or(CacheError::NoDirectory)
    }

    pub(crate) fn dir(&self, sub: &str) -> PathBuf {
        self.root.join("v1").join(sub)
    }

    /// Where the entry `key` is published.
    pub fn entry_path(&self, key: &Key) -> PathBuf {
        self.dir("sif/sha256").join(format!("{}.sif", key.name()))
    }

    fn lock_path(&self, key: &Key) -> PathBuf {
        self.dir("lock").join(format!("{}.lock", key.work_name()))
    }

    fn fail_path(&self, key: &Key) -> PathBuf {
        self.dir("fail").join(format!("{}.json", key.work_name()))
    }

    /// The published entry `key`, if there is one: a regular file owned by
    /// this user (or, in a shared cache, root: an admin's added copy, as
    /// `Site::trusted` accepts it), writable by nobody else.
    pub fn lookup(&self, key: &Key) -> Result<Option<PathBuf>, CacheError> {
        self.lookup_as(key, nix::unistd::geteuid().as_raw())
    }

    fn lookup_as(&self, key: &Key, me: u32) -> Result<Option<PathBuf>, CacheError> {
        let path = self.entry_path(key);
        match fs::symlink_metadata(&path) {
            Ok(m)
                if m.file_type().is_file()
                    && (m.uid() == me || (self.shared && m.uid() == 0))
                    && m.mode() & 0o022 == 0 =>
            {
                Ok(Some(path))
            }
            Ok(_) => {
                tracing::warn!("{}: not a file of this user; ignored", path.display());
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    fn make_dirs(&self) -> Result<(), CacheError> {
        let mode = if self.shared { 0o755 } else { 0o700 };
        for sub in ["sif/sha256", "lock", "fail", "tmp", "used"] {
            let d = self.dir(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&d)
                .map_err(|e| io_err(&d, e))?;
        }
        Ok(())
    }

    /// The image `key`: the published entry, or converted by `convert`
    /// (which writes a complete SIF at the path it is given), or converted
    /// by another process while this one waits. `what` names the image in
    /// messages; `progress` gets the lines a waiting user should see.
    pub fn ensure<F>(
        &self,
        key: &Key,
        what: &str,
        progress: &dyn Fn(&str),
        convert: F,
    ) -> Result<Ensured, CacheError>
    where
        F: FnOnce(&Path) -> Result<(), String>,
    {
        let watch = Watch {
            line: progress,
            grew: &|_| {},
        };
        self.ensure_watched(key, what, None, &watch, convert)
    }

    /// [`Cache::ensure`], telling `watch` also how the conversion it
    /// waits for (another process's) grows. With `admission`, a conversion
    /// by this process records its size in its lock and starts only if
    /// the check passes then (a waiter is not checked).
    pub fn ensure_watched<F>(
        &self,
        key: &Key,
        what: &str,
        admission: Option<&Admission<'_>>,
        watch: &Watch<'_>,
        convert: F,
    ) -> Result<Ensured, CacheError>
    where
        F: FnOnce(&Path) -> Result<(), String>,
    {
        let progress = watch.line;
        if let Some(path) = self.lookup(key)? {
            self.mark_used(key);
            return Ok(Ensured {
                path,
                converted: false,
            });
        }
        self.make_dirs()?;
        let lock_path = self.lock_path(key);
        let start = Instant::now();
        let mut delay = Duration::from_secs(1);
        let mut waiting = Waiting::default();
        let mut convert = Some(convert);
        loop {
            if let Some(path) = self.lookup(key)? {
                return Ok(Ensured {
                    path,
                    converted: false,
                });
            }
            if waiting.owner.is_some() && !lock_path.exists() {
                self.recent_failure(key, what)?;
            }
            match lock::try_acquire(&lock_path, admission.map(|a| a.size))? {
                Attempt::Acquired(held) => {
                    // Published between our lookup and our lock?
                    if let Some(path) = self.lookup(key)? {
                        return Ok(Ensured {
                            path,
                            converted: false,
                        });
                    }
                    if let Some(a) = admission {
                        (a.check)(self.reserved(key)).map_err(CacheError::Refused)?;
                    }
                    let f = convert.take().expect("converts at most once");
                    progress(&format!("{what}: converting into the cache"));
                    return self.convert_locked(key, held, what, f);
                }
                Attempt::Vanished => continue,
                Attempt::Busy(seen) => {
                    if self.broke_stale(key, what, &seen, progress)? {
                        continue;
                    }
                    self.watch_owner(key, what, seen.owner, &mut waiting, watch);
                }
            }
            if start.elapsed() > self.wait_timeout {
                return Err(CacheError::Timeout {
                    what: what.to_owned(),
                    secs: start.elapsed().as_secs(),
                    owner: waiting.owner.map_or_else(
                        || "another process".into(),
                        |o| format!("{} (pid {})", o.host, o.pid),
                    ),
                });
            }
            std::thread::sleep(jitter(delay));
            delay = next_look(delay);
        }
    }

    /// Breaks the lock `seen` if it is stale (and removes its owner's work
    /// directory); whether it was stale.
    fn broke_stale(
        &self,
        key: &Key,
        what: &str,
        seen: &lock::Seen,
        progress: &dyn Fn(&str),
    ) -> Result<bool, CacheError> {
        let lock_path = self.lock_path(key);
        let Some(why) = lock::stale_reason(seen, &self.dir("lock"), self.stale_after) else {
            return Ok(false);
        };
        if lock::break_stale(&lock_path, seen)? {
            progress(&format!("{what}: broke a stale cache lock ({why})"));
            if let Some(o) = &seen.owner {
                self.remove_work_dir(key, o);
            }
        }
        Ok(true)
    }

    /// Says once whom this process waits for, and tells `watch` each time
    /// that conversion's work directory has grown.
    fn watch_owner(
        &self,
        key: &Key,
        what: &str,
        owner: Option<Owner>,
        waiting: &mut Waiting,
        watch: &Watch<'_>,
    ) {
        if let Some(o) = owner.filter(|o| waiting.owner.as_ref() != Some(o)) {
            (watch.line)(&format!(
                "{what}: waiting for {} (pid {}) converting it, started {} s ago",
                o.host,
                o.pid,
                unix_now().saturating_sub(o.started)
            ));
            waiting.owner = Some(o);
            waiting.bytes = 0;
        }
        if let Some(o) = &waiting.owner {
            let n = dir_bytes(&self.work_dir(key, o));
            if n > waiting.bytes {
                waiting.bytes = n;
                (watch.grew)(n);
            }
        }
    }

    /// The failure of the conversion we waited for, if recent.
    fn recent_failure(&self, key: &Key, what: &str) -> Result<(), CacheError> {
        let Ok(text) = fs::read(self.fail_path(key)) else {
            return Ok(());
        };
        let Ok(f) = serde_json::from_slice::<Failure>(&text) else {
            return Ok(());
        };
        let age = unix_now().saturating_sub(f.time);
        if age > self.fail_memory.as_secs() {
            return Ok(());
        }
        // A shared cache's record is another requester's: its text (which
        // a registry they named wrote) is not shown to this one.
        let message = if self.shared {
            format!("sha256:{} (its message is in that step's output)", key.hex)
        } else {
            f.message
        };
        Err(CacheError::FailedElsewhere {
            what: what.to_owned(),
            host: f.host,
            age,
            message,
        })
    }

    fn work_dir(&self, key: &Key, owner: &Owner) -> PathBuf {
        self.dir("tmp").join(format!(
            ".{}.{}.{}.{}",
            key.work_name(),
            owner.host,
            owner.pid,
            owner.token
        ))
    }

    /// Removes a dead converter's work directory (it is only ever written
    /// by the lock's holder).
    fn remove_work_dir(&self, key: &Key, owner: &Owner) {
        let d = self.work_dir(key, owner);
        if !owner.host.contains('/') && d.exists() {
            let _ = fs::remove_dir_all(&d);
        }
    }

    /// Converts under the lock `held`, publishes, releases.
    fn convert_locked<F>(
        &self,
        key: &Key,
        mut held: Held,
        what: &str,
        convert: F,
    ) -> Result<Ensured, CacheError>
    where
        F: FnOnce(&Path) -> Result<(), String>,
    {
        held.start_heartbeat(self.heartbeat)?;
        let work = self.work_dir(key, &held.owner);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .map_err(|e| io_err(&work, e))?;
        tracing::info!(image = what, "converting into the cache");
        let out = work.join("image.sif");
        let result =
            convert(&out).and_then(|()| self.publish(key, &held, &out).map_err(|e| e.to_string()));
        let _ = fs::remove_dir_all(&work);
        match result {
            Ok(path) => {
                let _ = fs::remove_file(self.fail_path(key));
                self.mark_used(key);
                drop(held);
                Ok(Ensured {
                    path,
                    converted: true,
                })
            }
            Err(message) => {
                self.record_failure(key, &message);
                drop(held);
                Err(CacheError::Convert(message))
            }
        }
    }

    /// Makes `out` read-only, syncs it and renames it to the entry's name.
    fn publish(&self, key: &Key, held: &Held, out: &Path) -> Result<PathBuf, CacheError> {
        let f = File::open(out).map_err(|e| io_err(out, e))?;
        f.set_permissions(fs::Permissions::from_mode(0o444))
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err(out, e))?;
        if !held.still_ours() {
            tracing::warn!(
                "{}: the lock was broken while converting; publishing anyway",
                held.path.display()
            );
        }
        let entry = self.entry_path(key);
        fs::rename(out, &entry).map_err(|e| io_err(&entry, e))?;
        let dir = self.dir("sif/sha256");
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&dir, e))?;
        Ok(entry)
    }

    /// Writes the failure record (temporary name, then rename).
    fn record_failure(&self, key: &Key, message: &str) {
        let path = self.fail_path(key);
        let tmp = path.with_extension(format!("tmp.{}", lock::random_hex()));
        let record = Failure {
            time: unix_now(),
            host: lock::host_name(),
            message: message.to_owned(),
        };
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            // Its message may be a registry's text: for this account only
            // (a shared cache's waiters, the same account, show none of it).
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                io::Write::write_all(&mut f, &serde_json::to_vec(&record).unwrap_or_default())
            })
            .and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            tracing::warn!("{}: {e}", path.display());
        }
    }
}

/// The longest pause between two looks at a conversion waited for (up to
/// 1.2 times this with the jitter). Each look that sees it grow is progress
/// the holder relays (at most every 2 s), and the plugin's
/// `container.setup_timeout` counts from the last: this keeps the gap
/// between two reports under 5 s while the conversion moves.
const LOOK_AT_MOST_EVERY: Duration = Duration::from_secs(2);

/// The pause after `delay`: half as long again, up to
/// [`LOOK_AT_MOST_EVERY`].
fn next_look(delay: Duration) -> Duration {
    (delay * 3 / 2).min(LOOK_AT_MOST_EVERY)
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    let r = lock::random_hex();
    let n = u64::from_str_radix(&r[..4], 16).unwrap_or(0x8000); // 0..65535
    d.mul_f64(0.8 + 0.4 * n as f64 / 65535.0)
}

#[cfg(test)]
mod tests;
