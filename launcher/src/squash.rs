//! A read-only squashfs served straight from its offset inside a SIF image.
//!
//! The reader is split by layer of the format:
//! - [`raw`]: the on-disk constants by name, bounds-checked positional reads
//!   and little-endian field reads;
//! - [`metadata`]: metadata blocks and the tables made of them;
//! - [`tables`]: the superblock, the fragment and id tables;
//! - [`inode`] and [`dir`]: one inode, one directory listing;
//! - [`index`]: the walk that numbers every inode of the tree (with limits
//!   that keep a hostile image from making it allocate without bound);
//! - this module, [`cache`], [`readahead`] and [`decompress`]: file data,
//!   one positional read per block (no lock around a shared file handle), a
//!   sharded cache of decompressed blocks, and sequential readahead that
//!   decompresses the next blocks on a small worker pool.

#![warn(clippy::too_many_lines)]

mod cache;
mod decompress;
mod dir;
mod index;
mod inode;
mod metadata;
mod raw;
mod readahead;
mod tables;

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use cache::{BlockCache, BlockKey, FRAGMENT_KEY};
use decompress::decompress;
use raw::{BLOCK_LEN_MASK, BLOCK_UNCOMPRESSED};
use readahead::{PrefetchJob, start_prefetchers};

/// The inode number of the root directory (FUSE's root ID).
pub const ROOT_INO: u64 = 1;

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    /// The image breaks the format or one of the reader's limits (what, where).
    #[error("not a readable squashfs filesystem: {0}")]
    Corrupt(String),
    /// The image uses a compressor this reader does not have.
    #[error("squashfs compression {0} is not supported (supported: gzip, zstd, xz, lz4)")]
    Compression(String),
    /// Reading the image failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// The compression of an image's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// zlib streams.
    Gzip,
    /// xz streams.
    Xz,
    /// lz4 blocks.
    Lz4,
    /// zstd frames.
    Zstd,
}

/// Where a regular file's data lies.
#[derive(Debug)]
pub struct Layout {
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
            at = at.saturating_add(u64::from(s & BLOCK_LEN_MASK));
        }
        Layout {
            sizes,
            checkpoints,
            fragment,
        }
    }

    /// Number of whole blocks (the tail may be in a fragment).
    pub(crate) fn block_count(&self) -> usize {
        self.sizes.len()
    }

    /// Offset, stored length and "stored uncompressed" of block `i`.
    fn block(&self, i: usize) -> (u64, u32, bool) {
        let first = i - i % CHECKPOINT;
        let offset = self.sizes[first..i]
            .iter()
            .fold(self.checkpoints[i / CHECKPOINT], |at, s| {
                at.saturating_add(u64::from(s & BLOCK_LEN_MASK))
            });
        let s = self.sizes[i];
        (offset, s & BLOCK_LEN_MASK, s & BLOCK_UNCOMPRESSED != 0)
    }
}

/// Contents of a directory or a link target.
#[derive(Debug)]
pub enum Data {
    /// Entries sorted by name.
    Dir(Vec<(OsString, u64)>),
    /// Where a regular file's data lies.
    File(Layout),
    /// A symlink's target.
    Symlink(OsString),
    /// A device node's number.
    Device(u32),
    /// Nothing (FIFOs and sockets).
    None,
}

/// One inode of the image.
#[derive(Debug)]
pub struct Inode {
    /// The type.
    pub kind: FileKind,
    /// Permission bits (07777).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// Number of links.
    pub nlink: u32,
    /// Inode number of the directory holding it (the root: itself).
    pub parent: u64,
    /// Type-specific contents.
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

/// Statistics of the data path, for benchmarks and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Blocks decompressed (by readers and readahead).
    pub blocks_decompressed: AtomicU64,
    /// Block reads served from the cache.
    pub cache_hits: AtomicU64,
    /// Blocks decompressed ahead of a reader.
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
    /// Counters of the data path.
    pub stats: Stats,
    prefetch: Mutex<Option<Sender<PrefetchJob>>>,
    /// Last block read per inode, to detect sequential reads.
    last_block: Mutex<HashMap<u64, u64>>,
    in_flight: Mutex<HashSet<BlockKey>>,
    /// Blocks decompressed ahead of a sequential reader.
    readahead_blocks: AtomicU64,
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
        let src = raw::Source {
            file: &file,
            base,
            len,
        };
        let sb = tables::superblock(&src)?;
        let fragments = tables::fragments(&src, &sb)?;
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
