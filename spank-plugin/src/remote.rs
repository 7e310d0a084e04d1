//! The remote context (slurmstepd): the step's container.
//!
//! * user_init (slurmstepd, real uid root, effective uid the user): start
//!   the holder ([`crate::holder`]) with the step's request; keep its
//!   report for the tasks.
//! * task_init (each task, as the user, just before exec): join the
//!   holder's user, then mount namespace, restore the working directory,
//!   set no-new-privileges, apply the image's environment. Any failure ends
//!   the task before it runs (see `ffi`).
//! * task_post_fork (slurmstepd, root): record the holder in the runtime
//!   directory, for the job epilog's sweep.
//! * exit (slurmstepd): stop the holder, drop the record.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use slurm_conf::protocol::EnvChange;

use crate::error::PluginError;
use crate::holder::{self, Started};
use crate::plugin::Plugin;
use crate::request;
use crate::spank::{Context, Spank};

/// The step's holder, as user_init left it.
#[derive(Debug)]
pub enum HolderState {
    /// Started by init_post_opt; user_init reads its report.
    Starting(Box<crate::start::Starting>),
    /// Running.
    Ready(Ready),
    /// No container for this step: every task fails with this.
    Failed(PluginError),
}

/// A running holder.
#[derive(Debug)]
pub struct Ready {
    /// The holder process (the plugin's child).
    pub child: std::process::Child,
    /// A descriptor for it taken at spawn: signals go through it.
    pub pidfd: Option<std::os::fd::OwnedFd>,
    /// Its start time (/proc), where there is no descriptor.
    pub start_time: Option<u64>,
    /// The changes the image makes to each task's environment.
    pub env: Vec<EnvChange>,
    /// The holder's diagnostics and the plugin's own timings, shown with
    /// `--sif-verbose`.
    pub log: Vec<String>,
    /// The ECL path: where the holder pinned the step's root-owned mount
    /// namespace (the holder itself has exited).
    pub ns: Option<std::path::PathBuf>,
    /// The ECL path, in a task: its working directory before it entered
    /// the namespace (task_init_privileged), restored as the user.
    pub task_cwd: Option<std::path::PathBuf>,
    /// Its death during the step was told (once per node).
    pub death_told: bool,
    /// Its standard output and error, open until it is stopped.
    pub output: Option<holder::Output>,
}

impl Ready {
    /// The holder's PID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Plugin {
    /// `slurm_spank_user_init`: the step's container holder, started here
    /// or, earlier, by init_post_opt ([`crate::start`]); waits for its report.
    pub fn user_init(&mut self, sp: &dyn Spank) -> Result<(), PluginError> {
        if sp.context() != Context::Remote
            || !self.args.wants_container()
            || self.unusable.is_some()
        {
            return Ok(());
        }
        let early = match self.holder.take() {
            Some(HolderState::Starting(s)) => Some(s),
            other => {
                self.holder = other;
                None
            }
        };
        if self.holder.is_some() {
            return Ok(());
        }
        let contained = holder::in_contained_hook();
        let started = match early {
            // contain_spank, which the early start did not expect: the
            // holder must see the job's namespaces, as this hook does.
            Some(s) if contained => {
                s.spawned.abandon();
                self.start_in_hook(sp)
            }
            Some(s) => Some((*s, self.devices.clone())),
            None => self.start_in_hook(sp),
        };
        let Some((starting, devices)) = started else {
            return Ok(());
        };
        let timeout = Duration::from_secs(self.settings.config.container.setup_timeout);
        let since = starting.spawned.started;
        let waiting = Instant::now();
        let state = match starting.spawned.wait(timeout) {
            Ok(Started {
                child,
                pidfd,
                env,
                mut log,
                output,
            }) => {
                let ms = since.elapsed().as_secs_f64() * 1e3;
                let name = starting.program;
                let when = if starting.early {
                    ", started early"
                } else {
                    ""
                };
                let waited = waiting.elapsed().as_secs_f64() * 1e3;
                sp.info(&format!(
                    "sifrun: container ready in {ms:.0} ms (holder {name}, pid {}{when}; user_init waited {waited:.1} ms)",
                    child.id()
                ));
                log.push(format!("sifrun: holder {name}{when}"));
                log.push(format!("sifrun: container ready in {ms:.1} ms"));
                let start_time = crate::slurmd::start_time(Path::new("/proc"), child.id() as i32);
                // A contained hook's descriptors are not slurmstepd's: the
                // pipes go to processes that outlive it.
                let output = if contained {
                    output.drain_in_processes();
                    None
                } else {
                    Some(output)
                };
                HolderState::Ready(Ready {
                    child,
                    pidfd,
                    start_time,
                    env,
                    log,
                    ns: starting.ns,
                    task_cwd: None,
                    death_told: false,
                    output,
                })
            }
            Err(e) => HolderState::Failed(e),
        };
        self.holder = Some(state);
        self.devices = devices;
        Ok(())
    }

