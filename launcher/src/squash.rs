//! A read-only squashfs served straight from its offset inside a SIF image.
//!
//! [`index`] reads the superblock, inode, directory, fragment and id tables
//! once into an inode-number index (with limits that keep a hostile image
//! from making it allocate without bound); this module reads file data: one
//! positional read per block (no lock around a shared file handle), a
//! sharded cache of decompressed blocks, and sequential readahead that
//! decompresses the next blocks on a small worker pool.

mod index;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

/// The inode number of the root directory (FUSE's root ID).
pub const ROOT_INO: u64 = 1;

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    #[error("not a readable squashfs filesystem: {0}")]
    Corrupt(String),
    #[error("squashfs compression {0} is not supported (supported: gzip, zstd, xz, lz4)")]
    Compression(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// The compression of an image's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Lz4,
    Zstd,
}

/// Where a regular file's data lies.
#[derive(Debug)]
pub struct Layout {
    /// Image-relative offset of the first block.
    start: u64,
    /// Stored size of each whole block as the image has it (bit 24: stored
    /// uncompressed; 0: a sparse block of zeros).
    sizes: Vec<u32>,
    /// Offset of every [`CHECKPOINT`]th block, so a block's offset is found
    /// with a few additions and the index stays near 4 bytes per block.
    checkpoints: Vec<u64>,
    /// Fragment index and offset of the tail, if the tail is in a fragment.
    fragment: Option<(u32, u32)>,
}

const CHECKPOINT: usize = 64;

impl Layout {
    fn new(start: u64, sizes: Vec<u32>, fragment: Option<(u32, u32)>) -> Layout {
        let mut checkpoints = Vec::with_capacity(sizes.len() / CHECKPOINT + 1);
        let mut at = start;
        for (i, s) in sizes.iter().enumerate() {
            if i % CHECKPOINT == 0 {
                checkpoints.push(at);
            }
            at = at.saturating_add(u64::from(s & (index::BLOCK_UNCOMPRESSED - 1)));
        }
        Layout {
            start,
            sizes,
            checkpoints,
            fragment,
        }
    }

    /// Number of whole blocks (the tail may be in a fragment).
    pub fn block_count(&self) -> usize {
        self.sizes.len()
    }

    /// Offset, stored length and "stored uncompressed" of block `i`.
    fn block(&self, i: usize) -> (u64, u32, bool) {
        let first = i - i % CHECKPOINT;
        let offset = self.sizes[first..i]
            .iter()
            .fold(self.checkpoints[i / CHECKPOINT], |at, s| {
                at.saturating_add(u64::from(s & (index::BLOCK_UNCOMPRESSED - 1)))
            });
        let s = self.sizes[i];
        (
            offset,
            s & (index::BLOCK_UNCOMPRESSED - 1),
            s & index::BLOCK_UNCOMPRESSED != 0,
        )
    }

    /// Image-relative offset of the first block.
    pub fn start(&self) -> u64 {
        self.start
    }
}

/// Contents of a directory or a link target.
#[derive(Debug)]
pub enum Data {
    /// Entries sorted by name.
    Dir(Vec<(OsString, u64)>),
    File(Layout),
    Symlink(OsString),
    Device(u32),
    None,
}

/// One inode of the image.
#[derive(Debug)]
pub struct Inode {
    pub kind: FileKind,
    /// Permission bits (07777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub size: u64,
    pub nlink: u32,
    pub parent: u64,
    pub data: Data,
}

impl Inode {
    /// The device number of a device node.
    pub fn rdev(&self) -> u32 {
        match self.data {
            Data::Device(d) => d,
            _ => 0,
        }
    }
}

/// Cache key of a block: its image-relative offset, or a fragment with the top bit set.
type BlockKey = u64;
const FRAGMENT_KEY: u64 = 1 << 63;

/// A sharded cache of decompressed blocks, evicting the oldest first.
struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    shard_capacity: usize,
}

#[derive(Default)]
struct Shard {
    map: HashMap<BlockKey, Arc<Vec<u8>>>,
    order: VecDeque<BlockKey>,
    bytes: usize,
}

impl BlockCache {
    fn new(capacity: usize) -> BlockCache {
        let n = 16;
        BlockCache {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: (capacity / n).max(1),
        }
    }

    fn shard(&self, key: BlockKey) -> &Mutex<Shard> {
        // Blocks are at least 4 KiB apart; mix the bits so neighbours spread.
        let h = (key ^ (key >> 17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 60) as usize % self.shards.len()]
    }

    fn get(&self, key: BlockKey) -> Option<Arc<Vec<u8>>> {
        self.shard(key)
            .lock()
            .expect("cache lock")
            .map
            .get(&key)
            .cloned()
    }

