//! What the admin and the job hand the plugin: plugstack.conf arguments,
//! the admin file (TOML with `[ecl]`), slurm.conf and plugstack.conf text,
//! and the values of `--sif-*` options and the job's `SIFRUN_*` /
//! inherited allocation variables. Must never panic; accepted values keep
//! their invariants. (The holder's report: the `protocol` target.)

#![no_main]

use libfuzzer_sys::fuzz_target;
use slurm_conf::admin::AdminConfig;
use slurm_conf::slurm::{SlurmConf, plugstack_plugins};
use spank_sifrun::options::{Args, OPTIONS, Opt};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\u{1}');
    let plugstack = parts.next().unwrap_or("");
    let admin = parts.next().unwrap_or("");
    let slurm = parts.next().unwrap_or("");
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

    let conf = SlurmConf::parse(slurm);
    assert!(conf.spool_dir().is_absolute());
    assert!(conf.service_users().contains(&"slurm".to_owned()));
    let at = std::path::Path::new("/etc/slurm/slurm.conf");
    assert!(conf.plugstack_path(at).is_absolute());
    // The same text as a plugstack.conf that includes itself.
    let plugins = plugstack_plugins(
        std::path::Path::new("/p.conf"),
        &|_| Some(slurm.to_owned()),
        &|_| vec![std::path::PathBuf::from("/p.conf")],
    );
    assert!(plugins.iter().all(|p| p.is_absolute()));

    // Option values: `N=value` per line applies option number N (as Slurm's
    // callback gets it); the rest become the job's environment for apply_env.
    let mut args = Args::default();
    let mut env: Vec<(String, String)> = Vec::new();
    for line in options.split('\u{2}') {
        match line.split_once('=') {
            Some((n, v)) if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => {
                let val = i32::from(n.as_bytes()[0] - b'0');
                if let Some(opt) = Opt::from_val(val) {
                    let _ = args.apply(opt, Some(v));
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