    /// `slurm_spank_task_init`: runs in the task, as the user, just before exec.
    pub fn task_init(&self, sp: &dyn Spank) -> Result<(), PluginError> {
        if sp.context() != Context::Remote {
            return Ok(());
        }
        let entered = match (&self.unusable, &self.holder) {
            // Whatever the step asked for: no task runs where the plugin
            // could not tell (an unregistered option is a lost image).
            (Some(why), _) => Err(PluginError::Task(why.clone())),
            _ if !self.args.wants_container() => return Ok(()),
            (None, holder) => match holder {
                Some(HolderState::Ready(r)) => self.enter(sp, r),
                Some(HolderState::Failed(e)) => Err(PluginError::Task(e.to_string())),
                Some(HolderState::Starting(_)) | None => Err(PluginError::NotStarted),
            },
        };
        // Every task of the node fails alike: its first task says so, once
        // per node.
        if let Err(e) = &entered
            && matches!(sp.getenv("SLURM_LOCALID").as_deref(), None | Some("0"))
        {
            sp.error(&not_started_line(sp, e));
        }
        entered
    }

    /// Puts this task into the holder's container.
    fn enter(&self, sp: &dyn Spank, r: &Ready) -> Result<(), PluginError> {
        let started = Instant::now();
        match (&r.ns, &r.task_cwd) {
            (None, _) => join(r.pid()).map_err(PluginError::Join)?,
            (Some(_), Some(cwd)) => crate::ecl_path::settle(cwd).map_err(PluginError::Join)?,
            (Some(_), None) => {
                return Err(PluginError::Join(
                    "the task did not enter the step's namespace (task_init_privileged did not run)"
                        .into(),
                ));
            }
        }
        let hints = placement_hints(sp, &self.devices);
        for change in &r.env {
            match change {
                EnvChange::Set(k, v) => sp.setenv(k, v),
                EnvChange::Unset(k) => sp.unsetenv(k),
            }
            .map_err(|e| PluginError::Join(format!("setting the task's environment: {e}")))?;
        }
        for (k, v) in hints {
            // Hints only: a failure to set one is not worth the task.
            let _ = sp.setenv(&k, &v);
        }
        // A batch script runs as itself; its steps inherit --sif-run.
        if self.args.run && sp.step_id() != Some(request::BATCH_STEP) {
            crate::run::use_runscript(sp)?;
        }
        if self.args.verbose && sp.getenv("SLURM_LOCALID").as_deref() == Some("0") {
            let node = sp.getenv("SLURMD_NODENAME").unwrap_or_default();
            for line in &r.log {
                sp.task_message(&format!("{node}: {line}"));
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            sp.task_message(&format!(
                "{node}: sifrun: task joined the container in {ms:.1} ms"
            ));
        }
        Ok(())
    }

    /// `slurm_spank_task_post_fork` (slurmstepd, as root): records the
    /// step's holder in the runtime directory once, for the epilog's sweep.
    pub fn task_post_fork(&self, sp: &dyn Spank) -> Result<(), PluginError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if sp.context() != Context::Remote {
            return Ok(());
        }
        let Some(HolderState::Ready(r)) = &self.holder else {
            return Ok(());
        };
        if r.ns.is_some() {
            // No process holds the ECL path's container: the epilog
            // sweeps its namespace directory by name.
            return Ok(());
        }
        let dir = self.settings.runtime_dir();
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir);
        // Root writes here, and the epilog removes files here.
        self.check_trusted("runtime_dir", &dir)?;
        let path = dir.join(format!("{}.holder", request::step_name(sp)));
        // create_new: the first task of the step writes it.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            let start = crate::slurmd::start_time(Path::new("/proc"), r.pid()).unwrap_or(0);
            let _ = writeln!(f, "{} {start}", r.pid());
        }
        Ok(())
    }

    /// `slurm_spank_exit`: stops the step's holder (slurmstepd, once per step).
    pub fn exit(&mut self, sp: &dyn Spank) -> Result<(), PluginError> {
        if sp.context() != Context::Remote {
            return Ok(());
        }
        let holder = self.holder.take();
        if let Some(HolderState::Starting(s)) = holder {
            // The step ended before user_init read the report.
            s.spawned.abandon();
            return Ok(());
        }
        if let Some(HolderState::Ready(mut r)) = holder {
            if let Some(ns) = &r.ns {
                // Root removes a mount in the runtime directory: only a trusted one.
                if self
                    .check_trusted("runtime_dir", &self.settings.runtime_dir())
                    .is_ok()
                {
                    crate::ecl_path::remove(ns);
                }
            }
            let record = format!("{}.holder", request::step_name(sp));
            let _ = std::fs::remove_file(self.settings.runtime_dir().join(record));
            stop(&mut r);
        }
        Ok(())
    }
}

