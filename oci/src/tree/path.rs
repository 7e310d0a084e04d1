//! Cleaning of layer entry names (design §3.2).

use super::TreeError;

/// Longest component (`NAME_MAX`).
pub(super) const NAME_MAX: usize = 255;
/// Longest path (`PATH_MAX`).
pub(super) const PATH_MAX: usize = 4096;

/// Splits a tar name into clean components: leading `/` and `./`, `.` and
/// repeated `/` dropped; `..` refused; over-long names refused. The root
/// is the empty list.
pub(super) fn clean<'a>(layer: &str, name: &'a [u8]) -> Result<Vec<&'a [u8]>, TreeError> {
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.len() > PATH_MAX {
        return Err(TreeError::NameTooLong {
            layer: layer.to_owned(),
            path: shown(),
        });
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(TreeError::Escape {
                    layer: layer.to_owned(),
                    path: shown(),
                });
            }
            c if c.len() > NAME_MAX => {
                return Err(TreeError::NameTooLong {
                    layer: layer.to_owned(),
                    path: shown(),
                });
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Components joined by `/` (the root is empty).
#[cfg(test)]
pub(super) fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// `path/name`, or `name` under the root.
pub(super) fn child(path: &[u8], name: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        name.to_vec()
    } else {
        [path, b"/", name].concat()
    }
}

/// The parent of a non-root path.
pub(super) fn parent(path: &[u8]) -> &[u8] {
    path.iter()
        .rposition(|&b| b == b'/')
        .map_or(&[], |i| &path[..i])
}

/// The range of keys strictly below `path` (`path/` … `path0`): `/` + 1 is
/// `0`, so every descendant sorts between them; for the root, every
/// non-empty key.
pub(super) fn subtree_bounds(path: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if path.is_empty() {
        // Every key but the root's (final paths stay under 2 * PATH_MAX).
        return (vec![0], vec![0xff; 2 * PATH_MAX]);
    }
    ([path, b"/"].concat(), [path, b"0"].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        let c = |n: &str| {
            clean("L", n.as_bytes())
                .map(|v| join(&v))
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(c("./usr//bin/./x").unwrap(), "usr/bin/x");
        assert_eq!(c("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(c("./").unwrap(), "");
        assert_eq!(c("dir/").unwrap(), "dir");
        let e = c("a/../../etc/x").unwrap_err().to_string();
        assert_eq!(e, "layer L: entry 'a/../../etc/x' leaves the image root");
        assert!(
            c(&"a".repeat(256))
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        assert!(
            c(&"a/".repeat(2049))
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
        assert_eq!(parent(b"a/b/c"), b"a/b");
        assert_eq!(parent(b"a"), b"");
        assert_eq!(child(b"", b"a"), b"a");
        assert_eq!(subtree_bounds(b"a"), (b"a/".to_vec(), b"a0".to_vec()));
    }
}
