//! `sifrun build` and `sifrun inspect` against real squashfs-tools, and clear
//! errors for bad input everywhere.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sifrun_tests::*;

fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join(".singularity.d/env")).unwrap();
    fs::write(root.join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/hello"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(root.join("data.txt"), "x".repeat(100_000)).unwrap();
    root
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "usage errors aside, failures exit 1"
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.starts_with("sifrun: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err}");
    err
}

fn no_leftovers(dir: &Path) {
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.contains(".sifrun-build-"),
            "temporary file left behind: {name}"
        );
    }
}

fn unsquashfs(args: &[&str]) -> String {
    String::from_utf8(ok(Command::new("unsquashfs").args(args).output().unwrap())).unwrap()
}

#[test]
fn builds_a_primary_squashfs_partition_in_group_one() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let img = dir.path().join("out.sif");
    let out = String::from_utf8(ok(sifrun(&["build", s(&img), s(&root)]))).unwrap();
    assert!(out.contains("built"), "{out}");
    let image = sif::Image::open(fs::File::open(&img).unwrap()).unwrap();
    let prim = image.primary_partition().unwrap();
    assert_eq!(prim.id(), 1);
    assert_eq!(prim.group_id(), 1);
    assert_eq!(prim.offset(), 32768);
    let p = prim.partition().unwrap();
    assert_eq!(p.fs_type, sif::FsType::SQUASHFS);
    assert_eq!(p.arch, sif::Arch::host());
    assert_eq!(image.header().arch, sif::Arch::host());
    assert_eq!(
        image.header().launch_script(),
        "#!/usr/bin/env run-singularity\n"
    );
    assert_eq!(
        fs::metadata(&img).unwrap().permissions().mode() & 0o111,
        0o111 & !umask()
    );
    // The partition is a squashfs that squashfs-tools read at its offset.
    let listing = unsquashfs(&["-o", "32768", "-lls", s(&img)]);
    assert!(listing.contains("squashfs-root/usr/bin/hello"), "{listing}");
    for line in listing.lines().filter(|l| l.contains("squashfs-root/")) {
        assert!(line.contains(" root/root "), "owned by root: {line}");
    }
    let stats = unsquashfs(&["-o", "32768", "-s", s(&img)]);
    // lz4 by default: the fastest to decompress when a step starts.
    assert!(stats.contains("Compression lz4"), "{stats}");
    no_leftovers(dir.path());
}

fn umask() -> u32 {
    let out = Command::new("sh").args(["-c", "umask"]).output().unwrap();
    u32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 8).unwrap()
}

#[test]
fn every_compression_and_owner_choice() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    for comp in ["zstd", "xz", "lz4"] {
        let img = dir.path().join(format!("{comp}.sif"));
        ok(sifrun(&["build", "--compression", comp, s(&img), s(&root)]));
        let stats = unsquashfs(&["-o", "32768", "-s", s(&img)]);
        assert!(stats.contains(&format!("Compression {comp}")), "{stats}");
    }
    let out = sifrun(&[
        "build",
        "--compression",
        "lzo",
        s(&dir.path().join("x.sif")),
        s(&root),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "bad option values are usage errors"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("lzo"));

    // --keep-owner keeps a non-root owner, the default makes it root.
    let mut owner = unsafe_free_uid();
    if owner == 0 {
        owner = 1234;
        ok(Command::new("chown")
            .args(["1234:1234", s(&root.join("usr/bin/hello"))])
            .output()
            .unwrap());
    }
    let owner_of_hello = |img: &Path| {
        let listing = unsquashfs(&["-o", "32768", "-lln", s(img)]);
        let line = listing
            .lines()
            .find(|l| l.ends_with("/usr/bin/hello"))
            .unwrap()
            .to_owned();
        line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let keep = dir.path().join("keep.sif");
    ok(sifrun(&["build", "--keep-owner", s(&keep), s(&root)]));
    assert_eq!(owner_of_hello(&keep), format!("{owner}/{owner}"));
    let default = dir.path().join("default.sif");
    ok(sifrun(&["build", s(&default), s(&root)]));
    assert_eq!(owner_of_hello(&default), "0/0");
}

#[test]
fn the_image_root_is_0755_unless_the_source_mode_is_kept() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    // As `mktemp -d` makes it.
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).unwrap();
    let root_mode = |img: &Path| {
        let listing = unsquashfs(&["-o", "32768", "-lln", s(img)]);
        let line = listing
            .lines()
            .find(|l| l.ends_with(" squashfs-root"))
            .unwrap_or_else(|| panic!("no root inode in {listing}"))
            .to_owned();
        line.split_whitespace().next().unwrap().to_owned()
    };
    let default = dir.path().join("default.sif");
    ok(sifrun(&["build", s(&default), s(&root)]));
    assert_eq!(root_mode(&default), "drwxr-xr-x");
    let kept = dir.path().join("kept.sif");
    ok(sifrun(&["build", "--keep-root-mode", s(&kept), s(&root)]));
    assert_eq!(root_mode(&kept), "drwx------");
    // Below the root, modes are the source's either way.
    let hello = unsquashfs(&["-o", "32768", "-lln", s(&default)]);
    assert!(
        hello
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("/usr/bin/hello")),
        "{hello}"
    );
}

