//! The squashfs reader against real mksquashfs output: every file of a tree
//! with awkward sizes reads back byte for byte, for each compression, with
//! and without readahead, at odd offsets.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

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
        (FileKind::Dir, Data::Dir(_)) => {
            let entries = sq.entries(ino).unwrap();
            let mut names: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            let got: Vec<_> = entries.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(got, names, "{}", path.display());
            for (name, child) in entries {
                check(sq, src, child, &rel.join(name));
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
            for ino in 1..=sq.inode_count() {
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
        assert!(matches!(sq.inode(many).unwrap().data, Data::Dir(_)));
        let entries = sq.entries(many).unwrap();
        assert_eq!(entries.len(), 3001, "{extra:?}");
        assert!(entries.windows(2).all(|p| p[0].0 < p[1].0), "sorted");
        for (name, ino) in entries.iter().step_by(97) {
            assert_eq!(sq.lookup(many, name), Some(*ino), "{name:?} ({extra:?})");
        }
        assert_eq!(sq.lookup(many, std::ffi::OsStr::new("f99999")), None);
        assert_eq!(sq.lookup(many, std::ffi::OsStr::new("a")), None);
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
/// (symlink targets, block lists of huge files) now fail with an error when
/// the inode is read.
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
            "past the end of the table",
        ),
        // the symlink's inode type (24 bytes before its target) -> unknown
        ("type", target, -24, &[99, 0], "inode type 99"),
    ];
    for (name, find, delta, with, why) in cases {
        let bad = dir.path().join(format!("{name}.img"));
        fs::copy(&img, &bad).unwrap();
        patch(&bad, inodes.clone(), find, delta, with);
        let sq = open(&bad).unwrap();
        let path = if name == "file" { "linked" } else { "link" };
        let (_, ino) = sq
            .entries(1)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == path)
            .unwrap();
        let err = match sq.try_inode(ino) {
            Err(e) => e.to_string(),
            Ok(inode) => {
                assert_eq!(inode.size, 1 << 62);
                sq.read(ino, (1 << 62) - 4096, u32::MAX)
                    .expect_err(name)
                    .to_string()
            }
        };
        assert!(err.contains(why), "{name}: {err}");
        if name != "file" {
            assert_eq!(
                sq.lookup_path(Path::new(&format!("/{path}"))),
                None,
                "{name}"
            );
        }
    }
}

// The crafting helpers are shared with the end-to-end suites.
#[path = "../../tests/src/craft.rs"]
#[allow(dead_code)]
mod craft;

use craft::{FILE, NOT_SET, Sb, W, fragments_image, zeros_image};

fn vm_hwm_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const PROBE_CACHE: usize = 8 << 20;

/// Run by `hostile_images_stay_small` in a child process: serves the image
/// named by SIFRUN_SQUASH_PROBE the way the FUSE server would, checks what
/// it reads, and prints its peak memory.
#[test]
fn probe_memory() {
    let Some(path) = std::env::var_os("SIFRUN_SQUASH_PROBE") else {
        return;
    };
    let tuning = Tuning {
        cache_bytes: PROBE_CACHE,
        ..Tuning::default()
    };
    let sq = Squash::open(Arc::new(File::open(&path).unwrap()), 0, tuning).unwrap();
    for (name, ino) in sq.entries(1).unwrap() {
        assert_eq!(sq.lookup(1, &name), Some(ino));
        let inode = sq.inode(ino).unwrap();
        let head = sq.read(ino, 0, 4096).unwrap();
        match name.to_str().unwrap() {
            "f" => assert_eq!(head, b"hello"),
            "t" => assert_eq!(head, b"tail!tail!"),
            "big" => {
                assert_eq!(head, vec![0u8; 4096]);
                let tail = sq.read(ino, inode.size - 4096, 4096).unwrap();
                assert_eq!(tail, vec![0u8; 4096]);
            }
            other => panic!("unexpected {other}"),
        }
    }
    println!("\nVmHWM {}", vm_hwm_kib());
}

