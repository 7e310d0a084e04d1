//! The node's cache of `allowed` ECL verdicts: a step whose image is the
//! very file (same identity, same pinned state) a step on this node already
//! verified against the very same policy and trust files skips the
//! verifier (no byte of the image read).
//!
//! Trusted: root's directory `runtime_dir/ecl-verdicts` (0700), entries
//! root's 0600 regular files written atomically, each holding its full
//! [`Key`], compared field by field. Consulted only after `pin::check` on
//! the same descriptor (the user cannot change the file) and only when no
//! one has it open for writing (a read lease). Only `allowed` verdicts are
//! stored, only when the file's ctime is older than the verification by
//! more than [`RACY`] and its state did not move during it; a denial always
//! verifies again. An entry lives [`MAX_AGE`] at most and never past the
//! time its verdict holds until ([`Until`]: the earliest end of validity of
//! the listed certificates' chains); a verdict whose time it cannot bound
//! is not stored. See docs/security.md, "The ECL verdict cache".

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use std::os::fd::AsFd;

use slurm_conf::ecl::Ecl;

use crate::ecl_check::{TrustFiles, Until, Verdict};

/// The entry format (a changed verifier must not reuse old verdicts).
const FORMAT: u32 = 2;
/// The largest entry read.
const MAX_ENTRY: u64 = 4096;
/// How much older than the verification a file's ctime must be for its
/// verdict to be stored (timestamp granularity, a file server's clock).
pub(crate) const RACY: Duration = Duration::from_secs(2);
/// How long an entry lives at most.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The state of the image file a verdict is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileState {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl FileState {
    /// The state `m` (an `fstat` of the open image) gives.
    pub(crate) fn of(m: &Metadata) -> FileState {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        FileState {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
        }
    }
}

