//! Integration over isolation: the host paths a container gets besides the
//! defaults and the user's binds — the GPU driver (libraries, tools,
//! sockets), the fabrics (libraries, provider and configuration
//! directories, masked management nodes), the network filesystems and, for
//! a Slurm step, what its MPI ranks need for PMIx. One pure function of a
//! host root ([`host_binds`]), `/` in production and a fake tree in tests.

use std::path::{Path, PathBuf};

use gpu::GpuPolicy;
use interconnect::fabric;

use crate::bind::BindSpec;

/// Where the host's GPU driver libraries appear inside (first on
/// LD_LIBRARY_PATH).
pub const GPU_LIB_DIR: &str = "/.sifrun/gpu/lib";

/// Where the host's fabric libraries appear inside (on LD_LIBRARY_PATH
/// after the GPU's).
pub const FABRIC_LIB_DIR: &str = "/.sifrun/fabric/lib";

/// What to integrate.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// Which GPUs.
    pub gpu: GpuPolicy,
    /// What the fabrics give.
    pub fabric: fabric::Policy,
    /// Network filesystem types to bind at their paths (none: no network
    /// filesystems).
    pub netfs_types: &'a [&'a str],
    /// The host's (or the job's) environment: GPU selection variables and
    /// the step's PMIx variables.
    pub env: &'a [(String, String)],
    /// For a Slurm step, the text of its slurm.conf (slurmd's spool
    /// directory, for PMIx); `None` outside Slurm.
    pub slurm_conf: Option<&'a str>,
    /// For a Slurm step, this node's name as slurmstepd has it (`%n`);
    /// never taken from `env`, which is the job's and the user's to set.
    pub node_name: Option<&'a str>,
}

/// The binds, in mount order (network filesystems, PMIx, GPU, fabric).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBinds {
    /// The binds.
    pub binds: Vec<BindSpec>,
    /// The library directories bound, in `LD_LIBRARY_PATH` order.
    pub lib_dirs: Vec<&'static str>,
    /// What the user should know (missing pieces), without the `sifrun:
    /// warning:` prefix.
    pub warnings: Vec<String>,
}

/// Why the host cannot give what was asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostBindError {
    /// `--nv` on a host without the NVIDIA driver.
    #[error("--nv: this host has no NVIDIA driver (no /dev/nvidiactl)")]
    NoNvidiaDriver,
    /// `--rocm` on a host without the AMD GPU driver.
    #[error("--rocm: this host has no AMD GPU driver (no /dev/kfd)")]
    NoRocmDriver,
}

fn bind(source: PathBuf, target: PathBuf, readonly: bool) -> BindSpec {
    BindSpec {
        source,
        target,
        readonly,
    }
}

/// Read-only binds of host libraries, (soname, host path), as `dir/soname`.
fn library_binds<'a>(
    libraries: &'a [(String, PathBuf)],
    dir: &'a str,
) -> impl Iterator<Item = BindSpec> + 'a {
    libraries
        .iter()
        .map(move |(soname, path)| bind(path.clone(), Path::new(dir).join(soname), true))
}

/// The host paths to bind below `root` for `req`.
pub fn host_binds(root: &Path, req: &Request<'_>) -> Result<HostBinds, HostBindError> {
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut out = HostBinds::default();
    let mut same_path: Vec<PathBuf> = Vec::new();
    if !req.netfs_types.is_empty() {
        let mountinfo =
            std::fs::read_to_string(at(Path::new("/proc/self/mountinfo"))).unwrap_or_default();
        same_path.extend(interconnect::netfs::mounts(&mountinfo, req.netfs_types));
    }
    if let Some(conf) = req.slurm_conf {
        // A per-node SlurmdSpoolDir (`%n`, `%h`) as this node's slurmd has
        // it: the node name from slurmstepd, not from the job's environment
        // (root binds the directory on the ECL path).
        let node = req.node_name;
        let host = nix::unistd::gethostname().ok();
        let host = host.as_ref().and_then(|h| h.to_str());
        let spool = slurm_conf::slurm::SlurmConf::parse(conf).spool_dir_on(node, host);
        same_path.extend(interconnect::pmix::binds(req.env, &spool, &|p| {
            at(p).exists()
        }));
    }
    out.binds
        .extend(same_path.into_iter().map(|p| bind(p.clone(), p, false)));
    gpu_binds(root, req, &mut out)?;
    fabric_binds(root, req.fabric, &mut out);
    Ok(out)
}

/// The GPU driver: libraries into [`GPU_LIB_DIR`], tools into /usr/bin,
/// files (the persistenced socket) at their paths.
fn gpu_binds(root: &Path, req: &Request<'_>, out: &mut HostBinds) -> Result<(), HostBindError> {
    let var = |k: &str| {
        req.env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let (mut libraries, mut tools, mut files) = (Vec::new(), Vec::new(), Vec::new());
    if matches!(req.gpu, GpuPolicy::Nvidia | GpuPolicy::Auto) {
        let caps = gpu::nvidia::capabilities(var("NVIDIA_DRIVER_CAPABILITIES"));
        match gpu::nvidia::discover(root, &caps, var("NVIDIA_VISIBLE_DEVICES")) {
            Some(n) => {
                libraries.extend(n.libraries);
                tools.extend(n.tools);
                files.extend(n.files);
                out.warnings
                    .extend(n.warnings.into_iter().map(|w| format!("--nv: {w}")));
            }
            None if req.gpu == GpuPolicy::Nvidia => return Err(HostBindError::NoNvidiaDriver),
            None => {}
        }
    }
    if matches!(req.gpu, GpuPolicy::Rocm | GpuPolicy::Auto) {
        match gpu::rocm::discover(root) {
            Some(r) => {
                for lib in r.libraries {
                    if !libraries
                        .iter()
                        .any(|(s, _): &(String, PathBuf)| *s == lib.0)
                    {
                        libraries.push(lib);
                    }
                }
                tools.extend(r.tools);
                out.warnings
                    .extend(r.warnings.into_iter().map(|w| format!("--rocm: {w}")));
            }
            None if req.gpu == GpuPolicy::Rocm => return Err(HostBindError::NoRocmDriver),
            None => {}
        }
    }
    out.binds.extend(library_binds(&libraries, GPU_LIB_DIR));
    for tool in &tools {
        let name = tool.file_name().unwrap_or_default();
        out.binds
            .push(bind(tool.clone(), Path::new("/usr/bin").join(name), true));
    }
    out.binds
        .extend(files.iter().map(|f| bind(f.clone(), f.clone(), false)));
    if !libraries.is_empty() {
        out.lib_dirs.push(GPU_LIB_DIR);
    }
    Ok(())
}

/// The fabrics: libraries into [`FABRIC_LIB_DIR`], provider and
/// configuration directories read-only at their paths, and each masked
/// device node bound over itself `nodev` (it stays visible; opening it
/// fails).
fn fabric_binds(root: &Path, policy: fabric::Policy, out: &mut HostBinds) {
    let Some(f) = fabric::discover(root, policy) else {
        return;
    };
    out.warnings
        .extend(f.warnings.iter().map(|w| format!("fabric: {w}")));
    out.binds
        .extend(library_binds(&f.libraries, FABRIC_LIB_DIR));
    for p in f.dirs.iter().chain(&f.files).chain(&f.masked) {
        out.binds.push(bind(p.clone(), p.clone(), true));
    }
    if !f.libraries.is_empty() {
        out.lib_dirs.push(FABRIC_LIB_DIR);
    }
}

#[cfg(test)]
mod tests;