/// The hostile images of issue 12 item 8 (a 4 MB image that inflated the
/// tables to 2 GB; a sparse image whose fragment table repeats one
/// pointer; inflated counts) are served in bounded memory: the peak stays
/// under 64 MiB plus the block cache.
#[test]
fn hostile_images_stay_small() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros.img");
    fs::write(&zeros, zeros_image(120_000)).unwrap();
    assert!(fs::metadata(&zeros).unwrap().len() < 10 << 20);
    let frags = dir.path().join("fragments.img");
    let (bytes, len) = fragments_image(64 << 20);
    fs::write(&frags, bytes).unwrap();
    File::options()
        .write(true)
        .open(&frags)
        .unwrap()
        .set_len(len)
        .unwrap();
    for img in [&zeros, &frags] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "probe_memory", "--nocapture", "--test-threads=1"])
            .env("SIFRUN_SQUASH_PROBE", img)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            img.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let kib: u64 = stdout
            .lines()
            .find_map(|l| l.split("VmHWM ").nth(1))
            .unwrap_or_else(|| panic!("no VmHWM in {stdout}"))
            .trim()
            .parse()
            .unwrap();
        let limit = (64 << 10) + (PROBE_CACHE as u64 >> 10);
        eprintln!("{}: peak {kib} KiB (limit {limit} KiB)", img.display());
        assert!(kib < limit, "{}: peak {kib} KiB", img.display());
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> std::time::Duration {
    let s = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    std::time::Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

/// A directory of 200,000 names, listed the way the kernel asks for it
/// (about 100 entries a call, each call starting where the last stopped),
/// costs time in proportion to the names (it took 12 s of CPU when every
/// chunk copied the whole listing).
#[test]
fn readdir_of_200k_names_is_linear() {
    let n = 200_000u32;
    let img = craft::wide_image(n);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.img");
    fs::write(&path, img).unwrap();
    let sq = Squash::open(Arc::new(File::open(&path).unwrap()), 0, Tuning::default()).unwrap();
    let Data::Dir(root) = sq.inode(1).unwrap().data else {
        panic!("the root is not a directory");
    };
    let start = thread_cpu();
    let (mut seen, mut calls) = (0u64, 0);
    loop {
        calls += 1;
        let mut in_call = 0;
        let end = sq
            .read_dir(1, &root, seen, &mut |name, _, kind, ordinal| {
                assert_eq!(ordinal, seen + 1);
                assert_eq!(kind, FileKind::File);
                assert_eq!(name.to_str().unwrap(), format!("f{seen:06}"));
                if in_call == 100 {
                    return true;
                }
                in_call += 1;
                seen += 1;
                false
            })
            .unwrap();
        if let Some(count) = end {
            assert_eq!(count, u64::from(n));
            break;
        }
    }
    let cpu = thread_cpu() - start;
    eprintln!("{seen} names in {calls} calls: {cpu:?} of CPU");
    assert_eq!(seen, u64::from(n));
    assert!(cpu < std::time::Duration::from_secs(3), "{cpu:?}");
    let last = sq.lookup(1, std::ffi::OsStr::new("f199999"));
    assert_eq!(last, sq.lookup(1, std::ffi::OsStr::new("f000000")));
    assert!(last.is_some());
}

/// A squashfs at offset 4096 of a file, as in a SIF, followed by bytes
/// outside its partition: either its file's data block ("SECRET") or its
/// id table (with `bytes_used` claiming them). Returns the file's bytes
/// and the partition's length.
fn trailing_image(ids_outside: bool) -> (Vec<u8>, u64) {
    let mut w = W::default();
    let names = craft::listing(&[(b"f".to_vec(), 32, 1, FILE)]);
    let inode_table = w.pos();
    let mut block0 = craft::dir_inode(2, 0, 0, names.len() as u32);
    // The file's one block (6 bytes, stored uncompressed) is patched below.
    block0.extend(craft::file_inode(1, 0, (u32::MAX, 0), 6, &[6 | 1 << 24]));
    let start_field = w.b.len() + 2 + 32 + 16;
    w.meta_uncompressed(&block0);
    let dir_table = w.pos();
    w.meta(&names);
    let partition = if ids_outside { w.pos() } else { 0 };
    let id_table = w.ids();
    let len = w.pos();
    let partition = if ids_outside { partition } else { len };
    let mut img = w.finish(Sb {
        inode_count: 2,
        frag_count: 0,
        root: 0,
        bytes_used: len,
        id_table,
        inode_table,
        dir_table,
        frag_table: NOT_SET,
    });
    let secret = img.len() as u32;
    img.extend_from_slice(b"SECRET");
    img[start_field..start_field + 4].copy_from_slice(&secret.to_le_bytes());
    let mut file = vec![0xAA; 4096];
    file.extend(img);
    (file, partition)
}

/// Issue 12 item 3: only `[offset, offset + size)` of the partition is
/// served. Data and tables that point past it, into bytes of the file no
/// signature covers, fail with EIO; the same image opened over the whole
/// file (as it was served before) shows the trailing bytes.
#[test]
fn nothing_outside_the_partition_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let tuning = Tuning {
        prefetch_threads: 0,
        ..Tuning::default()
    };
    let (bytes, len) = trailing_image(false);
    let path = dir.path().join("data-outside.img");
    fs::write(&path, bytes).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    let whole = Squash::open(file.clone(), 4096, tuning).unwrap();
    let f = whole.lookup_path(Path::new("/f")).unwrap();
    assert_eq!(
        whole.read(f, 0, 100).unwrap(),
        b"SECRET",
        "the bytes are there"
    );
    let part = Squash::open_partition(file, 4096, len, tuning).unwrap();
    let f = part.lookup_path(Path::new("/f")).unwrap();
    let err = part.read(f, 0, 100).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    assert!(
        err.to_string().contains("past the end of the filesystem"),
        "{err}"
    );

    let (bytes, len) = trailing_image(true);
    let path = dir.path().join("table-outside.img");
    fs::write(&path, bytes).unwrap();
    let file = Arc::new(File::open(&path).unwrap());
    assert!(Squash::open(file.clone(), 4096, tuning).is_ok());
    let err = Squash::open_partition(file, 4096, len, tuning).unwrap_err();
    assert!(err.to_string().contains("exceeds the"), "{err}");
}

