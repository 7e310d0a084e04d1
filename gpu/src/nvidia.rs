//! What an NVIDIA host offers a container: driver libraries (found in the
//! host's ld.so.cache, by Apptainer's nvliblist names), tools, the
//! persistenced socket, device nodes. Everything is looked up below an
//! injectable root, so tests use fake trees.

use std::path::{Path, PathBuf};

use crate::ldcache;

/// Driver capabilities (`NVIDIA_DRIVER_CAPABILITIES`), each a set of
/// libraries and tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capability {
    /// CUDA and OpenCL.
    Compute,
    /// `nvidia-smi` and NVML.
    Utility,
    /// Video encoding and decoding (NVENC, NVDEC).
    Video,
    /// OpenGL, Vulkan and EGL.
    Graphics,
    /// X11 display.
    Display,
}

impl Capability {
    fn libraries(self) -> &'static [&'static str] {
        match self {
            Capability::Compute => &[
                "libcuda",
                "libcudadebugger",
                "libnvidia-ptxjitcompiler",
                "libnvidia-nvvm",
                "libnvidia-gpucomp",
                "libnvidia-fatbinaryloader",
                "libnvidia-opencl",
                "libnvidia-compiler",
                "libnvidia-pkcs11",
                "libnvidia-pkcs11-openssl3",
            ],
            Capability::Utility => &["libnvidia-ml", "libnvidia-cfg"],
            Capability::Video => &["libnvcuvid", "libnvidia-encode", "libnvidia-opticalflow"],
            Capability::Graphics => &[
                "libnvidia-glcore",
                "libnvidia-glsi",
                "libnvidia-tls",
                "libnvidia-eglcore",
                "libnvidia-glvkspirv",
                "libnvidia-rtcore",
                "libnvidia-allocator",
                "libnvoptix",
                "libEGL_nvidia",
                "libGLX_nvidia",
                "libGLESv2_nvidia",
                "libGLESv1_CM_nvidia",
                "libvdpau_nvidia",
            ],
            Capability::Display => &["libnvidia-fbc", "libnvidia-ifr"],
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Capability::Compute => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
            Capability::Utility => &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"],
            _ => &[],
        }
    }
}

/// Parses `NVIDIA_DRIVER_CAPABILITIES` (`compute,utility` when unset or
/// empty; `all` for every one). Unknown names are ignored, as NVIDIA's
/// toolkit does.
pub fn capabilities(value: Option<&str>) -> Vec<Capability> {
    let all = [
        Capability::Compute,
        Capability::Utility,
        Capability::Video,
        Capability::Graphics,
        Capability::Display,
    ];
    let value = value.map(str::trim).filter(|v| !v.is_empty());
    let Some(value) = value else {
        return vec![Capability::Compute, Capability::Utility];
    };
    let mut out = Vec::new();
    for word in value.split(',').map(str::trim) {
        let c = match word {
            "all" => return all.to_vec(),
            "compute" => Capability::Compute,
            "utility" => Capability::Utility,
            "video" => Capability::Video,
            "graphics" => Capability::Graphics,
            "display" => Capability::Display,
            _ => continue,
        };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// What the host has for the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nvidia {
    /// (soname, host path as the cache names it), bound as
    /// `<library dir>/<soname>`.
    pub libraries: Vec<(String, PathBuf)>,
    /// Host tools, bound at `/usr/bin/<name>`.
    pub tools: Vec<PathBuf>,
    /// Other host files bound at their own paths (persistenced socket).
    pub files: Vec<PathBuf>,
    /// The host's NVIDIA device nodes (for messages and --contain setups;
    /// the host /dev is bound whole by default).
    pub devices: Vec<PathBuf>,
    /// Something expected that is missing.
    pub warnings: Vec<String>,
}

/// Looks below `root` (the host's `/` in production). `None` when the host
/// has no NVIDIA driver (no `/dev/nvidiactl`) or `NVIDIA_VISIBLE_DEVICES`
/// is `void`.
pub fn discover(root: &Path, caps: &[Capability], visible: Option<&str>) -> Option<Nvidia> {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    if visible.map(str::trim) == Some("void") || !at("/dev/nvidiactl").exists() {
        return None;
    }
    let mut out = Nvidia::default();
    let names: Vec<&str> = caps
        .iter()
        .flat_map(|c| c.libraries().iter().copied())
        .collect();
    match ldcache::find_libraries(root, &names) {
        Ok(libs) => {
            for must in ["libcuda", "libnvidia-ml"] {
                let stem = format!("{must}.so");
                let wanted = names.contains(&must);
                let found = libs.iter().any(|(s, _)| s.starts_with(&stem));
                if wanted && !found {
                    out.warnings
                        .push(format!("{stem} is not in the host's ld.so.cache"));
                }
            }
            out.libraries = libs;
        }
        Err(e) => out.warnings.push(e.0),
    }
    for cap in caps {
        for tool in cap.tools() {
            let found = ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| at(&p.to_string_lossy()).is_file());
            if let Some(p) = found
                && !out.tools.contains(&p)
            {
                out.tools.push(p);
            }
        }
    }
    for f in [
        "/run/nvidia-persistenced/socket",
        "/var/run/nvidia-persistenced/socket",
    ] {
        if at(f).exists() {
            out.files.push(PathBuf::from(f));
            break;
        }
    }
    if let Ok(dir) = std::fs::read_dir(at("/dev")) {
        let mut devices: Vec<PathBuf> = dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("nvidia"))
            .map(|n| Path::new("/dev").join(n))
            .collect();
        devices.sort();
        out.devices = devices;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_default_to_compute_and_utility() {
        assert_eq!(
            capabilities(None),
            [Capability::Compute, Capability::Utility]
        );
        assert_eq!(
            capabilities(Some("video, compute,bogus")),
            [Capability::Video, Capability::Compute]
        );
        assert_eq!(capabilities(Some("all")).len(), 5);
    }
}
