//! A Slurm step's command, made ready ahead of the tasks' exec (issue 11,
//! section 7).
//!
//! Each step mounts its image afresh, so the tasks' exec would look every
//! name of its PATH search up through FUSE and fault its program in from
//! the server one 128 KiB read at a time, each waiting for its block to be
//! decompressed (`bench/holder-bench.py`: 9-11 ms for busybox's `true`
//! against 3 ms once cached). The holder finds the command in the image
//! before it forks the container process.
//!
//! Once the container process has reported ready, a thread of it
//! ([`Warm::in_container`]) looks the names up as exec will, so that the
//! kernel keeps the answers, absent names included (see `fuse`), and, for
//! an image whose blocks cost little to decompress (lz4), asks the kernel
//! to read the program's first [`MAX_PAGE_CACHE`] bytes ahead into its page
//! cache: the tasks' exec then reads none of the program's pages from the
//! server (a step of an lz4 busybox image: 25 FUSE reads from the tasks
//! before, none after; their open and release still go to the server).
//!
//! For other compressions (gzip, zstd, xz) that read-ahead would
//! decompress the whole program at normal priority while slurmstepd forks
//! the tasks, which made the step slower on the 2-CPU test machine
//! (docs/performance.md, seventh pass). There, from the server's start, a
//! thread decompresses the program's first [`MAX_AHEAD`] bytes under
//! `SCHED_IDLE`, on CPU time the set-up, slurmstepd and the tasks leave
//! (at nice 19 it still took a CPU from slurmstepd for a whole tick, 4 ms
//! on the 2-CPU test machine, while the other CPU idled; not for xz, whose
//! decoder allocates as it goes); once the container process has reported
//! ready, the server puts the decompressed blocks into its cache as they
//! come ([`Warm::deliver`]). Nothing waits for the idle thread: it
//! decompresses outside the block cache and takes none of its locks, and a
//! task that faults a page first is served as without it.
//!
//! The kernel sends the read-ahead's reads in the background (up to the
//! server's limit of requests in flight; past it the asking thread waits,
//! killably), and the container process holds no descriptor of the FUSE
//! device (closed after the fork), so a server killed meanwhile ends the
//! connection and every read with it. Not `FUSE_NOTIFY_STORE` from the
//! server: a store waits, uninterruptibly, for a page a task's read has
//! locked until the server answers; a holder killed then can never finish
//! exiting (the storing thread keeps the device open, so the read is never
//! aborted) and the step's processes stay. For the same reason no thread of
//! the server touches the mount itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::time::{Duration, Instant};

use crate::squash::{Ahead, Squash};

use crate::env::{ContainerEnv, DEFAULT_PATH};
use crate::plan::{Entry, ImageTree, resolve::resolve_in_image};

/// The most bytes of the program read ahead.
pub(super) const MAX_AHEAD: u64 = 16 << 20;

/// What to warm for a step's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Warm {
    /// The paths exec tries, in order, up to the one it runs.
    pub(crate) lookups: Vec<PathBuf>,
    /// The program's file, its links followed in the image.
    pub(crate) file: PathBuf,
    /// Its inode in the image, whose blocks the server decompresses ahead.
    pub(crate) ino: Option<u64>,
    /// Whether the container process reads the program ahead into the
    /// kernel's page cache (the image's blocks are cheap to decompress).
    pub(crate) page_cache: bool,
}

/// The most bytes of the program read ahead into the page cache: the
/// decompression runs at normal priority while the tasks start.
pub(super) const MAX_PAGE_CACHE: u64 = 8 << 20;

/// The kernel reads ahead at most this much per request (a FUSE mount's
/// read-ahead window: `posix_fadvise` reads no more than one per call).
const WINDOW: u64 = 128 << 10;

/// The program's blocks as a thread of the server decompresses them, from
/// the server's start on (see [`Warm::decompress`]).
pub(crate) struct Pieces {
    ahead: Arc<Ahead>,
}

/// How long the server keeps putting blocks into its cache after the
/// container is ready, while the idle thread is still at them (it is
/// stopped then; the tasks' page faults fetch the rest as usual).
const DELIVER_FOR: Duration = Duration::from_secs(1);

