//! Carries out a [`Plan`] over the [`Syscall`] seam: mounts in plan order,
//! each remounted nosuid (and nodev, and read-only where asked), then
//! `pivot_root` and the working directory.

use std::io;
use std::path::{Path, PathBuf};

use crate::plan::{Plan, Source};
use crate::syscall::Syscall;

/// A failed step, naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("mounting {what} on {}{via}: {source}", target.display())]
    Mount {
        what: String,
        target: PathBuf,
        /// Where the image's links led the target, when elsewhere.
        via: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "--writable-tmpfs: the kernel refused an overlay in the user namespace ({0}); it needs Linux 5.11 or newer"
    )]
    Overlay(#[source] io::Error),
    #[error("switching to the container root: {0}")]
    PivotRoot(#[source] io::Error),
    #[error("--pwd: {}: {source}", path.display())]
    Pwd {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the container started, for the caller to report.
#[derive(Debug, PartialEq, Eq)]
pub struct Applied {
    pub cwd: PathBuf,
    /// Set when the host working directory does not exist in the container.
    pub cwd_fallback: bool,
}

/// Runs `op`, again up to twice more when the kernel answers EINVAL. A
/// recursive bind copies whatever the host has mounted below the source at
/// that instant, and a submount going away meanwhile can make the call fail
/// once. (CI's EINVAL binding /tmp beside another test's FUSE mount was a
/// plain bind over a locked submount, which no retry cures: host
/// directories are bound recursively since.) Any other error, or a third
/// EINVAL, is final.
fn transient(mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && tries < 2 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => return r,
        }
    }
}

/// Applies `plan` with `sys`.
pub fn apply(plan: &Plan, sys: &dyn Syscall) -> Result<Applied, ApplyError> {
    if plan.writable_tmpfs {
        sys.overlay_root().map_err(ApplyError::Overlay)?;
    }
    for m in &plan.mounts {
        let target = &m.resolved;
        let (what, result) = match &m.source {
            Source::Host { path, recursive } => (
                path.display().to_string(),
                transient(|| sys.bind(path, target, *recursive)),
            ),
            Source::Generated(name) => (
                format!("the generated /etc/{name}"),
                sys.bind_generated(name, target),
            ),
            Source::Proc => {
                // A new procfs needs the PID namespace; where the kernel
                // refuses it (a locked /proc), the host's is bound instead.
                let r = sys
                    .mount_proc(target)
                    .or_else(|_| sys.bind(Path::new("/proc"), target, true));
                ("proc".into(), r)
            }
            Source::Tmpfs => ("tmpfs".into(), sys.mount_tmpfs(target)),
        };
        let mount_err = |source| ApplyError::Mount {
            what: what.clone(),
            target: m.target.clone(),
            via: if m.resolved == m.target {
                String::new()
            } else if m.in_host_dir {
                format!(
                    " (the image links it to {}, in a directory bound from the host, which is not changed)",
                    m.resolved.display()
                )
            } else {
                format!(" (the image links it to {})", m.resolved.display())
            },
            source,
        };
        result.map_err(mount_err)?;
        // A recursive bind brings the host's submounts along: each gets
        // nosuid and nodev too (a procfs fallen back to the host's bind has
        // none worth keeping either).
        let recursive = matches!(
            m.source,
            Source::Host {
                recursive: true,
                ..
            } | Source::Proc
        );
        transient(|| sys.remount(target, m.readonly, !m.allow_devices, recursive))
            .map_err(mount_err)?;
    }
    sys.pivot_root().map_err(ApplyError::PivotRoot)?;
    match sys.chdir(&plan.cwd) {
        Ok(()) => Ok(Applied {
            cwd: plan.cwd.clone(),
            cwd_fallback: false,
        }),
        Err(source) if plan.cwd_required => Err(ApplyError::Pwd {
            path: plan.cwd.clone(),
            source,
        }),
        Err(_) => {
            let fallback = [plan.home.as_path(), Path::new("/")]
                .into_iter()
                .find(|p| sys.chdir(p).is_ok())
                .unwrap_or(Path::new("/"));
            Ok(Applied {
                cwd: fallback.to_owned(),
                cwd_fallback: true,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{FakeTree, host};
    use crate::plan::{PlanInput, RunOptions, plan};
    use crate::syscall::Fake;

    fn small_plan(opts: RunOptions) -> Plan {
        let (facts, fs) = host();
        let tree = FakeTree::new(&[
            "/etc/",
            "/proc/",
            "/sys/",
            "/dev/",
            "/tmp/",
            "/var/",
            "/var/tmp/",
        ]);
        plan(&PlanInput::new(&opts, &facts), &fs, &tree).unwrap()
    }

    #[test]
    fn apply_golden() {
        let p = small_plan(RunOptions::default());
        let fake = Fake::default();
        let applied = apply(&p, &fake).unwrap();
        assert_eq!(applied.cwd, Path::new("/scratch/run"));
        let want = "\
proc /proc
remount /proc nosuid,nodev,submounts:nosuid,nodev
rbind /sys /sys
remount /sys nosuid,nodev,submounts:nosuid,nodev
rbind /dev /dev
remount /dev nosuid,submounts:nosuid,nodev
rbind /tmp /tmp
remount /tmp nosuid,nodev,submounts:nosuid,nodev
rbind /var/tmp /var/tmp
remount /var/tmp nosuid,nodev,submounts:nosuid,nodev
rbind /home/alice /home/alice
remount /home/alice nosuid,nodev,submounts:nosuid,nodev
rbind /scratch/run /scratch/run
remount /scratch/run nosuid,nodev,submounts:nosuid,nodev
bind /etc/localtime /etc/localtime
remount /etc/localtime nosuid,ro,nodev
bind /etc/hosts /etc/hosts
remount /etc/hosts nosuid,ro,nodev
bind /etc/resolv.conf /etc/resolv.conf
remount /etc/resolv.conf nosuid,ro,nodev
bind-generated passwd /etc/passwd
remount /etc/passwd nosuid,ro,nodev
bind-generated group /etc/group
remount /etc/group nosuid,ro,nodev
pivot-root
chdir /scratch/run
";
        assert_eq!(fake.log(), want);
    }

    #[test]
    fn every_step_can_fail_and_stops_there() {
        let p = small_plan(RunOptions::default());
        let total = {
            let f = Fake::default();
            apply(&p, &f).unwrap();
            f.calls.borrow().len()
        };
        for n in 1..total {
            let fake = Fake {
                fail_at: Some(n),
                ..Fake::default()
            };
            let r = apply(&p, &fake);
            let calls = fake.calls.borrow();
            let failed = &calls[n - 1];
            if failed.starts_with("proc ") {
                // proc falls back to binding the host's /proc.
                assert!(r.is_ok(), "step {n} ({failed}) should fall back");
                assert_eq!(calls[n], "rbind /proc /proc");
                continue;
            }
            if failed.starts_with("chdir") {
                assert!(r.is_ok(), "a missing cwd falls back to home");
                continue;
            }
            let e = r.expect_err(&format!("step {n} ({failed}) must fail the launch"));
            assert_eq!(
                calls.len(),
                n,
                "nothing runs after the failed step {failed}"
            );
            assert!(!calls.iter().any(|c| c == "pivot-root") || failed == "pivot-root");
            let msg = e.to_string();
            assert!(!msg.is_empty());
        }
    }

    #[test]
    fn a_transient_einval_is_tried_again_and_a_lasting_one_fails() {
        let p = small_plan(RunOptions::default());
        let clean = Fake::default();
        apply(&p, &clean).unwrap();
        let n = clean
            .calls
            .borrow()
            .iter()
            .position(|c| c.starts_with("rbind /sys"))
            .unwrap();
        let fake = Fake {
            fail_at: Some(n + 1),
            fail_errno: Some(libc::EINVAL),
            ..Fake::default()
        };
        apply(&p, &fake).unwrap();
        let calls = fake.calls.borrow();
        assert_eq!(calls[n], calls[n + 1], "the failed call is made again");
        assert_eq!(calls.len(), clean.calls.borrow().len() + 1);
        drop(calls);
        let fake = Fake {
            fail_targets: vec!["/tmp".into()],
            fail_errno: Some(libc::EINVAL),
            ..Fake::default()
        };
        let e = apply(&p, &fake).unwrap_err();
        assert!(e.to_string().contains("Invalid argument"), "{e}");
        let tries = fake
            .calls
            .borrow()
            .iter()
            .filter(|c| c.ends_with(" /tmp"))
            .count();
        assert_eq!(tries, 3);
    }

    #[test]
    fn failures_name_the_target() {
        let p = small_plan(RunOptions::default());
        let fake = Fake {
            fail_targets: vec!["/home/alice".into()],
            ..Fake::default()
        };
        let e = apply(&p, &fake).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mounting /home/alice on /home/alice: Operation not permitted (os error 1)"
        );
    }

    #[test]
    fn required_pwd_and_overlay() {
        let p = small_plan(RunOptions {
            pwd: Some("/nope".into()),
            writable_tmpfs: true,
            ..RunOptions::default()
        });
        let fake = Fake {
            fail_targets: vec!["/nope".into()],
            ..Fake::default()
        };
        let e = apply(&p, &fake).unwrap_err();
        assert!(e.to_string().starts_with("--pwd: /nope"), "{e}");
        assert_eq!(fake.calls.borrow()[0], "overlay-root");

        let fake = Fake {
            fail_at: Some(1),
            ..Fake::default()
        };
        let e = apply(&p, &fake).unwrap_err();
        assert!(e.to_string().contains("--writable-tmpfs"), "{e}");
    }
}
