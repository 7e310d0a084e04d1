//! Metadata blocks: the 2-byte header, decompression with a fixed output
//! limit, whole tables read block by block between two known positions, and
//! lookup tables (an index of block positions, then the blocks).

use std::collections::HashMap;

use super::Compression;
use super::SquashError;
use super::decompress::decompress;
use super::raw::{
    METADATA_BLOCK, METADATA_LEN_MASK, METADATA_UNCOMPRESSED, POINTER_LEN, Source, corrupt,
};

/// Upper bound for one decompressed metadata table; far above any real image.
const TABLE_LIMIT: usize = 1 << 30;

/// A decompressed metadata table.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) bytes: Vec<u8>,
    /// Block position (relative to the table) -> offset in `bytes`.
    blocks: HashMap<u64, usize>,
}

impl Table {
    /// Position in `bytes` of a reference (block, offset within the block).
    pub(crate) fn locate(
        &self,
        block: u64,
        offset: usize,
        what: &str,
    ) -> Result<usize, SquashError> {
        let start = self.blocks.get(&block).ok_or_else(|| {
            corrupt(format!(
                "{what} points at byte {block}, which starts no metadata block"
            ))
        })?;
        let pos = start + offset;
        if offset >= METADATA_BLOCK || pos > self.bytes.len() {
            return Err(corrupt(format!(
                "{what} points past its table (block {block}, offset {offset})"
            )));
        }
        Ok(pos)
    }
}

impl Source<'_> {
    /// Reads the metadata block at `at`; returns its bytes and the position after it.
    pub(crate) fn metadata_block(
        &self,
        at: u64,
        compression: Compression,
        what: &str,
    ) -> Result<(Vec<u8>, u64), SquashError> {
        let head = self.read(at, 2, what)?;
        let head = u16::from_le_bytes([head[0], head[1]]);
        let stored = usize::from(head & METADATA_LEN_MASK);
        if stored == 0 || stored > METADATA_BLOCK {
            return Err(corrupt(format!(
                "{what}: metadata block at byte {at} has length {stored}"
            )));
        }
        let raw = self.read(at + 2, stored, what)?;
        let bytes = if head & METADATA_UNCOMPRESSED != 0 {
            raw
        } else {
            decompress(compression, &raw, METADATA_BLOCK)
                .map_err(|e| corrupt(format!("{what}: metadata block at byte {at}: {e}")))?
        };
        Ok((bytes, at + 2 + stored as u64))
    }

    /// Reads the metadata blocks from `start` up to exactly `end`; returns the
    /// bytes and, for each block, its position relative to `start` and where
    /// its bytes begin in the result.
    pub(crate) fn metadata_table(
        &self,
        start: u64,
        end: u64,
        compression: Compression,
        what: &str,
    ) -> Result<Table, SquashError> {
        let mut table = Table::default();
        let mut at = start;
        while at < end {
            let (mut bytes, next) = self.metadata_block(at, compression, what)?;
            if next > end {
                return Err(corrupt(format!(
                    "{what}: metadata block at byte {at} runs past the table's end at {end}"
                )));
            }
            if table.bytes.len() + bytes.len() > TABLE_LIMIT {
                return Err(corrupt(format!(
                    "{what} is larger than {TABLE_LIMIT} bytes"
                )));
            }
            table.blocks.insert(at - start, table.bytes.len());
            table.bytes.append(&mut bytes);
            at = next;
        }
        Ok(table)
    }

    /// A lookup table: an array of positions of metadata blocks at `index`,
    /// which together hold `count` entries of `entry_len` bytes.
    pub(crate) fn lookup_table(
        &self,
        index: u64,
        count: u64,
        entry_len: u64,
        compression: Compression,
        what: &str,
    ) -> Result<Vec<u8>, SquashError> {
        let want = count * entry_len;
        let blocks = want.div_ceil(METADATA_BLOCK as u64);
        let pointers = self.read(index, (blocks * POINTER_LEN) as usize, what)?;
        let mut out = Vec::new();
        for p in pointers.chunks_exact(POINTER_LEN as usize) {
            let at = u64::from_le_bytes(p.try_into().expect("8 bytes"));
            let (mut bytes, _) = self.metadata_block(at, compression, what)?;
            out.append(&mut bytes);
            if out.len() as u64 >= want {
                break;
            }
        }
        if (out.len() as u64) < want {
            return Err(corrupt(format!(
                "{what} holds {} bytes, {want} expected",
                out.len()
            )));
        }
        out.truncate(want as usize);
        Ok(out)
    }

    /// The first metadata block position a lookup table's index points at.
    pub(crate) fn first_pointer(&self, index: u64, what: &str) -> Result<u64, SquashError> {
        let p = self.read(index, POINTER_LEN as usize, what)?;
        Ok(u64::from_le_bytes(p.try_into().expect("8 bytes")))
    }
}
