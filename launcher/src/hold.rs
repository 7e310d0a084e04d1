//! The holder of a Slurm step's container (`sifrun slurm-hold`): it sets
//! the root up, reports the tasks' environment and `ready` on standard
//! output, and waits for SIGTERM; the step's tasks join its namespaces.

use std::fs;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal};

use crate::apply::apply;
use crate::command::{ENV_PRELUDE, direct_env};
use crate::env::ContainerEnv;
use crate::plan::Plan;
use crate::syscall::{self, Linux};

/// Where Slurm's configuration is unless `SLURM_CONF` says otherwise.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

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
}

impl Default for Hold {
    fn default() -> Hold {
        Hold {
            job_env: Vec::new(),
            slurm_client: false,
            image_file: None,
            slurm_conf: PathBuf::from(DEFAULT_SLURM_CONF),
            verbose: false,
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
}

/// The holder's container process: set up the root, report the tasks'
/// environment and ready, wait for SIGTERM. Returns the exit status.
pub(crate) fn hold(h: &Holding<'_>, sys: Linux, signals: &SigSet) -> i32 {
    // The holder's server is our parent: never outlive it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let started = std::time::Instant::now();
    if let Err(e) = apply(h.plan, &sys) {
        let _ = writeln!(io::stderr(), "sifrun: setting up the container: {e}");
        return 255;
    }
    drop(sys);
    crate::launch::phase_done("apply", started);
    let started = std::time::Instant::now();
    let task_env = if h.through_shell {
        match image_env(h.env) {
            Ok(e) => e,
            Err(e) => {
                let _ = writeln!(
                    io::stderr(),
                    "sifrun: reading the image's environment scripts: {e}"
                );
                return 255;
            }
        }
    } else {
        direct_env(h.env)
    };
    let task_env = with_client_path(task_env, h.slurm_client);
    crate::launch::phase_done("task environment", started);
    // Tasks (same user) open /proc/PID/ns/*: that needs a dumpable target.
    let _ = nix::sys::prctl::set_dumpable(true);
    let mut out = io::stdout();
    if out
        .write_all(report(h.job_env, &task_env).as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        return 255;
    }
    tracing::info!("holding the container for the step's tasks");
    loop {
        match syscall::wait_signal(signals) {
            Ok((libc::SIGCHLD, _)) => {}
            Ok(_) => return 0,
            Err(_) => return 255,
        }
    }
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

/// The report on standard output: the changes from the job's environment
/// to the tasks', then `ready`.
fn report(job_env: &[(String, String)], task_env: &[(String, String)]) -> String {
    let mut report = String::new();
    for change in slurm_conf::holder::delta(job_env, task_env) {
        report.push_str(&change.encode());
        report.push('\n');
    }
    report.push_str(slurm_conf::holder::READY);
    report.push('\n');
    report
}

/// The environment the image's `/.singularity.d/env` scripts and the user's
/// settings make from `env.base`: the image's shell sources them, then
/// execs a shell that waits, whose /proc environ is read.
fn image_env(env: &ContainerEnv) -> io::Result<Vec<(String, String)>> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const MARK: &str = "sifrun-environment-ready";
    let script = format!("{ENV_PRELUDE}exec /bin/sh -c 'echo {MARK}; read x'\n");
    let mut child = Command::new("/bin/sh")
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
    fn the_report_is_the_delta_then_ready() {
        let job = vec![kv("A", "1"), kv("GONE", "x")];
        let task = vec![kv("A", "2"), kv("NEW", "y")];
        let r = report(&job, &task);
        assert!(
            r.ends_with(&format!("{}\n", slurm_conf::holder::READY)),
            "{r}"
        );
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.len(), 4, "{r}");
        assert_eq!(
            Hold::default().slurm_conf,
            PathBuf::from(DEFAULT_SLURM_CONF)
        );
    }
}
