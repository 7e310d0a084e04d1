//! Issue 12's attacks on the ECL, each tried as the job's own unprivileged
//! user would on the live cluster (tests/run-all's one-node Slurm with the
//! plugin), each asserting the secure outcome: the attack is denied and no
//! task ever runs bytes the ECL did not approve.
//!
//! tests/slurm/ecl-attacks (run as root by tests/run-all) sets each phase
//! up and runs the tests of that phase, by name prefix, as the test user:
//! - `prepare`: the images below are built by the user; root then installs
//!   them root-owned under `$base/images` and signs them with the test key;
//! - `ecl_`: the plugin's admin file and the site file
//!   (/etc/sifrun/sifrun.toml) activate an ECL trusting the test key, with
//!   `users.image_dirs = [$base/images, $base/user]`;
//! - `hidden_`: the same, with /etc/sifrun made 0700 (the user cannot stat
//!   either file);
//! - `plain_`: no ECL, `users.max_binds = 1` (the unprivileged path);
//! - `trusted_`: one untrusted plugstack.conf path at a time.
//!
//! Unapproved bytes announce themselves: the attack images' /bin/probe
//! prints `PROBE-APPROVED`; every attack that would change what a task
//! runs makes it print `PROBE-HACKED!!` or another image's marker instead.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sifrun_tests::attack::*;
use sifrun_tests::*;

/// The site file `sifrun exec` reads its `[ecl]` from.
const SITE_FILE: &str = "/etc/sifrun/sifrun.toml";

fn out_text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A tag unique to this run and call.
fn tag() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// srun in `dir` (PWD too: the job's PWD is what the plugin takes as the
/// task's directory, as a shell would have set it).
fn srun_in(dir: &Path, args: &[&str]) -> Output {
    Command::new("srun")
        .args(args)
        .current_dir(dir)
        .env("PWD", dir)
        .output()
        .unwrap()
}

fn exec_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(sifrun_bin())
        .arg("exec")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// A command the test started; killed (and reaped) if the test fails
/// before [`finish`], so no srun or container outlives a failed test.
struct Running(Option<Child>);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process of ours (a decoy) killed when the test ends, failed or not.
#[derive(Debug)]
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill("KILL", self.0);
    }
}

fn spawn(c: Command, dir: &Path) -> Running {
    Running(Some(spawn_child(c, dir)))
}

fn spawn_child(mut c: Command, dir: &Path) -> Child {
    c.current_dir(dir)
        .env("PWD", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn srun_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("srun");
    c.args(args);
    c
}

fn exec_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(sifrun_bin());
    c.arg("exec").args(args);
    c
}

/// `srun -n1 --sif-image=IMG ARGS…`, not yet started.
fn step(img: &Path, args: &[&str]) -> Command {
    let mut c = srun_cmd(&["-n1", &format!("--sif-image={}", img.display())]);
    c.args(args);
    c
}

/// [`step`] in `dir` (its PWD too), run to its end.
fn step_in(dir: &Path, img: &Path, args: &[&str]) -> Output {
    step(img, args)
        .current_dir(dir)
        .env("PWD", dir)
        .output()
        .unwrap()
}

/// Asserts that `out` shows the approved probe's marker and never the
/// marker of rewritten or substituted bytes.
fn assert_approved(what: &str, out: &Output) {
    let (o, e) = out_text(out);
    assert!(
        o.contains(PROBE_APPROVED) && !o.contains(PROBE_HACKED),
        "{what}: {o}{e}"
    );
}

/// A task script: writes its job id (or `-`) to `ready-TAG` in its cwd,
/// waits for `go-TAG`, then runs `then`.
fn waiting(tag: &str, then: &str) -> String {
    format!(
        "echo ${{SLURM_JOB_ID:--}} > ready-{tag}; while [ ! -e go-{tag} ]; do sleep 0.1; done; {then}"
    )
}

/// Waits for the task's `ready-TAG`; `None` when the command ended first
/// (refused before any task ran).
fn wait_ready(child: &mut Running, dir: &Path, tag: &str) -> Option<String> {
    let ready = dir.join(format!("ready-{tag}"));
    let t = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(&ready)
            && text.ends_with('\n')
        {
            return Some(text.trim().to_owned());
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no task became ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn go(dir: &Path, tag: &str) {
    fs::write(dir.join(format!("go-{tag}")), "").unwrap();
}

/// The command's output, within `limit`.
fn finish(mut running: Running, limit: Duration) -> Output {
    let child = running.0.take().expect("running");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output().unwrap());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        let _ = kill("KILL", pid as i32);
        panic!("pid {pid} did not end within {limit:?}")
    })
}

/// Processes of the step `job` that are not the user's tasks or srun: the
/// holder / image server (whatever its uid), found by the job id in its
/// command line.
fn step_servers(job: &str) -> Vec<Proc> {
    procs_matching("slurm-hold")
        .into_iter()
        .filter(|p| p.cmdline.contains(&format!("{job}.")))
        .collect()
}

/// The set-up of `phase`, a fresh directory of the user's and their own
/// unsigned image in it (with `marker`); `None` outside the phase.
fn with_users_image(phase: &str, marker: &str) -> Option<(Attacks, tempfile::TempDir, PathBuf)> {
    let a = Attacks::for_phase(phase)?;
    let d = a.user_dir();
    let img = users_image(d.path(), marker);
    Some((a, d, img))
}

/// The user's unsigned image (user-owned, writable) with `marker`.
fn users_image(dir: &Path, marker: &str) -> PathBuf {
    let img = dir.join(format!("{marker}.sif"));
    uncompressed_sif(&probe_root(dir, marker), &img);
    fs::remove_dir_all(dir.join(format!("{marker}-root"))).unwrap();
    img
}

// ---------------------------------------------------------------- prepare

/// Run by tests/slurm/ecl-attacks as the user: the images root then
/// installs root-owned and signs (`request/NAME.sif` -> `images/NAME.sif`,
/// `outside.sif` -> `outside/img.sif`).
#[test]
#[ignore = "run by tests/slurm/ecl-attacks (phase prepare), before root signs what it makes"]
fn prepare_images() {
    let Some(a) = Attacks::for_phase("prepare") else {
        return;
    };
    let out = a.base.join("request");
    let work = tempfile::tempdir().unwrap();
    for marker in ["approved-image", "outside-image-dirs", "past-partition"] {
        let name = match marker {
            "approved-image" => "approved.sif",
            "outside-image-dirs" => "outside.sif",
            _ => "past-partition.sif",
        };
        uncompressed_sif(&probe_root(work.path(), marker), &out.join(name));
    }
    // Item 3: the partition ends where the squashfs tables begin.
    cut_partition_before_tables(&out.join("past-partition.sif"));
    // Item 4: an image whose verification takes a while (128 MiB to hash).
    let root = probe_root(work.path(), "big-image");
    let mut payload = fs::File::create(root.join("payload")).unwrap();
    let mut urandom = fs::File::open("/dev/urandom").unwrap();
    std::io::copy(
        &mut std::io::Read::take(&mut urandom, 128 << 20),
        &mut payload,
    )
    .unwrap();
    drop(payload);
    uncompressed_sif(&root, &out.join("big.sif"));
    for name in [
        "approved.sif",
        "outside.sif",
        "past-partition.sif",
        "big.sif",
    ] {
        assert!(out.join(name).is_file(), "{name}");
    }
}

