//! GPU discovery for containers: which NVIDIA and AMD device nodes, driver
//! libraries and tools a Slurm step on this node was given, so the launcher
//! can bind exactly those into the container (integration over isolation).
//!
//! Every discovery reads from an injectable host root so that tests run
//! against fake `/dev`, `/sys`, `/proc` and `ld.so.cache` trees.
//!
//! Modules: [`ldcache`] reads glibc's ld.so.cache; [`nvidia`] finds an
//! NVIDIA driver's libraries, tools and devices; [`rocm`] the same for AMD ROCm.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod ldcache;
pub mod nvidia;
pub mod rocm;

use std::fmt;
use std::str::FromStr;

/// Which GPUs a container gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GpuPolicy {
    /// Bind whatever GPUs the host has and the job was allocated.
    #[default]
    Auto,
    /// NVIDIA only; an error if none is present.
    Nvidia,
    /// AMD ROCm only; an error if none is present.
    Rocm,
    /// No GPU integration at all.
    None,
}

impl FromStr for GpuPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(GpuPolicy::Auto),
            "nvidia" => Ok(GpuPolicy::Nvidia),
            "rocm" => Ok(GpuPolicy::Rocm),
            "none" => Ok(GpuPolicy::None),
            other => Err(format!(
                "{other:?} is not a GPU policy (expected auto, nvidia, rocm or none)"
            )),
        }
    }
}

impl fmt::Display for GpuPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpuPolicy::Auto => "auto",
            GpuPolicy::Nvidia => "nvidia",
            GpuPolicy::Rocm => "rocm",
            GpuPolicy::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_prints() {
        for p in [
            GpuPolicy::Auto,
            GpuPolicy::Nvidia,
            GpuPolicy::Rocm,
            GpuPolicy::None,
        ] {
            assert_eq!(p.to_string().parse::<GpuPolicy>(), Ok(p));
        }
        assert!("cuda".parse::<GpuPolicy>().unwrap_err().contains("cuda"));
    }
}
