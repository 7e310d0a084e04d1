//! A holder that dies during the step (killed, crashed): its node's tasks
//! lose the image (ENOTCONN, SIGBUS on a mapped page) and end with their own
//! errors, which do not say why. The first task of the node to end after
//! the holder's death says so, once per node, naming the node and how the
//! holder ended: `sifrun: NODE: the container's holder died (signal 9)
//! during the step; ...`. It is logged as an error in slurmstepd, whose
//! standard error is the step's until the tasks' output is done: srun shows
//! it (prefixed `slurmstepd: error:`).
//!
//! How the holder ended: slurmstepd reaps every child of its own (the
//! holder is one), so its wait status is read through the descriptor taken
//! at spawn (`PIDFD_GET_INFO`, Linux 6.15), or, before slurmstepd reaped
//! it, with `waitid(P_PIDFD, WNOWAIT)`; an older kernel gives no status and
//! the line says so.

use std::path::Path;

use crate::error::PluginError;
use crate::plugin::Plugin;
use crate::remote::{HolderState, Ready, ended_within, is_pidfd_of};
use crate::spank::{Context, Spank};

/// How a holder ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Killed by this signal.
    Signal(i32),
    /// Exited with this status.
    Exit(i32),
    /// The kernel does not say.
    Unknown,
}

impl End {
    /// The end a wait status tells.
    pub(crate) fn of_status(status: i32) -> End {
        match status & 0x7f {
            0 => End::Exit((status >> 8) & 0xff),
            sig => End::Signal(sig),
        }
    }
}

impl Plugin {
    /// `slurm_spank_task_exit` (slurmstepd, root, as each task ends): when
    /// the step's holder has ended before this task, says so once per node.
    /// Not when the task itself was killed by SIGKILL or SIGTERM: the step
    /// is being ended then (a cancel, `--kill-on-bad-exit` because another
    /// node failed), and Slurm kills every process of the step, the holder
    /// with the tasks. Not for a holder that exited 0: it was stopped in
    /// order (SIGTERM, which it waits for). Not on the ECL path, whose
    /// holder exits once the namespace is pinned.
    pub fn task_exit(&mut self, sp: &dyn Spank) -> Result<(), PluginError> {
        if sp.context() != Context::Remote {
            return Ok(());
        }
        let Some(HolderState::Ready(r)) = &mut self.holder else {
            return Ok(());
        };
        if r.ns.is_some() || r.death_told || step_is_ending(sp.task_exit_status()) {
            return Ok(());
        }
        let Some(end) = ended(r).filter(|e| *e != End::Exit(0)) else {
            return Ok(());
        };
        r.death_told = true;
        let node = sp.getenv("SLURMD_NODENAME").filter(|n| !n.is_empty());
        sp.error(&died_line(node.as_deref(), end));
        Ok(())
    }
}

/// Whether a task that ended with `status` was killed by the step's end.
fn step_is_ending(status: Option<i32>) -> bool {
    matches!(
        status.map(End::of_status),
        Some(End::Signal(libc::SIGKILL | libc::SIGTERM))
    )
}

/// How the holder ended, or `None` while it runs (or when it cannot be
/// told: no descriptor of this process's, and no start time to compare).
fn ended(r: &Ready) -> Option<End> {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    use std::os::fd::AsFd;
    let Some(fd) = r.pidfd.as_ref().filter(|fd| of_holder(fd, r.pid())) else {
        // A PID alone may be another process's by now: only a start time
        // that differs (or none) says the holder is gone.
        let start = r.start_time?;
        let now = crate::slurmd::start_time(Path::new("/proc"), r.pid());
        return (now != Some(start)).then_some(End::Unknown);
    };
    if !ended_within(fd, std::time::Duration::ZERO) {
        return None;
    }
    if let Some(status) = crate::ffi::pidfd::exit_status(fd) {
        return Some(End::of_status(status));
    }
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    Some(match waitid(Id::PIDFd(fd.as_fd()), flags) {
        Ok(WaitStatus::Signaled(_, sig, _)) => End::Signal(sig as i32),
        Ok(WaitStatus::Exited(_, code)) => End::Exit(code),
        _ => End::Unknown,
    })
}

