//! The SPANK plugin on the live single-node cluster that tests/run-all starts
//! (tests/slurm/cluster) with the plugin in plugstack.conf.d. Runs as the
//! unprivileged test user.

use std::process::Command;

use sifrun_tests::*;

fn cluster_up() -> bool {
    let up = have("srun")
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
        && std::path::Path::new("/etc/slurm/plugstack.conf.d/sifrun.conf").exists();
    if !up {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_CLUSTER").is_none(),
            "the test cluster with the plugin must be running (tests/run-all starts it)"
        );
        eprintln!("skipping: no test cluster with the plugin");
    }
    up
}

fn srun(args: &[&str]) -> std::process::Output {
    Command::new("srun").args(args).output().unwrap()
}

fn srun_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new("srun")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn options_are_listed_and_plain_steps_still_run() {
    if !cluster_up() {
        return;
    }
    let help =
        String::from_utf8(Command::new("srun").arg("--help").output().unwrap().stdout).unwrap();
    for opt in [
        "--sif-image=IMAGE",
        "--sif-bind",
        "--sif-gpu",
        "--sif-writable-tmpfs",
    ] {
        assert!(help.contains(opt), "srun --help lacks {opt}");
    }
    let out = srun(&["-n2", "sh", "-c", "echo task-$SLURM_PROCID"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["task-0", "task-1"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("sifrun"),
        "noise on plain steps"
    );
}

#[test]
fn a_task_that_asks_for_an_image_never_runs_on_the_host() {
    if !cluster_up() {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let marker = dir.path().join("ran-on-host");
    let script = format!("touch {}", marker.display());
    let out = srun(&["-n2", "--sif-image=/nonexistent.sif", "sh", "-c", &script]);
    assert!(
        !out.status.success(),
        "a step with an image it cannot run succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent.sif") && err.contains("the task was not started"),
        "{err}"
    );
    assert!(!marker.exists(), "the task ran on the host");
    let out = Command::new("srun")
        .args(["-n1", "sh", "-c", &script])
        .env("SIFRUN_IMAGE", "/from-env.sif")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/from-env.sif"));
    assert!(!marker.exists(), "the task ran on the host");
}

#[test]
fn bad_option_values_are_refused_with_the_option_named() {
    if !cluster_up() {
        return;
    }
    let out = srun(&["-n1", "--sif-gpu=cuda", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sif-gpu: \"cuda\" is not a GPU policy"),
        "{err}"
    );
    let out = srun(&["-n1", "--sif-workdir=relative", "true"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sif-workdir"));
}

/// A scratch directory in /tmp with the busybox image in it, or `None` when
/// there is no cluster (or no busybox) to test with.
fn setup() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !cluster_up() || !std::path::Path::new("/bin/busybox").exists() {
        return None;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = image(dir.path());
    Some((dir, img))
}

/// A busybox image with a marker file, built as the test user in /tmp.
fn image(dir: &std::path::Path) -> std::path::PathBuf {
    image_with_marker(dir, "inside-the-image\n")
}

/// [`image`] with another marker.
fn image_with_marker(dir: &std::path::Path, marker: &str) -> std::path::PathBuf {
    use std::fs;
    use std::os::unix::fs::symlink;
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home", "var/tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "id", "cat", "readlink", "echo", "ls", "sleep", "true"] {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    fs::write(root.join("etc/image-marker"), marker).unwrap();
    let img = dir.join("step.sif");
    ok(sifrun(&[
        "build",
        img.to_str().unwrap(),
        root.to_str().unwrap(),
    ]));
    img
}

fn ours() -> Vec<String> {
    let out = Command::new("ps")
        .args(["-u", &whoami(), "-o", "args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("slurm-hold"))
        .map(str::to_owned)
        .collect()
}

fn whoami() -> String {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn every_task_runs_in_the_image_in_one_shared_namespace() {
    let Some((dir, img)) = setup() else { return };
    let opt = format!("--sif-image={}", img.display());
    let out = srun_in(
        dir.path(),
        &[
            "-n2",
            &opt,
            "sh",
            "-c",
            "echo $(id -u) $(readlink /proc/self/ns/user) $(cat /etc/image-marker)",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(
        lines[0], lines[1],
        "both tasks share one user namespace: {text}"
    );
    let host_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    assert!(
        lines[0].starts_with(&format!("{} user:[", whoami())),
        "{text}"
    );
    assert!(
        !lines[0].contains(&host_ns.display().to_string()),
        "tasks ran in the host namespace: {text}"
    );
    assert!(lines[0].ends_with("inside-the-image"), "{text}");

    // The same through SIFRUN_IMAGE, and the working directory is kept.
    let out = Command::new("srun")
        .args(["-n1", "sh", "-c", "pwd; cat /etc/image-marker"])
        .env("SIFRUN_IMAGE", &img)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\ninside-the-image\n", dir.path().display())
    );

    // A non-SIF file fails every task with the reason.
    let bogus = dir.path().join("bogus.sif");
    std::fs::write(&bogus, "not an image").unwrap();
    let out = Command::new("srun")
        .args(["-n2", &format!("--sif-image={}", bogus.display()), "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a SIF image") && err.contains("the task was not started"),
        "{err}"
    );

    // Nothing is left behind (other tests' holders may be running).
    let mine = |l: &String| l.contains(dir.path().to_str().unwrap());
    wait_until("this test's holders to go", || !ours().iter().any(mine));
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains("sifrun:")
    );
}

#[test]
fn a_batch_script_runs_inside_the_image() {
    let Some((dir, img)) = setup() else { return };
    let out = Command::new("sbatch")
        .args([
            "--wait",
            "-o",
            "batch.out",
            &format!("--sif-image={}", img.display()),
            "--wrap",
            "cat /etc/image-marker",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("batch.out")).unwrap();
    assert_eq!(text, "inside-the-image\n");

    // The script starts steps with srun from inside the image (the host's
    // Slurm client is made available); they inherit the image, or take
    // another one when asked.
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = image(&other_dir);
    std::fs::write(other_dir.join("rootfs/etc/image-marker"), "unused").unwrap();
    let script = format!(
        "#!/bin/sh\n\
echo batch $(cat /etc/image-marker) $(readlink /proc/self/ns/user)\n\
srun -n2 sh -c 'echo step $(cat /etc/image-marker) $(readlink /proc/self/ns/user)'\n\
srun -n1 --sif-image={} sh -c 'echo other $(cat /etc/hostname-not-there 2>/dev/null || echo ok)'\n",
        other.display()
    );
    std::fs::write(dir.path().join("job.sh"), script).unwrap();
    let out = Command::new("sbatch")
        .args([
            "--wait",
            "-n2",
            "-o",
            "nested.out",
            &format!("--sif-image={}", img.display()),
            "job.sh",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("nested.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_ns = std::fs::read_link("/proc/self/ns/user").unwrap();
    let host_ns = host_ns.to_string_lossy();
    // srun's own notices ("step creation temporarily disabled, retrying")
    // may come between the steps' lines.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("batch inside-the-image user:["),
        "{text}"
    );
    let steps: Vec<&&str> = lines.iter().filter(|l| l.starts_with("step ")).collect();
    assert_eq!(steps.len(), 2, "{text}");
    for l in &steps {
        assert!(l.starts_with("step inside-the-image user:["), "{text}");
        assert!(
            !l.contains(&*host_ns),
            "a step ran in the host namespace: {text}"
        );
    }
    assert_eq!(
        steps[0], steps[1],
        "the step's tasks share a namespace: {text}"
    );
    assert!(lines.contains(&"other ok"), "{text}");
}

#[test]
fn slurms_own_container_option_runs_the_image_and_never_a_stale_one() {
    let Some((dir, img)) = setup() else { return };
    let run = |args: &[&str], inherited: Option<&str>| {
        let mut c = Command::new("srun");
        c.args(args).current_dir(dir.path());
        match inherited {
            Some(v) => c.env("SLURM_CONTAINER", v),
            None => c.env_remove("SLURM_CONTAINER"),
        };
        c.output().unwrap()
    };
    let opt = format!("--container={}", img.display());
    let out = run(&["-n2", &opt, "cat", "/etc/image-marker"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "inside-the-image\ninside-the-image\n"
    );

    // Inside a job started with --container=A, SLURM_CONTAINER stays A;
    // `srun --container=B` must run B.
    let out = run(
        &["-n1", &opt, "cat", "/etc/image-marker"],
        Some("/tmp/stale-A.sif"),
    );
    assert!(
        out.status.success(),
        "ran the stale image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside-the-image\n");

    // Plain srun inherits the job's container.
    let out = run(
        &["-n1", "cat", "/etc/image-marker"],
        Some(img.to_str().unwrap()),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside-the-image\n");

    // A directory is an OCI bundle: left to Slurm (which ignores it without oci.conf).
    let out = run(
        &[
            "-n1",
            &format!("--container={}", dir.path().display()),
            "true",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Conflicting --container and --sif-image are refused, naming both.
    let out = run(&["-n1", &opt, "--sif-image=/tmp/other.sif", "true"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name different images"));
}

/// srun, sbatch and salloc export SLURM_CONTAINER and (23.02+)
/// SLURM_CONTAINER_ID only where they are unset, so inside a batch job
/// started with `--container=A --container-id=…` both stay the job's: a
/// nested `srun --container=B --container-id=…` must still run exactly B,
/// and a plain `srun` the job's A (issue 13; run-all runs this suite on
/// every series).
#[test]
fn nested_steps_get_exactly_their_own_container_on_this_series() {
    let Some((dir, img)) = setup() else { return };
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = image_with_marker(&other_dir, "the-other-image\n");
    let help = srun(&["--help"]);
    let with_id = String::from_utf8_lossy(&help.stdout).contains("--container-id");
    let id = |v: &str| {
        if with_id {
            format!("--container-id={v}")
        } else {
            String::new()
        }
    };
    let script = format!(
        "#!/bin/sh\n\
echo \"batch $(cat /etc/image-marker)\"\n\
srun -n1 --container={other} {step_id} sh -c 'echo \"own $(cat /etc/image-marker) $SLURM_CONTAINER\"'\n\
srun -n1 sh -c 'echo \"inherited $(cat /etc/image-marker) $SLURM_CONTAINER\"'\n",
        other = other.display(),
        step_id = id("step-b"),
    );
    std::fs::write(dir.path().join("nested.sh"), script).unwrap();
    let mut args = vec![
        "--wait".to_owned(),
        "-o".to_owned(),
        "nested.out".to_owned(),
        format!("--container={}", img.display()),
    ];
    if with_id {
        args.push(id("job-a"));
    }
    args.push("nested.sh".to_owned());
    let out = Command::new("sbatch")
        .args(&args)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("nested.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("srun: ")).collect();
    assert_eq!(
        lines,
        vec![
            "batch inside-the-image".to_owned(),
            format!("own the-other-image {}", other.display()),
            format!("inherited inside-the-image {}", img.display()),
        ],
        "{text}"
    );
}

/// An image whose environment script sets variables, one of them Slurm's.
fn image_with_env(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join(".singularity.d/env")).unwrap();
    std::fs::write(
        root.join(".singularity.d/env/90-environment.sh"),
        "export PATH=/opt/app/bin:$PATH\nexport APP_HOME=/opt/app\nexport SLURM_PROCID=99\n",
    )
    .unwrap();
    image(dir)
}

#[test]
fn tasks_get_the_images_environment_and_keep_slurms() {
    let Some((dir, _)) = setup() else { return };
    let img = image_with_env(&dir.path().join("env"));
    let out = Command::new("srun")
        .args([
            "-n2",
            &format!("--sif-image={}", img.display()),
            "--sif-env=GREETING=hello world",
            "sh",
            "-c",
            "echo \"$SLURM_PROCID|$GREETING|$APP_HOME|$PATH|${LD_LIBRARY_PATH-unset}\"",
        ])
        .env("LD_LIBRARY_PATH", "/host/lib")
        .env("SIFRUN_ENV_FROM_PREFIX", "yes")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    let path = "/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(
        lines,
        [
            format!("0|hello world|/opt/app|{path}|unset"),
            format!("1|hello world|/opt/app|{path}|unset"),
        ]
    );
    let out = Command::new("srun")
        .args([
            "-n1",
            &format!("--sif-image={}", img.display()),
            "sh",
            "-c",
            "echo $FROM_PREFIX",
        ])
        .env("SIFRUN_ENV_FROM_PREFIX", "yes")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "yes\n");
}

#[test]
fn salloc_steps_run_in_the_image() {
    let Some((dir, img)) = setup() else { return };
    let out = Command::new("salloc")
        .args([
            "-n1",
            &format!("--sif-image={}", img.display()),
            "srun",
            "cat",
            "/etc/image-marker",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside-the-image\n");
}

/// Processes of ours that belong to containers or tasks of these tests.
fn leftovers(marker: &str) -> Vec<String> {
    let out = Command::new("ps")
        .args(["-u", &whoami(), "-o", "pid=,args="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("slurm-hold") || l.contains(marker))
        .filter(|l| !l.contains(" ps -u"))
        .map(str::to_owned)
        .collect()
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    poll_until(what, std::time::Duration::from_secs(30), done);
}

#[test]
fn scancel_and_kill_9_leave_no_process_and_no_mount() {
    let Some((dir, img)) = setup() else { return };
    let opt = format!("--sif-image={}", img.display());
    // Each fault twice.
    for round in 0..2 {
        let marker = format!("sleep {}", 300 + std::process::id() % 97 + round * 100);

        // scancel mid-step.
        let name = format!("sifrun-scancel-{}-{round}", std::process::id());
        let mut step = Command::new("srun")
            .args(["-n2", "-J", &name, &opt, "sh", "-c", &marker])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the tasks", || {
            leftovers(&marker)
                .iter()
                .filter(|l| l.contains(&marker))
                .count()
                >= 2
        });
        ok(Command::new("scancel")
            .args(["-n", &name])
            .output()
            .unwrap());
        let _ = step.wait();
        wait_until("the step's processes to go", || {
            leftovers(&marker).is_empty()
        });

        // kill -9 of one task: the step ends when the other does; nothing stays.
        let script = format!("if [ $SLURM_PROCID = 0 ]; then {marker}; else sleep 3; fi");
        let mut step = Command::new("srun")
            .args(["-n2", &opt, "sh", "-c", &script])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut victim = String::new();
        wait_until("task 0", || {
            victim = leftovers(&marker)
                .iter()
                .find(|l| {
                    l.trim_start()
                        .split_once(' ')
                        .is_some_and(|(_, a)| a == marker)
                })
                .map(|l| l.split_whitespace().next().unwrap().to_owned())
                .unwrap_or_default();
            !victim.is_empty()
        });
        ok(Command::new("kill").args(["-9", &victim]).output().unwrap());
        let status = step.wait().unwrap();
        assert!(!status.success(), "a killed task fails the step");
        wait_until("the step's processes to go", || {
            leftovers(&marker).is_empty()
        });
        assert!(
            !std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .contains("sifrun:")
        );
    }
}

/// Open descriptors of all our processes.
fn our_fds() -> usize {
    use std::os::unix::fs::MetadataExt;
    let me: u32 = whoami().parse().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|p| p.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|p| p.metadata().map(|m| m.uid()).ok() == Some(me))
        .map(|p| {
            std::fs::read_dir(p.path().join("fd"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum()
}

#[test]
fn fifty_back_to_back_steps_leak_nothing() {
    let Some((dir, img)) = setup() else { return };
    let opt = format!("--sif-image={}", img.display());
    let image_holders = || {
        leftovers("slurm-hold")
            .into_iter()
            .filter(|l| l.contains(img.to_str().unwrap()))
            .count()
    };
    // As many tasks as the node has CPUs, 50 steps in a row.
    let cpus: usize = String::from_utf8(ok(Command::new("sinfo")
        .args(["-h", "-o", "%c"])
        .output()
        .unwrap()))
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let tasks = format!("-n{cpus}");
    let fds_before = our_fds();
    for i in 0..50 {
        let out = srun_in(
            dir.path(),
            &[&tasks, &opt, "sh", "-c", &format!("echo step-{i}")],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("step-{i}\n").repeat(cpus),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until("the last holder to go", || image_holders() == 0);
    // Other tests run concurrently: allow their processes' descriptors, but
    // not one per step.
    let fds_after = our_fds();
    assert!(
        fds_after < fds_before + 40,
        "descriptors grew from {fds_before} to {fds_after} over 50 steps"
    );
}

/// What tests/run-all configures through `config=` (an admin file): a bind
/// into every container and a forbidden option.
#[test]
fn the_admin_config_binds_and_forbids() {
    let marker = std::path::Path::new("/etc/sifrun-test-admin/marker");
    if !cluster_up() || !std::path::Path::new("/bin/busybox").exists() {
        return;
    }
    if !marker.exists() {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_CLUSTER").is_none(),
            "tests/run-all configures an admin file with a bind of /etc/sifrun-test-admin"
        );
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = image(dir.path());
    let opt = format!("--sif-image={}", img.display());
    let out = srun_in(dir.path(), &["-n1", &opt, "cat", "/admin/marker"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(marker).unwrap(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = srun_in(dir.path(), &["-n1", &opt, "--sif-writable-tmpfs", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--sif-writable-tmpfs") && err.contains("disabled on this cluster"),
        "{err}"
    );
}

/// A command the image lacks fails the task with Slurm's line, even when the
/// host has it: the task never falls back to the host.
#[test]
fn a_command_missing_from_the_image_fails_and_never_runs_on_the_host() {
    let Some((dir, img)) = setup() else { return };
    let marker = dir.path().join("ran-on-host");
    let out = srun_in(
        dir.path(),
        &[
            "-n2",
            &format!("--sif-image={}", img.display()),
            "/usr/bin/touch",
            marker.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/usr/bin/touch: No such file or directory"),
        "{err}"
    );
    assert!(!marker.exists(), "the task ran on the host");
}

/// A PMIx step's ranks find the step's PMIx server directory and munge's
/// socket inside the container, at the host's paths.
#[test]
fn pmix_steps_see_their_server_directory_and_munge() {
    let Some((dir, img)) = setup() else { return };
    let out = srun_in(
        dir.path(),
        &[
            "--mpi=pmix",
            "-n2",
            &format!("--sif-image={}", img.display()),
            "sh",
            "-c",
            "test -d \"$PMIX_SERVER_TMPDIR\" && test -S /run/munge/munge.socket.2 && echo pmix-ok $PMIX_RANK",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(lines, ["pmix-ok 0", "pmix-ok 1"]);
}

#[test]
fn tasks_have_no_privilege_and_the_job_environment_never_steers_root_code() {
    use std::fs;
    let Some((dir, img)) = setup() else { return };
    let d = dir.path();
    fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // A library that records who loaded it, and a fake `sifrun` and `sh`
    // first on PATH that record who ran them.
    let src = d.join("evil.c");
    fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <unistd.h>\n\
             __attribute__((constructor)) static void mark(void) {{\n\
             char p[512]; snprintf(p, sizeof p, \"{}/loaded-%d-%d\", (int)geteuid(), (int)getpid());\n\
             FILE *f = fopen(p, \"w\"); if (f) fclose(f); }}\n",
            d.display()
        ),
    )
    .unwrap();
    let evil = d.join("libevil.so");
    ok(Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&evil)
        .arg(&src)
        .output()
        .unwrap());
    let bin = d.join("bin");
    fs::create_dir(&bin).unwrap();
    for fake in ["sifrun", "sh", "mount", "fusermount3"] {
        let p = bin.join(fake);
        fs::write(
            &p,
            format!("#!/bin/sh\ntouch {}/ran-{fake}-$(id -u)\n", d.display()),
        )
        .unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let opt = format!("--sif-image={}", img.display());
    let out = Command::new("srun")
        .args([
            "-n2",
            &opt,
            "/bin/sh",
            "-c",
            "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs)' /proc/self/status; \
             cat /shadow >/dev/null 2>&1 && echo SHADOW-READ; \
             ls /rootdir >/dev/null 2>&1 && echo ROOT-LISTED; true",
        ])
        .current_dir(d)
        .env("LD_PRELOAD", &evil)
        .env("LD_LIBRARY_PATH", d)
        // The fakes first, then the Slurm the suite runs against (its
        // clients lead the inherited PATH: tests/run-all, per series).
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        // SIFRUN_BIND is --sif-bind's variable: a bind is made with the
        // user's rights only, never root's.
        .env("SIFRUN_BIND", "/etc/shadow:/shadow,/root:/rootdir")
        .env("SIFRUN_LOG", "trace")
        .env("SIFRUN_TOPOLOGY", "../../etc")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me = whoami();
    assert_eq!(text.matches("NoNewPrivs:\t1").count(), 2, "{text}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            text.matches(&format!("{cap}:\t0000000000000000")).count(),
            2,
            "{cap}: {text}"
        );
    }
    let my_gid = String::from_utf8(ok(Command::new("id").arg("-g").output().unwrap())).unwrap();
    for (field, want) in [("Uid:", me.as_str()), ("Gid:", my_gid.trim())] {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(field)).collect();
        assert_eq!(lines.len(), 2, "{text}");
        for line in lines {
            assert!(line.split_whitespace().skip(1).all(|u| u == want), "{line}");
        }
    }
    assert!(
        !text.contains("SHADOW-READ") && !text.contains("ROOT-LISTED"),
        "a bind lent root's rights: {text}"
    );
    let marks: Vec<String> = fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("loaded-") || n.starts_with("ran-"))
        .collect();
    // The preload works for the user's own processes (srun, the tasks),
    // which shows it was in force; root never loaded or ran anything.
    assert!(
        marks
            .iter()
            .any(|m| m.starts_with(&format!("loaded-{me}-"))),
        "{marks:?}"
    );
    assert!(
        marks
            .iter()
            .all(|m| !m.starts_with("loaded-0-") && !m.starts_with("ran-")),
        "root code followed the job's environment: {marks:?}"
    );
}

#[test]
fn hostile_option_strings_fail_the_step_and_never_run_on_the_host() {
    let Some((dir, img)) = setup() else { return };
    let marker = dir.path().join("ran-on-host");
    let script = format!("touch {}", marker.display());
    let image = format!("--sif-image={}", img.display());
    for bad in [
        "--sif-bind=/tmp\n/etc:/x",
        "--sif-bind=/tmp:/x:suid",
        "--sif-bind=/tmp:/x:rw,dev",
        "--sif-bind=/tmp:/x:ro:exec",
        "--sif-bind=/tmp:../../etc",
        "--sif-bind=/tmp:/x/../../../etc",
        "--sif-env=A",
        "--sif-env=X=1\nY=2",
        "--sif-workdir=/tmp\n/x",
    ] {
        let out = srun_in(dir.path(), &["-n1", &image, bad, "sh", "-c", &script]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} ran: {err}");
        assert!(!err.contains("panicked"), "{bad:?}: {err}");
        assert!(err.contains("sif"), "{bad:?}: no reason given: {err}");
        assert!(!marker.exists(), "{bad:?}: the task ran on the host");
    }
}

#[test]
fn killing_the_holder_mid_read_ends_the_step_and_leaves_nothing() {
    let Some((dir, _)) = setup() else { return };
    let (img, _) = payload_image(dir.path(), "reader", 1);
    let opt = format!("--sif-image={}", img.display());
    let holders = || {
        leftovers("slurm-hold")
            .into_iter()
            .filter(|l| l.contains(img.to_str().unwrap()))
            .map(|l| l.split_whitespace().next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    for round in 0..2 {
        let marker = format!("reader-{}-{round}", std::process::id());
        let script =
            format!("while cat /payload >/dev/null; do :; done; echo {marker} failed; exit 7");
        let step = Command::new("srun")
            .args(["-n2", &opt, "sh", "-c", &script])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the readers", || {
            leftovers(&marker)
                .iter()
                .filter(|l| {
                    l.trim_start().split_once(' ').is_some_and(|(_, args)| {
                        args.contains("sh -c while cat") && !args.starts_with("srun")
                    })
                })
                .count()
                >= 2
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pids = holders();
        assert!(!pids.is_empty());
        let mut kill = Command::new("kill");
        kill.arg("-9").args(&pids);
        ok(kill.output().unwrap());
        // wait_until bounds the wait: a reader hung on the dead server
        // would fail here.
        let t = std::time::Instant::now();
        let out = step.wait_with_output().unwrap();
        assert!(t.elapsed().as_secs() < 30, "the step hung");
        assert!(!out.status.success(), "the step survived its server");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .matches("failed")
                .count(),
            2,
            "every reader saw the error"
        );
        wait_until("the step's processes to go", || {
            leftovers(&marker).is_empty() && holders().is_empty()
        });
        assert!(
            !std::fs::read_to_string("/proc/mounts")
                .unwrap()
                .contains("sifrun:")
        );
    }
}

#[test]
fn an_image_replaced_during_a_step_keeps_serving_the_checked_bytes() {
    use std::fs;
    let Some((dir, _)) = setup() else { return };
    let d = dir.path();
    let (a, sum_a) = payload_image(d, "a", 1);
    let (b, sum_b) = payload_image(d, "b", 2);
    assert_ne!(sum_a, sum_b);
    for how in ["replaced", "deleted"] {
        let target = d.join("running.sif");
        fs::copy(&a, &target).unwrap();
        let flag = d.join("go");
        let _ = fs::remove_file(&flag);
        let script = format!(
            "while [ ! -e {} ]; do sleep 0.05; done; md5sum /payload",
            flag.display()
        );
        let step = Command::new("srun")
            .args(["-n2", &format!("--sif-image={}", target.display())])
            .args(["sh", "-c", &script])
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The tasks themselves (srun's own command line has the script
        // too): only then has the holder opened the image.
        wait_until("the tasks", || {
            leftovers(&flag.display().to_string())
                .iter()
                .filter(|l| {
                    l.trim_start().split_once(' ').is_some_and(|(_, args)| {
                        args.contains("sh -c while") && !args.starts_with("srun")
                    })
                })
                .count()
                >= 2
        });
        fs::remove_file(&target).unwrap();
        if how == "replaced" {
            fs::copy(&b, &target).unwrap();
        }
        fs::write(&flag, "").unwrap();
        let out = step.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            text.matches(&sum_a).count(),
            2,
            "{how}: the tasks read other bytes: {text} (the new file is {sum_b})"
        );
        let _ = fs::remove_file(&target);
    }
}

/// An image whose runscript marks its output.
fn image_with_runscript(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join(".singularity.d")).unwrap();
    let script = root.join(".singularity.d/runscript");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"runscript-ran rank=$SLURM_PROCID args=[$*] marker=$(cat /etc/image-marker)\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    image(dir)
}

#[test]
fn sif_run_runs_the_runscript_with_the_tasks_arguments() {
    let Some((dir, _)) = setup() else { return };
    let img = image_with_runscript(&dir.path().join("run"));
    // Words that name no host command, so srun leaves them as they are.
    let out = srun_in(
        dir.path(),
        &[
            "-n2",
            &format!("--sif-image={}", img.display()),
            "--sif-run",
            "first-word",
            "two words",
            "it's",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [0, 1].map(|r| format!(
            "runscript-ran rank={r} args=[first-word two words it's] marker=inside-the-image"
        ))
    );
    // Without --sif-run the same words are the command.
    let out = srun_in(
        dir.path(),
        &[&format!("--sif-image={}", img.display()), "echo", "plain"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n");
    // The same through SIFRUN_RUN.
    let out = Command::new("srun")
        .args([&format!("--sif-image={}", img.display()), "from-env"])
        .env("SIFRUN_RUN", "1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("runscript-ran rank=0 args=[from-env]"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sif_verbose_shows_each_set_up_phase_on_sruns_stderr() {
    let Some((dir, img)) = setup() else { return };
    let args = ["-n2", &format!("--sif-image={}", img.display())];
    // (The image has busybox's echo, not true.)
    let quiet = srun_in(dir.path(), &[&args[..], &["echo", "ok"]].concat());
    assert!(
        quiet.status.success(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("sifrun:"),
        "quiet by default: {}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    let out = srun_in(
        dir.path(),
        &[&args[..], &["--sif-verbose", "echo", "ok"]].concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let timed = |what: &str| {
        err.lines()
            .any(|l| l.contains(&format!("sifrun: {what} in ")) && l.trim_end().ends_with(" ms"))
    };
    for phase in [
        "request read",
        "container ready",
        "task joined the container",
    ] {
        assert!(timed(phase), "no timing for {phase:?}: {err}");
    }
    // Once per node (the first task), not once per task.
    assert_eq!(err.matches("container ready in").count(), 1, "{err}");
}

/// slurm.conf as the cluster's clients read it.
fn slurm_conf_text() -> String {
    let path = std::env::var("SLURM_CONF").unwrap_or_else(|_| "/etc/slurm/slurm.conf".into());
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A process's `Key:` line of /proc/PID/status, as numbers.
fn status_ids(pid: &str, key: &str) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    Some(
        line[key.len()..]
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect(),
    )
}

/// The output of `id FLAG`, as numbers.
fn id_numbers(flag: &str) -> Vec<u32> {
    let out = Command::new("id").arg(flag).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// Issue 11, section 7: without contain_spank, slurmstepd's init_post_opt
/// (root) starts the holder, which becomes the job's user before exec: every
/// uid and gid the user's and exactly the user's groups (none of root's),
/// as the tasks get them; the verbose line says it started early. With
/// contain_spank the holder starts in user_init, inside the job's
/// namespaces, as before.
#[test]
fn an_early_holder_has_the_job_users_credentials_and_no_others() {
    let Some((dir, img)) = setup() else { return };
    let step = Command::new("srun")
        .args(["-n1", "--sif-verbose"])
        .arg(format!("--sif-image={}", img.display()))
        .args(["sleep", "4"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (uid, gid) = (id_numbers("-u")[0], id_numbers("-g")[0]);
    let mut groups = id_numbers("-G");
    groups.retain(|&g| g != gid);
    groups.sort_unstable();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut checked = 0;
    while checked == 0 && std::time::Instant::now() < deadline {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() != "sifrun-hold" {
                continue;
            }
            let (Some(uids), Some(gids), Some(mut sup)) = (
                status_ids(&pid, "Uid:"),
                status_ids(&pid, "Gid:"),
                status_ids(&pid, "Groups:"),
            ) else {
                continue; // ended meanwhile
            };
            assert_eq!(
                uids, [uid; 4],
                "holder {pid}: real, effective, saved, fs uid"
            );
            assert_eq!(
                gids, [gid; 4],
                "holder {pid}: real, effective, saved, fs gid"
            );
            sup.retain(|&g| g != gid);
            sup.sort_unstable();
            assert_eq!(sup, groups, "holder {pid}: the user's groups only");
            checked += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = step.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(checked > 0, "no holder seen while the step ran: {err}");
    let early = !slurm_conf_text().contains("contain_spank");
    assert_eq!(
        err.contains("holder sifrun-hold, started early"),
        early,
        "contain_spank: {}; {err}",
        !early
    );
}
