//! Directory listings of the directory table: headers of up to 256 entries
//! that share an inode block, each entry a name and an inode offset.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::SquashError;
use super::index::Walker;
use super::raw::{Bytes, DIR_HEADER_MAX_ENTRIES, corrupt};

impl Walker<'_> {
    /// Parses a directory listing into (name, inode reference) pairs.
    pub(crate) fn listing(
        &mut self,
        block: u64,
        offset: usize,
        len: usize,
    ) -> Result<Vec<(OsString, u64)>, SquashError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.listing_bytes += len;
        if self.listing_bytes > self.dirs.bytes.len() {
            return Err(corrupt(
                "directory listings overlap (longer together than the directory table)",
            ));
        }
        let start = self.dirs.locate(block, offset, "a directory")?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.dirs.bytes.len())
            .ok_or_else(|| corrupt("a directory listing runs past the directory table"))?;
        parse_listing(&self.dirs.bytes[start..end])
    }
}

fn parse_listing(listing: &[u8]) -> Result<Vec<(OsString, u64)>, SquashError> {
    let mut b = Bytes::new(listing, 0, "directory listing");
    let mut out = Vec::new();
    while b.pos < listing.len() {
        // The header stores the entry count minus one.
        let count = b.u32()?;
        if count >= DIR_HEADER_MAX_ENTRIES {
            return Err(corrupt(format!("directory header with {count} entries")));
        }
        let inode_block = u64::from(b.u32()?);
        let _number = b.u32()?;
        for _ in 0..=count {
            let inode_offset = b.u16()?;
            let _delta = b.u16()?;
            let _type = b.u16()?;
            // The entry stores the name length minus one.
            let name_len = usize::from(b.u16()?) + 1;
            let name = b.take(name_len)?;
            if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                return Err(corrupt(format!(
                    "directory entry with the name {:?}",
                    String::from_utf8_lossy(name)
                )));
            }
            out.push((
                OsString::from_vec(name.to_vec()),
                reference(inode_block, inode_offset),
            ));
        }
    }
    Ok(out)
}

/// An inode reference: the inode's metadata block (relative to the inode
/// table) in the high bits, its offset inside the block in the low 16.
pub(crate) fn reference(block: u64, offset: u16) -> u64 {
    block << 16 | u64::from(offset)
}

/// The (block, offset) of an inode reference.
pub(crate) fn split_reference(reference: u64) -> (u64, usize) {
    (reference >> 16, (reference & 0xffff) as usize)
}
