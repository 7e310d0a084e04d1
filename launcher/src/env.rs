//! The container's environment, with Apptainer's semantics.
//!
//! * Host variables pass through unless `--cleanenv`; `HOME`, `PATH`,
//!   `LD_LIBRARY_PATH` and the launcher's own `SIFRUN_*`, `APPTAINER_*` and
//!   `SINGULARITY_*` never do. With `--cleanenv` only `TERM` and the proxy
//!   variables remain, and `LANG=C`.
//! * `HOME` is the container home; `PATH` a standard system path.
//! * The image's `/.singularity.d/env/*.sh` scripts run next (they may set
//!   `PATH` and anything else), then the user's own settings win:
//!   `SINGULARITYENV_X`, `APPTAINERENV_X`, `SIFRUN_ENV_X` (in rising
//!   precedence), `--env-file`, then `--env`.
//! * The host's fabric tuning (`UCX_*`, `FI_*`, `PSM2_*`, … see
//!   [`interconnect::fabric::HOST_TUNING_PREFIXES`]) is exported again after
//!   the image's scripts, so an image's defaults never replace what the site
//!   set for its network; the user's own settings still win.

use std::collections::BTreeMap;

/// The default `PATH` inside the container.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const KEEP_WITH_CLEANENV: &[&str] = &[
    "TERM",
    "http_proxy",
    "https_proxy",
    "ftp_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "FTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];
const NEVER_FROM_HOST: &[&str] = &["HOME", "PATH", "LD_LIBRARY_PATH", "PS1", "PROMPT_COMMAND"];
const LAUNCHER_PREFIXES: &[&str] = &[
    "SIFRUN_",
    "APPTAINER_",
    "SINGULARITY_",
    "APPTAINERENV_",
    "SINGULARITYENV_",
];
/// Prefixes that set a variable inside, lowest precedence first.
const SET_PREFIXES: &[&str] = &["SINGULARITYENV_", "APPTAINERENV_", "SIFRUN_ENV_"];
/// Variables the user may not set this way (the launcher owns them).
const RESERVED: &[&str] = &["HOME"];

/// The user's environment choices.
#[derive(Clone, Debug, Default)]
pub struct EnvOptions {
    /// `--cleanenv`: only TERM and the proxy variables from the host.
    pub cleanenv: bool,
    /// `--env-file` contents.
    pub env_file: Option<String>,
    /// `--env K=V`, in order.
    pub env: Vec<String>,
}

/// What is wrong with an environment setting.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    /// An `--env` value without `=`.
    #[error("--env: {0:?}: expected NAME=VALUE")]
    NotAssignment(String),
    /// A variable name that is not one.
    #[error("{origin}: {name:?} is not a valid variable name")]
    BadName {
        /// Where the setting came from.
        origin: String,
        /// The name.
        name: String,
    },
    /// A `--host-env-file` entry that is not an assignment.
    #[error("--host-env-file: entry {entry}: {text:?}: expected NAME=VALUE")]
    EnvironEntry {
        /// The entry number (1-based).
        entry: usize,
        /// The entry.
        text: String,
    },
    /// An `--env-file` line that is not an assignment.
    #[error("--env-file: line {line}: {text:?}: expected NAME=VALUE")]
    FileLine {
        /// The line number (1-based).
        line: usize,
        /// The line.
        text: String,
    },
}

/// The environment of the container.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerEnv {
    /// Set before the image's scripts run.
    pub base: BTreeMap<String, String>,
    /// Exported after the image's scripts (the user's choices win).
    pub user: Vec<(String, String)>,
    /// Things worth a warning (ignored settings).
    pub warnings: Vec<String>,
}

