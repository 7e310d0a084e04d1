//! The lean holder `sifrun-hold` (built without the `integrity` and
//! `registry` features) links neither OpenSSL nor sequoia: its start must
//! not load libssl/libcrypto nor run their constructors. Run as
//! `cargo test -p launcher --no-default-features --features holder-bin --test lean_holder`.

use std::process::Command;

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