// ---------------------------------------------------------------- item 1

/// Item 1 as the attacker does it: a copy of an admin-signed image in the
/// user's directory, made 0444; after the check the user makes it writable
/// again and rewrites /bin/probe's bytes; the waiting task then runs it.
/// Returns the command's output (the caller judges it).
fn rewrite_after_check(
    dir: &Path,
    signed: &Path,
    cmd: &dyn Fn(&Path, &str) -> Command,
) -> (Output, bool) {
    let copy = dir.join("copy.sif");
    fs::copy(signed, &copy).unwrap();
    chmod(&copy, 0o444);
    let t = tag();
    let mut child = spawn(cmd(&copy, &waiting(&t, "sh /bin/probe")), dir);
    let ready = wait_ready(&mut child, dir, &t);
    if ready.is_some() {
        chmod(&copy, 0o644);
        let n = rewrite_in_place(&copy, PROBE_APPROVED, PROBE_HACKED);
        assert!(n >= 1, "the probe's bytes are in the image verbatim");
        chmod(&copy, 0o444);
        go(dir, &t);
    }
    (finish(child, Duration::from_secs(60)), ready.is_some())
}

/// Item 1 on the ECL path: the user's copy is refused before any task
/// starts ("owned by you", the pin), so the rewrite never reaches a task;
/// the positive control runs the same command on the root-owned original,
/// whose probe prints the approved marker.
fn users_copy_is_refused(a: &Attacks, cmd: &dyn Fn(&Path, &str) -> Command, what: &str) {
    let d = a.user_dir();
    let (out, started) = rewrite_after_check(d.path(), &a.image("approved.sif"), cmd);
    let (stdout, stderr) = out_text(&out);
    assert!(
        !stdout.contains(PROBE_HACKED) && !stdout.contains(PROBE_APPROVED) && !started,
        "{what}: a task ran from the user's copy: {stdout}{stderr}"
    );
    assert!(
        !out.status.success() && stderr.contains("owned by you"),
        "{what}: refused without the pin's reason: {stderr}"
    );
    let t = tag();
    let control = spawn(
        cmd(
            &a.image("approved.sif"),
            &format!("sh /bin/probe; echo {t}"),
        ),
        d.path(),
    );
    let out = finish(control, Duration::from_secs(60));
    let (o, e) = out_text(&out);
    assert!(
        o.contains(PROBE_APPROVED) && o.contains(&t),
        "{what}: the approved original did not run: {o}{e}"
    );
}

/// Item 1's attack works where nothing pins the image (no ECL, the
/// unprivileged path, where the user may run their own bytes anyway): the
/// waiting task runs the rewritten probe. This is what the ECL tests
/// above would see if the pin let the copy through.
#[test]
fn plain_item1_control_the_rewrite_reaches_the_task_without_a_pin() {
    let Some((_a, d, img)) = with_users_image("plain", "plain-image") else {
        return;
    };
    let (out, started) = rewrite_after_check(d.path(), &img, &|img, script| {
        exec_cmd(&[s(img), "sh", "-c", script])
    });
    let (o, e) = out_text(&out);
    assert!(
        started && o.contains(PROBE_HACKED),
        "the rewrite did not reach the task: {o}{e}"
    );
}

#[test]
fn ecl_item1_a_users_copy_rewritten_after_the_check_never_runs_in_a_step() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    users_copy_is_refused(&a, &|img, script| step(img, &["sh", "-c", script]), "srun");
}

#[test]
fn ecl_item1_a_users_copy_rewritten_after_the_check_never_runs_in_exec() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    users_copy_is_refused(
        &a,
        &|img, script| exec_cmd(&[s(img), "sh", "-c", script]),
        "sifrun exec",
    );
}

// ---------------------------------------------------------------- item 2

/// Item 2's attacks on a running container whose task PID is `task`:
/// join its user and mount namespaces (as nsenter does, from another
/// process of the user) and bind a file of the user's over /bin/probe.
/// Returns what each try printed.
fn bind_over_probe(task: i32, evil: &Path) -> Vec<String> {
    let mut tries = Vec::new();
    for ns in [&["-U", "-m"][..], &["-m"][..]] {
        let out = Command::new("nsenter")
            .arg("--preserve-credentials")
            .args(ns)
            .args(["-t", &task.to_string(), "--", "/bin/busybox", "mount"])
            .args(["-o", "bind", s(evil), "/bin/probe"])
            .output()
            .unwrap();
        let (o, e) = out_text(&out);
        tries.push(format!("nsenter {ns:?}: {:?} {o}{e}", out.status.code()));
    }
    tries
}

/// Tasks of the user whose command line has `tag` (not srun or sifrun).
fn tasks_with(tag: &str) -> Vec<Proc> {
    let me = my_uid();
    procs_matching(&format!("go-{tag}"))
        .into_iter()
        .filter(|p| p.uids[0] == me)
        .filter(|p| !p.cmdline.starts_with("srun") && !p.cmdline.contains("sifrun"))
        .collect()
}

fn evil_probe(dir: &Path) -> PathBuf {
    let evil = dir.join("evil-probe");
    fs::write(&evil, format!("#!/bin/sh\necho {PROBE_HACKED} evil\n")).unwrap();
    chmod(&evil, 0o755);
    evil
}

