//! Three real layer tars (PAX, written by Python's `tarfile`: whiteouts,
//! an opaque directory, hard links within and across layers, a link whose
//! target a later layer replaces, a symlinked parent, a directory replaced
//! by a file, a long name with an xattr, a FIFO, an absolute name) read
//! with `oci::tar`, merged with `oci::tree`, and emitted as the converter's
//! pass 2 would: the final listing and contents are the golden.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use oci::tar::{Entry, Kind, Reader};
use oci::tree::{Emission, EntryId, Layer, merge};

const LAYERS: [&[u8]; 3] = [
    include_bytes!("../testdata/layers/1.tar"),
    include_bytes!("../testdata/layers/2.tar"),
    include_bytes!("../testdata/layers/3.tar"),
];

/// Pass 1: headers only. Pass 2 data: entry id → content.
fn read_layers() -> (Vec<Layer>, HashMap<EntryId, Vec<u8>>) {
    let mut layers = Vec::new();
    let mut data = HashMap::new();
    for (li, bytes) in LAYERS.iter().enumerate() {
        let mut r = Reader::new(*bytes);
        let mut entries: Vec<Entry> = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut body = Vec::new();
            r.read_to_end(&mut body).unwrap();
            assert_eq!(body.len() as u64, e.size);
            data.insert(
                EntryId {
                    layer: li,
                    index: entries.len(),
                },
                body,
            );
            entries.push(e);
        }
        layers.push(Layer {
            name: format!("sha256:layer{}", li + 1),
            entries,
        });
    }
    (layers, data)
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

