//! The FUSE filesystem that serves a squashfs image read-only, plus empty
//! directories and files synthesised for mount targets the image lacks (so
//! binds never need the image to be modified).
//!
//! Entries and attributes never change, so replies carry long timeouts and
//! opened files keep their page cache.

#![warn(clippy::too_many_lines)]

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEntry,
    ReplyOpen, ReplyStatfs, Request,
};

use crate::squash::{Data, DirData, FileKind, Inode, ROOT_INO, Squash};

/// How long the kernel may cache entries and attributes: the image never changes.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// What a synthesised mount target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// An empty directory.
    Dir,
    /// An empty regular file.
    File,
}

#[derive(Debug)]
struct SynthNode {
    kind: TargetKind,
    parent: u64,
    children: BTreeMap<OsString, u64>,
}

/// Mount targets added on top of the image.
#[derive(Debug, Default)]
pub struct Synth {
    /// Synthetic inodes, numbered from `base`.
    nodes: Vec<SynthNode>,
    base: u64,
    /// Synthetic children of image directories.
    under_image: BTreeMap<u64, BTreeMap<OsString, u64>>,
}

/// Why a mount target cannot be provided.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SynthError {
    /// A component of the target's path is something other than a directory.
    #[error("{path}: {component:?} in the image is not a directory")]
    NotADirectory {
        /// The target.
        path: String,
        /// The component that is not a directory.
        component: OsString,
    },
    /// The target exists with another type than the mount needs.
    #[error("{path}: exists in the image as a different kind of file")]
    KindMismatch {
        /// The target.
        path: String,
    },
    /// The target is relative or climbs with `..`.
    #[error("{path}: not an absolute path without '..'")]
    BadPath {
        /// The target.
        path: String,
    },
}

impl Synth {
    /// An empty set of synthetic nodes for `squash`.
    pub fn new(squash: &Squash) -> Synth {
        Synth {
            nodes: Vec::new(),
            base: squash.ino_limit(),
            under_image: BTreeMap::new(),
        }
    }

    fn node(&self, ino: u64) -> Option<&SynthNode> {
        self.nodes
            .get(usize::try_from(ino.checked_sub(self.base)?).ok()?)
    }

    fn children(&self, ino: u64) -> Option<&BTreeMap<OsString, u64>> {
        if ino >= self.base {
            self.node(ino).map(|n| &n.children)
        } else {
            self.under_image.get(&ino)
        }
    }

    /// Makes sure `path` (already resolved inside the image: no symlinks)
    /// exists, creating missing directories and, for a file target, an empty
    /// file as the last component.
    pub fn ensure(
        &mut self,
        squash: &Squash,
        path: &Path,
        kind: TargetKind,
    ) -> Result<(), SynthError> {
        let shown = path.display().to_string();
        let names: Vec<&OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(Some(n)),
                Component::RootDir | Component::CurDir => None,
                _ => Some(None),
            })
            .collect::<Option<Vec<_>>>()
            .filter(|_| path.is_absolute())
            .ok_or(SynthError::BadPath {
                path: shown.clone(),
            })?;
        let mut ino = ROOT_INO;
        for (i, name) in names.iter().enumerate() {
            let last = i + 1 == names.len();
            let want = if last { kind } else { TargetKind::Dir };
            if ino < self.base
                && let Some(child) = squash.lookup(ino, name)
            {
                let found = squash.inode(child).map(|n| n.kind);
                let ok = match want {
                    TargetKind::Dir => found == Some(FileKind::Dir),
                    TargetKind::File => {
                        found != Some(FileKind::Dir) && found != Some(FileKind::Symlink)
                    }
                };
                if !ok {
                    return Err(if last {
                        SynthError::KindMismatch { path: shown }
                    } else {
                        SynthError::NotADirectory {
                            path: shown,
                            component: name.to_os_string(),
                        }
                    });
                }
                ino = child;
                continue;
            }
            if let Some(&child) = self.children(ino).and_then(|c| c.get(*name)) {
                if self.node(child).map(|n| n.kind) != Some(want) {
                    return Err(SynthError::KindMismatch { path: shown });
                }
                ino = child;
                continue;
            }
            let child = self.base + self.nodes.len() as u64;
            self.nodes.push(SynthNode {
                kind: want,
                parent: ino,
                children: BTreeMap::new(),
            });
            if ino >= self.base {
                let idx = (ino - self.base) as usize;
                self.nodes[idx].children.insert(name.to_os_string(), child);
            } else {
                self.under_image
                    .entry(ino)
                    .or_default()
                    .insert(name.to_os_string(), child);
            }
            ino = child;
        }
        Ok(())
    }
}