/// The read-ahead of a step's command (`Squash::prepare_ahead`,
/// `Ahead::run`, `take_done`, `cache_ahead`): the file's stored blocks in
/// order, up to the limit, decompressed outside the server's cache (a
/// reader never waits for the low-priority thread that runs it); once put
/// into the cache, the file reads back exactly without another
/// decompression.
#[test]
fn a_files_read_ahead_decompresses_its_blocks_for_the_cache() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    // Five whole 128 KiB blocks, one of them zeros (sparse: nothing to
    // decompress), and a short last block (mksquashfs puts only small
    // files' tails in fragments).
    let mut want: Vec<u8> = (0..5 * 131072 + 1000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    want[2 * 131072..3 * 131072].fill(0);
    fs::write(src.join("prog"), &want).unwrap();
    for comp in ["gzip", "zstd", "lz4"] {
        let img = dir.path().join(format!("{comp}.img"));
        mksquashfs(&src, &img, &["-comp", comp]);
        let tuning = Tuning {
            prefetch_threads: 0,
            ..Tuning::default()
        };
        let sq = Squash::open(Arc::new(File::open(&img).unwrap()), 0, tuning).unwrap();
        let decompressed = |sq: &Squash| sq.stats.blocks_decompressed.load(Ordering::Relaxed);
        let ino = sq.lookup_path(Path::new("/prog")).unwrap();
        let ahead = sq.prepare_ahead(ino, u64::MAX).unwrap();
        // The first block only (it makes the thread's decoder), then the rest.
        ahead.run(true);
        let (first, next) = ahead.take_done(0);
        assert_eq!((first.len(), next), (1, 1), "{comp}");
        assert_eq!(first[0].1, want[..131072], "{comp}");
        assert!(!ahead.finished());
        ahead.run(false);
        assert!(ahead.finished(), "{comp}");
        let (rest, next) = ahead.take_done(next);
        assert_eq!(
            (rest.len(), next),
            (4, 5),
            "{comp}: the sparse block is skipped"
        );
        // Nothing went into the cache yet: a read decompresses block 0 again.
        let before = decompressed(&sq);
        assert_eq!(sq.read(ino, 0, 4096).unwrap(), want[..4096]);
        assert_eq!(decompressed(&sq), before + 1, "{comp}");
        // Once cached, the whole file reads back with no decompression.
        for (key, data) in first.into_iter().chain(rest) {
            sq.cache_ahead(key, data);
        }
        let before = decompressed(&sq);
        let mut got = Vec::new();
        while got.len() < want.len() {
            let piece = sq.read(ino, got.len() as u64, 131072).unwrap();
            assert!(!piece.is_empty());
            got.extend_from_slice(&piece);
        }
        assert_eq!(got, want, "{comp}");
        assert_eq!(decompressed(&sq), before, "{comp}: all from the cache");
        // The limit counts blocks; a stopped read-ahead decompresses no more.
        let two = sq.prepare_ahead(ino, 200_000).unwrap();
        two.run(false);
        assert_eq!(two.take_done(0).0.len(), 2);
        let stopped = sq.prepare_ahead(ino, u64::MAX).unwrap();
        stopped.stop();
        stopped.run(false);
        assert_eq!(stopped.take_done(0).0.len(), 0);
        // Not a regular file: nothing.
        assert!(sq.prepare_ahead(1, u64::MAX).is_none());
    }
}

