//! The privileged path of a Slurm step under an activated ECL: neither the
//! container's namespace nor anything serving the image belongs to the job's
//! user.
//!
//! The holder (root: real, effective and saved uid 0, non-dumpable, so the
//! user can neither signal nor trace it) never parses the image and never
//! resolves a path the user controls:
//!
//! 1. an opener ([`opener`], the user for good) opens the image and sends
//!    the descriptor;
//! 2. `users.image_dirs` and the ECL's directory are judged on that
//!    descriptor's own path; [`crate::pin`] checks the descriptor
//!    (owner root or listed, no group/other write, no ACL write, not FUSE);
//! 3. the verifier ([`verifier`], `nobody`, no capabilities) parses and
//!    verifies it and answers with a verdict and the verified primary
//!    partition's bounds;
//! 4. a read-only, autoclearing loop device serves exactly that partition
//!    of the pinned descriptor;
//! 5. a child ([`root`]) builds the container in a new mount namespace
//!    owned by the initial user namespace (kernel squashfs, the same plan,
//!    staging and apply as the unprivileged path, host sources opened by
//!    an opener as the user, every mount nosuid,nodev), evaluates the
//!    image's environment scripts as the user, and reports;
//! 6. the holder pins that namespace with an nsfs bind mount in a private,
//!    root-owned directory ([`nsdir`]) and exits: no process of the
//!    container's remains to signal or trace. Tasks enter the namespace in
//!    `slurm_spank_task_init_privileged`; the plugin unmounts it at step end.
//!
//! Without the crate's `integrity` feature (the lean holder) there is no
//! [`hold`] (it verifies): only the identity and `users.image_dirs` helpers.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
use slurm_conf::protocol::{Outcome, Report, Stage};

use crate::launch::Launch;
use crate::syscall::{self, Forked, to_io};

pub(crate) mod nsdir;
pub(crate) mod opener;
mod root;
pub(crate) mod tree;
#[cfg(feature = "integrity")]
mod verdict;
#[cfg(feature = "integrity")]
pub(crate) mod verifier;

/// The job's user, as slurmstepd started the holder (effective ids).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCreds {
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
    /// The user's supplementary groups.
    pub groups: Vec<u32>,
}

impl UserCreds {
    /// The caller's effective identity.
    pub fn current() -> UserCreds {
        UserCreds {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: nix::unistd::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(Gid::as_raw)
                .collect(),
        }
    }
}

/// Becomes `user` for good: groups, gid, uid (which clears every
/// capability), no-new-privileges, non-dumpable, killed with its parent.
pub(crate) fn become_user(user: &UserCreds) -> io::Result<()> {
    if nix::unistd::geteuid().is_root() {
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(to_io)?;
        let g = Gid::from_raw(user.gid);
        setresgid(g, g, g).map_err(to_io)?;
        let u = Uid::from_raw(user.uid);
        setresuid(u, u, u).map_err(to_io)?;
    }
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    nix::sys::prctl::set_no_new_privs().map_err(to_io)?;
    nix::sys::prctl::set_dumpable(false).map_err(to_io)?;
    Ok(())
}

/// What the privileged path needs beyond the launch.
#[derive(Clone, Debug)]
pub struct Privileged {
    /// The admin file with the activated `[ecl]` (root's, trusted).
    pub admin_file: PathBuf,
    /// Where the namespace is pinned (see [`nsdir`]).
    pub ns_dir: PathBuf,
    /// `users.image_dirs`.
    pub image_dirs: Vec<PathBuf>,
}

/// A failure, with the stage the plugin reports.
#[derive(Debug)]
pub struct Failure {
    /// Where it failed.
    pub stage: Stage,
    /// One line for srun's standard error.
    pub message: String,
}

fn fail(stage: Stage) -> impl Fn(String) -> Failure {
    move |message| Failure { stage, message }
}

