//! The tasks' environment under Slurm: the holder computes the container's
//! environment from the job's, and reports the difference (see
//! [`crate::protocol::Report`]) for the plugin to apply in every task.

use crate::protocol::EnvChange;

/// Variables that belong to Slurm, PMIx and the launcher: neither the image
/// nor the user's settings change them in a task (nested steps and MPI
/// depend on them).
pub fn host_owned(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "SLURM_",
        "SLURMD_",
        "_SLURM_",
        "SPANK_",
        "PMIX_",
        "PMI_",
        "SIFRUN_",
        "APPTAINER_",
        "SINGULARITY_",
    ];
    const NAMES: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];
    PREFIXES.iter().any(|p| name.starts_with(p)) || NAMES.contains(&name)
}

/// The changes that turn the job's environment into the container's,
/// leaving [`host_owned`] variables alone.
pub fn delta(job: &[(String, String)], container: &[(String, String)]) -> Vec<EnvChange> {
    let find = |env: &[(String, String)], k: &str| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let mut out = Vec::new();
    for (k, v) in container {
        if !host_owned(k) && find(job, k).as_ref() != Some(v) {
            out.push(EnvChange::Set(k.clone(), v.clone()));
        }
    }
    for (k, _) in job {
        if !host_owned(k) && find(container, k).is_none() {
            out.push(EnvChange::Unset(k.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn delta_keeps_slurm_pmix_and_launcher_variables() {
        let job = env(&[
            ("PATH", "/host/bin"),
            ("LD_LIBRARY_PATH", "/host/lib"),
            ("SLURM_PROCID", "0"),
            ("PMIX_RANK", "0"),
            ("SIFRUN_IMAGE", "/i.sif"),
            ("USER", "alice"),
        ]);
        let container = env(&[
            ("PATH", "/opt/app/bin:/usr/bin"),
            ("SLURM_PROCID", "9"),
            ("PMIX_RANK", "9"),
            ("USER", "alice"),
            ("APP_HOME", "/opt/app"),
            ("SHLVL", "1"),
        ]);
        assert_eq!(
            delta(&job, &container),
            [
                EnvChange::Set("PATH".into(), "/opt/app/bin:/usr/bin".into()),
                EnvChange::Set("APP_HOME".into(), "/opt/app".into()),
                EnvChange::Unset("LD_LIBRARY_PATH".into()),
            ]
        );
    }
}
