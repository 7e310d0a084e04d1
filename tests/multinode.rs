//! Steps across nodes (issue 15) on the multi-node cluster that
//! tests/slurm/multinode-check starts on this one machine
//! (`tests/slurm/cluster start --nodes 3`: nodes sifrun-n1..3, each in its
//! own network, UTS, IPC and mount namespaces, with its own slurmd, munged
//! and /run). The script runs this suite as the test user in the
//! controller's namespaces (the login node), where srun and sbatch reach
//! slurmctld, with:
//! - `SIFRUN_MULTINODE_DIR`: a directory of the user's on the file system
//!   all nodes share and containers bind (images, job output; /tmp is
//!   each node's own);
//! - `SIFRUN_MULTINODE_NODES`: the node names;
//! - `SIFRUN_MPI_IMAGE`: tests/mpi/mpi-check's Open MPI image, and
//!   `SIFRUN_MPI_IMAGE_OPTION` the srun option naming it (`container`, the
//!   default, or `sif-image`, as tests/run-all sets it per series);
//! - `SIFRUN_REQUIRE_MULTINODE=1`: a missing cluster fails instead of
//!   skipping.
//!
//! Tests named `multinode_` run on the cluster started with slurm.conf in
//! /etc/slurm; `configless_` ones on the cluster started `--configless`;
//! `fault_` ones (one node fails) in phases, each after multinode-check
//! broke the second node as root.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sifrun_tests::*;

/// The shared directory and the node names, or `None` (skip) outside
/// tests/slurm/multinode-check.
fn cluster() -> Option<(PathBuf, Vec<String>)> {
    let dir = std::env::var_os("SIFRUN_MULTINODE_DIR").map(PathBuf::from);
    let nodes = std::env::var("SIFRUN_MULTINODE_NODES").ok();
    match (dir, nodes) {
        (Some(d), Some(n)) => Some((d, n.split_whitespace().map(str::to_owned).collect())),
        _ => {
            assert!(
                std::env::var_os("SIFRUN_REQUIRE_MULTINODE").is_none(),
                "tests/slurm/multinode-check sets SIFRUN_MULTINODE_DIR and SIFRUN_MULTINODE_NODES"
            );
            eprintln!("skipping: no multi-node cluster (tests/slurm/multinode-check runs these)");
            None
        }
    }
}

