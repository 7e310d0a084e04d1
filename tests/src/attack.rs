//! Helpers of the ECL attack suite (`tests/ecl_attacks.rs`, issue 12): the
//! phase tests/slurm/ecl-attacks set up as root, the images the attacks
//! use, and what /proc tells about processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::{ok, s, sifrun};

/// `[ecl]` keys: the test key's fingerprint (tests/corpus/.../keys).
pub const TEST_KEY_FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

/// What /bin/probe prints in an approved image; the attacks rewrite it to
/// [`PROBE_HACKED`] (same length), so a task printing that ran bytes no
/// signature approved.
pub const PROBE_APPROVED: &str = "PROBE-APPROVED";
/// See [`PROBE_APPROVED`].
pub const PROBE_HACKED: &str = "PROBE-HACKED!!";

/// The set-up tests/slurm/ecl-attacks made (as root) for one phase.
#[derive(Clone, Debug)]
pub struct Attacks {
    /// The root-owned base directory (`$base` in the script).
    pub base: PathBuf,
    /// The phase (`ecl`, `hidden`, `plain`, `trusted`, `prepare`).
    pub phase: String,
}

impl Attacks {
    /// The set-up for `phase`, or `None` (skip) when the suite runs outside
    /// tests/slurm/ecl-attacks and the run does not require the cluster.
    pub fn for_phase(phase: &str) -> Option<Attacks> {
        let (Some(base), Some(got)) = (
            std::env::var_os("SIFRUN_ATTACKS_DIR"),
            std::env::var("SIFRUN_ATTACKS_PHASE").ok(),
        ) else {
            assert!(
                std::env::var_os("SIFRUN_REQUIRE_CLUSTER").is_none(),
                "the ECL attacks run under tests/slurm/ecl-attacks, which sets each phase up as root"
            );
            eprintln!("skipping: not run by tests/slurm/ecl-attacks");
            return None;
        };
        assert_eq!(
            got, phase,
            "this test belongs to phase {phase}; tests/slurm/ecl-attacks selects tests by phase"
        );
        Some(Attacks {
            base: PathBuf::from(base),
            phase: got,
        })
    }

    /// A root-owned, signed image the ECL admits (`images/NAME`).
    pub fn image(&self, name: &str) -> PathBuf {
        self.base.join("images").join(name)
    }

    /// A signed, root-owned image outside `users.image_dirs`.
    pub fn outside(&self) -> PathBuf {
        self.base.join("outside/img.sif")
    }

    /// A fresh directory of the user's inside `users.image_dirs`.
    pub fn user_dir(&self) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir_in(self.base.join("user")).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// The plugin's admin file (root's; the phase decides its content).
    pub fn config(&self) -> PathBuf {
        PathBuf::from(
            std::env::var_os("SIFRUN_ATTACKS_CONFIG").unwrap_or("/etc/sifrun/test.toml".into()),
        )
    }
}

/// Busybox applets the attack images have.
const APPLETS: &[&str] = &[
    "sh", "cat", "sleep", "echo", "ls", "mount", "touch", "head", "tail", "wc", "grep", "id",
    "test", "readlink",
];