#[test]
fn ecl_item2_joining_or_tracing_a_steps_container_changes_nothing_it_serves() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let d = a.user_dir();
    let img = a.image("approved.sif");
    let evil = evil_probe(d.path());
    assert_the_bind_works_on_a_namespace_the_user_owns(d.path(), &evil);
    let t = tag();
    let mut child = spawn(
        step(&img, &["sh", "-c", &waiting(&t, "sh /bin/probe")]),
        d.path(),
    );
    let job = wait_ready(&mut child, d.path(), &t).expect("the approved image runs");
    let mut tried = Vec::new();
    for task in tasks_with(&t) {
        tried.extend(bind_over_probe(task.pid, &evil));
    }
    assert!(!tried.is_empty(), "no task found to attack");
    // The holder / image server, whatever runs it: join it, trace it.
    let mut traced = Vec::new();
    for server in step_servers(&job) {
        tried.extend(bind_over_probe(server.pid, &evil));
        if fs::File::options()
            .write(true)
            .open(format!("/proc/{}/mem", server.pid))
            .is_ok()
        {
            traced.push(format!("{server:?}"));
        }
    }
    // A second step of the job joins the same allocation meanwhile.
    let second = srun_in(
        d.path(),
        &[
            &format!("--jobid={job}"),
            "--overlap",
            "-n1",
            &format!("--sif-image={}", img.display()),
            "sh",
            "/bin/probe",
        ],
    );
    go(d.path(), &t);
    let out = finish(child, Duration::from_secs(60));
    let (stdout, stderr) = out_text(&out);
    let (second_out, second_err) = out_text(&second);
    let mut problems = Vec::new();
    if !traced.is_empty() {
        problems.push(format!(
            "the user may ptrace (write the memory of) the image server: {traced:?}"
        ));
    }
    if !stdout.contains(PROBE_APPROVED) || stdout.contains(PROBE_HACKED) {
        problems.push(format!(
            "after the attacks ({tried:#?}) the step's task ran: {stdout}{stderr}"
        ));
    }
    if !second_out.contains(PROBE_APPROVED) {
        problems.push(format!("a second step: {second_out}{second_err}"));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The positive control of the item-2 tests: the same nsenter and bind
/// do work against a user and mount namespace the user owns
/// (`unshare -Urm`), so their failure on a container is the container's
/// doing, not a broken tool.
fn assert_the_bind_works_on_a_namespace_the_user_owns(dir: &Path, evil: &Path) {
    let target = dir.join("control-target");
    fs::write(&target, "original\n").unwrap();
    let mut ns = Running(Some(
        Command::new("unshare")
            .args(["-Urm", "sleep", "30"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let pid = ns.id().to_string();
    let t = Instant::now();
    // Ready once unshare has exec'd sleep: its uid map is written and its
    // mount namespace made (a new mount namespace alone can be seen before
    // the map is written, and nsenter then joins a namespace where the
    // user has no capability yet).
    while fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .as_deref()
        != Some("sleep\n")
        || fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
            == fs::read_link("/proc/self/ns/mnt").ok()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "unshare did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let nsenter = |args: &[&str]| {
        Command::new("nsenter")
            .args(["--preserve-credentials", "-U", "-m", "-t", &pid, "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let bind = nsenter(&["/bin/busybox", "mount", "-o", "bind", s(evil), s(&target)]);
    let seen = nsenter(&["cat", s(&target)]);
    let _ = ns.kill();
    let (o, e) = out_text(&seen);
    assert!(
        o.contains(PROBE_HACKED),
        "the control: nsenter and bind did not work on the user's own namespace: {bind:?} {o}{e}"
    );
}

/// Item 2 against `sifrun exec` with the site ECL: a second process of the
/// user joins the namespaces of an exec container of the approved image
/// (its task's and its own sifrun process's) and binds a file over
/// /bin/probe. Denied (the mount fails): the attacked container, a
/// concurrent one and a later one all run the approved probe.
#[test]
fn ecl_item2_joining_an_exec_container_changes_nothing_it_serves() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let d = a.user_dir();
    let img = a.image("approved.sif");
    let evil = evil_probe(d.path());
    assert_the_bind_works_on_a_namespace_the_user_owns(d.path(), &evil);
    let (ta, tb) = (tag(), tag());
    let mut victim = spawn(
        exec_cmd(&[s(&img), "sh", "-c", &waiting(&ta, "sh /bin/probe")]),
        d.path(),
    );
    let mut other = spawn(
        exec_cmd(&[s(&img), "sh", "-c", &waiting(&tb, "sh /bin/probe")]),
        d.path(),
    );
    wait_ready(&mut victim, d.path(), &ta).expect("the approved image runs");
    wait_ready(&mut other, d.path(), &tb).expect("the approved image runs");
    let me = my_uid();
    let mut tried = Vec::new();
    for p in procs_matching(&format!("go-{ta}")) {
        if p.uids[0] == me && !p.cmdline.contains("nsenter") {
            tried.extend(bind_over_probe(p.pid, &evil));
        }
    }
    assert!(!tried.is_empty(), "no process of the exec container found");
    go(d.path(), &ta);
    go(d.path(), &tb);
    let victim = finish(victim, Duration::from_secs(60));
    let other = finish(other, Duration::from_secs(60));
    let later = exec_in(d.path(), &[s(&img), "sh", "/bin/probe"]);
    for (what, out) in [
        ("attacked", &victim),
        ("concurrent", &other),
        ("later", &later),
    ] {
        assert_approved(&format!("{what} exec after the attacks ({tried:#?})"), out);
    }
}

// ---------------------------------------------------------------- item 3

/// A signed partition whose squashfs tables lie after it in the file: the
/// signature verifies (it covers the partition), the step and exec fail,
/// nothing of the image runs.
#[test]
fn ecl_item3_tables_past_the_signed_partition_are_never_served() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let img = a.image("past-partition.sif");
    let check = sifrun(&["ecl", "check", "--ecl", s(&a.config()), s(&img)]);
    let (o, e) = out_text(&check);
    assert!(
        o.contains("allowed"),
        "the crafted image's signature must verify for the attack to mean anything: {o}{e}"
    );
    let d = a.user_dir();
    let t = tag();
    let ran = format!("RAN-{t}");
    let out = step_in(d.path(), &img, &["sh", "-c", &format!("echo {ran}")]);
    let (o, e) = out_text(&out);
    assert!(
        !out.status.success() && !o.contains(&ran),
        "a step ran on tables no signature covers: {o}{e}"
    );
    let out = exec_in(d.path(), &[s(&img), "sh", "-c", &format!("echo {ran}")]);
    let (o, e) = out_text(&out);
    assert!(
        !out.status.success() && !o.contains(&ran),
        "exec ran on tables no signature covers: {o}{e}"
    );
}

#[test]
fn plain_item3_tables_past_the_partition_are_never_served() {
    let Some(a) = Attacks::for_phase("plain") else {
        return;
    };
    let d = a.user_dir();
    let img = d.path().join("past.sif");
    uncompressed_sif(&probe_root(d.path(), "past"), &img);
    cut_partition_before_tables(&img);
    let ran = format!("RAN-{}", tag());
    let script = format!("echo {ran}");
    for (what, out) in [
        ("srun", step_in(d.path(), &img, &["sh", "-c", &script])),
        ("exec", exec_in(d.path(), &[s(&img), "sh", "-c", &script])),
    ] {
        let (o, e) = out_text(&out);
        assert!(
            !out.status.success() && !o.contains(&ran),
            "{what} ran on bytes past the partition: {o}{e}"
        );
    }
}

// ---------------------------------------------------------------- item 4

/// While a step verifies and runs a big signed image, every process the
/// user may signal (its real or saved uid is the user's) has no capability
/// and no root uid, and everything of the step that is root's refuses the
/// user's SIGSTOP.
#[test]
fn ecl_item4_nothing_the_user_can_signal_holds_root_privilege() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let me = my_uid();
    let d = a.user_dir();
    let t = tag();
    // Only the processes started from here on are sampled, so that a
    // sample is quick and a short window (the holder between its exec and
    // taking root) can be caught.
    let before: std::collections::HashSet<i32> = all_pids().into_iter().collect();
    let mut child = spawn(
        step(
            &a.image("big.sif"),
            &["sh", "-c", &waiting(&t, "sh /bin/probe")],
        ),
        d.path(),
    );
    let mut violations = std::collections::BTreeSet::new();
    let mut stopped = std::collections::BTreeSet::new();
    let mut samples = 0;
    let ready = d.path().join(format!("ready-{t}"));
    let started = Instant::now();
    while !ready.exists() && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(60), "no task ran");
        samples += 1;
        let new = all_pids().into_iter().filter(|pid| !before.contains(pid));
        // The step's parts: slurmstepd and what runs the staged launcher
        // (holder, opener, verifier), not other work on the machine.
        let launcher = sifrun_bin();
        let of_step =
            |p: &Proc| p.cmdline.starts_with("slurmstepd") || p.cmdline.contains(s(&launcher));
        for p in new.filter_map(proc_info).filter(of_step) {
            let mine = p.uids[0] == me || p.uids[2] == me;
            let nobody = p.uids.contains(&65534);
            // Capabilities count in the initial user namespace only (in
            // the user's own namespaces they are the user's anyway).
            let caps = p.privileged() && in_initial_user_ns(p.pid);
            if (mine || nobody) && (caps || p.uids[0] == 0 || p.uids[2] == 0) {
                violations.insert(format!("{p:?}"));
            }
            let step_part = p.cmdline.contains("slurm-hold") || p.cmdline.starts_with("slurmstepd");
            if step_part && !mine && kill("STOP", p.pid).status.success() {
                let _ = kill("CONT", p.pid);
                // A child of slurmstepd that has just become the user's
                // task may be stopped (its uids were read before it
                // dropped to the user); root's part may not: a process
                // that is not the user's after the signal counts. (One
                // that was the user's and took root afterwards is what
                // the check above finds.)
                let now = proc_info(p.pid);
                if now.is_some_and(|q| q.uids[0] != me && q.uids[2] != me) {
                    stopped.insert(format!("{p:?}"));
                }
            }
        }
    }
    go(d.path(), &t);
    let out = finish(child, Duration::from_secs(60));
    eprintln!("{samples} samples of /proc while the step started");
    assert!(
        samples > 0,
        "the step started before /proc was sampled once"
    );
    assert!(
        violations.is_empty(),
        "processes the user can signal with root's uid or capabilities: {violations:#?}"
    );
    assert!(
        stopped.is_empty(),
        "the user stopped root's part of the step: {stopped:#?}"
    );
    assert_approved("the big image after the sampling", &out);
}

/// Whether `pid` is in the initial user namespace (ours, as tests/run-all
/// starts us); a process whose namespace we may not read is root's, in it.
fn in_initial_user_ns(pid: i32) -> bool {
    let ours = fs::read_link("/proc/self/ns/user").unwrap();
    fs::read_link(format!("/proc/{pid}/ns/user")).map_or(true, |ns| ns == ours)
}

// ---------------------------------------------------------------- item 5

/// The attack of item 5 once fixed: the admin file is there but the user
/// cannot read it. The old path skipped the ECL and ran the user's
/// unsigned image; now every way in fails closed: `sifrun exec` refuses
/// with one line naming the file, and a step is refused before any task
/// starts (srun's own copy of the plugin cannot load `config=`, a
/// required plugin, so srun refuses the step; docs/admin.md: keep it
/// world-readable). A marker a task would write proves none ran, with the
/// user's image or the approved one. The positive control is
/// [`ecl_item5_control_the_same_files_readable_admit_only_the_approved_image`].
#[test]
fn hidden_item5_an_admin_file_the_user_cannot_read_fails_closed() {
    let Some(a) = Attacks::for_phase("hidden") else {
        return;
    };
    for f in [a.config(), PathBuf::from(SITE_FILE)] {
        let err = fs::metadata(&f).expect_err("the phase hides the admin files");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{f:?}");
    }
    let d = a.user_dir();
    let mine = users_image(d.path(), "user-unsigned");
    let mut problems = Vec::new();
    for img in [&mine, &a.image("approved.sif")] {
        let ran = d.path().join("task-ran");
        let script = format!("touch {}; cat /etc/image-marker", ran.display());
        let out = exec_in(d.path(), &[s(img), "sh", "-c", &script]);
        let (o, e) = out_text(&out);
        if out.status.success() || ran.exists() || !e.contains("cannot be read, so nothing runs") {
            problems.push(format!(
                "exec of {img:?} must refuse, saying the site file cannot be read: {o}{e}"
            ));
        }
        let out = step_in(d.path(), img, &["sh", "-c", &script]);
        let (o, e) = out_text(&out);
        if out.status.success() || ran.exists() || o.contains("-image") || o.contains("unsigned") {
            problems.push(format!("a step of {img:?} ran a task: {o}{e}"));
        }
        if !e.contains(&format!("{}: Permission denied", a.config().display())) {
            problems.push(format!(
                "the step's refusal does not name the admin file: {e}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Item 5's positive control: the same admin files, readable (phase
/// `ecl`): the user's unsigned image is refused by the ECL, in exec and in
/// a step, and the approved image runs in both.
#[test]
fn ecl_item5_control_the_same_files_readable_admit_only_the_approved_image() {
    let Some((a, d, mine)) = with_users_image("ecl", "user-unsigned") else {
        return;
    };
    let approved = a.image("approved.sif");
    for img in [&mine, &approved] {
        for (how, out) in [
            ("exec", exec_in(d.path(), &[s(img), "sh", "/bin/probe"])),
            ("srun", step_in(d.path(), img, &["sh", "/bin/probe"])),
        ] {
            let (o, e) = out_text(&out);
            if img == &approved {
                assert!(
                    o.contains(PROBE_APPROVED) && out.status.success(),
                    "{how}: {o}{e}"
                );
            } else {
                assert!(
                    !out.status.success()
                        && !o.contains("user-unsigned")
                        && e.contains("owned by you"),
                    "{how} of the user's image: {o}{e}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- item 6

/// Compiles the decoy: it forks (vfork, cheap) until the kernel's last PID
/// is close below `target`, then forks children one PID after another
/// until one gets `target`: that one stays, logging every catchable signal
/// it gets, the others end; prints `target`. When other processes take
/// the PID first (a busy machine) it goes round the PID space again, for
/// up to 40 s (then prints 0).
fn decoy_program(dir: &Path) -> PathBuf {
    let src = dir.join("decoy.c");
    fs::write(
        &src,
        r#"#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/wait.h>
static const char *rec;
static void got_signal(int s) { int fd = open(rec, O_WRONLY | O_APPEND | O_CREAT, 0644);
  char b[16]; int n = snprintf(b, sizeof b, "%d\n", s); if (fd >= 0) { write(fd, b, n); close(fd); } }
static long last(void) { long v = 0; FILE *f = fopen("/proc/sys/kernel/ns_last_pid", "r");
  if (f) { if (fscanf(f, "%ld", &v) != 1) v = 0; fclose(f); } return v; }
static void spin(int n) { for (int i = 0; i < n; i++) { pid_t p = vfork(); if (p == 0) _exit(0); if (p > 0) waitpid(p, 0, 0); } }
int main(int argc, char **argv) {
  long target = atol(argv[1]); rec = argv[2]; time_t end = time(0) + 40;
  long max = 32768; FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
  if (f) { if (fscanf(f, "%ld", &max) != 1) max = 32768; fclose(f); }
  while (time(0) < end) {
    long dist = ((target - 1 - last()) % max + max) % max;
    if (dist > 200) { spin(64); continue; }
    /* Close by: fork children that stay until released, one PID after
       another, past the target; the one that gets it stays as the decoy. */
    int fds[2]; if (pipe(fds)) return 1;
    pid_t kids[300]; int n = 0, got = 0;
    while (n < 300) {
      pid_t p = fork();
      if (p == 0) {
        close(fds[1]);
        if (getpid() == target) { close(fds[0]); int nul = open("/dev/null", O_RDWR); dup2(nul, 0); dup2(nul, 1); dup2(nul, 2);
          setsid(); for (int s = 1; s < 32; s++) if (s != SIGKILL && s != SIGSTOP) signal(s, got_signal);
          for (;;) pause(); }
        char c; if (read(fds[0], &c, 1) < 0) _exit(1); _exit(0); }
      if (p < 0) break;
      if (p == target) { got = 1; break; }
      kids[n++] = p;
      long past = ((p - target) % max + max) % max;
      if (past < max / 2) break;
    }
    close(fds[0]); close(fds[1]);
    for (int i = 0; i < n; i++) waitpid(kids[i], 0, 0);
    if (got) { printf("%ld\n", target); return 0; } }
  printf("0\n"); return 0; }
"#,
    )
    .unwrap();
    let bin = dir.join("decoy");
    ok(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap());
    bin
}

/// Item 6: the user kills their own holder early; once its PID is free,
/// a decoy of the user's takes it; at step end nothing signals the decoy.
/// Returns whether the decoy got the holder's PID (the attack was set up);
/// `None` when the step had no process the user could kill.
fn recycled_pid_is_never_signalled(a: &Attacks, img: &Path) -> Option<bool> {
    let d = a.user_dir();
    let t = tag();
    let mut child = spawn(
        step(
            img,
            &[
                "sh",
                "-c",
                &format!("echo $SLURM_JOB_ID > ready-{t}; exec sleep 120"),
            ],
        ),
        d.path(),
    );
    let job = wait_ready(&mut child, d.path(), &t).expect("the image runs");
    let me = my_uid();
    let holders: Vec<Proc> = step_servers(&job)
        .into_iter()
        .filter(|p| p.uids[0] == me || p.uids[2] == me)
        .collect();
    let record = d.path().join("decoy-signals");
    let mut decoy = None;
    let Some(h) = holders.first() else {
        ok(Command::new("scancel").arg(&job).output().unwrap());
        let _ = finish(child, Duration::from_secs(60));
        return None;
    };
    ok(kill("KILL", h.pid));
    // Reaped (by slurmstepd) or not: only a free PID can be reused.
    let gone = Instant::now();
    while proc_info(h.pid).is_some() && gone.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if proc_info(h.pid).is_none() {
        let bin = decoy_program(d.path());
        let out = ok(Command::new(&bin)
            .arg(h.pid.to_string())
            .arg(&record)
            .output()
            .unwrap());
        let pid: i32 = String::from_utf8(out).unwrap().trim().parse().unwrap();
        // 0: the decoy gave up (and left no child).
        if pid == h.pid {
            decoy = Some(KillOnDrop(pid));
        }
        // Otherwise the PID stayed taken by another process for 30 s.
        eprintln!(
            "holder {} killed; decoy at its PID: {decoy:?} (got {pid})",
            h.pid
        );
    } else {
        eprintln!("holder {} still occupies its PID: no reuse possible", h.pid);
    }
    ok(Command::new("scancel").arg(&job).output().unwrap());
    let _ = finish(child, Duration::from_secs(60));
    // Step end has run (srun returns after slurmstepd's exit callbacks);
    // give a late signal time to arrive.
    std::thread::sleep(Duration::from_secs(2));
    if let Some(guard) = &decoy {
        let pid = guard.0;
        let alive = proc_info(pid).is_some_and(|p| p.cmdline.contains("decoy"));
        let signals = fs::read_to_string(&record).unwrap_or_default();
        assert!(alive, "the decoy at the holder's old PID was killed");
        assert!(
            signals.is_empty(),
            "the decoy at the holder's old PID got signals: {signals}"
        );
    }
    Some(decoy.is_some())
}

/// On the ECL path no process of the step is the user's to kill (the
/// holder that built the namespace has exited; root's part cannot be
/// signalled by the user): there is no PID to recycle. The approved image
/// did run (the step was up when the holders were looked for).
#[test]
fn ecl_item6_no_process_of_the_step_is_the_users_to_kill() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    assert_eq!(
        recycled_pid_is_never_signalled(&a, &a.image("approved.sif")),
        None,
        "the user could kill a process of an ECL step"
    );
}

/// The unprivileged path has a holder of the user's: the attack is tried
/// for real, up to three steps until the decoy lands on the holder's old
/// PID (the test fails if it never does: an attack never set up proves
/// nothing).
#[test]
fn plain_item6_root_never_signals_a_recycled_holder_pid() {
    let Some((a, _dir, img)) = with_users_image("plain", "plain-image") else {
        return;
    };
    let landed = (0..3).any(|_| {
        recycled_pid_is_never_signalled(&a, &img).expect("the unprivileged path has a holder")
    });
    assert!(
        landed,
        "the decoy never got the holder's PID in three steps"
    );
}

// ---------------------------------------------------------------- item 7

/// Flips `link` between `a` and `b` (a new link renamed over it) until
/// the returned flag is set.
fn flipper(
    link: PathBuf,
    a: PathBuf,
    b: PathBuf,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let h = std::thread::spawn(move || {
        let tmp = link.with_extension("tmp");
        let mut i = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(if i.is_multiple_of(2) { &a } else { &b }, &tmp).unwrap();
            fs::rename(&tmp, &link).unwrap();
            i += 1;
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    (stop, h)
}

/// 20 steps of an image path whose link flips between an approved image
/// and one outside `users.image_dirs`: the outside image never runs.
#[test]
fn ecl_item7_a_flipping_link_never_runs_an_image_outside_image_dirs() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let d = a.user_dir();
    let link = d.path().join("flip.sif");
    std::os::unix::fs::symlink(a.image("approved.sif"), &link).unwrap();
    let (stop, h) = flipper(link.clone(), a.image("approved.sif"), a.outside());
    let mut approved = 0;
    let mut outside = Vec::new();
    for _ in 0..20 {
        let out = step_in(d.path(), &link, &["cat", "/etc/image-marker"]);
        let (o, e) = out_text(&out);
        if o.contains("outside-image-dirs") {
            outside.push(e);
        } else if o.contains("approved-image") {
            approved += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(
        outside.is_empty(),
        "the image outside users.image_dirs ran {} times in 20 steps",
        outside.len()
    );
    assert!(approved > 0, "the approved image never ran in 20 steps");
}

/// The same with `sifrun exec` and the site ECL: the link flips between
/// the approved image and the user's unsigned one.
#[test]
fn ecl_item7_a_flipping_link_never_runs_an_unsigned_image_in_exec() {
    let Some((a, d, mine)) = with_users_image("ecl", "user-unsigned") else {
        return;
    };
    let link = d.path().join("flip.sif");
    std::os::unix::fs::symlink(a.image("approved.sif"), &link).unwrap();
    let (stop, h) = flipper(link.clone(), a.image("approved.sif"), mine);
    let mut approved = 0;
    let mut unsigned = 0;
    for _ in 0..20 {
        let out = exec_in(d.path(), &[s(&link), "cat", "/etc/image-marker"]);
        let o = out_text(&out).0;
        unsigned += usize::from(o.contains("user-unsigned"));
        approved += usize::from(o.contains("approved-image"));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert_eq!(unsigned, 0, "the unsigned image ran {unsigned} times in 20");
    assert!(approved > 0, "the approved image never ran in 20 execs");
}

/// A relative PWD in the job's environment: the plugin resolves the image
/// against it from slurmstepd's directory, the holder from the directory
/// it was started in (the PWD itself). PWD climbs to / from wherever
/// slurmstepd is (16 `..`) and comes down to `T/a`; `T/a` is a link 16
/// directories deep, so the same 16 `..` from there end in `T` itself.
/// From slurmstepd `a/img.sif` is the approved image; from the holder it
/// is `T/srv/…/T/a/img.sif`, the image outside `users.image_dirs`.
/// Whatever either resolves, no image outside runs.
#[test]
fn ecl_item7_a_relative_pwd_never_runs_an_image_outside_image_dirs() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    use std::os::unix::fs::symlink;
    let d = a.user_dir();
    let t = d.path();
    let deep: PathBuf = std::iter::repeat_n("p", 16).collect();
    fs::create_dir_all(t.join(&deep)).unwrap();
    symlink(a.image("approved.sif"), t.join(&deep).join("img.sif")).unwrap();
    symlink(&deep, t.join("a")).unwrap();
    let mirror = t.join(t.strip_prefix("/").unwrap()).join("a");
    fs::create_dir_all(&mirror).unwrap();
    symlink(a.outside(), mirror.join("img.sif")).unwrap();
    let pwd = format!(
        "{}{}/a",
        "../".repeat(16),
        t.strip_prefix("/").unwrap().display()
    );
    let out = Command::new("srun")
        .args(["-n1", "--sif-image=img.sif", "cat", "/etc/image-marker"])
        .arg(format!("--chdir={}", t.join("a").display()))
        .current_dir(t.join("a"))
        .env("PWD", &pwd)
        .output()
        .unwrap();
    let (o, e) = out_text(&out);
    assert!(
        !o.contains("outside-image-dirs"),
        "a relative PWD ({pwd}) ran the image outside users.image_dirs: {o}{e}"
    );
    // The control: the same relative image with the real (absolute) PWD
    // is the approved image, and runs.
    let out = Command::new("srun")
        .args(["-n1", "--sif-image=img.sif", "cat", "/etc/image-marker"])
        .current_dir(t.join("a"))
        .env("PWD", t.join("a"))
        .output()
        .unwrap();
    let (o, e) = out_text(&out);
    assert!(
        o.contains("approved-image"),
        "the control did not run: {o}{e}"
    );
}

// ------------------------------------------------- --sif-writable-tmpfs

/// `--sif-writable-tmpfs` on the ECL path works: the task may write where
/// the image lets it (the image's world-writable `/scratch`, read-only
/// without the option, the positive control) and reads its writes back.
/// It is no way around the ECL: the image's own files stay root's (writing
/// over /bin/probe is refused), the writes are the step's own (a
/// concurrent step of the same image sees neither), and the admitted image
/// file is unchanged.
#[test]
fn ecl_writable_tmpfs_works_and_changes_nothing_the_ecl_admitted() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    let img = a.image("approved.sif");
    let before = fs::read(&img).unwrap();
    let d = a.user_dir();
    let opt = format!("--sif-image={}", img.display());
    let write = "echo written > /scratch/new && cat /scratch/new";
    let out = step_in(d.path(), &img, &["sh", "-c", write]);
    let (o, e) = out_text(&out);
    assert!(
        !out.status.success() && !o.contains("written"),
        "the control: without the option the image is read-only: {o}{e}"
    );
    let t = tag();
    let script = format!(
        "{write}; echo 'echo {PROBE_HACKED}' > /bin/probe || echo probe-refused; {}",
        waiting(&t, "sh /bin/probe")
    );
    let mut writer = spawn(
        srun_cmd(&["-n1", &opt, "--sif-writable-tmpfs", "sh", "-c", &script]),
        d.path(),
    );
    let job = wait_ready(&mut writer, d.path(), &t).expect("the writable step runs");
    let concurrent = srun_in(
        d.path(),
        &[
            &format!("--jobid={job}"),
            "--overlap",
            "-n1",
            &opt,
            "--sif-writable-tmpfs",
            "sh",
            "-c",
            "cat /scratch/new; sh /bin/probe",
        ],
    );
    go(d.path(), &t);
    let out = finish(writer, Duration::from_secs(60));
    let (o, e) = out_text(&out);
    assert!(
        out.status.success() && o.contains("written"),
        "the writable tmpfs does not work on the ECL path: {o}{e}"
    );
    assert!(
        o.contains("probe-refused") && o.contains(PROBE_APPROVED) && !o.contains(PROBE_HACKED),
        "the tmpfs let the task replace an image file: {o}{e}"
    );
    let (co, ce) = out_text(&concurrent);
    assert!(
        co.contains(PROBE_APPROVED) && !co.contains("written") && !co.contains(PROBE_HACKED),
        "a concurrent step saw another step's tmpfs: {co}{ce}"
    );
    assert!(
        fs::read(&img).unwrap() == before,
        "the admitted image file changed"
    );
}

#[test]
fn plain_item7_max_binds_counts_every_bind_of_a_comma_list() {
    let Some((_a, d, img)) = with_users_image("plain", "plain-image") else {
        return;
    };
    let marker = d.path().join("ran-on-host");
    let out = step_in(
        d.path(),
        &img,
        &[
            "--sif-bind=/etc:/a,/usr:/b,/var:/c",
            "sh",
            "-c",
            &format!("touch {}", marker.display()),
        ],
    );
    let (o, e) = out_text(&out);
    assert!(
        !out.status.success(),
        "three binds ran with max_binds = 1: {o}{e}"
    );
    assert!(e.contains("bind"), "no reason naming the binds: {e}");
    assert!(!marker.exists(), "a task ran");
    // One bind is allowed: the limit is what refused.
    let out = step_in(
        d.path(),
        &img,
        &["--sif-bind=/etc:/a", "cat", "/etc/image-marker"],
    );
    let (o, e) = out_text(&out);
    assert!(o.contains("plain-image"), "one bind: {o}{e}");
}

/// `--container=` naming a path under a directory only root may enter
/// gives the same answer whether or not the path exists.
#[test]
fn plain_item7_container_does_not_tell_whether_a_root_only_path_exists() {
    let Some(a) = Attacks::for_phase("plain") else {
        return;
    };
    let private = a.base.join("private");
    assert!(
        fs::read_dir(&private).is_err(),
        "{private:?} must be root's only"
    );
    let d = a.user_dir();
    let mut answers = Vec::new();
    for name in ["exists.sif", "bundle", "missing.sif"] {
        let path = private.join(name);
        let out = srun_in(
            d.path(),
            &["-n1", &format!("--container={}", path.display()), "true"],
        );
        let (_, e) = out_text(&out);
        let normalised: Vec<String> = e
            .lines()
            .filter(|l| l.contains("sifrun"))
            .map(|l| {
                l.replace(s(&path), "PATH")
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect()
            })
            .collect();
        answers.push((name, out.status.success(), normalised));
    }
    assert!(
        answers
            .iter()
            .all(|(_, ok, e)| *ok == answers[0].1 && *e == answers[0].2),
        "the answers differ: {answers:#?}"
    );
}

// ---------------------------------------------------------------- item 8

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn cpu_seconds(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// The bound docs/security.md states for the image server, for images
/// under 10 MB with the default 64 MiB block cache: 64 MiB + the cache.
const SERVER_PEAK_KIB: u64 = (64 + 64) << 10;

/// Runs `script` (with busybox bound at /busybox) in `img` by `how`
/// (exec or srun) and returns the image server's peak RSS (KiB), the CPU
/// seconds it spent while the script ran, and the task's output.
fn serve_and_measure(a: &Attacks, img: &Path, how: &str, script: &str) -> (u64, f64, String) {
    let d = a.user_dir();
    let (t0, t) = (tag(), tag());
    let checkpoint = |t: &str| {
        format!(
            "echo ${{SLURM_JOB_ID:--}} > ready-{t}; while [ ! -e go-{t} ]; do /busybox sleep 0.1; done"
        )
    };
    let body = format!("{}; {script}; {}", checkpoint(&t0), checkpoint(&t));
    let cmd = match how {
        "exec" => exec_cmd(&[
            "-B",
            "/bin/busybox:/busybox",
            s(img),
            "/busybox",
            "sh",
            "-c",
            &body,
        ]),
        _ => step(
            img,
            &[
                "--sif-bind=/bin/busybox:/busybox",
                "/busybox",
                "sh",
                "-c",
                &body,
            ],
        ),
    };
    let mut child = spawn(cmd, d.path());
    let job = wait_ready(&mut child, d.path(), &t0);
    let Some(job) = job else {
        let (o, e) = out_text(&finish(child, Duration::from_secs(10)));
        panic!("{how} of {img:?} failed: {o}{e}");
    };
    let server = match how {
        "exec" => child.id() as i32,
        _ => {
            step_servers(&job)
                .first()
                .unwrap_or_else(|| panic!("no image server for job {job}"))
                .pid
        }
    };
    // The server's CPU for what the script asked of it, not for its start.
    let before = cpu_seconds(server);
    go(d.path(), &t0);
    assert!(
        wait_ready(&mut child, d.path(), &t).is_some(),
        "{how}: {script} did not finish"
    );
    let (peak, cpu) = (vm_hwm_kib(server), cpu_seconds(server) - before);
    go(d.path(), &t);
    let out = finish(child, Duration::from_secs(60));
    let (o, e) = out_text(&out);
    assert!(out.status.success(), "{how}: {o}{e}");
    if !e.is_empty() {
        eprintln!("{how} {}: {e}", img.display());
    }
    (peak, cpu, o)
}

#[test]
fn plain_item8_hostile_small_images_keep_the_server_small() {
    let Some(a) = Attacks::for_phase("plain") else {
        return;
    };
    let d = a.user_dir();
    let zeros = d.path().join("zeros.sif");
    sif_of_squashfs(&craft::zeros_image(120_000), None, &zeros);
    assert!(fs::metadata(&zeros).unwrap().len() < 10 << 20);
    let frags = d.path().join("fragments.sif");
    let (bytes, len) = craft::fragments_image(64 << 20);
    sif_of_squashfs(&bytes, Some(len), &frags);
    let read_zeros = "/busybox cat /f; /busybox head -c 4096 /big | /busybox wc -c; /busybox tail -c 4096 /big | /busybox wc -c";
    for (img, script, want) in [
        (&zeros, read_zeros, "hello4096\n4096\n"),
        (&frags, "/busybox cat /t; echo", "tail!tail!\n"),
    ] {
        for how in ["exec", "srun"] {
            let (peak, _, o) = serve_and_measure(&a, img, how, script);
            eprintln!("{how} {}: peak {peak} KiB", img.display());
            assert_eq!(o, want, "{how} {}", img.display());
            assert!(
                peak < SERVER_PEAK_KIB,
                "{how} {}: the image server peaked at {peak} KiB (bound {SERVER_PEAK_KIB} KiB)",
                img.display()
            );
        }
    }
}

#[test]
fn plain_item8_a_directory_of_200000_names_lists_in_bounded_cpu() {
    let Some(a) = Attacks::for_phase("plain") else {
        return;
    };
    let d = a.user_dir();
    let wide = d.path().join("wide.sif");
    sif_of_squashfs(&craft::wide_image(200_000), None, &wide);
    for how in ["exec", "srun"] {
        let (_, cpu, o) = serve_and_measure(&a, &wide, how, "set -- /f*; echo $#");
        eprintln!("{how}: 200,000 names listed, server CPU {cpu:.2} s");
        let n: u64 = o.lines().last().unwrap_or("").trim().parse().unwrap_or(0);
        assert!(n >= 200_000, "{how}: listed {o:?}");
        assert!(cpu < 5.0, "{how}: the server used {cpu:.2} s of CPU");
    }
}

// ---------------------------------------------------------------- item 9

/// The phase points one plugstack.conf path at a place the user (or
/// anyone) may change: `SIFRUN_ATTACKS_TRUSTED` is `KEY OFFENDING-PATH`.
/// A launcher in the user's directory is replaced by the attacker's
/// program first. The step is refused with one line naming the path; the
/// attacker's program never runs.
#[test]
fn trusted_item9_untrusted_plugstack_paths_refuse_the_step() {
    let Some(a) = Attacks::for_phase("trusted") else {
        return;
    };
    let var = std::env::var("SIFRUN_ATTACKS_TRUSTED").expect("set by tests/slurm/ecl-attacks");
    let (key, offending) = var.split_once(' ').unwrap();
    let d = a.user_dir();
    let ran = d.path().join("attacker-ran");
    if key == "launcher"
        && let Ok(launcher) = std::env::var("SIFRUN_ATTACKS_LAUNCHER")
        && fs::metadata(Path::new(&launcher).parent().unwrap())
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == my_uid())
    {
        let evil = Path::new(&launcher).with_extension("new");
        fs::write(
            &evil,
            format!("#!/bin/sh\nid > {}\nexit 1\n", ran.display()),
        )
        .unwrap();
        chmod(&evil, 0o755);
        fs::rename(&evil, &launcher).unwrap();
    }
    let task_ran = d.path().join("task-ran");
    let out = step_in(
        d.path(),
        &a.image("approved.sif"),
        &[
            "sh",
            "-c",
            &format!("touch {}; cat /etc/image-marker", task_ran.display()),
        ],
    );
    let (o, e) = out_text(&out);
    assert!(
        !out.status.success() && !task_ran.exists(),
        "{key} at {offending}: the step's task ran (in the image or on the host): {o}{e}"
    );
    assert!(!ran.exists(), "root ran the attacker's launcher");
    let naming = e.lines().filter(|l| l.contains(offending)).count();
    assert_eq!(naming, 1, "{key}: one line naming {offending}: {e}");
}

// ---------------------------------------------------------------- item 10

/// Every mount a task sees is nosuid and nodev (except the host's /dev and
/// its ptys, where devices are meant to work), submounts of the recursive
/// binds included.
fn assert_mounts_safe(what: &str, out: &Output) {
    let (o, e) = out_text(out);
    assert!(out.status.success(), "{what}: {e}");
    for sub in ["/dev/shm", "/sys/fs/cgroup"] {
        let on_host = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(sub));
        if on_host {
            assert!(
                o.lines().any(|l| l.split_whitespace().nth(4) == Some(sub)),
                "{what}: {sub} is missing inside: {o}"
            );
        }
    }
    let bad = unsafe_mounts(&o);
    assert!(
        bad.is_empty(),
        "{what}: mounts without nosuid/nodev: {bad:#?}"
    );
}

fn mounts_in(a: &Attacks, img: &Path) {
    let d = a.user_dir();
    let out = exec_in(d.path(), &[s(img), "cat", "/proc/self/mountinfo"]);
    assert_mounts_safe("exec", &out);
    let out = step_in(d.path(), img, &["cat", "/proc/self/mountinfo"]);
    assert_mounts_safe("srun", &out);
}

#[test]
fn ecl_item10_every_mount_is_nosuid_nodev() {
    let Some(a) = Attacks::for_phase("ecl") else {
        return;
    };
    mounts_in(&a, &a.image("approved.sif"));
}

#[test]
fn plain_item10_every_mount_is_nosuid_nodev() {
    let Some((a, _dir, img)) = with_users_image("plain", "plain-image") else {
        return;
    };
    mounts_in(&a, &img);
}

/// `sifrun mount` applies the site ECL as exec does.
#[test]
fn ecl_item10_sifrun_mount_refuses_an_image_the_ecl_denies() {
    let Some((_a, d, mine)) = with_users_image("ecl", "user-unsigned") else {
        return;
    };
    let dir = d.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    let mut child = Command::new(sifrun_bin())
        .args(["mount", s(&mine), s(&dir)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut mounted = false;
    while child.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(10) {
        if fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(s(&dir))
        {
            mounted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let shown = dir.join("etc/image-marker").exists();
    if child.try_wait().unwrap().is_none() {
        let _ = Command::new("fusermount3").arg("-u").arg(&dir).output();
        let _ = kill("TERM", child.id() as i32);
    }
    let out = finish(Running(Some(child)), Duration::from_secs(10));
    let (_, e) = out_text(&out);
    assert!(
        !mounted && !shown,
        "sifrun mount served an image the site ECL denies"
    );
    assert!(
        e.contains("ECL") && e.contains("denied"),
        "no ECL denial: {e}"
    );
}
