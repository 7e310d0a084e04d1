//! The holder's credentials when root starts it (init_post_opt): taken in
//! the child, between fork and exec, with raw system calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::holder::JobUser;

/// Makes `command`'s child the job's user before exec, in the order
/// user_init's holder had it:
/// 1. its OOM score back to 0 (slurmstepd protects itself with -1000; the
///    tasks get 0 too);
/// 2. the job's supplementary groups and gid, then the user's uid as the
///    effective one with root's still real and saved: the state user_init
///    runs in. `refuse_dir` (looked at: a directory there ends the start
///    with `EISDIR`) and `cwd` (entered) are reached with the user's
///    permissions, and a FUSE mount of the user's refuses this process
///    (its real uid is root's) instead of making slurmstepd wait for the
///    user's server;
/// 3. the user's uid as real, effective and saved uid.
///
/// Like a holder started in user_init it outlives a slurmstepd killed
/// outright, as the step's tasks do (it serves their image); the job
/// epilog's sweep ends it.
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
    let oom = c"/proc/self/oom_score_adj";
    let groups: Vec<libc::gid_t> = user.groups.clone();
    let (uid, gid) = (user.uid as libc::uid_t, user.gid as libc::gid_t);
    let root: libc::uid_t = 0;
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls may be made: it makes raw system calls
    // (open, write, close, setgroups, setresgid, setresuid, stat, chdir;
    // the credential calls change only the calling thread,
    // the child's only one) on data prepared before the fork, reads errno,
    // and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(oom.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let _ = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            check(libc::syscall(
                libc::SYS_setgroups,
                groups.len(),
                groups.as_ptr(),
            ))?;
            check(libc::syscall(libc::SYS_setresgid, gid, gid, gid))?;
            check(libc::syscall(libc::SYS_setresuid, root, uid, root))?;
            if let Some(path) = &refuse_dir {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                if libc::stat(path.as_ptr(), st.as_mut_ptr()) == 0
                    && st.assume_init_ref().st_mode & libc::S_IFMT == libc::S_IFDIR
                {
                    return Err(io::Error::from_raw_os_error(libc::EISDIR));
                }
            }
            check(libc::chdir(cwd.as_ptr()).into())?;
            check(libc::syscall(libc::SYS_setresuid, uid, uid, uid))
        });
    }
    Ok(())
}
