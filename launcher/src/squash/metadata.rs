//! Metadata blocks, read lazily: each is decompressed (with a fixed output
//! limit) when first needed and kept in a bounded cache, and a [`Cursor`]
//! reads a table's bytes across block boundaries without ever holding a
//! whole table. Lookup tables (fragments, ids, exports) are read one entry
//! at a time through their index of block positions, whose positions are
//! kept once read.

use std::sync::Arc;

use super::cache::{BlockCache, SmallMap, Weight};
use super::decompress::decompress;
use super::raw::{
    METADATA_BLOCK, METADATA_LEN_MASK, METADATA_UNCOMPRESSED, POINTER_LEN, Source, corrupt,
};
use super::{Compression, SquashError};

/// Bytes of decompressed metadata blocks kept (1,024 blocks).
pub(crate) const METADATA_CACHE_BYTES: usize = 8 << 20;

/// Lookup tables' block positions kept (each names one metadata block of
/// entries: 1,024 inodes of the export table, 512 fragments).
const POINTERS: usize = 1 << 12;

/// One decompressed metadata block and the position of the block after it.
pub(crate) struct MetaBlock {
    pub(crate) bytes: Vec<u8>,
    pub(crate) next: u64,
}

impl Weight for MetaBlock {
    fn weight(&self) -> usize {
        self.bytes.capacity() + std::mem::size_of::<MetaBlock>()
    }
}

/// The image's metadata: where it is read from, how it is compressed, and
/// the cache of decompressed blocks.
pub(crate) struct Meta {
    pub(crate) src: Source,
    pub(crate) compression: Compression,
    cache: BlockCache<MetaBlock>,
    /// Lookup tables' block positions, by where they are stored: every
    /// inode reached by number goes through the export table's index, and
    /// one read per lookup was most of the reads of a container's set-up.
    pointers: SmallMap<u64, u64>,
}

/// A metadata table: the image-relative range its blocks occupy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extent {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) what: &'static str,
}

/// A position in a metadata table: the image-relative position of a block
/// and an offset into its decompressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) block: u64,
    pub(crate) offset: usize,
}

impl Meta {
    pub(crate) fn new(src: Source, compression: Compression) -> Meta {
        Meta {
            src,
            compression,
            cache: BlockCache::new(METADATA_CACHE_BYTES),
            pointers: SmallMap::new(POINTERS),
        }
    }

    /// The metadata block at `at`, decompressed (from the cache when possible).
    pub(crate) fn block(&self, at: u64, what: &str) -> Result<Arc<MetaBlock>, SquashError> {
        if let Some(b) = self.cache.get(at) {
            return Ok(b);
        }
        // The header and the longest block it can announce, in one read
        // (fewer at the end of the filesystem).
        let room = self
            .src
            .len
            .saturating_sub(at)
            .min(2 + METADATA_BLOCK as u64);
        let raw = self.src.read(at, room.max(2) as usize, what)?;
        let head = u16::from_le_bytes([raw[0], raw[1]]);
        let stored = usize::from(head & METADATA_LEN_MASK);
        if stored == 0 || stored > METADATA_BLOCK {
            return Err(corrupt(format!(
                "{what}: metadata block at byte {at} has length {stored}"
            )));
        }
        if 2 + stored > raw.len() {
            return Err(corrupt(format!(
                "{what}: metadata block at byte {at} ({stored} bytes) lies past the end of the filesystem ({} bytes)",
                self.src.len
            )));
        }
        let body = &raw[2..2 + stored];
        let bytes = if head & METADATA_UNCOMPRESSED != 0 {
            body.to_vec()
        } else {
            decompress(self.compression, body, METADATA_BLOCK)
                .map_err(|e| corrupt(format!("{what}: metadata block at byte {at}: {e}")))?
        };
        let block = Arc::new(MetaBlock {
            bytes,
            next: at + 2 + stored as u64,
        });
        self.cache.insert(at, block.clone());
        Ok(block)
    }

