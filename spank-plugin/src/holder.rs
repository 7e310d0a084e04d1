//! Starting the step's holder and reading its answer: the plugin's side of
//! `slurm_conf::protocol`.
//!
//! The holder is started by std's Command with a cleared environment
//! (fork+exec; between them, only when root starts it early, the raw
//! system calls of `ffi::spawn::become_user`). The request goes to its
//! standard input, a socket written with MSG_NOSIGNAL (a holder that dies
//! early must not SIGPIPE slurmstepd). Its standard output carries the
//! report; its standard error diagnostics, kept for `--sif-verbose` and
//! for a holder that ends without a report.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use slurm_conf::protocol::{EnvChange, Message, Outcome, Progress, Request};

use crate::error::PluginError;

/// The most diagnostic lines kept from a holder.
const MAX_LOG_LINES: usize = 200;

/// A holder that reported ready.
#[derive(Debug)]
pub struct Started {
    /// The holder process.
    pub child: Child,
    /// A descriptor for it, taken at once (`None` before Linux 5.3).
    pub pidfd: Option<OwnedFd>,
    /// The changes the image makes to each task's environment.
    pub env: Vec<EnvChange>,
    /// What the holder wrote on standard error until then.
    pub log: Vec<String>,
    /// Its standard output and error, open until the step ends.
    pub output: Output,
}

/// The holder's PATH: the client directory of the Slurm whose slurmstepd
/// (`exe`) loads the plugin (`<prefix>/sbin/slurmstepd` -> `<prefix>/bin`)
/// first when it is not a usual one, so that a batch script in the image gets
/// the cluster's own srun (issue 13; the launcher looks the client up there).
fn holder_path(exe: Option<&Path>) -> String {
    const USUAL: &str = "/usr/local/bin:/usr/bin:/bin";
    exe.and_then(|e| Some(e.parent()?.parent()?.join("bin")))
        .filter(|d| d.join("srun").is_file())
        .and_then(|d| d.to_str().map(str::to_owned))
        .filter(|d| !USUAL.split(':').any(|u| u == d))
        .map_or_else(|| USUAL.to_owned(), |d| format!("{d}:{USUAL}"))
}

/// The lean holder's file name: `make install` and the Debian package put
/// it beside `sifrun`.
pub const LEAN_HOLDER: &str = "sifrun-hold";

/// The program that holds `request`'s container: the lean [`LEAN_HOLDER`]
/// beside `launcher` for a local image without an ECL (it has neither
/// signature verification nor a registry client, so it starts faster), once
/// it passes `trusted` (the launcher's checks); `launcher` itself for the
/// ECL's path (it verifies), for a `docker://` image and where there is no
/// lean holder (an older install).
pub fn program(
    launcher: &Path,
    request: &Request,
    trusted: &dyn Fn(&Path) -> Result<(), PluginError>,
) -> Result<std::path::PathBuf, PluginError> {
    let registry = request
        .image
        .to_str()
        .is_none_or(crate::image_pin::is_registry_image);
    let lean = launcher.parent().map(|d| d.join(LEAN_HOLDER));
    match lean {
        Some(lean)
            if request.ecl_config.is_none()
                && (!registry || cached_in_users_cache(request))
                && std::fs::symlink_metadata(&lean).is_ok() =>
        {
            trusted(&lean)?;
            Ok(lean)
        }
        _ => Ok(launcher.to_owned()),
    }
}

/// Whether `request`'s `docker://` image is the job's pinned digest and
/// the user's cache has its entry (looked at as the user: user_init's
/// effective uid), with no site cache configured (whose entries come
/// first and whose uses only the full holder records): the lean holder
/// serves it then, as it does a local SIF, with no registry code.
fn cached_in_users_cache(request: &Request) -> bool {
    request.site_cache.is_none()
        && request
            .image
            .to_str()
            .and_then(|image| slurm_conf::cached_pin::entry_path(image, &request.job_env))
            .is_some_and(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
}

/// The job's user, whom a holder started by root (init_post_opt) becomes
/// in its child before exec, as slurmstepd makes the tasks that user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUser {
    /// The user's uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// The supplementary groups.
    pub groups: Vec<u32>,
}