/// A scratch directory in the shared directory, others may enter it
/// (slurmstepd writes job output there as the user, on every node).
fn shared_scratch(base: &Path) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir_in(base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A busybox image at `dir/NAME.sif` whose /etc/image-marker says `marker`.
fn image(dir: &Path, name: &str, marker: &str) -> PathBuf {
    use std::fs;
    use std::os::unix::fs::symlink;
    let root = dir.join(format!("{name}-root"));
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home", "var/tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "cat", "readlink", "echo", "hostname", "sleep", "true"] {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    fs::write(root.join("etc/image-marker"), format!("{marker}\n")).unwrap();
    let img = dir.join(format!("{name}.sif"));
    ok(sifrun(&["build", s(&img), s(&root)]));
    fs::remove_dir_all(&root).unwrap();
    img
}

fn run_in(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("PWD", dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// What each task runs: it prints `TAG HOST USERNS MARKER` (TAG is `$0`)
/// and stays 2 s, so that the holders of a step's nodes all live at once
/// (a namespace's inode number is reused once it is gone).
const TASK_LINE: &str =
    "echo $0 $(hostname) $(readlink /proc/self/ns/user) $(cat /etc/image-marker); sleep 2";

/// The lines `TAG HOST USERNS MARKER` tagged `tag`, by host; a line of
/// that tag with another shape fails the test.
fn by_host<'a>(out: &'a str, tag: &str) -> BTreeMap<&'a str, Vec<(&'a str, &'a str)>> {
    let mut m: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
    for l in out.lines().filter(|l| l.starts_with(&format!("{tag} "))) {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(w.len(), 4, "unexpected task line {l:?} in {out}");
        m.entry(w[1]).or_default().push((w[2], w[3]));
    }
    m
}

/// Asserts `tasks_per_node` tasks tagged `tag` on each node, all with
/// `marker`, sharing one user namespace per node, distinct across nodes and
/// not the caller's; returns the namespaces.
fn assert_per_node(
    out: &str,
    tag: &str,
    nodes: &[String],
    tasks_per_node: usize,
    marker: &str,
) -> BTreeSet<String> {
    let m = by_host(out, tag);
    let hosts: Vec<&str> = m.keys().copied().collect();
    assert_eq!(
        hosts, nodes,
        "the nodes' hostnames, seen from inside: {out}"
    );
    let own = std::fs::read_link("/proc/self/ns/user").unwrap();
    let mut namespaces = BTreeSet::new();
    for (host, tasks) in &m {
        assert_eq!(tasks.len(), tasks_per_node, "{host}: {out}");
        assert!(
            tasks.iter().all(|(_, mk)| *mk == marker),
            "{host}: a task ran outside the image: {out}"
        );
        let ns: BTreeSet<&str> = tasks.iter().map(|(n, _)| *n).collect();
        assert_eq!(ns.len(), 1, "{host}: one user namespace per node: {out}");
        let ns = ns.into_iter().next().unwrap();
        assert!(ns.starts_with("user:["), "{out}");
        assert_ne!(ns, own.to_string_lossy(), "{host} ran in the host's: {out}");
        namespaces.insert(ns.to_owned());
    }
    assert_eq!(
        namespaces.len(),
        nodes.len(),
        "one namespace per node: {out}"
    );
    namespaces
}

/// The holders of `image` (PID, net and user namespace), by `ps` in the one
/// PID namespace all nodes share.
fn holders(image: &Path) -> Vec<(String, String, String)> {
    let out = Command::new("ps")
        .args(["-u", &whoami(), "-o", "pid=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("slurm-hold") && l.contains(s(image)))
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?.to_owned();
            let ns = |n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).ok();
            Some((
                pid.clone(),
                ns("net")?.to_string_lossy().into_owned(),
                ns("user")?.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn multinode_srun_n3_n6_runs_every_task_in_the_image_one_holder_per_node() {
    let Some((base, nodes)) = cluster() else {
        return;
    };
    let dir = shared_scratch(&base);
    let img = image(dir.path(), "img", "inside-the-image");
    let container = format!("--container={}", img.display());
    let n = format!("-N{}", nodes.len());
    let tasks = format!("-n{}", 2 * nodes.len());
    // The tasks stay long enough for the holders to be seen.
    let script = format!("{TASK_LINE}; sleep 1");
    let mut child = Command::new("srun")
        .args([&n, &tasks, &container, "sh", "-c", &script, "task"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The holder's processes (it and its child) by network namespace, i.e.
    // by node: the user namespaces they hold there.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    poll_until(
        "a holder on every node",
        std::time::Duration::from_secs(60),
        || {
            // A holder that has not unshared yet is still in the test's own
            // user namespace: not yet the one its tasks join.
            let own = std::fs::read_link("/proc/self/ns/user")
                .map(|p| p.to_string_lossy().into_owned())
                .ok();
            for (_, net, user) in holders(&img) {
                if Some(&user) != own.as_ref() {
                    seen.entry(net).or_default().insert(user);
                }
            }
            seen.len() >= nodes.len() || child.try_wait().unwrap().is_some()
        },
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let namespaces = assert_per_node(&stdout, "task", &nodes, 2, "inside-the-image");
    assert_eq!(
        seen.len(),
        nodes.len(),
        "a holder in each node's network: {seen:?}"
    );
    assert!(
        seen.values().all(|u| u.len() == 1),
        "one holder (one user namespace) per node: {seen:?}"
    );
    let users: BTreeSet<String> = seen.into_values().flatten().collect();
    assert_eq!(users, namespaces, "the tasks' namespaces are the holders'");
    poll_until(
        "the holders to go",
        std::time::Duration::from_secs(30),
        || holders(&img).is_empty(),
    );
}

/// `sbatch -N3` with the image named in the script: the script runs in the
/// image on the first node, and its steps reach every node, in the
/// inherited image and in another one named explicitly.
fn nested_batch(base: &Path, nodes: &[String], directive: &str) {
    let dir = shared_scratch(base);
    let img = image(dir.path(), "img", "inside-the-image");
    let other = image(dir.path(), "other", "inside-the-other");
    let n = nodes.len();
    let script = format!(
        "#!/bin/sh\n\
#SBATCH --{directive}={img}\n\
#SBATCH -N{n} -n{n}\n\
sh -c '{TASK_LINE}' batch\n\
srun -N{n} -n{n} sh -c '{TASK_LINE}' step\n\
srun -N{n} -n{n} --{directive}={other} sh -c '{TASK_LINE}' other\n",
        img = img.display(),
        other = other.display(),
    );
    std::fs::write(dir.path().join("job.sh"), script).unwrap();
    let out = run_in(
        dir.path(),
        "sbatch",
        &["--parsable", "-o", "job.out", "job.sh"],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let state = wait_for_job(stdout.trim().split(';').next().unwrap());
    let job_out = std::fs::read_to_string(dir.path().join("job.out")).unwrap_or_default();
    assert_eq!(state, "COMPLETED", "{job_out}");
    let batch = by_host(&job_out, "batch");
    assert_eq!(batch.len(), 1, "{job_out}");
    let (host, tasks) = batch.iter().next().unwrap();
    assert_eq!(
        *host, nodes[0],
        "the script runs on the first node: {job_out}"
    );
    assert_eq!(tasks[0].1, "inside-the-image", "{job_out}");
    // (The two steps' namespaces may share inode numbers: the first
    // step's are gone when the second starts.)
    assert_per_node(&job_out, "step", nodes, 1, "inside-the-image");
    assert_per_node(&job_out, "other", nodes, 1, "inside-the-other");
}

/// Waits for batch job `id` to end; returns its final state. (Polled every
/// 50 ms: `sbatch --wait` polls at growing intervals, up to 30 s late.)
fn wait_for_job(id: &str) -> String {
    let mut state = String::new();
    poll_until(
        &format!("job {id} to end"),
        std::time::Duration::from_secs(180),
        || {
            let out = Command::new("scontrol")
                .args(["show", "job", "-o", id])
                .output()
                .unwrap();
            state = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .find_map(|w| w.strip_prefix("JobState="))
                .unwrap_or("")
                .to_owned();
            !matches!(
                state.as_str(),
                "" | "PENDING" | "CONFIGURING" | "RUNNING" | "COMPLETING"
            )
        },
    );
    state
}

#[test]
fn multinode_sbatch_n3_runs_the_script_in_the_image_and_its_steps_on_every_node() {
    let Some((base, nodes)) = cluster() else {
        return;
    };
    nested_batch(&base, &nodes, "container");
}

/// Open MPI in the image over Slurm's PMIx: the allreduce across nodes
/// (TCP between the namespaces) and, with two ranks per node, shared
/// memory inside a node; Open MPI warns about nothing.
fn mpi(per_node: usize) {
    let Some((base, nodes)) = cluster() else {
        return;
    };
    let Some(mpi_image) = std::env::var_os("SIFRUN_MPI_IMAGE") else {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_MULTINODE").is_none(),
            "SIFRUN_MPI_IMAGE (tests/mpi/mpi-check --build-only) is required"
        );
        return;
    };
    // 24.11+ cannot run a --container step with --mpi=pmix without an
    // oci.conf (tests/mpi/mpi-check): tests/run-all names sif-image there.
    let option =
        std::env::var("SIFRUN_MPI_IMAGE_OPTION").unwrap_or_else(|_| "container".to_owned());
    let dir = shared_scratch(&base);
    let ranks = per_node * nodes.len();
    let out = Command::new("srun")
        .args([
            &format!("-N{}", nodes.len()),
            &format!("-n{ranks}"),
            "--mpi=pmix",
            &format!("--{option}={}", mpi_image.to_string_lossy()),
            "/usr/local/bin/mpi_hello",
        ])
        .env("OMPI_MCA_btl_tcp_if_include", "10.77.0.0/24")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let sum = ranks * (ranks + 1) / 2;
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for r in 0..ranks {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("rank {r}/{ranks} on ")))
            .unwrap_or_else(|| panic!("rank {r} missing: {stdout}{stderr}"));
        assert!(line.ends_with(&format!(": allreduce={sum}")), "{stdout}");
        let host = line
            .split_whitespace()
            .nth(3)
            .unwrap()
            .trim_end_matches(':');
        *per_host.entry(host).or_default() += 1;
    }
    let hosts: Vec<&str> = per_host.keys().copied().collect();
    assert_eq!(hosts, nodes, "{stdout}");
    assert!(per_host.values().all(|&c| c == per_node), "{stdout}");
    // srun's notices while the previous job's CPUs are released are not
    // warnings; anything else is.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            !(l.starts_with("srun: job ")
                && (l.ends_with(" queued and waiting for resources")
                    || l.ends_with(" has been allocated resources")))
        })
        .collect();
    assert!(warnings.is_empty(), "Open MPI or srun warned: {stderr}");
}

#[test]
fn multinode_mpi_pmix_n3_allreduce_across_nodes() {
    mpi(1);
}

#[test]
fn multinode_mpi_pmix_n3_n6_shared_memory_inside_a_node_tcp_across() {
    mpi(2);
}

#[test]
fn configless_steps_and_a_containerised_batch_script_run() {
    let Some((base, nodes)) = cluster() else {
        return;
    };
    let dir = shared_scratch(&base);
    let img = image(dir.path(), "img", "inside-the-image");
    let out = run_in(
        dir.path(),
        "srun",
        &[
            &format!("-N{}", nodes.len()),
            &format!("-n{}", 2 * nodes.len()),
            &format!("--container={}", img.display()),
            "sh",
            "-c",
            TASK_LINE,
            "task",
        ],
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_per_node(&stdout, "task", &nodes, 2, "inside-the-image");
    nested_batch(&base, &nodes, "container");
}

// Failure on one node (run by tests/slurm/multinode-check, which prepares
// each fault as root in the second node's namespaces and checks after each
// phase that nothing is left on any node: holder, mount, record, process of
// the user, job). The images are in `fault/` of the shared directory.

/// The fault directory and the node that fails (the second), or `None`.
fn fault() -> Option<(PathBuf, Vec<String>, String)> {
    let (base, nodes) = cluster()?;
    let bad = nodes.get(1).expect("at least 2 nodes").clone();
    Some((base.join("fault"), nodes, bad))
}

/// A task's line: `TAG HOST USERNS MARKER` (as [`TASK_LINE`], without the
/// sleep).
const TASK_ECHO: &str =
    "echo $0 $(hostname) $(readlink /proc/self/ns/user) $(cat /etc/image-marker)";

/// Asserts that every task line tagged `tag` comes from inside the image
/// (a task on the host has no /etc/image-marker: [`by_host`] fails on the
/// shorter line) and none from `bad`; returns the hosts seen.
fn tasks_in_image_none_on(out: &str, tag: &str, bad: &str) -> Vec<String> {
    let m = by_host(out, tag);
    assert!(!m.contains_key(bad), "a task ran on {bad}: {out}");
    assert!(
        m.values()
            .flatten()
            .all(|(_, mk)| *mk == "inside-the-image"),
        "a task ran outside the image: {out}"
    );
    m.keys().map(|h| (*h).to_owned()).collect()
}

/// The lines of srun's stderr that are not srun's own.
fn foreign_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| !l.starts_with("srun: "))
        .collect()
}

/// Builds the images of the fault tests before multinode-check breaks them
/// on one node: `fault/{missing,unreadable,holder,slurmd}/img.sif`.
#[test]
fn fault_prepare() {
    let Some((dir, _, _)) = fault() else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let img = image(&dir, "img", "inside-the-image");
    for sub in ["missing", "unreadable", "holder", "slurmd"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        // Slurm writes nothing here; the tasks mark that they run.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(&img, d.join("img.sif")).unwrap();
    }
}

/// The image of `fault/SUB` cannot be opened on the second node (missing:
/// an empty directory is bound over `fault/SUB` there; unreadable: a
/// mode-000 copy over the file): the step fails, the one `sifrun:` line
/// names that node and the image, its tasks never run (on the host or
/// elsewhere), every other node's tasks run in the image.
fn image_fails_on_one_node(sub: &str, why: &str) {
    let Some((dir, nodes, bad)) = fault() else {
        return;
    };
    let img = dir.join(sub).join("img.sif");
    let out = run_in(
        &dir,
        "srun",
        &[
            &format!("-N{}", nodes.len()),
            &format!("-n{}", 2 * nodes.len()),
            &format!("--container={}", img.display()),
            "sh",
            "-c",
            TASK_ECHO,
            "task",
        ],
    );
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}{stderr}");
    assert!(!out.status.success(), "{stdout}{stderr}");
    let hosts = tasks_in_image_none_on(&stdout, "task", &bad);
    let good: Vec<String> = nodes.iter().filter(|n| **n != bad).cloned().collect();
    assert_eq!(
        hosts, good,
        "the other nodes ran their tasks: {stdout}{stderr}"
    );
    let lines = foreign_lines(&stderr);
    assert_eq!(lines.len(), 1, "one line says what failed: {stderr}");
    let line = lines[0];
    assert!(
        line.contains(&format!("sifrun: {bad}: "))
            && line.contains(s(&img))
            && line.contains(why)
            && line.ends_with("(the task was not started)"),
        "the line names the node, the image and why: {stderr}"
    );
    // Slurm's own lines name the node too.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("srun: error: {bad}: task"))),
        "{stderr}"
    );
}

