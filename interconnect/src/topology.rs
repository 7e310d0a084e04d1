//! Per-task placement hints: which GPUs and InfiniBand devices are nearest
//! to the CPUs a task may run on, read from sysfs (below an injectable
//! root). A device is near when its PCI `local_cpulist` shares CPUs with
//! the task; ties keep PCI (or name) order. With no locality information
//! (a one-socket node, `local_cpulist` covering every CPU) the order is the
//! plain PCI order, so the hints never make things worse.

use std::path::Path;

/// A device and the CPUs local to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// PCI address (GPUs) or device name (`mlx5_0`).
    pub name: String,
    /// The CPUs of the device's NUMA node (its `local_cpulist`).
    pub cpus: Vec<u32>,
}

/// Parses a kernel CPU list (`0-3,8,10-11`).
pub(crate) fn parse_cpulist(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>())
                    && a <= b
                    && b - a < 1 << 16
                {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(c) = part.trim().parse() {
                    out.push(c);
                }
            }
        }
    }
    out
}

fn read(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// NVIDIA GPUs (vendor 0x10de, display or 3D controller class), in PCI
/// address order, which is CUDA's order with `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
pub(crate) fn nvidia_gpus(root: &Path) -> Vec<Local> {
    let dir = root.join("sys/bus/pci/devices");
    let mut out: Vec<Local> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.path();
            let vendor = read(&p.join("vendor"))?;
            let class = read(&p.join("class"))?;
            (vendor == "0x10de" && (class.starts_with("0x0300") || class.starts_with("0x0302")))
                .then(|| Local {
                    name: e.file_name().to_string_lossy().into_owned(),
                    cpus: read(&p.join("local_cpulist"))
                        .map(|c| parse_cpulist(&c))
                        .unwrap_or_default(),
                })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// InfiniBand/RoCE devices (`/sys/class/infiniband/*`), by name.
pub(crate) fn rdma_devices(root: &Path) -> Vec<Local> {
    let dir = root.join("sys/class/infiniband");
    let mut out: Vec<Local> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| Local {
            name: e.file_name().to_string_lossy().into_owned(),
            cpus: read(&e.path().join("device/local_cpulist"))
                .map(|c| parse_cpulist(&c))
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Indexes into `devices`, nearest to `task_cpus` first (most shared CPUs),
/// the rest after, each group in the original order.
pub(crate) fn nearest_first(devices: &[Local], task_cpus: &[u32]) -> Vec<usize> {
    let shared = |d: &Local| d.cpus.iter().filter(|c| task_cpus.contains(c)).count();
    let mut idx: Vec<usize> = (0..devices.len()).collect();
    idx.sort_by_key(|&i| std::cmp::Reverse(shared(&devices[i])));
    idx
}

/// The devices placement hints choose from, read from sysfs below `root`
/// once (a node's whole PCI bus: read once per step, not per task).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Devices {
    gpus: Vec<Local>,
    nics: Vec<Local>,
}

impl Devices {
    /// Scans sysfs below `root` for NVIDIA GPUs and RDMA devices.
    pub fn scan(root: &Path) -> Devices {
        Devices {
            gpus: nvidia_gpus(root),
            nics: rdma_devices(root),
        }
    }
}

/// The hints for a task, as environment settings: `CUDA_VISIBLE_DEVICES`
/// reordered nearest first (only the devices it already lists, or all when
/// unset and there are several), `CUDA_DEVICE_ORDER=PCI_BUS_ID` so indices
/// mean PCI order, and `UCX_NET_DEVICES` naming the nearest RDMA device's
/// port 1. Nothing the job set itself is overridden except the order of
/// `CUDA_VISIBLE_DEVICES`; `SIFRUN_TOPOLOGY=off` turns it all off.
pub fn hints(
    root: &Path,
    task_cpus: &[u32],
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    if env("SIFRUN_TOPOLOGY").as_deref() == Some("off") || task_cpus.is_empty() {
        return Vec::new();
    }
    hints_for(&Devices::scan(root), task_cpus, env)
}

/// [`hints`] over devices scanned before (see [`Devices::scan`]).
pub fn hints_for(
    devices: &Devices,
    task_cpus: &[u32],
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    if env("SIFRUN_TOPOLOGY").as_deref() == Some("off") || task_cpus.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let gpus = &devices.gpus;
    if gpus.len() > 1 {
        let order = nearest_first(gpus, task_cpus);
        let visible: Option<Vec<usize>> = match env("CUDA_VISIBLE_DEVICES") {
            Some(v) => v.split(',').map(|x| x.trim().parse().ok()).collect(),
            None => Some((0..gpus.len()).collect()),
        };
        if let Some(visible) = visible {
            let reordered: Vec<String> = order
                .iter()
                .filter(|i| visible.contains(i))
                .map(|i| i.to_string())
                .collect();
            if reordered.len() == visible.len() {
                out.push(("CUDA_VISIBLE_DEVICES".into(), reordered.join(",")));
                if env("CUDA_DEVICE_ORDER").is_none() {
                    out.push(("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into()));
                }
            }
        }
    }
    let nics = &devices.nics;
    if !nics.is_empty() && env("UCX_NET_DEVICES").is_none() {
        let best = nearest_first(nics, task_cpus)[0];
        out.push(("UCX_NET_DEVICES".into(), format!("{}:1", nics[best].name)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dev(root: &Path, rel: &str, files: &[(&str, &str)]) {
        let d = root.join(rel);
        fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            fs::write(d.join(f), v).unwrap();
        }
    }

    /// Two sockets: CPUs 0-7 near GPUs 0000:17 and 0000:31 and mlx5_0,
    /// CPUs 8-15 near GPUs 0000:b1 and 0000:ca and mlx5_1.
    fn two_sockets() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        for (addr, cpus) in [
            ("0000:17:00.0", "0-7"),
            ("0000:31:00.0", "0-7"),
            ("0000:b1:00.0", "8-15"),
            ("0000:ca:00.0", "8-15"),
        ] {
            dev(
                t.path(),
                &format!("sys/bus/pci/devices/{addr}"),
                &[
                    ("vendor", "0x10de\n"),
                    ("class", "0x030200\n"),
                    ("local_cpulist", cpus),
                ],
            );
        }
        dev(
            t.path(),
            "sys/bus/pci/devices/0000:00:03.0",
            &[("vendor", "0x1af4"), ("class", "0x020000")],
        );
        dev(
            t.path(),
            "sys/class/infiniband/mlx5_0/device",
            &[("local_cpulist", "0-7\n")],
        );
        dev(
            t.path(),
            "sys/class/infiniband/mlx5_1/device",
            &[("local_cpulist", "8-15\n")],
        );
        t
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11]);
        assert!(parse_cpulist("3-1,x,").is_empty());
    }

    #[test]
    fn tasks_get_their_sockets_devices_first() {
        let t = two_sockets();
        let none = |_: &str| None;
        let second_socket: Vec<u32> = (8..16).collect();
        let h = hints(t.path(), &second_socket, &none);
        assert_eq!(
            h,
            [
                ("CUDA_VISIBLE_DEVICES".to_owned(), "2,3,0,1".to_owned()),
                ("CUDA_DEVICE_ORDER".to_owned(), "PCI_BUS_ID".to_owned()),
                ("UCX_NET_DEVICES".to_owned(), "mlx5_1:1".to_owned()),
            ]
        );
        // Slurm gave the task GPUs 0 and 2: only those, nearest first.
        let alloc = |k: &str| (k == "CUDA_VISIBLE_DEVICES").then(|| "0,2".to_owned());
        assert_eq!(hints(t.path(), &second_socket, &alloc)[0].1, "2,0");
        // The user's own settings stay; SIFRUN_TOPOLOGY=off stops it all.
        let user = |k: &str| match k {
            "UCX_NET_DEVICES" => Some("mlx5_0:1".to_owned()),
            "CUDA_DEVICE_ORDER" => Some("FASTEST_FIRST".to_owned()),
            _ => None,
        };
        let h = hints(t.path(), &[0, 1], &user);
        assert_eq!(
            h,
            [("CUDA_VISIBLE_DEVICES".to_owned(), "0,1,2,3".to_owned())]
        );
        let off = |k: &str| (k == "SIFRUN_TOPOLOGY").then(|| "off".to_owned());
        assert!(hints(t.path(), &[0], &off).is_empty());
    }

    #[test]
    fn the_h200_node_has_nothing_to_reorder() {
        // One GPU, every CPU local, no RDMA device: no hints.
        let t = tempfile::tempdir().unwrap();
        dev(
            t.path(),
            "sys/bus/pci/devices/0000:00:06.0",
            &[
                ("vendor", "0x10de"),
                ("class", "0x030200"),
                ("local_cpulist", "0-15"),
            ],
        );
        assert!(hints(t.path(), &[3], &|_| None).is_empty());
    }

    /// A step scans the node once; each task's hints from that scan are
    /// the hints a scan of its own would give. Prints what a scan and a
    /// task's matching cost on a node with 200 other PCI devices
    /// (`cargo test -p interconnect --release scanned_once -- --nocapture`).
    #[test]
    fn hints_from_one_scan_are_each_tasks_own() {
        let t = two_sockets();
        for i in 0..200 {
            dev(
                t.path(),
                &format!("sys/bus/pci/devices/0000:40:{:02x}.{}", i / 8, i % 8),
                &[("vendor", "0x8086"), ("class", "0x060400")],
            );
        }
        let devices = Devices::scan(t.path());
        let env = |_: &str| None;
        for cpus in [vec![0, 1], vec![9], vec![3, 12]] {
            assert_eq!(
                hints_for(&devices, &cpus, &env),
                hints(t.path(), &cpus, &env)
            );
        }
        let off = |k: &str| (k == "SIFRUN_TOPOLOGY").then(|| "off".to_owned());
        assert!(hints_for(&devices, &[0], &off).is_empty());
        let n = 50;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(Devices::scan(t.path()));
        }
        let scan = started.elapsed() / n;
        let started = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(hints_for(&devices, &[0, 1], &env));
        }
        let matched = started.elapsed() / n;
        println!("scan of 205 PCI devices: {scan:?}; one task's hints from it: {matched:?}");
    }
}
