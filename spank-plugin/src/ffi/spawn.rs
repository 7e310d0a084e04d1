//! The holder's credentials when root starts it (init_post_opt): taken in
//! the child, between fork and exec, with raw system calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::holder::JobUser;

/// Makes `command`'s child the job's user (supplementary groups, gid, uid:
/// real, effective and saved alike) before exec, then enter `cwd` as that
/// user; with `refuse_dir`, a directory at that path (looked at as the
/// user) ends the start with `EISDIR`.
pub fn become_user(
    command: &mut Command,
    user: &JobUser,
    cwd: &Path,
    refuse_dir: Option<&Path>,
) -> io::Result<()> {
    let c_path = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let cwd = c_path(cwd)?;
    let refuse_dir = refuse_dir.map(c_path).transpose()?;
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.uid as libc::uid_t, user.gid as libc::gid_t);
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls may be made: it makes raw system calls
    // (setgroups, setresgid, setresuid, stat, chdir; each changes only the
    // calling thread, the child's only one) on data prepared before the
    // fork, reads errno, and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            check(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))?;
            if let Some(path) = &refuse_dir {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                if libc::stat(path.as_ptr(), st.as_mut_ptr()) == 0
                    && st.assume_init_ref().st_mode & libc::S_IFMT == libc::S_IFDIR
                {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
            }
            check(libc::chdir(cwd.as_ptr()).into())
        });
    }
    Ok(())
}