#[test]
fn fault_image_missing_on_one_node() {
    image_fails_on_one_node("missing", "No such file");
}

#[test]
fn fault_image_unreadable_on_one_node() {
    image_fails_on_one_node("unreadable", "ermission denied");
}

/// A step of `2 × nodes` tasks in `fault/SUB/img.sif` whose tasks each mark
/// `fault/SUB/running.RANK` once they run in the image (multinode-check
/// then breaks the second node) and then run `body`; ended by
/// `--kill-on-bad-exit` when one task fails, by `timeout` (a failed test)
/// after 120 s. Returns srun's output.
fn long_step(sub: &str, body: &str) -> (Output, std::time::Duration) {
    let (dir, nodes, _) = fault().unwrap();
    let d = dir.join(sub);
    let script = format!("{TASK_ECHO}; : > \"$1/running.$SLURM_PROCID\"; {body}");
    let started = std::time::Instant::now();
    let out = run_in(
        &d,
        "timeout",
        &[
            "120",
            "srun",
            &format!("-N{}", nodes.len()),
            &format!("-n{}", 2 * nodes.len()),
            "--kill-on-bad-exit=1",
            &format!("--container={}", d.join("img.sif").display()),
            "sh",
            "-c",
            &script,
            "task",
            s(&d),
        ],
    );
    let took = started.elapsed();
    assert_ne!(
        out.status.code(),
        Some(124),
        "the step did not end: {:?}",
        text(&out)
    );
    (out, took)
}

