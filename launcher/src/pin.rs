//! Pinning an image for the ECL: the bytes checked can only stay the bytes
//! served if nobody the ECL constrains can change the file. Checked on the
//! open descriptor that is then verified and served (never on a path):
//! a regular file, owned by root or by an owner the admin lists (never by
//! the job's user), writable by neither group nor others, with no ACL entry
//! granting write, on a filesystem the user cannot serve themselves (FUSE).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// `FUSE_SUPER_MAGIC`: a filesystem any user can mount and serve.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Why an image is not pinned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotPinned(pub String);

/// Who may own an admitted image, and who must not.
#[derive(Clone, Copy, Debug)]
pub struct Owners<'a> {
    /// Owners besides root the admin lists (`[ecl] owners`).
    pub listed: &'a [u32],
    /// The user the ECL constrains (never an acceptable owner unless root).
    pub user: u32,
}

/// Checks that `file` cannot be changed by `owners.user`.
pub fn check(file: &File, owners: Owners<'_>) -> Result<(), NotPinned> {
    // The filesystem first: another user's FUSE mount does not even let
    // root look (no allow_other), and any FUSE mount is refused.
    let fs = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| {
        NotPinned(format!(
            "cannot inspect its filesystem ({e}): a filesystem another user serves (FUSE) is refused"
        ))
    })?;
    #[allow(clippy::unnecessary_cast)]
    if fs.filesystem_type().0 as i64 == FUSE_SUPER_MAGIC {
        return Err(NotPinned(
            "it lies on a FUSE filesystem, whose server (any user's) chooses the bytes each read returns".into(),
        ));
    }
    let meta = file
        .metadata()
        .map_err(|e| NotPinned(format!("cannot inspect the open image: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(NotPinned("not a regular file".into()));
    }
    let owner = meta.uid();
    if owner == owners.user && owner != 0 {
        return Err(NotPinned(format!(
            "owned by you (uid {owner}): you could change it after the check; an admitted image must be owned by root{}",
            listed(owners.listed)
        )));
    }
    if owner != 0 && !owners.listed.contains(&owner) {
        return Err(NotPinned(format!(
            "owned by uid {owner}; an admitted image must be owned by root{}",
            listed(owners.listed)
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(NotPinned(format!(
            "mode {mode:04o} lets others write it; an admitted image is writable by its owner only"
        )));
    }
    if let Some(acl) = crate::syscall::file_acl(file.as_fd())
        .map_err(|e| NotPinned(format!("cannot read its ACL: {e}")))?
        && acl_grants_write(&acl)
    {
        return Err(NotPinned(
            "its ACL lets other users or groups write it".into(),
        ));
    }
    Ok(())
}

fn listed(owners: &[u32]) -> String {
    if owners.is_empty() {
        String::new()
    } else {
        let uids: Vec<String> = owners.iter().map(u32::to_string).collect();
        format!(" or uid {}", uids.join(", "))
    }
}

/// Whether a `system.posix_acl_access` value has a named user or group
/// entry with write permission (the owner's and the mode's entries are
/// checked through the mode). Unreadable ACL data counts as granting.
pub(crate) fn acl_grants_write(acl: &[u8]) -> bool {
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP: u16 = 0x08;
    const ACL_WRITE: u16 = 0x02;
    if acl.len() < 4 || !(acl.len() - 4).is_multiple_of(8) {
        return true;
    }
    acl[4..].chunks_exact(8).any(|e| {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        matches!(tag, ACL_USER | ACL_GROUP) && perm & ACL_WRITE != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use std::os::unix::fs::MetadataExt;

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn a_file_the_user_owns_or_others_may_write_is_not_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("i.sif");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        // As root (CI), give the file to an ordinary uid: the user.
        if me() == 0 {
            std::os::unix::fs::chown(&p, Some(4242), None).unwrap();
        }
        let owner = std::fs::metadata(&p).unwrap().uid();
        let f = File::open(&p).unwrap();
        // Read-only now, but the user owns it: chmod and rewrite later.
        let e = check(
            &f,
            Owners {
                listed: &[],
                user: owner,
            },
        )
        .unwrap_err();
        assert!(e.0.starts_with("owned by you"), "{e}");
        // Even when the admin lists the user as an owner.
        let e = check(
            &f,
            Owners {
                listed: &[owner],
                user: owner,
            },
        )
        .unwrap_err();
        assert!(e.0.starts_with("owned by you"), "{e}");
        // Checked for another user: not root's and not listed.
        let other = Owners {
            listed: &[],
            user: owner + 1,
        };
        let e = check(&f, other).unwrap_err();
        assert!(e.0.contains("must be owned by root"), "{e}");
        let listed = [owner];
        let trusted = Owners {
            listed: &listed,
            user: owner + 1,
        };
        check(&f, trusted).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o464)).unwrap();
        let e = check(&File::open(&p).unwrap(), trusted).unwrap_err();
        assert!(e.0.contains("mode 0464"), "{e}");
        let e = check(&File::open(dir.path()).unwrap(), trusted).unwrap_err();
        assert_eq!(e.0, "not a regular file");
    }

    #[test]
    fn acl_entries() {
        let entry = |tag: u16, perm: u16, id: u32| {
            let mut v = tag.to_le_bytes().to_vec();
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
            v
        };
        let mut acl = 2u32.to_le_bytes().to_vec();
        acl.extend(entry(0x01, 6, 0));
        acl.extend(entry(0x04, 4, 0));
        acl.extend(entry(0x20, 4, 0));
        assert!(!acl_grants_write(&acl));
        let mut named = acl.clone();
        named.extend(entry(0x02, 6, 1001));
        assert!(acl_grants_write(&named));
        let mut group_read = acl.clone();
        group_read.extend(entry(0x08, 4, 100));
        assert!(!acl_grants_write(&group_read));
        assert!(acl_grants_write(&acl[..7]));
    }
}