/// Our uid, from the filesystem (no libc call needed).
fn unsafe_free_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    fs::metadata(dir.path()).unwrap().uid()
}

#[test]
fn from_squashfs_copies_the_filesystem_unchanged() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let sq = dir.path().join("root.sqfs");
    ok(Command::new("mksquashfs")
        .args([
            s(&root),
            s(&sq),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-comp",
            "zstd",
        ])
        .output()
        .unwrap());
    let img = dir.path().join("from.sif");
    ok(sifrun(&["build", s(&img), "--from-squashfs", s(&sq)]));
    let dumped = ok(sifrun(&["sif", "dump", "1", s(&img)]));
    assert!(
        dumped == fs::read(&sq).unwrap(),
        "partition bytes differ from the squashfs"
    );
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let build = |name: &str| {
        let img = dir.path().join(name);
        ok(Command::new(sifrun_bin())
            .args(["build", s(&img), s(&root)])
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .output()
            .unwrap());
        fs::read(img).unwrap()
    };
    let (a, b) = (build("a.sif"), build("b.sif"));
    assert!(a == b, "two builds with SOURCE_DATE_EPOCH differ");
    let header =
        String::from_utf8(ok(sifrun(&["sif", "header", s(&dir.path().join("a.sif"))]))).unwrap();
    assert!(
        header.contains("Created At:           2023-11-14 22:13:20 +0000 UTC"),
        "{header}"
    );
    assert!(!header.contains("ID:"), "{header}");
}

