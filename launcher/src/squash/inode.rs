//! One inode of the inode table, parsed by type.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::index::Walker;
use super::raw::{
    BLOCK_LEN_MASK, BLOCK_UNCOMPRESSED, Bytes, DIR_SIZE_DOTS, InodeType, MAX_SYMLINK, NO_FRAGMENT,
    corrupt,
};
use super::{FileKind, Layout, SquashError};

/// One inode as stored, before it is placed in the tree.
pub(crate) struct RawInode {
    pub(crate) kind: FileKind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: u32,
    /// File size; symlink target length.
    pub(crate) size: u64,
    pub(crate) data: RawData,
}

/// What follows the common inode header, by type.
pub(crate) enum RawData {
    /// Listing position (block, offset) and length in the directory table.
    Dir {
        block: u64,
        offset: usize,
        len: usize,
    },
    File(Layout),
    Symlink(OsString),
    Device(u32),
    None,
}

impl Walker<'_> {
    fn id(&self, index: u16) -> Result<u32, SquashError> {
        self.ids.get(usize::from(index)).copied().ok_or_else(|| {
            corrupt(format!(
                "inode refers to id {index}, the id table has {}",
                self.ids.len()
            ))
        })
    }

    fn block_count(&self, size: u64, fragment: u32) -> u64 {
        let bs = u64::from(self.sb.block_size);
        if fragment == NO_FRAGMENT {
            size.div_ceil(bs)
        } else {
            size / bs
        }
    }

    /// Parses the inode at position `pos` of the inode table.
    pub(crate) fn inode(&mut self, pos: usize) -> Result<RawInode, SquashError> {
        let bytes = std::mem::take(&mut self.inodes.bytes);
        let parsed = self.parse(&bytes, pos);
        self.inodes.bytes = bytes;
        parsed
    }

    fn parse(&mut self, table: &[u8], pos: usize) -> Result<RawInode, SquashError> {
        let mut b = Bytes::new(table, pos, "inode");
        let kind = b.u16()?;
        let perm = b.u16()? & 0o7777;
        let uid = self.id(b.u16()?)?;
        let gid = self.id(b.u16()?)?;
        let mtime = b.u32()?;
        let _number = b.u32()?;
        let Some(kind) = InodeType::from_raw(kind) else {
            return Err(corrupt(format!("inode type {kind} at byte {pos}")));
        };
        use InodeType::*;
        let (kind, size, data) = match kind {
            BasicDir | ExtDir => dir(&mut b, kind)?,
            BasicFile | ExtFile => self.file(&mut b, kind, table.len())?,
            BasicSymlink | ExtSymlink => symlink(&mut b)?,
            BasicBlockDev | ExtBlockDev => (FileKind::BlockDevice, 0, device(&mut b)?),
            BasicCharDev | ExtCharDev => (FileKind::CharDevice, 0, device(&mut b)?),
            BasicFifo | ExtFifo => (FileKind::Fifo, 0, RawData::None),
            BasicSocket | ExtSocket => (FileKind::Socket, 0, RawData::None),
        };
        Ok(RawInode {
            kind,
            perm,
            uid,
            gid,
            mtime,
            size,
            data,
        })
    }

    fn file(
        &mut self,
        b: &mut Bytes,
        kind: InodeType,
        table_len: usize,
    ) -> Result<(FileKind, u64, RawData), SquashError> {
        let (start, fragment, frag_offset, size) = if kind == InodeType::BasicFile {
            let start = u64::from(b.u32()?);
            let fragment = b.u32()?;
            let frag_offset = b.u32()?;
            let size = u64::from(b.u32()?);
            (start, fragment, frag_offset, size)
        } else {
            let start = b.u64()?;
            let size = b.u64()?;
            let _sparse = b.u64()?;
            let _nlink = b.u32()?;
            let fragment = b.u32()?;
            let frag_offset = b.u32()?;
            let _xattr = b.u32()?;
            (start, fragment, frag_offset, size)
        };
        let count = self.block_count(size, fragment);
        let list_len = count
            .checked_mul(4)
            .filter(|&n| n <= (table_len - self.block_list_bytes) as u64);
        let Some(list_len) = list_len else {
            return Err(corrupt(format!(
                "a file of {size} bytes needs more block sizes than the inode table holds"
            )));
        };
        self.block_list_bytes += list_len as usize;
        let list = b.take(list_len as usize)?;
        let mut sizes = Vec::with_capacity(count as usize);
        for c in list.chunks_exact(4) {
            let s = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            if s & !(BLOCK_UNCOMPRESSED | BLOCK_LEN_MASK) != 0
                || s & BLOCK_LEN_MASK > self.sb.block_size
            {
                return Err(corrupt(format!(
                    "a data block of a file at byte {start} has stored size {s:#x}"
                )));
            }
            sizes.push(s);
        }
        let fragment = (fragment != NO_FRAGMENT).then_some((fragment, frag_offset));
        Ok((
            FileKind::File,
            size,
            RawData::File(Layout::new(start, sizes, fragment)),
        ))
    }
}

fn dir(b: &mut Bytes, kind: InodeType) -> Result<(FileKind, u64, RawData), SquashError> {
    let (block, size, offset) = if kind == InodeType::BasicDir {
        let block = b.u32()?;
        let _nlink = b.u32()?;
        let size = u32::from(b.u16()?);
        let offset = b.u16()?;
        let _parent = b.u32()?;
        (block, size, offset)
    } else {
        let _nlink = b.u32()?;
        let size = b.u32()?;
        let block = b.u32()?;
        let _parent = b.u32()?;
        let _index_count = b.u16()?;
        let offset = b.u16()?;
        let _xattr = b.u32()?;
        (block, size, offset)
    };
    // An empty directory's listing is the dots alone.
    let len = if size <= DIR_SIZE_DOTS {
        0
    } else {
        (size - DIR_SIZE_DOTS) as usize
    };
    Ok((
        FileKind::Dir,
        0,
        RawData::Dir {
            block: u64::from(block),
            offset: usize::from(offset),
            len,
        },
    ))
}

fn symlink(b: &mut Bytes) -> Result<(FileKind, u64, RawData), SquashError> {
    let _nlink = b.u32()?;
    let len = b.u32()? as usize;
    if len == 0 || len > MAX_SYMLINK {
        return Err(corrupt(format!("symlink target of {len} bytes")));
    }
    let target = b.take(len)?.to_vec();
    Ok((
        FileKind::Symlink,
        len as u64,
        RawData::Symlink(OsString::from_vec(target)),
    ))
}

fn device(b: &mut Bytes) -> Result<RawData, SquashError> {
    let _nlink = b.u32()?;
    Ok(RawData::Device(b.u32()?))
}