impl Warm {
    /// Starts decompressing the program's first [`MAX_AHEAD`] bytes on a
    /// thread of its own under `SCHED_IDLE`, from the server's start on,
    /// while the container is still being set up: on CPU time nothing else
    /// wants (at nice 19 it still took a CPU from slurmstepd for a whole
    /// tick, 4 ms on the 2-CPU test machine, while the other CPU idled).
    /// Under `SCHED_IDLE` it only decompresses from memory into memory
    /// (`Ahead::run`): reading the image, allocating, freeing, the first
    /// block (which makes the thread's decoder) are done before, at normal
    /// priority; then it parks for good (its exit would free its decoder).
    /// So no thread of normal priority ever waits for it, on a lock of the
    /// server's, the allocator's or the kernel's. Not for an image of cheap
    /// blocks: the container process reads its program ahead instead.
    pub(crate) fn decompress(&self, squash: Arc<Squash>) -> Option<Pieces> {
        if self.page_cache {
            return None;
        }
        let ino = self.ino?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sifrun-ahead".into())
            .spawn(move || {
                let Some(ahead) = squash.prepare_ahead(ino, MAX_AHEAD).map(Arc::new) else {
                    return;
                };
                drop(squash);
                ahead.run(true);
                let ours = ahead.clone();
                if tx.send(ahead).is_err() || crate::syscall::idle_thread().is_err() {
                    return;
                }
                ours.run(false);
                // Never the last owner (the server keeps one): nothing is
                // freed here.
                std::mem::forget(ours);
                loop {
                    std::thread::park();
                }
            })
            .ok()?;
        // The preparation (reading the program's stored blocks) is quick.
        let ahead = rx.recv().ok()?;
        Some(Pieces { ahead })
    }

    /// In the container process, once it reported ready (its root is the
    /// container's), on a thread of its own so that its main thread waits
    /// for the step's end at once (a PATH entry on a slow network
    /// filesystem must not delay a SIGTERM): the names exec will look up,
    /// looked up, so the kernel remembers the answers; then, for an image
    /// of cheap blocks, the program's first [`MAX_PAGE_CACHE`] bytes read
    /// ahead into the page cache, one window per call. A failure only costs
    /// the tasks the time this would have saved.
    pub(crate) fn start_in_container(&self) {
        let warm = self.clone();
        let _ = std::thread::Builder::new()
            .name("sifrun-warm".into())
            .spawn(move || warm.in_container());
    }

    fn in_container(&self) {
        for path in &self.lookups {
            let _ = std::fs::metadata(path);
        }
        if self.page_cache {
            let _ = read_ahead(&self.file);
        }
    }

    /// Once the container process reported ready: the blocks decompressed
    /// so far, and those that follow for up to [`DELIVER_FOR`], put into
    /// the server's cache, where the tasks' page faults find them
    /// decompressed. A failure only costs the tasks the time this would
    /// have saved.
    pub(crate) fn deliver(&self, pieces: Option<Pieces>, squash: &Squash) {
        let Some(Pieces { ahead }) = pieces else {
            return;
        };
        let until = Instant::now() + DELIVER_FOR;
        let (mut next, mut blocks) = (0, 0);
        loop {
            let (done, from) = ahead.take_done(next);
            next = from;
            for (key, data) in done {
                squash.cache_ahead(key, data);
                blocks += 1;
            }
            if ahead.finished() || Instant::now() >= until {
                break;
            }
            // Polled: a lock or a channel would make this thread wait on
            // the idle one.
            std::thread::sleep(Duration::from_millis(1));
        }
        ahead.stop();
        // The server keeps `ahead` (never freed by the idle thread).
        std::mem::forget(ahead);
        tracing::debug!(blocks, "the step's command decompressed ahead");
    }
}

