//! The squashfs reader against real mksquashfs output: every file of a tree
//! with awkward sizes reads back byte for byte, for each compression, with
//! and without readahead, at odd offsets.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use launcher::squash::{Data, FileKind, Squash, Tuning};

fn have_mksquashfs() -> bool {
    let ok = Command::new("mksquashfs").arg("-version").output().is_ok();
    assert!(
        ok || std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "mksquashfs is required"
    );
    ok
}

fn tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("tiny"), b"x").unwrap();
    let mut seed = 0x1234_5678u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect()
    };
    fs::write(root.join("block"), noise(131_072)).unwrap();
    fs::write(root.join("blocks-and-tail"), noise(131_072 * 3 + 777)).unwrap();
    let text: Vec<u8> = (0..400_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    fs::write(root.join("dir/text"), &text).unwrap();
    let mut sparse = vec![0u8; 131_072 * 2];
    sparse.extend(noise(1000));
    fs::write(root.join("dir/sub/sparse"), sparse).unwrap();
    std::os::unix::fs::symlink("../tiny", root.join("dir/link")).unwrap();
}

fn check(sq: &Squash, src: &Path, ino: u64, rel: &Path) {
    let inode = sq.inode(ino).unwrap();
    let path = src.join(rel);
    match (&inode.kind, &inode.data) {
        (FileKind::Dir, Data::Dir(entries)) => {
            let mut names: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let got: Vec<_> = entries.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(got, names, "{}", path.display());
            for (name, child) in entries {
                check(sq, src, *child, &rel.join(name));
            }
        }
        (FileKind::File, _) => {
            let want = fs::read(&path).unwrap();
            assert_eq!(inode.size, want.len() as u64);
            let all = sq.read(ino, 0, u32::MAX).unwrap();
            assert!(all == want, "{} differs", path.display());
            // Odd offsets and sizes across block and fragment boundaries.
            for (off, len) in [
                (1u64, 5u32),
                (131_071, 3),
                (131_072 * 3 - 1, 900),
                (want.len() as u64, 10),
            ] {
                let got = sq.read(ino, off, len).unwrap();
                let lo = (off as usize).min(want.len());
                let hi = (lo + len as usize).min(want.len());
                assert_eq!(got, &want[lo..hi], "{} at {off}+{len}", path.display());
            }
        }
        (FileKind::Symlink, Data::Symlink(t)) => {
            assert_eq!(Path::new(t), fs::read_link(&path).unwrap());
        }
        other => panic!("unexpected {other:?} at {}", path.display()),
    }
}

