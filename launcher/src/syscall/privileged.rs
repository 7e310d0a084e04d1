//! The raw calls of the privileged (ECL) path that nix does not wrap: the
//! loop device's ioctls, `mount_setattr(2)` and `fgetxattr(2)`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
/// `LO_FLAGS_READ_ONLY`.
const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`: the device detaches when its last user closes it.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h> (Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device serving `[offset, offset+size)` of `file`, read-only,
/// detached by the kernel once its last user (the mount) is gone. Returns
/// the open device and its path.
pub(crate) fn loop_attach(file: &File, offset: u64, size: u64) -> io::Result<(File, PathBuf)> {
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    // Another process may take the free device first: try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new().read(true).open(&path)?;
        let mut name = [0u8; 64];
        name[..6].copy_from_slice(b"sifrun");
        let config = LoopConfig {
            fd: u32::try_from(file.as_raw_fd()).map_err(|_| io::Error::other("bad descriptor"))?,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: offset,
                lo_sizelimit: size,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                lo_file_name: name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a fully initialised struct loop_config that
        // lives for the call; the kernel only reads it.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &raw const config) };
        if r == 0 {
            return Ok((dev, path));
        }
        last = io::Error::last_os_error();
        if last.raw_os_error() != Some(libc::EBUSY) {
            return Err(last);
        }
    }
    Err(last)
}

/// `struct mount_attr` of <linux/mount.h>.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_NOSUID`.
pub(crate) const MOUNT_ATTR_NOSUID: u64 = 0x2;
/// `MOUNT_ATTR_NODEV`.
pub(crate) const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Sets `set` and clears `clear` on the mount at `fd` and, with
/// `recursive`, on every mount below it (`mount_setattr(2)`, Linux 5.12).
/// Adding nosuid and nodev is allowed even on mounts the kernel has locked.
pub(crate) fn mount_setattr(
    fd: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    recursive: bool,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: a valid descriptor, an empty NUL-terminated path (with
    // AT_EMPTY_PATH: the descriptor itself) and an initialised mount_attr
    // of the size passed, all living for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The value of extended attribute `name` of the open file `fd`, or `None`
/// when it has none.
pub(crate) fn fgetxattr(fd: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: `name` is NUL-terminated and `buf` is writable for its length.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// Takes ownership of a descriptor number the kernel installed for us in
/// an `SCM_RIGHTS` control message.
pub(crate) fn adopt_received_fd(raw: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: recvmsg just installed `raw` in our descriptor table for this
    // message; nothing else refers to it, so ownership is ours alone.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) }
}

/// The file handle of the open file `fd` (`name_to_handle_at(2)` with
/// `AT_EMPTY_PATH`: the handle type and bytes, which include the inode's
/// generation where the file system has one), or `None` where the file
/// system gives none.
pub(crate) fn file_handle(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    const MAX: usize = libc::MAX_HANDLE_SZ as usize;
    // struct file_handle: u32 handle_bytes, i32 handle_type, bytes.
    let mut buf = [0u32; 2 + MAX / 4];
    buf[0] = MAX as u32;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a `struct file_handle` with room for MAX_HANDLE_SZ
    // bytes (handle_bytes says so), aligned for its u32/i32 header; the
    // path is an empty NUL-terminated string; `mount_id` is writable.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return None;
    }
    let len = (buf[0] as usize).min(MAX);
    let mut out: Vec<u8> = buf[1].to_ne_bytes().to_vec();
    out.extend(buf[2..].iter().flat_map(|w| w.to_ne_bytes()).take(len));
    Some(out)
}

/// Whether nobody has the open file `fd` open for writing: a read lease
/// (`F_SETLEASE`, `F_RDLCK`; root holds `CAP_LEASE`) is granted only then,
/// and is released at once. Any failure (`EAGAIN`: a writer) is `false`.
pub(crate) fn no_writer(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl on a descriptor we hold, with integer arguments only.
    let r = unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETLEASE,
            libc::c_int::from(libc::F_RDLCK),
        )
    };
    if r != 0 {
        return false;
    }
    // SAFETY: as above; releases the lease just taken.
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETLEASE,
            libc::c_int::from(libc::F_UNLCK),
        )
    };
    true
}
