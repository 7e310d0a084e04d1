//! Starting the container's first process, then serving the image and
//! waiting for the container in the launcher.

use std::cell::RefCell;

use fuser::Session;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use super::{Action, Launch, LaunchError, Prepared, setup};
use crate::fuse::SquashFs;
use crate::hold::{Holding, Quiet, hold};
use crate::init::{Init, exit_code, init};
use crate::serve::Served;
use crate::syscall::{self, Forked, Linux};

/// The container's first process, started, and what the launcher keeps.
pub(super) struct Spawned {
    pub(super) child: Pid,
    /// The FUSE session, which stays with the launcher.
    pub(super) session: Session<SquashFs>,
    /// For a holder, the launcher's end of [`Quiet`].
    pub(super) quiet: Option<Quiet>,
    /// The launcher's copy of the host sources' descriptors, closed once
    /// the server runs (the container process's first lookup waits for it).
    host_sources: Option<Linux>,
}

/// Forks the container's first process (in a new PID namespace unless the
/// launch is a Slurm step's): PID 1 ([`init`]) or the holder ([`hold`]).
pub(super) fn spawn(
    l: &Launch,
    p: &Prepared,
    job_env: &[(String, String)],
    sys: Linux,
    session: Session<SquashFs>,
    signals: &SigSet,
    warm: Option<&super::ahead::Warm>,
) -> Result<Spawned, LaunchError> {
    let quiet = match &l.action {
        Action::Hold(_) => Some(Quiet::new().map_err(setup("opening /dev/null"))?),
        _ => None,
    };
    let linux = RefCell::new(Some(sys));
    let session = RefCell::new(Some(session));
    let run = || {
        // The session belongs to the launcher: dropping it here would
        // unmount the image in the namespace the launcher still serves.
        // Its device is closed all the same: the kernel ends the connection
        // (and every request waiting on it) only once the last descriptor
        // of the device is closed, so a container process waiting for the
        // server's answer must hold none when the server is killed.
        if let Some(s) = session.borrow_mut().take() {
            syscall::forget_closing(s);
        }
        let sys = linux.borrow_mut().take().expect("runs once");
        match &l.action {
            Action::Hold(h) => hold(
                &Holding {
                    plan: &p.plan,
                    env: &p.env,
                    through_shell: p.wrapped,
                    job_env,
                    slurm_client: h.slurm_client && p.client,
                    quiet: quiet.as_ref(),
                    warm,
                },
                sys,
                signals,
            ),
            _ => init(
                &Init {
                    plan: &p.plan,
                    argv: &p.argv,
                    wrapped: p.wrapped,
                    env: &p.env,
                },
                sys,
                signals,
            ),
        }
    };
    let child = if l.pid_namespace {
        syscall::spawn_pid_namespace(run)
    } else {
        match syscall::fork_single_threaded() {
            Ok(Forked::Child) => std::process::exit(run()),
            Ok(Forked::Parent(pid)) => Ok(pid),
            Err(e) => Err(e),
        }
    }
    .map_err(setup("starting the container"))?;
    Ok(Spawned {
        child,
        session: session.into_inner().expect("still here in the parent"),
        quiet,
        host_sources: linux.into_inner(),
    })
}

/// The launcher after the fork: serves the image, forwards the signals it
/// is sent to the container, and returns the container's exit status.
/// A holder's step command is decompressed from the server's start and
/// put into its cache once the container is ready, unless the container
/// process reads it ahead into the page cache (an lz4 image; `ahead`, see
/// [`Quiet::follow`]).
pub(super) fn serve_and_wait(
    l: &Launch,
    served: &Served,
    spawned: Spawned,
    signals: SigSet,
    ahead: Option<super::ahead::Warm>,
) -> Result<i32, LaunchError> {
    let Spawned {
        child,
        session,
        quiet,
        host_sources,
    } = spawned;
    // The server first: the container process's set-up waits for its
    // answers.
    std::thread::spawn(move || {
        let _ = session.run();
    });
    drop(host_sources);
    std::thread::spawn(move || {
        while let Ok((sig, sent_by_process)) = syscall::wait_signal(&signals) {
            if sig != libc::SIGCHLD
                && sent_by_process
                && let Ok(s) = Signal::try_from(sig)
            {
                let _ = kill(child, s);
            }
        }
    });
    if let Some(q) = quiet {
        q.follow(ahead.map(|w| (w, served.squash.clone())));
    }
    served.squash.start_readahead(l.tuning);
    loop {
        match waitpid(child, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                tracing::debug!(status = ?status, "the container ended");
                return Ok(exit_code(status));
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(setup("waiting for the container")(syscall::to_io(e))),
        }
    }
}
