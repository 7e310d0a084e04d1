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
        err.contains("sifrun: --sif-image=/nonexistent.sif"),
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
