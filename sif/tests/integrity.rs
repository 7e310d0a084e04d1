//! Signing and verification against sylabs/sif's signed test images and
//! their expected verdicts, round trips through our signer, and a tampered
//! variant for every check.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use sif::integrity::clearsign::{Keyring, SigningKey};
use sif::integrity::sign::{SignOptions, sign};
use sif::integrity::verify::{
    SignatureCheck, Verifier, VerifyError, VerifyOptions, fingerprint_hex,
};
use sif::{Image, Link};

const TEST_FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

fn corpus(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus/sylabs-sif")
        .join(rel)
}

fn keyring() -> Keyring {
    Keyring::from_bytes(&fs::read(corpus("test/keys/private.asc")).unwrap()).unwrap()
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&fs::read(corpus("test/keys/private.asc")).unwrap()).unwrap()
}

fn verify_path(
    path: &Path,
    ring: &Keyring,
    opts: &VerifyOptions,
) -> Result<Vec<SignatureCheck>, VerifyError> {
    let img = Image::open(File::open(path).unwrap()).unwrap();
    Verifier::new(&img, ring).verify(opts, |_, _| false)
}

fn verify(
    name: &str,
    ring: &Keyring,
    opts: &VerifyOptions,
) -> Result<Vec<SignatureCheck>, VerifyError> {
    verify_path(&corpus(&format!("test/images/{name}")), ring, opts)
}

fn legacy() -> VerifyOptions {
    VerifyOptions {
        legacy: true,
        ..VerifyOptions::default()
    }
}

#[test]
fn corpus_verdicts_match_sylabs() {
    let ring = keyring();
    let all = VerifyOptions::default();
    let ok = verify("one-group-signed-pgp.sif", &ring, &all).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!((ok[0].signature, ok[0].objects.clone()), (3, vec![1, 2]));
    assert_eq!(fingerprint_hex(&ok[0].fingerprint), TEST_FP);
    assert_eq!(ok[0].signer, "Unit Test <unit@test.com>");

    let two = verify("two-groups-signed-pgp.sif", &ring, &all).unwrap();
    assert_eq!(two.iter().map(|c| c.signature).collect::<Vec<_>>(), [4, 5]);

    // An empty keyring: the signature is not valid (unknown issuer).
    let e = verify("one-group-signed-pgp.sif", &Keyring::default(), &all).unwrap_err();
    assert!(matches!(e, VerifyError::NotValid { id: 3, .. }), "{e}");
    assert!(e.to_string().contains("not in the keyring"), "{e}");

    let e = verify("one-group.sif", &ring, &all).unwrap_err();
    assert!(matches!(e, VerifyError::SignatureNotFound { .. }), "{e}");
    assert_eq!(e.to_string(), "object group 1: no signature found");

    // No object groups at all: nothing verified is an error, not a pass
    // (sylabs/sif: errNoGroupsFound), whatever the keyring.
    for name in ["empty.sif", "empty-id.sif", "empty-launch-script.sif"] {
        for ring in [&ring, &Keyring::default()] {
            let e = verify(name, ring, &all).unwrap_err();
            assert!(matches!(e, VerifyError::NoGroups), "{name}: {e}");
        }
    }

    // Legacy mode ignores current signatures; current mode ignores legacy ones.
    let e = verify("one-group-signed-pgp.sif", &ring, &legacy()).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::SignatureNotFound {
                kind: "legacy ",
                ..
            }
        ),
        "{e}"
    );
    for name in [
        "one-group-signed-legacy.sif",
        "one-group-signed-legacy-group.sif",
    ] {
        let e = verify(name, &ring, &all).unwrap_err();
        assert!(
            matches!(e, VerifyError::SignatureNotFound { .. }),
            "{name}: {e}"
        );
    }
    let l = verify("one-group-signed-legacy.sif", &ring, &legacy()).unwrap();
    assert_eq!((l[0].objects.clone(), l[0].legacy), (vec![2], true));
    let group = VerifyOptions {
        groups: vec![1],
        ..legacy()
    };
    let l = verify("one-group-signed-legacy-group.sif", &ring, &group).unwrap();
    assert_eq!(l[0].objects, [1, 2]);
    let every = VerifyOptions {
        legacy_all: true,
        ..legacy()
    };
    let l = verify("one-group-signed-legacy-all.sif", &ring, &every).unwrap();
    assert_eq!(l.iter().map(|c| c.objects[0]).collect::<Vec<_>>(), [1, 2]);
    verify("two-groups-signed-legacy.sif", &ring, &legacy()).unwrap();

    // DSSE envelopes need PEM keys.
    let e = verify("one-group-signed-dsse.sif", &ring, &all).unwrap_err();
    assert!(e.to_string().contains("DSSE"), "{e}");

    // Selected objects: a subset of the group is enough.
    let one = VerifyOptions {
        objects: vec![2],
        ..VerifyOptions::default()
    };
    let c = verify("one-group-signed-pgp.sif", &ring, &one).unwrap();
    assert_eq!(c[0].objects, [2]);
}