#[test]
fn three_layers_merge_to_the_expected_image() {
    let (layers, data) = read_layers();
    let tree = merge(&layers).unwrap();
    assert!(tree.warnings().is_empty());
    let get = |id: &EntryId| &layers[id.layer].entries[id.index];
    let mut listing = String::new();
    let mut content: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in tree.plan() {
        let line = match &e {
            Emission::Dir {
                path,
                source: Some(s),
                ..
            } => {
                let h = get(s);
                format!("D {} {:o} {}:{}", show(path), h.mode, h.uid, h.gid)
            }
            Emission::Dir {
                path, source: None, ..
            } => format!("D {} implicit", show(path)),
            Emission::Node { path, source } => {
                let h = get(source);
                content.insert(show(path), data[source].clone());
                let extra = match h.kind {
                    Kind::Symlink => format!(
                        " -> {}",
                        String::from_utf8_lossy(h.link.as_deref().unwrap())
                    ),
                    Kind::Fifo => " fifo".into(),
                    _ => format!(" {}B", h.size),
                };
                let xattrs: Vec<&str> = h.xattrs.iter().map(|(k, _)| k.as_str()).collect();
                let xattrs = if xattrs.is_empty() {
                    String::new()
                } else {
                    format!(" xattrs={}", xattrs.join(","))
                };
                format!(
                    "N {} {:o} {}:{}{extra}{xattrs}",
                    show(path),
                    h.mode,
                    h.uid,
                    h.gid
                )
            }
            Emission::HardLink { path, target } => {
                content.insert(show(path), content[&show(target)].clone());
                format!("H {} => {}", show(path), show(target))
            }
        };
        listing += &line;
        listing.push('\n');
    }
    let long = format!("usr/share/{}/{}", "l".repeat(120), "m".repeat(150));
    let want = format!(
        "D / 755 0:0
D abs implicit
D bin 755 0:0
D etc 755 0:0
D home 755 0:0
D home/u 700 1234:1234
D opq 755 0:0
D run 755 0:0
D usr 755 0:0
D usr/lib 755 0:0
D usr/share implicit
D usr/share/{l} implicit
N bin/su 4755 0:0 6B
H bin/su-link => bin/su
N home/u/f 644 1234:1234 5B
S lib 644 0:0 -> usr/lib
N etc/passwd-link 644 0:0 26B
N opq/new 644 0:0 3B
N etc/passwd 644 0:0 28B
N usr/lib/x 644 0:0 13B
N swap 644 0:0 11B
N {long} 644 0:0 5B xattrs=user.t
N run/fifo 600 0:0 fifo
N abs/name 644 0:0 3B
",
        l = "l".repeat(120)
    )
    .replace("\nS lib", "\nN lib");
    assert_eq!(listing, want);
    // The link made in layer 2 keeps the passwd layer 1 had; layer 3's new
    // passwd is a separate file.
    assert_eq!(content["etc/passwd-link"], b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(content["etc/passwd"], b"root:x:0:0::/root:/bin/bash\n");
    assert_eq!(content["bin/su-link"], b"su v1\n");
    assert_eq!(content["usr/lib/x"], b"x in usr/lib\n");
    for gone in ["gone", "gone/x", "opq/old", "swap/child", "lib/x"] {
        assert!(
            !content.contains_key(gone) && !tree.contains(gone.as_bytes()),
            "{gone} survived"
        );
    }
}

fn have_mksquashfs() -> bool {
    let ok = std::process::Command::new("mksquashfs")
        .arg("-version")
        .output()
        .is_ok();
    assert!(
        ok || std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "mksquashfs is required"
    );
    ok
}

fn write_entry(out: &mut Vec<u8>, h: &oci::tar::write::Header<'_>, data: &[u8]) {
    out.extend_from_slice(&oci::tar::write::encode(h));
    out.extend_from_slice(data);
    out.resize(out.len() + oci::tar::write::padding(data.len() as u64), 0);
}

fn header_of<'a>(path: &'a [u8], e: &'a Entry) -> oci::tar::write::Header<'a> {
    oci::tar::write::Header {
        path,
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        size: e.size,
        link: e.link.as_deref().unwrap_or_default(),
        device: e.device,
        xattrs: &e.xattrs,
    }
}

/// The converter's pass 2 in miniature: the plan and the Apptainer layout
/// as one tar stream.
fn final_stream(layers: &[Layer], data: &HashMap<EntryId, Vec<u8>>) -> Vec<u8> {
    use oci::apptainer::{Provenance, as_layer, layout};
    use oci::tar::write::Header;
    let config: oci::manifest::ImageConfig = oci::manifest::parse_config(
        include_bytes!("../testdata/config-docker.json"),
        2,
        "config",
    )
    .unwrap();
    let p = Provenance {
        bootstrap: "oci".into(),
        from: "oci:/l:t".into(),
        reference: "/l:t".into(),
        digest: None,
        index_digest: None,
        config_digest: oci::digest::Digest::of(b"c"),
        platform: "linux/amd64".into(),
        arch: "amd64".into(),
        build_date: "2026-11-29T12:00:00Z".into(),
        converter: "sifrun test".into(),
    };
    let mut tree = merge(layers).unwrap();
    let (extra, extra_data) = as_layer(&layout(&config, &p), &mut tree, 1);
    tree.apply(layers.len(), &extra).unwrap();
    let entry = |id: &EntryId| {
        layers
            .get(id.layer)
            .unwrap_or(&extra)
            .entries
            .get(id.index)
            .unwrap()
    };
    let body = |id: &EntryId| {
        if id.layer < layers.len() {
            &data[id]
        } else {
            &extra_data[id.index]
        }
    };
    let mut out = Vec::new();
    let none: &[(String, Vec<u8>)] = &[];
    for em in tree.plan() {
        match &em {
            Emission::Dir { path, .. } if path.is_empty() => {}
            Emission::Dir {
                path,
                source: Some(s),
                ..
            } => write_entry(&mut out, &header_of(path, entry(s)), b""),
            Emission::Dir {
                path,
                source: None,
                mtime,
            } => {
                let h = Header {
                    path,
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: *mtime,
                    size: 0,
                    link: b"",
                    device: (0, 0),
                    xattrs: none,
                };
                write_entry(&mut out, &h, b"");
            }
            Emission::Node { path, source } => {
                write_entry(&mut out, &header_of(path, entry(source)), body(source))
            }
            Emission::HardLink { path, target } => {
                let h = Header {
                    path,
                    kind: Kind::HardLink,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    size: 0,
                    link: target,
                    device: (0, 0),
                    xattrs: none,
                };
                write_entry(&mut out, &h, b"");
            }
        }
    }
    out.extend_from_slice(&oci::tar::write::END);
    out
}

/// The plan's stream is what mksquashfs -tar (squashfs-tools >= 4.5)
/// accepts without a complaint, and the image holds the owners, modes,
/// hard links and contents the merge decided.
#[test]
fn mksquashfs_takes_the_final_stream() {
    use std::process::{Command, Stdio};
    if !have_mksquashfs() {
        return;
    }
    let (layers, data) = read_layers();
    let stream = final_stream(&layers, &data);
    let dir = std::env::temp_dir().join(format!("oci-layers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("img.sqfs");
    let mut child = Command::new("mksquashfs")
        .args([
            "-",
            img.to_str().unwrap(),
            "-tar",
            "-noappend",
            "-no-progress",
            "-quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &stream));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let complaints =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{complaints}");
    assert!(
        !complaints.contains("Could not") && !complaints.contains("already exists"),
        "{complaints}"
    );
    let cat = |p: &str| {
        let o = Command::new("unsquashfs")
            .args(["-cat", img.to_str().unwrap(), p])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    assert_eq!(cat("etc/passwd-link"), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(cat("etc/passwd"), b"root:x:0:0::/root:/bin/bash\n");
    assert_eq!(cat("bin/su-link"), b"su v1\n");
    assert!(
        cat(".singularity.d/env/10-docker2singularity.sh").starts_with(b"#!/bin/sh\nexport PATH=")
    );
    assert_eq!(cat("etc/hosts"), b"");
    let list = Command::new("unsquashfs")
        .args(["-lln", img.to_str().unwrap()])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    std::fs::remove_dir_all(&dir).unwrap();
    let line = |p: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!("squashfs-root/{p}")))
            .unwrap_or_else(|| panic!("{p} missing:\n{list}"))
    };
    assert!(
        line("bin/su").starts_with("-rwsr-xr-x 0/0"),
        "{}",
        line("bin/su")
    );
    assert!(
        line("home/u").starts_with("drwx------ 1234/1234"),
        "{}",
        line("home/u")
    );
    assert!(
        line("home/u/f").starts_with("-rw-r--r-- 1234/1234"),
        "{}",
        line("home/u/f")
    );
    assert!(
        line("run/fifo").starts_with("prw-------"),
        "{}",
        line("run/fifo")
    );
    assert!(
        list.contains("squashfs-root/apptainer -> .singularity.d/runscript"),
        "{list}"
    );
    assert!(
        !list.contains("squashfs-root/gone") && !list.contains("opq/old"),
        "{list}"
    );
}
