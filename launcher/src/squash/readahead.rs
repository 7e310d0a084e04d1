//! Sequential readahead: when a reader reads a file block after block, the
//! next blocks are decompressed ahead of it on a small worker pool.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use super::data::{Block, Layout};
use super::{Data, Squash, Tuning};

/// Where the first bytes of a file lie (see [`Squash::file_ahead`]).
#[derive(Debug)]
pub struct FileAhead {
    ino: u64,
    blocks: Vec<Block>,
}

/// One block read ahead (see [`Squash::read_ahead`]): its bytes, and
/// where the server's cache keeps them.
#[derive(Debug)]
pub struct AheadBlock {
    key: u64,
    data: Vec<u8>,
}

impl AheadBlock {
    /// The decompressed bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

impl FileAhead {
    /// The file's inode.
    pub fn ino(&self) -> u64 {
        self.ino
    }
}

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

    /// Where the first `max` bytes of regular file `ino` lie, for
    /// [`Squash::read_ahead`]: found now, through the caches the FUSE
    /// threads share, so that reading them later takes none of their locks.
    pub fn file_ahead(&self, ino: u64, max: u64) -> Option<FileAhead> {
        let inode = self.try_inode(ino).ok()?;
        let Data::File(file) = &inode.data else {
            return None;
        };
        let layout = self.layout(ino, file).ok()?;
        let bs = u64::from(self.block_size());
        let end = inode.size.min(max);
        let blocks = self.locate_many(&layout, 0, end.div_ceil(bs)).ok()?;
        // The tail in a fragment (a file's last partial block) is small
        // and shared with other files: it is left to the FUSE threads.
        Some(FileAhead { ino, blocks })
    }

    /// The stored blocks of `ahead`, in order, each decompressed on the
    /// calling thread without the server's cache or its locks (a thread of
    /// the lowest priority may run this: nothing else ever waits for it),
    /// and handed to `take`; stops where `take` returns false or a block
    /// cannot be read. Sparse blocks (zeros, nothing to decompress) are
    /// skipped. Returns the number of blocks read.
    pub fn read_ahead(&self, ahead: &FileAhead, take: &mut dyn FnMut(AheadBlock) -> bool) -> u64 {
        let mut n = 0;
        for block in ahead.blocks.iter().filter(|b| b.stored != 0) {
            let Ok(data) = self.load_block(*block) else {
                break;
            };
            n += 1;
            if !take(AheadBlock {
                key: block.at,
                data,
            }) {
                break;
            }
        }
        n
    }

    /// Puts a block read ahead into the server's cache (from a thread of
    /// normal priority: this takes the cache's lock), where the tasks'
    /// reads find it.
    pub fn cache_ahead(&self, block: AheadBlock) {
        self.cache.insert(block.key, Arc::new(block.data));
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
