//! Fail closed in slurmstepd: whatever goes wrong in the plugin's own
//! configuration, options or trusted paths, no task of a container step
//! runs (Slurm 22.05 logs a failed remote callback and runs the step).

use std::path::Path;

use crate::fake::Fake;
use crate::options::{OPTIONS, Opt};
use crate::plugin::Plugin;
use crate::remote::HolderState;

fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An admin file in a directory anyone may write (0777): the scratch
/// directory (keep it alive), that directory, and the plugstack arguments
/// naming the file.
fn untrusted_admin_file() -> (tempfile::TempDir, std::path::PathBuf, [String; 1]) {
    let t = crate::fake::scratch();
    let open = t.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let admin = open.join("admin.toml");
    std::fs::write(&admin, "[users]\nmax_binds = 1\n").unwrap();
    chmod(&admin, 0o644);
    let args = [format!("config={}", admin.display())];
    (t, open, args)
}

/// Slurm 22.05 runs the step after a failed remote init, without the
/// options init did not register: the task would run on the host.
#[test]
fn an_untrusted_admin_file_fails_every_task_in_slurmstepd() {
    let (_scratch, open, args) = untrusted_admin_file();
    for image in [Some("/i.sif"), None] {
        let mut p = Plugin::new(Some(my_uid()));
        let sp = Fake::remote();
        p.init(&sp, &args).unwrap();
        assert_eq!(
            sp.registered.borrow().len(),
            OPTIONS.len(),
            "options still arrive"
        );
        if let Some(image) = image {
            p.option_in(Opt::Image, Some(image), true).unwrap();
        }
        p.init_post_opt(&sp).unwrap();
        p.user_init(&sp).unwrap();
        assert!(p.holder.is_none(), "no holder is started");
        let task = Fake::remote();
        p.task_init(&task).unwrap_err();
        let log = task.log.borrow();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(
            log[0].starts_with("error: sifrun: config: ")
                && log[0].contains(&format!("{}: mode 0777", open.display()))
                && log[0].ends_with("(the task was not started)"),
            "{log:?}"
        );
    }
    // Where the user runs it (srun), the file is not root's to trust.
    let mut user = Plugin::new(None);
    user.init(&Fake::default(), &args).unwrap();
    // A bad plugstack.conf argument in slurmstepd: the same.
    let mut p = Plugin::new(Some(my_uid()));
    p.init(&Fake::remote(), &["bogus=1".to_owned()]).unwrap();
    let task = Fake::remote();
    p.task_init(&task).unwrap_err();
    assert!(task.log.borrow()[0].contains("unknown key \"bogus\""));
}

#[test]
fn remote_option_and_environment_errors_fail_every_task() {
    // An option slurmstepd refuses (Slurm goes on without it).
    let mut p = Plugin::new(None);
    p.option_in(Opt::Image, Some("/a.sif"), true).unwrap();
    p.option_in(Opt::Image, Some("/b.sif"), true).unwrap_err();
    p.task_init(&Fake::remote()).unwrap_err();
    // Locally the command fails by itself.
    let mut q = Plugin::new(None);
    q.option_in(Opt::Image, Some("/a.sif"), false).unwrap();
    q.option_in(Opt::Image, Some("/b.sif"), false).unwrap_err();
    assert!(q.unusable.is_none());
    // A job variable that does not parse: the image may be left unset.
    let mut sp = Fake::remote();
    sp.env.insert("SIFRUN_WORKDIR".into(), "relative".into());
    let mut p = Plugin::new(None);
    p.init_post_opt(&sp).unwrap();
    let task = Fake::remote();
    p.task_init(&task).unwrap_err();
    assert!(
        task.log.borrow()[0].contains("SIFRUN_WORKDIR"),
        "{:?}",
        task.log.borrow()
    );
}

