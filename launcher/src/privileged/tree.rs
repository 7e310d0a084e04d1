//! The plan's views in the privileged path, without root parsing a user's
//! byte or resolving a user's path:
//!
//! * [`DirTree`]: the image tree read through the kernel's squashfs mount
//!   of the verified partition (every lookup stays inside it);
//! * [`OpenedHost`]: the host as the user sees it, every path opened by
//!   the opener (as the user) and judged on the descriptor it sends.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat};

use super::opener::{Kind, Opener};
use crate::fuse::TargetKind;
use crate::plan::{Entry, HostFs, ImageTree};

/// The image tree below a directory descriptor.
pub(crate) struct DirTree {
    root: OwnedFd,
}

impl DirTree {
    pub(crate) fn new(root: OwnedFd) -> DirTree {
        DirTree { root }
    }

    fn open(&self, path: &Path, flags: OFlag, resolve: ResolveFlag) -> Option<OwnedFd> {
        let rel = path.strip_prefix("/").unwrap_or(path);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(resolve | ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(&self.root, rel, how).ok()
    }
}

fn file_type(fd: &OwnedFd) -> Option<SFlag> {
    let st = fstat(fd).ok()?;
    Some(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))
}

impl ImageTree for DirTree {
    fn entry(&self, path: &Path) -> Option<Entry> {
        let fd = self.open(
            path,
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            ResolveFlag::RESOLVE_NO_SYMLINKS,
        )?;
        Some(match file_type(&fd)? {
            SFlag::S_IFDIR => Entry::Dir,
            SFlag::S_IFREG => Entry::File,
            SFlag::S_IFLNK => {
                let target = nix::fcntl::readlinkat(&fd, "").ok()?;
                Entry::Symlink(PathBuf::from(target))
            }
            _ => Entry::Other,
        })
    }

    fn read_small(&self, path: &Path) -> Option<Vec<u8>> {
        let fd = self.open(
            path,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW,
            ResolveFlag::RESOLVE_NO_SYMLINKS,
        )?;
        if file_type(&fd)? != SFlag::S_IFREG {
            return None;
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take((1 << 20) + 1)
            .read_to_end(&mut bytes)
            .ok()?;
        (bytes.len() <= 1 << 20).then_some(bytes)
    }

    fn list(&self, path: &Path) -> Option<Vec<OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let fd = self.open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ResolveFlag::RESOLVE_NO_SYMLINKS,
        )?;
        let dir = nix::dir::Dir::from_fd(fd).ok()?;
        Some(
            dir.into_iter()
                .filter_map(Result::ok)
                .map(|e| OsString::from(std::ffi::OsStr::from_bytes(e.file_name().to_bytes())))
                .filter(|n| n != "." && n != "..")
                .collect(),
        )
    }
}

/// The host as the job's user sees it: each path is opened by the opener
/// once, on first use; the descriptors are the bind sources.
pub(crate) struct OpenedHost<'a> {
    opener: &'a Opener,
    opened: RefCell<HashMap<PathBuf, Result<OwnedFd, i32>>>,
}

impl<'a> OpenedHost<'a> {
    pub(crate) fn new(opener: &'a Opener) -> OpenedHost<'a> {
        OpenedHost {
            opener,
            opened: RefCell::new(HashMap::new()),
        }
    }

    /// Asks the opener for `path` unless it was asked already.
    pub(crate) fn ensure(&self, path: &Path) {
        if self.opened.borrow().contains_key(path) {
            return;
        }
        let r = self
            .opener
            .open(Kind::Source, path)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        self.opened.borrow_mut().insert(path.to_owned(), r);
    }

    /// The descriptors opened, for [`crate::syscall::Linux::with_sources`].
    pub(crate) fn into_sources(self) -> HashMap<PathBuf, OwnedFd> {
        self.opened
            .into_inner()
            .into_iter()
            .filter_map(|(p, r)| Some((p, r.ok()?)))
            .collect()
    }
}

impl HostFs for OpenedHost<'_> {
    fn kind(&self, path: &Path) -> Option<TargetKind> {
        self.ensure(path);
        let opened = self.opened.borrow();
        let fd = opened.get(path)?.as_ref().ok()?;
        Some(match file_type(fd)? {
            SFlag::S_IFDIR => TargetKind::Dir,
            _ => TargetKind::File,
        })
    }

    fn why_missing(&self, path: &Path) -> String {
        match self.opened.borrow().get(path) {
            Some(Err(libc::EACCES)) => "permission denied (you cannot reach it on the host)".into(),
            Some(Err(e)) => std::io::Error::from_raw_os_error(*e).to_string(),
            _ => "no such file or directory".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_stays_inside_its_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path().join("root");
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", r.join("etc/out")).unwrap();
        std::fs::write(d.path().join("secret"), b"host").unwrap();
        std::os::unix::fs::symlink("../secret", r.join("up")).unwrap();
        let fd = nix::fcntl::open(
            &r,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        assert_eq!(file_type(&fd), Some(SFlag::S_IFDIR));
        let t = DirTree::new(fd);
        assert_eq!(t.entry(Path::new("/etc")), Some(Entry::Dir));
        assert_eq!(t.entry(Path::new("/etc/passwd")), Some(Entry::File));
        assert_eq!(
            t.entry(Path::new("/link")),
            Some(Entry::Symlink("/etc".into()))
        );
        assert_eq!(
            t.entry(Path::new("/link/passwd")),
            None,
            "links are reported, not followed"
        );
        assert_eq!(t.entry(Path::new("/nope")), None);
        assert!(
            t.read_small(Path::new("/etc/passwd"))
                .unwrap()
                .starts_with(b"root:")
        );
        assert_eq!(
            t.read_small(Path::new("/up")),
            None,
            "never the host's file"
        );
        assert_eq!(t.read_small(Path::new("/etc/out")), None);
        let mut names = t.list(Path::new("/")).unwrap();
        names.sort();
        assert_eq!(names, ["etc", "link", "up"]);
    }
}
