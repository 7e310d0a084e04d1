//! The holder of a Slurm step's container (`sifrun slurm-hold`): it sets
//! the root up, reports the tasks' environment and `ready` on standard
//! output, and waits for SIGTERM; the step's tasks join its namespaces.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};
use slurm_conf::protocol::{Report, Stage};

use crate::apply::apply;
use crate::command::{ENV_PRELUDE, direct_env};
use crate::env::ContainerEnv;
use crate::plan::Plan;
use crate::syscall::{self, Linux};

pub use slurm_conf::slurm::DEFAULT_SLURM_CONF;

/// What a Slurm step's holder needs beyond the options.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The job's environment, which the tasks' is computed from.
    pub job_env: Vec<(String, String)>,
    /// Make the host's Slurm client usable inside (a batch step's script
    /// starts steps with srun): see [`crate::slurm_client`].
    pub slurm_client: bool,
    /// The image, already open (and checked against the ECL).
    pub image_file: Option<Arc<fs::File>>,
    /// The slurm.conf slurmstepd uses (its `SLURM_CONF`): slurmd's spool
    /// directory (for PMIx) and Slurm's service accounts come from it, and
    /// the Slurm client's plugstack.conf is found next to it.
    pub slurm_conf: PathBuf,
    /// Log each set-up phase with its duration on standard error (the
    /// caller sets the log filter from it; see `sifrun -v`).
    pub verbose: bool,
    /// The step's command (argv[0]), made ready ahead of the tasks' exec
    /// (see `launch::ahead`).
    pub command: Option<String>,
    /// This node's name as slurmstepd has it (`%n` in a per-node
    /// `SlurmdSpoolDir`); `None`: the host name stands in.
    pub node_name: Option<String>,
}

impl Default for Hold {
    fn default() -> Hold {
        Hold {
            job_env: Vec::new(),
            slurm_client: false,
            image_file: None,
            slurm_conf: PathBuf::from(DEFAULT_SLURM_CONF),
            verbose: false,
            command: None,
            node_name: None,
        }
    }
}

/// What the holder's container process needs.
pub(crate) struct Holding<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) env: &'a ContainerEnv,
    /// The image's shell computes the environment (it has scripts).
    pub(crate) through_shell: bool,
    pub(crate) job_env: &'a [(String, String)],
    pub(crate) slurm_client: bool,
    /// Where the holder's output goes once it reported (see [`Quiet`]).
    pub(crate) quiet: Option<&'a Quiet>,
    /// The step's command, made ready for the tasks once ready is reported.
    pub(crate) warm: Option<&'a crate::launch::ahead::Warm>,
}

/// After its `ready` report the holder writes nothing more where the
/// plugin reads: the plugin keeps those pipes open without reading them
/// (no thread or process of its own drains them), so the container process
/// and then, told through `reported`, the server point their standard
/// output and error at /dev/null. Both descriptors are close-on-exec.
pub(crate) struct Quiet {
    /// /dev/null, opened before the container's root changed.
    pub(crate) null: OwnedFd,
    /// Written (one byte) by the container process once it reported ready.
    pub(crate) reported: OwnedFd,
    /// The server's end: one byte, then the server goes quiet too.
    pub(crate) heard: OwnedFd,
}

impl Quiet {
    /// /dev/null and the pipe.
    pub(crate) fn new() -> io::Result<Quiet> {
        let null = fs::OpenOptions::new().write(true).open("/dev/null")?.into();
        let (heard, reported) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(syscall::to_io)?;
        Ok(Quiet {
            null,
            reported,
            heard,
        })
    }

    /// Standard output and error to /dev/null.
    fn silence(null: &OwnedFd) {
        let _ = nix::unistd::dup2_stdout(null);
        let _ = nix::unistd::dup2_stderr(null);
    }

    /// The server's side: the step's command decompressed from now on, on
    /// idle CPU, unless the container process reads it ahead into the page
    /// cache (see `launch::ahead`), and a thread that waits for the
    /// container process's word, then silences the server and puts the
    /// command's blocks into the server's cache (it never touches the
    /// mount, which is the server's root by then). Nothing comes when the
    /// container process ended first (its failure is still to be read by
    /// the plugin).
    pub(crate) fn follow(
        self,
        warm: Option<(crate::launch::ahead::Warm, Arc<crate::squash::Squash>)>,
    ) {
        let Quiet {
            null,
            heard,
            reported,
        } = self;
        // Only the container process writes: once it ends without a word,
        // the thread reads an end of file.
        drop(reported);
        // The program is decompressed from now on, while the container is
        // set up; stored once it is ready.
        let warm = warm.map(|(w, squash)| {
            let pieces = w.decompress(squash.clone());
            (w, pieces, squash)
        });
        let _ = std::thread::Builder::new()
            .name("sifrun-quiet".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                if matches!(nix::unistd::read(&heard, &mut byte), Ok(1)) {
                    Quiet::silence(&null);
                    if let Some((w, pieces, squash)) = warm {
                        w.deliver(pieces, &squash);
                    }
                }
            });
    }
}

