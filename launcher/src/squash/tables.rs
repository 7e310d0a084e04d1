//! The superblock and the lookup tables: fragments and exports (read one
//! entry at a time), ids (read whole: at most 256 KiB), and where the
//! directory table ends.

use super::metadata::Meta;
use super::raw::{
    self, BLOCK_LEN_MASK, BLOCK_UNCOMPRESSED, Bytes, EXPORT_ENTRY_LEN, FLAG_NO_FRAGMENTS,
    FRAGMENT_ENTRY_LEN, ID_ENTRY_LEN, MAGIC, MAX_BLOCK_SIZE, METADATA_BLOCK, MIN_BLOCK_SIZE,
    NOT_SET, POINTER_LEN, SUPERBLOCK_LEN, Source, VERSION, corrupt,
};
use super::{Compression, SquashError};

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

/// Where a fragment block lies: position, stored size, stored uncompressed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fragment {
    pub(crate) start: u64,
    pub(crate) stored: u32,
    pub(crate) uncompressed: bool,
}

/// How many fragments the image has; their table's index is checked to lie
/// inside the image, so no count is trusted beyond the bytes present.
pub(crate) fn fragment_count(src: &Source, sb: &SuperBlock) -> Result<u32, SquashError> {
    if sb.frag_count == 0 || sb.frag_table == NOT_SET || sb.flags & FLAG_NO_FRAGMENTS != 0 {
        return Ok(0);
    }
    lookup_index_fits(
        src,
        sb,
        sb.frag_table,
        u64::from(sb.frag_count),
        FRAGMENT_ENTRY_LEN,
        "fragment table",
    )?;
    Ok(sb.frag_count)
}

/// Entry `i` of the fragment table (read through the metadata cache).
pub(crate) fn fragment(
    meta: &Meta,
    sb: &SuperBlock,
    count: u32,
    i: u32,
) -> Result<Fragment, SquashError> {
    let e = meta.lookup_entry(
        sb.frag_table,
        u64::from(i),
        u64::from(count),
        FRAGMENT_ENTRY_LEN,
        "fragment table",
    )?;
    let mut b = Bytes::new(&e, 0, "fragment entry");
    let start = b.u64()?;
    let size = b.u32()?;
    let stored = size & BLOCK_LEN_MASK;
    if size & !(BLOCK_UNCOMPRESSED | BLOCK_LEN_MASK) != 0 || stored > sb.block_size {
        return Err(corrupt(format!(
            "fragment {i} at byte {start} claims size {size:#x}, more than a block"
        )));
    }
    Ok(Fragment {
        start,
        stored,
        uncompressed: size & BLOCK_UNCOMPRESSED != 0,
    })
}

/// Whether the image has a usable export table (inode number -> reference).
pub(crate) fn has_exports(src: &Source, sb: &SuperBlock) -> bool {
    sb.export_table != NOT_SET
        && sb.inode_count > 0
        && lookup_index_fits(
            src,
            sb,
            sb.export_table,
            u64::from(sb.inode_count),
            EXPORT_ENTRY_LEN,
            "export table",
        )
        .is_ok()
}

/// The inode reference of inode number `number` (from 1), by the export table.
pub(crate) fn export(meta: &Meta, sb: &SuperBlock, number: u64) -> Result<u64, SquashError> {
    let e = meta.lookup_entry(
        sb.export_table,
        number.wrapping_sub(1),
        u64::from(sb.inode_count),
        EXPORT_ENTRY_LEN,
        "export table",
    )?;
    Ok(u64::from_le_bytes(e.try_into().expect("8 bytes")))
}

/// Checks that the index of a lookup table of `count` entries of `len`
/// bytes lies inside the filesystem.
fn lookup_index_fits(
    src: &Source,
    sb: &SuperBlock,
    index: u64,
    count: u64,
    len: u64,
    what: &str,
) -> Result<(), SquashError> {
    let pointers = (count * len).div_ceil(METADATA_BLOCK as u64);
    let end = index.checked_add(pointers * POINTER_LEN);
    if end.is_none_or(|e| e > sb.bytes_used || e > src.len) {
        return Err(corrupt(format!(
            "{what}: the index of {count} entries at byte {index} runs past the filesystem"
        )));
    }
    Ok(())
}

/// The id table: the uids and gids inodes refer to by index (at most
/// 65,535 of them, 256 KiB).
pub(crate) fn ids(meta: &Meta, sb: &SuperBlock) -> Result<Vec<u32>, SquashError> {
    if sb.id_count == 0 {
        return Err(corrupt("the id table is empty"));
    }
    let count = u64::from(sb.id_count);
    lookup_index_fits(&meta.src, sb, sb.id_table, count, ID_ENTRY_LEN, "id table")?;
    let per_block = METADATA_BLOCK as u64 / ID_ENTRY_LEN;
    let mut out = Vec::with_capacity(usize::from(sb.id_count));
    for first in (0..count).step_by(per_block as usize) {
        let pointer = meta
            .src
            .u64_at(sb.id_table + first / per_block * POINTER_LEN, "id table")?;
        let block = meta.block(pointer, "id table")?;
        let want = (count - first).min(per_block) as usize * ID_ENTRY_LEN as usize;
        let bytes = block.bytes.get(..want).ok_or_else(|| {
            corrupt(format!(
                "id table holds fewer than the {count} ids declared"
            ))
        })?;
        out.extend(
            bytes
                .chunks_exact(ID_ENTRY_LEN as usize)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        );
    }
    Ok(out)
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
    let end = src.u64_at(next, "table index after the directory table")?;
    if end < sb.dir_table || end > sb.bytes_used {
        return Err(corrupt(format!(
            "the directory table ends at {end}, outside {}..{}",
            sb.dir_table, sb.bytes_used
        )));
    }
    Ok(end)
}
