//! What the step's container holder (`sifrun slurm-hold`) tells the plugin
//! on its standard output: the changes the image and the user's settings
//! make to the tasks' environment, then `ready`. Names and values travel
//! hex-encoded, so any byte (newlines included) survives.
//!
//! ```text
//! env 50415448 2f7573722f62696e     PATH=/usr/bin
//! unset 4c445f4c4942524152595f50415448
//! ready
//! ```

/// One change to a task's environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvChange {
    Set(String, String),
    Unset(String),
}

/// The last line of a holder that is ready.
pub const READY: &str = "ready";

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

impl EnvChange {
    /// The line the holder prints (without the newline).
    pub fn encode(&self) -> String {
        match self {
            EnvChange::Set(k, v) => format!("env {} {}", hex(k), hex(v)),
            EnvChange::Unset(k) => format!("unset {}", hex(k)),
        }
    }

    /// Parses one line; `None` for anything else.
    pub fn decode(line: &str) -> Option<EnvChange> {
        let mut words = line.trim_end().split(' ');
        let change = match (words.next()?, words.next(), words.next()) {
            ("env", Some(k), Some(v)) => EnvChange::Set(unhex(k)?, unhex(v)?),
            ("env", Some(k), None) => EnvChange::Set(unhex(k)?, String::new()),
            ("unset", Some(k), None) => EnvChange::Unset(unhex(k)?),
            _ => return None,
        };
        words.next().is_none().then_some(change)
    }
}

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
    fn lines_round_trip_any_bytes() {
        for c in [
            EnvChange::Set("A".into(), "x y\nz=1 'q'".into()),
            EnvChange::Set("EMPTY".into(), String::new()),
            EnvChange::Unset("LD_LIBRARY_PATH".into()),
        ] {
            let line = c.encode();
            assert!(!line.contains('\n'));
            assert_eq!(EnvChange::decode(&line), Some(c));
        }
        for bad in [
            "",
            "ready",
            "env zz 00",
            "env 4",
            "unset 41 42",
            "env 41 42 43",
        ] {
            assert_eq!(EnvChange::decode(bad), None, "{bad:?}");
        }
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
