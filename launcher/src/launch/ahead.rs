//! A Slurm step's command, decompressed ahead (issue 11, section 7).
//!
//! Each step mounts its image afresh, so the first task's exec would wait
//! for every block of its program to be decompressed, one page fault after
//! the other (13 ms against 2.5 ms warm for busybox from a gzip image,
//! `bench/holder-bench.py`; the FUSE round trips cost little, the
//! decompression most). The holder looks the command up in the image
//! before it forks the container; after the fork a thread of the server,
//! at nice 19, decompresses the program's blocks into
//! the server's cache while the container is set up and slurmstepd starts
//! the tasks, on CPU time no one else wants. The kernel's page cache is
//! left alone: the exec still reads only the pages it needs.

use std::path::{Path, PathBuf};

use crate::env::{ContainerEnv, DEFAULT_PATH};
use crate::plan::{Entry, ImageTree, resolve::resolve_in_image};

/// The most bytes of the program decompressed ahead.
pub(super) const MAX_AHEAD: u64 = 16 << 20;

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

/// The regular file of the image that exec would run for `command`: an
/// absolute path as it is, a bare name in the first directory of `path`
/// that holds it; symlinks followed inside the image.
pub(super) fn command_file(tree: &dyn ImageTree, command: &str, path: &str) -> Option<PathBuf> {
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
    candidates
        .into_iter()
        .filter_map(|c| resolve_in_image(tree, &c).ok())
        .find(|r| matches!(tree.entry(r), Some(Entry::File)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::FakeTree;

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
