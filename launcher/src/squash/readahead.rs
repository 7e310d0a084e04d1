//! Sequential readahead: when a reader reads a file block after block, the
//! next blocks are decompressed ahead of it on a small worker pool.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use super::{Data, Inode, Layout, Squash, Tuning};

/// One block to decompress ahead of a reader.
pub(crate) struct PrefetchJob {
    ino: u64,
    block: usize,
}

impl Squash {
    /// On a sequential read, queues the next blocks for decompression.
    pub(crate) fn note_sequential(&self, ino: u64, layout: &Layout, index: usize) {
        let sequential = {
            let mut last = self.last_block.lock().expect("lock");
            let prev = last.insert(ino, index as u64);
            prev.is_some_and(|p| index as u64 == p + 1 || index as u64 == p)
        };
        if !sequential {
            return;
        }
        let guard = self.prefetch.lock().expect("lock");
        let Some(tx) = guard.as_ref() else { return };
        let ahead = self.readahead_blocks.load(Ordering::Relaxed) as usize;
        for b in index + 1..(index + 1 + ahead).min(layout.block_count()) {
            let (key, stored, _) = layout.block(b);
            if stored == 0 || self.cache.get(key).is_some() {
                continue;
            }
            if !self.in_flight.lock().expect("lock").insert(key) {
                continue;
            }
            let _ = tx.send(PrefetchJob { ino, block: b });
        }
    }

    fn run_prefetch(&self, job: PrefetchJob) {
        if let Some(Inode {
            data: Data::File(layout),
            ..
        }) = self.inode(job.ino)
        {
            if self.block(layout, job.block).is_ok() {
                self.stats.prefetched.fetch_add(1, Ordering::Relaxed);
            }
            self.in_flight
                .lock()
                .expect("lock")
                .remove(&layout.block(job.block).0);
        }
    }
}

/// Starts `tuning.prefetch_threads` workers that decompress queued blocks.
pub(crate) fn start_prefetchers(squash: &Arc<Squash>, tuning: Tuning) {
    squash
        .readahead_blocks
        .store(tuning.readahead_blocks as u64, Ordering::Relaxed);
    let (tx, rx): (Sender<PrefetchJob>, Receiver<PrefetchJob>) = channel();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..tuning.prefetch_threads {
        // Workers hold only a weak reference: they end when the image is dropped.
        let weak = Arc::downgrade(squash);
        let rx = rx.clone();
        let _ = std::thread::Builder::new()
            .name(format!("sifrun-prefetch-{i}"))
            .spawn(move || {
                loop {
                    let job = match rx.lock().expect("lock").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    match weak.upgrade() {
                        Some(s) => s.run_prefetch(job),
                        None => return,
                    }
                }
            });
    }
    *squash.prefetch.lock().expect("lock") = Some(tx);
}