/// A writable copy of a corpus image.
fn copy(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    fs::copy(corpus(&format!("test/images/{name}")), &p).unwrap();
    p
}

fn open_rw(p: &Path) -> Image<File> {
    Image::open(OpenOptions::new().read(true).write(true).open(p).unwrap()).unwrap()
}

fn patch(p: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

#[test]
fn sign_then_verify_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = copy(dir.path(), "two-groups.sif");
    let mut img = open_rw(&p);
    let ids = sign(&mut img, &key(), None, &SignOptions::default()).unwrap();
    drop(img);
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    for id in &ids {
        let d = img.descriptor(*id).unwrap();
        assert_eq!(d.group_id(), 0);
        let info = d.signature().unwrap();
        assert_eq!(fingerprint_hex(&info.fingerprint.unwrap()), TEST_FP);
        assert!(matches!(d.link(), Link::Group(_)));
    }
    let checks = Verifier::new(&img, &keyring())
        .verify(&VerifyOptions::default(), |_, _| false)
        .unwrap();
    assert_eq!(checks.len(), ids.len());
    assert_eq!(ids.len(), img.group_ids().len());
    // Signing is a modification: the header records when, even for an
    // image written with unset ("deterministic") times.
    assert!(
        img.header().modified_at > 1_700_000_000,
        "{:?}",
        img.header()
    );
    assert_eq!(img.header().created_at, sif::header::ZERO_TIME);
}

#[test]
fn a_given_sign_time_is_the_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    let p = copy(dir.path(), "one-group.sif");
    let mut img = open_rw(&p);
    let opts = SignOptions {
        time: Some(sif::header::ZERO_TIME),
        ..SignOptions::default()
    };
    sign(&mut img, &key(), None, &opts).unwrap();
    drop(img);
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    assert!(img.header().is_deterministic(), "{:?}", img.header());
}

#[test]
fn every_tampered_variant_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring();
    let all = VerifyOptions::default();
    let fresh = |tag: &str| {
        let p = dir.path().join(format!("{tag}.sif"));
        fs::copy(corpus("test/images/one-group-signed-pgp.sif"), &p).unwrap();
        p
    };
    let img =
        Image::open(File::open(corpus("test/images/one-group-signed-pgp.sif")).unwrap()).unwrap();
    let obj2 = img.descriptor(2).unwrap().offset();
    let desc_off = |slot: u64| img.header().descriptors_offset as u64 + slot * 585;
    let sig3 = img.descriptor(3).unwrap().clone();

    // Data of object 2.
    let p = fresh("data");
    patch(&p, obj2 + 10, b"X");
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        matches!(e, VerifyError::ObjectIntegrity { id: 3, object: 2 }),
        "{e}"
    );

    // Header: the launch script.
    let p = fresh("header");
    patch(&p, 0, b"#!/bin/evil");
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(matches!(e, VerifyError::HeaderIntegrity { id: 3 }), "{e}");

    // Descriptor of object 1: its name (descriptor bytes 73..201).
    let p = fresh("descriptor");
    patch(&p, desc_off(0) + 80, b"renamed");
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        matches!(e, VerifyError::DescriptorIntegrity { id: 3, object: 1 }),
        "{e}"
    );

    // The fingerprint recorded in the signature descriptor (Extra, after the hash type).
    let p = fresh("fingerprint");
    let extra = desc_off(sig3.slot() as u64) + 585 - 384;
    patch(&p, extra + 4, &[0xAA; 20]);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        matches!(e, VerifyError::FingerprintMismatch { id: 3, .. }),
        "{e}"
    );

    // The signature's armor.
    let p = fresh("armor");
    patch(&p, sig3.offset() + sig3.size() - 80, b"AAAAAAAA");
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(e.is_not_valid(), "{e}");

    // An object added to the signed group after signing.
    let p = fresh("extra-object");
    let mut img_rw = open_rw(&p);
    let mut data: &[u8] = b"added later";
    img_rw
        .add_object(
            sif::ObjectInput::new(sif::DataType::GENERIC, &mut data),
            None,
        )
        .unwrap();
    drop(img_rw);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        matches!(e, VerifyError::ObjectNotSigned { id: 3, object: 4 }),
        "{e}"
    );

    // An object outside every group.
    let p = fresh("ungrouped");
    let mut img_rw = open_rw(&p);
    let mut data: &[u8] = b"loose";
    let mut input = sif::ObjectInput::new(sif::DataType::GENERIC, &mut data);
    input.group = None;
    img_rw.add_object(input, None).unwrap();
    drop(img_rw);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(matches!(e, VerifyError::NotGrouped { id: 4 }), "{e}");
}