/// A whole environment written to a file, as Slurm's oci.conf
/// `CreateEnvFile` writes `%e`: `NAME=VALUE` entries ended by NUL
/// (`CreateEnvFile=null`), or by newlines (`=newline`, when the file has no
/// NUL; a value with a newline cannot be told apart there). Entries that
/// are not UTF-8 are left out, as the process's own are; one without `=`
/// is an error.
pub fn parse_environ_file(bytes: &[u8]) -> Result<Vec<(String, String)>, EnvError> {
    let sep = if bytes.contains(&0) { 0 } else { b'\n' };
    let mut out = Vec::new();
    for (i, entry) in bytes.split(|&b| b == sep).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let Ok(text) = std::str::from_utf8(entry) else {
            continue;
        };
        let (k, v) = text.split_once('=').ok_or_else(|| EnvError::EnvironEntry {
            entry: i + 1,
            text: text.to_owned(),
        })?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, EnvError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=').ok_or_else(|| EnvError::FileLine {
            line: i + 1,
            text: raw.to_owned(),
        })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        if !valid_name(k.trim()) {
            return Err(EnvError::BadName {
                origin: format!("--env-file line {}", i + 1),
                name: k.to_owned(),
            });
        }
        out.push((k.trim().to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Computes the container environment from the host's and the options.
pub fn container_env(
    host: &[(String, String)],
    opts: &EnvOptions,
    home: &str,
) -> Result<ContainerEnv, EnvError> {
    let mut env = ContainerEnv::default();
    for (k, v) in host {
        let launcher = LAUNCHER_PREFIXES.iter().any(|p| k.starts_with(p));
        let keep = if opts.cleanenv {
            KEEP_WITH_CLEANENV.contains(&k.as_str())
        } else {
            !launcher && !NEVER_FROM_HOST.contains(&k.as_str())
        };
        if keep {
            env.base.insert(k.clone(), v.clone());
        }
    }
    if opts.cleanenv {
        env.base.insert("LANG".into(), "C".into());
    }
    env.base.insert("HOME".into(), home.to_owned());
    env.base.insert("PATH".into(), DEFAULT_PATH.into());

    let mut user: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut order = 0;
    let mut set = |k: &str, v: &str, origin: &str, env: &mut ContainerEnv| {
        if RESERVED.contains(&k) {
            env.warnings
                .push(format!("{origin}: {k} cannot be set this way; ignored"));
            return;
        }
        order += 1;
        user.insert(k.to_owned(), (order, v.to_owned()));
    };
    for prefix in SET_PREFIXES {
        for (k, v) in host {
            if let Some(name) = k.strip_prefix(prefix) {
                if !valid_name(name) {
                    env.warnings.push(format!(
                        "{k}: {name:?} is not a valid variable name; ignored"
                    ));
                    continue;
                }
                set(name, v, k, &mut env);
            }
        }
    }
    if let Some(text) = &opts.env_file {
        for (k, v) in parse_env_file(text)? {
            set(&k, &v, "--env-file", &mut env);
        }
    }
    for kv in &opts.env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| EnvError::NotAssignment(kv.clone()))?;
        if !valid_name(k) {
            return Err(EnvError::BadName {
                origin: "--env".into(),
                name: k.to_owned(),
            });
        }
        set(k, v, "--env", &mut env);
    }
    let mut ordered: Vec<(usize, String, String)> =
        user.into_iter().map(|(k, (o, v))| (o, k, v)).collect();
    if !opts.cleanenv {
        for (k, v) in host {
            if interconnect::fabric::is_host_tuning(k)
                && valid_name(k)
                && !ordered.iter().any(|(_, n, _)| n == k)
            {
                ordered.push((0, k.clone(), v.clone()));
            }
        }
    }
    ordered.sort();
    env.user = ordered.into_iter().map(|(_, k, v)| (k, v)).collect();
    Ok(env)
}

