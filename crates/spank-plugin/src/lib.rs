//! The Slurm SPANK plugin (`libspank_sifrun.so`): `srun --container=img.sif`
//! and `#SBATCH --container=img.sif` run every task of a step inside a SIF
//! image, one container per node per step, started by the `sifrun` launcher.
//!
//! Status: the FFI (bindgen over `<slurm/spank.h>`), options and lifecycle
//! arrive with the plugin issue. Until then this crate builds the shared
//! object name the admin docs refer to and holds the option names, which must
//! clash with neither Slurm's nor pyxis' (`--container-*`).

/// Options the plugin registers, all under the `--sif-` prefix.
pub const OPTION_PREFIX: &str = "sif-";

/// The keys accepted after the plugin path in plugstack.conf.
pub const PLUGSTACK_KEYS: &[&str] = &["config"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_prefix_avoids_pyxis() {
        assert!(!OPTION_PREFIX.starts_with("container"));
        assert!(slurm_conf::parse_plugstack_args(["config=/x"], PLUGSTACK_KEYS).is_ok());
    }
}