#[test]
fn dsse_envelopes_verify_with_pem_keys() {
    use sif::integrity::dsse::PublicKey;
    let pem = |name: &str| {
        PublicKey::from_pem(&fs::read(corpus(&format!("test/keys/{name}"))).unwrap()).unwrap()
    };
    let ring = Keyring::default();
    let all = VerifyOptions::default();
    let run = |name: &str, keys: &[PublicKey]| {
        let img = Image::open(File::open(corpus(&format!("test/images/{name}"))).unwrap()).unwrap();
        Verifier::new(&img, &ring)
            .with_dsse_keys(keys)
            .verify(&all, |_, _| false)
    };
    for key in ["ed25519-public.pem", "rsa-public.pem"] {
        let ok = run("one-group-signed-dsse.sif", &[pem(key)]).unwrap();
        assert_eq!(ok[0].objects, [1, 2], "{key}");
        run("two-groups-signed-dsse.sif", &[pem(key)]).unwrap();
    }
    // The envelope holds no ECDSA signature.
    let e = run("one-group-signed-dsse.sif", &[pem("ecdsa-public.pem")]).unwrap_err();
    assert!(e.is_not_valid(), "{e}");
    assert!(PublicKey::from_pem(b"not a key").is_err());
    // A tampered payload is caught by the signature; tampered data by the digests.
    let dir = tempfile::tempdir().unwrap();
    let p = copy(dir.path(), "one-group-signed-dsse.sif");
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    let obj2 = img.descriptor(2).unwrap().offset();
    drop(img);
    patch(&p, obj2 + 3, b"Z");
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    let e = Verifier::new(&img, &ring)
        .with_dsse_keys(&[pem("ed25519-public.pem")])
        .verify(&all, |_, _| false)
        .unwrap_err();
    assert!(
        matches!(e, VerifyError::ObjectIntegrity { object: 2, .. }),
        "{e}"
    );
}

/// Replaces signature object 3 of a copy of one-group-signed-pgp.sif with
/// `data` (same descriptor metadata, link group 1).
fn with_signature(dir: &Path, tag: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(format!("{tag}.sif"));
    fs::copy(corpus("test/images/one-group-signed-pgp.sif"), &p).unwrap();
    let mut img = open_rw(&p);
    img.delete_object(3, sif::DeleteOptions::default()).unwrap();
    let mut d: &[u8] = data;
    let mut input = sif::ObjectInput::new(sif::DataType::SIGNATURE, &mut d).with_metadata(
        sif::Metadata::Signature {
            hash_type: sif::HashType::SHA256,
            fingerprint: (0..20)
                .map(|i| u8::from_str_radix(&TEST_FP[2 * i..2 * i + 2], 16).unwrap())
                .collect(),
        },
    );
    input.group = None;
    input.link = Link::Group(1);
    img.add_object(input, None).unwrap();
    p
}

