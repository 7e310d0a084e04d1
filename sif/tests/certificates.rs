//! DSSE signatures verified with X.509 certificates (Apptainer's `verify
//! --certificate`): chain validation, time, usage, and the envelope's
//! signature by the leaf's key. The PKI is made at set-up by the real
//! `openssl` CLI (tests/pki/make-pki.sh).

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use sif::Image;
use sif::integrity::certificate::{
    Certificate as X509, CertificateError, Roots, leaf_from_pem, not_after, pool_from_pem,
    validate, validate_until,
};
use sif::integrity::clearsign::Keyring;
use sif::integrity::dsse::{PrivateKey, PublicKey};
use sif::integrity::sign::{SignOptions, sign_dsse};
use sif::integrity::verify::{SignatureCheck, Verifier, VerifyError, VerifyOptions};

fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus/sylabs-sif")
        .join(rel)
}

struct Pki(tempfile::TempDir);

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pki/make-pki.sh");
        let out = Command::new("sh")
            .arg(&script)
            .arg(dir.path())
            .output()
            .expect("the openssl CLI (make-pki.sh)");
        assert!(
            out.status.success(),
            "make-pki.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn cert(&self, name: &str) -> X509 {
        leaf_from_pem(&fs::read(self.path(&format!("{name}.pem"))).unwrap()).unwrap()
    }

    fn pool(&self, name: &str) -> Vec<X509> {
        pool_from_pem(&fs::read(self.path(&format!("{name}.pem"))).unwrap()).unwrap()
    }

    fn key(&self, name: &str) -> PrivateKey {
        PrivateKey::from_pem(&fs::read(self.path(&format!("{name}.key"))).unwrap()).unwrap()
    }

    /// A copy of one-group.sif DSSE-signed with `key`'s private key.
    fn signed(&self, key: &str) -> PathBuf {
        let p = self.path(&format!("signed-by-{key}.sif"));
        fs::copy(corpus("test/images/one-group.sif"), &p).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut img = Image::open(f).unwrap();
        let ids = sign_dsse(&mut img, &self.key(key), &SignOptions::default()).unwrap();
        assert_eq!(ids.len(), 1);
        p
    }

    /// Validates `leaf` through the intermediate to the root, now.
    fn validate(&self, leaf: &str) -> Result<(), CertificateError> {
        let roots = self.pool("root");
        validate(
            &self.cert(leaf),
            &self.pool("intermediate"),
            Roots::Only(&roots),
            None,
        )
    }
}