    fn insert(&self, key: BlockKey, block: Arc<Vec<u8>>) {
        let mut s = self.shard(key).lock().expect("cache lock");
        if s.map.contains_key(&key) {
            return;
        }
        s.bytes += block.len();
        s.map.insert(key, block);
        s.order.push_back(key);
        while s.bytes > self.shard_capacity && s.order.len() > 1 {
            if let Some(old) = s.order.pop_front()
                && let Some(b) = s.map.remove(&old)
            {
                s.bytes -= b.len();
            }
        }
    }
}

/// Statistics of the data path, for benchmarks and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub blocks_decompressed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub prefetched: AtomicU64,
}

/// The served filesystem: the index plus everything needed to read data.
pub struct Squash {
    file: Arc<File>,
    /// Offset of the squashfs inside `file`.
    base: u64,
    compression: Compression,
    block_size: u32,
    fragments: Vec<(u64, u32, bool)>,
    inodes: Vec<Inode>,
    cache: BlockCache,
    pub stats: Stats,
    prefetch: Mutex<Option<Sender<PrefetchJob>>>,
    /// Last block read per inode, to detect sequential reads.
    last_block: Mutex<HashMap<u64, u64>>,
    in_flight: Mutex<HashSet<BlockKey>>,
    /// Blocks decompressed ahead of a sequential reader.
    readahead_blocks: AtomicU64,
}

struct PrefetchJob {
    ino: u64,
    block: usize,
}

/// Tuning of the data path.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Bytes of decompressed blocks kept.
    pub cache_bytes: usize,
    /// Blocks decompressed ahead of a sequential reader.
    pub readahead_blocks: usize,
    /// Worker threads for readahead (0 disables it).
    pub prefetch_threads: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Tuning {
            cache_bytes: 64 << 20,
            readahead_blocks: 4 * cpus.clamp(1, 8),
            prefetch_threads: cpus.clamp(1, 8),
        }
    }
}

impl Squash {
    /// Loads the squashfs that starts `base` bytes into `file`.
    pub fn open(file: Arc<File>, base: u64, tuning: Tuning) -> Result<Arc<Squash>, SquashError> {
        let len = file.metadata()?.len().checked_sub(base).ok_or_else(|| {
            SquashError::Corrupt(format!(
                "the filesystem offset {base} is past the end of the file"
            ))
        })?;
        let src = index::Source {
            file: &file,
            base,
            len,
        };
        let sb = index::superblock(&src)?;
        let fragments = index::fragments(&src, &sb)?;
        let inodes = index::build(&src, &sb)?;
        let squash = Arc::new(Squash {
            file,
            base,
            compression: sb.compression,
            block_size: sb.block_size,
            fragments,
            inodes,
            cache: BlockCache::new(tuning.cache_bytes),
            stats: Stats::default(),
            prefetch: Mutex::new(None),
            last_block: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            readahead_blocks: AtomicU64::new(tuning.readahead_blocks as u64),
        });
        if tuning.prefetch_threads > 0 && tuning.readahead_blocks > 0 {
            start_prefetchers(&squash, tuning);
        }
        Ok(squash)
    }

    /// Starts the readahead workers of an image opened without them (a
    /// process that still has to `unshare` must not have threads yet).
    pub fn start_readahead(self: &Arc<Self>, tuning: Tuning) {
        let running = self.prefetch.lock().map(|p| p.is_some()).unwrap_or(true);
        if !running && tuning.prefetch_threads > 0 && tuning.readahead_blocks > 0 {
            start_prefetchers(self, tuning);
        }
    }

    /// The inode with number `ino`.
    pub fn inode(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(usize::try_from(ino).ok()?.checked_sub(1)?)
    }

