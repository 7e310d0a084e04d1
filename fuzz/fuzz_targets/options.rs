//! Option strings from users: bind specifications (also SIFRUN_BIND lists),
//! environment files and `--env` assignments. Must never panic; accepted
//! binds must have an absolute destination without `..`.

#![no_main]

use std::path::{Component, Path};

use launcher::bind::parse_list;
use launcher::env::{EnvOptions, container_env, user_env_script};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(binds) = parse_list(text, Path::new("/cwd")) {
        for b in binds {
            assert!(b.target.is_absolute());
            assert!(!b.target.components().any(|c| c == Component::ParentDir));
            assert!(b.source.is_absolute());
        }
    }
    let (file, flags) = text.split_once('\u{1}').unwrap_or((text, ""));
    let opts = EnvOptions {
        cleanenv: false,
        env_file: Some(file.to_owned()),
        env: flags.split('\u{2}').map(str::to_owned).collect(),
    };
    if let Ok(env) = container_env(&[], &opts, "/home/u") {
        // The script must be exactly `export NAME=<quoted value>` per
        // variable, and unquoting must give the value back: nothing in a
        // value can end the quoting and run as a command.
        let script = user_env_script(&env);
        let mut rest = script.as_str();
        for (k, v) in &env.user {
            let prefix = format!("export {k}=");
            assert!(rest.starts_with(&prefix), "{rest:?}");
            rest = &rest[prefix.len()..];
            let mut value = String::new();
            loop {
                if let Some(r) = rest.strip_prefix('\'') {
                    let end = r.find('\'').expect("closed quote");
                    value.push_str(&r[..end]);
                    rest = &r[end + 1..];
                } else if let Some(r) = rest.strip_prefix("\\'") {
                    value.push('\'');
                    rest = r;
                } else if let Some(r) = rest.strip_prefix('\n') {
                    rest = r;
                    break;
                } else {
                    panic!("unquoted text in {script:?}");
                }
            }
            assert_eq!(&value, v);
        }
        assert!(rest.is_empty());
    }
});
