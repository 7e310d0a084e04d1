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

/// How the process of `fd` ended (its wait status), once it has: the
/// kernel keeps it for a descriptor taken before the end even after another
/// waiter reaped the process (`PIDFD_GET_INFO` with `PIDFD_INFO_EXIT`,
/// Linux 6.15). `None`: not ended and reaped, or an older kernel.
pub fn exit_status(fd: &impl AsFd) -> Option<i32> {
    /// `struct pidfd_info` up to `exit_code` (`PIDFD_INFO_SIZE_VER0`).
    #[repr(C)]
    #[derive(Default)]
    struct Info {
        mask: u64,
        cgroupid: u64,
        ids: [u32; 11],
        exit_code: i32,
    }
    const _: () = assert!(std::mem::size_of::<Info>() == 64);
    const PIDFD_INFO_EXIT: u64 = 1 << 3;
    /// `_IOWR(0xFF, 11, struct pidfd_info)` for the 64-byte structure.
    const PIDFD_GET_INFO: u32 = 0xC040_FF0B;
    let mut info = Info {
        mask: PIDFD_INFO_EXIT,
        ..Info::default()
    };
    // SAFETY: PIDFD_GET_INFO on a live descriptor writes at most the
    // 64 bytes its number encodes into `info`, a live local of that size.
    let rc = unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut Info,
        )
    };
    (rc == 0 && info.mask & PIDFD_INFO_EXIT != 0).then_some(info.exit_code)
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
