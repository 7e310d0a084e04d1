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

/// A busybox image with a marker file, built as the test user in /tmp.
fn image(dir: &std::path::Path) -> std::path::PathBuf {
    use std::fs;
    use std::os::unix::fs::symlink;
    let root = dir.join("rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "home", "var/tmp"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "id", "cat", "readlink", "echo", "ls", "sleep"] {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    fs::write(root.join("etc/image-marker"), "inside-the-image\n").unwrap();
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
    if !cluster_up() || !std::path::Path::new("/bin/busybox").exists() {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = image(dir.path());
    let opt = format!("--sif-image={}", img.display());
    let out = Command::new("srun")
        .args([
            "-n2",
            &opt,
            "sh",
            "-c",
            "echo $(id -u) $(readlink /proc/self/ns/user) $(cat /etc/image-marker)",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
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

    // Nothing is left behind.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = ours();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        !std::fs::read_to_string("/proc/mounts")
            .unwrap()
            .contains("sifrun:")
    );
}

#[test]
fn a_batch_script_runs_inside_the_image() {
    if !cluster_up() || !std::path::Path::new("/bin/busybox").exists() {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = image(dir.path());
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
}

#[test]
fn slurms_own_container_option_runs_the_image_and_never_a_stale_one() {
    if !cluster_up() || !std::path::Path::new("/bin/busybox").exists() {
        return;
    }
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let img = image(dir.path());
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
