//! The protocol's tests: round trips, versions, releases, limits.

use super::*;

fn request() -> Request {
    Request {
        version: VERSION,
        release: RELEASE.into(),
        step: "42.batch".into(),
        image: "/home/u/img.sif".into(),
        ecl_config: Some("/etc/sifrun/sifrun.toml".into()),
        ns_dir: Some("/run/sifrun/42.batch.ns".into()),
        image_dirs: vec!["/shared/images".into()],
        binds: vec!["/scratch".into(), "/d:/data:ro".into()],
        env: vec!["A=1".into()],
        pwd: Some("/w".into()),
        writable_tmpfs: true,
        no_home: true,
        gpu: GpuMode::Rocm,
        netfs: true,
        netfs_types: vec!["wekafs".into()],
        fabric_libraries: false,
        allow_umad: true,
        slurm_client: true,
        slurm_conf: "/var/spool/slurmd/conf-cache/slurm.conf".into(),
        verbosity: 1,
        job_env: vec![
            ("PATH".into(), "/usr/bin".into()),
            ("ODD".into(), "two\nlines \"quoted\" \u{0}nul".into()),
        ],
        command: Some("hostname".into()),
        node_name: Some("n1".into()),
        site_cache: Some("/shared/sifrun-cache".into()),
        site_cache_user: Some("sifrun-cache".into()),
        site_registries: Some(vec!["docker.io/library".into()]),
        site_max_image_size: Some(20 << 30),
        site_min_free: Some(10 << 30),
    }
}

/// `command` is a hint a plugin may leave out.
#[test]
fn a_request_without_a_command_reads() {
    let mut r = request();
    r.command = None;
    let json = String::from_utf8(r.encode()).unwrap();
    assert!(json.contains("\"command\":null"), "{json}");
    let without = json.replace(",\"command\":null", "");
    assert!(!without.contains("command"), "{without}");
    assert_eq!(Request::decode(without.as_bytes()).unwrap(), r);
}

#[test]
fn releases_must_match() {
    let mut r = request();
    r.release = RELEASE.into();
    r.check_release("sifrun-hold").unwrap();
    let json = String::from_utf8(r.encode()).unwrap();
    let old = json.replace(&format!(",\"release\":\"{RELEASE}\""), "");
    assert!(!old.contains("release"), "{old}");
    let old = Request::decode(old.as_bytes()).expect("a request without a release reads");
    let e = old.check_release("sifrun-hold").unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "the holder sifrun-hold {RELEASE} does not match the plugin unknown: reinstall sifrun"
        )
    );
    r.release = "9.9.9".into();
    let e = r.check_release("sifrun").unwrap_err().to_string();
    assert!(
        e.contains("holder sifrun 0") && e.contains("plugin 9.9.9"),
        "{e}"
    );
}

#[test]
fn requests_round_trip() {
    let r = request();
    let bytes = r.encode();
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(Request::decode(&bytes).unwrap(), r);
    assert_eq!(Request::read_from(&bytes[..]).unwrap(), r);
    let d = Request::default();
    assert_eq!(Request::decode(&d.encode()).unwrap_err().to_string(), {
        ProtocolError::Version {
            found: 0,
            expected: VERSION,
        }
        .to_string()
    });
}

#[test]
fn reports_round_trip_on_one_line() {
    for r in [
        Report::ready(vec![
            EnvChange::Set("A".into(), "x y\nz=1 'q'".into()),
            EnvChange::Set("EMPTY".into(), String::new()),
            EnvChange::Unset("LD_LIBRARY_PATH".into()),
        ]),
        Report::ready(Vec::new()),
        Report::failed(Stage::Ecl, "sifrun: /i.sif: denied\nby execgroup"),
    ] {
        let line = r.encode_line();
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert_eq!(Report::decode_line(&line).unwrap(), r);
    }
    let Outcome::Failed { message, .. } = Report::failed(Stage::Setup, "a\nb").outcome else {
        panic!()
    };
    assert_eq!(message, "a b");
    let mut out = Vec::new();
    Report::ready(Vec::new()).write_to(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"version\":2,\"outcome\":{\"ready\":{\"env\":[]}}}\n"
    );
}

#[test]
fn other_versions_and_garbage_are_refused() {
    let newer = request().encode();
    let newer = String::from_utf8(newer)
        .unwrap()
        .replace("\"version\":2", "\"version\":3");
    let e = Request::decode(newer.as_bytes()).unwrap_err();
    assert!(matches!(e, ProtocolError::Version { found: 3, .. }), "{e}");
    assert!(e.to_string().contains("(3 and 2)"), "{e}");
    // A version-1 plugin and a version-2 launcher refuse each other.
    let older = String::from_utf8(request().encode())
        .unwrap()
        .replace("\"version\":2", "\"version\":1");
    assert!(Request::decode(older.as_bytes()).is_err());
    let extra =
        String::from_utf8(request().encode())
            .unwrap()
            .replacen('{', "{\"surprise\":true,", 1);
    assert!(matches!(
        Request::decode(extra.as_bytes()),
        Err(ProtocolError::Malformed { .. })
    ));
    for bad in [
        "",
        "ready",
        "{}",
        "{\"version\":1}",
        "{\"version\":1,\"outcome\":{}}",
    ] {
        assert!(Report::decode_line(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn progress_lines_round_trip_and_are_told_from_reports() {
    let p = Progress {
        phase: "download".into(),
        done: 1 << 20,
        total: 8 << 20,
        message: "layers 0/2,\n1.0/8.0 MiB".into(),
    };
    let line = p.encode_line();
    assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
    assert!(line.starts_with("{\"version\":2,\"progress\":{"), "{line}");
    let Message::Progress(back) = Message::decode_line(&line).unwrap() else {
        panic!("{line}")
    };
    assert_eq!(back.message, "layers 0/2, 1.0/8.0 MiB");
    assert_eq!(
        (back.done, back.total, back.phase.as_str()),
        (1 << 20, 8 << 20, "download")
    );
    let mut out = Vec::new();
    p.write_to(&mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), line);
    let ready = Report::ready(Vec::new());
    assert_eq!(
        Message::decode_line(&ready.encode_line()).unwrap(),
        Message::Report(ready)
    );
    // A report line is not progress, nor progress a report.
    assert!(Report::decode_line(&line).is_err());
    for bad in [
        "{\"version\":2,\"progress\":{}}",
        "{\"version\":1,\"progress\":{\"phase\":\"x\",\"done\":0,\"total\":0,\"message\":\"\"}}",
        "{\"version\":2,\"progress\":{\"phase\":\"x\",\"done\":0,\"total\":0,\"message\":\"\"},\"more\":1}",
    ] {
        assert!(Message::decode_line(bad).is_err(), "{bad}");
    }
}

#[test]
fn hold_user_round_trips_and_rejects_garbage() {
    assert_eq!(
        encode_hold_user(1001, 1002, &[1002, 27]),
        "1001:1002:1002,27"
    );
    assert_eq!(
        decode_hold_user("1001:1002:1002,27"),
        Some((1001, 1002, vec![1002, 27]))
    );
    assert_eq!(decode_hold_user("1001:1002:"), Some((1001, 1002, vec![])));
    for bad in ["", "1001", "1001:1002", "x:1:", "1:2:3,,4", "-1:2:"] {
        assert_eq!(decode_hold_user(bad), None, "{bad}");
    }
}
