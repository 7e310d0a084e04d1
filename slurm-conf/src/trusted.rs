//! Paths that steer code running as root (the admin file, the ECL keyring,
//! the launcher slurmstepd starts, the runtime directory) must be
//! changeable by no one but root (or another owner the caller trusts):
//! the file itself and every directory above it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why a path cannot be trusted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct Untrusted {
    /// The offending path (the file or one of its directories).
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

fn untrusted(path: &Path, reason: String) -> Untrusted {
    Untrusted {
        path: path.to_owned(),
        reason,
    }
}

/// Checks one directory above a trusted path: owned by root or `owner`,
/// writable by no one else. A sticky bit does not help: in a sticky
/// directory others still create names (a component not there yet, a
/// sibling to race with), so /tmp is never above a trusted path.
fn check_dir(dir: &Path, owner: u32) -> Result<(), Untrusted> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| untrusted(dir, e.to_string()))?;
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(untrusted(
            dir,
            format!("owned by uid {}, must be owned by root", meta.uid()),
        ));
    }
    if meta.file_type().is_dir() && meta.mode() & 0o022 != 0 {
        let sticky = if meta.mode() & 0o1000 != 0 {
            ", sticky or not"
        } else {
            ""
        };
        return Err(untrusted(
            dir,
            format!(
                "mode {:04o} lets others write it{sticky} (and replace or add what is in it); \
                 make it 0755 or move the path out of it",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Checks every directory above `path`, as written and as resolved.
pub fn check_parents(path: &Path, owner: u32) -> Result<(), Untrusted> {
    let mut dirs: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_path_buf).collect();
    if let Some(real) = path.parent().and_then(|p| std::fs::canonicalize(p).ok()) {
        dirs.extend(real.ancestors().map(Path::to_path_buf));
    }
    for dir in dirs.iter().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir, owner)?;
    }
    Ok(())
}

/// Checks a file root runs or reads, or a directory root writes in: it and
/// its directories belong to root or `owner` and are writable by no one
/// else (the path itself never, sticky or not). A symlink is followed, so
/// the directories above its target are checked too: a link in a trusted
/// directory to a file in one others may write lets them swap the file.
pub fn check_file(path: &Path, owner: u32) -> Result<(), Untrusted> {
    check_parents(path, owner)?;
    if let Ok(real) = std::fs::canonicalize(path)
        && real != path
    {
        check_parents(&real, owner)?;
    }
    let meta = std::fs::metadata(path).map_err(|e| untrusted(path, e.to_string()))?;
    if meta.uid() != 0 && meta.uid() != owner {
        return Err(untrusted(
            path,
            format!("owned by uid {}, must be owned by root", meta.uid()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!("mode {:04o} lets others write it", meta.mode() & 0o7777),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn files_and_their_directories_must_be_root_or_the_owners() {
        let me = nix_uid();
        let t = scratch();
        let dir = t.path().join("bin");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let file = dir.join("sifrun");
        std::fs::write(&file, "x").unwrap();
        chmod(&file, 0o755);
        check_file(&file, me).unwrap();
        chmod(&file, 0o775);
        let e = check_file(&file, me).unwrap_err();
        assert_eq!(e.path, file);
        assert!(e.reason.contains("lets others write it"), "{e}");
        chmod(&file, 0o755);
        // A directory above that others may write: anyone could swap the file.
        chmod(&dir, 0o777);
        let e = check_file(&file, me).unwrap_err();
        assert_eq!(e.path, dir, "{e}");
        chmod(&dir, 0o755);
        // Another owner than root or the trusted one.
        let other = if me == 0 { 1 } else { me + 1 };
        if me != 0 {
            assert!(check_file(&file, other).is_err());
        }
        assert!(check_file(&t.path().join("missing"), me).is_err());
    }

    #[test]
    fn a_link_to_a_file_in_a_directory_others_may_write_is_not_trusted() {
        let me = nix_uid();
        let t = scratch();
        let (bin, open) = (t.path().join("bin"), t.path().join("open"));
        for d in [&bin, &open] {
            std::fs::create_dir(d).unwrap();
            chmod(d, 0o755);
        }
        let target = open.join("sifrun-hold");
        std::fs::write(&target, "x").unwrap();
        chmod(&target, 0o755);
        let link = bin.join("sifrun-hold");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        check_file(&link, me).unwrap();
        chmod(&open, 0o777);
        let e = check_file(&link, me).unwrap_err();
        assert_eq!(e.path, std::fs::canonicalize(&open).unwrap(), "{e}");
    }

    #[test]
    fn a_sticky_directory_others_may_write_is_no_trusted_parent() {
        let me = nix_uid();
        let t = scratch();
        let dir = t.path().join("tmp");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("sifrun");
        std::fs::write(&file, "x").unwrap();
        chmod(&file, 0o755);
        // As /tmp: others create names there (a missing component, a
        // sibling to race with), though they cannot replace the file.
        for mode in [0o1777, 0o1770, 0o1757] {
            chmod(&dir, mode);
            let e = check_file(&file, me).unwrap_err();
            assert_eq!(e.path, dir, "{mode:o}: {e}");
            assert!(
                e.reason.contains("sticky or not") && e.reason.contains("make it 0755"),
                "{e}"
            );
            // A name in it that does not exist yet: the same.
            let e = check_parents(&dir.join("not-yet"), me).unwrap_err();
            assert_eq!(e.path, dir, "{e}");
        }
        chmod(&dir, 0o1755);
        check_file(&file, me).unwrap();
        // /tmp itself, wherever a test machine has it sticky and open.
        let tmp = Path::new("/tmp");
        if std::fs::metadata(tmp).is_ok_and(|m| m.mode() & 0o1022 == 0o1022) {
            let e = check_parents(&tmp.join("sifrun-stage"), me).unwrap_err();
            assert_eq!(e.path, tmp, "{e}");
        }
    }

    fn nix_uid() -> u32 {
        std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap()
    }
}
