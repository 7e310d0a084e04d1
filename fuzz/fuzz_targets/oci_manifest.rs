//! `oci::manifest`: manifests, indexes and configs of arbitrary bytes
//! never panic the parsers or the platform choice; what parses respects
//! the caps.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::manifest::{MAX_INDEX_ENTRIES, MAX_LAYERS, Parsed, parse_config, parse_manifest};
use oci::media;
use oci::platform::{Wanted, select};

fuzz_target!(|data: &[u8]| {
    for ct in [
        None,
        Some(media::OCI_INDEX),
        Some(media::DOCKER_MANIFEST),
        Some("application/json"),
    ] {
        match parse_manifest(data, ct, "fuzz") {
            Ok(Parsed::Index(i)) => {
                assert!(i.manifests.len() <= MAX_INDEX_ENTRIES);
                for arch in ["amd64", "arm64/v8", "s390x"] {
                    let _ = select(&i, &Wanted::parse_arch(arch).unwrap(), "fuzz");
                }
            }
            Ok(Parsed::Manifest(m)) => {
                assert!(m.layers.len() <= MAX_LAYERS);
                for l in &m.layers {
                    let _ = media::layer_compression(&l.media_type);
                }
            }
            Err(_) => {}
        }
    }
    if let Ok(c) = parse_config(data, 1, "fuzz") {
        assert_eq!(c.os, "linux");
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }
});
