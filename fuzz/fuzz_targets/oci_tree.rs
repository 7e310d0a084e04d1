//! `oci::tree`: layers built from the input (one entry per 3 bytes: type,
//! name, link target over a small name space, `0xff` between layers)
//! never panic the merge, and every plan keeps the invariants: unique
//! paths, parents emitted as directories first, hard links after their
//! target, no `.`/`..`/empty components.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use oci::tar::{Entry, Kind};
use oci::tree::{Emission, Layer, merge};

const NAMES: [&str; 17] = [
    "a",
    "b",
    "a/b",
    "a/c",
    "b/c",
    "a/b/c",
    ".wh.a",
    "a/.wh.b",
    "a/.wh..wh..opq",
    "/a",
    "./b/./c/",
    "c",
    "../x",
    "/",
    "c/../d",
    ".wh..wh.plnk",
    ".wh..wh..opq",
];
const TARGETS: [&str; 8] = ["a", "b", "/a/b", "../..", "c", "a/b/c", ".", "/"];
const KINDS: [Kind; 5] = [
    Kind::Dir,
    Kind::File,
    Kind::HardLink,
    Kind::Symlink,
    Kind::Fifo,
];

fn entry(b: &[u8]) -> Entry {
    Entry {
        path: NAMES[usize::from(b[1]) % NAMES.len()].as_bytes().to_vec(),
        kind: KINDS[usize::from(b[0]) % KINDS.len()],
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: i64::from(b[0]),
        size: 0,
        link: Some(
            TARGETS[usize::from(b[2]) % TARGETS.len()]
                .as_bytes()
                .to_vec(),
        ),
        device: (0, 0),
        xattrs: Vec::new(),
        header_offset: 0,
        data_offset: 0,
    }
}

fn parent(p: &[u8]) -> &[u8] {
    p.iter().rposition(|&b| b == b'/').map_or(&[], |i| &p[..i])
}

fuzz_target!(|data: &[u8]| {
    let layers: Vec<Layer> = data
        .split(|&b| b == 0xff)
        .take(16)
        .enumerate()
        .map(|(i, chunk)| Layer {
            name: format!("L{i}"),
            entries: chunk.chunks_exact(3).map(entry).collect(),
        })
        .collect();
    let Ok(tree) = merge(&layers) else { return };
    let (mut dirs, mut nodes) = (HashSet::new(), HashSet::new());
    for e in tree.plan() {
        let (path, is_dir) = match e {
            Emission::Dir { path, .. } => (path, true),
            Emission::Node { path, .. } => (path, false),
            Emission::HardLink { path, target } => {
                assert!(nodes.contains(&target), "link before its target");
                (path, false)
            }
        };
        if !path.is_empty() {
            assert!(
                path.split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".."),
                "{path:?}"
            );
            assert!(
                dirs.contains(parent(&path)),
                "parent of {path:?} not emitted first"
            );
        }
        assert!(
            !dirs.contains(&path) && !nodes.contains(&path),
            "duplicate {path:?}"
        );
        if is_dir {
            dirs.insert(path)
        } else {
            nodes.insert(path)
        };
    }
});
