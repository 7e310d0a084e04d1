//! The on-disk format of squashfs 4.0, by name: magic, superblock layout,
//! flag bits, compressor ids and inode types; and the two primitives every
//! table reader builds on: bounds-checked positional reads from the image
//! ([`Source`]) and little-endian field reads from a buffer ([`Bytes`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

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
/// Bytes of the header every inode starts with (type, mode, uid and gid
/// indexes, mtime, inode number).
pub(crate) const INODE_HEADER_LEN: usize = 16;
/// Bytes of one directory header (count - 1, inode block, base number).
pub(crate) const DIR_HEADER_LEN: u32 = 12;
/// Bytes of one directory entry before its name.
pub(crate) const DIR_ENTRY_LEN: u32 = 8;
/// Longest name of a directory entry.
pub(crate) const MAX_NAME: usize = 256;
/// Bytes of one export table entry (an inode reference, u64).
pub(crate) const EXPORT_ENTRY_LEN: u64 = 8;
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

/// The squashfs: a file, the offset it starts at and the bytes it may
/// occupy. Every read of the image goes through here and is refused past
/// `len`: nothing outside the partition is ever read.
pub(crate) struct Source {
    pub(crate) file: Arc<File>,
    pub(crate) base: u64,
    /// Bytes of the file from `base` on that belong to the filesystem.
    pub(crate) len: u64,
}

impl Source {
    /// Reads `len` bytes at image-relative `at`, refusing bytes past the end.
    pub(crate) fn read(&self, at: u64, len: usize, what: &str) -> Result<Vec<u8>, SquashError> {
        let mut buf = vec![0u8; len];
        self.read_into(at, &mut buf).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData => corrupt(format!(
                "{what} at byte {at} ({len} bytes) lies past the end of the filesystem ({} bytes)",
                self.len
            )),
            _ => SquashError::Io(e),
        })?;
        Ok(buf)
    }

    /// Fills `buf` from image-relative `at`; bytes past the end of the
    /// filesystem are an `InvalidData` error (EIO to a reader), never read.
    pub(crate) fn read_into(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = at.checked_add(buf.len() as u64).filter(|&e| e <= self.len);
        let Some(abs) = end.and_then(|_| self.base.checked_add(at)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "read of {} bytes at {at} past the end of the filesystem ({} bytes)",
                    buf.len(),
                    self.len
                ),
            ));
        };
        self.file.read_exact_at(buf, abs)
    }

    /// A u64 at `at` (a lookup table's pointer).
    pub(crate) fn u64_at(&self, at: u64, what: &str) -> Result<u64, SquashError> {
        let b = self.read(at, 8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}
