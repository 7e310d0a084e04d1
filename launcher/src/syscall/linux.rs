//! [`Linux`]: the real [`Syscall`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{chdir, pivot_root};

use super::{Syscall, to_io};

/// The staging area's layout, once mounted.
#[derive(Default)]
struct Staging {
    /// Where the served image is mounted (before pivot_root), or the
    /// overlay on top of it.
    root: PathBuf,
    /// Where generated files are.
    files: PathBuf,
    /// Scratch space for the overlay.
    scratch: PathBuf,
}

/// The real thing: acts on the calling process.
#[derive(Default)]
pub(crate) struct Linux {
    staging: RefCell<Staging>,
    /// A descriptor of the root, opened on first use.
    root_fd: RefCell<Option<OwnedFd>>,
    /// Host sources opened before the staging area covered them.
    sources: RefCell<HashMap<PathBuf, OwnedFd>>,
    /// The sources were opened by someone else (the privileged path's
    /// opener, as the user): nothing more is opened here.
    preopened: bool,
}

fn tmpfs(target: &Path, data: &str) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(to_io)
}

impl Linux {
    /// A `Linux` whose host sources were opened as the user elsewhere
    /// (the privileged path: root never opens a path the user controls).
    pub(crate) fn with_sources(sources: HashMap<PathBuf, OwnedFd>) -> Linux {
        Linux {
            sources: RefCell::new(sources),
            preopened: true,
            ..Linux::default()
        }
    }