/// A root for an image: busybox, `/etc/image-marker` holding `marker`, a
/// world-writable `/scratch`, and `/bin/probe`, a script printing [`PROBE_APPROVED`] and `marker`.
pub fn probe_root(dir: &Path, marker: &str) -> PathBuf {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    let root = dir.join(format!("{marker}-root"));
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home", "var/tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in APPLETS {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    // A directory anyone may write, as images have for scratch space
    // (--sif-writable-tmpfs makes it writable inside).
    fs::create_dir_all(root.join("scratch")).unwrap();
    fs::set_permissions(root.join("scratch"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("etc/image-marker"), format!("{marker}\n")).unwrap();
    let probe = root.join("bin/probe");
    fs::write(
        &probe,
        format!("#!/bin/sh\necho {PROBE_APPROVED} {marker}\n"),
    )
    .unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).unwrap();
    root
}

/// Packs `root` into the SIF `out` with every squashfs table and block
/// stored uncompressed, so file contents lie verbatim in the image.
pub fn uncompressed_sif(root: &Path, out: &Path) {
    let sq = out.with_extension("sqfs");
    ok(Command::new("mksquashfs")
        .arg(root)
        .arg(&sq)
        .args(["-noappend", "-all-root", "-noI", "-noD", "-noF", "-noX"])
        .args(["-no-progress", "-quiet"])
        .output()
        .unwrap());
    ok(sifrun(&["build", s(out), "--from-squashfs", s(&sq)]));
    std::fs::remove_file(sq).unwrap();
}

/// Wraps squashfs bytes (crafted ones included) into the SIF `out`.
pub fn sif_of_squashfs(bytes: &[u8], sparse_len: Option<u64>, out: &Path) {
    let sq = out.with_extension("sqfs");
    std::fs::write(&sq, bytes).unwrap();
    if let Some(len) = sparse_len {
        std::fs::File::options()
            .write(true)
            .open(&sq)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    ok(sifrun(&["build", s(out), "--from-squashfs", s(&sq)]));
    std::fs::remove_file(sq).unwrap();
}

/// The primary partition's (offset, size) and the file offset of its
/// descriptor's size field.
pub fn partition(sif: &Path) -> (u64, u64, u64) {
    let image = sif::Image::open(std::fs::File::open(sif).unwrap()).unwrap();
    let d = image.primary_partition().unwrap();
    let at = image.header().descriptors_offset as u64
        + (d.slot() * sif::descriptor::DESCRIPTOR_SIZE) as u64
        + 25;
    (d.offset(), d.size(), at)
}

/// Issue 12 item 3: the partition of `sif` is cut to end where the squashfs
/// tables start; the tables stay in the file after it (the descriptor's
/// padding), in bytes no signature over the partition covers. Returns the
/// new partition size.
pub fn cut_partition_before_tables(sif: &Path) {
    use std::os::unix::fs::FileExt;
    let (offset, size, size_field) = partition(sif);
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(sif)
        .unwrap();
    let mut sb = [0u8; 96];
    f.read_exact_at(&mut sb, offset).unwrap();
    let inode_table = u64::from_le_bytes(sb[64..72].try_into().unwrap());
    assert!(
        inode_table > 96 && inode_table < size,
        "{inode_table} {size}"
    );
    f.write_all_at(&(inode_table as i64).to_le_bytes(), size_field)
        .unwrap();
}

/// Replaces every `from` in the file with `to` (same length), in place, as
/// the owner of a file would; returns how many were replaced.
pub fn rewrite_in_place(path: &Path, from: &str, to: &str) -> usize {
    use std::os::unix::fs::FileExt;
    assert_eq!(from.len(), to.len());
    let bytes = std::fs::read(path).unwrap();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let mut n = 0;
    let mut i = 0;
    while let Some(p) = bytes[i..]
        .windows(from.len())
        .position(|w| w == from.as_bytes())
    {
        f.write_all_at(to.as_bytes(), (i + p) as u64).unwrap();
        n += 1;
        i += p + from.len();
    }
    f.sync_all().unwrap();
    n
}

/// One process as /proc shows it to anyone.
#[derive(Clone, Debug)]
pub struct Proc {
    /// Its PID.
    pub pid: i32,
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    /// Permitted capabilities (hex, as /proc prints them).
    pub cap_prm: String,
    /// Effective capabilities.
    pub cap_eff: String,
    /// The command line, NULs as spaces.
    pub cmdline: String,
}

impl Proc {
    /// Whether it has any capability.
    pub fn privileged(&self) -> bool {
        !self.cap_prm.trim_start_matches('0').is_empty()
            || !self.cap_eff.trim_start_matches('0').is_empty()
    }
}

/// A process's /proc status and command line, if it still exists.
pub fn proc_info(pid: i32) -> Option<Proc> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut uids = [u32::MAX; 4];
    for (i, u) in field("Uid:").split_whitespace().enumerate().take(4) {
        uids[i] = u.parse().ok()?;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(Proc {
        pid,
        uids,
        cap_prm: field("CapPrm:"),
        cap_eff: field("CapEff:"),
        cmdline: String::from_utf8_lossy(&cmdline).replace('\0', " "),
    })
}

/// The PIDs /proc lists now, but this process's.
pub fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .collect()
}

/// Every process whose command line contains `needle`.
pub fn procs_matching(needle: &str) -> Vec<Proc> {
    all_pids()
        .into_iter()
        .filter_map(proc_info)
        .filter(|p| p.cmdline.contains(needle))
        .collect()
}

/// This process's uid.
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Sends `signal` with kill(1); whether it was delivered.
pub fn kill(signal: &str, pid: i32) -> Output {
    Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .output()
        .unwrap()
}

/// Lines of mountinfo whose mount point lacks `nosuid` (or `nodev`, except
/// where devices are meant to work: the host's /dev and its ptys).
pub fn unsafe_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                return false;
            }
            let (target, opts) = (f[4], f[5].split(',').collect::<Vec<_>>());
            let devices_allowed = target == "/dev" || target == "/dev/pts";
            !opts.contains(&"nosuid") || (!devices_allowed && !opts.contains(&"nodev"))
        })
        .map(str::to_owned)
        .collect()
}
