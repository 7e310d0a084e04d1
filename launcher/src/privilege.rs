//! Leaving the half-privileged state slurmstepd starts the holder in.

use std::io;

use nix::unistd::{getegid, geteuid, getgid, getuid, setresgid, setresuid};

/// slurmstepd's user_init runs with real uid 0 and the job user as effective
/// uid; the holder it starts drops the root identity for good before doing
/// anything else, and refuses to run as root at all.
pub fn drop_to_effective_user() -> io::Result<()> {
    let (euid, egid) = (geteuid(), getegid());
    if euid.is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to hold a container as root",
        ));
    }
    if getgid() != egid {
        setresgid(egid, egid, egid).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    if getuid() != euid {
        setresuid(euid, euid, euid).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    }
    // Credentials changed: make the process dumpable again so that its
    // /proc files (uid_map, ns/*) belong to the user.
    nix::sys::prctl::set_dumpable(true).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(())
}

/// The job user of an ECL step's holder: the plugin starts it as root (all
/// uids 0, so that the user can never signal it) and names the user in
/// [`slurm_conf::protocol::HOLD_USER_ENV`]; a holder started with the
/// user's effective uid (an older plugin) is that user.
fn job_user() -> io::Result<crate::privileged::UserCreds> {
    if !geteuid().is_root() {
        return Ok(crate::privileged::UserCreds::current());
    }
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "started as root without a valid {}",
                slurm_conf::protocol::HOLD_USER_ENV
            ),
        )
    };
    let value = std::env::var(slurm_conf::protocol::HOLD_USER_ENV).map_err(|_| bad())?;
    let (uid, gid, groups) = slurm_conf::protocol::decode_hold_user(&value).ok_or_else(bad)?;
    Ok(crate::privileged::UserCreds { uid, gid, groups })
}

/// The privileged (ECL) path of a Slurm step: slurmstepd started the
/// holder with root's real uid (and the job user's effective uid, or root's
/// with the user named in the environment: see [`job_user`]); take
/// root back entirely (real, effective and saved uid and gid 0, so that
/// no process of the user's may signal it), drop the user's groups and
/// stay non-dumpable (nobody may trace it). Returns the user's identity,
/// for the children that act as the user.
pub fn become_root() -> io::Result<crate::privileged::UserCreds> {
    let user = job_user()?;
    if !getuid().is_root() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the ECL path needs slurmstepd's root (real uid 0)",
        ));
    }
    if user.uid == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to hold a container for root",
        ));
    }
    let root = nix::unistd::Uid::from_raw(0);
    setresuid(root, root, root).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let g = nix::unistd::Gid::from_raw(0);
    setresgid(g, g, g).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    nix::unistd::setgroups(&[]).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    Ok(user)
}
