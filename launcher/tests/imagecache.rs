//! The image cache across processes (real pids, real SIGKILL): N
//! processes asking at once for the same new entry make one conversion and
//! N-1 waiters that all get the same complete file; a converter killed
//! with SIGKILL leaves a stale lock the next request recovers; no torn
//! file is ever visible under the entry's name.
//!
//! The processes are this test binary run again with `--exact
//! cache_child`: [`cache_child`] does nothing unless `CACHE_CHILD_ROOT` is
//! set.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use launcher::imagecache::{Cache, Key};

const DIGEST: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
/// The image the children write: 4 MiB, in 64 chunks.
const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 64;

/// A child: ensures the entry, converting (counted in ROOT/count) by
/// writing CHUNKS chunks with `CACHE_CHILD_PAUSE_MS` between them.
#[test]
fn cache_child() {
    let Some(root) = std::env::var_os("CACHE_CHILD_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let pause: u64 = std::env::var("CACHE_CHILD_PAUSE_MS")
        .unwrap()
        .parse()
        .unwrap();
    let cache = Cache::new(root.join("cache"));
    let key = Key::new(DIGEST, "gzip").unwrap();
    let r = cache
        .ensure(&key, "test-image", &|l| eprintln!("progress: {l}"), |out| {
            let mut count = OpenOptions::new()
                .append(true)
                .create(true)
                .open(root.join("count"))
                .unwrap();
            writeln!(count, "{}", std::process::id()).unwrap();
            let mut f = fs::File::create(out).unwrap();
            for i in 0..CHUNKS {
                f.write_all(&[i as u8; CHUNK]).unwrap();
                std::thread::sleep(Duration::from_millis(pause));
            }
            Ok(())
        })
        .unwrap();
    println!("ENTRY {} converted={}", r.path.display(), r.converted);
}

fn child(root: &Path, pause_ms: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "cache_child", "--nocapture", "--test-threads=1"])
        .env("CACHE_CHILD_ROOT", root)
        .env("CACHE_CHILD_PAUSE_MS", pause_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn entry(root: &Path) -> PathBuf {
    Cache::new(root.join("cache")).entry_path(&Key::new(DIGEST, "gzip").unwrap())
}

/// The entry is absent or complete (checks the size and every chunk).
fn assert_not_torn(path: &Path) {
    if let Ok(data) = fs::read(path) {
        assert_eq!(data.len(), CHUNK * CHUNKS, "torn entry visible");
        for (i, c) in data.chunks(CHUNK).enumerate() {
            assert!(c.iter().all(|&b| b == i as u8), "chunk {i} wrong");
        }
    }
}

fn conversions(root: &Path) -> usize {
    fs::read_to_string(root.join("count"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn concurrent_processes_convert_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let n = 6;
    let mut children: Vec<Child> = (0..n).map(|_| child(root, 50)).collect();
    let path = entry(root);
    let deadline = Instant::now() + Duration::from_secs(120);
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(Instant::now() < deadline, "children did not finish");
        assert_not_torn(&path);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut converted = 0;
    let mut waited = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let line = format!("ENTRY {} converted=", path.display());
        assert!(stdout.contains(&line), "{stdout}");
        converted += usize::from(stdout.contains("converted=true"));
        waited += usize::from(stderr.contains("progress: test-image: waiting for"));
    }
    assert_eq!(conversions(root), 1, "exactly one conversion");
    assert_eq!(converted, 1);
    assert_eq!(waited, n - 1, "the others waited");
    assert_not_torn(&path);
    assert!(path.exists());
}

#[test]
fn a_killed_conversion_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = entry(root);
    let lock_dir = root.join("cache/v1/lock");
    // A slow converter (about 60 s), killed once it has started.
    let mut slow = child(root, 1000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while conversions(root) == 0 {
        assert!(Instant::now() < deadline, "the converter did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    slow.kill().unwrap(); // SIGKILL
    slow.wait().unwrap();
    assert!(!path.exists());
    assert_eq!(
        fs::read_dir(&lock_dir).unwrap().count(),
        1,
        "a stale lock is left"
    );
    // The next request breaks it and converts.
    let out = child(root, 0).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("broke a stale cache lock"), "{stderr}");
    assert!(stderr.contains("is gone"), "{stderr}");
    assert_eq!(conversions(root), 2);
    assert_not_torn(&path);
    assert!(path.exists());
    assert_eq!(fs::read_dir(&lock_dir).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(root.join("cache/v1/tmp")).unwrap().count(),
        0,
        "the killed converter's work directory is removed"
    );
}