/// The line of a task that was not started, naming the node (the user of
/// a multi-node step must see which node failed, and why).
pub(crate) fn not_started_line(sp: &dyn Spank, e: &PluginError) -> String {
    match sp.getenv("SLURMD_NODENAME").filter(|n| !n.is_empty()) {
        Some(node) => format!("sifrun: {node}: {e} (the task was not started)"),
        None => format!("sifrun: {e} (the task was not started)"),
    }
}

/// SIGTERM, then SIGKILL after 5 s; reaps the holder. A holder that ended
/// early may have been reaped by slurmstepd and its PID given to another
/// process: signals go through the descriptor taken at spawn (or, without
/// one, only while the PID still has the holder's start time).
pub fn stop(r: &mut Ready) {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    use std::os::fd::AsFd;
    if r.pidfd.as_ref().is_some_and(|fd| !is_pidfd_of(fd, r.pid())) {
        // Not ours (see is_pidfd_of): forgotten, never closed.
        let _ = r.pidfd.take().map(std::os::fd::IntoRawFd::into_raw_fd);
        let pid = r.pid();
        r.pidfd = crate::ffi::pidfd::open(pid as u32).ok().filter(|_| {
            r.start_time.is_some()
                && crate::slurmd::start_time(Path::new("/proc"), pid) == r.start_time
        });
    }
    let Some(fd) = &r.pidfd else {
        stop_by_pid(r);
        return;
    };
    let pidfd = crate::ffi::pidfd::send_signal;
    if pidfd(fd, Signal::SIGTERM).is_ok() && !ended_within(fd, Duration::from_secs(5)) {
        let _ = pidfd(fd, Signal::SIGKILL);
        ended_within(fd, Duration::from_secs(5));
    }
    // Reaped through the descriptor: never another child with the same PID.
    let _ = waitid(
        Id::PIDFd(fd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
    );
    // Its output pipes close once it is gone.
    drop(r.output.take());
}

/// Whether `fd` is, in this process, a descriptor for process `pid`. Under
/// `SlurmdParameters=contain_spank` (Slurm 24.05+) user_init runs in a
/// short-lived clone(CLONE_VM) child of slurmstepd that has its own
/// descriptor table: the descriptor taken there is not in slurmstepd's, and
/// its number here belongs to something else (or nothing).
pub(crate) fn is_pidfd_of(fd: &std::os::fd::OwnedFd, pid: i32) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).is_ok_and(|t| {
        t.lines().any(|l| {
            l.strip_prefix("Pid:")
                .is_some_and(|v| v.trim() == pid.to_string())
        })
    })
}

/// Whether the process of `fd` ends within `timeout` (the descriptor
/// becomes readable at once when it does).
pub(crate) fn ended_within(fd: &std::os::fd::OwnedFd, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// [`stop`] on kernels without process descriptors.
fn stop_by_pid(r: &mut Ready) {
    use nix::sys::signal::{Signal, kill};
    let pid = r.pid();
    let start = r.start_time;
    let same = || start.is_some() && crate::slurmd::start_time(Path::new("/proc"), pid) == start;
    if !same() {
        return;
    }
    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
    for _ in 0..500 {
        match r.child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            _ => return,
        }
    }
    if same() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
}

/// GPU and NIC placement hints for this task's CPUs (see
/// `interconnect::topology`), from the devices user_init found.
fn placement_hints(
    sp: &dyn Spank,
    devices: &interconnect::topology::Devices,
) -> Vec<(String, String)> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    let cpus: Vec<u32> = (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect();
    interconnect::topology::hints_for(devices, &cpus, &|k| sp.getenv(k))
}

