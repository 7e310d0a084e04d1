use super::*;

const INDEX: &[u8] = include_bytes!("../../testdata/index-ubuntu.json");
const V2S2: &[u8] = include_bytes!("../../testdata/manifest-v2s2.json");
const CONFIG: &[u8] = include_bytes!("../../testdata/config-docker.json");
const SCHEMA1: &[u8] = include_bytes!("../../testdata/manifest-schema1.json");

fn err(bytes: &[u8], ct: Option<&str>) -> String {
    parse_manifest(bytes, ct, "img:t").unwrap_err().to_string()
}

#[test]
fn index_and_manifest_fixtures() {
    let Parsed::Index(i) = parse_manifest(INDEX, Some(media::OCI_INDEX), "ubuntu").unwrap() else {
        panic!()
    };
    assert_eq!(i.manifests.len(), 12);
    assert_eq!(
        i.manifests[2].platform.as_ref().unwrap().variant.as_deref(),
        Some("v8")
    );
    // Without a transport type, the body decides.
    assert!(matches!(
        parse_manifest(INDEX, None, "x").unwrap(),
        Parsed::Index(_)
    ));
    assert!(matches!(
        parse_manifest(INDEX, Some("application/json"), "x").unwrap(),
        Parsed::Index(_)
    ));
    let Parsed::Manifest(m) = parse_manifest(V2S2, Some(media::DOCKER_MANIFEST), "x").unwrap()
    else {
        panic!()
    };
    assert_eq!(m.layers.len(), 2);
    assert_eq!(m.layers[0].size, 29_534_055);
    assert_eq!(m.config.media_type, media::DOCKER_CONFIG);
}

#[test]
fn body_without_media_type_is_classified_by_shape() {
    let d = crate::digest::Digest::of(b"x");
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{d}","size":1}},"layers":[]}}"#,
        media::OCI_CONFIG
    );
    assert!(matches!(
        parse_manifest(m.as_bytes(), None, "x").unwrap(),
        Parsed::Manifest(_)
    ));
    let i = r#"{"schemaVersion":2,"manifests":[]}"#;
    assert!(matches!(
        parse_manifest(i.as_bytes(), None, "x").unwrap(),
        Parsed::Index(_)
    ));
    assert!(err(br#"{"schemaVersion":2}"#, None).contains("not an image manifest or index"));
}

#[test]
fn schema1_is_refused_with_advice() {
    let e = err(SCHEMA1, None);
    assert!(
        e.starts_with("img:t uses a Docker schema 1 manifest"),
        "{e}"
    );
    assert!(e.contains("skopeo copy"), "{e}");
    assert!(err(b"{}", Some(media::DOCKER_SCHEMA1_SIGNED)).contains("schema 1"));
}

#[test]
fn conflicts_caps_and_garbage() {
    let e = err(INDEX, Some(media::OCI_MANIFEST));
    assert!(
        e.contains("served as application/vnd.oci.image.manifest.v1+json but its mediaType is"),
        "{e}"
    );
    let big = vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize];
    assert_eq!(err(&big, None), "img:t: larger than 4194304 bytes");
    assert!(err(b"{not json", None).starts_with("img:t: invalid JSON"));
    let bad_digest = String::from_utf8(V2S2.to_vec())
        .unwrap()
        .replacen("sha256:", "md5:", 1);
    assert!(err(bad_digest.as_bytes(), None).contains("invalid JSON"));
    let v3 = r#"{"schemaVersion":3,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    assert!(err(v3.as_bytes(), None).contains("schemaVersion 3"));
    let helm = String::from_utf8(V2S2.to_vec()).unwrap().replace(
        media::DOCKER_CONFIG,
        "application/vnd.cncf.helm.config.v1+json",
    );
    assert!(
        err(helm.as_bytes(), None).contains(
            "not a container image (config type application/vnd.cncf.helm.config.v1+json)"
        )
    );
}

#[test]
fn too_many_layers() {
    let d = crate::digest::Digest::of(b"x");
    let layer = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":1}}"#
    );
    let layers = vec![layer; MAX_LAYERS + 1].join(",");
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"{}","digest":"{d}","size":1}},"layers":[{layers}]}}"#,
        media::OCI_CONFIG
    );
    assert!(err(m.as_bytes(), None).contains("1001 layers, more than the 1000 allowed"));
}

#[test]
fn config_fixture_and_checks() {
    let c = parse_config(CONFIG, 2, "config sha256:x").unwrap();
    assert_eq!(c.architecture, "amd64");
    let cc = c.config.unwrap();
    assert_eq!(cc.cmd, Some(vec!["/bin/bash".to_owned()]));
    assert_eq!(cc.entrypoint, None);
    assert_eq!(cc.working_dir.as_deref(), Some("/work"));
    assert_eq!(cc.env.unwrap()[1], "K=a$b");
    assert_eq!(
        cc.labels.unwrap()["org.opencontainers.image.version"],
        "22.04"
    );
    let e = parse_config(CONFIG, 3, "config sha256:x")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "config sha256:x: rootfs has type \"layers\" and 2 diff_ids for 3 layers"
    );
    let win = String::from_utf8(CONFIG.to_vec())
        .unwrap()
        .replace(r#""os": "linux""#, r#""os": "windows""#);
    let e = parse_config(win.as_bytes(), 2, "c")
        .unwrap_err()
        .to_string();
    assert_eq!(e, "c: image is for OS \"windows\", not linux");
}
