//! One inode of the inode table, parsed on demand from its reference.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use super::metadata::{Cursor, Extent, Meta, Pos};
use super::raw::{DIR_SIZE_DOTS, INODE_HEADER_LEN, InodeType, MAX_SYMLINK, NO_FRAGMENT, corrupt};
use super::tables::SuperBlock;
use super::{FileKind, SquashError};

/// One inode of the image.
#[derive(Debug, Clone)]
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
    /// Number of links, as the image records it.
    pub nlink: u32,
    /// Type-specific contents.
    pub data: Data,
    /// The inode's number in the image (1 to the superblock's count).
    pub(crate) number: u32,
}

/// What an inode holds beyond its attributes.
#[derive(Debug, Clone)]
pub enum Data {
    /// A directory: where its listing lies.
    Dir(DirData),
    /// A regular file: where its data lies.
    File(FileData),
    /// A symlink's target.
    Symlink(OsString),
    /// A device node's number.
    Device(u32),
    /// Nothing (FIFOs and sockets).
    None,
}

/// Where a directory's listing lies in the directory table.
#[derive(Debug, Clone)]
pub struct DirData {
    /// Start of the listing.
    pub(crate) listing: Pos,
    /// Bytes of the listing (without the dots the size counts).
    pub(crate) len: u32,
    /// The name index of an extended directory: where it starts, entries.
    pub(crate) index: Option<(Pos, u16)>,
}

/// Where a regular file's data lies.
#[derive(Debug, Clone)]
pub struct FileData {
    /// Image-relative offset of the first block.
    pub(crate) start: u64,
    /// Number of whole blocks (the tail may be in a fragment).
    pub(crate) blocks: u64,
    /// Where the list of the blocks' stored sizes starts in the inode table.
    pub(crate) list: Pos,
    /// Fragment index and offset of the tail, if the tail is in a fragment.
    pub(crate) fragment: Option<(u32, u32)>,
}

/// What parsing needs besides the bytes: the superblock, the two tables, the ids.
pub(crate) struct Parser<'a> {
    pub(crate) meta: &'a Meta,
    pub(crate) sb: &'a SuperBlock,
    pub(crate) inodes: Extent,
    pub(crate) dirs: Extent,
    pub(crate) ids: &'a [u32],
}

/// An inode reference: the inode's metadata block (relative to the inode
/// table) in the high bits, its offset inside the block in the low 16.
pub(crate) fn split_reference(reference: u64) -> (u64, usize) {
    (reference >> 16, (reference & 0xffff) as usize)
}