/// Everything a verdict depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Key {
    file: FileState,
    /// `name_to_handle_at`'s handle, hex ("" where the FS gives none).
    handle: String,
    /// The image's real directory (execgroups' `dirpath`).
    dir: PathBuf,
    /// sha256 of the admin file's bytes.
    admin: String,
    /// sha256 of every trust file's bytes, in order.
    trust: Vec<String>,
    /// sifrun's version and the entry format.
    version: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Key {
    /// The key of a file in `state` with `handle`, found in `dir`, judged
    /// under the admin file's `admin` bytes and `trust`.
    pub(crate) fn new(
        state: FileState,
        handle: Option<&[u8]>,
        dir: &Path,
        admin: &[u8],
        trust: &TrustFiles,
    ) -> Key {
        let mut files = vec![sha(&trust.keyring)];
        for (p, b) in &trust.certificates {
            files.push(format!("{}:{}", p.display(), sha(b)));
        }
        for f in [&trust.roots, &trust.intermediates] {
            files.push(f.as_deref().map(sha).unwrap_or_default());
        }
        Key {
            file: state,
            handle: handle.map(hex).unwrap_or_default(),
            dir: dir.to_path_buf(),
            admin: sha(admin),
            trust: files,
            version: format!("{} {FORMAT}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn name(&self) -> String {
        sha(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// A cached `allowed` verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    key: Key,
    /// The execgroup that allowed it.
    pub(crate) group: Option<String>,
    /// The verified primary partition.
    pub(crate) offset: u64,
    /// Its size.
    pub(crate) size: u64,
    /// Seconds since the epoch from which on the entry is a miss.
    not_after: u64,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Entry {
    /// An entry for an `allowed` verdict made at `now` that holds `until`:
    /// a miss from `until` or [`MAX_AGE`] after `now`, whichever comes
    /// first. None when `until` is unknown or past.
    pub(crate) fn new(
        key: Key,
        group: Option<String>,
        offset: u64,
        size: u64,
        now: SystemTime,
        until: Until,
    ) -> Option<Entry> {
        let oldest = secs(now + MAX_AGE);
        let not_after = match until {
            Until::Always => oldest,
            Until::At(t) => oldest.min(u64::try_from(t).ok()?),
            Until::Unknown => return None,
        };
        (not_after > secs(now)).then_some(Entry {
            key,
            group,
            offset,
            size,
            not_after,
        })
    }
}

/// Whether a verdict made between the states `before` and `after`, started
/// at `started`, may be stored: the file did not move, and its last change
/// is older than the verification by more than [`RACY`] (a change in the
/// same timestamp tick would otherwise leave the state unchanged).
pub(crate) fn storable(before: &FileState, after: &FileState, started: SystemTime) -> bool {
    let Ok(start) = started.duration_since(UNIX_EPOCH) else {
        return false;
    };
    let limit = start.as_nanos() as i128 - RACY.as_nanos() as i128;
    before == after && before.ctime_ns < limit
}

/// The cache directory of one node.
#[derive(Debug)]
pub(crate) struct Cache {
    dir: PathBuf,
    max: usize,
    /// The owner every entry and the directory must have (root).
    owner: u32,
}

impl Cache {
    /// Opens (creating it 0700 if missing) the directory `dir`, which must
    /// be `owner`'s, mode 0700, a real directory; `max` entries at most.
    /// The caller checks the directories above (runtime_dir's rules).
    pub(crate) fn open(dir: &Path, max: usize, owner: u32) -> Result<Cache, String> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new().mode(0o700).create(dir);
        let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if !m.is_dir() || m.uid() != owner || m.permissions().mode() & 0o7777 != 0o700 {
            return Err(format!(
                "{}: must be a directory of uid {owner} with mode 0700",
                dir.display()
            ));
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
            max,
            owner,
        })
    }

    /// The entry for `key`, valid at `now`; a bad, foreign, expired or
    /// mismatching entry is removed and is a miss. A hit is touched (LRU).
    pub(crate) fn lookup(&self, key: &Key, now: SystemTime) -> Option<Entry> {
        if self.max == 0 {
            return None;
        }
        let path = self.dir.join(key.name());
        let entry = self.read(&path);
        match entry {
            Some(e) if e.key == *key && secs(now) < e.not_after => {
                if let Ok(f) = File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                {
                    let _ = f.set_modified(now);
                }
                Some(e)
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    fn read(&self, path: &Path) -> Option<Entry> {
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        let m = f.metadata().ok()?;
        if !m.is_file()
            || m.uid() != self.owner
            || m.mode() & 0o7777 != 0o600
            || m.len() > MAX_ENTRY
        {
            return None;
        }
        let mut text = String::new();
        Read::by_ref(&mut f)
            .take(MAX_ENTRY)
            .read_to_string(&mut text)
            .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Stores `entry` atomically (a 0600 temporary file renamed onto its
    /// name), then drops the least recently used entries over the bound.
    pub(crate) fn store(&self, entry: &Entry) -> Result<(), String> {
        if self.max == 0 {
            return Ok(());
        }
        let text = serde_json::to_string(entry).map_err(|e| e.to_string())?;
        let name = entry.key.name();
        let tmp = self.dir.join(format!(".tmp.{}.{name}", std::process::id()));
        // A leftover of a holder killed mid-write (root's directory).
        let _ = std::fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            std::fs::rename(&tmp, self.dir.join(&name))
        };
        let r = write().map_err(|e| format!("{}: {e}", tmp.display()));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?;
        self.prune();
        Ok(())
    }

    /// Removes the oldest entries (by mtime) beyond the bound.
    fn prune(&self) {
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, PathBuf)> = list
            .flatten()
            .filter(|e| e.file_name().len() == 64)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if entries.len() <= self.max {
            return;
        }
        entries.sort();
        let over = entries.len() - self.max;
        for (_, p) in entries.into_iter().take(over) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What the privileged path judges an image by.
pub(crate) struct Judged<'a> {
    /// The pinned image.
    pub(crate) image: &'a File,
    /// Its real directory.
    pub(crate) dir: &'a Path,
    /// The ECL.
    pub(crate) ecl: &'a Ecl,
    /// The admin file's bytes the ECL was parsed from.
    pub(crate) admin: &'a [u8],
    /// The trust files' bytes.
    pub(crate) trust: &'a TrustFiles,
}

/// The verdict on `j`: from the node's cache in `dir` when the image, the
/// policy and the trust files are the ones an earlier `allowed` verdict was
/// about and nobody has the image open for writing, else from the
/// verifier (and then stored when allowed and storable). Returns the
/// verdict and whether it came from the cache. No `dir`: no cache.
pub(crate) fn verify(j: &Judged<'_>, dir: Option<&Path>) -> Result<(Verdict, bool), String> {
    let cache = dir.and_then(|d| usable(j, d));
    let before = j.image.metadata().map(|m| FileState::of(&m));
    let key = match (&cache, &before) {
        (Some(_), Ok(s)) => {
            let handle = crate::syscall::file_handle(j.image.as_fd());
            Some(Key::new(
                s.clone(),
                handle.as_deref(),
                j.dir,
                j.admin,
                j.trust,
            ))
        }
        _ => None,
    };
    let no_writer = key.is_some() && crate::syscall::no_writer(j.image.as_fd());
    if key.is_some() && !no_writer {
        tracing::info!("ECL verdict cache not used: the image may be open for writing");
    }
    if let (Some(c), Some(k), true) = (&cache, &key, no_writer)
        && let Some(e) = c.lookup(k, SystemTime::now())
    {
        tracing::info!("ECL: cached verdict");
        let v = Verdict {
            allowed: true,
            group: e.group,
            reason: "a cached verdict".into(),
            offset: e.offset,
            size: e.size,
            until: Until::At(i64::try_from(e.not_after).unwrap_or(i64::MAX)),
        };
        return Ok((v, true));
    }
    let started = SystemTime::now();
    let v = super::verifier::verify(j.image, j.dir, j.ecl, j.trust, super::verifier::TIMEOUT)?;
    let after = j.image.metadata().map(|m| FileState::of(&m));
    if let (Some(c), Some(k), true, Ok(after)) = (&cache, key, no_writer, after) {
        remember(c, k, &after, started, &v);
    }
    Ok((v, false))
}

/// The cache, when the ECL allows one and its directory is sound.
fn usable(j: &Judged<'_>, dir: &Path) -> Option<Cache> {
    if j.ecl.verdict_cache_entries == 0 {
        return None;
    }
    Cache::open(dir, j.ecl.verdict_cache_entries, 0)
        .inspect_err(|e| tracing::warn!("ECL verdict cache not used: {e}"))
        .ok()
}

/// Stores `v` under `key` when it allows, the file did not move and the
/// time it holds until is known and not past.
fn remember(cache: &Cache, key: Key, after: &FileState, started: SystemTime, v: &Verdict) {
    let entry = (v.allowed && storable(&key.file, after, started))
        .then(|| Entry::new(key, v.group.clone(), v.offset, v.size, started, v.until))
        .flatten();
    let Some(entry) = entry else {
        tracing::info!(allowed = v.allowed, until = ?v.until, "ECL verdict not cached");
        return;
    };
    if let Err(e) = cache.store(&entry) {
        tracing::warn!("ECL verdict cache: {e}");
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
