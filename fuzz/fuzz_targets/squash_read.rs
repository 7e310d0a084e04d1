//! Index an untrusted squashfs and read every file, directory and link the
//! way the FUSE server does. Errors are fine; panics, hangs and reads longer
//! than a file are findings.

#![no_main]

use std::io::Write;
use std::sync::Arc;

use launcher::squash::{Data, Squash, Tuning};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile_in_shm();
    file.write_all(data).unwrap();
    let tuning = Tuning {
        prefetch_threads: 0,
        cache_bytes: 1 << 20,
        readahead_blocks: 0,
    };
    let Ok(sq) = Squash::open(Arc::new(file), 0, tuning) else {
        return;
    };
    for ino in 1..=sq.inode_count() as u64 {
        let inode = sq.inode(ino).unwrap();
        if let Data::File(_) = inode.data {
            if let Ok(bytes) = sq.read(ino, 0, 1 << 20) {
                assert!(bytes.len() as u64 <= inode.size);
            }
            let _ = sq.read(ino, inode.size.saturating_sub(7), 100);
        }
        if let Data::Dir(entries) = &inode.data {
            for (name, _) in entries.iter().take(8) {
                let _ = sq.lookup(ino, name);
            }
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