#[test]
fn every_compression_reads_back_exactly() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    for comp in ["gzip", "zstd", "xz", "lz4"] {
        let img = dir.path().join(format!("{comp}.img"));
        // Put the filesystem at an offset, as inside a SIF.
        let out = Command::new("mksquashfs")
            .args([
                src.to_str().unwrap(),
                img.to_str().unwrap(),
                "-noappend",
                "-quiet",
                "-no-progress",
                "-o",
                "4096",
                "-comp",
                comp,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for tuning in [
            Tuning::default(),
            Tuning {
                prefetch_threads: 0,
                cache_bytes: 1,
                ..Tuning::default()
            },
        ] {
            let sq = Squash::open(Arc::new(File::open(&img).unwrap()), 4096, tuning).unwrap();
            check(&sq, &src, 1, Path::new(""));
        }
    }
}

#[test]
fn corrupt_images_fail_cleanly() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree(&src);
    let img = dir.path().join("ok.img");
    let out = Command::new("mksquashfs")
        .args([
            src.to_str().unwrap(),
            img.to_str().unwrap(),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "gzip",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let good = fs::read(&img).unwrap();
    // Flip bytes all over the data area: opening may fail, reads may fail
    // with an error, but nothing may panic or return wrong-length data.
    for step in [97usize, 1013, 4099] {
        let mut bad = good.clone();
        for i in (96..bad.len()).step_by(step) {
            bad[i] ^= 0x5a;
        }
        let path = dir.path().join(format!("bad{step}.img"));
        fs::write(&path, &bad).unwrap();
        if let Ok(sq) = Squash::open(Arc::new(File::open(&path).unwrap()), 0, Tuning::default()) {
            for ino in 1..=sq.inode_count() as u64 {
                if let Ok(data) = sq.read(ino, 0, 1 << 20) {
                    assert!(data.len() as u64 <= sq.inode(ino).unwrap().size);
                }
            }
        }
    }
    let truncated = dir.path().join("short.img");
    fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let _ = Squash::open(
        Arc::new(File::open(&truncated).unwrap()),
        0,
        Tuning::default(),
    );
    assert!(Squash::open(Arc::new(File::open(&img).unwrap()), 7, Tuning::default()).is_err());
}

fn mksquashfs(src: &Path, img: &Path, extra: &[&str]) {
    let out = Command::new("mksquashfs")
        .arg(src)
        .arg(img)
        .args(["-noappend", "-quiet", "-no-progress"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree with what small test trees lack: a directory of thousands of
/// entries (several listing headers, an extended directory with an index),
/// hard links, a FIFO and a socket, deep nesting, a large sparse file.
fn awkward_tree(root: &Path) {
    fs::create_dir_all(root.join("many")).unwrap();
    for i in 0..3000 {
        fs::write(root.join(format!("many/f{i:05}")), format!("{i}")).unwrap();
    }
    fs::write(root.join("linked"), vec![7u8; 123_457]).unwrap();
    fs::hard_link(root.join("linked"), root.join("many/also-linked")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    let mut deep = root.to_path_buf();
    for i in 0..100 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom"), b"deep").unwrap();
    let sparse = File::create(root.join("sparse")).unwrap();
    sparse.set_len(300 << 20).unwrap();
    std::os::unix::fs::symlink("TARGET-OF-THE-LINK", root.join("link")).unwrap();
}

#[test]
fn awkward_trees_index_completely() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    awkward_tree(&src);
    for extra in [
        &["-comp", "zstd"][..],
        &["-noI", "-noD", "-noF", "-noX", "-b", "4096"],
        &["-no-fragments", "-comp", "lz4"],
        &["-always-use-fragments", "-comp", "xz"],
    ] {
        let img = dir.path().join("awkward.img");
        mksquashfs(&src, &img, extra);
        let sq = Squash::open(Arc::new(File::open(&img).unwrap()), 0, Tuning::default()).unwrap();
        let many = sq.lookup_path(Path::new("/many")).unwrap();
        let Data::Dir(entries) = &sq.inode(many).unwrap().data else {
            panic!("/many is not a directory");
        };
        assert_eq!(entries.len(), 3001, "{extra:?}");
        let f = sq.lookup_path(Path::new("/many/f02999")).unwrap();
        assert_eq!(sq.read(f, 0, 100).unwrap(), b"2999");
        let a = sq.lookup_path(Path::new("/linked")).unwrap();
        let b = sq.lookup_path(Path::new("/many/also-linked")).unwrap();
        assert_eq!(a, b, "hard links share one inode ({extra:?})");
        assert_eq!(sq.inode(a).unwrap().nlink, 2);
        assert_eq!(sq.read(a, 123_000, 1000).unwrap(), vec![7u8; 457]);
        let kind = |p: &str| {
            sq.inode(sq.lookup_path(Path::new(p)).unwrap())
                .unwrap()
                .kind
        };
        assert_eq!(kind("/fifo"), FileKind::Fifo);
        assert_eq!(kind("/sock"), FileKind::Socket);
        let deep: String = (0..100).map(|i| format!("/d{i}")).collect();
        let bottom = sq
            .lookup_path(Path::new(&format!("{deep}/bottom")))
            .unwrap();
        assert_eq!(sq.read(bottom, 0, 10).unwrap(), b"deep");
        assert_eq!(
            sq.lookup_path(Path::new(&format!("{deep}/../.."))).unwrap(),
            sq.lookup_path(Path::new(
                &(0..98).map(|i| format!("/d{i}")).collect::<String>()
            ))
            .unwrap()
        );
        let sparse = sq.lookup_path(Path::new("/sparse")).unwrap();
        assert_eq!(sq.inode(sparse).unwrap().size, 300 << 20);
        assert_eq!(sq.read(sparse, 200 << 20, 4096).unwrap(), vec![0u8; 4096]);
        let root = sq.inode(1).unwrap();
        assert_eq!(root.nlink, 2 + 2 /* many, d0 */);
    }
}

/// Overwrites bytes at `delta` from the first occurrence of `find` inside
/// `range` of `img`.
fn patch(img: &Path, range: std::ops::Range<usize>, find: &[u8], delta: isize, with: &[u8]) {
    let mut bytes = fs::read(img).unwrap();
    let found = bytes[range.clone()]
        .windows(find.len())
        .position(|w| w == find)
        .unwrap_or_else(|| panic!("{find:?} not in the table"));
    let at = (range.start + found).checked_add_signed(delta).unwrap();
    bytes[at..at + with.len()].copy_from_slice(with);
    fs::write(img, bytes).unwrap();
}

/// Sizes in the inode table that once made the parser allocate gigabytes
/// (symlink targets, block lists of huge files) now fail with an error.
#[test]
fn hostile_sizes_are_refused_without_allocating() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("linked"), vec![7u8; 123_457]).unwrap();
    fs::hard_link(src.join("linked"), src.join("second")).unwrap();
    std::os::unix::fs::symlink("TARGET-OF-THE-LINK", src.join("link")).unwrap();
    let img = dir.path().join("plain.img");
    // Uncompressed metadata, so the tables can be patched in place.
    mksquashfs(&src, &img, &["-noI", "-noD", "-noF", "-noX"]);
    let sb = fs::read(&img).unwrap();
    let word = |at: usize| u64::from_le_bytes(sb[at..at + 8].try_into().unwrap()) as usize;
    let inodes = word(64)..word(72);
    let open = |p: &Path| Squash::open(Arc::new(File::open(p).unwrap()), 0, Tuning::default());
    open(&img).unwrap();

    let target = b"TARGET-OF-THE-LINK";
    type Case<'a> = (&'a str, &'a [u8], isize, &'a [u8], &'a str);
    let cases: [Case; 3] = [
        // symlink target_size (the u32 before the target) -> 4 GiB
        (
            "link",
            target,
            -4,
            &[0xff; 4],
            "symlink target of 4294967295 bytes",
        ),
        // extended file size (u64) -> 2^62
        (
            "file",
            &123_457u64.to_le_bytes(),
            0,
            &(1u64 << 62).to_le_bytes(),
            "more block sizes than the inode table holds",
        ),
        // the symlink's inode type (24 bytes before its target) -> unknown
        ("type", target, -24, &[99, 0], "inode type 99"),
    ];
    for (name, find, delta, with, why) in cases {
        let bad = dir.path().join(format!("{name}.img"));
        fs::copy(&img, &bad).unwrap();
        patch(&bad, inodes.clone(), find, delta, with);
        let err = open(&bad).expect_err(name).to_string();
        assert!(
            err.starts_with("not a readable squashfs") && err.contains(why),
            "{name}: {err}"
        );
    }
}
