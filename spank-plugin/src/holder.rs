//! Starting the step's holder and reading its answer: the plugin's side of
//! `slurm_conf::protocol`.
//!
//! The holder is started by std's Command (fork+exec: no Rust code runs
//! between them) with a cleared environment. The request goes to its
//! standard input, a socket written with MSG_NOSIGNAL (a holder that dies
//! early must not SIGPIPE slurmstepd). Its standard output carries the
//! report; its standard error diagnostics, kept for `--sif-verbose` and
//! for a holder that ends without a report.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use slurm_conf::protocol::{EnvChange, Outcome, Report, Request};

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
                && !registry
                && std::fs::symlink_metadata(&lean).is_ok() =>
        {
            trusted(&lean)?;
            Ok(lean)
        }
        _ => Ok(launcher.to_owned()),
    }
}

/// Starts `launcher slurm-hold`, hands it `request` and waits up to
/// `timeout` for its report.
pub fn start(
    launcher: &Path,
    request: &Request,
    cwd: &str,
    timeout: Duration,
) -> Result<Started, PluginError> {
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|source| PluginError::Spawn {
            launcher: launcher.to_owned(),
            source,
        })?;
    let mut command = Command::new(launcher);
    command
        .arg("slurm-hold")
        .arg(format!("--slurm-step={}", request.step))
        .arg(&request.image)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", holder_path(std::env::current_exe().ok().as_deref()));
    if request.ecl_config.is_some() {
        as_root_for(&mut command);
    }
    let mut child = command
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PluginError::Spawn {
            launcher: launcher.to_owned(),
            source,
        })?;
    let pidfd = crate::ffi::pidfd::open(child.id()).ok();
    let bytes = request.encode();
    let sender = std::thread::spawn(move || send_all(&ours, &bytes));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let mut reader = Reader::default();
    match reader.wait_report(&stdout, &stderr, Instant::now() + timeout) {
        Ok(env) => {
            reader.drain_ready(&stderr);
            // The holder has read the whole request.
            let _ = sender.join();
            // Whatever the holder writes later goes nowhere, without ever
            // filling a pipe it would block on.
            if in_contained_hook() {
                discard_in_processes(stdout, stderr);
            } else {
                std::thread::spawn(move || discard(stdout, stderr));
            }
            Ok(Started {
                child,
                pidfd,
                env,
                log: reader.log,
            })
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            // The socket's other end is gone with the holder.
            let _ = sender.join();
            Err(match e {
                PluginError::NoReport(why) if why.is_empty() => {
                    reader.drain_ready(&stderr);
                    PluginError::NoReport(reader.last_words())
                }
                PluginError::Timeout(_) => PluginError::Timeout(timeout.as_secs()),
                e => e,
            })
        }
    }
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

