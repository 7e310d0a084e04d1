//! NVIDIA discovery against fake host trees: the ld.so.cache of a real H200
//! node with the files it names created below a temporary root, device nodes
//! as the node has them; and the cache parser against caches `ldconfig -C`
//! builds over libraries made here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use gpu::ldcache;
use gpu::nvidia::{self, Capability};

const H200: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/h200-node");

/// A host root like the H200 node: its ld.so.cache, every file the cache
/// names (empty), its device nodes (as plain files) and tools.
fn h200_root(skip: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let at = |p: &str| root.path().join(p.trim_start_matches('/'));
    fs::create_dir_all(at("/etc")).unwrap();
    let cache = fs::read(Path::new(H200).join("ld.so.cache")).unwrap();
    fs::write(at("/etc/ld.so.cache"), &cache).unwrap();
    for e in ldcache::parse(&cache).unwrap() {
        if skip.iter().any(|s| e.soname.starts_with(s)) {
            continue;
        }
        let p = at(&e.path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, b"").unwrap();
    }
    for d in [
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-caps/nvidia-cap1",
        "/dev/nvidia-caps/nvidia-cap2",
        "/usr/bin/nvidia-smi",
        "/usr/bin/nvidia-debugdump",
        "/usr/bin/nvidia-cuda-mps-control",
    ] {
        fs::create_dir_all(at(d).parent().unwrap()).unwrap();
        fs::write(at(d), b"").unwrap();
    }
    root
}

fn sonames(n: &nvidia::Nvidia) -> Vec<&str> {
    n.libraries.iter().map(|(s, _)| s.as_str()).collect()
}

#[test]
fn an_h200_node_offers_its_driver() {
    let root = h200_root(&[]);
    let caps = nvidia::capabilities(None);
    let n = nvidia::discover(root.path(), &caps, None).unwrap();
    assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    let names = sonames(&n);
    for want in [
        "libcuda.so.1",
        "libcuda.so",
        "libnvidia-ml.so.1",
        "libnvidia-ptxjitcompiler.so.1",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // The first path the cache lists for a soname wins, as with ldconfig.
    let cuda = n
        .libraries
        .iter()
        .find(|(s, _)| s == "libcuda.so.1")
        .unwrap();
    assert_eq!(
        cuda.1,
        PathBuf::from("/usr/local/nvidia/lib64/libcuda.so.1")
    );
    // compute,utility: no graphics or video libraries.
    assert!(
        !names
            .iter()
            .any(|s| s.starts_with("libnvidia-glcore") || s.starts_with("libnvcuvid")),
        "{names:?}"
    );
    assert!(n.tools.contains(&PathBuf::from("/usr/bin/nvidia-smi")));
    assert!(
        n.tools
            .contains(&PathBuf::from("/usr/bin/nvidia-cuda-mps-control"))
    );
    assert_eq!(
        n.devices,
        [
            "/dev/nvidia-caps",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia0",
            "/dev/nvidiactl"
        ]
        .map(PathBuf::from)
    );
    // Every capability adds graphics and video libraries.
    let all = nvidia::discover(root.path(), &nvidia::capabilities(Some("all")), None).unwrap();
    let names = sonames(&all);
    assert!(
        names.iter().any(|s| s.starts_with("libnvidia-glcore")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|s| s.starts_with("libnvcuvid")),
        "{names:?}"
    );
}

#[test]
fn missing_pieces_warn_and_void_or_no_driver_mean_nothing() {
    let root = h200_root(&["libnvidia-ml"]);
    let n = nvidia::discover(root.path(), &[Capability::Utility], None).unwrap();
    assert_eq!(
        n.warnings,
        ["libnvidia-ml.so is not in the host's ld.so.cache"]
    );
    assert!(nvidia::discover(root.path(), &[Capability::Compute], Some("void")).is_none());
    fs::remove_file(root.path().join("dev/nvidiactl")).unwrap();
    assert!(nvidia::discover(root.path(), &[Capability::Compute], None).is_none());
    let empty = tempfile::tempdir().unwrap();
    assert!(nvidia::discover(empty.path(), &[Capability::Compute], None).is_none());
    // A node with a driver but an unreadable cache: a warning, not a failure.
    fs::create_dir_all(empty.path().join("dev")).unwrap();
    fs::write(empty.path().join("dev/nvidiactl"), b"").unwrap();
    let n = nvidia::discover(empty.path(), &[Capability::Compute], None).unwrap();
    assert!(
        n.libraries.is_empty() && n.warnings[0].contains("ld.so.cache"),
        "{n:?}"
    );
}

#[test]
fn the_parser_reads_what_ldconfig_writes() {
    let have = |p: &str| Command::new(p).arg("--version").output().is_ok();
    if !have("gcc") || !Path::new("/sbin/ldconfig").exists() {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
            "gcc and ldconfig are required"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let libs = dir.path().join("nvidia-lib");
    fs::create_dir(&libs).unwrap();
    let src = dir.path().join("empty.c");
    fs::write(&src, "int sifrun_fixture(void) { return 0; }\n").unwrap();
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        let out = Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(libs.join(soname))
            .arg(format!("-Wl,-soname,{soname}"))
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conf = dir.path().join("ld.so.conf");
    fs::write(&conf, format!("{}\n", libs.display())).unwrap();
    let cache = dir.path().join("ld.so.cache");
    let out = Command::new("/sbin/ldconfig")
        .arg("-C")
        .arg(&cache)
        .arg("-f")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = ldcache::parse(&fs::read(&cache).unwrap()).unwrap();
    for soname in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        let e = entries.iter().find(|e| e.soname == soname).unwrap();
        assert_eq!(Path::new(&e.path), libs.join(soname));
        assert_eq!(e.flags, ldcache::native_flags());
    }
    // And `ldconfig -p` agrees on the count.
    let listed = Command::new("/sbin/ldconfig")
        .arg("-p")
        .arg("-C")
        .arg(&cache)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.starts_with(&format!("{} libs found", entries.len())),
        "{text}"
    );
}
