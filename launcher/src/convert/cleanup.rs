//! Temporary files removed on every exit path: guards remove them when
//! dropped (errors, panics that unwind), and [`on_signals`] removes what
//! is registered when SIGINT, SIGTERM or SIGHUP arrives, then exits with
//! 128 + the signal (the shell's convention).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};

static PATHS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn paths() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    PATHS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes `p` (a file or a whole directory) if a stop signal arrives.
pub fn register(p: &Path) {
    paths().push(p.to_owned());
}

/// `p` is no longer the signal handler's to remove.
pub fn unregister(p: &Path) {
    paths().retain(|x| x != p);
}

fn remove(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Blocks the stop signals in this thread (call it before any thread
/// starts, so every thread inherits the mask; children get a clean mask
/// from `std::process`) and starts the thread that takes them.
pub fn on_signals() -> nix::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            let mut p = paths();
            for path in p.drain(..) {
                remove(&path);
            }
            eprintln!("sifrun: interrupted ({sig}), temporary files removed");
            std::process::exit(128 + sig as i32);
        }
    });
    Ok(())
}

/// Makes `path` with `mkdir` and registers it, holding the list's lock
/// across both: a stop signal removes it once made, and never removes a
/// path `mkdir` found already there (someone else's).
fn create_registered(
    path: &Path,
    mkdir: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut p = paths();
    mkdir(path)?;
    p.push(path.to_owned());
    Ok(())
}

/// A private temporary directory (mode 0700), removed with everything in
/// it when dropped or on a stop signal.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
}

impl TempDir {
    /// `.sifrun-pull.PID.RAND` in `parent`.
    pub(crate) fn new_in(parent: &Path) -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let pid = std::process::id();
        let mut last = None;
        for i in 0..16u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = parent.join(format!(
                ".sifrun-pull.{pid}.{:08x}",
                nanos ^ i.wrapping_mul(0x9e37_79b9)
            ));
            match create_registered(&path, |p| std::fs::DirBuilder::new().mode(0o700).create(p)) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no temporary name")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove(&self.path);
        unregister(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_registered_only_once_made_under_the_lock() {
        let parent = tempfile::tempdir().unwrap();
        let taken = parent.path().join("taken");
        std::fs::create_dir(&taken).unwrap();
        let e = create_registered(&taken, |p| {
            // The signal thread cannot look at the list while mkdir runs.
            assert!(matches!(
                PATHS.try_lock(),
                Err(std::sync::TryLockError::WouldBlock)
            ));
            std::fs::create_dir(p)
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(!paths().contains(&taken));
        let fresh = parent.path().join("fresh");
        create_registered(&fresh, |p| std::fs::create_dir(p)).unwrap();
        assert!(paths().contains(&fresh));
        unregister(&fresh);
    }

    #[test]
    fn temp_dirs_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let t = TempDir::new_in(parent.path()).unwrap();
        let mode = std::fs::metadata(&t.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::create_dir(t.path.join("d")).unwrap();
        std::fs::write(t.path.join("d/f"), b"x").unwrap();
        assert!(paths().contains(&t.path));
        let p = t.path.clone();
        drop(t);
        assert!(!p.exists());
        assert!(!paths().contains(&p));
    }
}