/// multinode-check SIGKILLs the second node's holder once every task runs:
/// its FUSE server dies with it, the image is gone for that node's tasks
/// (ENOTCONN), they fail, and `--kill-on-bad-exit` ends the others. The
/// plugin says, once and for that node only, that its holder died and how
/// (slurmstepd's error line, `slurmstepd: error: sifrun: NODE: ...`).
#[test]
fn fault_holder_killed_on_one_node() {
    let Some((_, nodes, bad)) = fault() else {
        return;
    };
    let (out, _) = long_step(
        "holder",
        // (The hostname taken before: no program of the image runs after.)
        "h=$(hostname); while cat /etc/image-marker >/dev/null; do sleep 0.2; done; echo lost $0 $h; exit 3",
    );
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}{stderr}");
    assert!(!out.status.success(), "{stdout}{stderr}");
    let m = by_host(&stdout, "task");
    let hosts: Vec<&str> = m.keys().copied().collect();
    assert_eq!(hosts, nodes, "every task started in the image: {stdout}");
    assert!(
        m.values()
            .flatten()
            .all(|(_, mk)| *mk == "inside-the-image"),
        "{stdout}"
    );
    let lost: BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("lost task "))
        .collect();
    // Another node's task may see its image go too, but only once the
    // step is being ended (`--kill-on-bad-exit` signals every process of
    // the step, holders included, in no set order): its holder was
    // stopped, it did not die, and the plugin says nothing for it (below).
    assert!(
        lost.contains(bad.as_str()) && (lost.len() == 1 || stderr.contains("Terminating StepId")),
        "the node whose holder died lost its image, the others only when the step ended: {stdout}{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("srun: error: {bad}: task"))
                && l.ends_with("Exited with exit code 3")),
        "the line naming the node: {stderr}"
    );
    let died: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("the container's holder died"))
        .collect();
    // The kernel keeps a reaped process's status for its descriptor from
    // Linux 6.15 on; before, the line cannot say how.
    let how = if kernel_at_least(6, 15) {
        " (signal 9)"
    } else {
        ""
    };
    let want = format!(
        "sifrun: {bad}: the container's holder died{how} during the step; this node's tasks lost their image"
    );
    assert!(
        died.len() == 1 && died[0].ends_with(&want) && died[0].contains("error: "),
        "one line for the node whose holder died: {want:?} in {stderr}"
    );
}

