use super::*;
use crate::manifest::{Parsed, parse_manifest};

fn d(n: u8) -> Digest {
    Digest::of(&[n])
}

fn index(tags: &[Option<&str>]) -> Index {
    let entries: Vec<String> = tags
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ann = t.map_or(String::new(), |t| format!(r#","annotations":{{"{REF_NAME}":"{t}"}}"#));
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":1{ann}}}"#,
                d(i as u8)
            )
        })
        .collect();
    let json = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        entries.join(",")
    );
    match parse_manifest(json.as_bytes(), None, "index.json").unwrap() {
        Parsed::Index(i) => i,
        Parsed::Manifest(_) => panic!(),
    }
}

#[test]
fn oci_layout_marker() {
    check_oci_layout(br#"{"imageLayoutVersion":"1.0.0"}"#, "/l").unwrap();
    let e = check_oci_layout(br#"{"imageLayoutVersion":"2.0.0"}"#, "/l").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/l: not an OCI image layout (oci-layout: version 2.0.0)"
    );
    assert!(check_oci_layout(b"{}", "/l").is_err());
}

#[test]
fn selection_by_tag() {
    let i = index(&[Some("t1"), Some("t2"), None]);
    assert_eq!(select_by_tag(&i, Some("t2"), "/l").unwrap().digest, d(1));
    let e = select_by_tag(&i, Some("t3"), "/l").unwrap_err();
    assert_eq!(e.to_string(), "/l: no image tagged \"t3\"; tags: t1, t2");
    let e = select_by_tag(&i, None, "/l").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/l holds 3 images; choose one by tag: t1, t2"
    );
    let one = index(&[None]);
    assert_eq!(select_by_tag(&one, None, "/l").unwrap().digest, d(0));
    assert_eq!(blob_path(&d(0)), format!("blobs/sha256/{}", d(0).hex()));
}

#[test]
fn docker_save_manifests() {
    let hex = d(9).hex().to_owned();
    let legacy = format!(
        r#"[{{"Config":"{hex}.json","RepoTags":["img:t","localhost:5000/x/y:2"],"Layers":["abc/layer.tar"]}},
            {{"Config":"blobs/sha256/{hex}","RepoTags":null,"Layers":["blobs/sha256/{hex}"]}}]"#
    );
    let images = parse_archive_manifest(legacy.as_bytes(), "s.tar").unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(
        select_archive_image(&images, Some("img:t"), "s.tar")
            .unwrap()
            .layers,
        ["abc/layer.tar"]
    );
    assert_eq!(
        select_archive_image(&images, Some("docker.io/library/img:t"), "s.tar").unwrap(),
        &images[0]
    );
    assert_eq!(
        select_archive_image(&images, Some("localhost:5000/x/y:2"), "s.tar").unwrap(),
        &images[0]
    );
    let e = select_archive_image(&images, Some("img:other"), "s.tar").unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.tar: no image tagged \"img:other\"; tags: img:t, localhost:5000/x/y:2"
    );
    assert!(matches!(
        select_archive_image(&images, None, "s.tar"),
        Err(LayoutError::Ambiguous { count: 2, .. })
    ));
    assert_eq!(
        select_archive_image(&images[1..], None, "s.tar").unwrap(),
        &images[1]
    );
    assert_eq!(digest_from_member(&images[0].config), Some(d(9)));
    assert_eq!(digest_from_member(&images[1].layers[0]), Some(d(9)));
    assert_eq!(digest_from_member("abc/layer.tar"), None);
    for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
        let m = format!(r#"[{{"Config":"c.json","Layers":["{bad}"]}}]"#);
        let e = parse_archive_manifest(m.as_bytes(), "s.tar")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is absolute or contains '..'"), "{bad}: {e}");
    }
    assert!(
        parse_archive_manifest(b"{}", "s.tar")
            .unwrap_err()
            .to_string()
            .starts_with("s.tar: invalid manifest.json")
    );
}

#[test]
fn archive_index_finds_members_in_place() {
    let bytes = include_bytes!("../../testdata/pax.tar");
    let m = index_archive(&bytes[..], "pax.tar").unwrap();
    let file = m["d/file"];
    assert_eq!(
        &bytes[file.offset as usize..(file.offset + file.size) as usize],
        b"hello\n"
    );
    assert!(!m.contains_key("d"), "directories are not members");
    assert!(m.keys().any(|k| k.len() > 200), "long names indexed");
    let e = index_archive(&bytes[..700], "pax.tar")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("pax.tar: tar stream truncated"), "{e}");
}