#[test]
fn build_refuses_bad_input_and_leaves_nothing() {
    if !require("mksquashfs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    let img = dir.path().join("out.sif");

    let missing = dir.path().join("nope");
    let err = failed(&sifrun(&["build", s(&img), s(&missing)]));
    assert!(
        err.contains(s(&missing)) && err.contains("No such file"),
        "{err}"
    );
    assert!(!img.exists());

    let err = failed(&sifrun(&["build", s(&img), s(&root.join("data.txt"))]));
    assert!(err.contains("not a directory"), "{err}");

    let err = failed(&sifrun(&[
        "build",
        s(&img),
        "--from-squashfs",
        s(&root.join("data.txt")),
    ]));
    assert!(err.contains("not a squashfs"), "{err}");

    let err = failed(&sifrun(&[
        "build",
        s(&dir.path().join("no/such/dir/x.sif")),
        s(&root),
    ]));
    assert!(err.contains("No such file"), "{err}");

    let err = failed(&sifrun(&["build", s(dir.path()), s(&root)]));
    assert!(err.contains("is a directory"), "{err}");

    fs::write(&img, "precious").unwrap();
    let err = failed(&sifrun(&["build", s(&img), s(&root)]));
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read(&img).unwrap(), b"precious");
    ok(sifrun(&["build", "--force", s(&img), s(&root)]));
    assert_ne!(fs::read(&img).unwrap(), b"precious");

    // A failing mksquashfs (here a stand-in that writes half a file and
    // exits 1) leaves neither the output nor a temporary file.
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let fake = bin.join("mksquashfs");
    fs::write(
        &fake,
        "#!/bin/sh\necho junk > \"$2\"\necho 'FATAL ERROR: disk full' >&2\nexit 1\n",
    )
    .unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    let fresh = dir.path().join("fresh.sif");
    let out = Command::new(sifrun_bin())
        .args(["build", s(&fresh), s(&root)])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    let err = failed(&out);
    assert!(
        err.contains("mksquashfs failed") && err.contains("disk full"),
        "{err}"
    );
    assert!(!fresh.exists());
    no_leftovers(dir.path());

    let out = Command::new(sifrun_bin())
        .args(["build", s(&fresh), s(&root)])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(failed(&out).contains("install squashfs-tools"));
    no_leftovers(dir.path());
}

