//! A tiny squashfs writer for hostile images: exact control over every
//! table, which mksquashfs would never produce.

pub const BLOCK: u32 = 4096;
pub const NOT_SET: u64 = u64::MAX;
const META: usize = 8192;
pub const ZSTD: u16 = 6;

pub const DIR: u16 = 1;
pub const FILE: u16 = 2;
pub const EXT_DIR: u16 = 8;
pub const EXT_FILE: u16 = 9;

/// Superblock fields that vary between crafted images.
pub struct Sb {
    pub inode_count: u32,
    pub frag_count: u32,
    pub root: u64,
    pub bytes_used: u64,
    pub id_table: u64,
    pub inode_table: u64,
    pub dir_table: u64,
    pub frag_table: u64,
    pub export_table: u64,
}

/// An image being written: the superblock is filled in last.
pub struct W {
    pub b: Vec<u8>,
}

impl W {
    pub fn new() -> W {
        W { b: vec![0; 96] }
    }

    pub fn pos(&self) -> u64 {
        self.b.len() as u64
    }

    /// Writes `data` as metadata blocks of 8 KiB (zstd); returns where each starts.
    pub fn meta(&mut self, data: &[u8]) -> Vec<u64> {
        data.chunks(META)
            .map(|chunk| {
                let at = self.pos();
                let z = zstd::bulk::compress(chunk, 19).unwrap();
                self.b.extend_from_slice(&(z.len() as u16).to_le_bytes());
                self.b.extend_from_slice(&z);
                at
            })
            .collect()
    }

    /// Writes `data` (at most 8 KiB) as one metadata block stored uncompressed.
    pub fn meta_uncompressed(&mut self, data: &[u8]) -> u64 {
        let at = self.pos();
        self.b
            .extend_from_slice(&(data.len() as u16 | 0x8000).to_le_bytes());
        self.b.extend_from_slice(data);
        at
    }

    /// `n` metadata blocks of 8 KiB of zeros (about 17 bytes each on disk).
    pub fn zero_blocks(&mut self, n: usize) {
        let z = zstd::bulk::compress(&[0u8; META], 19).unwrap();
        for _ in 0..n {
            self.b.extend_from_slice(&(z.len() as u16).to_le_bytes());
            self.b.extend_from_slice(&z);
        }
    }

    pub fn u64s(&mut self, v: impl IntoIterator<Item = u64>) {
        for x in v {
            self.b.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// The id table (one id, 0) and its index; returns the index position.
    pub fn ids(&mut self) -> u64 {
        let block = self.meta(&0u32.to_le_bytes())[0];
        let at = self.pos();
        self.u64s([block]);
        at
    }

    pub fn finish(mut self, sb: Sb) -> Vec<u8> {
        let mut h = Vec::with_capacity(96);
        for v in [0x7371_7368u32, sb.inode_count, 0, BLOCK, sb.frag_count] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [ZSTD, BLOCK.ilog2() as u16, 0, 1, 4, 0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            sb.root,
            sb.bytes_used,
            sb.id_table,
            NOT_SET,
            sb.inode_table,
            sb.dir_table,
            sb.frag_table,
            sb.export_table,
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        self.b[..96].copy_from_slice(&h);
        self.b
    }
}

fn header(t: u16, mode: u16, number: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [t, mode, 0, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&number.to_le_bytes());
    v
}

/// A basic directory inode whose listing is `len` bytes at (block, offset).
pub fn dir_inode(number: u32, block: u32, offset: u16, len: u32) -> Vec<u8> {
    let mut v = header(DIR, 0o755, number);
    v.extend_from_slice(&block.to_le_bytes());
    v.extend_from_slice(&2u32.to_le_bytes());
    v.extend_from_slice(&((len + 3) as u16).to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v
}

/// An extended directory inode without a name index.
pub fn ext_dir_inode(number: u32, block: u32, offset: u16, len: u32) -> Vec<u8> {
    let mut v = header(EXT_DIR, 0o755, number);
    for x in [2u32, len + 3, block, 1] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    v
}

/// A basic file inode; `sizes` is its block list.
pub fn file_inode(
    number: u32,
    start: u32,
    fragment: (u32, u32),
    size: u32,
    sizes: &[u32],
) -> Vec<u8> {
    let mut v = header(FILE, 0o644, number);
    for x in [start, fragment.0, fragment.1, size] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for s in sizes {
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// An extended file inode of `size` bytes without a fragment, whose block
/// list is whatever follows it in the table.
pub fn ext_file_inode(number: u32, start: u64, size: u64) -> Vec<u8> {
    let mut v = header(EXT_FILE, 0o644, number);
    for x in [start, size, 0] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for x in [1u32, u32::MAX, 0, u32::MAX] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A directory listing: `(name, inode offset in block 0, number, type)`,
/// in headers of at most 256 entries, every inode in inode block 0.
pub fn listing(entries: &[(Vec<u8>, u16, u32, u16)]) -> Vec<u8> {
    let mut v = Vec::new();
    for chunk in entries.chunks(256) {
        let base = chunk[0].2;
        for x in [chunk.len() as u32 - 1, 0, base] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for (name, offset, number, t) in chunk {
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(&((*number as i64 - base as i64) as i16).to_le_bytes());
            v.extend_from_slice(&t.to_le_bytes());
            v.extend_from_slice(&(name.len() as u16 - 1).to_le_bytes());
            v.extend_from_slice(name);
        }
    }
    v
}