/// The filesystem handed to fuser.
pub struct SquashFs {
    squash: Arc<Squash>,
    synth: Synth,
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

impl SquashFs {
    /// The image `squash` with the mount targets of `synth` added.
    pub fn new(squash: Arc<Squash>, synth: Synth) -> SquashFs {
        SquashFs { squash, synth }
    }

    fn image_attr(&self, ino: u64, n: &Inode) -> FileAttr {
        let t = UNIX_EPOCH + Duration::from_secs(u64::from(n.mtime));
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: file_type(n.kind),
            perm: n.perm,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: n.rdev(),
            blksize: self.squash.block_size(),
            flags: 0,
        }
    }

    fn synth_attr(&self, ino: u64, kind: TargetKind) -> FileAttr {
        // Synthetic targets look like the image's root (owner, time).
        let root = self.squash.inode(ROOT_INO);
        let (mtime, uid, gid) = root.map_or((0, 0, 0), |r| (r.mtime, r.uid, r.gid));
        let t = UNIX_EPOCH + Duration::from_secs(u64::from(mtime));
        let dir = kind == TargetKind::Dir;
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o644 },
            nlink: if dir { 2 } else { 1 },
            uid,
            gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Attributes of any inode, image or synthetic.
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        if ino < self.synth.base {
            return self.squash.inode(ino).map(|n| self.image_attr(ino, &n));
        }
        self.synth.node(ino).map(|s| self.synth_attr(ino, s.kind))
    }

    /// Whether directory `parent` has no `name`, known for sure: neither
    /// the image's listing (read whole, without error) nor the synthetic
    /// targets have it.
    fn lacks(&self, parent: u64, name: &OsStr) -> bool {
        if self.dir_kind(parent).is_none() {
            return false;
        }
        let synth = self.synth.children(parent);
        if synth.is_some_and(|c| c.contains_key(name)) {
            return false;
        }
        if parent < self.synth.base {
            self.squash.lacks(parent, name)
        } else {
            synth.is_some()
        }
    }

    fn lookup_ino(&self, parent: u64, name: &OsStr) -> Option<u64> {
        if parent < self.synth.base
            && let Some(ino) = self.squash.lookup(parent, name)
        {
            return Some(ino);
        }
        self.synth.children(parent)?.get(name).copied()
    }

    /// A directory of the image (`Some(Some(listing))`), a synthetic one
    /// (`Some(None)`), or no directory (`None`).
    fn dir_kind(&self, ino: u64) -> Option<Option<DirData>> {
        if ino < self.synth.base {
            return match self.squash.inode(ino)?.data {
                Data::Dir(d) => Some(Some(d)),
                _ => None,
            };
        }
        (self.synth.node(ino)?.kind == TargetKind::Dir).then_some(None)
    }

    /// Calls `each(cookie, name, ino, type)` for the listing of directory
    /// `ino` after cookie `offset`: ".", "..", the image's entries, then
    /// the synthetic ones; the cookie of an entry is the offset of the one
    /// after it. Stops when `each` returns true (the reply is full). Each
    /// call reads only the entries it gives (and a few before them).
    fn list(
        &self,
        ino: u64,
        offset: u64,
        each: &mut dyn FnMut(u64, &OsStr, u64, FileType) -> bool,
    ) -> Result<(), Errno> {
        let image = self.dir_kind(ino).ok_or(Errno::ENOTDIR)?;
        let dots = [(".", ino), ("..", self.parent_of(ino))];
        for (i, (name, child)) in dots.into_iter().enumerate().skip(offset as usize) {
            if each(i as u64 + 1, OsStr::new(name), child, FileType::Directory) {
                return Ok(());
            }
        }
        let mut count = 0;
        if let Some(dir) = image {
            let mut emit = |name: &OsStr, child, kind, ordinal: u64| {
                each(2 + ordinal, name, child, file_type(kind))
            };
            let skip = offset.saturating_sub(2);
            match self.squash.read_dir(ino, &dir, skip, &mut emit) {
                Ok(Some(n)) => count = n,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(ino, error = %e, "readdir failed");
                    return Err(Errno::EIO);
                }
            }
        }
        for (j, (name, &child)) in self.synth.children(ino).into_iter().flatten().enumerate() {
            let cookie = 3 + count + j as u64;
            if cookie <= offset {
                continue;
            }
            let kind = match self.synth.node(child).map(|n| n.kind) {
                Some(TargetKind::File) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if each(cookie, name, child, kind) {
                break;
            }
        }
        Ok(())
    }

    fn parent_of(&self, ino: u64) -> u64 {
        match self.synth.node(ino) {
            Some(n) => n.parent,
            None => self.squash.parent(ino),
        }
    }
}

