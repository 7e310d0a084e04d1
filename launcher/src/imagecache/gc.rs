//! Listing and cleaning a cache (`sifrun cache list|clean`). Last use is
//! recorded as the mtime of `used/<entry>` (touched at each use; atimes
//! are unreliable on `noatime` filesystems). Cleaning never removes an
//! entry whose conversion lock is live; it removes work directories no
//! live lock owns, stale and broken locks, old failure records and use
//! stamps without an entry.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sif::{DataType, Image};

use super::lock::{self, Attempt};
use super::{Cache, CacheError, Key, io_err};

/// One published entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The file.
    pub path: PathBuf,
    /// `sha256:HEX` of the platform manifest.
    pub digest: String,
    /// The compression (`gzip`...).
    pub compression: String,
    /// The source reference recorded in the SIF, if readable.
    pub reference: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// The last use (or the publication).
    pub last_use: SystemTime,
}

/// What [`Cache::clean`] did.
#[derive(Debug, Default)]
pub struct Cleaned {
    /// Entries removed.
    pub removed: Vec<Entry>,
    /// Entries kept because a conversion of them holds a live lock.
    pub locked: Vec<Entry>,
    /// Work directories, stale or broken locks, old failure records and
    /// use stamps without an entry removed.
    pub debris: Vec<PathBuf>,
}

/// The SIF label `name`.
fn label(path: &Path, name: &str) -> Option<String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    file_label(&file, name)
}

/// The SIF label `name` of an open file.
fn file_label(file: &File, name: &str) -> Option<String> {
    let img = Image::open(file).ok()?;
    img.descriptors_of_type(DataType::LABELS).find_map(|d| {
        let mut buf = vec![0u8; usize::try_from(d.size().min(64 << 10)).ok()?];
        img.read_object_at(d, &mut buf, 0).ok()?;
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_slice(&buf).ok()?;
        labels.get(name).cloned()
    })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    fs::symlink_metadata(p).and_then(|m| m.modified()).ok()
}

fn names(dir: &Path) -> Result<Vec<String>, CacheError> {
    match fs::read_dir(dir) {
        Ok(r) => {
            let mut v: Vec<String> = r
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir, e)),
    }
}

fn remove(p: &Path, out: &mut Vec<PathBuf>) {
    let gone = if fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(p)
    } else {
        fs::remove_file(p)
    };
    match gone {
        Ok(()) => out.push(p.to_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: {e}", p.display()),
    }
}

