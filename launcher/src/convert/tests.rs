//! Passes 1 and 2 over a hand-made OCI layout (a gzip layer and a zstd
//! layer with a whiteout and a hard link to a file of the first), without
//! mksquashfs: the stream pass 2 writes is read back.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use oci::digest::Digest;
use oci::platform::Wanted;
use oci::reference::Source;
use oci::tar::write::{Header, encode, padding};
use oci::tar::{Kind, Reader};

use super::{config, emit, layer, source};

fn entry(out: &mut Vec<u8>, path: &str, kind: Kind, data: &[u8], link: &str) {
    out.extend(encode(&Header {
        path: path.as_bytes(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 1234,
        gid: 1234,
        mtime: 1,
        size: data.len() as u64,
        link: link.as_bytes(),
        device: (0, 0),
        xattrs: &[],
    }));
    out.extend_from_slice(data);
    out.resize(out.len() + padding(data.len() as u64), 0);
}

fn put(dir: &Path, data: &[u8]) -> (Digest, usize) {
    let d = Digest::of(data);
    fs::write(dir.join("blobs/sha256").join(d.hex()), data).unwrap();
    (d, data.len())
}

/// A layout with two layers; returns the source.
fn layout(dir: &Path) -> Source {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let mut l1 = Vec::new();
    entry(&mut l1, "d/", Kind::Dir, b"", "");
    entry(&mut l1, "d/a", Kind::File, b"aaa\n", "");
    entry(&mut l1, "d/gone", Kind::File, b"x", "");
    l1.extend_from_slice(&[0; 1024]);
    let mut l2 = Vec::new();
    entry(&mut l2, "d/.wh.gone", Kind::File, b"", "");
    entry(&mut l2, "b", Kind::HardLink, b"", "d/a");
    l2.extend_from_slice(&[0; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&l1).unwrap();
    let (d1, s1) = put(dir, &gz.finish().unwrap());
    let (d2, s2) = put(dir, &zstd::encode_all(&l2[..], 1).unwrap());
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"WorkingDir":"/d"}},"rootfs":{{"type":"layers","diff_ids":["{}","{}"]}}}}"#,
        Digest::of(&l1),
        Digest::of(&l2)
    );
    let (cd, cs) = put(dir, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{cs}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d1}","size":{s1}}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{d2}","size":{s2}}}]}}"#
    );
    let (md, ms) = put(dir, manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{md}","size":{ms},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#
        ),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Source::OciDir {
        dir: dir.to_owned(),
        tag: Some("t".into()),
    }
}

fn wanted() -> Wanted {
    Wanted {
        architecture: "amd64".into(),
        variant: None,
    }
}

/// Passes 1 and 2 without the layout layer; the stream as `path kind size
/// owner [data|link]` lines.
fn stream_of(src: &Source) -> Result<String, super::ConvertError> {
    let store = source::Store::open(src, "t")?;
    let image = source::resolve(&store, src, &wanted(), "t")?;
    assert_eq!(
        config::workdir_of(&image.config_bytes).unwrap(),
        Path::new("/d")
    );
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|b| layer::headers(&store, b, "t"))
        .collect::<Result<_, _>>()?;
    let tree = oci::tree::merge(&layers)?;
    let extra = oci::tree::Layer {
        name: "none".into(),
        entries: Vec::new(),
    };
    let inputs = emit::Inputs {
        store: &store,
        blobs: &image.layers,
        layers: &layers,
        extra: &extra,
        extra_data: &[],
        what: "t",
    };
    let mut out = Vec::new();
    inputs.write(&tree.plan(), &mut out)?;
    let mut r = Reader::new(&out[..]);
    let mut lines = String::new();
    while let Some(e) = r.next_entry().unwrap() {
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        let tail = match e.link {
            Some(l) => String::from_utf8(l).unwrap(),
            None => String::from_utf8(data).unwrap(),
        };
        lines += &format!(
            "{} {:?} {} {}:{} {}\n",
            String::from_utf8_lossy(&e.path),
            e.kind,
            e.size,
            e.uid,
            e.gid,
            tail.trim_end()
        );
    }
    Ok(lines)
}