    /// Number of inodes.
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    /// The block size of the filesystem.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Looks `name` up in directory `dir`.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Option<u64> {
        match &self.inode(dir)?.data {
            Data::Dir(entries) => entries
                .binary_search_by(|(n, _)| n.as_os_str().cmp(name))
                .ok()
                .map(|i| entries[i].1),
            _ => None,
        }
    }

    /// Resolves an absolute path inside the image without following symlinks.
    pub fn lookup_path(&self, path: &Path) -> Option<u64> {
        let mut ino = ROOT_INO;
        for c in path.components() {
            match c {
                std::path::Component::RootDir | std::path::Component::CurDir => {}
                std::path::Component::Normal(n) => ino = self.lookup(ino, n)?,
                std::path::Component::ParentDir => ino = self.inode(ino)?.parent,
                std::path::Component::Prefix(_) => return None,
            }
        }
        Some(ino)
    }

    fn read_raw(&self, image_offset: u64, len: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        let at = self
            .base
            .checked_add(image_offset)
            .ok_or(io::ErrorKind::InvalidData)?;
        self.file.read_exact_at(&mut buf, at)?;
        Ok(buf)
    }

    fn decompress(
        &self,
        raw: Vec<u8>,
        stored_uncompressed: bool,
        limit: usize,
    ) -> io::Result<Vec<u8>> {
        if stored_uncompressed {
            return Ok(raw);
        }
        let out = decompress(self.compression, &raw, limit)?;
        self.stats
            .blocks_decompressed
            .fetch_add(1, Ordering::Relaxed);
        Ok(out)
    }

    /// Whole block `index` of a file, decompressed (from the cache when possible).
    fn block(&self, layout: &Layout, index: usize) -> io::Result<Arc<Vec<u8>>> {
        let (key, stored, uncompressed) = layout.block(index);
        if stored == 0 {
            // A sparse block: all zeros.
            return Ok(Arc::new(vec![0u8; self.block_size as usize]));
        }
        if let Some(b) = self.cache.get(key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let raw = self.read_raw(key, stored)?;
        let block = Arc::new(self.decompress(raw, uncompressed, self.block_size as usize)?);
        self.cache.insert(key, block.clone());
        Ok(block)
    }

    fn fragment(&self, index: u32) -> io::Result<Arc<Vec<u8>>> {
        let key = FRAGMENT_KEY | u64::from(index);
        if let Some(b) = self.cache.get(key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let &(start, size, uncompressed) = self.fragments.get(index as usize).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "fragment index out of range")
        })?;
        let raw = self.read_raw(start, size)?;
        let block = Arc::new(self.decompress(raw, uncompressed, self.block_size as usize)?);
        self.cache.insert(key, block.clone());
        Ok(block)
    }

    /// Reads up to `size` bytes of file `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let inode = self.inode(ino).ok_or(io::ErrorKind::NotFound)?;
        let Data::File(layout) = &inode.data else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        if offset >= inode.size {
            return Ok(Vec::new());
        }
        let end = inode.size.min(offset.saturating_add(u64::from(size)));
        let bs = u64::from(self.block_size);
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        let mut last_index = None;
        while pos < end {
            let index = (pos / bs) as usize;
            let within = (pos % bs) as usize;
            let data = if index < layout.block_count() {
                last_index = Some(index);
                self.block(layout, index)?
            } else {
                let (frag, frag_offset) = layout.fragment.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "file tail without a fragment")
                })?;
                let block = self.fragment(frag)?;
                let tail_len = (inode.size - index as u64 * bs) as usize;
                let start = frag_offset as usize;
                let tail = block.get(start..start + tail_len).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "fragment too short")
                })?;
                Arc::new(tail.to_vec())
            };
            let take = ((end - pos) as usize).min(data.len().saturating_sub(within));
            if take == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "block shorter than the file says",
                ));
            }
            out.extend_from_slice(&data[within..within + take]);
            pos += take as u64;
        }
        if let Some(index) = last_index {
            self.note_sequential(ino, layout, index);
        }
        Ok(out)
    }

    /// On a sequential read, queues the next blocks for decompression.
    fn note_sequential(&self, ino: u64, layout: &Layout, index: usize) {
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

/// Decompresses one block, refusing output larger than `limit` (so a
/// hostile image cannot make the server allocate without bound).
pub fn decompress(compression: Compression, input: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut out = Vec::with_capacity(limit);
    match compression {
        Compression::Gzip => {
            flate2::read::ZlibDecoder::new(input)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?;
        }
        Compression::Xz => {
            liblzma::read::XzDecoder::new(input)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            out = zstd::bulk::decompress(input, limit).map_err(|_| bad("corrupt zstd block"))?;
        }
        Compression::Lz4 => {
            out.resize(limit, 0);
            let n = lz4_flex::block::decompress_into(input, &mut out)
                .map_err(|_| bad("corrupt lz4 block"))?;
            out.truncate(n);
        }
    }
    if out.len() > limit {
        return Err(bad("block inflates past the block size"));
    }
    Ok(out)
}

fn start_prefetchers(squash: &Arc<Squash>, tuning: Tuning) {
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

impl Drop for Squash {
    fn drop(&mut self) {
        if let Ok(mut p) = self.prefetch.lock() {
            p.take();
        }
    }
}

impl std::fmt::Debug for Squash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Squash")
            .field("base", &self.base)
            .field("block_size", &self.block_size)
            .field("inodes", &self.inodes.len())
            .finish_non_exhaustive()
    }
}
