//! High-speed fabrics the host offers a job: InfiniBand/RoCE (rdma-core's
//! verbs), HPE Slingshot (CXI) and Omni-Path (HFI1), found below an
//! injectable root.
//!
//! The host's `/dev` and `/sys` are bound into every container whole, so
//! device nodes and `/sys/class/infiniband` are there already; what this
//! module adds is the policy on top of that and the host's user-space side:
//!
//! - `umad*` and `issm*` (management datagrams, the subnet manager's
//!   port state) are masked unless the admin allows them: an application
//!   never needs them, and enroot only gives them to real root.
//! - The host's fabric libraries (`libibverbs` and its providers,
//!   `librdmacm`, `libfabric` and its providers, `libcxi`, `libpsm2`), the
//!   ones that match the host's kernel driver and firmware, go into one
//!   directory first on `LD_LIBRARY_PATH`, like the GPU driver's; the
//!   provider directories those libraries load from (compiled in, the
//!   host's `<libdir>/libibverbs` and `<libdir>/libfabric`) and the
//!   configuration (`/etc/libibverbs.d`, `/etc/rdma`) are bound read-only
//!   at the host's paths.
//! - Host tuning variables ([`HOST_TUNING_PREFIXES`]) are kept over the
//!   image's defaults (the user's own settings still win).

use std::path::{Component, Path, PathBuf};

/// A fabric kind, named after its device nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// InfiniBand or RoCE through rdma-core (`/dev/infiniband`).
    Verbs,
    /// HPE Slingshot (`/dev/cxi*`).
    Cxi,
    /// Omni-Path (`/dev/hfi1_*`).
    OmniPath,
}

/// What the admin decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Bind the host's fabric libraries (default yes).
    pub libraries: bool,
    /// Leave `umad*`/`issm*` usable (default no).
    pub allow_umad: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            libraries: true,
            allow_umad: false,
        }
    }
}

/// What a container gets from the host's fabrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fabric {
    /// The fabrics found, in the order they were looked for.
    pub kinds: Vec<Kind>,
    /// The fabric device nodes the container can use (all in the bound
    /// `/dev`; for messages and tests).
    pub devices: Vec<PathBuf>,
    /// Device nodes to mask (`umad*`, `issm*` without the admin's consent).
    pub masked: Vec<PathBuf>,
    /// (soname, host path), bound as `<fabric library dir>/<soname>`.
    pub libraries: Vec<(String, PathBuf)>,
    /// Host directories bound read-only at their own (canonical) paths:
    /// provider directories and configuration.
    pub dirs: Vec<PathBuf>,
    /// Host files bound read-only at their own paths: what providers link
    /// to outside their directory (`libmlx5-rdmav34.so ->
    /// ../libmlx5.so.1.24.44.0`), which the image may not have.
    pub files: Vec<PathBuf>,
    /// Something expected that is missing.
    pub warnings: Vec<String>,
}

/// Variables a site sets on the host to tune its fabric (UCX, libfabric,
/// PSM2, rdma-core, mlx5): the image's environment scripts do not replace
/// the host's values.
pub const HOST_TUNING_PREFIXES: &[&str] =
    &["UCX_", "FI_", "PSM2_", "HFI_", "RDMAV_", "IBV_", "MLX5_"];