/// Who starts the holder.
#[derive(Clone, Copy, Debug)]
pub enum StartAs<'a> {
    /// user_init: the holder keeps the hook's credentials (the user's
    /// effective uid) and enters the step's working directory.
    Hook,
    /// init_post_opt (root): the holder becomes `user` before exec and then
    /// enters the working directory, as that user; with `refuse_dir` (an
    /// image named by Slurm's `--container`), a directory there ends the
    /// start with `EISDIR` (an OCI bundle: Slurm's business, looked at as
    /// the user, never as root).
    Root {
        /// The job's user.
        user: &'a JobUser,
        /// The image path that must not be a directory.
        refuse_dir: Option<&'a Path>,
    },
}

/// A holder started, whose report is still to come.
#[derive(Debug)]
pub struct Spawned {
    child: Child,
    pidfd: Option<OwnedFd>,
    output: Output,
    /// The part of the request that did not fit the socket at once.
    sender: Option<std::thread::JoinHandle<()>>,
    /// When it was started: the set-up timeout counts from here.
    pub started: Instant,
}

/// The holder's standard output and error, kept open (never read again)
/// until the step ends: after its report the holder writes nothing more
/// there (it points them at /dev/null), so no thread of slurmstepd's has
/// to drain them. In a contained hook (see [`in_contained_hook`]) they are
/// this short-lived process's descriptors, not slurmstepd's: they go to
/// [`Output::drain_in_processes`] instead.
#[derive(Debug)]
pub struct Output {
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Output {
    /// Hands both pipes to two `cat` processes that outlive the hook and
    /// end with the holder (whatever the holder still writes, in the
    /// moment before it goes quiet, never meets a closed pipe).
    pub fn drain_in_processes(self) {
        for input in [Stdio::from(self.stdout), Stdio::from(self.stderr)] {
            let _ = Command::new("/bin/cat")
                .env_clear()
                .stdin(input)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
    }
}

/// Starts `launcher slurm-hold` and hands it `request`, without waiting for
/// its report ([`Spawned::wait`]). The request is written at once when the
/// socket takes it whole (no thread in slurmstepd); a larger one by a thread.
pub fn spawn(
    launcher: &Path,
    request: &Request,
    cwd: &str,
    who: StartAs<'_>,
) -> Result<Spawned, PluginError> {
    let spawn_error = |source| PluginError::Spawn {
        launcher: launcher.to_owned(),
        source,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_error)?;
    let mut command = Command::new(launcher);
    command
        .arg("slurm-hold")
        .arg(format!("--slurm-step={}", request.step))
        .arg(&request.image)
        .env_clear()
        .env("PATH", holder_path(std::env::current_exe().ok().as_deref()));
    match who {
        StartAs::Hook => {
            command.current_dir(cwd);
        }
        StartAs::Root { user, refuse_dir } => {
            crate::ffi::spawn::become_user(&mut command, user, Path::new(cwd), refuse_dir)
                .map_err(spawn_error)?;
        }
    }
    if request.ecl_config.is_some() {
        as_root_for(&mut command);
    }
    let mut child = command
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let started = Instant::now();
    let pidfd = crate::ffi::pidfd::open(child.id()).ok();
    let sender = send_now(ours, request.encode());
    let output = Output {
        stdout: child.stdout.take().expect("piped"),
        stderr: child.stderr.take().expect("piped"),
    };
    Ok(Spawned {
        child,
        pidfd,
        output,
        sender,
        started,
    })
}

impl Spawned {
    /// Waits for the holder's report, up to `timeout` from its start or
    /// from its last progress line (a conversion of a `docker://` image may
    /// take minutes). A holder that fails is killed and reaped.
    pub fn wait(mut self, timeout: Duration) -> Result<Started, PluginError> {
        let mut reader = Reader::default();
        let (stdout, stderr) = (&self.output.stdout, &self.output.stderr);
        match reader.wait_report(stdout, stderr, self.started, timeout) {
            Ok(env) => {
                reader.drain_ready(stderr);
                // The holder has read the whole request.
                if let Some(sender) = self.sender.take() {
                    let _ = sender.join();
                }
                Ok(Started {
                    child: self.child,
                    pidfd: self.pidfd,
                    env,
                    log: reader.log,
                    output: self.output,
                })
            }
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // The socket's other end is gone with the holder.
                if let Some(sender) = self.sender.take() {
                    let _ = sender.join();
                }
                Err(match e {
                    PluginError::NoReport(why) if why.is_empty() => {
                        reader.drain_ready(stderr);
                        PluginError::NoReport(reader.last_words())
                    }
                    PluginError::Timeout(_) => PluginError::Timeout(timeout.as_secs()),
                    e => e,
                })
            }
        }
    }

    /// Ends a holder whose report is no longer wanted (the step ended
    /// first, or it has to start again elsewhere): SIGKILL through the
    /// descriptor taken at spawn (the plugin's own unreaped child
    /// otherwise), then reaped.
    pub fn abandon(mut self) {
        match &self.pidfd {
            Some(fd) => {
                use nix::sys::wait::{Id, WaitPidFlag, waitid};
                let _ = crate::ffi::pidfd::send_signal(fd, nix::sys::signal::Signal::SIGKILL);
                // Bounded, and reaped only if it is this process's child
                // (a contained hook's is not: slurmstepd reaps it).
                crate::remote::ended_within(fd, Duration::from_secs(5));
                let _ = waitid(
                    Id::PIDFd(fd.as_fd()),
                    WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
                );
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.try_wait();
            }
        }
        if in_contained_hook() {
            self.output.drain_in_processes();
        }
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
    }
}

/// Writes what the socket takes now; the rest (a very large job
/// environment), if any, from a thread. `None` once it is all written (or
/// the holder is gone: it will not report).
fn send_now(
    sock: std::os::unix::net::UnixStream,
    bytes: Vec<u8>,
) -> Option<std::thread::JoinHandle<()>> {
    use nix::sys::socket::{MsgFlags, send};
    let mut sent = 0;
    while sent < bytes.len() {
        match send(
            sock.as_raw_fd(),
            &bytes[sent..],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => sent += n,
            Err(nix::Error::EINTR) => {}
            Err(nix::Error::EAGAIN) => {
                return Some(std::thread::spawn(move || send_all(&sock, &bytes[sent..])));
            }
            Err(_) => return None,
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
    None
}

/// An ECL step's holder starts as root for good (issue 12 item 4):
/// slurmstepd's user_init has root's real uid and the user's effective
/// uid, and exec would make the user's uid the saved one, letting the user
/// signal the holder until it took root back. `setuid(0)` in the child
/// (real uid 0 allows it) makes exec keep uid 0 everywhere; the user's
/// identity, which the holder's children take, goes in
/// [`slurm_conf::protocol::HOLD_USER_ENV`].
fn as_root_for(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let groups: Vec<u32> = nix::unistd::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(nix::unistd::Gid::as_raw)
        .collect();
    let user = slurm_conf::protocol::encode_hold_user(
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
        &groups,
    );
    command
        .env(slurm_conf::protocol::HOLD_USER_ENV, user)
        .uid(0);
}

fn send_all(sock: &std::os::unix::net::UnixStream, bytes: &[u8]) {
    use nix::sys::socket::{MsgFlags, send};
    let mut rest = bytes;
    while !rest.is_empty() {
        match send(sock.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => rest = &rest[n..],
            Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

/// Whether this hook runs in the short-lived clone(CLONE_VM) child that
/// `SlurmdParameters=contain_spank` (Slurm 24.05+) makes for user_init: a
/// child of slurmstepd running slurmstepd's program (same `comm`; without
/// it, slurmstepd's parent is slurmd or init). A thread started there dies
/// with that child, whatever it was doing, and stays in slurmstepd's thread
/// list (shared memory): slurmstepd's next setegid() then waits for it
/// forever (seen on 25.11). So the hook leaves no thread running there.
pub(crate) fn in_contained_hook() -> bool {
    let comm = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok();
    let me = comm("self");
    me.as_deref() == Some("slurmstepd\n")
        && me == comm(&std::os::unix::process::parent_id().to_string())
}

/// What has come from the holder so far.
#[derive(Default)]
struct Reader {
    out: Vec<u8>,
    err: Vec<u8>,
    log: Vec<String>,
    out_closed: bool,
    err_closed: bool,
    /// The phase of the progress line last logged (the next line of the
    /// same phase replaces it).
    progress_phase: Option<String>,
}

impl Reader {
    /// Reads both pipes until the report line, the holder's end or
    /// `timeout` without a line (from the start or the last progress).
    fn wait_report(
        &mut self,
        stdout: &ChildStdout,
        stderr: &ChildStderr,
        since: Instant,
        timeout: Duration,
    ) -> Result<Vec<EnvChange>, PluginError> {
        let mut deadline = since + timeout;
        loop {
            while let Some(end) = self.out.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.out.drain(..=end).collect();
                match decode(&line[..end])? {
                    Line::Progress(p) => {
                        deadline = Instant::now() + timeout;
                        self.progress(p);
                    }
                    Line::Ready(env) => return Ok(env),
                }
            }
            if self.out_closed {
                return Err(PluginError::NoReport(String::new()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // A report already there is read (the deadline counts from
                // init_post_opt for an early holder: slurmstepd's own
                // set-up may have used it up).
                if !self.out_closed
                    && self
                        .poll_once(stdout, stderr, PollTimeout::ZERO)
                        .unwrap_or(false)
                    && self.out.contains(&b'\n')
                {
                    continue;
                }
                return Err(PluginError::Timeout(0));
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            self.poll_once(stdout, stderr, PollTimeout::from(ms))
                .map_err(|e| PluginError::NoReport(format!(" (reading it: {e})")))?;
        }
    }

    /// One poll over the open pipes; reads what is there.
    fn poll_once(
        &mut self,
        stdout: &ChildStdout,
        stderr: &ChildStderr,
        timeout: PollTimeout,
    ) -> nix::Result<bool> {
        let mut fds = Vec::new();
        if !self.out_closed {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::POLLIN));
        }
        if !self.err_closed {
            fds.push(PollFd::new(stderr.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            return Ok(false);
        }
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(nix::Error::EINTR) => return Ok(true),
            Err(e) => return Err(e),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut i = 0;
        if !self.out_closed {
            if ready[i] {
                self.out_closed = read_some(stdout, &mut self.out);
            }
            i += 1;
        }
        if !self.err_closed && ready[i] {
            self.err_closed = read_some(stderr, &mut self.err);
            self.split_log();
        }
        Ok(true)
    }

    /// After the report: the diagnostics written before it are in the
    /// pipe already; take them without waiting.
    fn drain_ready(&mut self, stderr: &ChildStderr) {
        self.out_closed = true;
        for _ in 0..64 {
            if self.err_closed {
                break;
            }
            let mut fds = [PollFd::new(stderr.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                break;
            }
            self.err_closed = read_some(stderr, &mut self.err);
            self.split_log();
        }
        // A last line without its newline.
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.err)).into_owned();
        self.push_line(rest);
    }

    fn split_log(&mut self) {
        while let Some(end) = self.err.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.err.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            self.push_line(line);
        }
    }

    /// Logs a progress line (for `--sif-verbose`): one line per phase,
    /// the latest.
    fn progress(&mut self, p: Progress) {
        let line = format!("sifrun: {}: {}", p.phase, p.message);
        if self.progress_phase.as_deref() == Some(p.phase.as_str())
            && let Some(last) = self.log.last_mut()
        {
            *last = line;
            return;
        }
        self.push_line(line);
        self.progress_phase = Some(p.phase);
    }

    fn push_line(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
        self.progress_phase = None;
        if self.log.len() == MAX_LOG_LINES {
            self.log.remove(0);
        }
        self.log.push(line);
    }

    /// The holder's last diagnostic line, for a holder that ended without
    /// a report (a crash, a launcher from another release).
    fn last_words(&self) -> String {
        match self.log.last() {
            Some(l) => format!(": {}", l.trim()),
            None => String::new(),
        }
    }
}

/// Reads what a pipe has; returns whether it reached its end.
fn read_some(pipe: &impl AsFd, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match nix::unistd::read(pipe.as_fd(), &mut chunk) {
        Ok(0) => true,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            false
        }
        Err(nix::Error::EINTR | nix::Error::EAGAIN) => false,
        Err(_) => true,
    }
}

/// A line from the holder, read.
enum Line {
    Progress(Progress),
    Ready(Vec<EnvChange>),
}

fn decode(line: &[u8]) -> Result<Line, PluginError> {
    let text = String::from_utf8_lossy(line);
    let report = match Message::decode_line(&text)
        .map_err(|e| PluginError::NoReport(format!(" (it answered: {e})")))?
    {
        Message::Progress(p) => return Ok(Line::Progress(p)),
        Message::Report(r) => r,
    };
    match report.outcome {
        Outcome::Ready { env } => Ok(Line::Ready(env)),
        Outcome::Failed { stage, message } => Err(PluginError::Holder {
            stage,
            message: message
                .strip_prefix("sifrun: ")
                .unwrap_or(&message)
                .to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests;