    /// Entry `i` (of `count`, each `len` bytes) of the lookup table whose
    /// index of block positions is at `index`.
    pub(crate) fn lookup_entry(
        &self,
        index: u64,
        i: u64,
        count: u64,
        len: u64,
        what: &str,
    ) -> Result<Vec<u8>, SquashError> {
        if i >= count {
            return Err(corrupt(format!("{what}: entry {i} of {count}")));
        }
        let byte = i * len;
        let per_block = METADATA_BLOCK as u64;
        let at = index + byte / per_block * POINTER_LEN;
        let pointer = match self.pointers.get(&at) {
            Some(p) => p,
            None => {
                let p = self.src.u64_at(at, what)?;
                self.pointers.insert(at, p);
                p
            }
        };
        let block = self.block(pointer, what)?;
        let at = (byte % per_block) as usize;
        block
            .bytes
            .get(at..at + len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| corrupt(format!("{what}: entry {i} lies past its block")))
    }
}

/// Reads a metadata table's bytes in order, across block boundaries.
pub(crate) struct Cursor<'a> {
    meta: &'a Meta,
    table: Extent,
    pos: Pos,
    block: Option<Arc<MetaBlock>>,
}

impl<'a> Cursor<'a> {
    /// A cursor at `pos`, which must lie in `table` (an offset may be the
    /// end of its block: reading goes on in the next).
    pub(crate) fn at(meta: &'a Meta, table: Extent, pos: Pos) -> Result<Cursor<'a>, SquashError> {
        if pos.block < table.start || pos.block >= table.end || pos.offset > METADATA_BLOCK {
            return Err(corrupt(format!(
                "{}: position {}+{} is outside the table ({}..{})",
                table.what, pos.block, pos.offset, table.start, table.end
            )));
        }
        Ok(Cursor {
            meta,
            table,
            pos,
            block: None,
        })
    }

    /// A cursor at a reference (block relative to the table, offset).
    pub(crate) fn at_ref(
        meta: &'a Meta,
        table: Extent,
        block: u64,
        offset: usize,
    ) -> Result<Cursor<'a>, SquashError> {
        let block = table.start.saturating_add(block);
        Cursor::at(meta, table, Pos { block, offset })
    }

    /// Where the next byte will be read.
    pub(crate) fn pos(&self) -> Pos {
        self.pos
    }

    /// The current block, moving to the next one when this one is used up.
    fn current(&mut self) -> Result<Arc<MetaBlock>, SquashError> {
        loop {
            let block = match &self.block {
                Some(b) => b.clone(),
                None => {
                    let b = self.meta.block(self.pos.block, self.table.what)?;
                    self.block = Some(b.clone());
                    b
                }
            };
            let len = block.bytes.len();
            if self.pos.offset < len {
                return Ok(block);
            }
            if self.pos.offset > len || block.next >= self.table.end {
                return Err(corrupt(format!(
                    "{}: read past the end of the table at block {}",
                    self.table.what, self.pos.block
                )));
            }
            self.pos = Pos {
                block: block.next,
                offset: 0,
            };
            self.block = None;
        }
    }

    /// Fills `out` with the next bytes.
    pub(crate) fn read(&mut self, out: &mut [u8]) -> Result<(), SquashError> {
        let mut done = 0;
        while done < out.len() {
            let block = self.current()?;
            let avail = &block.bytes[self.pos.offset..];
            let n = avail.len().min(out.len() - done);
            out[done..done + n].copy_from_slice(&avail[..n]);
            done += n;
            self.pos.offset += n;
        }
        Ok(())
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<u8>, SquashError> {
        let mut v = vec![0u8; n];
        self.read(&mut v)?;
        Ok(v)
    }

    /// Skips `n` bytes.
    pub(crate) fn skip(&mut self, mut n: usize) -> Result<(), SquashError> {
        while n > 0 {
            let block = self.current()?;
            let step = (block.bytes.len() - self.pos.offset).min(n);
            self.pos.offset += step;
            n -= step;
        }
        Ok(())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, SquashError> {
        let mut b = [0u8; 2];
        self.read(&mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SquashError> {
        let mut b = [0u8; 4];
        self.read(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SquashError> {
        let mut b = [0u8; 8];
        self.read(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}