/// Whether the running kernel is at least MAJOR.MINOR.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// multinode-check SIGKILLs the second node's slurmd once every task runs
/// (SlurmdTimeout is short there): slurmctld marks the node down and ends
/// the job; srun says which node failed. (multinode-check then starts the
/// slurmd again, which reports the orphaned step and has it killed.)
#[test]
fn fault_slurmd_killed_on_one_node() {
    let Some((_, nodes, bad)) = fault() else {
        return;
    };
    let (out, took) = long_step("slurmd", "while :; do sleep 1; done");
    let (stdout, stderr) = text(&out);
    eprintln!("{stdout}{stderr}");
    assert!(!out.status.success(), "{stdout}{stderr}");
    let m = by_host(&stdout, "task");
    let hosts: Vec<&str> = m.keys().copied().collect();
    assert_eq!(hosts, nodes, "every task started in the image: {stdout}");
    assert!(
        m.values()
            .flatten()
            .all(|(_, mk)| *mk == "inside-the-image"),
        "{stdout}"
    );
    let failures: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("Node failure"))
        .collect();
    // (srun may say it again when the step's end reaches it.)
    let line = format!("srun: error: Node failure on {bad}");
    assert!(
        !failures.is_empty() && failures.iter().all(|l| *l == line),
        "the line naming the node ({took:?}): {stderr}"
    );
}
