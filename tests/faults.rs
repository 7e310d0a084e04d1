//! Fault suite for `sifrun exec` as an unprivileged user: the launcher (the
//! FUSE server) killed while the container reads, and the image deleted or
//! replaced while a container runs. Each fault is repeated; every wait is
//! bounded, so a hang fails the test instead of stalling CI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sifrun_tests::*;

/// Our processes whose command line contains `marker`.
fn ours(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", marker])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn killing_the_server_mid_read_ends_the_container_without_a_hang() {
    if !containers_can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, _) = payload_image(dir.path(), "img", 1);
    for round in 0..3 {
        let marker = format!("reader-{}-{round}", std::process::id());
        let script = format!("while cat /payload >/dev/null; do :; done; echo {marker} done");
        let mut child = Command::new(sifrun_bin())
            .args(["exec", s(&img), "sh", "-c", &script])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The reader itself, inside the container (the launcher's own
        // command line carries the script too).
        poll_until("the reader", Duration::from_secs(20), || {
            ours(&marker).iter().any(|l| {
                l.split_once(' ')
                    .is_some_and(|(_, args)| args.starts_with("sh -c while"))
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        // SIGKILL the launcher, which serves the image, mid-read.
        ok(Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .output()
            .unwrap());
        let t = Instant::now();
        let status = child.wait().unwrap();
        assert!(!status.success());
        poll_until(
            "the container's processes to go",
            Duration::from_secs(10),
            || ours(&marker).is_empty(),
        );
        eprintln!(
            "round {round}: container gone {:?} after the kill",
            t.elapsed()
        );
    }
}

#[test]
fn a_deleted_or_replaced_image_keeps_serving_the_bytes_opened() {
    if !containers_can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, want_a) = payload_image(d, "a", 1);
    let (b, want_b) = payload_image(d, "b", 2);
    assert_ne!(want_a, want_b);
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    for how in ["deleted", "replaced", "renamed-over", "deleted"] {
        let target = d.join("running.sif");
        fs::copy(&a, &target).unwrap();
        let flag = d.join("go");
        let _ = fs::remove_file(&flag);
        // The container waits for the swap before it reads the payload.
        let script = format!(
            "while [ ! -e {} ]; do sleep 0.05; done; md5sum /payload",
            flag.display()
        );
        let child = Command::new(sifrun_bin())
            .args([
                "exec",
                "--bind",
                &format!("{}:{}", d.display(), d.display()),
            ])
            .args([s(&target), "sh", "-c", &script])
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        match how {
            "deleted" => fs::remove_file(&target).unwrap(),
            "replaced" => {
                fs::remove_file(&target).unwrap();
                fs::copy(&b, &target).unwrap();
            }
            _ => {
                let tmp = d.join("new.sif");
                fs::copy(&b, &tmp).unwrap();
                fs::rename(&tmp, &target).unwrap();
            }
        }
        fs::write(&flag, "").unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.starts_with(&want_a),
            "{how}: served other bytes: {text} (want {want_a}, the new file is {want_b})"
        );
        let _ = fs::remove_file(&target);
    }
}
