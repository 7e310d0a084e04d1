//! Load: 50 `sifrun exec` runs at once, as an unprivileged user. Alone in
//! its test binary, so the processes and descriptors counted before and
//! after are this test's only.

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sifrun_tests::*;

/// Our processes and their open descriptors.
fn processes_and_fds() -> (usize, usize) {
    use std::os::unix::fs::MetadataExt;
    let me = fs::metadata("/proc/self").unwrap().uid();
    let mut procs = 0;
    let mut fds = 0;
    for p in fs::read_dir("/proc").unwrap().flatten() {
        if p.file_name().to_string_lossy().parse::<u32>().is_err()
            || p.metadata().map(|m| m.uid()).ok() != Some(me)
        {
            continue;
        }
        procs += 1;
        fds += fs::read_dir(p.path().join("fd"))
            .map(|d| d.count())
            .unwrap_or(0);
    }
    (procs, fds)
}

#[test]
fn fifty_parallel_runs_all_succeed_and_leave_nothing() {
    if !containers_can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (img, want) = payload_image(dir.path(), "img", 3);
    let mounts_before = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (procs_before, fds_before) = processes_and_fds();
    let t = Instant::now();
    let children: Vec<_> = (0..50)
        .map(|_| {
            Command::new(sifrun_bin())
                .args(["exec", s(&img), "md5sum", "/payload"])
                .current_dir(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).starts_with(&want) {
            failures.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    let elapsed = t.elapsed();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    poll_until("the containers to go", Duration::from_secs(10), || {
        processes_and_fds().0 <= procs_before
    });
    let (procs_after, fds_after) = processes_and_fds();
    assert_eq!(
        fs::read_to_string("/proc/self/mountinfo").unwrap(),
        mounts_before
    );
    // Concurrent tests of this binary may hold a few descriptors.
    assert!(
        fds_after <= fds_before + 10,
        "descriptors {fds_before} -> {fds_after}"
    );
    eprintln!(
        "50 parallel runs in {elapsed:?}: 0 failures; processes {procs_before} -> {procs_after}, fds {fds_before} -> {fds_after}"
    );
}
