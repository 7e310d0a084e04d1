//! Staging, in the launcher before it forks the container: new user and
//! mount namespaces with the plan's identity maps, every host source opened
//! while it is still visible, then the private staging area (on `/tmp`,
//! which the container never sees) with the generated files; all through
//! the [`Syscall`] seam.

use std::path::{Path, PathBuf};

use crate::launch::LaunchError;
use crate::plan::{Plan, Source};
use crate::syscall::Syscall;

/// Where the staging area is mounted (on the host's /tmp, in the launcher's
/// own mount namespace only).
pub(crate) const STAGING: &str = "/tmp";

/// The host sources to open before the staging area covers any of them:
/// every host path the plan binds, and /proc (the fallback for a procfs
/// the kernel refuses).
pub(crate) fn sources(plan: &Plan) -> Vec<PathBuf> {
    let mut wanted: Vec<PathBuf> = plan
        .mounts
        .iter()
        .filter_map(|m| match &m.source {
            Source::Host { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    wanted.push("/proc".into());
    wanted
}

/// Stages `plan`; returns where the image root is to be mounted.
pub(crate) fn stage(plan: &Plan, sys: &dyn Syscall) -> Result<PathBuf, LaunchError> {
    let setup = |what: &str| crate::launch::setup(what.to_owned());
    sys.unshare_user_mount()
        .map_err(LaunchError::UserNamespace)?;
    for (file, text) in [
        ("setgroups", "deny"),
        ("uid_map", plan.uid_map.as_str()),
        ("gid_map", plan.gid_map.as_str()),
    ] {
        sys.write_self_proc(file, text)
            .map_err(setup(&format!("writing /proc/self/{file}")))?;
    }
    sys.make_mounts_private()
        .map_err(setup("making mounts private"))?;
    stage_area(plan, sys)
}

/// The part of [`stage`] after the namespaces: open the host sources
/// (the privileged path's were opened as the user already), mount the
/// staging area and write the generated files.
pub(crate) fn stage_area(plan: &Plan, sys: &dyn Syscall) -> Result<PathBuf, LaunchError> {
    let setup = |what: &str| crate::launch::setup(what.to_owned());
    // Host sources are opened now, before the staging tmpfs covers /tmp.
    for p in sources(plan) {
        sys.open_source(&p)
            .map_err(setup(&format!("opening {}", p.display())))?;
    }
    let root = sys
        .mount_staging(Path::new(STAGING))
        .map_err(setup("mounting the staging tmpfs"))?;
    for f in &plan.files {
        sys.write_generated(&f.name, &f.bytes, f.executable)
            .map_err(setup(&format!("writing the generated {}", f.name)))?;
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{FakeTree, host};
    use crate::plan::{PlanInput, RunOptions, plan};
    use crate::syscall::Fake;

    fn tmp_bind_plan() -> Plan {
        let (facts, fs) = host();
        let opts = RunOptions {
            binds: vec![crate::bind::parse_one("/tmp:/x", Path::new("/")).unwrap()],
            ..RunOptions::default()
        };
        let client = crate::slurm_client::ClientPlan {
            binds: vec![],
            scripts: vec![("srun".into(), "#!/bin/sh\n".into())],
        };
        let input = PlanInput {
            slurm_client: Some(&client),
            ..PlanInput::new(&opts, &facts)
        };
        plan(&input, &fs, &FakeTree::new(&["/etc/", "/tmp/"])).unwrap()
    }

    #[test]
    fn stage_golden() {
        let p = tmp_bind_plan();
        let fake = Fake::default();
        let root = stage(&p, &fake).unwrap();
        assert_eq!(root, Path::new("/tmp/root"));
        let want = "\
unshare user,mount
write /proc/self/setgroups \"deny\"
write /proc/self/uid_map \"1001 1001 1\\n\"
write /proc/self/gid_map \"1001 1001 1\\n\"
make-private /
open-source /sys
open-source /dev
open-source /tmp
open-source /tmp
open-source /var/tmp
open-source /home/alice
open-source /scratch/run
open-source /etc/localtime
open-source /etc/hosts
open-source /etc/resolv.conf
open-source /proc
staging /tmp unbindable
write-generated passwd 46 bytes
write-generated group 31 bytes
write-generated exec-slurm-srun 10 bytes executable
";
        assert_eq!(fake.log(), want);
    }

    /// `-B /tmp:/x`: the user's recursive bind of the host's /tmp is opened
    /// before the staging area is mounted there, and the staging area is
    /// unbindable, so the bind shows the host's /tmp, never the staging
    /// area's contents.
    #[test]
    fn a_bind_of_the_staging_directory_is_opened_before_and_never_copies_it() {
        let p = tmp_bind_plan();
        let m = p
            .mounts
            .iter()
            .find(|m| m.target == Path::new("/x"))
            .unwrap();
        assert_eq!(
            m.source,
            Source::Host {
                path: "/tmp".into(),
                recursive: true
            }
        );
        let fake = Fake::default();
        stage(&p, &fake).unwrap();
        let calls = fake.calls.borrow();
        let staged = calls
            .iter()
            .position(|c| c.starts_with("staging "))
            .unwrap();
        assert_eq!(calls[staged], format!("staging {STAGING} unbindable"));
        let opened = calls.iter().rposition(|c| c == "open-source /tmp").unwrap();
        assert!(opened < staged, "{calls:?}");
    }

    #[test]
    fn every_staging_step_can_fail_and_names_itself() {
        let p = tmp_bind_plan();
        let total = {
            let f = Fake::default();
            stage(&p, &f).unwrap();
            f.calls.borrow().len()
        };
        for n in 1..=total {
            let fake = Fake {
                fail_at: Some(n),
                ..Fake::default()
            };
            let e = stage(&p, &fake).unwrap_err().to_string();
            assert_eq!(fake.calls.borrow().len(), n, "nothing runs after a failure");
            if n == 1 {
                assert!(e.contains("cannot create a user namespace"), "{e}");
            } else {
                assert!(e.starts_with("setting up the container: "), "{e}");
            }
        }
    }
}
