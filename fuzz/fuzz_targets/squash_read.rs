//! Open an untrusted squashfs and read every file, directory and link the
//! way the FUSE server does: lookups, listings in chunks, attributes, data.
//! Errors are fine; panics, hangs, reads longer than a file and memory
//! beyond the server's bound (tests/fuzz-smoke sets -rss_limit_mb) are
//! findings.

#![no_main]

use std::io::Write;
use std::sync::Arc;

use launcher::squash::{Data, Squash, Tuning};
use libfuzzer_sys::fuzz_target;

/// Inodes visited per input (the tree of a hostile image has no bound).
const VISIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile_in_shm();
    file.write_all(data).unwrap();
    let tuning = Tuning {
        prefetch_threads: 0,
        cache_bytes: 1 << 20,
        readahead_blocks: 0,
    };
    // Half the inputs as a partition shorter than the file.
    let len = (data.len() as u64).saturating_sub(u64::from(data.first().copied().unwrap_or(0) & 1) * 7);
    let Ok(sq) = Squash::open_partition(Arc::new(file), 0, len, tuning) else {
        return;
    };
    let mut queue = vec![1u64];
    let mut visited = 0;
    while let Some(ino) = queue.pop() {
        visited += 1;
        if visited > VISIT {
            break;
        }
        let Some(inode) = sq.inode(ino) else { continue };
        match &inode.data {
            Data::File(_) => {
                if let Ok(bytes) = sq.read(ino, 0, 1 << 20) {
                    assert!(bytes.len() as u64 <= inode.size);
                }
                let _ = sq.read(ino, inode.size.saturating_sub(7), 100);
            }
            Data::Dir(dir) => {
                // In chunks of 3 entries, as the kernel asks.
                let mut done = 0;
                while let Ok(None) = sq.read_dir(ino, dir, done, &mut |name, child, _, n| {
                    if n > done + 3 {
                        return true;
                    }
                    done = n;
                    if queue.len() < VISIT {
                        queue.push(child);
                    }
                    let _ = sq.lookup(ino, name);
                    false
                }) {
                    if done > VISIT as u64 {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
});

fn tempfile_in_shm() -> std::fs::File {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let path = format!("{dir}/sifrun-fuzz-{}", std::process::id());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    f
}
