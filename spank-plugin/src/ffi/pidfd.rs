//! Process file descriptors: the holder is signalled through one taken
//! when it was started, never by its PID, which slurmstepd (reaping every
//! child) may have let the kernel give to another process.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::Signal;

/// A descriptor for process `pid` (Linux 5.3).
pub fn open(pid: u32) -> nix::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::EINVAL)?;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` to the process `fd` refers to; `ESRCH` once it has ended,
/// whatever process has its PID now.
pub fn send_signal(fd: &impl AsFd, sig: Signal) -> nix::Result<()> {
    // SAFETY: pidfd_send_signal with a live descriptor, a signal number, no
    // siginfo (NULL) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_fd().as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}
