use super::*;

const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// design §1.2: input → (domain, path, tag, digest?, Display).
#[test]
#[allow(clippy::too_many_lines, clippy::type_complexity)]
fn normalisation_golden_table() {
    let d = format!("sha256:{HEX}");
    let table: Vec<(String, &str, &str, Option<&str>, bool, String)> = vec![
        (
            "ubuntu".into(),
            "docker.io",
            "library/ubuntu",
            Some("latest"),
            false,
            "docker.io/library/ubuntu:latest".into(),
        ),
        (
            "ubuntu:22.04".into(),
            "docker.io",
            "library/ubuntu",
            Some("22.04"),
            false,
            "docker.io/library/ubuntu:22.04".into(),
        ),
        (
            "user/img".into(),
            "docker.io",
            "user/img",
            Some("latest"),
            false,
            "docker.io/user/img:latest".into(),
        ),
        (
            "docker.io/ubuntu".into(),
            "docker.io",
            "library/ubuntu",
            Some("latest"),
            false,
            "docker.io/library/ubuntu:latest".into(),
        ),
        (
            "index.docker.io/user/img".into(),
            "docker.io",
            "user/img",
            Some("latest"),
            false,
            "docker.io/user/img:latest".into(),
        ),
        (
            "localhost/img".into(),
            "localhost",
            "img",
            Some("latest"),
            false,
            "localhost/img:latest".into(),
        ),
        (
            "localhost:5000/a/b:t".into(),
            "localhost:5000",
            "a/b",
            Some("t"),
            false,
            "localhost:5000/a/b:t".into(),
        ),
        (
            "127.0.0.1:5000/x".into(),
            "127.0.0.1:5000",
            "x",
            Some("latest"),
            false,
            "127.0.0.1:5000/x:latest".into(),
        ),
        (
            "[::1]:5000/x".into(),
            "[::1]:5000",
            "x",
            Some("latest"),
            false,
            "[::1]:5000/x:latest".into(),
        ),
        (
            "Foo/bar".into(),
            "Foo",
            "bar",
            Some("latest"),
            false,
            "Foo/bar:latest".into(),
        ),
        (
            "ghcr.io/o/r/s:v1.2_x-y".into(),
            "ghcr.io",
            "o/r/s",
            Some("v1.2_x-y"),
            false,
            "ghcr.io/o/r/s:v1.2_x-y".into(),
        ),
        (
            "a__b/c-----d.e_f".into(),
            "docker.io",
            "a__b/c-----d.e_f",
            Some("latest"),
            false,
            "docker.io/a__b/c-----d.e_f:latest".into(),
        ),
        (
            "localhost:5000".into(),
            "docker.io",
            "library/localhost",
            Some("5000"),
            false,
            "docker.io/library/localhost:5000".into(),
        ),
        (
            format!("ubuntu@{d}"),
            "docker.io",
            "library/ubuntu",
            None,
            true,
            format!("docker.io/library/ubuntu@{d}"),
        ),
        (
            format!("ubuntu:22.04@{d}"),
            "docker.io",
            "library/ubuntu",
            Some("22.04"),
            true,
            format!("docker.io/library/ubuntu:22.04@{d}"),
        ),
    ];
    for (input, domain, path, tag, has_digest, shown) in table {
        let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.domain(), domain, "{input}");
        assert_eq!(r.path(), path, "{input}");
        assert_eq!(r.tag(), tag, "{input}");
        assert_eq!(r.digest().is_some(), has_digest, "{input}");
        assert_eq!(r.to_string(), shown, "{input}");
        // Normalised output parses back to itself.
        assert_eq!(Reference::parse(&shown).unwrap(), r, "{input}");
    }
}

#[test]
fn digest_wins_over_tag_for_fetching() {
    let r = Reference::parse(&format!("ubuntu:22.04@sha256:{HEX}")).unwrap();
    assert_eq!(r.fetch_ref(), format!("sha256:{HEX}"));
    assert_eq!(Reference::parse("ubuntu").unwrap().fetch_ref(), "latest");
    let pinned = Reference::parse("ubuntu:22.04")
        .unwrap()
        .with_digest(Digest::parse(&format!("sha256:{HEX}")).unwrap());
    assert_eq!(
        pinned.to_string(),
        format!("docker.io/library/ubuntu:22.04@sha256:{HEX}")
    );
}

#[test]
fn docker_hub_hosts() {
    let hub = Reference::parse("ubuntu").unwrap();
    assert_eq!(hub.wire_host(), "registry-1.docker.io");
    assert_eq!(hub.credential_key(), "https://index.docker.io/v1/");
    assert_eq!(hub.name(), "docker.io/library/ubuntu");
    let local = Reference::parse("localhost:5000/a/b").unwrap();
    assert_eq!(local.wire_host(), "localhost:5000");
    assert_eq!(local.credential_key(), "localhost:5000");
}

