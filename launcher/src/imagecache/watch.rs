//! What a process waiting for another's conversion of the same entry
//! sees of it: the growth of that conversion's work directory.

use std::fs;
use std::path::Path;

use super::lock::Owner;

/// Who hears how [`Cache::ensure_watched`] goes.
pub struct Watch<'a> {
    /// The lines a waiting user should see.
    pub line: &'a dyn Fn(&str),
    /// The bytes in the work directory of the conversion this process
    /// waits for (another's), each time they grow.
    pub grew: &'a dyn Fn(u64),
}

/// The conversion a process waits for, and how far it has got.
#[derive(Default)]
pub(super) struct Waiting {
    pub(super) owner: Option<Owner>,
    pub(super) bytes: u64,
}

/// The bytes of the files below `dir`: its own and those of up to 4
/// levels of directories below it (5 levels read in all), 10000 entries
/// at most.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut budget = 10_000usize;
    let mut todo = vec![(dir.to_owned(), 0)];
    while let Some((d, depth)) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten().take(budget) {
            budget -= 1;
            match e.metadata() {
                Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
                Ok(m) if m.is_dir() && depth < 4 => todo.push((e.path(), depth + 1)),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_work_directory_counts_its_files_bytes() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(super::dir_bytes(&d.path().join("missing")), 0);
        std::fs::create_dir_all(d.path().join("t/blobs/sha256")).unwrap();
        std::fs::write(d.path().join("image.sif"), [0u8; 100]).unwrap();
        std::fs::write(d.path().join("t/blobs/sha256/x.part"), [0u8; 23]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(super::dir_bytes(d.path()), 123);
    }
}
