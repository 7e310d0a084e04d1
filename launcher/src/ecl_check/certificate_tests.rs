//! The ECL with certificates as its key source: images DSSE-signed by the
//! key of a listed certificate, judged as the unprivileged verifier judges
//! them, with a PKI made by the openssl CLI (sif/tests/pki/make-pki.sh).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use sif::integrity::dsse::PrivateKey;
use sif::integrity::sign::{SignOptions, sign_dsse};
use sif::write::{CreateOptions, ObjectInput};
use sif::{Arch, DataType, FsType, Metadata, PartType};
use slurm_conf::ecl::{Ecl, ExecGroup, Mode};

use super::{TrustFiles, Verdict, judge};

pub(crate) struct Pki(tempfile::TempDir);

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sif/tests/pki/make-pki.sh");
        let out = std::process::Command::new("sh")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("the openssl CLI (make-pki.sh)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// A one-partition image (a "squashfs" primary partition) signed with
    /// `key`'s DSSE key.
    pub(crate) fn image(&self, key: &str) -> File {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = self.path(&format!("{key}-{n}.sif"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        let mut data: &[u8] = b"hsqs and some bytes";
        let part =
            ObjectInput::new(DataType::PARTITION, &mut data).with_metadata(Metadata::Partition {
                fs_type: FsType::SQUASHFS,
                part_type: PartType::PRIMARY_SYSTEM,
                arch: Arch::from_go_name("amd64").unwrap(),
            });
        let mut img = sif::write::create(file, &CreateOptions::default(), vec![part]).unwrap();
        let k = PrivateKey::from_pem(&fs::read(self.path(&format!("{key}.key"))).unwrap()).unwrap();
        sign_dsse(&mut img, &k, &SignOptions::default()).unwrap();
        drop(img);
        File::open(&p).unwrap()
    }

    /// An ECL with one execgroup listing `certs`, and its files as root
    /// would read them.
    pub(crate) fn ecl(&self, mode: Mode, certs: &[&str], roots: &str) -> (Ecl, TrustFiles) {
        let certificates: Vec<PathBuf> = certs
            .iter()
            .map(|c| self.path(&format!("{c}.pem")))
            .collect();
        let ecl = Ecl {
            activated: true,
            certificate_roots: Some(self.path(&format!("{roots}.pem"))),
            certificate_intermediates: Some(self.path("intermediate.pem")),
            groups: vec![ExecGroup {
                tagname: "pki".into(),
                mode,
                dirpath: None,
                keyfp: vec![],
                certificates,
            }],
            ..Ecl::default()
        };
        let files = TrustFiles::read(&ecl, &|_| None).unwrap();
        (ecl, files)
    }

    /// `cert`'s end of validity, as openssl reads it.
    pub(crate) fn not_after(&self, cert: &str) -> i64 {
        let pem = fs::read(self.path(&format!("{cert}.pem"))).unwrap();
        sif::integrity::certificate::not_after(
            &sif::integrity::certificate::leaf_from_pem(&pem).unwrap(),
        )
        .unwrap()
    }
}

fn run(pki: &Pki, signer: &str, mode: Mode, certs: &[&str], roots: &str) -> Verdict {
    let image = pki.image(signer);
    let (ecl, files) = pki.ecl(mode, certs, roots);
    judge(&image, Path::new("/images"), &ecl, &files)
}

#[test]
fn images_signed_by_a_listed_valid_certificate_are_admitted() {
    let pki = Pki::new();
    let v = run(
        &pki,
        "leaf",
        Mode::Whitelist,
        &["leaf", "other-leaf"],
        "root",
    );
    assert!(v.allowed, "{v:?}");
    assert!(v.reason.contains("listed certificate"), "{v:?}");
    assert!(v.reason.contains("leaf.pem"), "{v:?}");
    assert!(v.size > 0);
    let v = run(&pki, "leaf-rsa", Mode::Whitestrict, &["leaf-rsa"], "root");
    assert!(v.allowed, "{v:?}");
    // A blacklist admits an image signed by a valid signer the ECL knows
    // (a certificate another execgroup lists, or a keyring key) and by no
    // forbidden one.
    let image = pki.image("leaf");
    let (mut ecl, _) = pki.ecl(Mode::Blacklist, &["other-leaf"], "root");
    let (other, _) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
    let mut known = other.groups[0].clone();
    known.dirpath = Some("/elsewhere".into());
    ecl.groups.push(known);
    let files = TrustFiles::read(&ecl, &|_| None).unwrap();
    let v = judge(&image, Path::new("/images"), &ecl, &files);
    assert!(
        v.allowed && v.reason.contains("by no forbidden key"),
        "{v:?}"
    );
    // Signed by no signer the ECL knows: not "signed" (stricter than
    // Apptainer, as for keys).
    let v = run(&pki, "leaf", Mode::Blacklist, &["other-leaf"], "root");
    assert!(
        !v.allowed && v.reason.contains("no signature that verified"),
        "{v:?}"
    );
}

#[test]
fn a_certificate_that_is_not_valid_now_admits_nothing() {
    let pki = Pki::new();
    // Untrusted: the roots are another PKI's.
    let v = run(&pki, "leaf", Mode::Whitelist, &["leaf"], "other-root");
    assert!(!v.allowed, "{v:?}");
    assert!(v.reason.contains("untrusted chain"), "{v:?}");
    // Not for code signing.
    let v = run(
        &pki,
        "leaf-server",
        Mode::Whitelist,
        &["leaf-server"],
        "root",
    );
    assert!(!v.allowed, "{v:?}");
    assert!(v.reason.contains("wrong usage"), "{v:?}");
    // Signed by a key no listed certificate holds.
    let v = run(&pki, "other-leaf", Mode::Whitelist, &["leaf"], "root");
    assert!(!v.allowed, "{v:?}");
    // Whitestrict: every listed certificate must have signed.
    let v = run(
        &pki,
        "leaf",
        Mode::Whitestrict,
        &["leaf", "leaf-rsa"],
        "root",
    );
    assert!(!v.allowed && v.reason.contains("leaf-rsa.pem"), "{v:?}");
}

#[test]
fn a_blacklisted_certificate_is_forbidden_valid_or_not() {
    let pki = Pki::new();
    let v = run(&pki, "leaf", Mode::Blacklist, &["leaf"], "root");
    assert!(
        !v.allowed && v.reason.contains("forbidden certificate"),
        "{v:?}"
    );
    // Its chain does not reach these roots: still denied.
    let v = run(&pki, "leaf", Mode::Blacklist, &["leaf"], "other-root");
    assert!(!v.allowed && v.reason.contains("leaf.pem"), "{v:?}");
    // An image signed only by a certificate that is not valid is not
    // "signed" for a blacklist either.
    let v = run(
        &pki,
        "leaf-server",
        Mode::Blacklist,
        &["leaf", "leaf-server"],
        "root",
    );
    assert!(!v.allowed, "{v:?}");
}

#[test]
fn broken_certificate_files_deny() {
    let pki = Pki::new();
    let image = pki.image("leaf");
    let (ecl, mut files) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
    files.certificates[0].1 = b"not a certificate".to_vec();
    let v = judge(&image, Path::new("/images"), &ecl, &files);
    assert!(!v.allowed && v.reason.contains("leaf.pem"), "{v:?}");
    let (ecl, mut files) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
    files.roots = Some(fs::read(pki.path("leaf.key")).unwrap());
    let v = judge(&image, Path::new("/images"), &ecl, &files);
    assert!(!v.allowed && v.reason.contains("root.pem"), "{v:?}");
    // A file the ECL names that is not there: no verdict at all.
    let (mut ecl, _) = pki.ecl(Mode::Whitelist, &["leaf"], "root");
    ecl.groups[0].certificates.push(pki.path("missing.pem"));
    let e = TrustFiles::read(&ecl, &|_| None).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
}

#[test]
fn an_ecl_of_keys_only_still_refuses_a_dsse_image() {
    let pki = Pki::new();
    let image = pki.image("leaf");
    let ecl = Ecl {
        activated: true,
        keyring: Some(PathBuf::from("/k")),
        groups: vec![ExecGroup {
            tagname: "pgp".into(),
            mode: Mode::Blacklist,
            dirpath: None,
            keyfp: vec![[0xAA; 20]],
            certificates: vec![],
        }],
        ..Ecl::default()
    };
    let v = judge(&image, Path::new("/images"), &ecl, &TrustFiles::default());
    assert!(!v.allowed && v.reason.contains("DSSE"), "{v:?}");
}
