//! Slurm's `oci.conf`, found the way Slurm finds it.
//!
//! Where it exists, Slurm runs `--container` itself: slurmstepd's
//! `setup_container` (`src/slurmd/slurmstepd/container.c`) reads it with
//! `get_oci_conf` (`src/common/oci_config.c`) for every step that has a
//! container, and only when `stat()` fails does it ignore the option. Any
//! file `stat()` finds counts: an empty one fails the step, one Slurm
//! cannot parse kills slurmstepd. The path is `get_extra_conf_path("oci.conf")`
//! (`src/common/read_config.c`): the directory of the process's
//! `SLURM_CONF` (slurmd always exports the slurm.conf it uses, configless
//! cache included, so slurmstepd inherits it; srun sets it when it loads
//! its configuration), else of Slurm's compiled-in default. This is the
//! same from Slurm 22.05 to 25.11.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::slurm::DEFAULT_SLURM_CONF;

/// The file's name, beside slurm.conf.
pub const OCI_CONF: &str = "oci.conf";

/// The oci.conf Slurm reads with the slurm.conf `slurm_conf` names (the
/// process's `SLURM_CONF`; `None` when unset: Slurm's default). As Slurm
/// does, the last `/` of `SLURM_CONF` ends the directory; a value without
/// one leaves a relative `oci.conf`.
pub fn oci_conf_path(slurm_conf: Option<&OsStr>) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let conf = slurm_conf.unwrap_or(OsStr::new(DEFAULT_SLURM_CONF));
    let bytes = conf.as_bytes();
    match bytes.iter().rposition(|&b| b == b'/') {
        Some(i) => Path::new(OsStr::from_bytes(&bytes[..=i])).join(OCI_CONF),
        None => PathBuf::from(OCI_CONF),
    }
}

/// The site's oci.conf, when Slurm would find one (and so run `--container`
/// itself): anything `stat()` finds at [`oci_conf_path`], an empty or
/// unreadable file included.
pub fn site_oci_conf(slurm_conf: Option<&OsStr>) -> Option<PathBuf> {
    let path = oci_conf_path(slurm_conf);
    std::fs::metadata(&path).is_ok().then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_the_slurm_conf_in_use() {
        let p = |v: Option<&str>| oci_conf_path(v.map(OsStr::new));
        assert_eq!(p(None), Path::new("/etc/slurm/oci.conf"));
        assert_eq!(
            p(Some("/var/spool/slurmd/conf-cache/slurm.conf")),
            Path::new("/var/spool/slurmd/conf-cache/oci.conf")
        );
        assert_eq!(
            p(Some("/opt/slurm/etc/site.conf")),
            Path::new("/opt/slurm/etc/oci.conf")
        );
        assert_eq!(p(Some("/slurm.conf")), Path::new("/oci.conf"));
        assert_eq!(p(Some("slurm.conf")), Path::new("oci.conf"));
        assert_eq!(p(Some("")), Path::new("oci.conf"));
    }

    #[test]
    fn any_file_stat_finds_counts() {
        let dir = crate::scratch();
        let conf = dir.path().join("slurm.conf");
        let env = Some(conf.as_os_str());
        assert_eq!(site_oci_conf(env), None);
        let oci = dir.path().join(OCI_CONF);
        // Empty: Slurm still takes --container (and fails the step).
        std::fs::write(&oci, "").unwrap();
        assert_eq!(site_oci_conf(env), Some(oci.clone()));
        std::fs::remove_file(&oci).unwrap();
        // A dangling link: stat() fails, Slurm ignores --container.
        std::os::unix::fs::symlink(dir.path().join("gone"), &oci).unwrap();
        assert_eq!(site_oci_conf(env), None);
    }
}
