//! `oci::layout`: `docker save`'s `manifest.json`, an OCI layout's
//! `oci-layout`, and the archive member index never panic on arbitrary
//! bytes; accepted member paths stay inside the archive.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::layout::{
    check_oci_layout, digest_from_member, index_archive, parse_archive_manifest,
    select_archive_image,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(images) = parse_archive_manifest(data, "fuzz") {
        for i in &images {
            for p in std::iter::once(&i.config).chain(&i.layers) {
                assert!(
                    !p.starts_with('/') && !p.split('/').any(|c| c == ".."),
                    "{p}"
                );
                let _ = digest_from_member(p);
            }
        }
        let _ = select_archive_image(&images, None, "fuzz");
        let _ = select_archive_image(&images, Some("img:t"), "fuzz");
    }
    let _ = check_oci_layout(data, "fuzz");
    if let Ok(members) = index_archive(data, "fuzz") {
        for m in members.values() {
            assert!(m.offset + m.size <= data.len() as u64);
        }
    }
});
