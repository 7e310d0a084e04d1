//! A tiny squashfs writer for hostile images (issue 12 items 3 and 8):
//! exact control over every table, which mksquashfs would never produce.
//! Metadata is stored uncompressed, except the zero-filled blocks, which are
//! one fixed zstd frame that inflates 8 KiB from 17 bytes.
//!
//! The one copy: the end-to-end suites use it as `sifrun_tests::craft`, the
//! launcher's squashfs reader tests (launcher/tests/squash.rs) include this
//! file by path.

/// The block size of crafted images.
pub const BLOCK: u32 = 4096;
/// A table that is absent.
pub const NOT_SET: u64 = u64::MAX;
const META: usize = 8192;
const ZSTD: u16 = 6;
/// Inode types.
pub const FILE: u16 = 2;
const DIR: u16 = 1;
const EXT_DIR: u16 = 8;
const EXT_FILE: u16 = 9;

/// `zstd -19 --no-check` of 8192 zero bytes.
const ZERO_BLOCK_ZSTD: [u8; 17] = [
    0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x68, 0x45, 0x00, 0x00, 0x08, 0x00, 0x01, 0x00, 0xfc, 0xdf, 0x03,
    0x21,
];

/// Superblock fields that vary between crafted images.
pub struct Sb {
    /// Inodes declared.
    pub inode_count: u32,
    /// Fragments declared.
    pub frag_count: u32,
    /// The root inode reference.
    pub root: u64,
    /// Bytes the filesystem says it uses.
    pub bytes_used: u64,
    /// Where the tables start.
    pub id_table: u64,
    /// Where the tables start.
    pub inode_table: u64,
    /// Where the tables start.
    pub dir_table: u64,
    /// Where the tables start.
    pub frag_table: u64,
}

/// An image being written: the superblock is filled in last.
pub struct W {
    /// The bytes so far.
    pub b: Vec<u8>,
}

impl Default for W {
    fn default() -> W {
        W { b: vec![0; 96] }
    }
}

impl W {
    /// Where the next byte goes.
    pub fn pos(&self) -> u64 {
        self.b.len() as u64
    }

    /// Writes `data` as uncompressed metadata blocks; returns where each starts.
    pub fn meta(&mut self, data: &[u8]) -> Vec<u64> {
        data.chunks(META)
            .map(|chunk| {
                let at = self.pos();
                self.b
                    .extend_from_slice(&(chunk.len() as u16 | 0x8000).to_le_bytes());
                self.b.extend_from_slice(chunk);
                at
            })
            .collect()
    }

    /// Writes `data` (at most 8 KiB) as one uncompressed metadata block;
    /// returns where it starts (its 2-byte header, then `data` verbatim).
    pub fn meta_uncompressed(&mut self, data: &[u8]) -> u64 {
        assert!(data.len() <= META, "one metadata block holds 8 KiB");
        self.meta(data)[0]
    }

    /// `n` metadata blocks of 8 KiB of zeros (19 bytes each on disk).
    pub fn zero_blocks(&mut self, n: usize) {
        for _ in 0..n {
            self.b
                .extend_from_slice(&(ZERO_BLOCK_ZSTD.len() as u16).to_le_bytes());
            self.b.extend_from_slice(&ZERO_BLOCK_ZSTD);
        }
    }

    /// Little-endian u64s.
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

    /// The image with its superblock.
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
            NOT_SET,
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

/// The 4 MB image of the report: zero-filled metadata blocks that inflate
/// about 430 times behind a valid root (the inode and directory tables
/// claim about a gigabyte each), a file `big` whose block list runs on into
/// those zeros (4 Mi sparse blocks), 2^32 - 1 inodes declared; `f` holds
/// "hello".
pub fn zeros_image(n: usize) -> Vec<u8> {
    let mut w = W::default();
    let data = w.pos();
    w.b.extend_from_slice(b"hello");
    let names = listing(&[(b"big".to_vec(), 68, 2, FILE), (b"f".to_vec(), 32, 1, FILE)]);
    let inode_table = w.pos();
    let mut block0 = dir_inode(3, 0, 0, names.len() as u32);
    block0.extend(file_inode(1, data as u32, (u32::MAX, 0), 5, &[5 | 1 << 24]));
    block0.extend(ext_file_inode(2, 0, (1u64 << 22) * u64::from(BLOCK)));
    block0.resize(META, 0);
    w.meta(&block0);
    w.zero_blocks(n);
    let dir_table = w.pos();
    let mut d = names;
    d.resize(META, 0);
    w.meta(&d);
    w.zero_blocks(n);
    let id_table = w.ids();
    let bytes_used = w.pos();
    w.finish(Sb {
        inode_count: u32::MAX,
        frag_count: 0,
        root: 0,
        bytes_used,
        id_table,
        inode_table,
        dir_table,
        frag_table: NOT_SET,
    })
}

/// A fragment table of `count` entries whose index repeats one pointer;
/// the file is sparse past its tables (its length is the second value);
/// `t` holds "tail!tail!".
pub fn fragments_image(count: u32) -> (Vec<u8>, u64) {
    let mut w = W::default();
    let data = w.pos();
    w.b.extend_from_slice(b"tail!tail!");
    let inode_table = w.pos();
    let names = listing(&[(b"t".to_vec(), 32, 1, FILE)]);
    let mut block0 = dir_inode(2, 0, 0, names.len() as u32);
    block0.extend(file_inode(1, 0, (count - 1, 0), 10, &[]));
    w.meta(&block0);
    let dir_table = w.pos();
    w.meta(&names);
    let mut entries = Vec::new();
    for _ in 0..512 {
        entries.extend_from_slice(&data.to_le_bytes());
        entries.extend_from_slice(&(10u32 | 1 << 24).to_le_bytes());
        entries.extend_from_slice(&0u32.to_le_bytes());
    }
    let block = w.meta(&entries)[0];
    let frag_table = w.pos();
    w.u64s(std::iter::repeat_n(block, (count as usize).div_ceil(512)));
    let id_table = w.ids();
    let len = u64::from(count) + 4096;
    let bytes = w.finish(Sb {
        inode_count: 2,
        frag_count: count,
        root: 0,
        bytes_used: len,
        id_table,
        inode_table,
        dir_table,
        frag_table,
    });
    (bytes, len)
}

/// A root directory of `n` names (`f000000`…), all one file holding "x".
pub fn wide_image(n: u32) -> Vec<u8> {
    let mut w = W::default();
    let data = w.pos();
    w.b.push(b'x');
    let entries: Vec<_> = (0..n)
        .map(|i| (format!("f{i:06}").into_bytes(), 40u16, 1u32, FILE))
        .collect();
    let names = listing(&entries);
    let inode_table = w.pos();
    let mut block0 = ext_dir_inode(2, 0, 0, names.len() as u32);
    block0.extend(file_inode(1, data as u32, (u32::MAX, 0), 1, &[1 | 1 << 24]));
    w.meta(&block0);
    let dir_table = w.pos();
    w.meta(&names);
    let id_table = w.ids();
    let bytes_used = w.pos();
    w.finish(Sb {
        inode_count: 2,
        frag_count: 0,
        root: 0,
        bytes_used,
        id_table,
        inode_table,
        dir_table,
        frag_table: NOT_SET,
    })
}