fn errno(e: &io::Error) -> Errno {
    match e.kind() {
        io::ErrorKind::NotFound => Errno::ENOENT,
        io::ErrorKind::InvalidInput => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl Filesystem for SquashFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // The kernel offers at most its own read-ahead (128 KiB here) and
        // refuses more: this keeps whatever it offers. The server's own
        // read-ahead decompresses further.
        let _ = config.set_max_readahead(1 << 20);
        // Directory listings carry every entry's attributes (a cold `find`
        // or `ls -l` then needs no lookup per file); symlink targets and
        // directory operations are cached and run in parallel. Each flag is
        // requested on its own: the kernel refuses what it does not offer.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_READ,
        ] {
            let _ = config.add_capabilities(flag);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_ino(parent.0, name).and_then(|i| self.attr(i)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            // A name a directory does not have: the image and the
            // synthetic targets never change while mounted, so the kernel
            // may remember the absence (node 0 with a timeout) and a
            // task's PATH search asks once per step, not once per task.
            None => match self.attr(parent.0).filter(|_| self.lacks(parent.0, name)) {
                Some(mut absent) => {
                    absent.ino = INodeNo(0);
                    reply.entry(&TTL, &absent, Generation(0))
                }
                None => reply.error(Errno::ENOENT),
            },
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.squash.inode(ino.0).map(|n| n.data) {
            Some(Data::Symlink(target)) => {
                use std::os::unix::ffi::OsStrExt;
                reply.data(target.as_bytes())
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.attr(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        if self.synth.node(ino.0).is_some() {
            return reply.data(&[]);
        }
        match self.squash.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::warn!(ino = ino.0, offset, error = %e, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.dir_kind(ino.0).is_none() {
            return reply.error(Errno::ENOTDIR);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut add = |next, name: &OsStr, child, kind| reply.add(INodeNo(child), next, kind, name);
        match self.list(ino.0, offset, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut add = |next, name: &OsStr, child, _kind| {
            let Some(attr) = self.attr(child) else {
                return false;
            };
            reply.add(INodeNo(child), next, name, &TTL, &attr, Generation(0))
        };
        match self.list(ino.0, offset, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.squash.inode_count() + self.synth.nodes.len() as u64;
        reply.statfs(
            0,
            0,
            0,
            files,
            0,
            self.squash.block_size(),
            255,
            self.squash.block_size(),
        );
    }
}
