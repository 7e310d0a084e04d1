//! `--bind SRC[:DST[:ro|rw]]` specifications (also from `SIFRUN_BIND` and
//! `APPTAINER_BIND`), comma-separated lists allowed.

use std::path::{Component, Path, PathBuf};

/// One user bind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindSpec {
    /// Host path (absolute, or relative to the current directory).
    pub source: PathBuf,
    /// Container path (absolute, without `..`).
    pub target: PathBuf,
    /// Mounted read-only (`:ro`).
    pub readonly: bool,
}

/// What is wrong with a bind specification.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{spec:?}: {reason}")]
pub struct BindError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(spec: &str, reason: impl Into<String>) -> BindError {
    BindError {
        spec: spec.to_owned(),
        reason: reason.into(),
    }
}

/// Parses one `SRC[:DST[:OPTS]]`. Options: `ro`, `rw`; anything else (such as
/// `suid` or `dev`) is refused, since binds are always nosuid and nodev.
pub fn parse_one(spec: &str, cwd: &Path) -> Result<BindSpec, BindError> {
    if spec.is_empty() {
        return Err(err(spec, "empty bind specification"));
    }
    if spec.contains(['\0', '\n']) {
        return Err(err(spec, "contains a NUL or newline"));
    }
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, dst, opts) = match parts.as_slice() {
        [s] => (*s, *s, ""),
        [s, d] if *d == "ro" || *d == "rw" => (*s, *s, *d),
        [s, d] => (*s, *d, ""),
        [s, d, o] => (*s, *d, *o),
        _ => return Err(err(spec, "too many ':' (expected SRC[:DST[:ro|rw]])")),
    };
    if src.is_empty() || dst.is_empty() {
        return Err(err(spec, "empty source or destination"));
    }
    let mut readonly = false;
    for opt in opts.split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => readonly = true,
            "rw" => readonly = false,
            other => {
                return Err(err(
                    spec,
                    format!(
                        "option {other:?} is not allowed (only ro and rw; binds are always nosuid,nodev)"
                    ),
                ));
            }
        }
    }
    let source = if Path::new(src).is_absolute() {
        PathBuf::from(src)
    } else {
        cwd.join(src)
    };
    let target = PathBuf::from(dst);
    if !target.is_absolute() {
        return Err(err(spec, "the destination must be an absolute path"));
    }
    if target.components().any(|c| c == Component::ParentDir) {
        return Err(err(spec, "the destination must not contain '..'"));
    }
    Ok(BindSpec {
        source: lexical_normal(&source),
        target: lexical_normal(&target),
        readonly,
    })
}

/// Parses a comma-separated list. `ro`/`rw` right after a comma belong to
/// the previous spec's options (`a:b:ro,rw` is not ambiguous in practice, so
/// options are only taken from the third field).
pub fn parse_list(list: &str, cwd: &Path) -> Result<Vec<BindSpec>, BindError> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_one(s, cwd))
        .collect()
}

/// Removes `.` components and duplicate slashes (never resolves `..` or links).
pub fn lexical_normal(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(src: &str, dst: &str, ro: bool) -> BindSpec {
        BindSpec {
            source: src.into(),
            target: dst.into(),
            readonly: ro,
        }
    }

    #[test]
    fn forms() {
        let cwd = Path::new("/work");
        assert_eq!(parse_one("/data", cwd).unwrap(), b("/data", "/data", false));
        assert_eq!(parse_one("/data:/d", cwd).unwrap(), b("/data", "/d", false));
        assert_eq!(
            parse_one("/data:/d:ro", cwd).unwrap(),
            b("/data", "/d", true)
        );
        assert_eq!(
            parse_one("/data:ro", cwd).unwrap(),
            b("/data", "/data", true)
        );
        assert_eq!(
            parse_one("in:/in", cwd).unwrap(),
            b("/work/in", "/in", false)
        );
        assert_eq!(
            parse_one("/a/./b//:/x/./y", cwd).unwrap(),
            b("/a/b", "/x/y", false)
        );
        assert_eq!(
            parse_list("/a, /b:/c:ro ,", cwd).unwrap(),
            vec![b("/a", "/a", false), b("/b", "/c", true)]
        );
    }

    #[test]
    fn refusals_name_the_problem() {
        let cwd = Path::new("/");
        for (spec, want) in [
            ("/a:/b:suid", "suid"),
            ("/a:/b:dev", "dev"),
            ("/a:/b:exec", "exec"),
            ("/a:b", "absolute"),
            ("/a:/b/../etc", "'..'"),
            ("/a:/b:ro:x", "too many"),
            (":/b", "empty"),
            ("/a\n:/b", "newline"),
            ("/a\0/etc:/b", "NUL"),
            ("/a:/b\0", "NUL"),
            ("", "empty"),
        ] {
            let e = parse_one(spec, cwd).unwrap_err();
            assert!(e.to_string().contains(want), "{spec:?}: {e}");
        }
    }
}
