//! ROCm discovery against a fake host tree whose ld.so.cache `ldconfig -C`
//! builds over libraries made here with the ROCm sonames.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpu::rocm;

#[test]
fn a_rocm_node_offers_kfd_render_nodes_libraries_and_tools() {
    let have = Command::new("gcc").arg("--version").output().is_ok()
        && Path::new("/sbin/ldconfig").exists();
    if !have {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
            "gcc and ldconfig are required"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    assert!(
        rocm::discover(root.path()).is_none(),
        "no /dev/kfd, no ROCm"
    );
    for d in [
        "/dev/kfd",
        "/dev/dri/renderD128",
        "/dev/dri/renderD129",
        "/dev/dri/card0",
        "/opt/rocm/bin/rocm-smi",
    ] {
        fs::create_dir_all(at(d).parent().unwrap()).unwrap();
        fs::write(at(d), b"").unwrap();
    }
    // The cache records absolute paths, so the libraries live where the
    // fake root says the host has them: below the root, at the same path.
    let libdir = at("/opt/rocm/lib");
    fs::create_dir_all(&libdir).unwrap();
    let src = root.path().join("empty.c");
    fs::write(&src, "int f(void) { return 0; }\n").unwrap();
    for soname in [
        "libhsa-runtime64.so.1",
        "libamdhip64.so.6",
        "libdrm_amdgpu.so.1",
    ] {
        let out = Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(libdir.join(soname))
            .arg(format!("-Wl,-soname,{soname}"))
            .arg(&src)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let conf = root.path().join("ld.so.conf");
    fs::write(&conf, format!("{}\n", libdir.display())).unwrap();
    fs::create_dir_all(at("/etc")).unwrap();
    let out = Command::new("/sbin/ldconfig")
        .arg("-C")
        .arg(at("/etc/ld.so.cache"))
        .arg("-f")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success());
    // discover joins cache paths to the root: mirror the absolute library
    // directory below the root too.
    let mirrored = root.path().join(libdir.strip_prefix("/").unwrap());
    fs::create_dir_all(&mirrored).unwrap();
    for e in fs::read_dir(&libdir).unwrap().flatten() {
        fs::copy(e.path(), mirrored.join(e.file_name())).unwrap();
    }
    let r = rocm::discover(root.path()).unwrap();
    assert_eq!(
        r.devices,
        ["/dev/kfd", "/dev/dri/renderD128", "/dev/dri/renderD129"].map(PathBuf::from)
    );
    let names: Vec<&str> = r.libraries.iter().map(|(s, _)| s.as_str()).collect();
    for want in [
        "libhsa-runtime64.so.1",
        "libamdhip64.so.6",
        "libdrm_amdgpu.so.1",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    assert_eq!(r.tools, [PathBuf::from("/opt/rocm/bin/rocm-smi")]);
}
