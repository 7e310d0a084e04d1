//! `sifrun build`/`pull` from OCI sources (issue 14) against real peers:
//! test images made by umoci and skopeo (tests/oci/make-images), converted
//! from each local source form, compared with `umoci unpack --rootless` of
//! the same image, and run; hostile inputs fail with one line each and
//! leave nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use sifrun_tests::{containers_can_run, ok, require, s, scratch, sifrun};

const MAKE_IMAGES: &str = include_str!("oci/make-images");

/// The images, made once per test process; `None` when the peers are
/// missing (a failure when SIFRUN_REQUIRE_PEERS is set).
fn images() -> Option<&'static Path> {
    static DIR: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    DIR.get_or_init(|| {
        if !(require("umoci")
            && require("skopeo")
            && require("mksquashfs")
            && require("unsquashfs"))
        {
            return None;
        }
        let tmp = scratch();
        let dir = tmp.path().join("img");
        let out = Command::new("bash")
            .args(["-c", MAKE_IMAGES, "make-images", s(&dir)])
            .output()
            .unwrap();
        ok(out);
        Some((tmp, dir))
    })
    .as_ref()
    .map(|(_, d)| d.as_path())
}

/// One node of a tree: type, mode, owner, size, content digest or target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    owner: (u32, u32),
    detail: String,
}

/// The tree under `root` (owners from `owners` when given, else from disk).
fn walk(root: &Path, owners: &BTreeMap<String, (u32, u32)>) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let m = fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            let (kind, detail) = if ft.is_dir() {
                stack.push(r.clone());
                ('d', String::new())
            } else if ft.is_symlink() {
                ('l', s(&fs::read_link(e.path()).unwrap()).to_owned())
            } else {
                let data = fs::read(e.path()).unwrap();
                let links = m.nlink();
                (
                    'f',
                    format!("{} bytes, {:x}, {links} links", data.len(), md5ish(&data)),
                )
            };
            let key = s(&r).to_owned();
            let owner = owners.get(&key).copied().unwrap_or((m.uid(), m.gid()));
            let mode = if kind == 'l' {
                0o777
            } else {
                m.permissions().mode() & 0o7777
            };
            out.insert(
                key,
                Node {
                    kind,
                    mode,
                    owner,
                    detail,
                },
            );
        }
    }
    out
}

/// A cheap content fingerprint (FNV-1a); equality is what matters.
fn md5ish(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Owners from umoci's mtree (hierarchical format: `/set` defaults, a
/// `type=dir` entry enters the directory, `..` leaves it; rootless owners
/// in `xattr.user.rootlesscontainers`, a protobuf of uid and gid).
fn mtree_owners(bundle: &Path) -> BTreeMap<String, (u32, u32)> {
    let file = fs::read_dir(bundle)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "mtree"))
        .expect("an mtree in the bundle");
    let text = fs::read_to_string(file).unwrap();
    // A rootless unpack owns everything as its user, which stands for root.
    let me = fs::metadata(bundle).unwrap();
    let me = (me.uid(), me.gid());
    let mut defaults: BTreeMap<String, String> = BTreeMap::new();
    let mut dir: Vec<String> = Vec::new();
    let mut owners = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let name = words.next().unwrap();
        let kv: BTreeMap<String, String> = words
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        match name {
            "/set" => defaults.extend(kv),
            ".." => {
                dir.pop();
            }
            "." => dir.clear(),
            _ => {
                let get = |k: &str| {
                    kv.get(k)
                        .or_else(|| defaults.get(k))
                        .cloned()
                        .unwrap_or_default()
                };
                let path = dir
                    .iter()
                    .chain([&name.to_owned()])
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("/");
                let mut owner = (get("uid").parse().unwrap(), get("gid").parse().unwrap());
                if owner == me {
                    owner = (0, 0);
                }
                if let Some(x) = kv.get("xattr.user.rootlesscontainers") {
                    owner = rootless_owner(x, owner);
                }
                owners.insert(path.clone(), owner);
                if get("type") == "dir" {
                    dir.push(name.to_owned());
                }
            }
        }
    }
    owners
}

