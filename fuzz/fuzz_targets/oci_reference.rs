//! `oci::reference`: parsing never panics; a parsed reference prints in
//! its normalised form, which parses back to the same reference.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::reference::{Reference, Source, pull_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(text) {
        let shown = r.to_string();
        assert_eq!(Reference::parse(&shown).unwrap(), r, "{shown}");
        assert!(!r.fetch_ref().is_empty());
    }
    let _ = Source::parse_with(text, |p| p.as_os_str().len() % 2 == 0);
    assert!(pull_name(text).ends_with(".sif"));
});
