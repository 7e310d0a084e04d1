//! What a Slurm step's MPI ranks need from the host for PMIx (measured on
//! this project's cluster, see docs/admin.md): the step's PMIx server
//! directory in slurmd's spool at the same path, munge's socket directory,
//! `/tmp` (spmix_appdir) and `/dev/shm` (bound with the host's /tmp and /dev
//! already), and the host network namespace (never unshared).

use std::path::{Component, PathBuf};

/// Host directories to bind at their own paths for the job environment
/// `env`; `exists` says whether a host path exists.
pub fn binds(env: &[(String, String)], exists: &dyn Fn(&std::path::Path) -> bool) -> Vec<PathBuf> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    if let Some(dir) = get("PMIX_SERVER_TMPDIR") {
        let p = PathBuf::from(dir.trim_end_matches('/'));
        let clean = p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if clean && exists(&p) {
            out.push(p);
        }
    }
    if get("PMIX_SERVER_TMPDIR").is_some()
        || get("SLURM_MPI_TYPE").is_some_and(|t| t.starts_with("pmix"))
    {
        let munge = PathBuf::from("/run/munge");
        if exists(&munge) {
            out.push(munge);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_server_directory_and_munge() {
        let env = vec![
            (
                "PMIX_SERVER_TMPDIR".to_owned(),
                "/var/lib/slurm/slurmd/pmix.18.0/".to_owned(),
            ),
            ("SLURM_MPI_TYPE".to_owned(), "pmix".to_owned()),
        ];
        let all = |_: &std::path::Path| true;
        assert_eq!(
            binds(&env, &all),
            ["/var/lib/slurm/slurmd/pmix.18.0", "/run/munge"].map(PathBuf::from)
        );
        assert!(binds(&[], &all).is_empty(), "no PMIx step, nothing");
        let hostile = vec![("PMIX_SERVER_TMPDIR".to_owned(), "/var/../etc".to_owned())];
        assert!(binds(&hostile, &|_| false).is_empty());
        assert_eq!(binds(&hostile, &all), [PathBuf::from("/run/munge")]);
    }
}