fn rootless_owner(b64: &str, default: (u32, u32)) -> (u32, u32) {
    let out = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = out;
    std::io::Write::write_all(out.stdin.as_mut().unwrap(), b64.as_bytes()).unwrap();
    let bytes = out.wait_with_output().unwrap().stdout;
    let (mut uid, mut gid) = default;
    let mut i = 0;
    while i < bytes.len() {
        let tag = bytes[i];
        i += 1;
        let mut v: u32 = 0;
        let mut shift = 0;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            v |= u32::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        match tag {
            0x08 => uid = v,
            0x10 => gid = v,
            _ => {}
        }
    }
    (uid, gid)
}

/// The primary partition's offset in a SIF.
fn partition_offset(sif: &Path) -> u64 {
    let f = fs::File::open(sif).unwrap();
    let img = sif::Image::open(&f).unwrap();
    img.primary_partition().unwrap().offset()
}

/// The converted image's tree (extracted as this user; owners and modes
/// from `unsquashfs -lln`), without the Apptainer layout sifrun adds.
fn sif_tree(sif: &Path, work: &Path) -> BTreeMap<String, Node> {
    let off = partition_offset(sif).to_string();
    let dest = work.join("x");
    let _ = fs::remove_dir_all(&dest);
    ok(Command::new("unsquashfs")
        .args(["-n", "-o", &off, "-d", s(&dest), s(sif)])
        .output()
        .unwrap());
    let list = String::from_utf8(ok(Command::new("unsquashfs")
        .args(["-lln", "-o", &off, s(sif)])
        .output()
        .unwrap()))
    .unwrap();
    let mut owners = BTreeMap::new();
    let mut modes = BTreeMap::new();
    for l in list.lines() {
        let Some((head, path)) = l.split_once(" squashfs-root/") else {
            continue;
        };
        let mut w = head.split_whitespace();
        let perm = w.next().unwrap();
        let (u, g) = w.next().unwrap().split_once('/').unwrap();
        let path = path.split(" -> ").next().unwrap().to_owned();
        owners.insert(path.clone(), (u.parse().unwrap(), g.parse().unwrap()));
        modes.insert(path, perm.to_owned());
    }
    let mut t = walk(&dest, &owners);
    // Modes from the listing (extraction applies the umask).
    for (p, n) in &mut t {
        n.mode = mode_of(&modes[p]);
    }
    let layout = [
        ".singularity.d",
        ".exec",
        ".run",
        ".shell",
        ".test",
        "apptainer",
        "singularity",
        "environment",
    ];
    t.retain(|p, _| {
        !layout
            .iter()
            .any(|l| p == l || p.starts_with(&format!("{l}/")))
    });
    t
}

fn mode_of(perm: &str) -> u32 {
    let b: Vec<char> = perm.chars().collect();
    let mut m = 0;
    for (i, c) in b[1..10].iter().enumerate() {
        let bit = 1 << (8 - i);
        match c {
            'r' | 'w' | 'x' => m |= bit,
            's' | 't' => {
                m |= bit
                    | if i == 2 {
                        0o4000
                    } else if i == 5 {
                        0o2000
                    } else {
                        0o1000
                    }
            }
            'S' | 'T' => {
                m |= if i == 2 {
                    0o4000
                } else if i == 5 {
                    0o2000
                } else {
                    0o1000
                }
            }
            _ => {}
        }
    }
    if b[0] == 'l' { 0o777 } else { m }
}

/// umoci's tree, minus what sifrun's layout provides in every image (the
/// base directories and files Apptainer's layout creates when missing).
fn umoci_tree(images: &Path) -> BTreeMap<String, Node> {
    let bundle = images.join("bundle");
    walk(&bundle.join("rootfs"), &mtree_owners(&bundle))
}