#[test]
fn two_passes_over_gzip_and_zstd_layers() {
    let dir = tempfile::tempdir().unwrap();
    let src = layout(dir.path());
    assert_eq!(
        stream_of(&src).unwrap(),
        // The link group's first name carries the data; d/gone is whited out.
        "d/ Dir 0 1234:1234 \nb File 4 1234:1234 aaa\nd/a HardLink 0 0:0 b\n"
    );
}

#[test]
fn a_changed_layer_is_a_digest_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let src = layout(dir.path());
    // Replace the zstd layer with different bytes of the same size.
    let blobs = dir.path().join("blobs/sha256");
    for e in fs::read_dir(&blobs).unwrap() {
        let p = e.unwrap().path();
        let mut data = fs::read(&p).unwrap();
        if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let last = data.len() - 1;
            data[last] ^= 1;
            fs::write(&p, data).unwrap();
        }
    }
    let e = stream_of(&src).unwrap_err().to_string();
    assert!(e.contains("content has digest"), "{e}");
}

#[test]
fn a_missing_tag_names_the_tags() {
    let dir = tempfile::tempdir().unwrap();
    let Source::OciDir { dir: d, .. } = layout(dir.path()) else {
        unreachable!()
    };
    let e = stream_of(&Source::OciDir {
        dir: d,
        tag: Some("nope".into()),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no image tagged \"nope\"; tags: t"), "{e}");
}

/// Wraps the layout's manifest in a nested two-platform index (amd64 is
/// the real image, arm64 a copy with another config) under tag "multi".
fn multi_platform(dir: &Path) {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let blobs = dir.join("blobs/sha256");
    let amd_digest = amd["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let mut m: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(amd_digest)).unwrap()).unwrap();
    let config_digest = m["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    let config = fs::read_to_string(blobs.join(config_digest))
        .unwrap()
        .replace("amd64", "arm64")
        .replace("/d", "/arm");
    let (cd, cs) = put(dir, config.as_bytes());
    m["config"]["digest"] = cd.to_string().into();
    m["config"]["size"] = cs.into();
    let (md, ms) = put(dir, m.to_string().as_bytes());
    let platform = |arch: &str| serde_json::json!({"architecture": arch, "os": "linux"});
    let mut amd_entry = amd.clone();
    amd_entry["annotations"] = serde_json::json!({});
    amd_entry["platform"] = platform("amd64");
    let arm_entry = serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.to_string(), "size": ms, "platform": platform("arm64")
    });
    let nested = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [amd_entry, arm_entry]
    });
    let (nd, ns) = put(dir, nested.to_string().as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": nd.to_string(), "size": ns,
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }]});
    fs::write(dir.join("index.json"), top.to_string()).unwrap();
}

#[test]
fn a_multi_platform_index_picks_the_wanted_architecture() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    multi_platform(dir.path());
    let src = Source::OciDir {
        dir: dir.path().to_owned(),
        tag: Some("multi".into()),
    };
    let store = source::Store::open(&src, "t").unwrap();
    let pick = |arch: &str| {
        let w = Wanted {
            architecture: arch.into(),
            variant: None,
        };
        source::resolve(&store, &src, &w, "t")
    };
    let amd = pick("amd64").unwrap();
    assert_eq!(amd.config.architecture, "amd64");
    assert!(amd.index_digest.is_some());
    let arm = pick("arm64").unwrap();
    assert_eq!(arm.config.architecture, "arm64");
    assert_eq!(
        config::workdir_of(&arm.config_bytes).unwrap(),
        Path::new("/arm")
    );
    assert_ne!(arm.manifest_digest, amd.manifest_digest);
    let e = pick("riscv64").unwrap_err().to_string();
    assert!(e.contains("riscv64"), "{e}");
}
