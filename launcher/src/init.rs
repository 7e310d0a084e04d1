//! The container's processes: PID 1 (sets the root up, starts the command,
//! reaps, forwards signals) and the command itself (no new privileges,
//! default signal mask, exec).

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, execve};

use crate::apply::{ApplyError, apply};
use crate::command::direct_env;
use crate::env::ContainerEnv;
use crate::plan::Plan;
use crate::syscall::{self, Forked, Linux};

/// What the container's first process needs.
pub(crate) struct Init<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) argv: &'a [OsString],
    /// The command goes through the image's shell, which applies the
    /// user's settings after the image's scripts.
    pub(crate) wrapped: bool,
    pub(crate) env: &'a ContainerEnv,
}

/// The signals the launcher and PID 1 take with `sigwaitinfo` (the command
/// gets the default mask back).
pub(crate) fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// The shell's convention: the exit code, or 128 + the signal.
pub(crate) fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    }
}

/// PID 1 of the container: set up the root, start the command, reap,
/// return its status.
pub(crate) fn init(i: &Init<'_>, sys: Linux, signals: &SigSet) -> i32 {
    let fail = |msg: String| {
        let _ = writeln!(io::stderr(), "sifrun: {msg}");
        255
    };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let started = std::time::Instant::now();
    let applied = match apply(i.plan, &sys) {
        Ok(a) => a,
        Err(e @ ApplyError::Pwd { .. }) => return fail(e.to_string()),
        Err(e) => return fail(format!("setting up the container: {e}")),
    };
    drop(sys);
    crate::launch::phase_done("apply", started);
    if applied.cwd_fallback {
        tracing::warn!(
            "{} does not exist in the container; starting in {}",
            i.plan.cwd.display(),
            applied.cwd.display()
        );
    }
    let mut envp: Vec<(String, String)> = if i.wrapped {
        i.env
            .base
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        // No shell to read the scripts: apply the user's settings directly.
        direct_env(i.env)
    };
    envp.push(("PWD".into(), applied.cwd.display().to_string()));
    let command = match syscall::fork_single_threaded() {
        Ok(Forked::Child) => exec_command(i.argv, &envp),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => return fail(format!("starting the command: {e}")),
    };
    reap(command, signals)
}

/// Reaps children until `command` exits; forwards signals sent to PID 1.
fn reap(command: Pid, signals: &SigSet) -> i32 {
    loop {
        // Reap whatever has exited (orphans re-parent to PID 1).
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(command)
                        && matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                    {
                        return exit_code(status);
                    }
                }
            }
        }
        match syscall::wait_signal(signals) {
            Ok((libc::SIGCHLD, _)) => {}
            Ok((sig, _)) => {
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = kill(command, s);
                }
            }
            Err(_) => {}
        }
    }
}

fn die(code: i32, msg: String) -> ! {
    let _ = writeln!(io::stderr(), "sifrun: {msg}");
    std::process::exit(code)
}

/// The program `argv[0]` names: a path, or looked up on the environment's
/// PATH (the default PATH without one).
fn program(first: &OsStr, env: &[(String, String)]) -> Option<PathBuf> {
    if first.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(first));
    }
    let search = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map_or(crate::env::DEFAULT_PATH, |(_, v)| v.as_str());
    search
        .split(':')
        .map(|d| Path::new(d).join(first))
        .find(|p| p.is_file())
}

/// The command process: no new privileges, default signal mask, exec.
fn exec_command(argv: &[OsString], env: &[(String, String)]) -> ! {
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        die(255, format!("setting no-new-privileges: {e}"));
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let Some(first) = argv.first() else {
        die(255, "no command given".into())
    };
    let Some(path) = program(first, env) else {
        die(
            127,
            format!(
                "exec: {}: command not found in the container",
                first.to_string_lossy()
            ),
        )
    };
    let c_argv: Vec<_> = match argv
        .iter()
        .map(|a| syscall::cstring(a))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(e) => die(255, format!("exec: {e}")),
    };
    let c_env: Vec<_> = env
        .iter()
        .filter_map(|(k, v)| syscall::cstring(OsStr::new(&format!("{k}={v}"))).ok())
        .collect();
    let c_path = match syscall::cstring(path.as_os_str()) {
        Ok(p) => p,
        Err(e) => die(255, format!("exec: {e}")),
    };
    let err = execve(&c_path, &c_argv, &c_env).unwrap_err();
    let code = if err == nix::Error::ENOENT { 127 } else { 126 };
    let what = match err {
        nix::Error::ENOENT => "no such file in the container".to_owned(),
        nix::Error::EACCES => "not executable".to_owned(),
        e => e.desc().to_owned(),
    };
    die(code, format!("exec: {}: {what}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let pid = Pid::from_raw(2);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 42)), 42);
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGTERM, false)),
            143
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), 255);
    }

    #[test]
    fn programs_are_found_on_the_environment_path() {
        let env = [("PATH".to_owned(), "/nonexistent:/bin".to_owned())];
        assert_eq!(program(OsStr::new("sh"), &env), Some("/bin/sh".into()));
        assert_eq!(program(OsStr::new("./x"), &[]), Some("./x".into()));
        assert_eq!(program(OsStr::new("no-such-program-here"), &env), None);
        assert!(signal_set().contains(Signal::SIGTERM));
    }
}
