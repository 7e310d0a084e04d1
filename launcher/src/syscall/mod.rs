//! The syscall seam: every operation that changes the process's
//! namespaces, mounts or root goes through [`Syscall`], with a real
//! implementation ([`Linux`]) and, in tests, a complete recording fake
//! (`Fake`) passed in explicitly.
//!
//! Two groups of operations: staging ([`crate::stage`], in the launcher
//! before it forks: namespaces, identity maps, the private staging area, the
//! generated files) and the container root ([`crate::apply`], in the
//! container's first process: mounts, `pivot_root`, working directory).
//!
//! This module holds the launcher's only `unsafe` code (`fork`, `clone`,
//! `sigwaitinfo`, `close_range`), each block with its SAFETY note.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

#[cfg(test)]
mod fake;
mod linux;
mod privileged;

#[cfg(test)]
pub(crate) use fake::Fake;
pub(crate) use linux::Linux;
pub(crate) use privileged::{
    MOUNT_ATTR_NODEV, MOUNT_ATTR_NOSUID, adopt_received_fd, file_handle, loop_attach,
    mount_setattr, no_writer,
};

/// The `system.posix_acl_access` attribute of an open file, if it has one.
pub(crate) fn file_acl(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    privileged::fgetxattr(fd, c"system.posix_acl_access")
}

/// Namespace, staging and container-root operations (container paths for
/// the root operations, host paths for the staging ones).
pub(crate) trait Syscall {
    /// Enters new user and mount namespaces.
    fn unshare_user_mount(&self) -> io::Result<()>;
    /// Writes `text` to `/proc/self/<file>` (`setgroups`, `uid_map`, `gid_map`).
    fn write_self_proc(&self, file: &str, text: &str) -> io::Result<()>;
    /// Makes every mount of the (new) mount namespace private.
    fn make_mounts_private(&self) -> io::Result<()>;
    /// Opens host `path` now, while it is still visible, for a later
    /// [`Syscall::bind`] from it.
    fn open_source(&self, path: &Path) -> io::Result<()>;
    /// Mounts the private staging area on host directory `dir`: a tmpfs
    /// that recursive binds of host paths leave out (unbindable), holding
    /// the image root's mount point, the generated files and scratch space;
    /// returns the mount point of the image root.
    fn mount_staging(&self, dir: &Path) -> io::Result<PathBuf>;
    /// Writes generated file `name` into the staging area.
    fn write_generated(&self, name: &str, bytes: &[u8], executable: bool) -> io::Result<()>;
    /// Binds host `source` onto container `target`.
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()>;
    /// Binds the generated file `name` onto `target`.
    fn bind_generated(&self, name: &str, target: &Path) -> io::Result<()>;
    /// Mounts a new procfs on `target`.
    fn mount_proc(&self, target: &Path) -> io::Result<()>;
    /// Mounts an empty tmpfs on `target`.
    fn mount_tmpfs(&self, target: &Path) -> io::Result<()>;
    /// Remounts the mount on `target` nosuid, and nodev / read-only as asked,
    /// keeping every flag the kernel has locked. With `recursive` (a
    /// recursive bind) every mount below it becomes nosuid and nodev too
    /// (the host's /dev/shm, /dev/pts, /sys/fs/cgroup...), even where the
    /// top one keeps its devices.
    fn remount(
        &self,
        target: &Path,
        readonly: bool,
        nodev: bool,
        recursive: bool,
    ) -> io::Result<()>;
    /// Puts a writable tmpfs overlay on top of the root.
    fn overlay_root(&self) -> io::Result<()>;
    /// Makes the root the process's `/`, detaching the old root.
    fn pivot_root(&self) -> io::Result<()>;
    /// Changes directory inside the container.
    fn chdir(&self, path: &Path) -> io::Result<()>;

    // The privileged (ECL) path: root, no user namespace.

    /// Enters a new mount namespace (owned by the caller's user namespace).
    fn unshare_mount(&self) -> io::Result<()>;
    /// Binds the image's root directory (a mount of the kernel's squashfs,
    /// already made) onto the staging area's root.
    fn bind_image(&self, image_root: &Path) -> io::Result<()>;
    /// Creates a missing mount target inside the root (parents included),
    /// never leaving it.
    fn create_target(&self, path: &Path, kind: crate::fuse::TargetKind) -> io::Result<()>;
    /// Makes the root's own mount read-only (its overlay took the targets).
    fn seal_root(&self) -> io::Result<()>;
}

pub(crate) fn to_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Result of [`fork`].
pub(crate) enum Forked {
    Parent(Pid),
    Child,
}

/// `fork(2)`, for a process that has not started any thread.
///
/// Callers guarantee the process is single-threaded at this point (the
/// launcher forks before any server or readahead thread starts).
pub(crate) fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees no other thread exists, so the child
    // inherits no lock held by another thread and may run ordinary Rust
    // code (allocate, format) before it execs.
    match unsafe { nix::unistd::fork() }.map_err(to_io)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Forgets the container process's copy of the FUSE session (no
/// destructor runs: it would unmount the image, which belongs to the
/// launcher) and closes its device, which must not stay open in the child.
/// For a process that shares its descriptor table with no other (fork or
/// clone without `CLONE_FILES`, as here).
pub(crate) fn forget_closing(session: fuser::Session<crate::fuse::SquashFs>) {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    let fd = session.as_fd().as_raw_fd();
    std::mem::forget(session);
    // SAFETY: the session, forgotten above, was the only owner of its
    // device descriptor in this process (its channel and mount share one)
    // and will never use or close it; it is closed exactly once, here.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Starts `f` as the first process of a new PID namespace (sharing the
/// caller's mount namespace, so descriptors of host sources stay usable for
/// binds); returns its PID as seen from the caller.
///
/// Like [`fork_single_threaded`], only for a process without other threads.
/// Never with `CLONE_FILES`: the child closes its copy of the FUSE device
/// ([`forget_closing`]), which must not close the launcher's.
/// Unlike `unshare(CLONE_NEWPID)`, the caller itself is left able to start
/// threads afterwards (the FUSE server needs them).
pub(crate) fn spawn_pid_namespace(mut f: impl FnMut() -> i32) -> io::Result<Pid> {
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
pub(crate) fn wait_signal(set: &nix::sys::signal::SigSet) -> io::Result<(i32, bool)> {
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

/// Puts the calling thread under `SCHED_IDLE`: it runs only on a CPU no
/// other thread of the normal class wants, and never takes one from them
/// when they wake (a nice-19 thread still can, until the next tick). The
/// caller must hold no lock another thread may wait for meanwhile. Lowering
/// one's own policy needs no privilege.
pub(crate) fn idle_thread() -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the sched_param it is given, which
    // lives across the call; on Linux a thread id names that thread.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from `first` up close-on-exec, so that no
/// program this process starts inherits them (`close_range(2)` with
/// `CLOSE_RANGE_CLOEXEC`; on kernels before 5.11, each descriptor listed
/// in `/proc/self/fd`).
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes plain integers and, with
    // CLOSE_RANGE_CLOEXEC, only sets the close-on-exec flag of descriptors
    // in the range; it closes nothing and touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd: &i32| u32::try_from(fd).is_ok_and(|fd| fd >= first))
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD takes a plain integer and only sets the
        // descriptor's flags; a descriptor closed since it was listed (the
        // listing's own) fails with EBADF, which is ignored.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBADF) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A C string for exec, refusing interior NULs with a clear error.
pub(crate) fn cstring(s: &std::ffi::OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{s:?} contains a NUL byte"),
        )
    })
}