impl Parser<'_> {
    fn id(&self, index: u16) -> Result<u32, SquashError> {
        self.ids.get(usize::from(index)).copied().ok_or_else(|| {
            corrupt(format!(
                "inode refers to id {index}, the id table has {}",
                self.ids.len()
            ))
        })
    }

    /// Parses the inode at `reference`.
    pub(crate) fn inode(&self, reference: u64) -> Result<Inode, SquashError> {
        let (block, offset) = split_reference(reference);
        let mut c = Cursor::at_ref(self.meta, self.inodes, block, offset)?;
        let mut head = [0u8; INODE_HEADER_LEN];
        c.read(&mut head)?;
        let field = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
        let raw_type = field(0);
        let Some(kind) = InodeType::from_raw(raw_type) else {
            return Err(corrupt(format!(
                "inode type {raw_type} at reference {reference:#x}"
            )));
        };
        let mut inode = Inode {
            kind: FileKind::File,
            perm: field(2) & 0o7777,
            uid: self.id(field(4))?,
            gid: self.id(field(6))?,
            mtime: u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")),
            size: 0,
            nlink: 1,
            data: Data::None,
            number: u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")),
        };
        use InodeType::*;
        match kind {
            BasicDir | ExtDir => self.dir(&mut c, kind, &mut inode)?,
            BasicFile | ExtFile => self.file(&mut c, kind, &mut inode)?,
            BasicSymlink | ExtSymlink => symlink(&mut c, &mut inode)?,
            BasicBlockDev | ExtBlockDev => device(&mut c, &mut inode, FileKind::BlockDevice)?,
            BasicCharDev | ExtCharDev => device(&mut c, &mut inode, FileKind::CharDevice)?,
            BasicFifo | ExtFifo => ipc(&mut c, &mut inode, FileKind::Fifo)?,
            BasicSocket | ExtSocket => ipc(&mut c, &mut inode, FileKind::Socket)?,
        }
        Ok(inode)
    }

    fn dir(&self, c: &mut Cursor, kind: InodeType, inode: &mut Inode) -> Result<(), SquashError> {
        let (block, nlink, size, offset, index_count) = if kind == InodeType::BasicDir {
            let block = c.u32()?;
            let nlink = c.u32()?;
            let size = u32::from(c.u16()?);
            let offset = c.u16()?;
            let _parent = c.u32()?;
            (block, nlink, size, offset, 0)
        } else {
            let nlink = c.u32()?;
            let size = c.u32()?;
            let block = c.u32()?;
            let _parent = c.u32()?;
            let index_count = c.u16()?;
            let offset = c.u16()?;
            let _xattr = c.u32()?;
            (block, nlink, size, offset, index_count)
        };
        let listing =
            Cursor::at_ref(self.meta, self.dirs, u64::from(block), usize::from(offset))?.pos();
        inode.kind = FileKind::Dir;
        inode.nlink = nlink;
        inode.data = Data::Dir(DirData {
            listing,
            // An empty directory's listing is the dots alone.
            len: size.saturating_sub(DIR_SIZE_DOTS),
            index: (index_count > 0).then_some((c.pos(), index_count)),
        });
        Ok(())
    }

    fn file(&self, c: &mut Cursor, kind: InodeType, inode: &mut Inode) -> Result<(), SquashError> {
        let (start, fragment, frag_offset, size) = if kind == InodeType::BasicFile {
            let start = u64::from(c.u32()?);
            let fragment = c.u32()?;
            let frag_offset = c.u32()?;
            let size = u64::from(c.u32()?);
            (start, fragment, frag_offset, size)
        } else {
            let start = c.u64()?;
            let size = c.u64()?;
            let _sparse = c.u64()?;
            inode.nlink = c.u32()?;
            let fragment = c.u32()?;
            let frag_offset = c.u32()?;
            let _xattr = c.u32()?;
            (start, fragment, frag_offset, size)
        };
        let bs = u64::from(self.sb.block_size);
        let blocks = if fragment == NO_FRAGMENT {
            size.div_ceil(bs)
        } else {
            size / bs
        };
        inode.size = size;
        inode.data = Data::File(FileData {
            start,
            blocks,
            list: c.pos(),
            fragment: (fragment != NO_FRAGMENT).then_some((fragment, frag_offset)),
        });
        Ok(())
    }
}

fn symlink(c: &mut Cursor, inode: &mut Inode) -> Result<(), SquashError> {
    inode.nlink = c.u32()?;
    let len = c.u32()? as usize;
    if len == 0 || len > MAX_SYMLINK {
        return Err(corrupt(format!("symlink target of {len} bytes")));
    }
    inode.kind = FileKind::Symlink;
    inode.size = len as u64;
    inode.data = Data::Symlink(OsString::from_vec(c.take(len)?));
    Ok(())
}

fn device(c: &mut Cursor, inode: &mut Inode, kind: FileKind) -> Result<(), SquashError> {
    inode.nlink = c.u32()?;
    inode.kind = kind;
    inode.data = Data::Device(c.u32()?);
    Ok(())
}

fn ipc(c: &mut Cursor, inode: &mut Inode, kind: FileKind) -> Result<(), SquashError> {
    inode.nlink = c.u32()?;
    inode.kind = kind;
    Ok(())
}