fn build(work: &Path, source: &str) -> PathBuf {
    let out = work.join("out.sif");
    let _ = fs::remove_file(&out);
    ok(sifrun(&["build", s(&out), source]));
    out
}

#[test]
fn each_source_form_matches_umoci_unpack() {
    let Some(images) = images() else { return };
    let want = umoci_tree(images);
    assert_eq!(want["home/u/f"].owner, (1234, 1234), "the fixture's owner");
    let work = scratch();
    for form in [
        format!("oci:{}:t", s(&images.join("layout"))),
        format!("oci-archive:{}", s(&images.join("oci.tar"))),
        format!("docker-archive:{}", s(&images.join("docker.tar"))),
        format!("oci:{}:t", s(&images.join("zstd"))),
        format!("oci-archive:{}:t", s(&images.join("oci.tar"))),
        format!("docker-archive:{}:img:t", s(&images.join("docker.tar"))),
    ] {
        let sif = build(work.path(), &form);
        let mut got = sif_tree(&sif, work.path());
        // The layout's base directories and files that umoci's tree lacks.
        got.retain(|p, _| {
            want.contains_key(p)
                || ![
                    "dev",
                    "proc",
                    "sys",
                    "tmp",
                    "root",
                    "var",
                    "var/tmp",
                    "etc/hosts",
                    "etc/resolv.conf",
                ]
                .contains(&p.as_str())
        });
        assert_eq!(got, want, "{form}");
        assert!(got.len() >= 20, "{form}: {got:?}");
        assert_eq!(got["home/u"].owner, (1234, 1234), "{form}");
        assert_eq!(got["home/u"].mode, 0o700, "{form}");
        assert_eq!(got["work/passwd-link"].detail, "../etc/passwd", "{form}");
        assert!(
            got["etc/shared-link"].detail.ends_with(", 2 links"),
            "{form}: {:?}",
            got["etc/shared-link"]
        );
        for gone in ["gone", "etc/removed", "opq/old"] {
            assert!(!got.contains_key(gone), "{form}: {gone}");
        }
        let inspect = String::from_utf8(ok(sifrun(&["inspect", s(&sif)]))).unwrap();
        assert!(
            inspect.contains(&format!(
                "\"org.label-schema.usage.singularity.deffile.from\": \"{form}\""
            )),
            "{inspect}"
        );
        assert!(inspect.contains("\"oci-config.json\""), "{inspect}");
        assert!(
            inspect.contains(&format!("\nSource:        {form} (")),
            "{inspect}"
        );
    }
}

#[test]
fn runscript_env_and_workdir() {
    let Some(images) = images() else { return };
    if !containers_can_run() {
        return;
    }
    let work = scratch();
    let sif = build(
        work.path(),
        &format!("oci-archive:{}", s(&images.join("oci.tar"))),
    );
    // Options first, then the image, then the runscript's arguments.
    let run = |opts: &[&str], args: &[&str]| {
        let mut a = vec!["run"];
        a.extend(opts);
        a.push(s(&sif));
        a.extend(args);
        String::from_utf8(ok(sifrun(&a))).unwrap()
    };
    assert_eq!(run(&[], &[]), "ep cmd1 cmd two\n");
    assert_eq!(run(&[], &["a", "b c"]), "ep a b c\n");
    assert_eq!(
        run(&[], &["$PWD", "$GREETING", "$SPACED"]),
        "ep /work/dir hello a b\n"
    );
    assert_eq!(run(&["--no-eval"], &["$PWD"]), "ep $PWD\n");
    assert_eq!(run(&["--no-eval"], &[]), "ep cmd1 cmd two\n");
    assert_eq!(run(&["--pwd", "/tmp"], &["$PWD"]), "ep /tmp\n");
}

fn fails(out: Output, want: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(want), "{err}");
}

fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(c.stdin.as_mut().unwrap(), data).unwrap();
    let out = c.wait_with_output().unwrap().stdout;
    String::from_utf8(out).unwrap()[..64].to_owned()
}