/// Joins the holder's user, then mount namespace; keeps the working directory.
fn join(pid: i32) -> Result<(), String> {
    use nix::sched::{CloneFlags, setns};
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(|e| format!("the container is gone ({ns}: {e})"))
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    setns(user, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("user namespace: {e}"))?;
    setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))?;
    std::env::set_current_dir(&cwd)
        .map_err(|e| format!("{}: {e} inside the container", cwd.display()))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no-new-privileges: {e}"))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake::Fake;
    use crate::options::Opt;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A holder that set up its container, for the tests of the callbacks after it.
    pub(crate) fn ready(child: std::process::Child, pidfd: Option<std::os::fd::OwnedFd>) -> Ready {
        Ready {
            child,
            pidfd,
            start_time: None,
            env: Vec::new(),
            log: Vec::new(),
            ns: None,
            task_cwd: None,
            death_told: false,
            output: None,
        }
    }

    /// contain_spank: the descriptor user_init took lives in another
    /// process; the number in slurmstepd is someone else's file. The holder
    /// is still stopped (through a fresh descriptor) and that file is left
    /// open.
    #[test]
    fn a_descriptor_taken_in_another_process_is_neither_used_nor_closed() {
        use std::os::fd::{AsRawFd, OwnedFd};
        let child = sleeper();
        let others: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let raw = others.as_raw_fd();
        let mut r = ready(child, Some(others));
        r.start_time = crate::slurmd::start_time(Path::new("/proc"), r.pid());
        assert!(r.start_time.is_some());
        stop(&mut r);
        assert!(
            !matches!(r.child.try_wait(), Ok(None)),
            "the holder still runs"
        );
        drop(r);
        assert_eq!(
            std::fs::read_link(format!("/proc/self/fd/{raw}")).ok(),
            Some(std::path::PathBuf::from("/dev/null")),
            "someone else's descriptor was closed"
        );
        // The test's /dev/null stays open (its owner is gone).
    }

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_holder_that_ended_early_is_never_signalled_by_its_old_pid() {
        use nix::sys::signal::Signal;
        let mut child = sleeper();
        let pidfd = crate::ffi::pidfd::open(child.id()).unwrap();
        crate::ffi::pidfd::send_signal(&pidfd, Signal::SIGCONT).unwrap();
        // The user kills their holder; slurmstepd reaps it: its PID is free.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            crate::ffi::pidfd::send_signal(&pidfd, Signal::SIGTERM),
            Err(nix::errno::Errno::ESRCH),
            "whatever process has the PID now is not signalled"
        );
        let mut r = ready(child, Some(pidfd));
        let t = Instant::now();
        stop(&mut r);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "no waiting for the dead"
        );
        // A live holder ends on SIGTERM.
        let child = sleeper();
        let pidfd = crate::ffi::pidfd::open(child.id()).ok();
        let mut r = ready(child, pidfd);
        stop(&mut r);
        assert!(!matches!(r.child.try_wait(), Ok(None)), "still running");
        // No descriptor, and the PID's start time is not the holder's: no signal.
        let mut r = ready(sleeper(), None);
        r.start_time = Some(1);
        stop(&mut r);
        assert!(
            matches!(r.child.try_wait(), Ok(None)),
            "a stranger's PID is left alone"
        );
        r.child.kill().unwrap();
        r.child.wait().unwrap();
    }

    #[test]
    fn a_launcher_or_runtime_dir_others_may_change_is_not_used() {
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        let t = crate::fake::scratch();
        let stage = t.path().join("stage");
        std::fs::create_dir(&stage).unwrap();
        let launcher = stage.join("sifrun");
        std::fs::write(&launcher, "#!/bin/sh\nexit 1\n").unwrap();
        chmod(&launcher, 0o755);
        // A directory anyone may write: the binary root runs could be swapped.
        chmod(&stage, 0o777);
        let mut p = Plugin::new(Some(me));
        p.settings.launcher = Some(launcher.clone());
        p.option(Opt::Image, Some("/i.sif")).unwrap();
        let sp = Fake::remote();
        p.user_init(&sp).unwrap();
        let Some(HolderState::Failed(e)) = &p.holder else {
            panic!("{:?}", p.holder)
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("plugstack.conf: launcher: ") && msg.contains("lets others write it"),
            "{msg}"
        );
        p.task_init(&sp).unwrap_err();
        assert!(
            sp.log.borrow()[0].contains("launcher"),
            "{:?}",
            sp.log.borrow()
        );
        // Sticky, as /tmp: others still create names in it (the launcher
        // before root's, a missing component): refused the same way.
        chmod(&stage, 0o1777);
        p.holder = None;
        p.user_init(&sp).unwrap();
        let Some(HolderState::Failed(e)) = &p.holder else {
            panic!("{:?}", p.holder)
        };
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("launcher: {}: mode 1777", stage.display())),
            "{msg}"
        );
        chmod(&stage, 0o755);

        // The runtime directory: root writes records there.
        let run = t.path().join("run");
        std::fs::create_dir(&run).unwrap();
        chmod(&run, 0o777);
        p.settings.runtime_dir = Some(run.clone());
        let e = p.check_trusted("runtime_dir", &run).unwrap_err();
        assert!(
            e.to_string().starts_with("plugstack.conf: runtime_dir: "),
            "{e}"
        );
        chmod(&run, 0o755);
        p.check_trusted("runtime_dir", &run).unwrap();
        // Unchecked where nothing runs as root (the user's srun).
        let user = Plugin::new(None);
        chmod(&run, 0o777);
        user.check_trusted("runtime_dir", &run).unwrap();
    }
}
