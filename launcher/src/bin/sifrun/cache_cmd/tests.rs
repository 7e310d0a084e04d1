use super::*;

const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn pins_apply_to_their_image_only() {
    let r = docker_ref("docker://reg.example:5000/a/b:t").unwrap();
    let pin = format!("reg.example:5000/a/b:t@{D}");
    let p = pinned_by(&r, Some(&pin)).unwrap();
    assert_eq!(p.digest().unwrap().to_string(), D);
    assert!(pinned_by(&r, Some(&format!("reg.example:5000/a/b:u@{D}"))).is_none());
    assert!(pinned_by(&r, Some(&format!("reg.example:5000/a/c:t@{D}"))).is_none());
    assert!(pinned_by(&r, Some("reg.example:5000/a/b:t")).is_none());
    assert!(pinned_by(&r, None).is_none());
    // docker://alpine is docker.io/library/alpine:latest.
    let hub = docker_ref("docker://alpine").unwrap();
    assert!(pinned_by(&hub, Some(&format!("docker.io/library/alpine:latest@{D}"))).is_some());
}

/// The holder's site lookup: the child, as the cache's account, parses
/// the pinned reference, finds the entry and records its use; root's
/// side checks the path it names.
#[test]
fn the_site_child_parses_finds_and_records_as_the_account() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("needs root (to become the cache's account); skipped");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let d = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = d.path().join("site");
    for sub in ["", "v1", "v1/sif", "v1/sif/sha256", "v1/used"] {
        let p = root.join(sub);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown(&p, Some(65534), Some(65534)).unwrap();
    }
    let account = Account {
        name: "nobody".into(),
        uid: 65534,
        gid: 65534,
    };
    let site = Site::new(root.clone(), Some(account));
    let key = Key::new(D, CACHE_COMPRESSION.name()).unwrap();
    let entry = site.cache.entry_path(&key);
    std::fs::write(&entry, b"SIF").unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o444)).unwrap();
    let text = format!("docker://reg.example/a/b@{D}");
    assert_eq!(
        fill_site(&text, &[], &site, None, Limits::default(), None),
        Some(entry.clone())
    );
    // An entry is used whatever the list says (only conversions obey it).
    let only = ["other.example".to_owned()];
    assert_eq!(
        fill_site(&text, &[], &site, Some(&only), Limits::default(), None),
        Some(entry)
    );
    let stamp = root.join(format!("v1/used/{}.gzip", &D[7..]));
    assert_eq!(std::fs::metadata(&stamp).unwrap().uid(), 65534);
    // A reference the child cannot parse: no entry, the user's cache.
    assert_eq!(
        fill_site(
            "docker://Bad Ref",
            &[],
            &site,
            None,
            Limits::default(),
            None
        ),
        None
    );
}

/// The path the site cache's child names is taken only in the form of
/// an entry: in `v1/sif/sha256` itself (not below the cache's root
/// elsewhere, not through `..`), named by a digest and the cache's
/// compression.
#[test]
fn the_childs_path_must_be_an_entry() {
    let site = Site::new(PathBuf::from("/site"), None);
    let key = Key::new(D, CACHE_COMPRESSION.name()).unwrap();
    let entry = site.cache.entry_path(&key);
    assert_eq!(
        entry,
        Path::new(&format!("/site/v1/sif/sha256/{}.gzip.sif", &D[7..]))
    );
    assert!(is_site_entry(&site, &entry));
    let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
    for bad in [
        format!("/site/v1/tmp/.w/{name}"),
        format!("/site/v1/sif/sha256/../../tmp/{name}"),
        format!("/site/v1/sif/sha256/./{name}"),
        format!("/site/v1/sif/sha256//{name}"),
        format!("/site/v1/sif/sha256/{}.gzip.sif", &D[8..]),
        format!("/site/v1/sif/sha256/{}.gzip.sif", D[7..].to_uppercase()),
        format!("/site/v1/sif/sha256/{}.zstd.sif", &D[7..]),
        format!("/site/v1/sif/sha256/{}.gzip.sif.x", &D[7..]),
        "/site/v1/sif/sha256/x.gzip.sif".to_owned(),
        "/site".to_owned(),
    ] {
        let p = PathBuf::from(&bad);
        // What the old, lexical check let through.
        assert!(p.starts_with("/site"));
        assert!(!is_site_entry(&site, &p), "{bad}");
    }
}

/// A registry off `images.site_registries` is not converted by the
/// site cache's account: the child says so and nothing is fetched.
#[test]
fn the_site_converts_only_listed_registries() {
    let d = tempfile::tempdir().unwrap();
    let site = Site::new(d.path().join("site"), None);
    let only = ["registry.example/team".to_owned()];
    let e = site_child(
        &format!("docker://evil.example/team/x@{D}"),
        &[],
        &site,
        (Some(&only), Limits::default()),
        None,
    )
    .unwrap_err();
    assert!(
        e.contains("evil.example/team/x is not in the admin's images.site_registries"),
        "{e}"
    );
    assert!(!d.path().join("site/v1").exists(), "nothing written");
}

#[test]
fn a_steps_cache_comes_from_the_job() {
    let env = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
    };
    let e = step_image("docker://reg.example/a:t", &env(&[]), None, None, None).unwrap_err();
    assert!(e.to_string().contains("no cache directory"), "{e}");
}
