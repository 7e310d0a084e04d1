//! Root's `sifrun cache … --site DIR`: the cache owner's work (which reads
//! what the cache's account wrote, and for `cache add docker://…` decodes
//! a registry's bytes) runs in a child that has no terminal. The child
//! starts a session of its own (no controlling terminal, so no `TIOCSTI`
//! into root's), reads `/dev/null`, and writes into pipes; root's process
//! copies those lines to its own stdout and stderr without their control
//! characters (no terminal escapes), and exits as the child did.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};

use crate::syscall::{self, Forked, to_io};

/// The longest piece of a line copied at once (a longer one is copied in
/// pieces: the parent's memory does not depend on the child).
const MAX_LINE: u64 = 64 << 10;

/// How the child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this status.
    Exited(i32),
    /// This signal killed it (the cache's account may send it one).
    Killed(Signal),
}

impl Ended {
    /// The exit status a shell reports for it (128 + the signal).
    pub fn code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Killed(sig) => 128 + sig as i32,
        }
    }
}

/// Runs `work` in a child without a terminal (see the module) and returns
/// how it ended, once its stdout and stderr, control characters removed,
/// are copied into `out` and `err`; or, once it ended, the error writing
/// `out` gave (a closed pipe: the child's next write fails too). The
/// caller has no other thread.
pub fn run_detached<O, E>(work: impl FnOnce() -> i32, out: &mut O, err: &mut E) -> io::Result<Ended>
where
    O: Write + Send,
    E: Write,
{
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(to_io)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(to_io)?;
    // Nothing buffered is written twice.
    io::stdout().flush()?;
    io::stderr().flush()?;
    let parent = nix::unistd::getpid();
    let pid = match syscall::fork_single_threaded()? {
        Forked::Child => {
            drop((out_r, err_r));
            std::process::exit(child(parent, out_w, err_w, work))
        }
        Forked::Parent(pid) => pid,
    };
    drop((out_w, err_w));
    let copied = std::thread::scope(|s| {
        let copier = s.spawn(move || copy(File::from(out_r), out));
        let _ = copy(File::from(err_r), err);
        copier.join().unwrap_or(Ok(()))
    });
    let ended = match waitpid(pid, None).map_err(to_io)? {
        WaitStatus::Exited(_, code) => Ended::Exited(code),
        WaitStatus::Signaled(_, sig, _) => Ended::Killed(sig),
        other => return Err(io::Error::other(format!("the cache's process: {other:?}"))),
    };
    copied.map(|()| ended)
}

/// The child: killed with its parent, a session of its own, stdin
/// `/dev/null`, stdout and stderr the pipes, every other descriptor
/// closed on exec, working directory `/`; then `work`.
fn child(parent: nix::unistd::Pid, out: OwnedFd, err: OwnedFd, work: impl FnOnce() -> i32) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    if nix::unistd::getppid() != parent {
        return 125;
    }
    let set_up = || -> io::Result<()> {
        nix::unistd::setsid().map_err(to_io)?;
        let null = File::open("/dev/null")?;
        nix::unistd::dup2_stdin(&null).map_err(to_io)?;
        nix::unistd::dup2_stdout(&out).map_err(to_io)?;
        nix::unistd::dup2_stderr(&err).map_err(to_io)?;
        // Nothing of root's but 0-2 reaches a program the work starts (it
        // runs as the cache's account, who may trace it), nor its
        // working directory.
        syscall::cloexec_from(3)?;
        nix::unistd::chdir("/").map_err(to_io)
    };
    if let Err(e) = set_up() {
        let _ = writeln!(File::from(err), "sifrun: detaching from the terminal: {e}");
        return 125;
    }
    drop((out, err));
    let code = work();
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    code
}

/// Copies `from`'s lines into `to` without control characters (tabs and
/// line ends stay), until `from` ends or `to` fails (then `from` is closed:
/// the child's next write fails, and `to`'s error is returned).
fn copy(from: impl Read, to: &mut dyn Write) -> io::Result<()> {
    let mut from = BufReader::new(from);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match from.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        to.write_all(printable_line(&buf).as_bytes())?;
        to.flush()?;
    }
}

/// `bytes` as text without control characters but tabs and line ends
/// (invalid UTF-8 becomes U+FFFD, so no lone 8-bit control byte either),
/// nor invisible format and separator characters ([`super::gc::hidden`]:
/// bidirectional overrides, zero-width spaces, U+2028/U+2029).
pub(crate) fn printable_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .filter(|&c| c == '\n' || c == '\t' || !(c.is_control() || super::gc::hidden(c)))
        .collect()
}

#[cfg(test)]
mod tests;
