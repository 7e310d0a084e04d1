//! Opening an image for serving, and serving it with FUSE.
//!
//! The SIF is opened once; the same descriptor is parsed, checked and served,
//! so the bytes that were looked at are the bytes that run.

#![warn(clippy::too_many_lines)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, Session, SessionACL};
use sif::{FsType, Image};

use crate::fuse::{SquashFs, Synth};
use crate::squash::{Squash, SquashError, Tuning};

/// Why an image cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The image cannot be opened.
    #[error("{}: {source}", path.display())]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a usable SIF.
    #[error("{}: {source}", path.display())]
    Sif {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: sif::Error,
    },
    /// The primary partition is not squashfs.
    #[error("{}: the primary partition is {fs}, not squashfs; sifrun serves squashfs images only (rebuild with `sifrun build`)", path.display())]
    Filesystem {
        /// The image.
        path: PathBuf,
        /// The partition's filesystem type.
        fs: String,
    },
    /// The squashfs in the partition cannot be read.
    #[error("{}: primary partition: {source}", path.display())]
    Squash {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: SquashError,
    },
    /// The FUSE mount failed.
    #[error("{}: cannot mount: {source}", mountpoint.display())]
    Mount {
        /// Where it was to be mounted.
        mountpoint: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An image opened for serving: the SIF file and its indexed root filesystem.
pub struct Served {
    /// The open SIF file.
    pub file: Arc<File>,
    /// The squashfs of its primary partition.
    pub squash: Arc<Squash>,
    /// The path it was opened by (for messages and the mount's name).
    pub path: PathBuf,
}

/// Opens `path`, finds its primary system partition and indexes the squashfs in it.
pub fn open_image(path: &Path, tuning: Tuning) -> Result<Served, ServeError> {
    let file = File::open(path).map_err(|source| ServeError::Open {
        path: path.to_owned(),
        source,
    })?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(ServeError::Open {
            path: path.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory, not a SIF image",
            ),
        });
    }
    open_image_file(Arc::new(file), path, tuning)
}

/// Serves an image from a file already open (the one the ECL checked).
pub fn open_image_file(file: Arc<File>, path: &Path, tuning: Tuning) -> Result<Served, ServeError> {
    let sif_err = |source| ServeError::Sif {
        path: path.to_owned(),
        source,
    };
    let image = Image::open(&*file).map_err(sif_err)?;
    let prim = image.primary_partition().map_err(sif_err)?;
    let part = prim.partition().map_err(sif_err)?;
    if part.fs_type != FsType::SQUASHFS {
        return Err(ServeError::Filesystem {
            path: path.to_owned(),
            fs: part.fs_type.to_string(),
        });
    }
    // Only the partition's bytes are served: the signature covers those.
    let (offset, size) = (prim.offset(), prim.size());
    drop(image);
    let squash = Squash::open_partition(file.clone(), offset, size, tuning).map_err(|source| {
        ServeError::Squash {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(Served {
        file,
        squash,
        path: path.to_owned(),
    })
}

/// The FUSE options of an image mount: read-only, nosuid, nodev, kernel
/// permission checks, only the owner may enter; `threads` workers.
pub(crate) fn fuse_config(image: &Path, threads: usize) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        MountOption::FSName(format!("sifrun:{}", image.display()).replace([',', ' '], "_")),
        MountOption::Subtype("sifrun".into()),
    ];
    c.acl = SessionACL::Owner;
    c.n_threads = Some(threads.max(1));
    c.clone_fd = threads > 1;
    c
}

/// Mounts the served image (plus synthetic targets) at `mountpoint`.
pub fn mount(
    served: &Served,
    synth: Synth,
    mountpoint: &Path,
    threads: usize,
) -> Result<Session<SquashFs>, ServeError> {
    let fs = SquashFs::new(served.squash.clone(), synth);
    Session::new(fs, mountpoint, &fuse_config(&served.path, threads)).map_err(|source| {
        ServeError::Mount {
            mountpoint: mountpoint.to_owned(),
            source,
        }
    })
}

/// Worker threads for the FUSE loop.
pub fn default_threads() -> usize {
    crate::squash::available_cpus().clamp(2, 16)
}

impl crate::plan::ImageTree for Squash {
    fn entry(&self, path: &Path) -> Option<crate::plan::Entry> {
        use crate::plan::Entry;
        use crate::squash::{Data, FileKind};
        let ino = self.lookup_path(path)?;
        let inode = self.inode(ino)?;
        Some(match (&inode.kind, &inode.data) {
            (FileKind::Dir, _) => Entry::Dir,
            (FileKind::File, _) => Entry::File,
            (FileKind::Symlink, Data::Symlink(t)) => Entry::Symlink(PathBuf::from(t)),
            _ => Entry::Other,
        })
    }

    fn list(&self, path: &Path) -> Option<Vec<std::ffi::OsString>> {
        let entries = self.entries(self.lookup_path(path)?).ok()?;
        Some(entries.into_iter().map(|(n, _)| n).collect())
    }

    fn read_small(&self, path: &Path) -> Option<Vec<u8>> {
        let ino = self.lookup_path(path)?;
        let inode = self.inode(ino)?;
        if inode.kind != crate::squash::FileKind::File || inode.size > 1 << 20 {
            return None;
        }
        self.read(ino, 0, inode.size as u32).ok()
    }
}
