//! Reads a squashfs 4.0 superblock and its metadata tables (inodes,
//! directories, fragments, ids) into the in-memory index the server uses.
//!
//! The image is untrusted. Every table position is checked against the
//! image length before it is read, metadata blocks are decompressed with a
//! fixed output limit, and nothing is allocated from a count in the image
//! without that count first being bounded by bytes that are really there:
//! - a metadata table is read block by block between two known positions,
//!   so its decompressed size is at most 8 KiB per block actually present;
//! - the directories' listings together may not be longer than the
//!   directory table, and the files' block lists together not longer than
//!   the inode table (in a real image neither overlaps);
//! - no more distinct inodes than the superblock declares;
//! - a directory may be reached once only (no cycles, no shared subtrees),
//!   and the tree is walked with an explicit stack, not recursion.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;

use super::{Compression, Data, FileKind, Inode, Layout, ROOT_INO, SquashError, decompress};

/// Size of the squashfs superblock.
const SUPERBLOCK_LEN: usize = 96;
/// Most bytes one metadata block holds once decompressed.
const METADATA_BLOCK: usize = 8192;
/// "Not present" for optional table positions.
const NOT_SET: u64 = u64::MAX;
/// Flag: no fragment table.
const FLAG_NO_FRAGMENTS: u16 = 0x0010;
/// Bit of a data block size saying the block is stored uncompressed.
pub(super) const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
/// Upper bound for one decompressed metadata table; far above any real image.
const TABLE_LIMIT: usize = 1 << 30;

/// The fields of the superblock the server needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct SuperBlock {
    pub inode_count: u32,
    pub block_size: u32,
    pub frag_count: u32,
    pub compression: Compression,
    pub flags: u16,
    pub id_count: u16,
    pub root_inode: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub inode_table: u64,
    pub dir_table: u64,
    pub frag_table: u64,
    pub export_table: u64,
}

fn corrupt(what: impl Into<String>) -> SquashError {
    SquashError::Corrupt(what.into())
}

/// Little-endian field reads from a byte slice, failing instead of panicking.
struct Bytes<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Bytes<'a> {
    fn new(buf: &'a [u8], pos: usize, what: &'static str) -> Bytes<'a> {
        Bytes { buf, pos, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SquashError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(corrupt(format!(
                "{} truncated at byte {} of its table",
                self.what, self.pos
            )));
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, SquashError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, SquashError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, SquashError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The image: a file and the offset the squashfs starts at.
pub(super) struct Source<'a> {
    pub file: &'a File,
    pub base: u64,
    /// Bytes of the file from `base` on.
    pub len: u64,
}