/// The holder's container process: set up the root, report the tasks'
/// environment and ready, wait for SIGTERM. Returns the exit status.
pub(crate) fn hold(h: &Holding<'_>, sys: Linux, signals: &SigSet) -> i32 {
    // The holder's server is our parent: never outlive it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let started = std::time::Instant::now();
    if let Err(e) = apply(h.plan, &sys) {
        return failed(
            Stage::Setup,
            format!("sifrun: setting up the container: {e}"),
        );
    }
    drop(sys);
    crate::launch::phase_done("apply", started);
    let ready = match ready_report(h, None) {
        Ok(r) => r,
        Err(failed) => {
            let _ = failed.write_to(&mut io::stdout());
            return 255;
        }
    };
    // Tasks (same user) open /proc/PID/ns/*: that needs a dumpable target.
    let _ = nix::sys::prctl::set_dumpable(true);
    if ready.write_to(&mut io::stdout()).is_err() {
        return 255;
    }
    tracing::info!("holding the container for the step's tasks");
    if let Some(q) = h.quiet {
        Quiet::silence(&q.null);
        let _ = nix::unistd::write(&q.reported, b"r");
    }
    if let Some(w) = h.warm {
        w.start_in_container();
    }
    loop {
        match syscall::wait_signal(signals) {
            Ok((libc::SIGCHLD, _)) => {}
            Ok(_) => return 0,
            Err(_) => return 255,
        }
    }
}

/// The tasks' environment, as the `ready` report: the image's scripts run
/// by its shell (as `as_user`, uid and gid, when given: the privileged
/// path's root never runs them), the user's settings, the Slurm client's
/// PATH; or the failure report.
pub(crate) fn ready_report(h: &Holding<'_>, as_user: Option<(u32, u32)>) -> Result<Report, Report> {
    let started = std::time::Instant::now();
    let task_env = if h.through_shell {
        image_env(h.env, as_user).map_err(|e| {
            Report::failed(
                Stage::Environment,
                format!("sifrun: reading the image's environment scripts: {e}"),
            )
        })?
    } else {
        direct_env(h.env)
    };
    let task_env = with_client_path(task_env, h.slurm_client);
    crate::launch::phase_done("task environment", started);
    Ok(Report::ready(slurm_conf::task_env::delta(
        h.job_env, &task_env,
    )))
}

/// The Slurm client's programs first on the tasks' PATH.
fn with_client_path(mut env: Vec<(String, String)>, slurm_client: bool) -> Vec<(String, String)> {
    if slurm_client {
        let bin = crate::slurm_client::BIN_DIR;
        match env.iter_mut().find(|(k, _)| k == "PATH") {
            Some((_, v)) => *v = format!("{bin}:{v}"),
            None => env.push(("PATH".into(), format!("{bin}:{}", crate::env::DEFAULT_PATH))),
        }
    }
    env
}

/// A failure at `stage`, reported to the plugin (see `slurm_conf::protocol`).
fn failed(stage: Stage, message: String) -> i32 {
    let _ = Report::failed(stage, message).write_to(&mut io::stdout());
    255
}

/// The environment the image's `/.singularity.d/env` scripts and the user's
/// settings make from `env.base`: the image's shell sources them, then
/// execs a shell that waits, whose /proc environ is read.
fn image_env(env: &ContainerEnv, as_user: Option<(u32, u32)>) -> io::Result<Vec<(String, String)>> {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    const MARK: &str = "sifrun-environment-ready";
    let script = format!("{ENV_PRELUDE}exec /bin/sh -c 'echo {MARK}; read x'\n");
    let mut cmd = Command::new("/bin/sh");
    if let Some((uid, gid)) = as_user {
        // std drops the supplementary groups, then sets gid and uid.
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .arg("-c")
        .arg(script)
        .env_clear()
        .envs(env.base.iter())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut marked = false;
    for line in BufReader::new(stdout).lines() {
        if line?.trim() == MARK {
            marked = true;
            break;
        }
    }
    let environ = if marked {
        fs::read(format!("/proc/{}/environ", child.id()))
    } else {
        Err(io::Error::other("the image's shell ended early"))
    };
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    Ok(environ?
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn the_client_comes_first_on_path() {
        let env = vec![kv("PATH", "/bin"), kv("A", "1")];
        assert_eq!(with_client_path(env.clone(), false), env);
        assert_eq!(
            with_client_path(env, true)[0],
            kv("PATH", "/.sifrun/slurm/bin:/bin")
        );
        let none = with_client_path(vec![], true);
        assert_eq!(
            none,
            [kv(
                "PATH",
                &format!("/.sifrun/slurm/bin:{}", crate::env::DEFAULT_PATH)
            )]
        );
    }

    #[test]
    fn the_default_slurm_conf_is_slurms() {
        assert_eq!(
            Hold::default().slurm_conf,
            PathBuf::from(DEFAULT_SLURM_CONF)
        );
    }
}
