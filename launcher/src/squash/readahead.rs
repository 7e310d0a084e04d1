//! Sequential readahead: when a reader reads a file block after block, the
//! next blocks are decompressed ahead of it on a small worker pool.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use super::data::Layout;
use super::{Data, Squash, Tuning};

/// A program's first blocks, to be decompressed ahead of its exec by a
/// thread of the lowest priority (see [`Squash::prepare_ahead`]). Whatever
/// allocates, frees, reads the image or takes a lock is done at normal
/// priority: [`Ahead::run`] only decompresses, from memory into memory.
pub struct Ahead {
    compression: super::Compression,
    limit: usize,
    items: Vec<Mutex<Item>>,
    /// The items before this one are final.
    done: AtomicUsize,
    /// Set by the reader: decompress no more.
    stop: AtomicBool,
}

/// One stored block: its compressed bytes and room for the decompressed.
#[derive(Default)]
struct Item {
    key: u64,
    raw: Vec<u8>,
    out: Vec<u8>,
    uncompressed: bool,
    ok: bool,
}

impl Ahead {
    /// Decompresses the items in order, from the first not done, until all
    /// are or [`Ahead::stop`] was called or a block is corrupt. The first
    /// compressed block on a thread makes its decoder (allocating): run
    /// with `first_only` (up to that block) at normal priority before
    /// lowering the thread's.
    pub fn run(&self, first_only: bool) {
        let start = self.done.load(Ordering::Acquire);
        for (i, item) in self.items.iter().enumerate().skip(start) {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            // Uncontended: the reader takes only items before `done`.
            let Ok(mut item) = item.lock() else { return };
            let it = &mut *item;
            it.ok = it.uncompressed
                || super::decompress::decompress_into(
                    self.compression,
                    &it.raw,
                    self.limit,
                    &mut it.out,
                )
                .is_ok();
            let (ok, made_decoder) = (it.ok, !it.uncompressed);
            drop(item);
            self.done.store(i + 1, Ordering::Release);
            if !ok || (first_only && made_decoder) {
                return;
            }
        }
    }

    /// Decompress no more.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether every item is done.
    pub fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.items.len()
    }

    /// The blocks decompressed since item `from`, taken out (with their
    /// cache keys), and the index to ask from next time. Frees the
    /// compressed bytes: call it at normal priority.
    pub fn take_done(&self, from: usize) -> (Vec<(u64, Vec<u8>)>, usize) {
        let done = self.done.load(Ordering::Acquire);
        let mut blocks = Vec::new();
        for item in self.items.iter().take(done).skip(from) {
            let Ok(mut item) = item.lock() else { continue };
            let raw = std::mem::take(&mut item.raw);
            if item.ok {
                let data = if item.uncompressed {
                    raw
                } else {
                    std::mem::take(&mut item.out)
                };
                blocks.push((item.key, data));
            }
        }
        (blocks, done.max(from))
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

    /// The stored blocks of the first `max` bytes of regular file `ino`,
    /// read from the image, each with room for its decompressed bytes
    /// (touched, so that filling it takes no page fault), for
    /// [`Ahead::run`]. Sparse blocks (zeros) and a tail in a fragment
    /// (small, shared with other files) are left to the FUSE threads.
    pub fn prepare_ahead(&self, ino: u64, max: u64) -> Option<Ahead> {
        let inode = self.try_inode(ino).ok()?;
        let Data::File(file) = &inode.data else {
            return None;
        };
        // xz's decoder allocates as it goes: not for a low-priority thread.
        if self.meta.compression == super::Compression::Xz {
            return None;
        }
        let layout = self.layout(ino, file).ok()?;
        let bs = u64::from(self.block_size());
        let limit = bs as usize;
        let end = inode.size.min(max);
        let mut items = Vec::new();
        for block in self.locate_many(&layout, 0, end.div_ceil(bs)).ok()? {
            if block.stored == 0 {
                continue;
            }
            let mut raw = vec![0u8; block.stored as usize];
            self.meta.src.read_into(block.at, &mut raw).ok()?;
            let mut out = Vec::new();
            if !block.uncompressed {
                out.resize(limit + 1, 0u8);
                std::hint::black_box(&mut out);
                out.clear();
            }
            items.push(Mutex::new(Item {
                key: block.at,
                raw,
                out,
                uncompressed: block.uncompressed,
                ok: false,
            }));
        }
        Some(Ahead {
            compression: self.meta.compression,
            limit,
            items,
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        })
    }

    /// Puts a block read ahead into the server's cache under `key` (from a
    /// thread of normal priority: this takes the cache's lock), where the
    /// tasks' reads find it.
    pub fn cache_ahead(&self, key: u64, data: Vec<u8>) {
        self.cache.insert(key, Arc::new(data));
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
