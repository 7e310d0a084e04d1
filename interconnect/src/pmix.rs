//! What a Slurm step's MPI ranks need from the host for PMIx (measured on
//! this project's cluster, see docs/admin.md): the step's PMIx server
//! directory in slurmd's spool at the same path, munge's socket directory,
//! `/tmp` (spmix_appdir) and `/dev/shm` (bound with the host's /tmp and /dev
//! already), and the host network namespace (never unshared).

use std::path::{Component, PathBuf};

/// Host directories to bind at their own paths for a step whose job
/// environment is `env`: slurmd's spool directory (the step's
/// `pmix.JOB.STEP` server directory is created there, possibly after the
/// container is made, so the parent is bound) and munge's socket
/// directory, when the step uses PMIx. `exists` says whether a host path
/// exists.
pub fn binds(
    env: &[(String, String)],
    spool: &std::path::Path,
    exists: &dyn Fn(&std::path::Path) -> bool,
) -> Vec<PathBuf> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let pmix = get("PMIX_SERVER_TMPDIR").is_some()
        || get("SLURM_MPI_TYPE").is_some_and(|t| t.starts_with("pmix"));
    if !pmix {
        return Vec::new();
    }
    let mut out = Vec::new();
    let clean = spool.is_absolute()
        && spool
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean && exists(spool) {
        out.push(spool.to_path_buf());
    }
    let munge = PathBuf::from("/run/munge");
    if exists(&munge) {
        out.push(munge);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_spool_directory_and_munge_for_pmix_steps() {
        let env = vec![("SLURM_MPI_TYPE".to_owned(), "pmix".to_owned())];
        let all = |_: &Path| true;
        // slurm.conf's SlurmdSpoolDir (read by slurm_conf::slurm).
        let spool = PathBuf::from("/var/lib/slurm/slurmd");
        assert_eq!(
            binds(&env, &spool, &all),
            ["/var/lib/slurm/slurmd", "/run/munge"].map(PathBuf::from)
        );
        assert!(binds(&[], &spool, &all).is_empty(), "no PMIx step, nothing");
        assert_eq!(
            binds(&env, Path::new("/var/../etc"), &all),
            [PathBuf::from("/run/munge")]
        );
    }
}
