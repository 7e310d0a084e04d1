//! The namespace builder of the privileged path: a child of the root
//! holder. It enters a new mount namespace (owned by the initial user
//! namespace: no process of the user's can enter it or mount in it),
//! mounts the verified partition with the kernel's squashfs, plans the
//! container exactly as the unprivileged path does (the image read through
//! that mount, the host through an opener that is the user), stages and
//! applies the plan, and evaluates the environment scripts as the user.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sys::stat::Mode;
use slurm_conf::protocol::{Report, Stage};

use super::UserCreds;
use super::nsdir::NsDir;
use super::opener::Opener;
use super::tree::{DirTree, OpenedHost};
use crate::apply::apply;
use crate::command::Action;
use crate::hold::{Holding, ready_report};
use crate::launch::{Launch, host, prepare_with};
use crate::syscall::{Linux, Syscall};

/// Builds the container; writes the report line on `report` and, when
/// ready, waits for the holder to pin the namespace (`go` closes).
/// Returns the exit status.
pub(super) fn run(
    l: &Launch,
    user: &UserCreds,
    loop_path: &Path,
    ns: &NsDir,
    report: OwnedFd,
    go: OwnedFd,
) -> i32 {
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let line = match build(l, user, loop_path, ns) {
        Ok(r) | Err(r) => r.encode_line(),
    };
    let mut report = File::from(report);
    if report.write_all(line.as_bytes()).is_err() {
        return 1;
    }
    drop(report);
    // Stay until the namespace is pinned (the holder closes `go`).
    let _ = File::from(go).read(&mut [0u8; 1]);
    0
}

fn failed(stage: Stage) -> impl Fn(String) -> Report {
    move |m| Report::failed(stage, m)
}

/// The namespace, the plan, the root, the environment.
fn build(l: &Launch, user: &UserCreds, loop_path: &Path, ns: &NsDir) -> Result<Report, Report> {
    let setup = failed(Stage::Setup);
    let Action::Hold(hold) = &l.action else {
        return Err(setup(
            "the privileged path only holds a step's container".into(),
        ));
    };
    let t = std::time::Instant::now();
    let bare = Linux::default();
    bare.unshare_mount()
        .map_err(|e| setup(format!("a new mount namespace: {e}")))?;
    bare.make_mounts_private()
        .map_err(|e| setup(format!("making mounts private: {e}")))?;
    drop(bare);
    let image_dir = ns.image();
    mount(
        Some(loop_path),
        &image_dir,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| {
        // The kernel says which compressor it lacks only in its log.
        let hint = match e {
            nix::Error::EINVAL => {
                " (does this kernel's squashfs have the image's compressor? its log names it; \
                 lz4, sifrun build's default, needs CONFIG_SQUASHFS_LZ4)"
            }
            _ => "",
        };
        failed(Stage::Image)(format!(
            "{}: mounting the verified squashfs: {e}{hint}",
            l.image.display()
        ))
    })?;
    let root_fd = nix::fcntl::open(
        &image_dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| setup(format!("{}: {e}", image_dir.display())))?;
    let tree = DirTree::new(root_fd);
    crate::launch::phase_done("mount the verified squashfs", t);
    // The user's opener lives in this namespace, so that its descriptors
    // can be bound here.
    let opener = Opener::start(user).map_err(|e| setup(format!("starting the opener: {e}")))?;
    let host_fs = OpenedHost::new(&opener);
    let facts =
        host::host_facts_of(user.uid, user.gid, &user.groups).map_err(|e| setup(e.to_string()))?;
    let side = host::gather(l, facts).map_err(|e| setup(e.to_string()))?;
    let prepared =
        prepare_with(l, &tree, &host_fs, &side).map_err(|e| failed(Stage::Image)(e.to_string()))?;
    for path in crate::stage::sources(&prepared.plan) {
        host_fs.ensure(&path);
    }
    let sys = Linux::with_sources(host_fs.into_sources());
    drop(opener);
    let mut plan = prepared.plan.clone();
    mount_root(&plan, &sys, &image_dir).map_err(|e| setup(e.to_string()))?;
    plan.writable_tmpfs = false;
    let t = std::time::Instant::now();
    apply(&plan, &sys).map_err(|e| setup(format!("setting up the container: {e}")))?;
    crate::launch::phase_done("apply", t);
    drop(sys);
    // The environment scripts run as the user, never as root; nothing
    // started from here gains privileges.
    nix::sys::prctl::set_no_new_privs().map_err(|e| setup(format!("no-new-privileges: {e}")))?;
    let holding = Holding {
        plan: &prepared.plan,
        env: &prepared.env,
        through_shell: prepared.wrapped,
        job_env: &side.env,
        slurm_client: hold.slurm_client && prepared.client,
        quiet: None,
        warm: None,
    };
    ready_report(&holding, Some((user.uid, user.gid)))
}

/// Stages the plan and puts the image under the root: the verified
/// squashfs, an overlay holding the mount targets the image lacks, the
/// root then read-only (unless `--sif-writable-tmpfs`).
fn mount_root(
    plan: &crate::plan::Plan,
    sys: &dyn Syscall,
    image_dir: &Path,
) -> Result<(), crate::launch::LaunchError> {
    let setup = |what: &str| crate::launch::setup(what.to_owned());
    crate::stage::stage_area(plan, sys)?;
    sys.bind_image(image_dir)
        .map_err(setup("binding the image under the root"))?;
    sys.overlay_root()
        .map_err(setup("the overlay for missing mount targets"))?;
    for (path, kind) in &plan.synth {
        sys.create_target(path, *kind).map_err(setup(&format!(
            "creating the mount target {}",
            path.display()
        )))?;
    }
    if !plan.writable_tmpfs {
        sys.seal_root()
            .map_err(setup("making the root read-only"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{FakeTree, host};
    use crate::plan::{PlanInput, RunOptions, plan};
    use crate::syscall::Fake;

    #[test]
    fn the_privileged_root_golden() {
        let (facts, fs) = host();
        let opts = RunOptions::default();
        let tree = FakeTree::new(&["/etc/", "/proc/", "/sys/", "/dev/", "/tmp/", "/var/"]);
        let p = plan(&PlanInput::new(&opts, &facts), &fs, &tree).unwrap();
        let fake = Fake::default();
        mount_root(&p, &fake, Path::new("/run/sifrun/7.0.ns/image")).unwrap();
        let log = fake.log();
        let at = |s: &str| log.find(s).unwrap_or_else(|| panic!("{s} missing:\n{log}"));
        assert!(!log.contains("unshare user"), "no user namespace: {log}");
        assert!(at("staging /tmp") < at("bind-image /run/sifrun/7.0.ns/image"));
        assert!(at("bind-image") < at("overlay-root"));
        assert!(at("overlay-root") < at("create-target /var/tmp Dir"));
        assert!(at("create-target /home/alice Dir") < at("seal-root ro"));
        assert!(log.ends_with("seal-root ro\n"), "{log}");
        // Every step can fail, and the failure names it.
        let total = fake.calls.borrow().len();
        for n in 1..=total {
            let f = Fake {
                fail_at: Some(n),
                ..Fake::default()
            };
            let e = mount_root(&p, &f, Path::new("/i")).unwrap_err();
            assert_eq!(f.calls.borrow().len(), n, "{e}");
        }
        // --sif-writable-tmpfs keeps the overlay writable.
        let mut w = p.clone();
        w.writable_tmpfs = true;
        let fake = Fake::default();
        mount_root(&w, &fake, Path::new("/i")).unwrap();
        assert!(!fake.log().contains("seal-root"));
    }
}
