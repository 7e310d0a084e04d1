//! Fabric discovery against fake host trees: device nodes as empty files,
//! libraries made here with rdma-core's and libfabric's sonames, and an
//! ld.so.cache that `ldconfig -C` builds over them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use interconnect::fabric::{self, Kind, Policy};

fn have_tools() -> bool {
    let have = Command::new("gcc").arg("--version").output().is_ok()
        && Path::new("/sbin/ldconfig").exists();
    assert!(
        have || std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "gcc and ldconfig are required"
    );
    have
}

fn touch(root: &Path, p: &str) {
    let p = root.join(p.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, b"").unwrap();
}

fn library(dir: &Path, file: &str, soname: &str) {
    let src = dir.join("empty.c");
    fs::write(&src, "int f(void) { return 0; }\n").unwrap();
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join(file))
        .arg(format!("-Wl,-soname,{soname}"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    fs::remove_file(src).unwrap();
}

/// A merged-/usr host (`/lib -> usr/lib`) with rdma-core as Debian
/// installs it; the cache names libraries below `/lib`, as Debian's does.
/// The cache records absolute paths, so the root also holds itself at its
/// own path (a link), where discovery looks the cached paths up.
fn rdma_core_host(root: &Path) -> PathBuf {
    let libdir = root.join("usr/lib/x86_64-linux-gnu");
    fs::create_dir_all(libdir.join("libibverbs")).unwrap();
    for (file, soname) in [
        ("libibverbs.so.1.14.44.0", "libibverbs.so.1"),
        ("librdmacm.so.1.3.44.0", "librdmacm.so.1"),
        ("libmlx5.so.1.24.44.0", "libmlx5.so.1"),
        ("libfabric.so.1.18.2", "libfabric.so.1"),
    ] {
        library(&libdir, file, soname);
    }
    // A provider that is a file, and one that links out of the directory.
    library(
        &libdir.join("libibverbs"),
        "libcxgb4-rdmav34.so",
        "libcxgb4-rdmav34.so",
    );
    symlink(
        "../libmlx5.so.1.24.44.0",
        libdir.join("libibverbs/libmlx5-rdmav34.so"),
    )
    .unwrap();
    symlink("usr/lib", root.join("lib")).unwrap();
    touch(root, "/etc/libibverbs.d/mlx5.driver");
    touch(root, "/etc/rdma/modules/rdma.conf");
    let conf = root.join("ld.so.conf");
    fs::write(&conf, format!("{}/lib/x86_64-linux-gnu\n", root.display())).unwrap();
    let out = Command::new("/sbin/ldconfig")
        .arg("-C")
        .arg(root.join("etc/ld.so.cache"))
        .arg("-f")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // ldconfig makes the soname links; the cache entries name them.
    let mirror = root.join(root.strip_prefix("/").unwrap());
    fs::create_dir_all(mirror.parent().unwrap()).unwrap();
    symlink(root, &mirror).unwrap();
    libdir
}

#[test]
fn an_infiniband_node_offers_verbs_providers_and_configuration() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    rdma_core_host(&root);
    for d in ["uverbs0", "uverbs1", "rdma_cm", "umad0", "umad1", "issm0"] {
        touch(&root, &format!("/dev/infiniband/{d}"));
    }
    let f = fabric::discover(&root, Policy::default()).unwrap();
    assert_eq!(f.kinds, [Kind::Verbs]);
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    let sonames: Vec<&str> = f.libraries.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        sonames,
        ["libibverbs.so.1", "librdmacm.so.1", "libmlx5.so.1"]
    );
    // The provider directory at its canonical path (where libibverbs was
    // built to look), its configuration, and what a provider links to.
    assert_eq!(
        f.dirs,
        [
            "/usr/lib/x86_64-linux-gnu/libibverbs",
            "/etc/libibverbs.d",
            "/etc/rdma"
        ]
        .map(PathBuf::from)
    );
    assert_eq!(
        f.files,
        [PathBuf::from(
            "/usr/lib/x86_64-linux-gnu/libmlx5.so.1.24.44.0"
        )]
    );
    assert_eq!(
        f.masked,
        ["issm0", "umad0", "umad1"].map(|n| Path::new("/dev/infiniband").join(n))
    );
    assert_eq!(f.devices.len(), 3);

    // The admin's choices: no libraries, management nodes allowed.
    let f = fabric::discover(
        &root,
        Policy {
            libraries: false,
            allow_umad: true,
        },
    )
    .unwrap();
    assert!(f.libraries.is_empty() && f.dirs.is_empty() && f.files.is_empty());
    assert!(f.masked.is_empty() && f.devices.len() == 6);
}

#[test]
fn slingshot_gets_libfabric_and_a_missing_library_is_said() {
    if !have_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    rdma_core_host(&root);
    touch(&root, "/dev/cxi0");
    let f = fabric::discover(&root, Policy::default()).unwrap();
    assert_eq!(f.kinds, [Kind::Cxi]);
    let sonames: Vec<&str> = f.libraries.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sonames, ["libfabric.so.1"], "no libcxi on this host");
    assert!(
        f.dirs.is_empty(),
        "no libfabric provider directory, no verbs"
    );
    assert!(f.warnings.is_empty(), "{:?}", f.warnings);

    // An InfiniBand node whose host lacks rdma-core: the devices still
    // come, with a warning that the image's libraries are used.
    let bare = tempfile::tempdir().unwrap();
    touch(bare.path(), "/dev/infiniband/uverbs0");
    touch(bare.path(), "/dev/hfi1_0");
    fs::create_dir_all(bare.path().join("etc")).unwrap();
    let conf = bare.path().join("ld.so.conf");
    fs::write(&conf, "").unwrap();
    let out = Command::new("/sbin/ldconfig")
        .arg("-C")
        .arg(bare.path().join("etc/ld.so.cache"))
        .arg("-f")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let f = fabric::discover(bare.path(), Policy::default()).unwrap();
    assert_eq!(f.kinds, [Kind::Verbs, Kind::OmniPath]);
    assert!(f.libraries.is_empty());
    assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
    assert!(f.warnings[0].starts_with("libibverbs.so is not in the host's ld.so.cache"));
    assert!(f.warnings[1].starts_with("libpsm2.so"));
}