/// Runs the privileged path for `l`; returns the `ready` report line once
/// the namespace is pinned.
#[cfg(feature = "integrity")]
pub fn hold(l: &Launch, p: &Privileged, user: &UserCreds) -> Result<String, Failure> {
    let t = std::time::Instant::now();
    let image = open_image(&l.image, user)?;
    let real = real_path(&image).map_err(fail(Stage::Image))?;
    check_image_dirs(&real, &p.image_dirs).map_err(fail(Stage::Ecl))?;
    let (ecl, admin) = load_ecl(&p.admin_file).map_err(fail(Stage::Ecl))?;
    if !ecl.activated {
        return Err(fail(Stage::Ecl)(
            "the ECL is no longer activated in the admin file; the plugin and the holder disagree"
                .into(),
        ));
    }
    let owners = crate::pin::Owners {
        listed: &ecl.owners,
        user: user.uid,
    };
    let ecl_denied = |why: String| format!("ECL: {}: denied: {why}", l.image.display());
    crate::pin::check(&image, owners).map_err(|e| {
        fail(Stage::Ecl)(ecl_denied(format!(
            "{e} (the bytes checked must stay the bytes served)"
        )))
    })?;
    let trust = crate::ecl_check::TrustFiles::read(&ecl, &|_| Some(0))
        .map_err(|e| fail(Stage::Ecl)(e.to_string()))?;
    let dir = real.parent().unwrap_or(Path::new("/"));
    crate::launch::phase_done("open and pin", t);
    let t = std::time::Instant::now();
    let judged = verdict::Judged {
        image: &image,
        dir,
        ecl: &ecl,
        admin: &admin,
        trust: &trust,
    };
    let (v, cached) = verdict::verify(&judged, verdict_dir(&p.ns_dir).as_deref())
        .map_err(|e| fail(Stage::Ecl)(ecl_denied(e)))?;
    crate::launch::phase_done(
        if cached {
            "verify (cached verdict, 0 bytes read)"
        } else {
            "verify (unprivileged child)"
        },
        t,
    );
    if !v.allowed {
        let by = v
            .group
            .map(|g| format!(" by execgroup {g:?}"))
            .unwrap_or_default();
        return Err(fail(Stage::Ecl)(format!(
            "ECL: {}: denied{by}: {}",
            l.image.display(),
            v.reason
        )));
    }
    let len = image.metadata().map(|m| m.len()).unwrap_or(0);
    if v.size == 0 || v.offset.checked_add(v.size).is_none_or(|end| end > len) {
        return Err(fail(Stage::Image)(format!(
            "{}: the verified partition [{}, +{}) is not inside the file",
            l.image.display(),
            v.offset,
            v.size
        )));
    }
    let t = std::time::Instant::now();
    let (loop_dev, loop_path) = syscall::loop_attach(&image, v.offset, v.size).map_err(|e| {
        fail(Stage::Image)(format!("a loop device for the verified partition: {e}"))
    })?;
    runtime_dir(&p.ns_dir).map_err(fail(Stage::Setup))?;
    let ns = nsdir::NsDir::prepare(&p.ns_dir)
        .map_err(|e| fail(Stage::Setup)(format!("{}: {e}", p.ns_dir.display())))?;
    crate::launch::phase_done("loop device", t);
    let line = build_and_pin(l, user, &loop_path, &ns)?;
    drop(loop_dev);
    drop(image);
    ns.keep();
    Ok(line)
}

/// The runtime directory the namespace is pinned in: created by root if
/// missing, and trusted (root's, and root's all the way up).
fn runtime_dir(ns_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = ns_dir
        .parent()
        .ok_or_else(|| format!("{}: no runtime directory", ns_dir.display()))?;
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir);
    slurm_conf::trusted::check_file(dir, 0).map_err(|e| format!("plugstack.conf: runtime_dir: {e}"))
}

/// The admin file's ECL and the bytes it was parsed from (root's file).
fn load_ecl(path: &Path) -> Result<(slurm_conf::ecl::Ecl, Vec<u8>), String> {
    let bytes = slurm_conf::admin::read_trusted(path, Some(0)).map_err(|e| e.to_string())?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| format!("{}: not UTF-8 text", path.display()))?;
    let ecl = slurm_conf::ecl::Ecl::parse_file_text(text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((ecl, bytes))
}

/// The node's ECL verdict cache, `runtime_dir/ecl-verdicts` (the runtime
/// directory checked as for the namespace's pin).
fn verdict_dir(ns_dir: &Path) -> Option<PathBuf> {
    let dir = ns_dir.parent()?;
    runtime_dir(ns_dir)
        .inspect_err(|e| tracing::warn!("ECL verdict cache not used: {e}"))
        .ok()?;
    Some(dir.join("ecl-verdicts"))
}