impl Cache {
    /// Records a use of `key` (best effort).
    pub fn mark_used(&self, key: &Key) {
        let p = self.dir("used").join(key.name());
        let touched = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&p)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            tracing::debug!("{}: {e}", p.display());
        }
    }

    /// The published entries, by name.
    pub fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        let dir = self.dir("sif/sha256");
        let mut out = Vec::new();
        for n in names(&dir)? {
            let Some((hex, compression)) = n.strip_suffix(".sif").and_then(|s| s.split_once('.'))
            else {
                continue;
            };
            let digest = format!("sha256:{hex}");
            let Ok(key) = Key::new(&digest, compression) else {
                continue;
            };
            let path = dir.join(&n);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let published = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let used = mtime(&self.dir("used").join(key.name())).unwrap_or(published);
            out.push(Entry {
                reference: label(&path, "io.sifrun.source.ref"),
                digest,
                compression: compression.to_owned(),
                size: meta.len(),
                last_use: used.max(published),
                path,
            });
        }
        Ok(out)
    }

    /// Whether a live conversion holds the lock `name` (`HEX.COMP.lock`);
    /// a stale one is broken (and recorded in `debris`).
    fn live_lock(
        &self,
        name: &str,
        debris: &mut Vec<PathBuf>,
    ) -> Result<Option<String>, CacheError> {
        let path = self.dir("lock").join(name);
        let seen = match lock::read_existing(&path)? {
            Attempt::Busy(seen) => seen,
            _ => return Ok(None),
        };
        if lock::stale_reason(&seen, &self.dir("lock"), self.stale_after).is_some() {
            if lock::break_stale(&path, &seen)? {
                debris.push(path);
            }
            return Ok(None);
        }
        Ok(Some(seen.owner.map_or_else(String::new, |o| o.token)))
    }

    /// Removes the use stamps (`used/NAME`) of entries that are not there
    /// (removed by hand, or never published).
    fn remove_orphan_stamps(&self, debris: &mut Vec<PathBuf>) -> Result<(), CacheError> {
        for n in names(&self.dir("used"))? {
            let entry = self.dir("sif/sha256").join(format!("{n}.sif"));
            if fs::symlink_metadata(&entry).is_err() {
                remove(&self.dir("used").join(&n), debris);
            }
        }
        Ok(())
    }

    /// Removes the entries last used before `now - older_than` (all of
    /// them with `all`), never one being converted, and the debris of
    /// dead conversions; entries only with `all` or `older_than`.
    pub fn clean(&self, older_than: Option<Duration>, all: bool) -> Result<Cleaned, CacheError> {
        let mut c = Cleaned::default();
        // Locks: stale ones broken, leftovers of breaking removed.
        let mut live = std::collections::BTreeMap::new();
        for n in names(&self.dir("lock"))? {
            if let Some(base) = n.strip_suffix(".lock") {
                if let Some(token) = self.live_lock(&n, &mut c.debris)? {
                    live.insert(base.to_owned(), token);
                }
            } else if n.contains(".lock.broken.") || n.starts_with(".probe.") {
                let p = self.dir("lock").join(&n);
                if mtime(&p).is_some_and(|t| t.elapsed().unwrap_or_default() > self.stale_after) {
                    remove(&p, &mut c.debris);
                }
            }
        }
        // Work directories `.NAME.HOST.PID.TOKEN`: kept only for a live lock
        // with that token.
        for n in names(&self.dir("tmp"))? {
            let owned = n.rsplit_once('.').is_some_and(|(rest, token)| {
                live.iter()
                    .any(|(base, t)| t == token && rest.starts_with(&format!(".{base}.")))
            });
            let p = self.dir("tmp").join(&n);
            // `add` copies without a lock: give it time.
            let adding = n.contains(".add.")
                && mtime(&p).is_some_and(|t| t.elapsed().unwrap_or_default() < self.stale_after);
            if !owned && !adding {
                remove(&p, &mut c.debris);
            }
        }
        for n in names(&self.dir("fail"))? {
            let p = self.dir("fail").join(&n);
            if mtime(&p).is_some_and(|t| t.elapsed().unwrap_or_default() > self.fail_memory) {
                remove(&p, &mut c.debris);
            }
        }
        self.remove_orphan_stamps(&mut c.debris)?;
        if !all && older_than.is_none() {
            return Ok(c);
        }
        let cutoff = older_than.and_then(|d| SystemTime::now().checked_sub(d));
        for e in self.entries()? {
            let name = format!("{}.{}", &e.digest["sha256:".len()..], e.compression);
            if !all && cutoff.is_some_and(|t| e.last_use >= t) {
                continue;
            }
            let converting = live
                .keys()
                .any(|b| *b == name || b.starts_with(&format!("{name}.")));
            if converting {
                c.locked.push(e);
                continue;
            }
            let mut gone = Vec::new();
            remove(&e.path, &mut gone);
            if gone.is_empty() {
                continue;
            }
            let _ = fs::remove_file(self.dir("used").join(&name));
            c.removed.push(e);
        }
        Ok(c)
    }
}

/// Why [`open_source`] refused a file to add.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Not openable (a symlink, absent, unreadable).
    #[error("{}: {error}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What happened.
        error: io::Error,
    },
    /// On a FUSE filesystem: its server, any user's, chooses the bytes
    /// each read returns, and the owner and mode it reports.
    #[error(
        "{}: on a FUSE filesystem, whose server chooses its owner, mode and the bytes each read returns: refusing it",
        path.display()
    )]
    Fuse {
        /// The file.
        path: PathBuf,
    },
    /// A directory above it is not root's or the caller's, or others may
    /// write it (and so replace what the path names).
    #[error("{}: a directory above it is not safe: {dir}", path.display())]
    Directory {
        /// The file.
        path: PathBuf,
        /// The directory and what is wrong with it.
        dir: slurm_conf::trusted::Untrusted,
    },
    /// Not a regular file.
    #[error("{}: not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// Owned by someone other than root or the caller.
    #[error(
        "{}: owned by {owner}, not by root or you: refusing to vouch for another user's file \
         (its labels name the digest it is filed under; make the image yourself: \
         sifrun cache add --site DIR docker://REF, or sifrun pull)",
        path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner (name, or uid).
        owner: String,
    },
    /// Group- or world-writable.
    #[error("{}: writable by others (mode {mode:o})", path.display())]
    Writable {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Records no manifest digest.
    #[error(
        "{}: records no manifest digest (io.sifrun.source.digest): make it with sifrun pull docker://…",
        path.display()
    )]
    NoDigest {
        /// The file.
        path: PathBuf,
    },
}

