//! Inode numbers and the lookups the server makes by them.
//!
//! Nothing is indexed ahead of time: an inode is parsed from its metadata
//! block (through the metadata cache) each time it is asked for, and a
//! directory is read entry by entry. The FUSE inode number of an image
//! inode is the number the image gives it, as the kernel's squashfs shows
//! it (the root swapped with number 1, FUSE's root), found again through
//! the export table; an image without one is numbered by inode reference.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path};

use super::dir::{DirCursor, Entry};
use super::inode::{DirData, Inode, Parser};
use super::raw::corrupt;
use super::{Data, FileKind, ROOT_INO, Squash, SquashError, tables};

/// How FUSE inode numbers map to inode references.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Numbering {
    /// By the image's inode numbers and its export table; `root` is the
    /// root's number, swapped with 1.
    Export { root: u32, count: u32 },
    /// By inode reference: the root is 1, any other inode its reference + 2.
    Reference { root: u64 },
}

/// Inode numbers of images without an export table start here (the
/// reference of an inode is below 2^48).
const REFERENCE_BASE: u64 = 2;

/// Where a readdir stopped: the listing cursor, or the synthetic entries.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Resume {
    /// In the image's listing, `done` entries in.
    Image { cursor: DirCursor, done: u64 },
    /// Past the image's `count` entries.
    After { count: u64 },
}

impl Numbering {
    /// The first inode number above every inode of the image.
    pub(crate) fn limit(&self) -> u64 {
        match self {
            Numbering::Export { count, .. } => u64::from(*count) + 1,
            Numbering::Reference { .. } => (1 << 48) + REFERENCE_BASE,
        }
    }

    fn swap(root: u32, n: u64) -> u64 {
        match n {
            n if n == u64::from(root) => ROOT_INO,
            ROOT_INO => u64::from(root),
            n => n,
        }
    }

    /// The FUSE inode number of the inode at `reference` with image number `number`.
    pub(crate) fn ino(&self, reference: u64, number: u32) -> Result<u64, SquashError> {
        match *self {
            Numbering::Export { root, count } => {
                if number == 0 || number > count {
                    return Err(corrupt(format!(
                        "inode number {number} outside 1..={count}"
                    )));
                }
                Ok(Numbering::swap(root, u64::from(number)))
            }
            Numbering::Reference { root } if reference == root => Ok(ROOT_INO),
            Numbering::Reference { .. } => Ok(reference + REFERENCE_BASE),
        }
    }
}

