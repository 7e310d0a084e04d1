//! Network filesystems the host has mounted (Lustre, GPFS, NFS, BeeGFS,
//! CephFS, CIFS, and any type the admin adds), read from
//! `/proc/self/mountinfo`, to be bound into containers at the same paths.

use std::path::PathBuf;

use crate::is_under;

/// The filesystem types bound by default.
pub const DEFAULT_TYPES: &[&str] = &[
    "lustre",
    "gpfs",
    "nfs",
    "nfs4",
    "beegfs",
    "ceph",
    "cifs",
    "smb3",
    "fuse.ceph-fuse",
];

/// Unescapes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of network filesystems in `mountinfo` whose type is in
/// `types`, outermost only (a mount below another listed one comes with it
/// in a recursive bind), in mount order.
pub fn mounts(mountinfo: &str, types: &[&str]) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - TYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mountpoint) = left.split(' ').nth(4) else {
            continue;
        };
        let Some(fstype) = right.split(' ').next() else {
            continue;
        };
        if !types.contains(&fstype) {
            continue;
        }
        let p = PathBuf::from(unescape(mountpoint));
        if p.as_os_str() == "/" || found.iter().any(|f| is_under(&p, f)) {
            continue;
        }
        found.retain(|f| !is_under(f, &p));
        found.push(p);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 27 0:40 / /home rw,relatime shared:20 - nfs4 fs1:/home rw,vers=4.2
41 27 0:41 / /scratch rw,relatime - lustre 10.0.0.1@o2ib:/scratch rw,flock
42 41 0:42 / /scratch/project rw - lustre 10.0.0.1@o2ib:/proj rw
43 27 0:43 / /scratch2 rw - gpfs gpfs0 rw
44 27 0:44 / /data\\040sets rw - beegfs beegfs_nodev rw
45 27 0:45 / /tmp rw - tmpfs tmpfs rw
46 27 0:46 / /weka rw - wekafs wekafs rw
";

    #[test]
    fn network_filesystems_outermost_first() {
        assert_eq!(
            mounts(MOUNTINFO, DEFAULT_TYPES),
            ["/home", "/scratch", "/scratch2", "/data sets"].map(PathBuf::from)
        );
        let mut types = DEFAULT_TYPES.to_vec();
        types.push("wekafs");
        assert!(mounts(MOUNTINFO, &types).contains(&PathBuf::from("/weka")));
        assert!(mounts("garbage\n\n- x", DEFAULT_TYPES).is_empty());
    }
}