/// [`discard`] by two `cat` processes instead of threads (see
/// [`in_contained_hook`]); they end when the holder does.
fn discard_in_processes(stdout: ChildStdout, stderr: ChildStderr) {
    for input in [Stdio::from(stdout), Stdio::from(stderr)] {
        let _ = Command::new("/bin/cat")
            .env_clear()
            .stdin(input)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

fn discard(mut stdout: ChildStdout, mut stderr: ChildStderr) {
    let t = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    let _ = t.join();
}

/// What has come from the holder so far.
#[derive(Default)]
struct Reader {
    out: Vec<u8>,
    err: Vec<u8>,
    log: Vec<String>,
    out_closed: bool,
    err_closed: bool,
}

impl Reader {
    /// Reads both pipes until the report line, the holder's end or the deadline.
    fn wait_report(
        &mut self,
        stdout: &ChildStdout,
        stderr: &ChildStderr,
        deadline: Instant,
    ) -> Result<Vec<EnvChange>, PluginError> {
        loop {
            if let Some(end) = self.out.iter().position(|&b| b == b'\n') {
                return decode(&self.out[..end]);
            }
            if self.out_closed {
                return Err(PluginError::NoReport(String::new()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
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

    fn push_line(&mut self, line: String) {
        if line.trim().is_empty() {
            return;
        }
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

fn decode(line: &[u8]) -> Result<Vec<EnvChange>, PluginError> {
    let text = String::from_utf8_lossy(line);
    let report = Report::decode_line(&text)
        .map_err(|e| PluginError::NoReport(format!(" (it answered: {e})")))?;
    match report.outcome {
        Outcome::Ready { env } => Ok(env),
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
mod tests {
    use super::*;
    use slurm_conf::protocol::{Stage, VERSION};

    /// contain_spank: the holder's later output is drained by processes that
    /// outlive the hook (a holder writing 1 MB after ready never blocks), and
    /// a test process is not a contained hook.
    #[test]
    fn output_after_ready_is_drained_without_threads() {
        assert!(!in_contained_hook());
        let mut child = Command::new("/bin/sh")
            .args([
                "-c",
                "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        discard_in_processes(out, err);
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the writer blocked on a full pipe"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A slurmstepd under its own prefix puts that prefix's clients first;
    /// Debian's (/usr/sbin) and an unknown one leave the usual PATH.
    #[test]
    fn the_holder_path_leads_to_the_running_slurms_client() {
        let usual = "/usr/local/bin:/usr/bin:/bin";
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        std::fs::write(prefix.join("bin/srun"), "").unwrap();
        assert_eq!(
            holder_path(Some(&prefix.join("sbin/slurmstepd"))),
            format!("{}:{usual}", prefix.join("bin").display())
        );
        assert_eq!(
            holder_path(Some(&prefix.join("sbin/x/slurmstepd"))),
            usual,
            "no srun next to it"
        );
        assert_eq!(holder_path(None), usual);
        if Path::new("/usr/bin/srun").is_file() {
            assert_eq!(holder_path(Some(Path::new("/usr/sbin/slurmstepd"))), usual);
        }
    }

    /// The lean holder beside the launcher for a local image without an
    /// ECL, once trusted; the launcher for the ECL's path, a docker://
    /// image, or where the lean holder is missing; an untrusted lean holder
    /// is not run, and fails the step as an untrusted launcher does.
    #[test]
    fn the_lean_holder_serves_local_images_without_an_ecl() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::fake::scratch();
        let launcher = dir.path().join("sifrun");
        let lean = dir.path().join(LEAN_HOLDER);
        std::fs::write(&launcher, "").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let trusted = |p: &Path| {
            slurm_conf::trusted::check_file(p, me).map_err(|source| PluginError::Untrusted {
                key: "launcher",
                source,
            })
        };
        let local = Request {
            image: "/i.sif".into(),
            ..Request::default()
        };
        let ecl = Request {
            ecl_config: Some("/etc/sifrun/sifrun.toml".into()),
            ns_dir: Some("/run/sifrun/ns".into()),
            ..local.clone()
        };
        let docker = Request {
            image: "docker://alpine:3".into(),
            ..local.clone()
        };
        // An older install: no lean holder, the launcher with no error.
        assert_eq!(program(&launcher, &local, &trusted).unwrap(), launcher);
        std::fs::write(&lean, "").unwrap();
        std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(program(&launcher, &local, &trusted).unwrap(), lean);
        assert_eq!(program(&launcher, &ecl, &trusted).unwrap(), launcher);
        assert_eq!(program(&launcher, &docker, &trusted).unwrap(), launcher);
        std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = program(&launcher, &local, &trusted).unwrap_err();
        assert!(e.to_string().contains("lets others write it"), "{e}");
        // The ECL's path never looks at it.
        assert_eq!(program(&launcher, &ecl, &trusted).unwrap(), launcher);
    }

    /// Runs `script` as the holder: the launcher is /bin/sh, which takes
    /// the `slurm-hold` argument as the script to run, in `dir`.
    fn hold(script: &str, timeout: Duration) -> Result<Started, PluginError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("slurm-hold"), script).unwrap();
        let request = Request {
            version: VERSION,
            step: "7.0".into(),
            image: "/i.sif".into(),
            job_env: vec![("B".into(), "two words\nand a line".into())],
            ..Request::default()
        };
        start(
            Path::new("/bin/sh"),
            &request,
            dir.path().to_str().unwrap(),
            timeout,
        )
    }

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_ready_report_carries_the_environment_and_the_phases() {
        let ready = Report::ready(vec![
            EnvChange::Set("X".into(), "y z".into()),
            EnvChange::Unset("A".into()),
        ])
        .encode_line();
        // The script sees the request on stdin and its own command line.
        let script = format!(
            "req=$(cat)\n\
             case \"$req\" in *'\"step\":\"7.0\"'*'\"two words\\nand a line\"'*) ;; *) echo \"bad $req\" >&2; exit 9 ;; esac\n\
             [ \"$1 $2\" = '--slurm-step=7.0 /i.sif' ] || exit 8\n\
             echo 'sifrun: image served in 3.0 ms' >&2\n\
             printf '%s' '{ready}'\n\
             sleep 0.2\n"
        );
        let started = hold(&script, T).unwrap();
        assert_eq!(
            started.env,
            [
                EnvChange::Set("X".into(), "y z".into()),
                EnvChange::Unset("A".into())
            ]
        );
        assert_eq!(started.log, ["sifrun: image served in 3.0 ms"]);
    }

    #[test]
    fn failures_come_back_typed() {
        let failed = Report::failed(Stage::Ecl, "sifrun: ECL: /i.sif: denied").encode_line();
        let e = hold(&format!("cat >/dev/null; printf '%s' '{failed}'"), T).unwrap_err();
        assert!(
            matches!(&e, PluginError::Holder { stage: Stage::Ecl, message } if message == "ECL: /i.sif: denied"),
            "{e:?}"
        );
        let missing = start(
            Path::new("/nonexistent/sifrun"),
            &Request::default(),
            "/",
            T,
        );
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("cannot start the launcher /nonexistent/sifrun")
        );
        let quiet = hold("exit 1", T).unwrap_err();
        assert_eq!(
            quiet.to_string(),
            "the container launcher ended without a report"
        );
        let crashed = hold("echo 'thread main panicked' >&2; exit 101", T).unwrap_err();
        assert_eq!(
            crashed.to_string(),
            "the container launcher ended without a report: thread main panicked"
        );
        let garbage = hold("echo ready", T).unwrap_err();
        assert!(
            garbage
                .to_string()
                .contains("(it answered: malformed report"),
            "{garbage}"
        );
        let slow = hold("sleep 5", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(slow, PluginError::Timeout(0)), "{slow:?}");
    }
}