/// Whether `name` is a [`HOST_TUNING_PREFIXES`] variable.
pub fn is_host_tuning(name: &str) -> bool {
    HOST_TUNING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Libraries per kind, by name without `.so` (every soname version the
/// cache has is taken, the first path per soname).
fn libraries_for(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Verbs => &[
            "libibverbs",
            "librdmacm",
            "libibumad",
            "libmlx5",
            "libmlx4",
            "libefa",
            "libhns",
        ],
        Kind::Cxi => &["libfabric", "libcxi"],
        Kind::OmniPath => &["libpsm2", "libfabric"],
    }
}

/// Whether a device name (in `/dev/infiniband`) is a management node.
fn management(name: &str) -> bool {
    name.starts_with("umad") || name.starts_with("issm")
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Looks below `root` (the host's `/` in production); `None` when the host
/// has none of the fabrics.
pub fn discover(root: &Path, policy: Policy) -> Option<Fabric> {
    let mut out = devices(root, policy);
    if out.kinds.is_empty() {
        return None;
    }
    if !policy.libraries {
        return Some(out);
    }
    if add_libraries(&mut out, root) {
        add_provider_dirs(&mut out, root);
    }
    Some(out)
}

/// `root` joined with the absolute host path `p`.
fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// The fabrics whose device nodes the host has, and those nodes.
fn devices(root: &Path, policy: Policy) -> Fabric {
    let mut out = Fabric::default();
    let ib = Path::new("/dev/infiniband");
    for name in entries(&under(root, ib)) {
        let path = ib.join(&name);
        if management(&name) && !policy.allow_umad {
            out.masked.push(path);
        } else {
            out.devices.push(path);
        }
    }
    if !out.devices.is_empty() || !out.masked.is_empty() {
        out.kinds.push(Kind::Verbs);
    }
    let dev = entries(&under(root, Path::new("/dev")));
    let cxi: Vec<&String> = dev
        .iter()
        .filter(|n| {
            n.strip_prefix("cxi")
                .is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    if !cxi.is_empty() {
        out.kinds.push(Kind::Cxi);
        out.devices
            .extend(cxi.iter().map(|n| Path::new("/dev").join(n)));
    }
    let hfi: Vec<&String> = dev.iter().filter(|n| n.starts_with("hfi1_")).collect();
    if !hfi.is_empty() {
        out.kinds.push(Kind::OmniPath);
        out.devices
            .extend(hfi.iter().map(|n| Path::new("/dev").join(n)));
    }
    out
}

/// Adds the host libraries of `out`'s fabrics and a warning for each core
/// library missing; false when the ld.so.cache cannot be read.
fn add_libraries(out: &mut Fabric, root: &Path) -> bool {
    let mut names: Vec<&str> = Vec::new();
    for kind in &out.kinds {
        for n in libraries_for(*kind) {
            if !names.contains(n) {
                names.push(n);
            }
        }
    }
    match gpu::ldcache::find_libraries(root, &names) {
        Ok(libs) => out.libraries = libs,
        Err(e) => {
            out.warnings.push(e.0);
            return false;
        }
    }
    let core = |kind: Kind, stem: &str| {
        out.kinds.contains(&kind) && !out.libraries.iter().any(|(s, _)| s.starts_with(stem))
    };
    let mut missing = Vec::new();
    if core(Kind::Verbs, "libibverbs.so") {
        missing.push("libibverbs.so");
    }
    if core(Kind::Cxi, "libfabric.so") {
        missing.push("libfabric.so");
    }
    if core(Kind::OmniPath, "libpsm2.so") {
        missing.push("libpsm2.so");
    }
    for m in missing {
        out.warnings.push(format!(
            "{m} is not in the host's ld.so.cache; the image's own library is used"
        ));
    }
    true
}

/// Adds the provider directories next to the libraries that load them, and
/// the configuration they read.
fn add_provider_dirs(out: &mut Fabric, root: &Path) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (soname, path) in &out.libraries {
        let sub = if soname.starts_with("libibverbs.so") {
            "libibverbs"
        } else if soname.starts_with("libfabric.so") {
            "libfabric"
        } else {
            continue;
        };
        // Canonical: libibverbs loads from its compiled-in directory
        // (/usr/lib/...), while the cache may name /lib/... on a
        // merged-/usr host.
        if let Some(dir) = path.parent().map(|d| d.join(sub))
            && under(root, &dir).is_dir()
            && let Some(dir) = canonical(root, &dir)
            && !dirs.contains(&dir)
        {
            out.files.extend(links_out_of(root, &dir));
            dirs.push(dir);
        }
    }
    if out.kinds.contains(&Kind::Verbs) {
        for conf in ["/etc/libibverbs.d", "/etc/rdma"] {
            if under(root, Path::new(conf)).is_dir() {
                dirs.push(PathBuf::from(conf));
            }
        }
    }
    out.dirs = dirs;
}

/// `p` (a host path) with every symlink resolved, as a host path: `None`
/// when it does not exist or resolves outside `root`.
fn canonical(root: &Path, p: &Path) -> Option<PathBuf> {
    let real_root = root.canonicalize().ok()?;
    let real = root
        .join(p.strip_prefix("/").unwrap_or(p))
        .canonicalize()
        .ok()?;
    let rel = real.strip_prefix(&real_root).ok()?;
    Some(Path::new("/").join(rel))
}

/// `path` with `.` and `..` removed lexically (absolute paths only).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The files that symlinks in the host directory `dir` point to outside
/// it (as the container resolves them), which exist on the host.
fn links_out_of(root: &Path, dir: &Path) -> Vec<PathBuf> {
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut out = Vec::new();
    for name in entries(&at(dir)) {
        let Ok(link) = std::fs::read_link(at(&dir.join(&name))) else {
            continue;
        };
        let target = lexical(&dir.join(link));
        if !crate::is_under(&target, dir) && at(&target).is_file() && !out.contains(&target) {
            out.push(target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(root: &Path, p: &str) {
        let p = root.join(p.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"").unwrap();
    }

    #[test]
    fn no_fabric_no_result() {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), "/dev/null");
        touch(root.path(), "/dev/cxi");
        touch(root.path(), "/dev/cxiX");
        assert_eq!(discover(root.path(), Policy::default()), None);
    }

    #[test]
    fn management_nodes_are_masked_unless_allowed() {
        let root = tempfile::tempdir().unwrap();
        for d in ["uverbs0", "uverbs1", "rdma_cm", "umad0", "issm0"] {
            touch(root.path(), &format!("/dev/infiniband/{d}"));
        }
        let policy = Policy {
            libraries: false,
            allow_umad: false,
        };
        let f = discover(root.path(), policy).unwrap();
        assert_eq!(f.kinds, [Kind::Verbs]);
        assert_eq!(
            f.devices,
            ["rdma_cm", "uverbs0", "uverbs1"].map(|n| Path::new("/dev/infiniband").join(n))
        );
        assert_eq!(
            f.masked,
            ["issm0", "umad0"].map(|n| Path::new("/dev/infiniband").join(n))
        );
        assert!(f.libraries.is_empty() && f.warnings.is_empty());
        let f = discover(
            root.path(),
            Policy {
                allow_umad: true,
                ..policy
            },
        )
        .unwrap();
        assert!(f.masked.is_empty());
        assert_eq!(f.devices.len(), 5);
    }

    #[test]
    fn slingshot_and_omnipath_nodes() {
        let root = tempfile::tempdir().unwrap();
        for d in ["/dev/cxi0", "/dev/cxi1", "/dev/hfi1_0", "/dev/null"] {
            touch(root.path(), d);
        }
        let f = discover(root.path(), Policy::default()).unwrap();
        assert_eq!(f.kinds, [Kind::Cxi, Kind::OmniPath]);
        assert_eq!(
            f.devices,
            ["/dev/cxi0", "/dev/cxi1", "/dev/hfi1_0"].map(PathBuf::from)
        );
        // No ld.so.cache in this tree: said, not fatal.
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(f.warnings[0].contains("ld.so.cache"));
    }

    #[test]
    fn tuning_prefixes() {
        assert!(is_host_tuning("UCX_NET_DEVICES"));
        assert!(is_host_tuning("FI_PROVIDER"));
        assert!(!is_host_tuning("UCXX"));
        assert!(!is_host_tuning("PATH"));
    }
}
