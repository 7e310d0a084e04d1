//! Directory listings, read one entry at a time: headers of up to 256
//! entries that share an inode block, each entry a name, an inode offset
//! and an inode-number delta. A listing is never held whole: a [`DirCursor`]
//! is a few words, so reading a chunk of a listing costs that chunk.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::inode::{DirData, Parser};
use super::metadata::{Cursor, Pos};
use super::raw::{
    DIR_ENTRY_LEN, DIR_HEADER_LEN, DIR_HEADER_MAX_ENTRIES, InodeType, MAX_NAME, METADATA_BLOCK,
    corrupt,
};
use super::{FileKind, SquashError};

/// One entry of a listing.
pub(crate) struct Entry {
    pub(crate) name: OsString,
    /// The inode's reference.
    pub(crate) reference: u64,
    /// The inode's number, as the listing gives it.
    pub(crate) number: u32,
    /// The inode's type, as the listing gives it.
    pub(crate) kind: FileKind,
}

/// A position in a directory listing.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirCursor {
    pos: Pos,
    /// Bytes of the listing consumed.
    consumed: u32,
    /// Entries left under the current header, its inode block and base number.
    left: u32,
    inode_block: u32,
    base_number: u32,
}

impl DirCursor {
    /// The start of `dir`'s listing.
    pub(crate) fn start(dir: &DirData) -> DirCursor {
        DirCursor {
            pos: dir.listing,
            consumed: 0,
            left: 0,
            inode_block: 0,
            base_number: 0,
        }
    }

    /// The next entry of `dir`'s listing, or `None` at its end.
    pub(crate) fn next(&mut self, p: &Parser, dir: &DirData) -> Result<Option<Entry>, SquashError> {
        if self.left == 0 && self.consumed >= dir.len {
            return Ok(None);
        }
        let mut c = Cursor::at(p.meta, p.dirs, self.pos)?;
        if self.left == 0 {
            let count = c.u32()?;
            if count >= DIR_HEADER_MAX_ENTRIES {
                return Err(corrupt(format!("directory header with {count} entries")));
            }
            self.left = count + 1;
            self.inode_block = c.u32()?;
            self.base_number = c.u32()?;
            self.consume(DIR_HEADER_LEN, dir)?;
        }
        let offset = c.u16()?;
        let delta = c.u16()? as i16;
        let raw_type = c.u16()?;
        // The entry stores the name length minus one.
        let name_len = usize::from(c.u16()?) + 1;
        if name_len > MAX_NAME {
            return Err(corrupt(format!("directory entry name of {name_len} bytes")));
        }
        let name = c.take(name_len)?;
        self.consume(DIR_ENTRY_LEN + name_len as u32, dir)?;
        self.left -= 1;
        self.pos = c.pos();
        if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
            return Err(corrupt(format!(
                "directory entry with the name {:?}",
                String::from_utf8_lossy(&name)
            )));
        }
        let kind = InodeType::from_raw(raw_type)
            .map(FileKind::of)
            .ok_or_else(|| corrupt(format!("directory entry of type {raw_type}")))?;
        Ok(Some(Entry {
            name: OsString::from_vec(name),
            reference: u64::from(self.inode_block) << 16 | u64::from(offset),
            number: self.base_number.wrapping_add_signed(i32::from(delta)),
            kind,
        }))
    }

    fn consume(&mut self, n: u32, dir: &DirData) -> Result<(), SquashError> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed > dir.len {
            return Err(corrupt("a directory entry runs past its listing"));
        }
        Ok(())
    }
}

impl Parser<'_> {
    /// Finds `name` in `dir`: from the name index of an extended directory
    /// to the metadata block that holds it, then entry by entry (listings
    /// are sorted by name, so the scan stops at the first greater name).
    pub(crate) fn find(&self, dir: &DirData, name: &[u8]) -> Result<Option<Entry>, SquashError> {
        let mut cur = match dir.index {
            Some((at, count)) => self.indexed_start(dir, at, count, name)?,
            None => DirCursor::start(dir),
        };
        while let Some(e) = cur.next(self, dir)? {
            match e.name.as_encoded_bytes().cmp(name) {
                Ordering::Less => {}
                Ordering::Equal => return Ok(Some(e)),
                Ordering::Greater => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Where to start looking for `name`: the last index entry whose name
    /// is not greater than it.
    fn indexed_start(
        &self,
        dir: &DirData,
        at: Pos,
        count: u16,
        name: &[u8],
    ) -> Result<DirCursor, SquashError> {
        let mut c = Cursor::at(self.meta, self.inodes, at)?;
        let mut best = DirCursor::start(dir);
        for _ in 0..count {
            let index = c.u32()?;
            let block = c.u32()?;
            let len = c.u32()? as usize + 1;
            if len > MAX_NAME {
                return Err(corrupt(format!("directory index name of {len} bytes")));
            }
            if c.take(len)?.as_slice() > name {
                break;
            }
            if index >= dir.len {
                return Err(corrupt("a directory index points past its listing"));
            }
            // The index counts listing bytes from the listing's start.
            let offset = (dir.listing.offset + index as usize) % METADATA_BLOCK;
            best = DirCursor {
                pos: Cursor::at_ref(self.meta, self.dirs, u64::from(block), offset)?.pos(),
                consumed: index,
                ..DirCursor::start(dir)
            };
        }
        Ok(best)
    }
}

impl FileKind {
    /// The kind of an on-disk inode type.
    pub(crate) fn of(t: InodeType) -> FileKind {
        use InodeType::*;
        match t {
            BasicDir | ExtDir => FileKind::Dir,
            BasicFile | ExtFile => FileKind::File,
            BasicSymlink | ExtSymlink => FileKind::Symlink,
            BasicBlockDev | ExtBlockDev => FileKind::BlockDevice,
            BasicCharDev | ExtCharDev => FileKind::CharDevice,
            BasicFifo | ExtFifo => FileKind::Fifo,
            BasicSocket | ExtSocket => FileKind::Socket,
        }
    }
}
