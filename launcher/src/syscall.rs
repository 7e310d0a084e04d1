//! The syscall seam: every operation that changes the process's mounts,
//! root or namespaces goes through [`Syscall`], with a real implementation
//! ([`Linux`]) and a complete recording fake ([`Fake`]) passed in explicitly.
//!
//! This module holds the launcher's only `unsafe` code (`fork` and
//! `sigwaitinfo`), each block with its SAFETY note.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::Mode;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Pid, chdir, pivot_root};

/// Operations on the container's root (paths are container paths).
pub trait Syscall {
    /// Binds host `source` onto container `target`.
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()>;
    /// Binds the generated file `name` onto `target`.
    fn bind_generated(&self, name: &str, target: &Path) -> io::Result<()>;
    /// Mounts a new procfs on `target`.
    fn mount_proc(&self, target: &Path) -> io::Result<()>;
    /// Mounts an empty tmpfs on `target`.
    fn mount_tmpfs(&self, target: &Path) -> io::Result<()>;
    /// Remounts the mount on `target` nosuid, and nodev / read-only as asked,
    /// keeping every flag the kernel has locked.
    fn remount(&self, target: &Path, readonly: bool, nodev: bool) -> io::Result<()>;
    /// Puts a writable tmpfs overlay on top of the root.
    fn overlay_root(&self) -> io::Result<()>;
    /// Makes the root the process's `/`, detaching the old root.
    fn pivot_root(&self) -> io::Result<()>;
    /// Changes directory inside the container.
    fn chdir(&self, path: &Path) -> io::Result<()>;
}

fn to_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The real thing, acting on the staging directory of a launch.
pub struct Linux {
    /// Where the served image is mounted (before pivot_root).
    root: RefCell<PathBuf>,
    /// A descriptor of `root`, opened on first use.
    root_fd: RefCell<Option<OwnedFd>>,
    /// Where generated files are.
    files: PathBuf,
    /// Scratch space for the overlay.
    scratch: PathBuf,
    /// Host sources opened before the staging area covered them.
    sources: HashMap<PathBuf, OwnedFd>,
}

impl Linux {
    pub fn new(
        root: PathBuf,
        files: PathBuf,
        scratch: PathBuf,
        sources: HashMap<PathBuf, OwnedFd>,
    ) -> Linux {
        Linux {
            root: RefCell::new(root),
            root_fd: RefCell::new(None),
            files,
            scratch,
            sources,
        }
    }