/// A ustar header + data for one regular file.
fn tar_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut v = h.to_vec();
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(512) * 512, 0);
    v
}

/// An OCI layout with one uncompressed layer `layer`; `index_pad` spaces
/// appended to index.json.
fn hand_layout(dir: &Path, layer: &[u8], index_pad: usize) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        fs::write(blobs.join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let (ld, ls) = put(layer);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{ld}"]}}}}"#
    );
    let (cd, cs) = put(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{ld}","size":{ls}}}]}}"#
    );
    let (md, ms) = put(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms}}}]}}{}"#,
        " ".repeat(index_pad)
    );
    fs::write(dir.join("index.json"), index).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn hostile_inputs_fail_with_one_line_and_leave_nothing() {
    let Some(images) = images() else { return };
    let work = scratch();
    let out_dir = work.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("x.sif");
    let o = s(&out);
    fails(
        sifrun(&["build", o, "oci-archive:/nonexistent/x.tar"]),
        "build: oci-archive:/nonexistent/x.tar: no such file or directory",
    );
    // A changed blob.
    let bad = work.path().join("bad");
    ok(Command::new("cp")
        .args(["-r", s(&images.join("layout")), s(&bad)])
        .output()
        .unwrap());
    let blobs = bad.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = fs::read(&biggest).unwrap();
    data[100] ^= 0xff;
    fs::set_permissions(&biggest, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&biggest, data).unwrap();
    fails(
        sifrun(&["build", o, &format!("oci:{}:t", s(&bad))]),
        "content has digest",
    );
    // A layer with a `../` name.
    let dotdot = work.path().join("dotdot");
    let mut layer = tar_file("../escape", b"x\n");
    layer.extend_from_slice(&[0; 1024]);
    hand_layout(&dotdot, &layer, 0);
    fails(
        sifrun(&["build", o, &format!("oci:{}", s(&dotdot))]),
        ": entry '../escape' leaves the image root",
    );
    assert!(!work.path().join("escape").exists());
    // An oversized index.
    let big = work.path().join("big");
    let mut layer = tar_file("ok", b"x\n");
    layer.extend_from_slice(&[0; 1024]);
    hand_layout(&big, &layer, 5 << 20);
    fails(
        sifrun(&["build", o, &format!("oci:{}", s(&big))]),
        "index.json: more than 4194304 bytes",
    );
    assert_eq!(
        fs::read_dir(&out_dir).unwrap().count(),
        0,
        "something was left behind"
    );
    // The same hand-made layout without the padding converts: the failures
    // above are the hostile parts'.
    let good = work.path().join("good");
    hand_layout(&good, &layer, 0);
    ok(sifrun(&["build", o, &format!("oci:{}", s(&good))]));
}

#[test]
fn pull_names_the_image_as_apptainer() {
    let Some(images) = images() else { return };
    let work = scratch();
    let out = Command::new(sifrun_tests::sifrun_bin())
        .args([
            "pull",
            &format!("oci-archive:{}", s(&images.join("oci.tar"))),
        ])
        .current_dir(work.path())
        .output()
        .unwrap();
    ok(out);
    assert!(work.path().join("oci.tar_latest.sif").exists());
    let named = work.path().join("named.sif");
    ok(sifrun(&[
        "pull",
        s(&named),
        &format!("docker-archive:{}:img:t", s(&images.join("docker.tar"))),
    ]));
    assert!(named.exists());
    fails(
        sifrun(&[
            "pull",
            s(&named),
            &format!("oci-archive:{}", s(&images.join("oci.tar"))),
        ]),
        "already exists (use --force to replace it)",
    );
    fails(
        sifrun(&[
            "build",
            s(&work.path().join("other.sif")),
            &format!("docker-archive:{}:nope:t", s(&images.join("docker.tar"))),
        ]),
        "no image tagged",
    );
    assert!(!work.path().join("other.sif").exists());
}