/// Opens the image as the user (an opener in the host's namespace).
fn open_image(path: &Path, user: &UserCreds) -> Result<File, Failure> {
    let o = opener::Opener::start(user)
        .map_err(|e| fail(Stage::Privileges)(format!("starting the opener: {e}")))?;
    let fd = o
        .open(opener::Kind::Image, path)
        .map_err(|e| fail(Stage::Image)(format!("{}: {e}", path.display())))?;
    Ok(File::from(fd))
}

/// The path the kernel gives the open file (no user path is followed).
fn real_path(f: &File) -> Result<PathBuf, String> {
    use std::os::fd::AsRawFd;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|e| format!("the open image's path: {e}"))?;
    if !p.is_absolute() || p.to_string_lossy().ends_with(" (deleted)") {
        return Err(format!(
            "{}: the image is not reachable by a path",
            p.display()
        ));
    }
    Ok(p)
}

/// `users.image_dirs`, judged on the file opened.
pub fn check_image_dirs(real: &Path, dirs: &[PathBuf]) -> Result<(), String> {
    if dirs.is_empty() || dirs.iter().any(|d| real.starts_with(d)) {
        return Ok(());
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "{}: images must lie below {} (users.image_dirs, judged on the file opened)",
        real.display(),
        list.join(" or ")
    ))
}

/// Forks the namespace builder, waits for its report, pins its namespace
/// and lets it go. Returns the report line.
fn build_and_pin(
    l: &Launch,
    user: &UserCreds,
    loop_path: &Path,
    ns: &nsdir::NsDir,
) -> Result<String, Failure> {
    let setup = fail(Stage::Setup);
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup(e.to_string()))?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup(e.to_string()))?;
    let child = match syscall::fork_single_threaded().map_err(|e| setup(e.to_string()))? {
        Forked::Child => {
            drop((report_r, go_w));
            std::process::exit(root::run(l, user, loop_path, ns, report_w, go_r))
        }
        Forked::Parent(pid) => pid,
    };
    drop((report_w, go_r));
    let line = read_line(report_r);
    let result = match Report::decode_line(line.trim_end()) {
        Ok(Report {
            outcome: Outcome::Ready { .. },
            ..
        }) => ns
            .pin(child.as_raw())
            .map(|()| line)
            .map_err(|e| setup(format!("pinning the container's namespace: {e}"))),
        Ok(Report {
            outcome: Outcome::Failed { stage, message },
            ..
        }) => Err(Failure { stage, message }),
        Err(_) => Err(setup(
            "the container's set-up ended without a report".into(),
        )),
    };
    drop(go_w);
    match waitpid(child, None) {
        Ok(WaitStatus::Exited(_, _)) | Ok(WaitStatus::Signaled(..)) | Err(_) => {}
        Ok(_) => {}
    }
    result
}

fn read_line(fd: OwnedFd) -> String {
    let mut line = String::new();
    let _ = BufReader::new(File::from(fd))
        .take(MAX_REPORT)
        .read_line(&mut line);
    line
}

/// The longest report a namespace builder may send.
const MAX_REPORT: u64 = 64 << 20;

/// Writes `line` on standard output (the plugin reads it).
pub fn write_report(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dirs_are_judged_by_whole_components() {
        let dirs = [PathBuf::from("/shared/images")];
        check_image_dirs(Path::new("/shared/images/a.sif"), &dirs).unwrap();
        let e = check_image_dirs(Path::new("/shared/images-old/a.sif"), &dirs).unwrap_err();
        assert!(e.contains("must lie below /shared/images"), "{e}");
        check_image_dirs(Path::new("/anything"), &[]).unwrap();
    }

    #[test]
    fn the_real_path_is_the_kernels() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("i.sif");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink(&f, d.path().join("link.sif")).unwrap();
        let opened = File::open(d.path().join("link.sif")).unwrap();
        assert_eq!(
            real_path(&opened).unwrap(),
            std::fs::canonicalize(&f).unwrap()
        );
        std::fs::remove_file(&f).unwrap();
        assert!(
            real_path(&opened).is_err(),
            "a deleted image has no path to judge"
        );
    }
}
