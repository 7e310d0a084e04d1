//! `oci::auth::challenge::parse` (a registry's `WWW-Authenticate`) and the
//! token endpoint's answer: never panic; parsed schemes and parameter
//! names are non-empty where required and lower case; headers over the cap
//! are refused.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oci::auth::challenge::{self, ChallengeError, MAX_HEADER_BYTES};
use oci::auth::endpoint;

fuzz_target!(|data: &[u8]| {
    let _ = endpoint::parse_token(data, "realm");
    let _ = endpoint::error_message(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = endpoint::retry_after(text, 1_700_000_000, std::time::Duration::from_secs(120));
    let _ = endpoint::resolve_location("https://r.io:5000/v2/a/blobs/x?y", text);
    match challenge::parse(text) {
        Ok(v) => {
            assert!(text.len() <= MAX_HEADER_BYTES);
            assert!(!v.is_empty());
            for c in v {
                assert!(!c.scheme.is_empty());
                assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
                for k in c.params.keys() {
                    assert_eq!(k, &k.to_ascii_lowercase());
                }
            }
        }
        Err(ChallengeError::TooLong) => assert!(text.len() > MAX_HEADER_BYTES),
        Err(ChallengeError::Malformed { at, .. }) => assert!(at <= text.len()),
    }
});