    /// Opens `target` inside the root: symlinks are resolved as if the root
    /// were `/`, magic links (such as /proc/PID/root) are refused, so a
    /// target can never reach a host path.
    fn open_target(&self, target: &Path) -> io::Result<OwnedFd> {
        if self.root_fd.borrow().is_none() {
            let fd = nix::fcntl::open(
                self.staging.borrow().root.as_path(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(to_io)?;
            *self.root_fd.borrow_mut() = Some(fd);
        }
        let root = self.root_fd.borrow();
        let root = root.as_ref().expect("opened above");
        let rel = target.strip_prefix("/").unwrap_or(target);
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(root, rel, how).map_err(to_io)
    }

    fn fd_path(fd: &OwnedFd) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    fn bind_path(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        let t = self.open_target(target)?;
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(
            Some(source),
            &Self::fd_path(&t),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(to_io)
    }
}

impl Syscall for Linux {
    fn unshare_user_mount(&self) -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).map_err(to_io)
    }

    fn write_self_proc(&self, file: &str, text: &str) -> io::Result<()> {
        fs::write(Path::new("/proc/self").join(file), text)
    }

    fn make_mounts_private(&self) -> io::Result<()> {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(to_io)
    }

    fn open_source(&self, path: &Path) -> io::Result<()> {
        if self.preopened {
            return match self.sources.borrow().contains_key(path) {
                true => Ok(()),
                false => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{}: not opened as the user", path.display()),
                )),
            };
        }
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(to_io)?;
        self.sources.borrow_mut().insert(path.to_owned(), fd);
        Ok(())
    }

    fn mount_staging(&self, dir: &Path) -> io::Result<PathBuf> {
        tmpfs(dir, "mode=0700,size=64m")?;
        // A recursive bind of a host path above or at `dir` (`-B /tmp:/x`)
        // copies the mounts below it; unbindable ones are left out, so the
        // staging area (and the image root and files inside it) never
        // shows in the container. Nothing can be bound from an unbindable
        // mount, and overlayfs refuses layers on one (EINVAL): the
        // generated files and the overlay's scratch space get tmpfs mounts
        // of their own.
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_UNBINDABLE,
            None::<&str>,
        )
        .map_err(to_io)?;
        let staging = Staging {
            root: dir.join("root"),
            files: dir.join("files"),
            scratch: dir.join("scratch"),
        };
        for d in [&staging.root, &staging.files, &staging.scratch] {
            fs::create_dir(d)?;
        }
        tmpfs(&staging.files, "mode=0700,size=16m")?;
        tmpfs(&staging.scratch, "mode=0700,size=64m")?;
        let root = staging.root.clone();
        *self.staging.borrow_mut() = staging;
        *self.root_fd.borrow_mut() = None;
        Ok(root)
    }

    fn write_generated(&self, name: &str, bytes: &[u8], executable: bool) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.staging.borrow().files.join(name);
        fs::write(&path, bytes)?;
        if executable {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        match self.sources.borrow().get(source) {
            Some(fd) => self.bind_path(&Self::fd_path(fd), target, recursive),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{}: source was not opened before the container was set up",
                    source.display()
                ),
            )),
        }
    }

    fn bind_generated(&self, name: &str, target: &Path) -> io::Result<()> {
        let source = self.staging.borrow().files.join(name);
        self.bind_path(&source, target, false)
    }

    fn mount_proc(&self, target: &Path) -> io::Result<()> {
        let t = self.open_target(target)?;
        mount(
            Some("proc"),
            &Self::fd_path(&t),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(to_io)
    }

    fn mount_tmpfs(&self, target: &Path) -> io::Result<()> {
        let t = self.open_target(target)?;
        tmpfs(&Self::fd_path(&t), "mode=0755")
    }

    fn remount(
        &self,
        target: &Path,
        readonly: bool,
        nodev: bool,
        recursive: bool,
    ) -> io::Result<()> {
        let t = self.open_target(target)?;
        if recursive {
            submounts_nosuid_nodev(&t, nodev)?;
        }
        let p = Self::fd_path(&t);
        let current = statvfs(&p).map_err(to_io)?.flags();
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
        for (have, keep) in [
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
            (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        ] {
            if current.contains(have) {
                flags |= keep;
            }
        }
        if readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        if nodev {
            flags |= MsFlags::MS_NODEV;
        }
        mount(None::<&str>, &p, None::<&str>, flags, None::<&str>).map_err(to_io)
    }

    fn overlay_root(&self) -> io::Result<()> {
        let mut staging = self.staging.borrow_mut();
        let upper = staging.scratch.join("upper");
        let work = staging.scratch.join("work");
        let merged = staging.scratch.join("merged");
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d)?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            staging.root.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(to_io)?;
        staging.root = merged;
        *self.root_fd.borrow_mut() = None;
        Ok(())
    }

    fn pivot_root(&self) -> io::Result<()> {
        chdir(self.staging.borrow().root.as_path()).map_err(to_io)?;
        pivot_root(".", ".").map_err(to_io)?;
        umount2(".", MntFlags::MNT_DETACH).map_err(to_io)?;
        chdir("/").map_err(to_io)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        chdir(path).map_err(to_io)
    }

    fn unshare_mount(&self) -> io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNS).map_err(to_io)
    }

    fn bind_image(&self, image_root: &Path) -> io::Result<()> {
        let root = self.staging.borrow().root.clone();
        mount(
            Some(image_root),
            &root,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(to_io)?;
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        mount(None::<&str>, &root, None::<&str>, flags, None::<&str>).map_err(to_io)?;
        *self.root_fd.borrow_mut() = None;
        Ok(())
    }

    fn create_target(&self, path: &Path, kind: crate::fuse::TargetKind) -> io::Result<()> {
        let parts: Vec<_> = path
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let mut at = PathBuf::from("/");
        for (i, c) in parts.iter().enumerate() {
            let next = at.join(c);
            if self.open_target(&next).is_err() {
                let parent = self.open_target(&at)?;
                let last = i + 1 == parts.len();
                if last && kind == crate::fuse::TargetKind::File {
                    nix::fcntl::openat(
                        &parent,
                        c.as_os_str(),
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map_err(to_io)?;
                } else {
                    nix::sys::stat::mkdirat(
                        &parent,
                        c.as_os_str(),
                        Mode::from_bits_truncate(0o755),
                    )
                    .map_err(to_io)?;
                }
            }
            at = next;
        }
        Ok(())
    }

    fn seal_root(&self) -> io::Result<()> {
        let root = self.staging.borrow().root.clone();
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV;
        mount(None::<&str>, &root, None::<&str>, flags, None::<&str>).map_err(to_io)
    }
}

/// Every mount below the one at `top` (a recursive bind) nosuid and nodev;
/// `top` itself keeps its devices unless `nodev`. Kernels before 5.12
/// lack `mount_setattr`: there the submounts keep the host's flags.
fn submounts_nosuid_nodev(top: &OwnedFd, nodev: bool) -> io::Result<()> {
    use super::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, mount_setattr};
    use std::os::fd::AsFd;
    match mount_setattr(top.as_fd(), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, true) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Ok(()),
        r => r?,
    }
    if !nodev {
        // The top (the host's /dev) keeps its devices; the remount that
        // follows leaves its nodev off.
        mount_setattr(top.as_fd(), 0, MOUNT_ATTR_NODEV, false)?;
    }
    Ok(())
}