impl Squash {
    pub(crate) fn parser(&self) -> Parser<'_> {
        Parser {
            meta: &self.meta,
            sb: &self.sb,
            inodes: self.inode_table,
            dirs: self.dir_table,
            ids: &self.ids,
        }
    }

    /// The inode with number `ino`, parsed from the image, or why it cannot be.
    pub fn try_inode(&self, ino: u64) -> Result<Inode, SquashError> {
        let (reference, number) = match self.numbering {
            Numbering::Export { root, count } => {
                let n = Numbering::swap(root, ino);
                if n == 0 || n > u64::from(count) {
                    return Err(corrupt(format!("no inode {ino}")));
                }
                (tables::export(&self.meta, &self.sb, n)?, Some(n))
            }
            Numbering::Reference { root } => match ino {
                ROOT_INO => (root, None),
                n if n >= REFERENCE_BASE && n - REFERENCE_BASE != root => {
                    (n - REFERENCE_BASE, None)
                }
                _ => return Err(corrupt(format!("no inode {ino}"))),
            },
        };
        let inode = self.parser().inode(reference)?;
        if number.is_some_and(|n| n != u64::from(inode.number)) {
            return Err(corrupt(format!(
                "the export table gives inode {} for number {ino}",
                inode.number
            )));
        }
        Ok(inode)
    }

    /// The inode with number `ino`, or `None` if the image has none (or a
    /// corrupt one) under that number.
    pub fn inode(&self, ino: u64) -> Option<Inode> {
        self.try_inode(ino)
            .inspect_err(|e| tracing::debug!(ino, error = %e, "inode"))
            .ok()
    }

    /// The FUSE number and type of a listing entry.
    fn entry_ino(&self, e: &Entry) -> Result<u64, SquashError> {
        self.numbering.ino(e.reference, e.number)
    }

    /// Looks `name` up in directory `dir`; remembers `dir` as the parent of
    /// a directory found.
    pub fn lookup(&self, dir: u64, name: &OsStr) -> Option<u64> {
        let Data::Dir(d) = self.inode(dir)?.data else {
            return None;
        };
        let found = self.parser().find(&d, name.as_encoded_bytes());
        let e = found
            .inspect_err(|e| tracing::debug!(dir, error = %e, "lookup"))
            .ok()??;
        let child = self.parser().inode(e.reference).ok()?;
        let ino = self.numbering.ino(e.reference, child.number).ok()?;
        if child.kind == FileKind::Dir {
            self.parents.insert(ino, dir);
        }
        Some(ino)
    }

    /// Whether directory `dir` reads whole and has no entry `name` (a read
    /// or parse error is not an absence: the caller may remember absences).
    pub fn lacks(&self, dir: u64, name: &OsStr) -> bool {
        let Some(Data::Dir(d)) = self.inode(dir).map(|i| i.data) else {
            return false;
        };
        matches!(self.parser().find(&d, name.as_encoded_bytes()), Ok(None))
    }

    /// The directory holding directory `ino`, as far as lookups have shown
    /// it (the root's parent is the root).
    pub fn parent(&self, ino: u64) -> u64 {
        self.parents.get(&ino).unwrap_or(ROOT_INO)
    }

    /// Resolves an absolute path inside the image without following symlinks.
    pub fn lookup_path(&self, path: &Path) -> Option<u64> {
        let mut trail = vec![ROOT_INO];
        for c in path.components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => {
                    let here = *trail.last().expect("root");
                    trail.push(self.lookup(here, n)?);
                }
                Component::ParentDir if trail.len() > 1 => {
                    trail.pop();
                }
                Component::ParentDir => {}
                Component::Prefix(_) => return None,
            }
        }
        trail.last().copied()
    }

    /// Every entry of directory `ino`, in the image's order (by name).
    pub fn entries(&self, ino: u64) -> Result<Vec<(OsString, u64)>, SquashError> {
        let inode = self.try_inode(ino)?;
        let Data::Dir(d) = &inode.data else {
            return Err(corrupt(format!("inode {ino} is not a directory")));
        };
        let mut out = Vec::new();
        let mut cur = DirCursor::start(d);
        while let Some(e) = cur.next(&self.parser(), d)? {
            let child = self.entry_ino(&e)?;
            out.push((e.name, child));
        }
        Ok(out)
    }

    /// Calls `each(name, ino, kind, done)` for the entries of directory
    /// `ino` after the first `skip` ones (`done` counts the entries given so
    /// far, this one included), until it returns true or the listing ends.
    /// Where it stopped is kept, so the next chunk starts there without
    /// reading the entries before it. Returns how many entries the listing
    /// has when it reached the end.
    pub fn read_dir(
        &self,
        ino: u64,
        dir: &DirData,
        skip: u64,
        each: &mut dyn FnMut(&OsStr, u64, FileKind, u64) -> bool,
    ) -> Result<Option<u64>, SquashError> {
        let (mut cursor, mut done) = match self.cursors.get(&(ino, skip)) {
            Some(Resume::Image { cursor, done }) => (cursor, done),
            Some(Resume::After { count }) => return Ok(Some(count)),
            None => (DirCursor::start(dir), 0),
        };
        let p = self.parser();
        loop {
            let before = cursor;
            let Some(e) = cursor.next(&p, dir)? else {
                self.cursors
                    .insert((ino, done), Resume::After { count: done });
                return Ok(Some(done));
            };
            if done < skip {
                done += 1;
                continue;
            }
            let child = self.entry_ino(&e)?;
            if e.kind == FileKind::Dir {
                self.parents.insert(child, ino);
            }
            if each(&e.name, child, e.kind, done + 1) {
                let resume = Resume::Image {
                    cursor: before,
                    done,
                };
                self.cursors.insert((ino, done), resume);
                return Ok(None);
            }
            done += 1;
        }
    }
}
