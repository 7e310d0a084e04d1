//! Where a step's root-owned mount namespace is pinned: a directory in the
//! trusted runtime directory (`runtime_dir/JOB.STEP.ns`, mode 0700),
//! bound onto itself and made private so that nothing mounted in it
//! propagates to other namespaces. In it, `image` is where the namespace
//! builder mounts the verified squashfs (in its own namespace only) and
//! `mnt` is an nsfs bind of the namespace: it keeps the namespace alive
//! without any process, and tasks open it to enter. The plugin removes
//! it at step end; the job epilog sweeps what a killed slurmstepd left.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::syscall::to_io;

/// A prepared namespace directory; removed on drop unless kept.
pub(crate) struct NsDir {
    path: PathBuf,
    kept: std::cell::Cell<bool>,
}

impl NsDir {
    /// Creates `path` (its parent must exist and be trusted), bound onto
    /// itself and private, with `image` and `mnt` in it.
    pub(crate) fn prepare(path: &Path) -> io::Result<NsDir> {
        if path.exists() {
            // A leftover of the same step name (a killed slurmstepd).
            remove(path);
        }
        std::fs::DirBuilder::new().mode(0o700).create(path)?;
        let ns = NsDir {
            path: path.to_owned(),
            kept: std::cell::Cell::new(false),
        };
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(to_io)?;
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(to_io)?;
        std::fs::DirBuilder::new().mode(0o700).create(ns.image())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path.join("mnt"))?;
        Ok(ns)
    }

    /// Where the builder mounts the image.
    pub(crate) fn image(&self) -> PathBuf {
        self.path.join("image")
    }

    /// Binds the mount namespace of process `pid` onto `mnt`.
    pub(crate) fn pin(&self, pid: i32) -> io::Result<()> {
        let ns = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
        mount(
            Some(&ns),
            &self.path.join("mnt"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(to_io)
    }

    /// Leaves it in place (the step runs in it).
    pub(crate) fn keep(&self) {
        self.kept.set(true);
    }
}

impl Drop for NsDir {
    fn drop(&mut self) {
        if !self.kept.get() {
            remove(&self.path);
        }
    }
}

/// Unmounts and removes a namespace directory (best effort).
pub(crate) fn remove(path: &Path) {
    let mnt = path.join("mnt");
    let _ = umount2(&mnt, MntFlags::MNT_DETACH);
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&mnt);
    let _ = std::fs::remove_dir(path.join("image"));
    let _ = std::fs::remove_dir(path);
}
