//! A Slurm step's command, decompressed ahead (issue 11, section 7).
//!
//! Each step mounts its image afresh, so the first task's exec would wait
//! for every block of its program to be decompressed, one page fault after
//! the other (13 ms against 2.5 ms warm for busybox from a gzip image,
//! `bench/holder-bench.py`; the FUSE round trips cost little, the
//! decompression most). Once the holder has forked the container, a thread
//! of its image server, in the idle scheduling class, looks the command up
//! in the image on the tasks' PATH and decompresses into the server's cache
//! the program's blocks, then those of its ELF interpreter and of the
//! libraries it needs, while the container is set up and slurmstepd starts
//! the tasks, on CPU time no one else wants. The kernel's page cache is
//! left alone: the exec still reads only the pages it needs.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::elf::elf_deps;
use crate::env::{ContainerEnv, DEFAULT_PATH};
use crate::plan::{Entry, ImageTree, resolve::resolve_in_image};
use crate::squash::Squash;

/// The most bytes decompressed ahead, over all the files.
const MAX_AHEAD: u64 = 24 << 20;
/// The most files decompressed ahead (the program, its interpreter and
/// the libraries they need, breadth first).
const MAX_FILES: usize = 24;

/// Decompresses `command` (found on `path`) and what its exec loads into
/// `squash`'s cache; returns the image files, in order.
pub(super) fn warm(squash: &Squash, command: &str, path: &str) -> Vec<PathBuf> {
    let Some(program) = command_file(squash, command, path) else {
        return Vec::new();
    };
    let mut budget = MAX_AHEAD;
    exec_files(squash, program, &mut |file| {
        let ino = squash.lookup_path(file)?;
        let blocks = squash.warm_file(ino, budget);
        budget = budget.saturating_sub(blocks * u64::from(squash.block_size()));
        let read = |offset: u64, len: u32| squash.read(ino, offset, len).ok();
        Some(elf_deps(&read))
    })
}

/// From `program` on, the files its exec loads, in order: each one is
/// handed to `visit`, which returns what its ELF headers name.
fn exec_files(
    tree: &dyn ImageTree,
    program: PathBuf,
    visit: &mut dyn FnMut(&Path) -> Option<super::elf::ElfDeps>,
) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let mut queue = VecDeque::from([program]);
    while let Some(file) = queue.pop_front() {
        if done.len() >= MAX_FILES || done.contains(&file) {
            continue;
        }
        let Some(deps) = visit(&file) else { continue };
        done.push(file);
        let dirs = lib_dirs(deps.interp.as_deref());
        let is_file = |p: &Path| {
            resolve_in_image(tree, p)
                .ok()
                .filter(|r| matches!(tree.entry(r), Some(Entry::File)))
        };
        queue.extend(deps.interp.and_then(|i| is_file(Path::new(&i))));
        for lib in deps.needed {
            queue.extend(dirs.iter().find_map(|d| is_file(&Path::new(d).join(&lib))));
        }
    }
    done
}

/// Where the dynamic loader looks for a library without a path: the
/// interpreter's directory, then the usual system directories.
fn lib_dirs(interp: Option<&str>) -> Vec<String> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs: Vec<String> = interp
        .and_then(|i| Path::new(i).parent()?.to_str().map(str::to_owned))
        .into_iter()
        .collect();
    for d in [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
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

/// The regular file of the image that exec would run for `command`: an
/// absolute path as it is, a bare name in the first directory of `path`
/// that holds it; symlinks followed inside the image.
fn command_file(tree: &dyn ImageTree, command: &str, path: &str) -> Option<PathBuf> {
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
    fn a_dynamic_programs_interpreter_and_libraries_follow_it() {
        use crate::launch::elf::tests::elf;
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        let libc = format!("/lib/{triplet}/libc.so.6");
        let t = FakeTree::new(&[
            "/bin/",
            "/bin/prog",
            "/lib/",
            &format!("/lib/{triplet}/"),
            &libc,
            "/lib64/",
            "/lib64/ld.so -> ../lib/ld-real.so",
            "/lib/ld-real.so",
        ]);
        let files = std::collections::BTreeMap::from([
            (
                "/bin/prog".to_owned(),
                elf("/lib64/ld.so", &["libc.so.6", "libmissing.so"]),
            ),
            ("/lib/ld-real.so".to_owned(), elf("/none", &[])),
            (libc.clone(), elf("/lib64/ld.so", &["libc.so.6"])),
        ]);
        let mut visit = |p: &Path| {
            let bytes = files.get(p.to_str()?)?;
            let read = |off: u64, len: u32| {
                let start = (off as usize).min(bytes.len());
                Some(bytes[start..(start + len as usize).min(bytes.len())].to_vec())
            };
            Some(elf_deps(&read))
        };
        let got = exec_files(&t, PathBuf::from("/bin/prog"), &mut visit);
        assert_eq!(
            got,
            ["/bin/prog", "/lib/ld-real.so", libc.as_str()].map(PathBuf::from)
        );
        // A file that cannot be read is skipped.
        assert!(exec_files(&t, PathBuf::from("/bin/none"), &mut visit).is_empty());
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
