//! File data: where each block of a file lies, and reading a byte range.
//!
//! A file's block list (one stored size per block) stays in the inode
//! table; a [`Layout`] keeps only checkpoints (the data position of every
//! `stride`th block and where its size is in the list), at most
//! [`MAX_CHECKPOINTS`] per file, so a block's position costs a short scan
//! of the list through the metadata cache. Layouts are cached, within
//! [`LAYOUT_CACHE_BYTES`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cache::{FRAGMENT_KEY, Weight};
use super::inode::FileData;
use super::metadata::{Cursor, Pos};
use super::raw::{BLOCK_LEN_MASK, BLOCK_UNCOMPRESSED};
use super::tables;
use super::{Data, Squash, SquashError};

/// Most checkpoints kept for one file.
pub(crate) const MAX_CHECKPOINTS: u64 = 1 << 13;
/// Fewest blocks between two checkpoints.
const MIN_STRIDE: u64 = 64;
/// Bytes of layouts cached.
pub(crate) const LAYOUT_CACHE_BYTES: usize = 4 << 20;
/// Sizes read from a block list at once.
const SIZES_PER_READ: usize = 1024;

/// A position in a file's block list.
#[derive(Clone, Copy, Debug)]
struct Checkpoint {
    /// Image-relative position of the block's data.
    data: u64,
    /// Where the block's stored size is in the inode table.
    list: Pos,
}

/// Where a regular file's blocks lie.
#[derive(Debug)]
pub(crate) struct Layout {
    pub(crate) ino: u64,
    /// Number of whole blocks (the tail may be in a fragment).
    pub(crate) blocks: u64,
    stride: u64,
    checkpoints: Vec<Checkpoint>,
    pub(crate) fragment: Option<(u32, u32)>,
}

impl Weight for Layout {
    fn weight(&self) -> usize {
        self.checkpoints.capacity() * std::mem::size_of::<Checkpoint>()
            + std::mem::size_of::<Layout>()
    }
}

/// Where one block lies: position, stored length, stored uncompressed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub(crate) at: u64,
    pub(crate) stored: u32,
    pub(crate) uncompressed: bool,
}

impl Squash {
    /// Checks one stored block size.
    fn block_size_ok(&self, s: u32) -> Result<u32, SquashError> {
        if s & !(BLOCK_UNCOMPRESSED | BLOCK_LEN_MASK) != 0
            || s & BLOCK_LEN_MASK > self.sb.block_size
        {
            return Err(super::raw::corrupt(format!(
                "a data block has stored size {s:#x}"
            )));
        }
        Ok(s)
    }

    /// Reads the block list of `file` once, keeping every `stride`th position.
    fn build_layout(&self, ino: u64, file: &FileData) -> Result<Layout, SquashError> {
        let stride = file.blocks.div_ceil(MAX_CHECKPOINTS).max(MIN_STRIDE);
        let mut checkpoints = Vec::with_capacity(file.blocks.div_ceil(stride) as usize);
        let mut c = Cursor::at(&self.meta, self.inode_table, file.list)?;
        let mut at = file.start;
        let mut buf = vec![0u8; SIZES_PER_READ * 4];
        let mut i = 0;
        while i < file.blocks {
            let n = (file.blocks - i).min(SIZES_PER_READ as u64) as usize;
            let start = c.pos();
            c.read(&mut buf[..n * 4])?;
            for (k, s) in buf[..n * 4].chunks_exact(4).enumerate() {
                let b = i + k as u64;
                if b.is_multiple_of(stride) {
                    let mut list = Cursor::at(&self.meta, self.inode_table, start)?;
                    list.skip(k * 4)?;
                    checkpoints.push(Checkpoint {
                        data: at,
                        list: list.pos(),
                    });
                }
                let s = self.block_size_ok(u32::from_le_bytes(s.try_into().expect("4 bytes")))?;
                at = at.saturating_add(u64::from(s & BLOCK_LEN_MASK));
            }
            i += n as u64;
        }
        Ok(Layout {
            ino,
            blocks: file.blocks,
            stride,
            checkpoints,
            fragment: file.fragment,
        })
    }

    /// The layout of regular file `ino` (from the cache when possible).
    pub(crate) fn layout(&self, ino: u64, file: &FileData) -> io::Result<Arc<Layout>> {
        if let Some(l) = self.layouts.get(ino) {
            return Ok(l);
        }
        let layout = Arc::new(self.build_layout(ino, file).map_err(io_error)?);
        self.layouts.insert(ino, layout.clone());
        Ok(layout)
    }

