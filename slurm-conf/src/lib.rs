//! Configuration the Slurm side of sifrun reads: the `key=value` arguments an
//! admin puts after the plugin in plugstack.conf, the admin config file, and
//! the execution control list (ECL) that decides which signed images may run.
//!
//! Modules: plugstack arguments (here), [`admin`] (the admin TOML file),
//! [`ecl`] (the execution control list, in the admin file's `[ecl]` table),
//! [`holder`] (what the step's container holder reports to the plugin).

pub mod admin;
pub mod ecl;
pub mod holder;

use std::collections::BTreeMap;

/// An error in the plugstack.conf arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct ArgError {
    /// The offending argument as written.
    pub arg: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugstack argument {:?}: {}", self.arg, self.reason)
    }
}

impl std::error::Error for ArgError {}

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