impl Source<'_> {
    fn read(&self, at: u64, len: usize, what: &str) -> Result<Vec<u8>, SquashError> {
        let end = at.checked_add(len as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(corrupt(format!(
                "{what} at byte {at} ({len} bytes) lies past the end of the filesystem ({} bytes)",
                self.len
            )));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, self.base + at)?;
        Ok(buf)
    }

    /// Reads the metadata block at `at`; returns its bytes and the position after it.
    fn metadata_block(
        &self,
        at: u64,
        compression: Compression,
        what: &str,
    ) -> Result<(Vec<u8>, u64), SquashError> {
        let head = self.read(at, 2, what)?;
        let head = u16::from_le_bytes([head[0], head[1]]);
        let stored = usize::from(head & 0x7fff);
        if stored == 0 || stored > METADATA_BLOCK {
            return Err(corrupt(format!(
                "{what}: metadata block at byte {at} has length {stored}"
            )));
        }
        let raw = self.read(at + 2, stored, what)?;
        let bytes = if head & 0x8000 != 0 {
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
    fn metadata_table(
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
    fn lookup_table(
        &self,
        index: u64,
        count: u64,
        entry_len: u64,
        compression: Compression,
        what: &str,
    ) -> Result<Vec<u8>, SquashError> {
        let want = count * entry_len;
        let blocks = want.div_ceil(METADATA_BLOCK as u64);
        let pointers = self.read(index, (blocks * 8) as usize, what)?;
        let mut out = Vec::new();
        for p in pointers.chunks_exact(8) {
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
    fn first_pointer(&self, index: u64, what: &str) -> Result<u64, SquashError> {
        let p = self.read(index, 8, what)?;
        Ok(u64::from_le_bytes(p.try_into().expect("8 bytes")))
    }
}

/// A decompressed metadata table.
#[derive(Default)]
struct Table {
    bytes: Vec<u8>,
    /// Block position (relative to the table) -> offset in `bytes`.
    blocks: HashMap<u64, usize>,
}

impl Table {
    /// Position in `bytes` of a reference (block, offset within the block).
    fn locate(&self, block: u64, offset: usize, what: &str) -> Result<usize, SquashError> {
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

/// Parses the superblock.
pub(super) fn superblock(src: &Source) -> Result<SuperBlock, SquashError> {
    let raw = src.read(0, SUPERBLOCK_LEN, "superblock")?;
    let mut b = Bytes::new(&raw, 0, "superblock");
    let magic = b.u32()?;
    if magic != 0x7371_7368 {
        return Err(corrupt(format!("bad magic {magic:#010x} (want hsqs)")));
    }
    let inode_count = b.u32()?;
    let _mtime = b.u32()?;
    let block_size = b.u32()?;
    let frag_count = b.u32()?;
    let compressor = b.u16()?;
    let block_log = b.u16()?;
    let flags = b.u16()?;
    let id_count = b.u16()?;
    let (major, minor) = (b.u16()?, b.u16()?);
    let sb = SuperBlock {
        inode_count,
        block_size,
        frag_count,
        compression: match compressor {
            1 => Compression::Gzip,
            4 => Compression::Xz,
            5 => Compression::Lz4,
            6 => Compression::Zstd,
            2 => return Err(SquashError::Compression("lzma".into())),
            3 => return Err(SquashError::Compression("lzo".into())),
            n => return Err(SquashError::Compression(format!("id {n}"))),
        },
        flags,
        id_count,
        root_inode: b.u64()?,
        bytes_used: b.u64()?,
        id_table: b.u64()?,
        inode_table: {
            let _xattr = b.u64()?;
            b.u64()?
        },
        dir_table: b.u64()?,
        frag_table: b.u64()?,
        export_table: b.u64()?,
    };
    if (major, minor) != (4, 0) {
        return Err(corrupt(format!(
            "squashfs version {major}.{minor} (want 4.0)"
        )));
    }
    if !block_size.is_power_of_two()
        || !(4096..=1 << 20).contains(&block_size)
        || u32::from(block_log) != block_size.ilog2()
    {
        return Err(corrupt(format!(
            "block size {block_size} (log {block_log}) is not a power of two from 4 KiB to 1 MiB"
        )));
    }
    if sb.bytes_used > src.len {
        return Err(corrupt(format!(
            "bytes_used {} exceeds the {} bytes present",
            sb.bytes_used, src.len
        )));
    }
    for (name, at) in [
        ("inode table", sb.inode_table),
        ("directory table", sb.dir_table),
        ("id table", sb.id_table),
    ] {
        if at >= sb.bytes_used {
            return Err(corrupt(format!("{name} position {at} is past bytes_used")));
        }
    }
    if sb.inode_table > sb.dir_table {
        return Err(corrupt("the inode table starts after the directory table"));
    }
    Ok(sb)
}

/// The fragment table: (position, stored size, stored uncompressed) per fragment.
pub(super) fn fragments(
    src: &Source,
    sb: &SuperBlock,
) -> Result<Vec<(u64, u32, bool)>, SquashError> {
    if sb.frag_count == 0 || sb.frag_table == NOT_SET || sb.flags & FLAG_NO_FRAGMENTS != 0 {
        return Ok(Vec::new());
    }
    // Each fragment block occupies at least one byte of the image.
    if u64::from(sb.frag_count) > sb.bytes_used {
        return Err(corrupt(format!(
            "{} fragments declared in a {} byte filesystem",
            sb.frag_count, sb.bytes_used
        )));
    }
    let raw = src.lookup_table(
        sb.frag_table,
        u64::from(sb.frag_count),
        16,
        sb.compression,
        "fragment table",
    )?;
    let mut out = Vec::with_capacity(sb.frag_count as usize);
    for e in raw.chunks_exact(16) {
        let mut b = Bytes::new(e, 0, "fragment entry");
        let start = b.u64()?;
        let size = b.u32()?;
        let stored = size & (BLOCK_UNCOMPRESSED - 1);
        if stored > sb.block_size {
            return Err(corrupt(format!(
                "fragment at byte {start} claims {stored} stored bytes, more than a block"
            )));
        }
        out.push((start, stored, size & BLOCK_UNCOMPRESSED != 0));
    }
    Ok(out)
}

fn ids(src: &Source, sb: &SuperBlock) -> Result<Vec<u32>, SquashError> {
    if sb.id_count == 0 {
        return Err(corrupt("the id table is empty"));
    }
    let raw = src.lookup_table(
        sb.id_table,
        u64::from(sb.id_count),
        4,
        sb.compression,
        "id table",
    )?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Where the directory table ends: where the next table's blocks begin.
fn dir_table_end(src: &Source, sb: &SuperBlock) -> Result<u64, SquashError> {
    let next = if sb.frag_count > 0 && sb.frag_table != NOT_SET {
        sb.frag_table
    } else if sb.export_table != NOT_SET {
        sb.export_table
    } else {
        sb.id_table
    };
    let end = src.first_pointer(next, "table index after the directory table")?;
    if end < sb.dir_table || end > sb.bytes_used {
        return Err(corrupt(format!(
            "the directory table ends at {end}, outside {}..{}",
            sb.dir_table, sb.bytes_used
        )));
    }
    Ok(end)
}

/// One inode as stored, before it is placed in the tree.
struct RawInode {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    mtime: u32,
    /// File size; symlink target length.
    size: u64,
    data: RawData,
}

enum RawData {
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

struct Walker<'a> {
    sb: &'a SuperBlock,
    inodes: Table,
    dirs: Table,
    ids: Vec<u32>,
    /// Block-list bytes and listing bytes used so far (each bounded by its table).
    block_list_bytes: usize,
    listing_bytes: usize,
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
        if fragment == u32::MAX {
            size.div_ceil(bs)
        } else {
            size / bs
        }
    }

    /// Parses the inode at position `pos` of the inode table.
    fn inode(&mut self, pos: usize) -> Result<RawInode, SquashError> {
        let mut b = Bytes::new(&self.inodes.bytes, pos, "inode");
        let kind = b.u16()?;
        let perm = b.u16()? & 0o7777;
        let uid = self.id(b.u16()?)?;
        let gid = self.id(b.u16()?)?;
        let mtime = b.u32()?;
        let _number = b.u32()?;
        let (kind, size, data) = match kind {
            1 | 8 => {
                let (block, size, offset) = if kind == 1 {
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
                // The stored size counts 3 bytes for "." and "..".
                let len = (size as usize).saturating_sub(3);
                (
                    FileKind::Dir,
                    0,
                    RawData::Dir {
                        block: u64::from(block),
                        offset: usize::from(offset),
                        len: if size < 4 { 0 } else { len },
                    },
                )
            }
            2 | 9 => {
                let (start, fragment, frag_offset, size) = if kind == 2 {
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
                    .filter(|&n| n <= (self.inodes.bytes.len() - self.block_list_bytes) as u64);
                let Some(list_len) = list_len else {
                    return Err(corrupt(format!(
                        "a file of {size} bytes needs more block sizes than the inode table holds"
                    )));
                };
                self.block_list_bytes += list_len as usize;
                let raw = b.take(list_len as usize)?;
                let mut sizes = Vec::with_capacity(count as usize);
                for c in raw.chunks_exact(4) {
                    let s = u32::from_le_bytes(c.try_into().expect("4 bytes"));
                    if s & !(BLOCK_UNCOMPRESSED | (BLOCK_UNCOMPRESSED - 1)) != 0
                        || s & (BLOCK_UNCOMPRESSED - 1) > self.sb.block_size
                    {
                        return Err(corrupt(format!(
                            "a data block of a file at byte {start} has stored size {s:#x}"
                        )));
                    }
                    sizes.push(s);
                }
                let fragment = (fragment != u32::MAX).then_some((fragment, frag_offset));
                (
                    FileKind::File,
                    size,
                    RawData::File(Layout::new(start, sizes, fragment)),
                )
            }
            3 | 10 => {
                let _nlink = b.u32()?;
                let len = b.u32()? as usize;
                if len == 0 || len > 4096 {
                    return Err(corrupt(format!("symlink target of {len} bytes")));
                }
                let target = b.take(len)?.to_vec();
                (
                    FileKind::Symlink,
                    len as u64,
                    RawData::Symlink(OsString::from_vec(target)),
                )
            }
            4 | 5 | 11 | 12 => {
                let _nlink = b.u32()?;
                let rdev = b.u32()?;
                let k = if kind % 7 == 4 {
                    FileKind::BlockDevice
                } else {
                    FileKind::CharDevice
                };
                (k, 0, RawData::Device(rdev))
            }
            6 | 13 => (FileKind::Fifo, 0, RawData::None),
            7 | 14 => (FileKind::Socket, 0, RawData::None),
            other => return Err(corrupt(format!("inode type {other} at byte {pos}"))),
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

    /// Parses a directory listing into (name, inode reference) pairs.
    fn listing(
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
        let listing = &self.dirs.bytes[start..end];
        let mut b = Bytes::new(listing, 0, "directory listing");
        let mut out = Vec::new();
        while b.pos < listing.len() {
            let count = b.u32()?;
            if count >= 256 {
                return Err(corrupt(format!("directory header with {count} entries")));
            }
            let inode_block = u64::from(b.u32()?);
            let _number = b.u32()?;
            for _ in 0..=count {
                let inode_offset = b.u16()?;
                let _delta = b.u16()?;
                let _type = b.u16()?;
                let name_len = usize::from(b.u16()?) + 1;
                let name = b.take(name_len)?;
                if name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
                    return Err(corrupt(format!(
                        "directory entry with the name {:?}",
                        String::from_utf8_lossy(name)
                    )));
                }
                let reference = inode_block << 16 | u64::from(inode_offset);
                out.push((OsString::from_vec(name.to_vec()), reference));
            }
        }
        Ok(out)
    }

    fn locate_inode(&self, reference: u64) -> Result<usize, SquashError> {
        self.inodes.locate(
            reference >> 16,
            (reference & 0xffff) as usize,
            "an inode reference",
        )
    }
}

/// Reads the whole tree into inodes numbered from [`ROOT_INO`].
pub(super) fn build(src: &Source, sb: &SuperBlock) -> Result<Vec<Inode>, SquashError> {
    let ids = ids(src, sb)?;
    let inodes = src.metadata_table(sb.inode_table, sb.dir_table, sb.compression, "inode table")?;
    let dir_end = dir_table_end(src, sb)?;
    let dirs = src.metadata_table(sb.dir_table, dir_end, sb.compression, "directory table")?;
    let mut w = Walker {
        sb,
        inodes,
        dirs,
        ids,
        block_list_bytes: 0,
        listing_bytes: 0,
    };

    let root_pos = w.locate_inode(sb.root_inode)?;
    let mut out: Vec<Inode> = Vec::new();
    // Inode table position -> our inode number (hard links share one).
    let mut seen: HashMap<usize, u64> = HashMap::new();
    // Directories whose listings are still to be read: (our number, listing).
    let mut pending: Vec<(u64, u64, usize, usize)> = Vec::new();

    let mut place = |w: &mut Walker,
                     out: &mut Vec<Inode>,
                     pending: &mut Vec<(u64, u64, usize, usize)>,
                     pos: usize,
                     parent: Option<u64>|
     -> Result<u64, SquashError> {
        if let Some(&ino) = seen.get(&pos) {
            let inode = &mut out[(ino - 1) as usize];
            if inode.kind == FileKind::Dir {
                return Err(corrupt("a directory is reachable from two places"));
            }
            inode.nlink += 1;
            return Ok(ino);
        }
        if out.len() >= sb.inode_count as usize {
            return Err(corrupt(format!(
                "more inodes are reachable than the {} the superblock declares",
                sb.inode_count
            )));
        }
        let raw = w.inode(pos)?;
        let ino = out.len() as u64 + 1;
        let data = match raw.data {
            RawData::Dir { block, offset, len } => {
                pending.push((ino, block, offset, len));
                Data::Dir(Vec::new())
            }
            RawData::File(layout) => Data::File(layout),
            RawData::Symlink(t) => Data::Symlink(t),
            RawData::Device(d) => Data::Device(d),
            RawData::None => Data::None,
        };
        out.push(Inode {
            kind: raw.kind,
            perm: raw.perm,
            uid: raw.uid,
            gid: raw.gid,
            mtime: raw.mtime,
            size: raw.size,
            nlink: 1,
            parent: parent.unwrap_or(ino),
            data,
        });
        seen.insert(pos, ino);
        Ok(ino)
    };

    let root = place(&mut w, &mut out, &mut pending, root_pos, None)?;
    debug_assert_eq!(root, ROOT_INO);
    if out[0].kind != FileKind::Dir {
        return Err(corrupt("the root is not a directory"));
    }
    while let Some((dir, block, offset, len)) = pending.pop() {
        let listing = w.listing(block, offset, len)?;
        let mut entries = Vec::with_capacity(listing.len());
        for (name, reference) in listing {
            let pos = w.locate_inode(reference)?;
            let child = place(&mut w, &mut out, &mut pending, pos, Some(dir))?;
            entries.push((name, child));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if entries.windows(2).any(|p| p[0].0 == p[1].0) {
            return Err(corrupt("a directory lists the same name twice"));
        }
        let subdirs = entries
            .iter()
            .filter(|(_, c)| out[(*c - 1) as usize].kind == FileKind::Dir)
            .count() as u32;
        let inode = &mut out[(dir - 1) as usize];
        inode.nlink = 2 + subdirs;
        inode.data = Data::Dir(entries);
    }
    Ok(out)
}
