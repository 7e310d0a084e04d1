//! The superblock and the small lookup tables: fragments and ids, and where
//! the directory table ends.

use super::Compression;
use super::SquashError;
use super::raw::{
    self, BLOCK_LEN_MASK, BLOCK_UNCOMPRESSED, Bytes, FLAG_NO_FRAGMENTS, FRAGMENT_ENTRY_LEN,
    ID_ENTRY_LEN, MAGIC, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, NOT_SET, SUPERBLOCK_LEN, Source, VERSION,
    corrupt,
};

/// The fields of the superblock the server needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuperBlock {
    pub(crate) inode_count: u32,
    pub(crate) block_size: u32,
    pub(crate) frag_count: u32,
    pub(crate) compression: Compression,
    pub(crate) flags: u16,
    pub(crate) id_count: u16,
    pub(crate) root_inode: u64,
    pub(crate) bytes_used: u64,
    pub(crate) id_table: u64,
    pub(crate) inode_table: u64,
    pub(crate) dir_table: u64,
    pub(crate) frag_table: u64,
    pub(crate) export_table: u64,
}

/// Parses the superblock.
pub(crate) fn superblock(src: &Source) -> Result<SuperBlock, SquashError> {
    let buf = src.read(0, SUPERBLOCK_LEN, "superblock")?;
    let mut b = Bytes::new(&buf, 0, "superblock");
    let magic = b.u32()?;
    if magic != MAGIC {
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
        compression: raw::compression(compressor)?,
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
    if (major, minor) != VERSION {
        return Err(corrupt(format!(
            "squashfs version {major}.{minor} (want 4.0)"
        )));
    }
    check(src, &sb, block_log)?;
    Ok(sb)
}

/// The superblock's sizes and table positions against the image.
fn check(src: &Source, sb: &SuperBlock, block_log: u16) -> Result<(), SquashError> {
    let block_size = sb.block_size;
    if !block_size.is_power_of_two()
        || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
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
    Ok(())
}

/// The fragment table: (position, stored size, stored uncompressed) per fragment.
pub(crate) fn fragments(
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
    let table = src.lookup_table(
        sb.frag_table,
        u64::from(sb.frag_count),
        FRAGMENT_ENTRY_LEN,
        sb.compression,
        "fragment table",
    )?;
    let mut out = Vec::with_capacity(sb.frag_count as usize);
    for e in table.chunks_exact(FRAGMENT_ENTRY_LEN as usize) {
        let mut b = Bytes::new(e, 0, "fragment entry");
        let start = b.u64()?;
        let size = b.u32()?;
        let stored = size & BLOCK_LEN_MASK;
        if stored > sb.block_size {
            return Err(corrupt(format!(
                "fragment at byte {start} claims {stored} stored bytes, more than a block"
            )));
        }
        out.push((start, stored, size & BLOCK_UNCOMPRESSED != 0));
    }
    Ok(out)
}

/// The id table: the uids and gids inodes refer to by index.
pub(crate) fn ids(src: &Source, sb: &SuperBlock) -> Result<Vec<u32>, SquashError> {
    if sb.id_count == 0 {
        return Err(corrupt("the id table is empty"));
    }
    let table = src.lookup_table(
        sb.id_table,
        u64::from(sb.id_count),
        ID_ENTRY_LEN,
        sb.compression,
        "id table",
    )?;
    Ok(table
        .chunks_exact(ID_ENTRY_LEN as usize)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Where the directory table ends: where the next table's blocks begin.
pub(crate) fn dir_table_end(src: &Source, sb: &SuperBlock) -> Result<u64, SquashError> {
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
