//! Reading `/etc/ld.so.cache` directly (glibc's "glibc-ld.so.cache1.1"
//! format), as `ldconfig -p` would list it, without running a program.

/// One library the cache knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The soname (`libcuda.so.1`).
    pub soname: String,
    /// Where it is (`/usr/lib/x86_64-linux-gnu/libcuda.so.1`).
    pub path: String,
    /// glibc's flags: the library type and the architecture.
    pub flags: u32,
}

/// `flags` of a 64-bit x86-64 glibc library.
pub(crate) const X86_64_LIBC6: u32 = 0x0303;
/// `flags` of a 64-bit AArch64 glibc library.
pub(crate) const AARCH64_LIBC6: u32 = 0x0a03;

/// The flags of this machine's native libraries.
pub fn native_flags() -> u32 {
    if cfg!(target_arch = "aarch64") {
        AARCH64_LIBC6
    } else {
        X86_64_LIBC6
    }
}

const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const HEADER: usize = 48;
const ENTRY: usize = 24;

/// Why a cache could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ld.so.cache: {0}")]
pub struct LdCacheError(pub String);

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn string_at(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parses a cache; every offset is checked against the buffer.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, LdCacheError> {
    let bad = |why: &str| LdCacheError(why.to_owned());
    // Old caches may put the new format after an "ld.so-1.7.0" table.
    let start = bytes
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .ok_or_else(|| bad("not a glibc-ld.so.cache1.1 file"))?;
    let b = &bytes[start..];
    let n = u32_at(b, 20).ok_or_else(|| bad("truncated header"))? as usize;
    if n.checked_mul(ENTRY)
        .and_then(|t| t.checked_add(HEADER))
        .is_none_or(|end| end > b.len())
    {
        return Err(bad(&format!("{n} entries do not fit in {} bytes", b.len())));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let e = HEADER + i * ENTRY;
        let flags = u32_at(b, e).ok_or_else(|| bad("truncated entry"))?;
        let key = u32_at(b, e + 4).ok_or_else(|| bad("truncated entry"))? as usize;
        let value = u32_at(b, e + 8).ok_or_else(|| bad("truncated entry"))? as usize;
        let (Some(soname), Some(path)) = (string_at(b, key), string_at(b, value)) else {
            return Err(bad(&format!("entry {i} points outside the string table")));
        };
        out.push(Entry {
            soname,
            path,
            flags,
        });
    }
    Ok(out)
}

/// The host's libraries named `name.so*` for each of `names`, as
/// (soname, path) in the cache's order, the first path per soname, native
/// architecture only, and only paths that exist below `root`. Reads
/// `root/etc/ld.so.cache`.
pub fn find_libraries(
    root: &std::path::Path,
    names: &[&str],
) -> Result<Vec<(String, std::path::PathBuf)>, LdCacheError> {
    let bytes = std::fs::read(root.join("etc/ld.so.cache"))
        .map_err(|e| LdCacheError(format!("cannot read the host's ld.so.cache: {e}")))?;
    let entries = parse(&bytes)?;
    let native = native_flags();
    let mut out: Vec<(String, std::path::PathBuf)> = Vec::new();
    for name in names {
        let stem = format!("{name}.so");
        for e in entries.iter().filter(|e| e.flags == native) {
            let matches = e.soname == stem
                || e.soname
                    .strip_prefix(&stem)
                    .is_some_and(|r| r.starts_with('.'));
            if matches
                && !out.iter().any(|(s, _)| *s == e.soname)
                && root.join(e.path.trim_start_matches('/')).exists()
            {
                out.push((e.soname.clone(), std::path::PathBuf::from(&e.path)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_h200_nodes_cache_as_ldconfig_lists_it() {
        let bytes = include_bytes!("../tests/fixtures/h200-node/ld.so.cache");
        let entries = parse(bytes).unwrap();
        let listed = include_str!("../tests/fixtures/h200-node/ldconfig-p.txt");
        // `ldconfig -p` prints "N libs found in cache" and one line per entry.
        let count: usize = listed
            .lines()
            .find_map(|l| {
                l.trim()
                    .split_once(" libs found")
                    .and_then(|(n, _)| n.parse().ok())
            })
            .unwrap();
        assert_eq!(entries.len(), count);
        let cuda = entries
            .iter()
            .find(|e| e.soname == "libcuda.so.1" && e.flags == X86_64_LIBC6)
            .unwrap();
        assert!(listed.contains(&format!("libcuda.so.1 (libc6,x86-64) => {}", cuda.path)));
        for e in &entries {
            assert!(
                listed.contains(&format!("{} ", e.soname)) && listed.contains(&e.path),
                "{e:?}"
            );
        }
    }

    #[test]
    fn refuses_damaged_caches() {
        assert!(parse(b"").is_err());
        assert!(parse(b"glibc-ld.so.cache1.1\xff\xff\xff\x7f").is_err());
        let bytes = include_bytes!("../tests/fixtures/h200-node/ld.so.cache");
        assert!(parse(&bytes[..bytes.len() / 2]).is_err());
        let mut bad = bytes.to_vec();
        bad[48 + 4..48 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            parse(&bad)
                .unwrap_err()
                .0
                .contains("outside the string table")
        );
    }
}
