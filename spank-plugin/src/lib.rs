//! The Slurm SPANK plugin (`libspank_sifrun.so`): `srun --sif-image=img.sif`
//! (and, with the lifecycle work, Slurm's own `--container=img.sif`) runs
//! every task of a step inside a SIF image, one container per node per step.
//!
//! Layout: `ffi` is the only file with `unsafe` (the C interface Slurm
//! loads); `plugin` holds what each callback does, over the small [`spank`]
//! trait, so it is unit-tested with a fake; `options` parses the `--sif-*`
//! options; `sys` is bindgen's output over the installed <slurm/spank.h>.
//!
//! Status: options are registered and checked; the container lifecycle is
//! next. Until then a task that asks for an image fails before it runs.

pub mod ffi;
pub mod options;
pub mod plugin;
pub mod spank;
pub mod sys;

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