/// A SIF to add, opened once: the label read and the bytes copied come
/// from the same descriptor, never from the path again.
#[derive(Debug)]
pub struct Source {
    file: File,
    /// The manifest digest it records.
    pub digest: String,
}

/// Whether a filesystem is FUSE (`FUSE_SUPER_MAGIC`, 0x65735546).
fn on_fuse(fs: nix::sys::statfs::FsType) -> bool {
    fs == nix::sys::statfs::FUSE_SUPER_MAGIC
}

/// Opens `path` once (its last component not followed if a symlink, no
/// FIFO blocking) and checks the descriptor: not on FUSE, a regular file
/// owned by root or `caller`, writable by no one else, in directories
/// (as written and as resolved) each root's or `caller`'s and writable by
/// no one else, recording a manifest digest.
pub fn open_source(path: &Path, caller: u32) -> Result<Source, SourceError> {
    use std::os::unix::fs::MetadataExt;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|error| SourceError::Open {
            path: path.to_owned(),
            error,
        })?;
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| SourceError::Open {
        path: path.to_owned(),
        error: e.into(),
    })?;
    if on_fuse(fs.filesystem_type()) {
        return Err(SourceError::Fuse {
            path: path.to_owned(),
        });
    }
    let meta = file.metadata().map_err(|error| SourceError::Open {
        path: path.to_owned(),
        error,
    })?;
    if !meta.file_type().is_file() {
        return Err(SourceError::NotRegular {
            path: path.to_owned(),
        });
    }
    if meta.uid() != 0 && meta.uid() != caller {
        let uid = nix::unistd::Uid::from_raw(meta.uid());
        let owner = match nix::unistd::User::from_uid(uid) {
            Ok(Some(u)) => format!("{} (uid {})", u.name, meta.uid()),
            _ => format!("uid {}", meta.uid()),
        };
        return Err(SourceError::Owner {
            path: path.to_owned(),
            owner,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(SourceError::Writable {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    let absolute = std::path::absolute(path).map_err(|error| SourceError::Open {
        path: path.to_owned(),
        error,
    })?;
    slurm_conf::trusted::check_parents(&absolute, caller).map_err(|mut dir| {
        if let Some(r) = dir.reason.strip_suffix("must be owned by root") {
            dir.reason = format!("{r}must be owned by root or you");
        }
        SourceError::Directory {
            path: path.to_owned(),
            dir,
        }
    })?;
    let digest = file_label(&file, "io.sifrun.source.digest")
        .filter(|d| d.starts_with("sha256:"))
        .ok_or_else(|| SourceError::NoDigest {
            path: path.to_owned(),
        })?;
    Ok(Source { file, digest })
}

impl Cache {
    /// Puts a copy of the SIF `src` (made by `sifrun pull`, perhaps signed
    /// since, opened by [`open_source`]) into the cache as entry `key`:
    /// copied into `tmp/`, synced, made read-only and renamed into place,
    /// as a conversion would.
    pub fn add(&self, key: &Key, src: &Source) -> Result<PathBuf, CacheError> {
        self.make_dirs()?;
        let tmp = self.dir("tmp").join(format!(
            ".{}.add.{}.{}",
            key.name(),
            std::process::id(),
            lock::random_hex()
        ));
        let copied = (|| {
            let mut from = io::BufReader::new(PositionedReader {
                file: &src.file,
                at: 0,
            });
            let mut to = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&tmp)
                .map_err(|e| io_err(&tmp, e))?;
            io::copy(&mut from, &mut to).map_err(|e| io_err(&tmp, e))?;
            to.sync_all().map_err(|e| io_err(&tmp, e))?;
            let entry = self.entry_path(key);
            fs::rename(&tmp, &entry).map_err(|e| io_err(&entry, e))?;
            let dir = self.dir("sif/sha256");
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(&dir, e))?;
            Ok(entry)
        })();
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied
    }
}

/// Reads a file from offset 0 with `pread`, whatever its position.
struct PositionedReader<'a> {
    file: &'a File,
    at: u64,
}

impl io::Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// `s` without control characters (labels are the image's: no terminal
/// escapes reach whoever lists the cache), nor Unicode's invisible format
/// and separator characters ([`hidden`]).
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|&c| !c.is_control() && !hidden(c))
        .collect()
}

/// Unicode's invisible format and separator characters that make a line
/// show other than it reads: bidirectional controls (U+061C, U+200E/F,
/// U+202A-U+202E, U+2066-U+2069), zero-width ones (U+200B-U+200D,
/// U+2060-U+2064, U+FEFF) and the line and paragraph separators
/// (U+2028/U+2029).
pub(crate) fn hidden(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

#[cfg(test)]
mod tests;
