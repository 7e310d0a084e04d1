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
