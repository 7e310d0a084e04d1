//! [`host_binds`] over fake host roots: the H200 node's ld.so.cache from
//! gpu's fixtures, InfiniBand device nodes as interconnect's tests make
//! them, a mountinfo with network filesystems, a slurm.conf elsewhere.

use std::fs;

use super::*;

const H200: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gpu/tests/fixtures/h200-node"
);

fn touch(root: &Path, p: &str) {
    let p = root.join(p.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, b"").unwrap();
}

/// The H200 node's driver: its ld.so.cache, every file it names, the
/// device nodes and tools.
fn h200_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let cache = fs::read(Path::new(H200).join("ld.so.cache")).unwrap();
    touch(root.path(), "/etc/ld.so.cache");
    fs::write(root.path().join("etc/ld.so.cache"), &cache).unwrap();
    for e in gpu::ldcache::parse(&cache).unwrap() {
        touch(root.path(), &e.path);
    }
    for p in ["/dev/nvidia0", "/dev/nvidiactl", "/usr/bin/nvidia-smi"] {
        touch(root.path(), p);
    }
    root
}

fn request<'a>(env: &'a [(String, String)]) -> Request<'a> {
    Request {
        gpu: GpuPolicy::None,
        fabric: fabric::Policy::default(),
        netfs_types: &[],
        env,
        slurm_conf: None,
        node_name: None,
    }
}

fn shown(b: &HostBinds) -> Vec<String> {
    b.binds
        .iter()
        .map(|b| {
            format!(
                "{} -> {}{}",
                b.source.display(),
                b.target.display(),
                if b.readonly { " ro" } else { "" }
            )
        })
        .collect()
}

#[test]
fn an_h200_node_gives_its_driver_libraries_and_tools() {
    let root = h200_root();
    let req = Request {
        gpu: GpuPolicy::Nvidia,
        ..request(&[])
    };
    let b = host_binds(root.path(), &req).unwrap();
    let binds = shown(&b);
    assert!(
        binds.contains(
            &"/usr/local/nvidia/lib64/libcuda.so.1 -> /.sifrun/gpu/lib/libcuda.so.1 ro".to_owned()
        ),
        "{binds:?}"
    );
    assert!(
        binds.contains(&"/usr/bin/nvidia-smi -> /usr/bin/nvidia-smi ro".to_owned()),
        "{binds:?}"
    );
    assert_eq!(b.lib_dirs, [GPU_LIB_DIR]);
    // Auto finds the same driver; none asks for nothing.
    let auto = host_binds(
        root.path(),
        &Request {
            gpu: GpuPolicy::Auto,
            ..request(&[])
        },
    )
    .unwrap();
    assert_eq!(auto.binds, b.binds);
    assert_eq!(
        host_binds(root.path(), &request(&[])).unwrap(),
        HostBinds::default()
    );
    // NVIDIA_VISIBLE_DEVICES=void: no GPU, quietly under auto.
    let void = [("NVIDIA_VISIBLE_DEVICES".to_owned(), "void".to_owned())];
    let none = host_binds(
        root.path(),
        &Request {
            gpu: GpuPolicy::Auto,
            ..request(&void)
        },
    )
    .unwrap();
    assert!(none.binds.is_empty(), "{none:?}");
}

#[test]
fn asking_for_a_driver_the_host_lacks_is_an_error() {
    let empty = tempfile::tempdir().unwrap();
    let ask = |gpu| {
        host_binds(
            empty.path(),
            &Request {
                gpu,
                ..request(&[])
            },
        )
    };
    assert_eq!(ask(GpuPolicy::Nvidia), Err(HostBindError::NoNvidiaDriver));
    assert_eq!(ask(GpuPolicy::Rocm), Err(HostBindError::NoRocmDriver));
    assert_eq!(ask(GpuPolicy::Auto), Ok(HostBinds::default()));
}

#[test]
fn infiniband_masks_management_nodes_and_says_what_is_missing() {
    let root = tempfile::tempdir().unwrap();
    for d in ["/dev/infiniband/uverbs0", "/dev/infiniband/umad0"] {
        touch(root.path(), d);
    }
    let b = host_binds(root.path(), &request(&[])).unwrap();
    assert_eq!(
        shown(&b),
        ["/dev/infiniband/umad0 -> /dev/infiniband/umad0 ro"]
    );
    assert!(b.lib_dirs.is_empty());
    assert!(
        b.warnings.iter().all(|w| w.starts_with("fabric: ")) && !b.warnings.is_empty(),
        "no ld.so.cache: {:?}",
        b.warnings
    );
    let allowed = Request {
        fabric: fabric::Policy {
            libraries: false,
            allow_umad: true,
        },
        ..request(&[])
    };
    let b = host_binds(root.path(), &allowed).unwrap();
    assert!(b.binds.is_empty() && b.warnings.is_empty(), "{b:?}");
}

#[test]
fn network_filesystems_and_pmix_at_their_paths_in_order() {
    let root = tempfile::tempdir().unwrap();
    touch(root.path(), "/proc/self/mountinfo");
    fs::write(
        root.path().join("proc/self/mountinfo"),
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n\
         40 22 0:40 / /lustre rw - lustre 10.0.0.1@o2ib:/fs rw\n\
         41 22 0:41 / /home rw - nfs4 nas:/home rw\n",
    )
    .unwrap();
    for d in ["/var/spool/elsewhere/x", "/run/munge/x"] {
        touch(root.path(), d);
    }
    let env = [("SLURM_MPI_TYPE".to_owned(), "pmix".to_owned())];
    let conf = "SlurmdSpoolDir=/var/spool/elsewhere\n";
    let types = ["lustre"];
    let req = Request {
        netfs_types: &types,
        slurm_conf: Some(conf),
        ..request(&env)
    };
    let b = host_binds(root.path(), &req).unwrap();
    assert_eq!(
        shown(&b),
        [
            "/lustre -> /lustre",
            "/var/spool/elsewhere -> /var/spool/elsewhere",
            "/run/munge -> /run/munge"
        ]
    );
    // Outside Slurm, no PMIx binds; without types, no network filesystems.
    let plain = host_binds(root.path(), &request(&env)).unwrap();
    assert!(plain.binds.is_empty(), "{plain:?}");
}

/// Several slurmd on one machine, each with its own spool
/// (`SlurmdSpoolDir=…%n`): PMIx gets this node's, by the name slurmstepd
/// gave, never by the job's `SLURMD_NODENAME` (the user's to set; root
/// binds the directory on the ECL path).
#[test]
fn a_per_node_spool_directory_is_this_nodes() {
    let root = tempfile::tempdir().unwrap();
    for d in ["/var/spool/slurmd-n2/x", "/var/spool/slurmd-n1/x"] {
        touch(root.path(), d);
    }
    let env = [
        ("SLURM_MPI_TYPE".to_owned(), "pmix".to_owned()),
        ("SLURMD_NODENAME".to_owned(), "n1".to_owned()),
    ];
    let req = Request {
        slurm_conf: Some("SlurmdSpoolDir=/var/spool/slurmd-%n\n"),
        node_name: Some("n2"),
        ..request(&env)
    };
    let b = host_binds(root.path(), &req).unwrap();
    assert_eq!(shown(&b), ["/var/spool/slurmd-n2 -> /var/spool/slurmd-n2"]);
}
