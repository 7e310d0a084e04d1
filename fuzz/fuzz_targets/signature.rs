//! An untrusted signature object: the cleartext framing, the armored
//! OpenPGP signature (verified against the sylabs test key), a DSSE
//! envelope, PEM keys, X.509 certificates (a leaf given to `sifrun verify
//! --certificate`, pools of intermediates and roots, validated against
//! themselves) and the signed metadata JSON. Errors are fine; panics are
//! findings.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sif::integrity::certificate::{self, Roots};
use sif::integrity::clearsign::{self, Keyring};
use sif::integrity::dsse::{self, PublicKey};
use sif::integrity::metadata::ImageMetadata;

fn keyring() -> &'static Keyring {
    static RING: OnceLock<Keyring> = OnceLock::new();
    RING.get_or_init(|| {
        Keyring::from_bytes(include_bytes!(
            "../../tests/corpus/sylabs-sif/test/keys/private.asc"
        ))
        .expect("the test key parses")
    })
}

fn dsse_keys() -> &'static [PublicKey] {
    static KEYS: OnceLock<Vec<PublicKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        vec![
            PublicKey::from_pem(include_bytes!(
                "../../tests/corpus/sylabs-sif/test/keys/ed25519-public.pem"
            ))
            .expect("the test key parses"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = dsse::verify(data, dsse_keys()) {
        let _ = ImageMetadata::from_json(&v.payload);
    }
    let _ = PublicKey::from_pem(data);
    if let Ok(leaf) = certificate::leaf_from_pem(data) {
        let _ = PublicKey::from_certificate(&leaf);
        let _ = certificate::subject(&leaf);
        if let Ok(pool) = certificate::pool_from_pem(data) {
            let _ = certificate::validate(&leaf, &pool, Roots::Only(&pool), None);
        }
    }
    if let Some(text) = clearsign::plaintext_unverified(data) {
        let _ = ImageMetadata::from_json(&text);
    }
    if let Ok(v) = clearsign::verify(data, keyring()) {
        let _ = ImageMetadata::from_json(&v.plaintext);
    }
    let _ = ImageMetadata::from_json(data);
    let _ = Keyring::from_bytes(data);
});
