//! Sequential readahead: when a reader reads a file block after block, the
//! next blocks are decompressed ahead of it on a small worker pool.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use super::data::Layout;
use super::{Data, Squash, Tuning};

/// One block to decompress ahead of a reader.
pub(crate) struct PrefetchJob {
    layout: Arc<Layout>,
    block: u64,
    key: u64,
}

impl Squash {
    /// On a sequential read, queues the next blocks for decompression.
    pub(crate) fn note_sequential(&self, layout: &Arc<Layout>, index: u64) {
        let prev = self.last_block.insert(layout.ino, index);
        if !prev.is_some_and(|p| index == p + 1 || index == p) {
            return;
        }
        let guard = self.prefetch.lock().expect("lock");
        let Some(tx) = guard.as_ref() else { return };
        let ahead = self.readahead_blocks.load(Ordering::Relaxed);
        let Ok(blocks) = self.locate_many(layout, index + 1, ahead) else {
            return;
        };
        for (b, block) in (index + 1..).zip(blocks) {
            if block.stored == 0 || self.cache.get(block.at).is_some() {
                continue;
            }
            if !self.in_flight.lock().expect("lock").insert(block.at) {
                continue;
            }
            let _ = tx.send(PrefetchJob {
                layout: layout.clone(),
                block: b,
                key: block.at,
            });
        }
    }

    /// Decompresses the blocks of the first `max` bytes of regular file
    /// `ino` into the cache, in order, on the calling thread (a program
    /// about to be run, before its exec asks). Returns the number of blocks
    /// it went through.
    pub fn warm_file(&self, ino: u64, max: u64) -> u64 {
        let Ok(inode) = self.try_inode(ino) else {
            return 0;
        };
        let Data::File(file) = &inode.data else {
            return 0;
        };
        let Ok(layout) = self.layout(ino, file) else {
            return 0;
        };
        let count = max
            .div_ceil(u64::from(self.block_size()))
            .min(layout.blocks);
        (0..count)
            .take_while(|&i| self.block(&layout, i).is_ok())
            .count() as u64
    }

    fn run_prefetch(&self, job: PrefetchJob) {
        if self.block(&job.layout, job.block).is_ok() {
            self.stats.prefetched.fetch_add(1, Ordering::Relaxed);
        }
        self.in_flight.lock().expect("lock").remove(&job.key);
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
