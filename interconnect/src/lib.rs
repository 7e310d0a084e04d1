//! Host interconnect integration: InfiniBand/RoCE, Slingshot and Omni-Path
//! devices, the PMIx server of the Slurm step, and network filesystems, all
//! bound into the container at the host's paths so MPI works unchanged.
//!
//! Path rules match whole path components, never string prefixes.
//!
//! Modules: [`fabric`] (InfiniBand/RoCE, Slingshot and Omni-Path devices,
//! libraries and configuration), [`netfs`] (network filesystems from
//! mountinfo), [`pmix`] (what a step's ranks need for PMIx), [`topology`]
//! (per-task nearest GPUs and NICs).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod fabric;
pub mod netfs;
pub mod pmix;
pub mod topology;

use std::path::{Component, Path};

/// Whether `path` is `base` or lies below it, comparing whole components
/// (`/scratch2` is not under `/scratch`). Both paths must be absolute and
/// free of `..`; anything else is never considered contained.
pub fn is_under(path: &Path, base: &Path) -> bool {
    let normal = |p: &Path| {
        p.is_absolute()
            && p.components().all(|c| {
                matches!(
                    c,
                    Component::RootDir | Component::Normal(_) | Component::CurDir
                )
            })
    };
    if !normal(path) || !normal(base) {
        return false;
    }
    let (path, base) = (normal_components(path), normal_components(base));
    path.len() >= base.len() && path[..base.len()] == base[..]
}

fn normal_components(p: &Path) -> Vec<Component<'_>> {
    p.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_not_prefixes() {
        assert!(is_under(Path::new("/scratch/a"), Path::new("/scratch")));
        assert!(is_under(Path::new("/scratch"), Path::new("/scratch/")));
        assert!(!is_under(Path::new("/scratch2/a"), Path::new("/scratch")));
        assert!(!is_under(
            Path::new("/scratch/../etc"),
            Path::new("/scratch")
        ));
        assert!(!is_under(Path::new("scratch/a"), Path::new("scratch")));
        assert!(is_under(Path::new("/a/./b"), Path::new("/a")));
    }
}
