//! The lean holder `sifrun-hold` (built without the `integrity` and
//! `registry` features) links neither OpenSSL nor sequoia: its start must
//! not load libssl/libcrypto nor run their constructors. Run as
//! `cargo test -p launcher --no-default-features --features holder-bin --test lean_holder`.

use std::process::{Command, Stdio};

use slurm_conf::protocol::{Outcome, Report, Request};

const LEAN: &str = env!("CARGO_BIN_EXE_sifrun-hold");

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_lean_holder_links_no_openssl() {
    let libraries = output("ldd", &[LEAN]);
    assert!(libraries.contains("libc.so"), "{libraries}");
    for lib in ["libssl", "libcrypto", "libnettle", "libgcrypt"] {
        assert!(!libraries.contains(lib), "{LEAN} links {lib}:\n{libraries}");
    }
}

#[test]
fn the_lean_holder_contains_no_openssl_sequoia_or_registry_code() {
    let symbols = output("nm", &["--demangle", LEAN]);
    assert!(symbols.contains("hold_cmd"), "no symbols to judge");
    for name in [
        "OPENSSL_",
        "openssl::",
        "sequoia_openpgp",
        "ureq",
        "native_tls",
    ] {
        let found: Vec<&str> = symbols
            .lines()
            .filter(|l| l.contains(name))
            .take(3)
            .collect();
        assert!(found.is_empty(), "{LEAN} contains {name}: {found:?}");
    }
}

#[test]
fn the_lean_holder_answers_its_version_and_only_holds() {
    let version = output(LEAN, &["--version"]);
    assert!(version.starts_with("sifrun-hold "), "{version}");
    let out = Command::new(LEAN).arg("exec").output().unwrap();
    assert!(!out.status.success(), "the lean holder has no exec");
}

/// The report the lean holder answers `request` with.
fn report(request: &Request) -> Report {
    use std::io::Write;
    let mut child = Command::new(LEAN)
        .arg("slurm-hold")
        .arg(format!("--slurm-step={}", request.step))
        .arg(&request.image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&request.encode())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    Report::decode_line(String::from_utf8(out.stdout).unwrap().trim_end()).unwrap()
}

/// An ECL step, or a docker:// image that is not the job's pinned digest
/// in the user's cache or comes with a site cache (the plugin gives those
/// to `sifrun`), is refused with a report.
#[test]
fn the_lean_holder_refuses_the_ecl_path_and_docker_images() {
    let local = Request {
        version: slurm_conf::protocol::VERSION,
        release: slurm_conf::protocol::RELEASE.into(),
        step: "7.0".into(),
        image: "/nonexistent/i.sif".into(),
        ..Request::default()
    };
    let ecl = Request {
        ecl_config: Some("/etc/sifrun/sifrun.toml".into()),
        ns_dir: Some("/run/sifrun/7.0.ns".into()),
        ..local.clone()
    };
    // A docker:// image: served only from the user's cache (the job's
    // pinned digest), never with a site cache configured.
    let docker = Request {
        image: "docker://alpine:3".into(),
        ..local.clone()
    };
    let site = Request {
        site_cache: Some("/var/cache/sifrun-site".into()),
        ..docker.clone()
    };
    for (request, what) in [
        (ecl, "a step under an ECL"),
        (
            docker,
            "a docker:// image without the job's pin of its digest",
        ),
        (site, "a docker:// image with a site cache"),
    ] {
        let report = report(&request);
        let text = format!("{report:?}");
        assert!(
            matches!(report.outcome, Outcome::Failed { .. })
                && text.contains(&format!("{what} needs the full holder, sifrun")),
            "{text}"
        );
    }
}

/// A holder left from another release (a partial upgrade) refuses the
/// plugin's request with one line that says what to do.
#[test]
fn the_holder_refuses_another_releases_plugin() {
    let base = Request {
        version: slurm_conf::protocol::VERSION,
        step: "7.0".into(),
        image: "/nonexistent/i.sif".into(),
        ..Request::default()
    };
    for (release, shown) in [("0.0.0-old", "0.0.0-old"), ("", "unknown")] {
        let report = report(&Request {
            release: release.into(),
            ..base.clone()
        });
        let text = format!("{report:?}");
        let want = format!(
            "the holder sifrun-hold {} does not match the plugin {shown}: reinstall sifrun",
            slurm_conf::protocol::RELEASE
        );
        assert!(
            matches!(report.outcome, Outcome::Failed { .. }) && text.contains(&want),
            "{text}"
        );
    }
}