#[test]
fn an_untrusted_runtime_dir_fails_a_container_step() {
    use std::os::unix::fs::MetadataExt;
    let me = my_uid();
    let t = crate::fake::scratch();
    let run = t.path().join("run");
    let step = |dir: &Path| {
        let mut p = Plugin::new(Some(me));
        p.settings.runtime_dir = Some(dir.to_owned());
        p.option_in(Opt::Image, Some("/i.sif"), true).unwrap();
        p.init_post_opt(&Fake::remote()).unwrap();
        p
    };
    // Made by root where it is missing, below a trusted directory.
    let p = step(&run);
    assert!(p.holder.is_none(), "{:?}", p.holder);
    assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o7777, 0o755);
    // Owned by someone else (the job's user, say): refused.
    if me == 0 {
        std::os::unix::fs::chown(&run, Some(1001), None).unwrap();
        let p = step(&run);
        let Some(HolderState::Failed(e)) = &p.holder else {
            panic!("{:?}", p.holder)
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("plugstack.conf: runtime_dir: ")
                && msg.contains(&format!("{}: owned by uid 1001", run.display())),
            "{msg}"
        );
        let task = Fake::remote();
        p.task_init(&task).unwrap_err();
        assert_eq!(task.log.borrow().len(), 1);
        std::os::unix::fs::chown(&run, Some(0), None).unwrap();
    }
    // Writable by others, or missing below such a directory: refused,
    // and root creates nothing there.
    chmod(&run, 0o1777);
    assert!(matches!(step(&run).holder, Some(HolderState::Failed(_))));
    let below = run.join("sub");
    assert!(matches!(step(&below).holder, Some(HolderState::Failed(_))));
    assert!(!below.exists());
    // A step without a container does not care.
    let mut p = Plugin::new(Some(me));
    p.settings.runtime_dir = Some(run.clone());
    p.init_post_opt(&Fake::remote()).unwrap();
    assert!(p.holder.is_none());
    p.task_init(&Fake::remote()).unwrap();
}

/// A job epilog under a configuration it cannot trust logs the cause and
/// succeeds: a failed job epilog drains the node (found live on 25.11),
/// and the steps that configuration governed have already failed closed.
#[test]
fn an_untrusted_admin_file_never_fails_the_job_epilog() {
    let (_scratch, open, args) = untrusted_admin_file();
    let mut p = Plugin::new(Some(my_uid()));
    let mut sp = Fake::remote();
    sp.job_id = Some(4242);
    sp.job_uid = Some(my_uid());
    p.job_epilog(&sp, &args).unwrap();
    let log = sp.log.borrow();
    assert!(
        log.iter()
            .any(|l| l.starts_with("error: sifrun: job 4242 epilog: ")
                && l.contains(&format!("{}: mode 0777", open.display()))
                && l.ends_with("records ignored")),
        "{log:?}"
    );
}

/// slurmstepd runs the lean holder beside `launcher=` for a local image
/// without an ECL; one others may change fails the step as an untrusted
/// launcher does; without one, the launcher runs (an older install).
#[test]
fn user_init_runs_the_lean_holder_beside_the_launcher() {
    let t = crate::fake::scratch();
    let launcher = t.path().join("sifrun");
    let lean = t.path().join(crate::holder::LEAN_HOLDER);
    for (path, who) in [(&launcher, "full"), (&lean, "lean")] {
        std::fs::write(path, format!("#!/bin/sh\necho {who} holder >&2\nexit 1\n")).unwrap();
        chmod(path, 0o755);
    }
    let started = |expected: &str| {
        let mut p = Plugin::new(Some(my_uid()));
        p.settings.launcher = Some(launcher.clone());
        p.option(Opt::Image, Some("/i.sif")).unwrap();
        p.user_init(&Fake::remote()).unwrap();
        let Some(HolderState::Failed(e)) = &p.holder else {
            panic!("{:?}", p.holder)
        };
        assert!(e.to_string().contains(expected), "{e}");
    };
    started("lean holder");
    chmod(&lean, 0o777);
    started(&format!("launcher: {}: mode 0777", lean.display()));
    std::fs::remove_file(&lean).unwrap();
    started("full holder");
}
