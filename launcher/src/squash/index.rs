//! Reads a squashfs 4.0 image's tables into the in-memory index the server
//! uses: inodes numbered from [`ROOT_INO`] in tree order.
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

use super::dir::split_reference;
use super::inode::RawData;
use super::metadata::Table;
use super::raw::{Source, corrupt};
use super::tables::{self, SuperBlock};
use super::{Data, FileKind, Inode, ROOT_INO, SquashError};

/// The tables being walked, and what the walk has used of them.
pub(crate) struct Walker<'a> {
    pub(crate) sb: &'a SuperBlock,
    pub(crate) inodes: Table,
    pub(crate) dirs: Table,
    pub(crate) ids: Vec<u32>,
    /// Block-list bytes and listing bytes used so far (each bounded by its table).
    pub(crate) block_list_bytes: usize,
    pub(crate) listing_bytes: usize,
}

/// A directory whose listing is still to be read.
struct Pending {
    ino: u64,
    block: u64,
    offset: usize,
    len: usize,
}

/// The walk's state: inodes placed so far and directories still to list.
struct Tree {
    out: Vec<Inode>,
    /// Inode table position -> our inode number (hard links share one).
    seen: HashMap<usize, u64>,
    pending: Vec<Pending>,
    limit: usize,
}

impl Walker<'_> {
    fn locate_inode(&self, reference: u64) -> Result<usize, SquashError> {
        let (block, offset) = split_reference(reference);
        self.inodes.locate(block, offset, "an inode reference")
    }
}

impl Tree {
    /// Gives the inode at table position `pos` a number (or finds the one a
    /// hard link already has).
    fn place(
        &mut self,
        w: &mut Walker,
        pos: usize,
        parent: Option<u64>,
    ) -> Result<u64, SquashError> {
        if let Some(&ino) = self.seen.get(&pos) {
            let inode = &mut self.out[(ino - 1) as usize];
            if inode.kind == FileKind::Dir {
                return Err(corrupt("a directory is reachable from two places"));
            }
            inode.nlink += 1;
            return Ok(ino);
        }
        if self.out.len() >= self.limit {
            return Err(corrupt(format!(
                "more inodes are reachable than the {} the superblock declares",
                self.limit
            )));
        }
        let raw = w.inode(pos)?;
        let ino = self.out.len() as u64 + 1;
        let data = match raw.data {
            RawData::Dir { block, offset, len } => {
                self.pending.push(Pending {
                    ino,
                    block,
                    offset,
                    len,
                });
                Data::Dir(Vec::new())
            }
            RawData::File(layout) => Data::File(layout),
            RawData::Symlink(t) => Data::Symlink(t),
            RawData::Device(d) => Data::Device(d),
            RawData::None => Data::None,
        };
        self.out.push(Inode {
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
        self.seen.insert(pos, ino);
        Ok(ino)
    }

    /// Reads one directory's listing and places its children.
    fn list(&mut self, w: &mut Walker, dir: Pending) -> Result<(), SquashError> {
        let listing = w.listing(dir.block, dir.offset, dir.len)?;
        let mut entries = Vec::with_capacity(listing.len());
        for (name, reference) in listing {
            let pos = w.locate_inode(reference)?;
            let child = self.place(w, pos, Some(dir.ino))?;
            entries.push((name, child));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        if entries.windows(2).any(|p| p[0].0 == p[1].0) {
            return Err(corrupt("a directory lists the same name twice"));
        }
        let subdirs = entries
            .iter()
            .filter(|(_, c)| self.out[(*c - 1) as usize].kind == FileKind::Dir)
            .count() as u32;
        let inode = &mut self.out[(dir.ino - 1) as usize];
        inode.nlink = 2 + subdirs;
        inode.data = Data::Dir(entries);
        Ok(())
    }
}

/// Reads the whole tree into inodes numbered from [`ROOT_INO`].
pub(crate) fn build(src: &Source, sb: &SuperBlock) -> Result<Vec<Inode>, SquashError> {
    let ids = tables::ids(src, sb)?;
    let inodes = src.metadata_table(sb.inode_table, sb.dir_table, sb.compression, "inode table")?;
    let dir_end = tables::dir_table_end(src, sb)?;
    let dirs = src.metadata_table(sb.dir_table, dir_end, sb.compression, "directory table")?;
    let mut w = Walker {
        sb,
        inodes,
        dirs,
        ids,
        block_list_bytes: 0,
        listing_bytes: 0,
    };
    let mut tree = Tree {
        out: Vec::new(),
        seen: HashMap::new(),
        pending: Vec::new(),
        limit: sb.inode_count as usize,
    };
    let root_pos = w.locate_inode(sb.root_inode)?;
    let root = tree.place(&mut w, root_pos, None)?;
    debug_assert_eq!(root, ROOT_INO);
    if tree.out[0].kind != FileKind::Dir {
        return Err(corrupt("the root is not a directory"));
    }
    while let Some(dir) = tree.pending.pop() {
        tree.list(&mut w, dir)?;
    }
    Ok(tree.out)
}
