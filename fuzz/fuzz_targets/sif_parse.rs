//! Parse an untrusted SIF image, then walk every descriptor and read every
//! object the way `sifrun sif list|info|dump` and the verifier do. Any panic,
//! overflow or out-of-bounds read is a finding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sif::{Image, integrity, siftool};

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Image::open(data) else {
        return;
    };
    let _ = siftool::list(&image);
    let _ = siftool::header(image.header());
    let _ = image.primary_partition();
    let _ = image.group_ids();
    let _ = integrity::header_bytes(image.header());
    for d in image.descriptors() {
        let _ = siftool::info(d);
        let _ = integrity::descriptor_bytes(d);
        let _ = d.oci_digest();
        let bytes = image.read_object(d).expect("objects lie inside the file");
        assert_eq!(bytes.len() as u64, d.size());
        let _ = integrity::digest_object(&image, d, integrity::metadata::DigestAlg::Sha256)
            .expect("digest reads succeed");
    }
    // The verifier's walk over a hostile image: every path must end in an
    // error or a verdict, never a panic.
    let ring = integrity::clearsign::Keyring::default();
    let verifier = integrity::verify::Verifier::new(&image, &ring);
    for opts in [
        integrity::verify::VerifyOptions::default(),
        integrity::verify::VerifyOptions {
            legacy: true,
            legacy_all: true,
            ..Default::default()
        },
    ] {
        let _ = verifier.verify(&opts, |_, _| true);
    }
});
