//! A complete recording fake of [`Syscall`], for unit tests.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use super::Syscall;

/// A recording fake: every call is logged; call number `fail_at` (1-based)
/// fails with `fail_errno` (default `EPERM`), as do all calls on targets in
/// `fail_targets`.
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) calls: RefCell<Vec<String>>,
    pub(crate) fail_at: Option<usize>,
    pub(crate) fail_targets: Vec<PathBuf>,
    pub(crate) fail_errno: Option<i32>,
    pub(crate) proc_fails: bool,
}

impl Fake {
    fn record(&self, call: String, target: Option<&Path>) -> io::Result<()> {
        let mut calls = self.calls.borrow_mut();
        calls.push(call);
        let n = calls.len();
        if Some(n) == self.fail_at
            || target.is_some_and(|t| self.fail_targets.iter().any(|f| f == t))
        {
            return Err(io::Error::from_raw_os_error(
                self.fail_errno.unwrap_or(libc::EPERM),
            ));
        }
        Ok(())
    }

    /// The log, one call per line.
    pub(crate) fn log(&self) -> String {
        self.calls
            .borrow()
            .iter()
            .map(|c| format!("{c}\n"))
            .collect()
    }
}

impl Syscall for Fake {
    fn unshare_user_mount(&self) -> io::Result<()> {
        self.record("unshare user,mount".into(), None)
    }
    fn write_self_proc(&self, file: &str, text: &str) -> io::Result<()> {
        self.record(format!("write /proc/self/{file} {:?}", text), None)
    }
    fn make_mounts_private(&self) -> io::Result<()> {
        self.record("make-private /".into(), None)
    }
    fn open_source(&self, path: &Path) -> io::Result<()> {
        self.record(format!("open-source {}", path.display()), Some(path))
    }
    fn mount_staging(&self, dir: &Path) -> io::Result<PathBuf> {
        self.record(format!("staging {} unbindable", dir.display()), Some(dir))?;
        Ok(dir.join("root"))
    }
    fn write_generated(&self, name: &str, bytes: &[u8], executable: bool) -> io::Result<()> {
        self.record(
            format!(
                "write-generated {name} {} bytes{}",
                bytes.len(),
                if executable { " executable" } else { "" }
            ),
            None,
        )
    }
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        let op = if recursive { "rbind" } else { "bind" };
        self.record(
            format!("{op} {} {}", source.display(), target.display()),
            Some(target),
        )
    }
    fn bind_generated(&self, name: &str, target: &Path) -> io::Result<()> {
        self.record(
            format!("bind-generated {name} {}", target.display()),
            Some(target),
        )
    }
    fn mount_proc(&self, target: &Path) -> io::Result<()> {
        let r = self.record(format!("proc {}", target.display()), Some(target));
        if self.proc_fails {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        r
    }
    fn mount_tmpfs(&self, target: &Path) -> io::Result<()> {
        self.record(format!("tmpfs {}", target.display()), Some(target))
    }
    fn remount(
        &self,
        target: &Path,
        readonly: bool,
        nodev: bool,
        recursive: bool,
    ) -> io::Result<()> {
        let mut f = vec!["nosuid"];
        if readonly {
            f.push("ro");
        }
        if nodev {
            f.push("nodev");
        }
        if recursive {
            f.push("submounts:nosuid,nodev");
        }
        self.record(
            format!("remount {} {}", target.display(), f.join(",")),
            None,
        )
    }
    fn overlay_root(&self) -> io::Result<()> {
        self.record("overlay-root".into(), None)
    }
    fn pivot_root(&self) -> io::Result<()> {
        self.record("pivot-root".into(), None)
    }
    fn chdir(&self, path: &Path) -> io::Result<()> {
        self.record(format!("chdir {}", path.display()), Some(path))
    }
    fn unshare_mount(&self) -> io::Result<()> {
        self.record("unshare mount".into(), None)
    }
    fn bind_image(&self, image_root: &Path) -> io::Result<()> {
        self.record(format!("bind-image {}", image_root.display()), None)
    }
    fn create_target(&self, path: &Path, kind: crate::fuse::TargetKind) -> io::Result<()> {
        self.record(
            format!("create-target {} {kind:?}", path.display()),
            Some(path),
        )
    }
    fn seal_root(&self) -> io::Result<()> {
        self.record("seal-root ro".into(), None)
    }
}