/// Asks the kernel to read the first [`MAX_PAGE_CACHE`] bytes of the
/// image's regular file `path` into its page cache, without waiting for
/// the reads. Opened without blocking (a FIFO a bind put there) and only
/// when it is a regular file of the image's own mount (the root's device),
/// never a file bound from the host.
fn read_ahead(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.dev() != std::fs::metadata("/")?.dev() {
        return Ok(());
    }
    let len = meta.len().min(MAX_PAGE_CACHE);
    let will_need = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED;
    let mut at = 0;
    while at < len {
        let (offset, window) = (at as libc::off_t, WINDOW as libc::off_t);
        nix::fcntl::posix_fadvise(&file, offset, window, will_need)?;
        at += WINDOW;
    }
    Ok(())
}

/// The tasks' PATH before the image's scripts: the user's, or the base one.
pub(super) fn task_path(env: &ContainerEnv) -> &str {
    env.user
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .or(env.base.get("PATH").map(String::as_str))
        .unwrap_or(DEFAULT_PATH)
}

/// What exec does for `command` with `path`, found in the image: the paths
/// it tries (an absolute command as it is, a bare name in each directory
/// of `path` up to the first that holds it) and the regular file it runs,
/// symlinks followed inside the image; `None` when the image has none.
pub(super) fn warm(tree: &dyn ImageTree, command: &str, path: &str) -> Option<Warm> {
    let candidates: Vec<PathBuf> = if command.starts_with('/') {
        vec![PathBuf::from(command)]
    } else if command.contains('/') || command.is_empty() {
        // Relative to the task's directory: not worth guessing.
        Vec::new()
    } else {
        path.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(command))
            .collect()
    };
    let mut lookups = Vec::new();
    for c in candidates {
        let found = resolve_in_image(tree, &c)
            .ok()
            .filter(|r| matches!(tree.entry(r), Some(Entry::File)));
        lookups.push(c);
        if let Some(file) = found {
            return Some(Warm {
                lookups,
                file,
                ino: None,
                page_cache: false,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::FakeTree;

    fn command_file(t: &FakeTree, command: &str, path: &str) -> Option<PathBuf> {
        warm(t, command, path).map(|w| w.file)
    }

    #[test]
    fn exec_s_lookups_are_the_paths_tried_up_to_the_program() {
        let t = FakeTree::new(&["/bin/", "/bin/busybox", "/bin/true -> busybox", "/usr/"]);
        let w = warm(&t, "true", "/usr/local/bin:/usr/bin:/bin:/sbin").unwrap();
        let tried: Vec<&str> = w.lookups.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(tried, ["/usr/local/bin/true", "/usr/bin/true", "/bin/true"]);
        assert_eq!(w.file, PathBuf::from("/bin/busybox"));
    }

    #[test]
    fn the_command_is_found_as_exec_would() {
        let t = FakeTree::new(&[
            "/bin/",
            "/bin/busybox",
            "/bin/true -> busybox",
            "/usr/",
            "/usr/bin/",
            "/usr/bin/env",
            "/usr/local/",
            "/usr/local/bin/",
            "/usr/local/bin/dir/",
        ]);
        let path = "/usr/local/bin:/nowhere:relative:/usr/bin:/bin";
        assert_eq!(
            command_file(&t, "true", path),
            Some(PathBuf::from("/bin/busybox"))
        );
        assert_eq!(
            command_file(&t, "env", path),
            Some(PathBuf::from("/usr/bin/env"))
        );
        assert_eq!(
            command_file(&t, "/bin/true", ""),
            Some(PathBuf::from("/bin/busybox"))
        );
        // A directory is no program; relative paths and missing ones: nothing.
        assert_eq!(command_file(&t, "dir", path), None);
        assert_eq!(command_file(&t, "./true", path), None);
        assert_eq!(command_file(&t, "absent", path), None);
        assert_eq!(command_file(&t, "", path), None);
    }

    #[test]
    fn the_command_is_looked_up_on_the_tasks_path() {
        let mut env = ContainerEnv::default();
        assert_eq!(task_path(&env), DEFAULT_PATH);
        env.base.insert("PATH".into(), "/base".into());
        assert_eq!(task_path(&env), "/base");
        env.user.push(("PATH".into(), "/mine".into()));
        assert_eq!(task_path(&env), "/mine", "the user's setting wins");
    }
}
