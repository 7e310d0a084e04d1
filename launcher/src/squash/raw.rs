//! The on-disk format of squashfs 4.0, by name: magic, superblock layout,
//! flag bits, compressor ids and inode types; and the two primitives every
//! table reader builds on: bounds-checked positional reads from the image
//! ([`Source`]) and little-endian field reads from a buffer ([`Bytes`]).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{Compression, SquashError};

/// "hsqs", the first four bytes of a squashfs 4.0 image.
pub(crate) const MAGIC: u32 = 0x7371_7368;
/// The format version this reader understands (major, minor).
pub(crate) const VERSION: (u16, u16) = (4, 0);
/// Size of the superblock.
pub(crate) const SUPERBLOCK_LEN: usize = 96;
/// Smallest and largest data block sizes the format allows.
pub(crate) const MIN_BLOCK_SIZE: u32 = 4096;
pub(crate) const MAX_BLOCK_SIZE: u32 = 1 << 20;
/// Most bytes one metadata block holds once decompressed.
pub(crate) const METADATA_BLOCK: usize = 8192;
/// Bit of a metadata block's 2-byte header: the block is stored uncompressed.
pub(crate) const METADATA_UNCOMPRESSED: u16 = 0x8000;
/// Bits of a metadata block's header that give its stored length.
pub(crate) const METADATA_LEN_MASK: u16 = 0x7fff;
/// "Not present" for optional table positions in the superblock.
pub(crate) const NOT_SET: u64 = u64::MAX;
/// Superblock flag: the image has no fragment table.
pub(crate) const FLAG_NO_FRAGMENTS: u16 = 0x0010;
/// Bit of a data block or fragment size: the block is stored uncompressed.
pub(crate) const BLOCK_UNCOMPRESSED: u32 = 1 << 24;
/// Bits of a data block or fragment size that give its stored length.
pub(crate) const BLOCK_LEN_MASK: u32 = BLOCK_UNCOMPRESSED - 1;
/// Fragment index of a file whose tail is not in a fragment.
pub(crate) const NO_FRAGMENT: u32 = u32::MAX;
/// Bytes of one fragment table entry (start u64, size u32, unused u32).
pub(crate) const FRAGMENT_ENTRY_LEN: u64 = 16;
/// Bytes of one id table entry (u32).
pub(crate) const ID_ENTRY_LEN: u64 = 4;
/// Bytes of one pointer of a lookup table's index (u64).
pub(crate) const POINTER_LEN: u64 = 8;
/// Longest symlink target accepted (the kernel's PATH_MAX).
pub(crate) const MAX_SYMLINK: usize = 4096;
/// A directory header covers at most this many entries.
pub(crate) const DIR_HEADER_MAX_ENTRIES: u32 = 256;
/// A directory inode's stored size counts 3 bytes for "." and "..".
pub(crate) const DIR_SIZE_DOTS: u32 = 3;

/// Compressor ids of the superblock.
pub(crate) mod compressor {
    /// zlib (mksquashfs `-comp gzip`).
    pub(crate) const GZIP: u16 = 1;
    /// Legacy LZMA (not supported).
    pub(crate) const LZMA: u16 = 2;
    /// LZO (not supported).
    pub(crate) const LZO: u16 = 3;
    /// xz.
    pub(crate) const XZ: u16 = 4;
    /// lz4.
    pub(crate) const LZ4: u16 = 5;
    /// zstd.
    pub(crate) const ZSTD: u16 = 6;
}

/// The compression of a superblock's compressor id, or why it is refused.
pub(crate) fn compression(id: u16) -> Result<Compression, SquashError> {
    let unsupported = |name: &str| Err(SquashError::Compression(name.into()));
    match id {
        compressor::GZIP => Ok(Compression::Gzip),
        compressor::XZ => Ok(Compression::Xz),
        compressor::LZ4 => Ok(Compression::Lz4),
        compressor::ZSTD => Ok(Compression::Zstd),
        compressor::LZMA => unsupported("lzma"),
        compressor::LZO => unsupported("lzo"),
        n => unsupported(&format!("id {n}")),
    }
}

/// Inode types as the inode table stores them (basic, then extended).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InodeType {
    BasicDir = 1,
    BasicFile = 2,
    BasicSymlink = 3,
    BasicBlockDev = 4,
    BasicCharDev = 5,
    BasicFifo = 6,
    BasicSocket = 7,
    ExtDir = 8,
    ExtFile = 9,
    ExtSymlink = 10,
    ExtBlockDev = 11,
    ExtCharDev = 12,
    ExtFifo = 13,
    ExtSocket = 14,
}

impl InodeType {
    /// The type with on-disk number `n`, if there is one.
    pub(crate) fn from_raw(n: u16) -> Option<InodeType> {
        use InodeType::*;
        Some(match n {
            1 => BasicDir,
            2 => BasicFile,
            3 => BasicSymlink,
            4 => BasicBlockDev,
            5 => BasicCharDev,
            6 => BasicFifo,
            7 => BasicSocket,
            8 => ExtDir,
            9 => ExtFile,
            10 => ExtSymlink,
            11 => ExtBlockDev,
            12 => ExtCharDev,
            13 => ExtFifo,
            14 => ExtSocket,
            _ => return None,
        })
    }
}

pub(crate) fn corrupt(what: impl Into<String>) -> SquashError {
    SquashError::Corrupt(what.into())
}

/// Little-endian field reads from a byte slice, failing instead of panicking.
pub(crate) struct Bytes<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
    what: &'static str,
}

impl<'a> Bytes<'a> {
    pub(crate) fn new(buf: &'a [u8], pos: usize, what: &'static str) -> Bytes<'a> {
        Bytes { buf, pos, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], SquashError> {
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

    pub(crate) fn u16(&mut self) -> Result<u16, SquashError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SquashError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SquashError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// The image: a file and the offset the squashfs starts at.
pub(crate) struct Source<'a> {
    pub(crate) file: &'a File,
    pub(crate) base: u64,
    /// Bytes of the file from `base` on.
    pub(crate) len: u64,
}

impl Source<'_> {
    /// Reads `len` bytes at image-relative `at`, refusing bytes past the end.
    pub(crate) fn read(&self, at: u64, len: usize, what: &str) -> Result<Vec<u8>, SquashError> {
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
}
