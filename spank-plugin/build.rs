//! Generates the SPANK bindings from the installed <slurm/spank.h>, so the
//! plugin's `plugin_version` is the SLURM_VERSION_NUMBER of the Slurm it is
//! built against (Slurm loads a plugin only for that major.minor).
//!
//! The functions are bound for run-time lookup in the loading process
//! (srun, sbatch, salloc, slurmstepd all carry them), so the plugin has no
//! undefined `spank_*` symbols and its test binaries link without Slurm.
//!
//! `SIFRUN_SLURM_PREFIX` (set by `make SLURM=/opt/slurm-25.11`) selects a
//! Slurm installed under its own prefix: its `include/slurm/spank.h` and
//! `slurm_version.h` are used instead of the system's (Debian's libslurm-dev).
//! Keep one cargo target directory per series (the Makefile does), or each
//! build replaces the other's plugin.

use std::path::PathBuf;

const PREFIX_VAR: &str = "SIFRUN_SLURM_PREFIX";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed={PREFIX_VAR}");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut builder = bindgen::Builder::default();
    if let Some(prefix) = std::env::var_os(PREFIX_VAR).filter(|p| !p.is_empty()) {
        let include = PathBuf::from(prefix).join("include");
        let version = include.join("slurm/slurm_version.h");
        assert!(
            version.is_file(),
            "{PREFIX_VAR}: {} not found (is that a Slurm prefix?)",
            version.display()
        );
        println!("cargo:rerun-if-changed={}", version.display());
        println!(
            "cargo:rerun-if-changed={}",
            include.join("slurm/spank.h").display()
        );
        builder = builder.clang_arg(format!("-I{}", include.display()));
    }
    let bindings = builder
        .header("wrapper.h")
        .allowlist_function("spank_(option_register|option_getopt|getenv|setenv|unsetenv|remote|context|job_control_getenv|job_control_setenv)")
        .allowlist_function("slurm_(info|error|verbose)")
        .allowlist_function("spank_get_item")
        .allowlist_type("spank_t|spank_err_t|spank_context_t|spank_option|spank_opt_cb_f|spank_item_t")
        .allowlist_var("SLURM_VERSION_NUMBER|SPANK_OPTION_MAXLEN|ESPANK_.*|S_CTX_.*")
        .constified_enum_module("spank_context|slurm_err|spank_item")
        .dynamic_library_name("SpankApi")
        .dynamic_link_require_all(false)
        .layout_tests(false)
        .wrap_unsafe_ops(true)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over <slurm/spank.h> failed ({e}); install libslurm-dev and libclang-dev"));
    // Slurm 25.05+ reads `slurm_spank_init_failure_mode` (its errno values
    // arrived with it).
    println!("cargo::rustc-check-cfg=cfg(slurm_init_failure_mode)");
    if bindings
        .to_string()
        .contains("slurm_err_t_ESPANK_JOB_FAILURE")
    {
        println!("cargo:rustc-cfg=slurm_init_failure_mode");
    }
    bindings
        .write_to_file(out.join("spank_bindings.rs"))
        .expect("writing the bindings");
}
