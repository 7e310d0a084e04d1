//! What an AMD ROCm host offers a container: `/dev/kfd` and the DRI render
//! nodes, the ROCm user-space libraries Apptainer's rocmliblist names (found
//! in the host's ld.so.cache) and the tools `rocm-smi` and `rocminfo`.
//! Looked up below an injectable root, like [`crate::nvidia`].

use std::path::{Path, PathBuf};

use crate::ldcache;

/// Library names (Apptainer's rocmliblist.conf plus SingularityCE's).
pub(crate) const LIBRARIES: &[&str] = &[
    "libamdhip64",
    "libhsa-runtime64",
    "libhsakmt",
    "libamd_comgr",
    "libamdocl64",
    "libdrm",
    "libdrm_amdgpu",
    "libnuma",
    "libelf",
    "librocm-core",
    "librocm_smi64",
    "librocprofiler-register",
];

/// Tools bound at `/usr/bin/<name>`.
pub(crate) const TOOLS: &[&str] = &["rocm-smi", "rocminfo"];

/// What the host has for the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rocm {
    /// (soname, host path), bound as `<library dir>/<soname>`.
    pub libraries: Vec<(String, PathBuf)>,
    /// Host tools.
    pub tools: Vec<PathBuf>,
    /// `/dev/kfd` and `/dev/dri/renderD*` (the host /dev is bound whole).
    pub devices: Vec<PathBuf>,
    /// What was expected but not found, for the user.
    pub warnings: Vec<String>,
}

/// Looks below `root`. `None` when the host has no `/dev/kfd`.
pub fn discover(root: &Path) -> Option<Rocm> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    if !at("/dev/kfd").exists() {
        return None;
    }
    let mut out = Rocm {
        devices: vec![PathBuf::from("/dev/kfd")],
        ..Rocm::default()
    };
    if let Ok(dir) = std::fs::read_dir(at("/dev/dri")) {
        let mut render: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("renderD"))
            .map(|n| Path::new("/dev/dri").join(n))
            .collect();
        render.sort();
        out.devices.extend(render);
    }
    if out.devices.len() == 1 {
        out.warnings
            .push("/dev/kfd exists but there is no /dev/dri/renderD* node".into());
    }
    match ldcache::find_libraries(root, LIBRARIES) {
        Ok(libs) => {
            if !libs.iter().any(|(s, _)| s.starts_with("libhsa-runtime64")) {
                out.warnings
                    .push("libhsa-runtime64.so is not in the host's ld.so.cache".into());
            }
            out.libraries = libs;
        }
        Err(e) => out.warnings.push(e.0),
    }
    for tool in TOOLS {
        if let Some(p) = ["/usr/bin", "/opt/rocm/bin", "/usr/local/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| at(&p.to_string_lossy()).is_file())
        {
            out.tools.push(p);
        }
    }
    Some(out)
}
