//! A read-only squashfs served straight from its partition inside a SIF image.
//!
//! The reader is split by layer of the format:
//! - [`raw`]: the on-disk constants by name, positional reads bounded by
//!   the partition, and little-endian field reads;
//! - [`metadata`]: metadata blocks, decompressed on demand into a bounded
//!   cache, and cursors that read a table across blocks;
//! - [`tables`]: the superblock, the fragment, export and id tables;
//! - [`inode`] and [`dir`]: one inode, one directory listing entry by entry;
//! - [`index`]: inode numbers, lookups and listings by number;
//! - [`data`], [`cache`], [`readahead`] and [`decompress`]: file data, one
//!   positional read per block (no lock around a shared file handle), a
//!   sharded cache of decompressed blocks, and sequential readahead on a
//!   small worker pool.
//!
//! Nothing is read ahead of need and nothing the image declares sizes an
//! allocation: the server's memory is bounded by its caches, whatever the
//! image (docs/security.md gives the formula).

#![warn(clippy::too_many_lines)]

mod cache;
mod data;
mod decompress;
mod dir;
mod index;
mod inode;
mod metadata;
mod raw;
mod readahead;
mod tables;

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use cache::{BlockCache, SmallMap};
use data::{LAYOUT_CACHE_BYTES, Layout};
use index::{Numbering, Resume};
pub use inode::{Data, DirData, FileData, Inode};
use metadata::{Extent, Meta};
use raw::{Source, corrupt};
pub use readahead::Ahead;
use readahead::{PrefetchJob, start_prefetchers};
use tables::SuperBlock;

/// The inode number of the root directory (FUSE's root ID).
pub const ROOT_INO: u64 = 1;

/// Directories whose parent is remembered, files whose last block read is,
/// listing positions kept for the next readdir chunk.
const PARENTS: usize = 1 << 16;
const LAST_BLOCKS: usize = 1 << 12;
const CURSORS: usize = 1 << 10;

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

/// The served filesystem: the superblock and the caches through which
/// everything else is read on demand.
pub struct Squash {
    meta: Meta,
    sb: SuperBlock,
    ids: Vec<u32>,
    /// Entries of the fragment table.
    fragments: u32,
    inode_table: Extent,
    dir_table: Extent,
    numbering: Numbering,
    cache: BlockCache,
    layouts: BlockCache<Layout>,
    parents: SmallMap<u64, u64>,
    cursors: SmallMap<(u64, u64), Resume>,
    /// Counters of the data path.
    pub stats: Stats,
    prefetch: Mutex<Option<Sender<PrefetchJob>>>,
    /// Last block read per inode, to detect sequential reads.
    last_block: SmallMap<u64, u64>,
    in_flight: Mutex<HashSet<u64>>,
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

/// The CPUs this process may use, asked once (std reads the cgroup's quota
/// files each time: about 16 system calls on a holder's path).
pub(crate) fn available_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}

impl Default for Tuning {
    fn default() -> Self {
        let cpus = available_cpus();
        Tuning {
            cache_bytes: 64 << 20,
            readahead_blocks: 4 * cpus.clamp(1, 8),
            prefetch_threads: cpus.clamp(1, 8),
        }
    }
}

impl Squash {
    /// Opens the squashfs that starts `base` bytes into `file` and runs to
    /// its end.
    pub fn open(file: Arc<File>, base: u64, tuning: Tuning) -> Result<Arc<Squash>, SquashError> {
        let len = file.metadata()?.len().checked_sub(base).ok_or_else(|| {
            corrupt(format!(
                "the filesystem offset {base} is past the end of the file"
            ))
        })?;
        Squash::open_partition(file, base, len, tuning)
    }

    /// Opens the squashfs in the `len` bytes at `base` of `file`; nothing
    /// outside them is ever read.
    pub fn open_partition(
        file: Arc<File>,
        base: u64,
        len: u64,
        tuning: Tuning,
    ) -> Result<Arc<Squash>, SquashError> {
        let src = Source { file, base, len };
        let sb = tables::superblock(&src)?;
        let fragments = tables::fragment_count(&src, &sb)?;
        let dir_end = tables::dir_table_end(&src, &sb)?;
        let exports = tables::has_exports(&src, &sb);
        let meta = Meta::new(src, sb.compression);
        let ids = tables::ids(&meta, &sb)?;
        let mut squash = Squash {
            meta,
            sb,
            ids,
            fragments,
            inode_table: Extent {
                start: sb.inode_table,
                end: sb.dir_table,
                what: "inode table",
            },
            dir_table: Extent {
                start: sb.dir_table,
                end: dir_end,
                what: "directory table",
            },
            numbering: Numbering::Reference {
                root: sb.root_inode,
            },
            cache: BlockCache::new(tuning.cache_bytes),
            layouts: BlockCache::new(LAYOUT_CACHE_BYTES),
            parents: SmallMap::new(PARENTS),
            cursors: SmallMap::new(CURSORS),
            stats: Stats::default(),
            prefetch: Mutex::new(None),
            last_block: SmallMap::new(LAST_BLOCKS),
            in_flight: Mutex::new(HashSet::new()),
            readahead_blocks: AtomicU64::new(tuning.readahead_blocks as u64),
        };
        squash.number_inodes(exports)?;
        let squash = Arc::new(squash);
        if tuning.prefetch_threads > 0 && tuning.readahead_blocks > 0 {
            start_prefetchers(&squash, tuning);
        }
        Ok(squash)
    }

    /// Checks the root and chooses how inodes are numbered.
    fn number_inodes(&mut self, exports: bool) -> Result<(), SquashError> {
        let root = self.parser().inode(self.sb.root_inode)?;
        if root.kind != FileKind::Dir {
            return Err(corrupt("the root is not a directory"));
        }
        if exports && (1..=self.sb.inode_count).contains(&root.number) {
            self.numbering = Numbering::Export {
                root: root.number,
                count: self.sb.inode_count,
            };
            // The export table must agree about the root.
            self.try_inode(ROOT_INO)?;
        }
        Ok(())
    }

    /// Starts the readahead workers of an image opened without them (a
    /// process that still has to `unshare` must not have threads yet).
    pub fn start_readahead(self: &Arc<Self>, tuning: Tuning) {
        let running = self.prefetch.lock().map(|p| p.is_some()).unwrap_or(true);
        if !running && tuning.prefetch_threads > 0 && tuning.readahead_blocks > 0 {
            start_prefetchers(self, tuning);
        }
    }

    /// The number of inodes the image declares.
    pub fn inode_count(&self) -> u64 {
        u64::from(self.sb.inode_count)
    }

    /// The first inode number above every inode of the image (synthetic
    /// inodes are numbered from here).
    pub fn ino_limit(&self) -> u64 {
        self.numbering.limit()
    }

    /// The block size of the filesystem.
    pub fn block_size(&self) -> u32 {
        self.sb.block_size
    }

    /// The compression of the image's blocks.
    pub fn compression(&self) -> Compression {
        self.sb.compression
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
            .field("base", &self.meta.src.base)
            .field("len", &self.meta.src.len)
            .field("block_size", &self.sb.block_size)
            .field("inodes", &self.sb.inode_count)
            .finish_non_exhaustive()
    }
}
