//! Configuration the Slurm side of sifrun reads, and the protocol between
//! the plugin and the step's holder: the `key=value` arguments an admin puts
//! after the plugin in plugstack.conf (here), the admin config file
//! ([`admin`]), the execution control list that decides which signed images
//! may run ([`ecl`], the admin file's `[ecl]` table), Slurm's own files
//! ([`slurm`]: slurm.conf, plugstack.conf; [`oci`]: whether Slurm runs
//! `--container` itself), the plugin↔holder request and
//! report ([`protocol`]), the tasks' environment ([`task_env`]) and the
//! checks on paths root trusts ([`trusted`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod admin;
pub mod cached_pin;
pub mod ecl;
pub mod oci;
pub mod protocol;
pub mod slurm;
pub mod task_env;
pub mod trusted;

use std::collections::BTreeMap;

/// An error in the plugstack.conf arguments.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("plugstack argument {arg:?}: {reason}")]
pub struct ArgError {
    /// The offending argument as written.
    pub arg: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Splits plugstack arguments into `key=value` pairs, refusing keys outside
/// `known`, keys given twice and arguments without `=`.
pub fn parse_plugstack_args<'a>(
    args: impl IntoIterator<Item = &'a str>,
    known: &[&str],
) -> Result<BTreeMap<String, String>, ArgError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let err = |reason: String| ArgError {
            arg: arg.to_owned(),
            reason,
        };
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| err("expected key=value".into()))?;
        if !known.contains(&key) {
            return Err(err(format!(
                "unknown key {key:?} (known: {})",
                known.join(", ")
            )));
        }
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(err(format!("{key} given twice")));
        }
    }
    Ok(out)
}

/// A scratch directory for tests whose ancestors are the build tree's
/// (root's or the tester's, 0755), not /tmp's: nothing under a directory
/// others may write is trusted.
#[cfg(test)]
pub(crate) fn scratch() -> tempfile::TempDir {
    let exe = std::env::current_exe().expect("the test binary");
    tempfile::tempdir_in(exe.parent().expect("its directory")).expect("a scratch directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_keys_once() {
        let m = parse_plugstack_args(["config=/etc/sifrun.toml"], &["config"]).unwrap();
        assert_eq!(m["config"], "/etc/sifrun.toml");
        assert!(parse_plugstack_args(["bogus=1"], &["config"]).is_err());
        assert!(parse_plugstack_args(["config"], &["config"]).is_err());
        assert!(parse_plugstack_args(["config=a", "config=b"], &["config"]).is_err());
    }
}