    /// Opens `target` inside the root: symlinks are resolved as if the root
    /// were `/`, magic links (such as /proc/PID/root) are refused, so a
    /// target can never reach a host path.
    fn open_target(&self, target: &Path) -> io::Result<OwnedFd> {
        if self.root_fd.borrow().is_none() {
            let fd = nix::fcntl::open(
                self.root.borrow().as_path(),
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
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        match self.sources.get(source) {
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
        self.bind_path(&self.files.join(name), target, false)
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
        mount(
            Some("tmpfs"),
            &Self::fd_path(&t),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(to_io)
    }

    fn remount(&self, target: &Path, readonly: bool, nodev: bool) -> io::Result<()> {
        let t = self.open_target(target)?;
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
        let upper = self.scratch.join("upper");
        let work = self.scratch.join("work");
        let merged = self.scratch.join("merged");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d)?;
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            self.root.borrow().display(),
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
        *self.root.borrow_mut() = merged;
        *self.root_fd.borrow_mut() = None;
        Ok(())
    }

    fn pivot_root(&self) -> io::Result<()> {
        chdir(self.root.borrow().as_path()).map_err(to_io)?;
        pivot_root(".", ".").map_err(to_io)?;
        umount2(".", MntFlags::MNT_DETACH).map_err(to_io)?;
        chdir("/").map_err(to_io)
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        chdir(path).map_err(to_io)
    }
}

/// A recording fake: every call is logged; call number `fail_at` (1-based)
/// fails with `fail_errno` (default `EPERM`), as do all calls on targets in
/// `fail_targets`.
#[derive(Default)]
pub struct Fake {
    pub calls: RefCell<Vec<String>>,
    pub fail_at: Option<usize>,
    pub fail_targets: Vec<PathBuf>,
    pub fail_errno: Option<i32>,
    pub proc_fails: bool,
}

impl Fake {
    fn record(&self, call: String, target: Option<&Path>) -> io::Result<()> {
        let mut calls = self.calls.borrow_mut();
        calls.push(call);
        let n = calls.len();
        if Some(n) == self.fail_at
            || target.is_some_and(|t| self.fail_targets.iter().any(|f| f == t))
        {
            return Err(io::Error::from_raw_os_error(
                self.fail_errno.unwrap_or(libc::EPERM),
            ));
        }
        Ok(())
    }

    /// The log, one call per line.
    pub fn log(&self) -> String {
        self.calls
            .borrow()
            .iter()
            .map(|c| format!("{c}\n"))
            .collect()
    }
}

impl Syscall for Fake {
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        let op = if recursive { "rbind" } else { "bind" };
        self.record(
            format!("{op} {} {}", source.display(), target.display()),
            Some(target),
        )
    }
    fn bind_generated(&self, name: &str, target: &Path) -> io::Result<()> {
        self.record(
            format!("bind-generated {name} {}", target.display()),
            Some(target),
        )
    }
    fn mount_proc(&self, target: &Path) -> io::Result<()> {
        let r = self.record(format!("proc {}", target.display()), Some(target));
        if self.proc_fails {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        r
    }
    fn mount_tmpfs(&self, target: &Path) -> io::Result<()> {
        self.record(format!("tmpfs {}", target.display()), Some(target))
    }
    fn remount(&self, target: &Path, readonly: bool, nodev: bool) -> io::Result<()> {
        let mut f = vec!["nosuid"];
        if readonly {
            f.push("ro");
        }
        if nodev {
            f.push("nodev");
        }
        self.record(
            format!("remount {} {}", target.display(), f.join(",")),
            None,
        )
    }
    fn overlay_root(&self) -> io::Result<()> {
        self.record("overlay-root".into(), None)
    }
    fn pivot_root(&self) -> io::Result<()> {
        self.record("pivot-root".into(), None)
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", path.display()), Some(path))
    }
}

/// Result of [`fork`].
pub enum Forked {
    Parent(Pid),
    Child,
}

/// `fork(2)`, for a process that has not started any thread.
///
/// Callers guarantee the process is single-threaded at this point (the
/// launcher forks before any server or readahead thread starts).
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists, so the child
    // inherits no lock held by another thread and may run ordinary Rust
    // code (allocate, format) before it execs.
    match unsafe { nix::unistd::fork() }.map_err(to_io)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Starts `f` as the first process of a new PID namespace (sharing the
/// caller's mount namespace, so descriptors of host sources stay usable for
/// binds); returns its PID as seen from the caller.
///
/// Like [`fork_single_threaded`], only for a process without other threads.
/// Unlike `unshare(CLONE_NEWPID)`, the caller itself is left able to start
/// threads afterwards (the FUSE server needs them).
pub fn spawn_pid_namespace(mut f: impl FnMut() -> i32) -> io::Result<Pid> {
    let mut stack = vec![0u8; 16 << 20];
    let cb: Box<dyn FnMut() -> isize + '_> = Box::new(move || {
        let code = f();
        std::process::exit(code)
    });
    // SAFETY: without CLONE_VM the child runs on its own copy-on-write copy
    // of `stack` (16 MiB, more than the container setup uses) and of the
    // whole address space, exactly as after fork(2); the caller guarantees
    // no other thread exists, so no lock is held in the copy. The child
    // never returns into the caller's frames: `cb` ends with process::exit.
    let pid = unsafe {
        nix::sched::clone(
            cb,
            &mut stack,
            nix::sched::CloneFlags::CLONE_NEWPID,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(to_io)?;
    Ok(pid)
}

/// A signal taken from the blocked set, and whether another process sent it
/// (as opposed to the kernel, for example on behalf of the terminal).
pub fn wait_signal(set: &nix::sys::signal::SigSet) -> io::Result<(i32, bool)> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
    // SAFETY: `set` is a valid, initialised signal set and `info` points to
    // writable memory of the right type; sigwaitinfo writes it on success.
    let sig = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
    if sig < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sigwaitinfo succeeded, so `info` is initialised.
    let info = unsafe { info.assume_init() };
    Ok((sig, info.si_code <= 0))
}

/// A C string for exec, refusing interior NULs with a clear error.
pub fn cstring(s: &std::ffi::OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}
