//! `oci::auth::creds::from_config` (a Docker `config.json` or containers
//! `auth.json`): never panics; an error never quotes a secret field
//! (`auth`, `password`, `identitytoken`, `registrytoken`) of the file.
//! Input: `DOMAIN \x01 FILE TEXT`.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oci::auth::creds;
use serde_json::Value;

/// The secret fields' values, and every other string (keys, helper names).
fn strings(v: &Value, secrets: &mut Vec<String>, others: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                others.push(k.clone());
                match (k.as_str(), x) {
                    ("auth" | "password" | "identitytoken" | "registrytoken", Value::String(s)) => {
                        secrets.push(s.clone());
                    }
                    _ => strings(x, secrets, others),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| strings(x, secrets, others)),
        Value::String(s) => others.push(s.clone()),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (domain, file) = text.split_once('\u{1}').unwrap_or(("r.io", text));
    let _ = creds::normalise_key(domain);
    let Err(e) = creds::from_config(file, Path::new("/c.json"), domain) else {
        return;
    };
    let msg = e.to_string();
    let Ok(v) = serde_json::from_str::<Value>(file) else {
        return;
    };
    let (mut secrets, mut others) = (Vec::new(), Vec::new());
    strings(&v, &mut secrets, &mut others);
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        let innocent = domain.contains(s.as_str())
            || others.iter().any(|o| o.contains(s.as_str()))
            || "/c.json".contains(s.as_str());
        assert!(innocent || !msg.contains(s.as_str()), "{msg}");
    }
});