#[test]
fn weak_hashes_odd_sizes_and_wrong_groups_are_refused() {
    use sequoia_openpgp::types::HashAlgorithm;
    let dir = tempfile::tempdir().unwrap();
    let ring = keyring();
    let all = VerifyOptions::default();
    let img =
        Image::open(File::open(corpus("test/images/one-group-signed-pgp.sif")).unwrap()).unwrap();
    let good = img.read_object(img.descriptor(3).unwrap()).unwrap();
    let json =
        String::from_utf8(sif::integrity::clearsign::plaintext_unverified(&good).unwrap()).unwrap();
    drop(img);

    // The metadata signed with SHA-1: refused (CVE-2022-39237).
    let sha1 = key()
        .sign(json.as_bytes(), HashAlgorithm::SHA1, None)
        .unwrap();
    let p = with_signature(dir.path(), "sha1", &sha1);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        e.to_string().contains("SHA1") || e.to_string().contains("SHA-1"),
        "{e}"
    );
    // Metadata whose digests are SHA-1, properly signed: refused.
    let weak = json.replacen(
        "sha256:635fa0a14a8ef0c0351ed3e985799ed1d4f75ce973dea3cc76c99710795cc3f1",
        &format!("sha1:{}", "ab".repeat(20)),
        1,
    );
    assert_ne!(weak, json);
    let signed = key()
        .sign(weak.as_bytes(), HashAlgorithm::SHA256, None)
        .unwrap();
    let p = with_signature(dir.path(), "sha1-digest", &signed);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(e.to_string().contains("algorithm not allowed"), "{e}");

    // A truncated signature object.
    let p = with_signature(dir.path(), "truncated", &good[..good.len() / 2]);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(e.is_not_valid(), "{e}");
    // An oversized one is not even read.
    let mut big = good.clone();
    big.resize((17 << 20) as usize, b' ');
    let p = with_signature(dir.path(), "oversized", &big);
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        e.to_string().contains("more than a signature can need"),
        "{e}"
    );
    // Malformed armor.
    let p = with_signature(dir.path(), "armor", b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n{}\n-----BEGIN PGP SIGNATURE-----\n\n!!!!\n-----END PGP SIGNATURE-----\n");
    assert!(verify_path(&p, &ring, &all).unwrap_err().is_not_valid());

    // A signature moved to another group: group 2's signature of
    // two-groups-signed-pgp.sif relinked to group 1.
    let p = copy(dir.path(), "two-groups-signed-pgp.sif");
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    let slot5 = img.descriptor(5).unwrap().slot() as u64;
    let at = img.header().descriptors_offset as u64 + slot5 * 585 + 13;
    drop(img);
    patch(&p, at, &(0xF000_0000u32 | 1).to_le_bytes());
    let e = verify_path(&p, &ring, &all).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::ObjectNotSigned { id: 5, .. }
                | VerifyError::SignedObjectMissing { id: 5, .. }
        ),
        "{e}"
    );
    // Legacy: every object needs its own signature with --all.
    let every = VerifyOptions {
        legacy_all: true,
        ..legacy()
    };
    let e = verify("two-groups-signed-legacy-all.sif", &ring, &every).unwrap_err();
    assert_eq!(e.to_string(), "object 3: no legacy signature found");
    let group = VerifyOptions {
        groups: vec![1],
        ..legacy()
    };
    verify("two-groups-signed-legacy-group.sif", &ring, &group).unwrap();
}

/// The sylabs test key with self-signatures whose MPI bit counts overstate
/// the numbers, as Apptainer's OpenPGP library writes them
/// (tests/corpus/overstated-mpi/make.py).
fn overstated_key() -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/corpus/overstated-mpi/private-overstated-mpi.asc"),
    )
    .unwrap()
}

#[test]
fn keys_with_overstated_self_signature_mpis_verify_and_sign() {
    // As a keyring: the image its key signed verifies.
    let ring = Keyring::from_bytes(&overstated_key()).unwrap();
    let ok = verify("one-group-signed-pgp.sif", &ring, &VerifyOptions::default()).unwrap();
    assert_eq!(fingerprint_hex(&ok[0].fingerprint), TEST_FP);
    assert_eq!(ok[0].signer, "Unit Test <unit@test.com>");

    // For signing: it signs, and the untouched key verifies the result.
    let key = SigningKey::from_bytes(&overstated_key()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = copy(dir.path(), "one-group.sif");
    let mut img = open_rw(&p);
    sign(&mut img, &key, None, &SignOptions::default()).unwrap();
    drop(img);
    verify_path(&p, &keyring(), &VerifyOptions::default()).unwrap();

    // Armored twice over in one file (a keyring of several exports).
    let mut two = overstated_key();
    two.extend(fs::read(corpus("test/keys/private.asc")).unwrap());
    let ring = Keyring::from_bytes(&two).unwrap();
    assert_eq!(ring.certs.len(), 2);
    verify("one-group-signed-pgp.sif", &ring, &VerifyOptions::default()).unwrap();
}