/// Every inode reached by number goes through the export table, whose index
/// of block positions is read once, not once per inode: with the index
/// overwritten after a first lookup, inodes not looked up before still come
/// back right (the holder's set-up read the same 8 bytes about 70 times).
#[test]
fn the_export_table_s_index_is_read_once() {
    if !have_mksquashfs() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..8 {
        fs::write(src.join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    let img = dir.path().join("img");
    mksquashfs(&src, &img, &["-exports"]);
    let sq = Squash::open(Arc::new(File::open(&img).unwrap()), 0, Tuning::default()).unwrap();
    let first = sq.try_inode(2).unwrap();
    // The superblock's export_table_start (byte 88) names the index.
    let bytes = fs::read(&img).unwrap();
    let index = u64::from_le_bytes(bytes[88..96].try_into().unwrap()) as usize;
    assert!(index + 8 <= bytes.len(), "export index at {index}");
    let mut patched = bytes.clone();
    patched[index..index + 8].fill(0);
    fs::write(&img, &patched).unwrap();
    // A fresh reader of the patched image cannot find inode 3 ...
    let fresh = Squash::open(Arc::new(File::open(&img).unwrap()), 0, Tuning::default());
    assert!(
        fresh.map_or(true, |f| f.try_inode(3).is_err()),
        "the patched index still led to inode 3"
    );
    // ... the one that read the index before still does.
    let content = |ino| String::from_utf8(sq.read(ino, 0, 64).unwrap()).unwrap();
    assert!(matches!(sq.try_inode(3).unwrap().kind, FileKind::File));
    let (two, three) = (content(2), content(3));
    assert!(
        two.starts_with("file ") && three.starts_with("file ") && two != three,
        "{two:?} {three:?}"
    );
    assert_eq!(sq.try_inode(2).unwrap().size, first.size);
}
