//! What the admin and the job hand the plugin: plugstack.conf arguments,
//! the admin file (TOML with `[ecl]`), the holder's environment-change
//! lines, and the values of `--sif-*` options and the job's `SIFRUN_*` /
//! inherited allocation variables. Must never panic; accepted values keep
//! their invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use slurm_conf::admin::AdminConfig;
use slurm_conf::holder::EnvChange;
use spank_sifrun::options::{Args, OPTIONS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\u{1}');
    let plugstack = parts.next().unwrap_or("");
    let admin = parts.next().unwrap_or("");
    let holder = parts.next().unwrap_or("");
    let options = parts.next().unwrap_or("");

    if let Ok(map) =
        slurm_conf::parse_plugstack_args(plugstack.split_whitespace(), spank_sifrun::PLUGSTACK_KEYS)
    {
        assert!(map.keys().all(|k| spank_sifrun::PLUGSTACK_KEYS.contains(&k.as_str())));
    }

    let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
    if let Ok(c) = AdminConfig::parse(admin, &names) {
        for f in &c.users.forbid {
            assert!(c.forbids(f));
        }
    }
    let _ = slurm_conf::ecl::Ecl::parse_file_text(admin);

    for line in holder.lines() {
        if let Some(change) = EnvChange::decode(line) {
            // What decodes encodes back to a line that decodes the same.
            assert_eq!(EnvChange::decode(&change.encode()), Some(change));
        }
    }

    // Option values: `N=value` per line applies option N; the rest become
    // the job's environment for apply_env.
    let mut args = Args::default();
    let mut env: Vec<(String, String)> = Vec::new();
    for line in options.split('\u{2}') {
        match line.split_once('=') {
            Some((n, v)) if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => {
                let val = i32::from(n.as_bytes()[0] - b'0');
                if OPTIONS.iter().any(|o| o.val == val) {
                    let _ = args.apply(val, Some(v));
                }
            }
            Some((k, v)) => env.push((k.to_owned(), v.to_owned())),
            None => {}
        }
    }
    let _ = args.apply_env(|k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()));
    for b in &args.binds {
        assert!(!b.contains(['\n', '\0']), "{b:?}");
    }
});