/// Quotes a value for a POSIX shell.
pub fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// The script exported after the image's environment scripts.
pub fn user_env_script(env: &ContainerEnv) -> String {
    env.user
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environ_files_as_slurm_writes_them() {
        let nul = b"A=1\0MULTI=x\ny\0BASH_FUNC_m%%=() { :; }\0\xff=skipped\0EMPTY=\0";
        assert_eq!(
            parse_environ_file(nul).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("MULTI".into(), "x\ny".into()),
                ("BASH_FUNC_m%%".into(), "() { :; }".into()),
                ("EMPTY".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_environ_file(b"A=1\nB=a=b\n").unwrap(),
            vec![("A".into(), "1".into()), ("B".into(), "a=b".into())]
        );
        assert_eq!(
            parse_environ_file(b"A=1\0junk\0").unwrap_err(),
            EnvError::EnvironEntry {
                entry: 2,
                text: "junk".into()
            }
        );
        assert!(parse_environ_file(b"").unwrap().is_empty());
    }

    #[test]
    fn host_env_passes_except_owned_variables() {
        let host = h(&[
            ("USER", "alice"),
            ("PATH", "/host/bin"),
            ("LD_LIBRARY_PATH", "/host/lib"),
            ("HOME", "/home/alice"),
            ("SIFRUN_BIND", "/x"),
            ("APPTAINER_CACHEDIR", "/c"),
            ("SLURM_JOB_ID", "7"),
        ]);
        let e = container_env(&host, &EnvOptions::default(), "/home/alice").unwrap();
        assert_eq!(e.base["USER"], "alice");
        assert_eq!(e.base["SLURM_JOB_ID"], "7");
        assert_eq!(e.base["PATH"], DEFAULT_PATH);
        assert_eq!(e.base["HOME"], "/home/alice");
        assert!(!e.base.contains_key("LD_LIBRARY_PATH"));
        assert!(!e.base.contains_key("SIFRUN_BIND"));
        assert!(!e.base.contains_key("APPTAINER_CACHEDIR"));
        assert!(e.user.is_empty());
    }

    #[test]
    fn host_fabric_tuning_outlasts_the_image_but_not_the_user() {
        let host = h(&[
            ("UCX_TLS", "rc,sm"),
            ("FI_PROVIDER", "cxi"),
            ("SIFRUN_ENV_FI_PROVIDER", "tcp"),
            ("OTHER", "x"),
        ]);
        let e = container_env(&host, &EnvOptions::default(), "/h").unwrap();
        assert_eq!(e.base["UCX_TLS"], "rc,sm");
        // Exported after the image's scripts: the host's UCX_TLS, the
        // user's FI_PROVIDER.
        assert_eq!(e.user, h(&[("UCX_TLS", "rc,sm"), ("FI_PROVIDER", "tcp")]));
        let clean = EnvOptions {
            cleanenv: true,
            ..EnvOptions::default()
        };
        let e = container_env(&host, &clean, "/h").unwrap();
        assert!(!e.user.iter().any(|(k, _)| k == "UCX_TLS"));
    }

    #[test]
    fn cleanenv_keeps_only_term_and_proxies() {
        let host = h(&[
            ("USER", "alice"),
            ("TERM", "xterm"),
            ("https_proxy", "http://p"),
            ("SIFRUN_ENV_A", "1"),
        ]);
        let opts = EnvOptions {
            cleanenv: true,
            ..EnvOptions::default()
        };
        let e = container_env(&host, &opts, "/h").unwrap();
        let keys: Vec<&str> = e.base.keys().map(String::as_str).collect();
        assert_eq!(keys, ["HOME", "LANG", "PATH", "TERM", "https_proxy"]);
        assert_eq!(e.user, vec![("A".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn precedence_prefixes_file_then_flags() {
        let host = h(&[
            ("SINGULARITYENV_X", "s"),
            ("APPTAINERENV_X", "a"),
            ("SIFRUN_ENV_X", "f"),
            ("APPTAINERENV_Y", "a"),
            ("SIFRUN_ENV_HOME", "/evil"),
            ("SIFRUN_ENV_1BAD", "x"),
        ]);
        let opts = EnvOptions {
            env_file: Some("# comment\nexport Y=\"file\"\nZ='z z'\n".into()),
            env: vec!["Z=flag".into(), "W=it's".into()],
            ..EnvOptions::default()
        };
        let e = container_env(&host, &opts, "/h").unwrap();
        let m: BTreeMap<_, _> = e.user.iter().cloned().collect();
        assert_eq!(m["X"], "f");
        assert_eq!(m["Y"], "file");
        assert_eq!(m["Z"], "flag");
        assert!(!m.contains_key("HOME"));
        assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
        assert!(user_env_script(&e).contains("export W='it'\\''s'\n"));
    }

    #[test]
    fn bad_settings_are_errors() {
        let bad = |env: &[&str]| {
            container_env(
                &[],
                &EnvOptions {
                    env: env.iter().map(|s| s.to_string()).collect(),
                    ..EnvOptions::default()
                },
                "/h",
            )
        };
        assert_eq!(
            bad(&["NOEQUALS"]).unwrap_err(),
            EnvError::NotAssignment("NOEQUALS".into())
        );
        assert!(matches!(bad(&["A-B=1"]), Err(EnvError::BadName { .. })));
        let file = EnvOptions {
            env_file: Some("ok=1\nbroken line\n".into()),
            ..EnvOptions::default()
        };
        assert_eq!(
            container_env(&[], &file, "/h").unwrap_err(),
            EnvError::FileLine {
                line: 2,
                text: "broken line".into()
            }
        );
    }
}
