//! The slurmd context: the job epilog, as root, when a job ends on a node.
//! It kills every holder of the job that is still there (a killed
//! slurmstepd, a node fault) and drops the job's records.

use std::path::Path;

use crate::error::PluginError;
use crate::plugin::Plugin;
use crate::spank::Spank;

impl Plugin {
    /// `slurm_spank_job_epilog` (slurmd, as root, when the job ends on this
    /// node): kills every holder of the job that is still there and drops the
    /// job's records.
    ///
    /// Never fails: a configuration it cannot trust is logged as an error
    /// and the sweep still runs by command line. A failed job epilog drains
    /// the node (Slurm 25.11 does it at once), and the steps that
    /// configuration governed have already failed closed in slurmstepd.
    pub fn job_epilog(
        &mut self,
        sp: &dyn Spank,
        plugstack_args: &[String],
    ) -> Result<(), PluginError> {
        // slurmd's epilog does not run slurm_spank_init: take runtime_dir= here.
        // A broken configuration still sweeps (by command line only).
        let taken = self.take_plugstack_args(plugstack_args);
        let (Some(job), Some(uid)) = (sp.job_id(), sp.job_uid()) else {
            if let Err(e) = &taken {
                sp.error(&format!("sifrun: job epilog: {e}"));
            }
            return Ok(());
        };
        let dir = self.settings.runtime_dir();
        // Root removes files there: not in a directory others may change.
        let records = match taken.as_ref().map_err(ToString::to_string).and_then(|()| {
            self.check_trusted("runtime_dir", &dir)
                .map_err(|e| e.to_string())
        }) {
            Ok(()) => Some(dir.as_path()),
            Err(e) => {
                sp.error(&format!("sifrun: job {job} epilog: {e}; records ignored"));
                None
            }
        };
        for ns in records
            .map(|d| crate::ecl_path::leftovers(d, job))
            .unwrap_or_default()
        {
            crate::ecl_path::remove(&ns);
            sp.info(&format!(
                "sifrun: job {job} epilog: removed the leftover namespace {}",
                ns.display()
            ));
        }
        let killed = sweep(records, Path::new("/proc"), job, uid, |pid| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        if !killed.is_empty() {
            sp.info(&format!(
                "sifrun: job {job} epilog: killed leftover container holders {killed:?}"
            ));
        }
        Ok(())
    }
}

/// The sweep behind [`Plugin::job_epilog`], over an injectable /proc and kill: the
/// job's records (PID and start time must both match), then any process of
/// the job's user whose command line is a holder of this job and that is on
/// this node (see [`on_this_node`]). Returns the PIDs killed.
pub fn sweep(
    runtime_dir: Option<&Path>,
    proc_root: &Path,
    job: u32,
    uid: u32,
    kill: impl Fn(i32),
) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{job}.");
    let mut killed = Vec::new();
    for entry in runtime_dir
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".holder")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next())
            && let Ok(pid) = i32::try_from(pid)
            && start_time(proc_root, pid) == Some(start)
        {
            kill(pid);
            killed.push(pid);
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let marker = format!("--slurm-step={prefix}");
    let own = node_namespaces(proc_root, "self").filter(|own| {
        // In init's namespaces (a real node: one slurmd per kernel), every
        // holder of the job on this kernel is this node's, whatever
        // namespaces it may have moved to: no filter.
        node_namespaces(proc_root, "1").as_ref() != Some(own)
    });
    for entry in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if killed.contains(&pid) || entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let holder = argv.get(1) == Some(&&b"slurm-hold"[..])
            && argv.iter().any(|a| a.starts_with(marker.as_bytes()));
        if holder && on_this_node(own.as_deref(), proc_root, pid) {
            kill(pid);
            killed.push(pid);
        }
    }
    killed
}

/// The namespaces a node's processes share and another node's on the same
/// kernel do not (several slurmd on one machine, each in its own network
/// and UTS namespace, as tests/slurm/cluster --nodes makes them): a holder
/// keeps slurmd's, since it unshares only user and mount namespaces.
const NODE_NAMESPACES: [&str; 2] = ["net", "uts"];

/// The [`NODE_NAMESPACES`] links of `/proc/WHO/ns`, or `None` when one is
/// unreadable.
fn node_namespaces(proc_root: &Path, who: &str) -> Option<Vec<std::path::PathBuf>> {
    NODE_NAMESPACES
        .iter()
        .map(|ns| std::fs::read_link(proc_root.join(who).join("ns").join(ns)).ok())
        .collect()
}

/// Whether process `pid` is on the node the epilog runs on: its network and
/// UTS namespaces are the epilog's own. Asked only when slurmd does not run
/// in init's namespaces: on one kernel shared by several test nodes, one
/// node's epilog must not kill another node's holders of the same job
/// (still serving that node's tasks, or in their grace period). On a real
/// node (slurmd in init's namespaces) every holder of the job counts, even
/// one moved into a namespace of its own. When either side's namespaces
/// cannot be read, the process counts as this node's (the sweep errs on
/// killing).
fn on_this_node(own: Option<&[std::path::PathBuf]>, proc_root: &Path, pid: i32) -> bool {
    match (own, node_namespaces(proc_root, &pid.to_string())) {
        (Some(own), Some(theirs)) => own == theirs.as_slice(),
        _ => true,
    }
}

