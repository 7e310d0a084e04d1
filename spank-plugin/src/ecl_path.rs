//! The plugin's side of the ECL path (see `launcher::privileged`): the
//! holder leaves the step's root-owned mount namespace pinned at
//! `runtime_dir/JOB.STEP.ns/mnt` and exits. Each task enters it in
//! `slurm_spank_task_init_privileged` (root, before Slurm drops to the
//! user), then, as the user, returns to its working directory; step end
//! (`slurm_spank_exit`) and the job epilog remove it.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};
use nix::sched::{CloneFlags, setns};

use crate::error::PluginError;
use crate::plugin::Plugin;
use crate::remote::HolderState;
use crate::spank::{Context, Spank};

impl Plugin {
    /// `slurm_spank_task_init_privileged` (the task, as root): enter the
    /// step's namespace. A failure ends the task (see `ffi`).
    pub fn task_init_privileged(&mut self, sp: &dyn Spank) -> Result<(), PluginError> {
        if sp.context() != Context::Remote || !self.args.wants_container() {
            return Ok(());
        }
        let Some(HolderState::Ready(r)) = &mut self.holder else {
            // task_init reports why there is no container.
            return Ok(());
        };
        let Some(ns) = &r.ns else {
            return Ok(());
        };
        let entered = std::env::current_dir()
            .map_err(|e| format!("the task's working directory: {e}"))
            .and_then(|cwd| enter(ns).map(|()| cwd));
        match entered {
            Ok(cwd) => {
                r.task_cwd = Some(cwd);
                Ok(())
            }
            Err(e) => {
                let e = PluginError::Join(e);
                sp.error(&crate::remote::not_started_line(sp, &e));
                Err(e)
            }
        }
    }
}

/// Enters the mount namespace pinned in `ns_dir`.
pub(crate) fn enter(ns_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(ns_dir.join("mnt"))
        .map_err(|e| format!("the step's container is gone ({e})"))?;
    setns(file, CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))
}

/// As the user, inside the namespace: back to the working directory, and
/// no privilege gained by anything the task execs.
pub(crate) fn settle(cwd: &Path) -> Result<(), String> {
    std::env::set_current_dir(cwd)
        .map_err(|e| format!("{}: {e} inside the container", cwd.display()))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no-new-privileges: {e}"))
}

/// Unmounts and removes a namespace directory (root; best effort).
pub(crate) fn remove(ns_dir: &Path) {
    let mnt = ns_dir.join("mnt");
    let _ = umount2(&mnt, MntFlags::MNT_DETACH);
    let _ = umount2(ns_dir, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_file(&mnt);
    let _ = std::fs::remove_dir(ns_dir.join("image"));
    let _ = std::fs::remove_dir(ns_dir);
}

/// The job's namespace directories in `runtime_dir` (the epilog removes
/// them: a killed slurmstepd never ran `exit`).
pub(crate) fn leftovers(runtime_dir: &Path, job: u32) -> Vec<PathBuf> {
    let prefix = format!("{job}.");
    std::fs::read_dir(runtime_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(&prefix) && n.ends_with(".ns")
        })
        .map(|e| e.path())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_this_jobs_namespace_directories_only() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "42.0.ns",
            "42.batch.ns",
            "420.0.ns",
            "42.0.holder",
            "43.1.ns",
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let mut got: Vec<String> = leftovers(d.path(), 42)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["42.0.ns", "42.batch.ns"]);
        remove(&d.path().join("42.0.ns"));
        assert!(!d.path().join("42.0.ns").exists());
    }

    #[test]
    fn a_task_that_did_not_enter_never_runs_and_a_relative_pwd_is_refused() {
        use crate::fake::Fake;
        use crate::options::Opt;
        use crate::remote::Ready;
        let mut p = Plugin::new(None);
        p.option(Opt::Image, Some("/i.sif")).unwrap();
        p.holder = Some(HolderState::Ready(Ready {
            child: std::process::Command::new("true").spawn().unwrap(),
            pidfd: None,
            start_time: None,
            env: Vec::new(),
            log: Vec::new(),
            ns: Some("/nonexistent/7.0.ns".into()),
            task_cwd: None,
            death_told: false,
            output: None,
        }));
        let sp = Fake::remote();
        // task_init_privileged cannot enter: it fails (and the task ends).
        let e = p.task_init_privileged(&sp).unwrap_err();
        assert!(
            e.to_string().contains("the step's container is gone"),
            "{e}"
        );
        // task_init never runs the task outside the namespace either.
        let e = p.task_init(&sp).unwrap_err();
        assert!(e.to_string().contains("did not enter"), "{e}");
        if let Some(HolderState::Ready(r)) = &mut p.holder {
            let _ = r.child.wait();
        }

        let mut q = Plugin::new(None);
        q.option(Opt::Image, Some("img.sif")).unwrap();
        let mut sp = Fake::remote();
        sp.env.insert("PWD".into(), "rel".into());
        q.user_init(&sp).unwrap();
        let Some(HolderState::Failed(e)) = &q.holder else {
            panic!("{:?}", q.holder)
        };
        assert!(e.to_string().contains("PWD is not an absolute path"), "{e}");
    }

    #[test]
    fn a_missing_namespace_fails_the_task() {
        let d = tempfile::tempdir().unwrap();
        let e = enter(d.path()).unwrap_err();
        assert!(e.starts_with("the step's container is gone"), "{e}");
    }
}