    /// Where blocks `first..first + count` of a file lie (fewer at the
    /// file's end), found with one scan of the block list.
    pub(crate) fn locate_many(
        &self,
        layout: &Layout,
        first: u64,
        count: u64,
    ) -> io::Result<Vec<Block>> {
        let last = first.saturating_add(count).min(layout.blocks);
        if first >= last {
            return Ok(Vec::new());
        }
        let cp = layout.checkpoints[(first / layout.stride) as usize];
        let mut c = Cursor::at(&self.meta, self.inode_table, cp.list).map_err(io_error)?;
        let mut at = cp.data;
        let mut out = Vec::with_capacity((last - first) as usize);
        let mut size = [0u8; 4];
        for i in first - first % layout.stride..last {
            c.read(&mut size).map_err(io_error)?;
            let s = u32::from_le_bytes(size);
            if i >= first {
                out.push(Block {
                    at,
                    stored: s & BLOCK_LEN_MASK,
                    uncompressed: s & BLOCK_UNCOMPRESSED != 0,
                });
            }
            at = at.saturating_add(u64::from(s & BLOCK_LEN_MASK));
        }
        Ok(out)
    }

    /// Where block `i` of a file lies.
    pub(crate) fn locate(&self, layout: &Layout, i: u64) -> io::Result<Block> {
        self.locate_many(layout, i, 1)?
            .pop()
            .ok_or_else(|| invalid("block past the file's end"))
    }

    /// Reads and decompresses one stored block (no cache).
    pub(crate) fn load_block(&self, block: Block) -> io::Result<Vec<u8>> {
        let mut raw = vec![0u8; block.stored as usize];
        self.meta.src.read_into(block.at, &mut raw)?;
        if block.uncompressed {
            return Ok(raw);
        }
        self.stats
            .blocks_decompressed
            .fetch_add(1, Ordering::Relaxed);
        super::decompress::decompress(self.meta.compression, &raw, self.sb.block_size as usize)
    }

    fn decompress_block(&self, block: Block, key: u64) -> io::Result<Arc<Vec<u8>>> {
        let (data, loaded) = self.cache.get_or_load(key, || self.load_block(block))?;
        if !loaded {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
        Ok(data)
    }

    /// Whole block `i` of a file, decompressed (from the cache when possible).
    pub(crate) fn block(&self, layout: &Layout, i: u64) -> io::Result<Arc<Vec<u8>>> {
        let block = self.locate(layout, i)?;
        if block.stored == 0 {
            // A sparse block: all zeros.
            return Ok(Arc::new(vec![0u8; self.sb.block_size as usize]));
        }
        self.decompress_block(block, block.at)
    }

    fn fragment(&self, index: u32) -> io::Result<Arc<Vec<u8>>> {
        let key = FRAGMENT_KEY | u64::from(index);
        if let Some(b) = self.cache.get(key) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(b);
        }
        let f = tables::fragment(&self.meta, &self.sb, self.fragments, index).map_err(io_error)?;
        let block = Block {
            at: f.start,
            stored: f.stored,
            uncompressed: f.uncompressed,
        };
        self.decompress_block(block, key)
    }

    /// The tail of a file that lies in a fragment.
    fn tail(&self, layout: &Layout, size: u64) -> io::Result<Arc<Vec<u8>>> {
        let (frag, frag_offset) = layout
            .fragment
            .ok_or_else(|| invalid("file tail without a fragment"))?;
        let block = self.fragment(frag)?;
        let tail_len = (size - layout.blocks * u64::from(self.sb.block_size)) as usize;
        let start = frag_offset as usize;
        let tail = block
            .get(start..start.saturating_add(tail_len))
            .ok_or_else(|| invalid("fragment too short"))?;
        Ok(Arc::new(tail.to_vec()))
    }

    /// Reads up to `size` bytes of file `ino` at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let inode = self.try_inode(ino).map_err(io_error)?;
        let Data::File(file) = &inode.data else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        if offset >= inode.size {
            return Ok(Vec::new());
        }
        let layout = self.layout(ino, file)?;
        let end = inode.size.min(offset.saturating_add(u64::from(size)));
        let bs = u64::from(self.sb.block_size);
        // Sized by what is read, never by what the inode claims.
        let mut out = Vec::with_capacity(((end - offset) as usize).min(2 * bs as usize));
        let mut pos = offset;
        let mut last_index = None;
        while pos < end {
            let index = pos / bs;
            let within = (pos % bs) as usize;
            let data = if index < layout.blocks {
                last_index = Some(index);
                self.block(&layout, index)?
            } else {
                self.tail(&layout, inode.size)?
            };
            let take = ((end - pos) as usize).min(data.len().saturating_sub(within));
            if take == 0 {
                return Err(invalid("block shorter than the file says"));
            }
            out.extend_from_slice(&data[within..within + take]);
            pos += take as u64;
        }
        if let Some(index) = last_index {
            self.note_sequential(&layout, index);
        }
        Ok(out)
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A corrupt image is EIO to a reader; an I/O error stays what it is.
pub(crate) fn io_error(e: SquashError) -> io::Error {
    match e {
        SquashError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}
