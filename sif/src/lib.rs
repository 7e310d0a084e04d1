//! The Singularity Image Format (SIF): a complete, safe reader and writer.
//!
//! A SIF image is one file: a 128-byte global header, an array of 585-byte
//! descriptors, then the data objects they describe (squashfs partitions,
//! signatures, definition files, SBOMs, OCI blobs, ...).
//!
//! * [`Image::open`] reads the header and descriptors with positional reads and
//!   checks every offset and size against the file length with checked
//!   arithmetic, so a corrupt or hostile file yields an [`Error`] naming the
//!   field and its byte offset, never a panic. Object data stays in the file.
//! * [`write`] creates and edits images byte-identically with sylabs/sif v2
//!   (alignment, ID reuse, deletion, compaction, primary partition).
//! * [`integrity`] exposes the canonical header and descriptor bytes that
//!   signatures cover.
//! * [`siftool`] renders `list`, `header` and `info` exactly as siftool does.
//!
//! This crate is safe Rust (`unsafe` is denied workspace-wide).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod descriptor;
pub mod error;
pub mod header;
pub mod image;
pub mod integrity;
pub mod siftool;
pub mod types;
pub mod write;

pub use descriptor::{Descriptor, Link, Partition, RawDescriptor, SignatureInfo};
pub use error::{Error, Result};
pub use header::Header;
pub use image::{Image, ObjectReader, ReadAt};
pub use types::{Arch, DataType, FormatType, FsType, HashType, MessageType, PartType, SbomFormat};
pub use write::{CreateOptions, DeleteOptions, Metadata, ObjectData, ObjectInput};
