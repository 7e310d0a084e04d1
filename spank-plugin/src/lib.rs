//! The Slurm SPANK plugin (`libspank_sifrun.so`): `srun --sif-image=img.sif`
//! (or Slurm's own `--container=img.sif` where Slurm has no OCI runtime)
//! runs every task of a step inside a SIF image, one container per node per
//! step.
//!
//! Layout: [`ffi`] is the only code with `unsafe` (the C interface Slurm
//! loads; it owns the one `plugin::Plugin` state of the process, whose
//! methods are the callbacks); [`spank`] is the small SPANK surface the
//! callbacks use, so they are unit-tested with a fake. One file per Slurm
//! context: `local` (srun, sbatch, salloc), `remote` (slurmstepd: the
//! step's container, started by `holder` with the `request` of
//! `slurm_conf::protocol`, and `--sif-run` in `run`) and `slurmd` (the
//! job epilog). [`options`] parses the `--sif-*` options; [`sys`] is
//! bindgen's output over the installed <slurm/spank.h>.
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

mod ecl_path;
pub mod error;
pub mod ffi;
mod holder;
mod holder_death;
pub mod image_pin;
mod local;
pub mod options;
mod plugin;
mod remote;
mod request;
mod run;
mod slurmd;
pub mod spank;
mod start;
#[allow(missing_docs)]
pub mod sys;

#[cfg(test)]
mod fail_closed_tests;
#[cfg(test)]
mod fake;

/// Options the plugin registers, all under the `--sif-` prefix.
pub const OPTION_PREFIX: &str = "sif-";

/// The keys accepted after the plugin path in plugstack.conf.
pub const PLUGSTACK_KEYS: &[&str] = &["config", "launcher", "runtime_dir"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_prefix_avoids_pyxis() {
        assert!(!OPTION_PREFIX.starts_with("container"));
        assert!(slurm_conf::parse_plugstack_args(["config=/x"], PLUGSTACK_KEYS).is_ok());
    }
}
