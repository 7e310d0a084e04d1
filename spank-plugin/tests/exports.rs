//! The shared object exports exactly the plugin interface, leaves no Slurm
//! symbol undefined and links no libslurm (Slurm's functions are looked up in
//! the loading process).

use std::path::PathBuf;
use std::process::Command;

fn library() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let lib = target.join(profile).join("libspank_sifrun.so");
    assert!(lib.exists(), "{} missing", lib.display());
    lib
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn exports_only_the_plugin_interface() {
    let lib = library();
    let lib = lib.to_str().unwrap();
    let defined = run(&["nm", "-D", "--defined-only", lib]);
    let mut names: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    names.sort_unstable();
    for n in &names {
        assert!(
            n.starts_with("plugin_")
                || n.starts_with("slurm_spank_")
                || *n == "spank_plugin_version",
            "unexpected export {n}"
        );
    }
    for required in [
        "plugin_name",
        "plugin_type",
        "plugin_version",
        "spank_plugin_version",
        "slurm_spank_init",
        "slurm_spank_task_init",
    ] {
        assert!(
            names.contains(&required),
            "{required} not exported: {names:?}"
        );
    }
    let undefined = run(&["nm", "-D", "--undefined-only", lib]);
    for l in undefined.lines() {
        let sym = l.split_whitespace().last().unwrap_or("");
        assert!(
            !sym.starts_with("spank_") && !sym.starts_with("slurm_"),
            "undefined Slurm symbol {sym}"
        );
    }
    let dynamic = run(&["readelf", "-d", lib]);
    assert!(!dynamic.contains("libslurm"), "links libslurm:\n{dynamic}");
}

#[test]
fn plugin_version_is_the_installed_slurm_release() {
    // The Slurm the plugin is built against: SIFRUN_SLURM_PREFIX's, else
    // the system's.
    let header = match option_env!("SIFRUN_SLURM_PREFIX").filter(|p| !p.is_empty()) {
        Some(prefix) => format!("{prefix}/include/slurm/slurm_version.h"),
        None => "/usr/include/slurm/slurm_version.h".to_owned(),
    };
    let header = std::fs::read_to_string(header).unwrap();
    let line = header
        .lines()
        .find(|l| l.starts_with("#define SLURM_VERSION_NUMBER"))
        .unwrap();
    let want = u32::from_str_radix(
        line.split_whitespace()
            .last()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_eq!(spank_sifrun::ffi::plugin_version, want);
    assert_eq!(&spank_sifrun::ffi::plugin_name, b"sifrun\0");
    // 25.05+: a failing init fails the job (ESPANK_JOB_FAILURE), never
    // drains the node; older headers have no such symbol.
    #[cfg(slurm_init_failure_mode)]
    {
        assert!(want >= 0x19_05_00, "{want:#x}");
        assert_eq!(spank_sifrun::ffi::slurm_spank_init_failure_mode, 3012);
    }
    #[cfg(not(slurm_init_failure_mode))]
    assert!(
        want < 0x19_05_00,
        "{want:#x}: built without slurm_spank_init_failure_mode"
    );
}
