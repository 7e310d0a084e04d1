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