/// Whether `fd` is the holder's descriptor in this process: one for `pid`,
/// or one for a process already reaped (the kernel then shows PID -1; no
/// other process descriptor is open in slurmstepd, whose own code takes
/// none).
fn of_holder(fd: &std::os::fd::OwnedFd, pid: i32) -> bool {
    use std::os::fd::AsRawFd;
    let reaped = || {
        std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).is_ok_and(|t| {
            t.lines()
                .any(|l| l.strip_prefix("Pid:").is_some_and(|v| v.trim() == "-1"))
        })
    };
    is_pidfd_of(fd, pid) || reaped()
}

/// The line that tells a holder's death on `node`.
pub(crate) fn died_line(node: Option<&str>, end: End) -> String {
    let how = match end {
        End::Signal(sig) => format!(" (signal {sig})"),
        End::Exit(code) => format!(" (exit status {code})"),
        End::Unknown => String::new(),
    };
    let node = node.map(|n| format!("{n}: ")).unwrap_or_default();
    format!(
        "sifrun: {node}the container's holder died{how} during the step; \
         this node's tasks lost their image"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;
    use crate::options::Opt;
    use nix::sys::signal::Signal;
    use std::process::Command;

    /// A step whose holder is `sleep 30`, with a descriptor as user_init
    /// takes it.
    fn step() -> Plugin {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pidfd = crate::ffi::pidfd::open(child.id()).ok();
        let mut p = Plugin::new(None);
        p.option(Opt::Image, Some("/i.sif")).unwrap();
        p.holder = Some(HolderState::Ready(crate::remote::tests::ready(
            child, pidfd,
        )));
        p
    }

    fn ready(p: &mut Plugin) -> &mut Ready {
        match p.holder.as_mut() {
            Some(HolderState::Ready(r)) => r,
            _ => unreachable!(),
        }
    }

    /// SIGKILLs the holder and waits until it has ended (not reaped).
    fn kill(p: &mut Plugin) {
        let r = ready(p);
        let fd = r.pidfd.as_ref().unwrap();
        crate::ffi::pidfd::send_signal(fd, Signal::SIGKILL).unwrap();
        assert!(ended_within(fd, std::time::Duration::from_secs(10)));
    }

    fn node(status: i32) -> Fake {
        let mut sp = Fake::remote();
        sp.env.insert("SLURMD_NODENAME".into(), "sifrun-n2".into());
        sp.task_exit_status = Some(status);
        sp
    }

    const KILLED_LINE: &str = "error: sifrun: sifrun-n2: the container's holder died \
        (signal 9) during the step; this node's tasks lost their image";

    /// The holder SIGKILLed, then a task failing (exit 3): one line naming
    /// the node and the signal, once for the node's tasks.
    #[test]
    fn a_killed_holder_is_told_once_per_node() {
        let mut p = step();
        let sp = node(3 << 8);
        p.task_exit(&sp).unwrap();
        assert!(sp.log.borrow().is_empty(), "{:?}", sp.log.borrow());
        kill(&mut p);
        p.task_exit(&sp).unwrap();
        p.task_exit(&sp).unwrap();
        assert_eq!(*sp.log.borrow(), [KILLED_LINE]);
        p.exit(&sp).unwrap();
    }

    /// slurmstepd reaps every child: the status still comes through the
    /// descriptor where the kernel keeps it (Linux 6.15), else the line
    /// says the holder died without how.
    #[test]
    fn a_holder_reaped_by_slurmstepd_is_told_still() {
        let mut p = step();
        kill(&mut p);
        let r = ready(&mut p);
        let pid = nix::unistd::Pid::from_raw(r.pid());
        nix::sys::wait::waitpid(pid, None).unwrap();
        let kept = crate::ffi::pidfd::exit_status(r.pidfd.as_ref().unwrap());
        let sp = node(3 << 8);
        p.task_exit(&sp).unwrap();
        let want = match kept {
            Some(status) => {
                assert_eq!(End::of_status(status), End::Signal(9));
                KILLED_LINE.to_owned()
            }
            None => format!("error: {}", died_line(Some("sifrun-n2"), End::Unknown)),
        };
        assert_eq!(*sp.log.borrow(), [want]);
    }

    /// Tasks killed by SIGKILL or SIGTERM: the step is being ended (Slurm
    /// kills the holder too): nothing is told. A task killed by SIGBUS
    /// (a page of the lost image) is told.
    #[test]
    fn a_step_being_ended_is_not_a_holder_death() {
        let mut p = step();
        kill(&mut p);
        for sig in [libc::SIGKILL, libc::SIGTERM] {
            let sp = node(sig);
            p.task_exit(&sp).unwrap();
            assert!(sp.log.borrow().is_empty(), "{sig}: {:?}", sp.log.borrow());
        }
        let sp = node(libc::SIGBUS);
        p.task_exit(&sp).unwrap();
        assert_eq!(*sp.log.borrow(), [KILLED_LINE]);
    }

    /// A holder stopped in order (SIGTERM: it exits 0) died of nothing.
    #[test]
    fn a_holder_stopped_in_order_is_no_death() {
        let mut p = step();
        let r = ready(&mut p);
        crate::ffi::pidfd::send_signal(r.pidfd.as_ref().unwrap(), Signal::SIGTERM).unwrap();
        assert!(ended_within(
            r.pidfd.as_ref().unwrap(),
            std::time::Duration::from_secs(10)
        ));
        r.child = Command::new("true").spawn().unwrap();
        r.pidfd = crate::ffi::pidfd::open(r.child.id()).ok();
        assert!(ended_within(
            r.pidfd.as_ref().unwrap(),
            std::time::Duration::from_secs(10)
        ));
        let sp = node(3 << 8);
        p.task_exit(&sp).unwrap();
        assert!(sp.log.borrow().is_empty(), "{:?}", sp.log.borrow());
        // The control: the same holder ended by SIGTERM's default (a
        // signal, not an orderly exit) is told.
        let mut p = step();
        let r = ready(&mut p);
        crate::ffi::pidfd::send_signal(r.pidfd.as_ref().unwrap(), Signal::SIGTERM).unwrap();
        assert!(ended_within(
            r.pidfd.as_ref().unwrap(),
            std::time::Duration::from_secs(10)
        ));
        p.task_exit(&sp).unwrap();
        assert_eq!(sp.log.borrow().len(), 1, "{:?}", sp.log.borrow());
        assert!(
            sp.log.borrow()[0].contains("(signal 15)"),
            "{:?}",
            sp.log.borrow()
        );
    }

    /// The ECL path's holder exits once the namespace is pinned: its end
    /// is no death. Outside slurmstepd, nothing either.
    #[test]
    fn the_ecl_path_and_other_contexts_say_nothing() {
        let mut p = step();
        kill(&mut p);
        ready(&mut p).ns = Some("/run/x/1.0.ns".into());
        let sp = node(3 << 8);
        p.task_exit(&sp).unwrap();
        assert!(sp.log.borrow().is_empty());
        ready(&mut p).ns = None;
        let mut local = node(3 << 8);
        local.context = Some(Context::Local);
        p.task_exit(&local).unwrap();
        assert!(local.log.borrow().is_empty());
    }

    #[test]
    fn wait_statuses_and_lines() {
        assert_eq!(End::of_status(9), End::Signal(9));
        assert_eq!(End::of_status(3 << 8), End::Exit(3));
        assert_eq!(End::of_status(0), End::Exit(0));
        assert_eq!(
            died_line(None, End::Exit(1)),
            "sifrun: the container's holder died (exit status 1) during the step; \
             this node's tasks lost their image"
        );
        assert!(
            died_line(Some("n"), End::Unknown)
                .starts_with("sifrun: n: the container's holder died during")
        );
    }
}