#[test]
fn refusals() {
    let cases: Vec<(String, &str)> = vec![
        ("UBUNTU".into(), "repository name must be lowercase"),
        (
            "docker.io/Library/ubuntu".into(),
            "repository name must be lowercase",
        ),
        ("a//b".into(), "repository path"),
        ("x:".into(), "(tag)"),
        ("@sha256:short".into(), "invalid digest"),
        (
            format!("ubuntu@sha256:{}", HEX.to_uppercase()),
            "invalid digest",
        ),
        (
            format!("ubuntu@sha512:{HEX}{HEX}"),
            "unsupported digest algorithm",
        ),
        (HEX.into(), "64-byte hexadecimal"),
        ("".into(), "empty name"),
        ("a/-b".into(), "repository path"),
        ("a/b.".into(), "repository path"),
        ("a/b..c".into(), "repository path"),
        ("a/b___c".into(), "repository path"),
        ("-host.io/x".into(), "registry host"),
        ("host.io:/x".into(), "registry host"),
        ("[zz]:5000/x".into(), "registry host"),
        ("ubuntu:.x".into(), "(tag)"),
        (format!("ubuntu:{}", "t".repeat(129)), "(tag)"),
        (format!("x.io/{}", "a".repeat(251)), "longer than 255"),
        ("a b".into(), "repository path"),
    ];
    for (input, want) in cases {
        let e = Reference::parse(&input).expect_err(&input);
        assert!(e.to_string().contains(want), "{input}: {e}");
        assert!(
            e.to_string().contains(&format!("{input:?}")),
            "error names the reference: {e}"
        );
    }
    // 255 exactly is fine.
    assert!(Reference::parse(&format!("x.io/{}", "a".repeat(250))).is_ok());
}

fn src(text: &str, existing: &[&str]) -> Result<Source, ReferenceError> {
    Source::parse_with(text, |p| existing.iter().any(|e| Path::new(e) == p))
}

#[test]
fn source_forms() {
    assert_eq!(
        src("docker://alpine:3", &[]).unwrap(),
        Source::Docker(Reference::parse("alpine:3").unwrap())
    );
    assert_eq!(
        src("oci:/l", &[]).unwrap(),
        Source::OciDir {
            dir: "/l".into(),
            tag: None
        }
    );
    assert_eq!(
        src("oci:/l:t1", &[]).unwrap(),
        Source::OciDir {
            dir: "/l".into(),
            tag: Some("t1".into())
        }
    );
    // An existing directory whose name has a colon is that directory.
    assert_eq!(
        src("oci:/a:b", &["/a:b"]).unwrap(),
        Source::OciDir {
            dir: "/a:b".into(),
            tag: None
        }
    );
    // What follows the last colon is no tag: part of the path.
    assert_eq!(
        src("oci:/a:b/c", &[]).unwrap(),
        Source::OciDir {
            dir: "/a:b/c".into(),
            tag: None
        }
    );
    assert_eq!(
        src("oci-archive:x.tar:v2", &[]).unwrap(),
        Source::OciArchive {
            file: "x.tar".into(),
            tag: Some("v2".into())
        }
    );
    assert_eq!(
        src("oci-archive:x.tar", &[]).unwrap(),
        Source::OciArchive {
            file: "x.tar".into(),
            tag: None
        }
    );
    assert_eq!(
        src("docker-archive:s.tar", &[]).unwrap(),
        Source::DockerArchive {
            file: "s.tar".into(),
            name: None
        }
    );
    assert_eq!(
        src("docker-archive:s.tar:img:t", &[]).unwrap(),
        Source::DockerArchive {
            file: "s.tar".into(),
            name: Some("img:t".into())
        }
    );
    assert_eq!(
        src(
            "docker-archive:/d:x/s.tar:localhost:5000/img:t",
            &["/d:x/s.tar"]
        )
        .unwrap(),
        Source::DockerArchive {
            file: "/d:x/s.tar".into(),
            name: Some("localhost:5000/img:t".into())
        }
    );
    assert_eq!(src("oci:/l", &[]).unwrap().bootstrap(), "oci");
    assert_eq!(src("docker://a", &[]).unwrap().bootstrap(), "docker");
}

#[test]
fn source_refusals() {
    for (text, want) in [
        ("docker:ubuntu", "unknown image source"),
        ("/path/img", "unknown image source"),
        ("shub://x", "unknown image source"),
        ("oci:", "missing path"),
        ("oci-archive::t", "missing path"),
        ("docker-archive::x", "missing path"),
        ("docker://UBUNTU", "lowercase"),
    ] {
        let e = src(text, &[]).expect_err(text);
        assert!(e.to_string().contains(want), "{text}: {e}");
    }
}

/// design §1.3: Apptainer's `uri.GetName`, odd digest names included.
#[test]
fn pull_names() {
    for (input, want) in [
        ("docker://ubuntu", "ubuntu_latest.sif"),
        ("docker://ubuntu:22.04", "ubuntu_22.04.sif"),
        ("docker://localhost:5000/a/b", "b_latest.sif"),
        ("docker://localhost:5000/a/b:t", "b_t.sif"),
        ("docker://ubuntu@sha256:abc", "ubuntu@sha256_abc.sif"),
        (
            "docker://ubuntu:22.04@sha256:abc",
            "ubuntu_22.04@sha256.sif",
        ),
        ("docker://x:a,b", "x_a.sif"),
        ("oci-archive:/p/x.tar", "x.tar_latest.sif"),
        ("oci:dir:tag", "dir_tag.sif"),
        ("docker-archive:/s/save.tar", "save.tar_latest.sif"),
    ] {
        assert_eq!(pull_name(input), want, "{input}");
    }
}