/// The start time of a process (field 22 of /proc/PID/stat), which tells a
/// process from a later one with a reused PID.
pub(crate) fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epilog_sweep_kills_only_this_jobs_holders() {
        let dir = tempfile::tempdir().unwrap();
        let (run, proc) = (dir.path().join("run"), dir.path().join("proc"));
        std::fs::create_dir_all(&run).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let stat = |start: u64| format!("1 (sifrun (x)) S {}{start} 0", "0 ".repeat(18));
        let fake = |pid: i32, argv: &[&str], start: u64| {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cmdline"), argv.join("\0") + "\0").unwrap();
            std::fs::write(d.join("stat"), stat(start)).unwrap();
        };
        assert_eq!(start_time(&proc, 1), None);
        fake(
            10,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=42.0",
                "/i.sif",
            ],
            500,
        );
        fake(
            11,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=42.batch",
                "/i.sif",
            ],
            600,
        );
        fake(
            12,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=420.0",
                "/i.sif",
            ],
            700,
        );
        fake(13, &["sleep", "--slurm-step=42.0"], 800);
        fake(
            14,
            &["/usr/local/bin/sifrun", "slurm-hold", "--slurm-step=42.1"],
            900,
        );
        assert_eq!(start_time(&proc, 10), Some(500));
        // Records: 42.0 matches; 42.1's PID was reused (other start time).
        std::fs::write(run.join("42.0.holder"), "10 500\n").unwrap();
        std::fs::write(run.join("42.1.holder"), "14 1\n").unwrap();
        std::fs::write(run.join("43.0.holder"), "12 700\n").unwrap();
        let killed = std::cell::RefCell::new(Vec::new());
        let got = sweep(Some(&run), &proc, 42, me, |p| killed.borrow_mut().push(p));
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, [10, 11, 14], "by record, then by command line");
        assert_eq!(*killed.borrow(), got);
        assert!(!run.join("42.0.holder").exists() && !run.join("42.1.holder").exists());
        assert!(
            run.join("43.0.holder").exists(),
            "another job's record stays"
        );
        // Without a trusted runtime directory, the command line still finds them.
        fake(
            15,
            &["/usr/local/bin/sifrun", "slurm-hold", "--slurm-step=42.2"],
            950,
        );
        let mut by_cmdline = sweep(None, &proc, 42, me, |_| {});
        by_cmdline.sort();
        assert_eq!(by_cmdline, [10, 11, 14, 15]);
        // Another user's processes are never touched.
        assert!(sweep(Some(&run), &proc, 42, me + 1, |_| {}).is_empty());
    }

    #[test]
    fn the_epilog_sweep_keeps_to_its_own_node_on_a_shared_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let me = nix::unistd::getuid().as_raw();
        let fake = |who: &str, net: &str, uts: &str| {
            let d = proc.join(who);
            std::fs::create_dir_all(d.join("ns")).unwrap();
            let argv = ["/usr/local/bin/sifrun", "slurm-hold", "--slurm-step=42.0"];
            std::fs::write(d.join("cmdline"), argv.join("\0") + "\0").unwrap();
            std::os::unix::fs::symlink(net, d.join("ns/net")).unwrap();
            std::os::unix::fs::symlink(uts, d.join("ns/uts")).unwrap();
        };
        // The epilog runs on node 1 (net:[1], uts:[1]), not in init's.
        let init = proc.join("1");
        std::fs::create_dir_all(init.join("ns")).unwrap();
        std::fs::write(init.join("cmdline"), "/sbin/init\0").unwrap();
        std::os::unix::fs::symlink("net:[0]", init.join("ns/net")).unwrap();
        std::os::unix::fs::symlink("uts:[0]", init.join("ns/uts")).unwrap();
        fake("self", "net:[1]", "uts:[1]");
        fake("20", "net:[1]", "uts:[1]");
        fake("21", "net:[2]", "uts:[2]");
        fake("22", "net:[1]", "uts:[3]");
        fake("23", "net:[3]", "uts:[1]");
        // A holder whose namespaces cannot be read counts as this node's.
        let unreadable = proc.join("24");
        std::fs::create_dir_all(&unreadable).unwrap();
        std::fs::write(
            unreadable.join("cmdline"),
            "/usr/local/bin/sifrun\0slurm-hold\0--slurm-step=42.0\0",
        )
        .unwrap();
        let mut got = sweep(None, &proc, 42, me, |_| {});
        got.sort();
        assert_eq!(got, [20, 24], "only node 1's holders");

        // A real node: slurmd (so the epilog) in init's namespaces; a
        // holder the user moved into other namespaces is still swept.
        std::fs::remove_file(init.join("ns/net")).unwrap();
        std::fs::remove_file(init.join("ns/uts")).unwrap();
        std::os::unix::fs::symlink("net:[1]", init.join("ns/net")).unwrap();
        std::os::unix::fs::symlink("uts:[1]", init.join("ns/uts")).unwrap();
        let mut got = sweep(None, &proc, 42, me, |_| {});
        got.sort();
        assert_eq!(got, [20, 21, 22, 23, 24], "a real node: every holder");

        // Without its own namespaces readable, the epilog sweeps as before.
        std::fs::remove_dir_all(proc.join("self")).unwrap();
        let mut got = sweep(None, &proc, 42, me, |_| {});
        got.sort();
        assert_eq!(got, [20, 21, 22, 23, 24]);
    }
}
