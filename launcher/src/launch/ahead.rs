//! A Slurm step's command, made ready ahead of the tasks' exec (issue 11,
//! section 7).
//!
//! Each step mounts its image afresh, so the tasks' exec would look every
//! name of its PATH search up through FUSE and wait for every block of its
//! program to be decompressed, one page fault after the other (13 ms
//! against 2.5 ms warm for busybox from a gzip image,
//! `bench/holder-bench.py`). The holder finds the command in the image
//! before it forks the container process. Once that process has reported
//! ready (the server's root is the container's by then, and the set-up no
//! longer competes for the CPU), a thread of the server looks the names up
//! as exec will, so that the kernel keeps the answers, absent names
//! included (see `fuse`), then decompresses the program's blocks into the
//! server's cache at nice 19 while slurmstepd starts the tasks. Started
//! earlier (from the fork on, as before the holder started early), it
//! delayed the set-up itself on the 2-CPU test machine: a nice-19 thread
//! keeps its CPU until the next tick (250 Hz) when others wake. The
//! kernel's page cache is left alone: asking it to read the whole program
//! ahead (`POSIX_FADV_WILLNEED`) made steps slower, not faster
//! (docs/performance.md).

use std::path::{Path, PathBuf};

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
}

impl Warm {
    /// In the server, once the container process reported ready (the
    /// server's root is the container's then): the names exec will look up,
    /// looked up; then the program's first [`MAX_AHEAD`] bytes decompressed
    /// into the server's cache. A failure only costs the tasks the time this
    /// would have saved.
    pub(crate) fn run(&self, squash: &crate::squash::Squash) {
        for path in &self.lookups {
            let _ = std::fs::metadata(path);
        }
        if let Some(ino) = self.ino {
            // At nice 19: slurmstepd and the tasks come first (not
            // SCHED_IDLE: the thread takes the block cache's locks, briefly,
            // and must not stall there).
            let _ = crate::syscall::idle_thread();
            let blocks = squash.warm_file(ino, MAX_AHEAD);
            tracing::debug!(ino, blocks, "the step's command decompressed ahead");
        }
    }
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