fn verify_with(image: &Path, keys: &[PublicKey]) -> Result<Vec<SignatureCheck>, VerifyError> {
    let img = Image::open(File::open(image).unwrap()).unwrap();
    let ring = Keyring::default();
    Verifier::new(&img, &ring)
        .with_dsse_keys(keys)
        .verify(&VerifyOptions::default(), |_, _| false)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_leaf_chaining_to_the_root_verifies_the_envelope() {
    let pki = Pki::new();
    for leaf in ["leaf", "leaf-rsa"] {
        pki.validate(leaf).unwrap();
        let key = PublicKey::from_certificate(&pki.cert(leaf)).unwrap();
        let checks = verify_with(&pki.signed(leaf), &[key]).unwrap();
        assert_eq!(checks.len(), 1, "{leaf}");
        assert_eq!(checks[0].objects, [1, 2]);
        assert!(checks[0].signer.contains("Image Signer"), "{checks:?}");
    }
    // The intermediate may come in the roots file instead (any root given
    // is a trust anchor, as in Go), and intermediates may be a bundle.
    let both = [pki.pool("root"), pki.pool("intermediate")].concat();
    validate(&pki.cert("leaf"), &[], Roots::Only(&both), None).unwrap();
}

#[test]
fn an_untrusted_chain_is_refused() {
    let pki = Pki::new();
    let roots = pki.pool("root");
    let ints = pki.pool("intermediate");
    let cases = [
        // Another PKI's leaf.
        validate(&pki.cert("other-leaf"), &ints, Roots::Only(&roots), None),
        // Our leaf against another root.
        validate(
            &pki.cert("leaf"),
            &ints,
            Roots::Only(&pki.pool("other-root")),
            None,
        ),
        // No intermediate to reach the root.
        validate(&pki.cert("leaf"), &[], Roots::Only(&roots), None),
        // The system's roots do not hold the test root.
        validate(&pki.cert("leaf"), &ints, Roots::System, None),
        // Issued by a certificate that is not a CA.
        validate(
            &pki.cert("sub-leaf"),
            &[pki.pool("leaf"), ints.clone()].concat(),
            Roots::Only(&roots),
            None,
        ),
    ];
    for (i, r) in cases.into_iter().enumerate() {
        let e = r.unwrap_err();
        assert!(matches!(e, CertificateError::Untrusted(_)), "case {i}: {e}");
        assert!(e.to_string().starts_with("untrusted chain: "), "{e}");
    }
}

#[test]
fn an_expired_or_not_yet_valid_certificate_is_refused() {
    let pki = Pki::new();
    let roots = pki.pool("root");
    let ints = pki.pool("intermediate");
    let short = pki.cert("leaf-short");
    validate(&short, &ints, Roots::Only(&roots), None).unwrap();
    let e = validate(&short, &ints, Roots::Only(&roots), Some(now() + 3 * 86400)).unwrap_err();
    assert!(matches!(e, CertificateError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("Short Lived Signer"), "{e}");
    assert!(e.to_string().contains("has expired"), "{e}");
    let e = validate(&short, &ints, Roots::Only(&roots), Some(now() - 3 * 86400)).unwrap_err();
    assert!(matches!(e, CertificateError::NotYetValid { .. }), "{e}");
}

/// The validation holds until the earliest end of validity of the
/// verified chain: the one-day leaf's, else the ten-year CAs' and leaf's.
#[test]
fn a_validation_holds_until_the_chain_s_first_expiry() {
    let pki = Pki::new();
    let roots = pki.pool("root");
    let ints = pki.pool("intermediate");
    let short = pki.cert("leaf-short");
    let until = validate_until(&short, &ints, Roots::Only(&roots), None).unwrap();
    assert_eq!(Some(until), not_after(&short));
    assert!((now() + 86_400 - until).abs() < 600, "{until}");
    let leaf = pki.cert("leaf");
    let until = validate_until(&leaf, &ints, Roots::Only(&roots), None).unwrap();
    let chain = [&leaf, &ints[0], &roots[0]].map(|c| not_after(c).unwrap());
    assert_eq!(until, *chain.iter().min().unwrap());
    assert!(until > now() + 3000 * 86_400, "{until}");
    // Validated at a later time, the same chain gives the same end.
    let later = validate_until(&short, &ints, Roots::Only(&roots), Some(now() + 3600)).unwrap();
    assert_eq!(Some(later), not_after(&short));
}

#[test]
fn a_certificate_not_for_code_signing_is_refused() {
    let pki = Pki::new();
    let e = pki.validate("leaf-server").unwrap_err();
    assert!(matches!(e, CertificateError::Usage(_)), "{e}");
    assert!(e.to_string().contains("does not allow code signing"), "{e}");
    assert!(e.to_string().contains("Web Server"), "{e}");
    // Stricter than Apptainer: a key usage without digital signatures.
    let e = pki.validate("leaf-keyenc").unwrap_err();
    assert!(e.to_string().contains("digital signatures"), "{e}");
}

#[test]
fn a_signature_by_another_key_does_not_verify() {
    let pki = Pki::new();
    let image = pki.signed("other-leaf");
    let key = PublicKey::from_certificate(&pki.cert("leaf")).unwrap();
    let e = verify_with(&image, std::slice::from_ref(&key)).unwrap_err();
    assert!(e.is_not_valid(), "{e}");
    // Both keys given: the one that signed is the one reported.
    let other = PublicKey::from_certificate(&pki.cert("other-leaf"))
        .unwrap()
        .named([7; 20], "other".into());
    let checks = verify_with(&image, &[key.named([1; 20], "ours".into()), other]).unwrap();
    assert_eq!(checks[0].fingerprints, [[7; 20]]);
    assert_eq!(checks[0].signer, "other");
}

#[test]
fn files_that_are_not_certificates_are_refused() {
    let pki = Pki::new();
    assert!(leaf_from_pem(b"garbage").is_err());
    assert!(pool_from_pem(b"").is_err());
    // A pool with a private key among the certificates.
    let mut mixed = fs::read(pki.path("root.pem")).unwrap();
    mixed.extend(fs::read(pki.path("leaf.key")).unwrap());
    let e = pool_from_pem(&mixed).unwrap_err();
    assert!(e.to_string().contains("block 2"), "{e}");
    // The leaf file may hold the chain after it (its first block counts).
    let mut chain = fs::read(pki.path("leaf.pem")).unwrap();
    chain.extend(fs::read(pki.path("intermediate.pem")).unwrap());
    let leaf = leaf_from_pem(&chain).unwrap();
    assert_eq!(leaf.to_der().unwrap(), pki.cert("leaf").to_der().unwrap());
}

#[test]
fn pem_private_keys_sign_what_the_corpus_public_keys_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (private, public) in [
        ("ed25519-private.pem", "ed25519-public.pem"),
        ("rsa-private.pem", "rsa-public.pem"),
        ("ecdsa-private.pem", "ecdsa-public.pem"),
    ] {
        let raw = fs::read(corpus(&format!("test/keys/{private}"))).unwrap();
        assert!(PrivateKey::is_pem(&raw));
        let key = PrivateKey::from_pem(&raw).unwrap();
        let p = dir.path().join(format!("{private}.sif"));
        fs::copy(corpus("test/images/two-groups.sif"), &p).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut img = Image::open(f).unwrap();
        assert_eq!(
            sign_dsse(&mut img, &key, &SignOptions::default())
                .unwrap()
                .len(),
            2
        );
        drop(img);
        let pubkey =
            PublicKey::from_pem(&fs::read(corpus(&format!("test/keys/{public}"))).unwrap())
                .unwrap();
        assert_eq!(verify_with(&p, &[pubkey]).unwrap().len(), 2, "{private}");
        // The descriptors record no fingerprint, as sylabs/sif's DSSE signer.
        let img = Image::open(File::open(&p).unwrap()).unwrap();
        for d in img
            .descriptors()
            .iter()
            .filter(|d| d.data_type() == sif::DataType::SIGNATURE)
        {
            assert_eq!(d.signature().unwrap().fingerprint, None);
        }
    }
    assert!(!PrivateKey::is_pem(
        &fs::read(corpus("test/keys/private.asc")).unwrap()
    ));
    // The corpus's own DSSE images still verify with the plain keys.
    for key in ["ed25519-public.pem", "rsa-public.pem"] {
        let k =
            PublicKey::from_pem(&fs::read(corpus(&format!("test/keys/{key}"))).unwrap()).unwrap();
        let checks = verify_with(&corpus("test/images/one-group-signed-dsse.sif"), &[k]).unwrap();
        assert_eq!(checks[0].fingerprints, [[0; 20]]);
    }
}