#[test]
fn inspect_summarises_and_neutralises_terminal_escapes() {
    let signed = image("two-groups-signed-pgp.sif");
    let out = String::from_utf8(ok(sifrun(&["inspect", s(&signed)]))).unwrap();
    assert!(
        out.contains("[2] Squashfs primary system (container root), 386"),
        "{out}"
    );
    assert!(out.contains("[3] Ext3 System, amd64"), "{out}");
    assert!(
        out.contains("signs group 1, SHA-256, signer 12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"),
        "{out}"
    );
    assert!(out.contains("not verified"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("def.sif");
    let def = dir.path().join("recipe.def");
    fs::write(
        &def,
        "Bootstrap: docker\nFrom: debian\n%post\n  echo \x1b[2Jgotcha\n",
    )
    .unwrap();
    ok(sifrun(&["sif", "new", s(&img)]));
    ok(sifrun(&[
        "sif",
        "add",
        "--datatype",
        "1",
        "--groupid",
        "1",
        s(&img),
        s(&def),
    ]));
    let out = String::from_utf8(ok(sifrun(&["inspect", s(&img)]))).unwrap();
    assert!(
        out.contains("Definition file (object 1):\n  Bootstrap: docker"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "escape sequence passed through");
    assert!(out.contains("\u{fffd}[2Jgotcha"), "{out}");
}

#[test]
fn bad_images_get_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    fs::write(&text, "x".repeat(500)).unwrap();
    let short = dir.path().join("short.sif");
    fs::write(&short, b"SIF").unwrap();
    let truncated = dir.path().join("truncated.sif");
    let bytes = fs::read(image("one-group.sif")).unwrap();
    fs::write(&truncated, &bytes[..20_000]).unwrap();
    let missing = dir.path().join("missing.sif");

    for cmd in [
        vec!["sif", "list"],
        vec!["sif", "header"],
        vec!["inspect"],
        vec!["sif", "info", "1"],
        vec!["sif", "dump", "1"],
    ] {
        for (path, want) in [
            (&text, "not a SIF image"),
            (&short, "too short"),
            (&truncated, "DescriptorsOffset"),
            (&missing, "No such file"),
            (&dir.path().to_path_buf(), "is a directory"),
        ] {
            let mut args = cmd.clone();
            args.push(s(path));
            let err = failed(&sifrun(&args));
            assert!(
                err.contains(s(path)) && err.contains(want),
                "{args:?}: {err}"
            );
        }
    }
    let good = image("one-group.sif");
    let err = failed(&sifrun(&["sif", "info", "9", s(&good)]));
    assert!(err.contains("object 9 not found"), "{err}");
    let out = sifrun(&["sif", "info", "0", s(&good)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an object ID"));
}

#[test]
fn edits_refuse_bad_input_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("e.sif");
    let obj = dir.path().join("o");
    fs::write(&obj, "data").unwrap();
    ok(sifrun(&["sif", "new", s(&img)]));
    let err = failed(&sifrun(&["sif", "new", s(&img)]));
    assert!(err.contains("already exists"), "{err}");
    ok(sifrun(&[
        "sif",
        "add",
        "--datatype",
        "4",
        "--partfs",
        "1",
        "--parttype",
        "2",
        "--partarch",
        "amd64",
        s(&img),
        s(&obj),
    ]));
    let before = fs::read(&img).unwrap();
    let long_name = "n".repeat(200);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "add",
                "--datatype",
                "4",
                "--partfs",
                "1",
                "--parttype",
                "2",
                "--partarch",
                "arm64",
            ],
            "already contains a primary",
        ),
        (
            vec!["add", "--datatype", "4", "--partfs", "1"],
            "--parttype",
        ),
        (
            vec![
                "add",
                "--datatype",
                "4",
                "--partfs",
                "1",
                "--parttype",
                "9",
                "--partarch",
                "2",
            ],
            "--parttype: 9",
        ),
        (
            vec![
                "add",
                "--datatype",
                "4",
                "--partfs",
                "1",
                "--parttype",
                "1",
                "--partarch",
                "vax",
            ],
            "--partarch",
        ),
        (vec!["add", "--datatype", "12"], "--datatype: 12"),
        (
            vec![
                "add",
                "--datatype",
                "5",
                "--signhash",
                "1",
                "--signentity",
                "XYZ",
            ],
            "--signentity",
        ),
        (
            vec![
                "add",
                "--datatype",
                "5",
                "--signhash",
                "7",
                "--signentity",
                "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84",
            ],
            "--signhash: 7",
        ),
        (
            vec!["add", "--datatype", "9", "--sbomformat", "pdf"],
            "--sbomformat",
        ),
        (
            vec!["add", "--datatype", "7", "--filename", &long_name],
            "object name",
        ),
    ];
    for (mut args, want) in cases {
        args.insert(0, "sif");
        args.push(s(&img));
        args.push(s(&obj));
        let err = failed(&sifrun(&args));
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            fs::read(&img).unwrap(),
            before,
            "{args:?} changed the image"
        );
    }
    let err = failed(&sifrun(&[
        "sif",
        "add",
        "--datatype",
        "7",
        s(&img),
        s(&dir.path().join("absent")),
    ]));
    assert!(err.contains("absent"), "{err}");
    let err = failed(&sifrun(&["sif", "del", "7", s(&img)]));
    assert!(err.contains("object 7 not found"), "{err}");
    let err = failed(&sifrun(&["sif", "setprim", "7", s(&img)]));
    assert!(err.contains("object 7 not found"), "{err}");
    assert_eq!(fs::read(&img).unwrap(), before);
}

#[test]
fn dump_into_a_closed_pipe_is_quiet() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} sif dump 2 {} | head -c 4",
            sifrun_bin().display(),
            image("two-groups.sif").display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"hsqs");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_on_every_subcommand() {
    for sub in [
        vec!["--help"],
        vec!["sif", "--help"],
        vec!["build", "--help"],
        vec!["inspect", "--help"],
        vec!["exec", "--help"],
        vec!["run", "--help"],
        vec!["shell", "--help"],
        vec!["mount", "--help"],
        vec!["sif", "list", "--help"],
        vec!["sif", "header", "--help"],
        vec!["sif", "info", "--help"],
        vec!["sif", "dump", "--help"],
        vec!["sif", "new", "--help"],
        vec!["sif", "add", "--help"],
        vec!["sif", "del", "--help"],
        vec!["sif", "setprim", "--help"],
    ] {
        let out = String::from_utf8(ok(sifrun(&sub))).unwrap();
        assert!(out.contains("Usage: sifrun"), "{sub:?}: {out}");
    }
}
