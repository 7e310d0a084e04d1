//! `sifrun sign` and `sifrun verify` as users run them, with GnuPG as the
//! independent peer: GnuPG accepts our signatures (and rejects tampered
//! ones), keys GnuPG made sign images, two signers share one image, and
//! passphrase-protected keys work without a terminal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sifrun_tests::*;

fn key() -> PathBuf {
    corpus().join("test/keys/private.asc")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A GnuPG home with the sylabs test key imported.
fn gnupg(dir: &Path) -> PathBuf {
    let home = dir.join("gnupg");
    fs::create_dir(&home).unwrap();
    let mut perms = fs::metadata(&home).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
    fs::set_permissions(&home, perms).unwrap();
    ok(gpg(&home, &["--import", s(&key())]));
    home
}

fn gpg(home: &Path, args: &[&str]) -> Output {
    Command::new("gpg")
        .env("GNUPGHOME", home)
        .args(["--batch", "--quiet", "--pinentry-mode", "loopback"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn our_signatures_match_sylabs_and_satisfy_gnupg() {
    if !require("gpg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("one-group.sif");
    fs::copy(image("one-group.sif"), &img).unwrap();
    let out = ok(sifrun(&["sign", "--key", s(&key()), s(&img)]));
    assert!(
        String::from_utf8_lossy(&out).contains("signature object 3 for object group 1"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // The signed metadata is byte for byte what sylabs/sif signed for the
    // same image.
    let ours = ok(sifrun(&["sif", "dump", "3", s(&img)]));
    let theirs = ok(sifrun(&[
        "sif",
        "dump",
        "3",
        s(&image("one-group-signed-pgp.sif")),
    ]));
    let json = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .lines()
            .nth(3)
            .unwrap()
            .to_owned()
    };
    assert_eq!(json(&ours), json(&theirs));

    // GnuPG verifies the signature object, and refuses it once changed.
    let home = gnupg(dir.path());
    let sig = dir.path().join("sig.asc");
    fs::write(&sig, &ours).unwrap();
    let out = gpg(&home, &["--verify", s(&sig)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Good signature"), "{}", text(&out));
    let tampered = String::from_utf8_lossy(&ours).replace("\"relativeId\":1", "\"relativeId\":7");
    fs::write(&sig, tampered).unwrap();
    let out = gpg(&home, &["--verify", s(&sig)]);
    assert!(
        !out.status.success() && text(&out).contains("BAD signature"),
        "{}",
        text(&out)
    );

    let out = ok(sifrun(&["verify", "--keyring", s(&key()), s(&img)]));
    assert!(
        String::from_utf8_lossy(&out)
            .contains("signed by Unit Test <unit@test.com> (12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84); objects [1, 2] verified"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn failures_name_the_object_and_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.asc");
    fs::write(&empty, "").unwrap();
    for (img, args, want) in [
        (
            "one-group.sif",
            vec![],
            "object group 1: no signature found",
        ),
        (
            "one-group-signed-pgp.sif",
            vec!["--keyring", s(&empty)],
            "signature object 3: signed by key 12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84, which is not in the keyring",
        ),
        (
            "one-group-signed-legacy.sif",
            vec![],
            "object group 1: no signature found",
        ),
        (
            "one-group-signed-dsse.sif",
            vec![],
            "signature object 3: a DSSE envelope",
        ),
        (
            "one-group-signed-pgp.sif",
            vec!["--legacy-insecure"],
            "object 2: no legacy signature found",
        ),
        // No object groups: nothing verified is a failure, not "verified".
        (
            "empty.sif",
            vec![],
            "the image has no object groups: there is nothing to verify",
        ),
    ] {
        let keyring = key();
        let mut a = vec!["verify"];
        if !args.contains(&"--keyring") {
            a.extend(["--keyring", s(&keyring)]);
        }
        a.extend(args.iter().copied());
        let path = image(img);
        a.push(s(&path));
        let out = sifrun(&a);
        assert!(!out.status.success(), "{img} {args:?}");
        let t = text(&out);
        assert!(t.contains(want), "{img} {args:?}: {t}");
        assert_eq!(
            t.lines().filter(|l| l.starts_with("sifrun:")).count(),
            1 + usize::from(args.contains(&"--legacy-insecure")),
            "{t}"
        );
    }
    // Legacy signatures only with --legacy-insecure, and with its warning.
    let out = sifrun(&[
        "verify",
        "--keyring",
        s(&key()),
        "--legacy-insecure",
        s(&image("one-group-signed-legacy.sif")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("do not cover") || text(&out).contains("not the image header"));
}

#[test]
fn two_signers_and_a_passphrase_protected_key() {
    if !require("gpg") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = gnupg(dir.path());
    ok(gpg(
        &home,
        &[
            "--passphrase",
            "correct horse",
            "--quick-gen-key",
            "Second Signer <second@example.org>",
            "rsa2048",
            "sign",
            "never",
        ],
    ));
    let second = dir.path().join("second.asc");
    let exported = ok(gpg(
        &home,
        &[
            "--passphrase",
            "correct horse",
            "--armor",
            "--export-secret-keys",
            "second@example.org",
        ],
    ));
    fs::write(&second, exported).unwrap();
    let second_pub = dir.path().join("second.pub");
    fs::write(
        &second_pub,
        ok(gpg(&home, &["--armor", "--export", "second@example.org"])),
    )
    .unwrap();

    let img = dir.path().join("img.sif");
    fs::copy(image("one-group.sif"), &img).unwrap();
    ok(sifrun(&["sign", "--key", s(&key()), s(&img)]));
    // Without a terminal and without SIFRUN_KEY_PASSPHRASE: a clear refusal.
    let out = Command::new(sifrun_bin())
        .args(["sign", "--key", s(&second), s(&img)])
        .env_remove("SIFRUN_KEY_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("SIFRUN_KEY_PASSPHRASE"),
        "{}",
        text(&out)
    );
    let out = Command::new(sifrun_bin())
        .args(["sign", "--key", s(&second), s(&img)])
        .env("SIFRUN_KEY_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("wrong passphrase"),
        "{}",
        text(&out)
    );
    ok(Command::new(sifrun_bin())
        .args(["sign", "--key", s(&second), s(&img)])
        .env("SIFRUN_KEY_PASSPHRASE", "correct horse")
        .output()
        .unwrap());

    // Both keys known: both signatures verify.
    let both = dir.path().join("both.asc");
    let mut ring = fs::read(key()).unwrap();
    ring.extend(fs::read(&second_pub).unwrap());
    fs::write(&both, ring).unwrap();
    let out = ok(sifrun(&["verify", "--keyring", s(&both), s(&img)]));
    let t = String::from_utf8_lossy(&out);
    assert!(
        t.contains("Unit Test") && t.contains("Second Signer"),
        "{t}"
    );
    // Only the first key known: the second signature is not valid, and
    // verification fails naming it.
    let out = sifrun(&["verify", "--keyring", s(&key()), s(&img)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("signature object 4"), "{}", text(&out));
}

#[test]
fn signing_updates_the_header_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["one-group.sif", "one-object-time.sif"] {
        let img = dir.path().join(name);
        fs::copy(image(name), &img).unwrap();
        let header = |p: &Path| {
            sif::Image::open(fs::File::open(p).unwrap())
                .unwrap()
                .header()
                .clone()
        };
        let before = header(&img);
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        ok(sifrun(&["sign", "--key", s(&key()), s(&img)]));
        let after = header(&img);
        assert!(
            after.modified_at >= start && after.modified_at != before.modified_at,
            "{name}: modified {} -> {} (signed at {start})",
            before.modified_at,
            after.modified_at
        );
        assert_eq!(after.created_at, before.created_at, "{name}");
        // The header fields signatures cover are untouched: it verifies.
        ok(sifrun(&["verify", "--keyring", s(&key()), s(&img)]));
    }
}

/// The sylabs test key with self-signatures whose MPI bit counts overstate
/// the numbers, as Apptainer's OpenPGP library writes them.
fn overstated_key() -> PathBuf {
    corpus().join("../overstated-mpi/private-overstated-mpi.asc")
}

#[test]
fn keys_with_overstated_self_signature_mpis_work_as_for_gpg() {
    let dir = tempfile::tempdir().unwrap();
    if require("gpg") {
        // The peer accepts the key: both self-signatures check out.
        let home = dir.path().join("gnupg");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        ok(gpg(&home, &["--import", s(&overstated_key())]));
        let out = gpg(&home, &["--check-sigs"]);
        assert!(text(&out).contains("2 good signatures"), "{}", text(&out));
    }
    // As a keyring, and for signing.
    let out = ok(sifrun(&[
        "verify",
        "--keyring",
        s(&overstated_key()),
        s(&image("one-group-signed-pgp.sif")),
    ]));
    assert!(
        String::from_utf8_lossy(&out).contains("objects [1, 2] verified"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let img = dir.path().join("img.sif");
    fs::copy(image("one-group.sif"), &img).unwrap();
    ok(sifrun(&["sign", "--key", s(&overstated_key()), s(&img)]));
    ok(sifrun(&["verify", "--keyring", s(&key()), s(&img)]));
}

/// A PKI made by the openssl CLI (sif/tests/pki/make-pki.sh).
fn pki(dir: &Path) -> PathBuf {
    let p = dir.join("pki");
    let out = Command::new("sh")
        .arg(root().join("sif/tests/pki/make-pki.sh"))
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    p
}

#[test]
fn dsse_with_a_pem_key_verified_with_a_certificate_chain() {
    if !require("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let f = |name: &str| pki.join(name);
    let img = dir.path().join("one-group.sif");
    fs::copy(image("one-group.sif"), &img).unwrap();
    let out = ok(sifrun(&["sign", "--key", s(&f("leaf.key")), s(&img)]));
    assert!(
        String::from_utf8_lossy(&out).contains("(DSSE): signature object 3 for object group 1"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let (leaf, ints, roots) = (f("leaf.pem"), f("intermediate.pem"), f("root.pem"));
    let out = ok(sifrun(&[
        "verify",
        "--certificate",
        s(&leaf),
        "--certificate-intermediates",
        s(&ints),
        "--certificate-roots",
        s(&roots),
        s(&img),
    ]));
    let t = String::from_utf8_lossy(&out);
    assert!(
        t.contains("signed by certificate \"O=sifrun test, CN=Image Signer\""),
        "{t}"
    );
    assert!(t.contains(": verified"), "{t}");
    // The same image with the leaf's public key alone.
    let public = dir.path().join("leaf-public.pem");
    let o = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-pubkey",
            "-in",
            s(&leaf),
            "-out",
            s(&public),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    ok(sifrun(&["verify", "--key", s(&public), s(&img)]));
    // Each failure names the file and what failed.
    let other_img = dir.path().join("other.sif");
    fs::copy(image("one-group.sif"), &other_img).unwrap();
    ok(sifrun(&[
        "sign",
        "--key",
        s(&f("other-leaf.key")),
        s(&other_img),
    ]));
    let cert = |leaf: &Path, ints: Option<&Path>, roots: Option<&Path>, img: &Path| {
        let mut a = vec!["verify".to_owned(), "--certificate".into(), s(leaf).into()];
        if let Some(i) = ints {
            a.extend(["--certificate-intermediates".into(), s(i).into()]);
        }
        if let Some(r) = roots {
            a.extend(["--certificate-roots".into(), s(r).into()]);
        }
        a.push(s(img).into());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = sifrun(&a);
        assert!(!out.status.success(), "{a:?}");
        text(&out)
    };
    let server = f("leaf-server.pem");
    let other_root = f("other-root.pem");
    let key_file = f("leaf.key");
    for (t, want) in [
        (
            cert(&leaf, Some(&ints), Some(&other_root), &img),
            format!("--certificate {}: not valid against the roots of {}: untrusted chain", s(&leaf), s(&other_root)),
        ),
        (
            cert(&leaf, Some(&ints), None, &img),
            "not valid against the system's roots: untrusted chain".into(),
        ),
        (
            cert(&server, Some(&ints), Some(&roots), &img),
            "wrong usage: the extended key usage of \"O=sifrun test, CN=Web Server\" does not allow code signing".into(),
        ),
        (
            cert(&leaf, Some(&ints), Some(&roots), &other_img),
            format!("signature mismatch: not signed by the key of --certificate {}", s(&leaf)),
        ),
        (
            cert(&leaf, Some(&ints), Some(&key_file), &img),
            format!("--certificate-roots: {}: not a PEM certificate", s(&key_file)),
        ),
    ] {
        assert!(t.contains(&want), "want {want:?} in {t}");
    }
    let t = {
        let out = sifrun(&[
            "verify",
            "--certificate",
            s(&leaf),
            "--ocsp-verify",
            s(&img),
        ]);
        assert!(!out.status.success());
        text(&out)
    };
    assert!(
        t.contains("--ocsp-verify: online revocation checks are not supported"),
        "{t}"
    );
}
