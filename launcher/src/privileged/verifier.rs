//! The verifier: the only process of the privileged path that parses the
//! image (the SIF, its signatures, the OpenPGP data). A child of the root
//! holder that has dropped, before it reads a byte, to an unprivileged uid
//! (`nobody`): no groups, no capabilities, no-new-privileges,
//! non-dumpable, its address space and CPU time bounded. It returns a
//! verdict on a pipe; root acts on the verdict only, and a verifier that
//! dies, crashes, overruns its time or says anything malformed is a denial.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use slurm_conf::ecl::Ecl;

use crate::ecl_check::{TrustFiles, Verdict};
use crate::syscall::{self, Forked, to_io};

/// The unprivileged identity the verifier runs as.
pub(crate) const NOBODY: u32 = 65534;
/// How long a verification may take (a 10 GB image hashes in ~10 s).
pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);
/// The verifier's address-space limit.
const MEMORY: u64 = 2 << 30;
/// The longest verdict read back.
const MAX_VERDICT: usize = 16 << 10;

/// Verifies `image` (found in `dir`) against `ecl` with the bytes of the
/// admin files it names (read by root; parsed only here), in a dropped
/// child; returns the verdict or why there is none.
pub(crate) fn verify(
    image: &File,
    dir: &Path,
    ecl: &Ecl,
    files: &TrustFiles,
    timeout: Duration,
) -> Result<Verdict, String> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("starting the verifier: {e}"))?;
    let pid = match syscall::fork_single_threaded() {
        Err(e) => return Err(format!("starting the verifier: {e}")),
        Ok(Forked::Child) => {
            drop(read);
            std::process::exit(child(image, dir, ecl, files, write))
        }
        Ok(Forked::Parent(pid)) => pid,
    };
    drop(write);
    let text = read_all(read, Instant::now() + timeout);
    let status = if text.is_err() {
        let _ = kill(pid, Signal::SIGKILL);
        waitpid(pid, None)
    } else {
        waitpid(pid, None)
    };
    let text = text?;
    match status {
        Ok(WaitStatus::Exited(_, 0)) => Verdict::decode(&text),
        Ok(s) => Err(format!("the verifier failed ({s:?})")),
        Err(e) => Err(format!("the verifier: {e}")),
    }
}

/// The child: drop, then judge. Returns its exit status.
fn child(image: &File, dir: &Path, ecl: &Ecl, files: &TrustFiles, out: OwnedFd) -> i32 {
    if drop_to_nobody().is_err() {
        return 3;
    }
    let verdict = crate::ecl_check::judge(image, dir, ecl, files);
    let mut out = File::from(out);
    if out.write_all(verdict.encode().as_bytes()).is_err() {
        return 4;
    }
    0
}

/// Becomes `nobody` for good and bounds the process.
fn drop_to_nobody() -> io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).map_err(to_io)?;
        let g = Gid::from_raw(NOBODY);
        setresgid(g, g, g).map_err(to_io)?;
        let u = Uid::from_raw(NOBODY);
        setresuid(u, u, u).map_err(to_io)?;
    }
    // After the identity change, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    nix::sys::prctl::set_no_new_privs().map_err(to_io)?;
    nix::sys::prctl::set_dumpable(false).map_err(to_io)?;
    setrlimit(Resource::RLIMIT_AS, MEMORY, MEMORY).map_err(to_io)?;
    let cpu = TIMEOUT.as_secs();
    setrlimit(Resource::RLIMIT_CPU, cpu, cpu).map_err(to_io)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(to_io)?;
    Ok(())
}

/// Reads the pipe to its end, or fails at the deadline.
fn read_all(pipe: OwnedFd, deadline: Instant) -> Result<String, String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut file = File::from(pipe);
    let mut buf = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "the verifier did not answer within {} s",
                TIMEOUT.as_secs()
            ));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("reading the verdict: {e}")),
        }
        let mut chunk = [0u8; 4096];
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if buf.len() + n <= MAX_VERDICT => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err("the verifier's answer is too long".into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the verdict: {e}")),
        }
    }
    String::from_utf8(buf).map_err(|_| "the verifier's answer is not text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ecl() -> Ecl {
        Ecl {
            activated: true,
            keyring: Some("/k".into()),
            ..Ecl::default()
        }
    }

    #[test]
    fn a_file_that_is_no_image_is_denied_by_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sif");
        std::fs::write(&p, b"not a SIF").unwrap();
        let f = File::open(&p).unwrap();
        let v = verify(&f, dir.path(), &ecl(), &TrustFiles::default(), TIMEOUT).unwrap();
        assert!(!v.allowed, "{v:?}");
    }

    /// The dropped child validates the certificates root read and admits
    /// an image signed by a listed one; another PKI's image is denied.
    #[test]
    fn the_child_judges_certificate_signatures() {
        use crate::ecl_check::certificate_tests::Pki;
        use slurm_conf::ecl::Mode;
        let pki = Pki::new();
        let (ecl, files) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
        let dir = Path::new("/images");
        let v = verify(&pki.image("leaf"), dir, &ecl, &files, TIMEOUT).unwrap();
        assert!(
            v.allowed && v.reason.contains("listed certificate"),
            "{v:?}"
        );
        let v = verify(&pki.image("other-leaf"), dir, &ecl, &files, TIMEOUT).unwrap();
        assert!(!v.allowed, "{v:?}");
    }

    /// What the verifier is once dropped: nobody (when started by root),
    /// no capabilities, no-new-privileges, non-dumpable, bounded.
    #[test]
    fn the_verifier_has_nothing() {
        let root = nix::unistd::geteuid().is_root();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let pid = match syscall::fork_single_threaded().unwrap() {
            Forked::Child => {
                let ok = drop_to_nobody().is_ok();
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let dumpable = nix::sys::prctl::get_dumpable().unwrap_or(true);
                let mut out = File::from(w);
                let _ = write!(out, "ok={ok} dumpable={dumpable}\n{status}");
                std::process::exit(0)
            }
            Forked::Parent(pid) => pid,
        };
        drop(w);
        let text = read_all(r, Instant::now() + Duration::from_secs(10)).unwrap();
        waitpid(pid, None).unwrap();
        assert!(text.starts_with("ok=true dumpable=false"), "{text}");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        };
        assert_eq!(field("NoNewPrivs"), "1");
        for caps in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
            assert_eq!(field(caps), "0000000000000000", "{caps}");
        }
        if root {
            assert_eq!(field("Uid"), "65534 65534 65534 65534");
            assert_eq!(field("Gid"), "65534 65534 65534 65534");
            assert_eq!(field("Groups"), "");
        }
    }

    #[test]
    fn silence_is_a_denial() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let t = Instant::now();
        let e = read_all(r, Instant::now() + Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(w);
    }
}
