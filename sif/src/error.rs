//! Errors of the SIF reader and writer. Each names the field or object and,
//! where the problem lies in the file, its byte offset.

use std::io;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading or writing a SIF image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A positional read failed or hit the end of the file.
    #[error("cannot read {len} bytes at byte offset {offset}: {source}")]
    Read {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// A positional write or truncate failed.
    #[error("cannot write at byte offset {offset}: {source}")]
    Write {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The file is shorter than the 128-byte global header.
    #[error(
        "file is {len} bytes long, too short for the 128-byte SIF header: truncated or not a SIF image"
    )]
    TooShort { len: u64 },
    /// The magic string is missing.
    #[error("not a SIF image: no \"SIF_MAGIC\" at byte offset 32")]
    BadMagic,
    /// The specification version is not "01".
    #[error("unsupported SIF version {found:?} at byte offset 42 (supported: \"01\")")]
    BadVersion { found: String },
    /// A global header field is inconsistent with the file.
    #[error("corrupt SIF header: field {field} at byte offset {offset}: {reason}")]
    Header {
        field: &'static str,
        offset: u64,
        reason: String,
    },
    /// A descriptor field is inconsistent with the file.
    #[error("corrupt SIF descriptor {index}: field {field} at byte offset {offset}: {reason}")]
    Descriptor {
        index: u64,
        field: &'static str,
        offset: u64,
        reason: String,
    },
    /// The extra metadata of an object does not decode.
    #[error("object {id}: bad {what} metadata: {reason}")]
    Metadata {
        id: u32,
        what: &'static str,
        reason: String,
    },
    /// No used descriptor has this ID.
    #[error("object {id} not found")]
    ObjectNotFound { id: u32 },
    /// The image has no primary system partition.
    #[error("image has no primary system partition")]
    NoPrimaryPartition,
    /// The image has more than one primary system partition.
    #[error("image has more than one primary system partition (objects {first} and {second})")]
    MultiplePrimaryPartitions { first: u32, second: u32 },
    /// Every descriptor slot is in use.
    #[error("no free descriptor: all {capacity} descriptors are in use")]
    InsufficientCapacity { capacity: u64 },
    /// A second primary system partition was to be added.
    #[error("image already contains a primary system partition (object {id})")]
    PrimaryPartitionExists { id: u32 },
    /// A value does not fit the field that stores it.
    #[error("{field} is {len} bytes, more than the {max} bytes SIF allows")]
    TooLarge {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// An option value is outside what SIF can record.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The object is not a partition.
    #[error("object {id} is not a partition")]
    NotAPartition { id: u32 },
    /// Only a system partition can become the primary one.
    #[error("object {id} is a {part_type} partition; only a System partition can become primary")]
    NotASystemPartition { id: u32, part_type: String },
}

impl Error {
    pub(crate) fn read(offset: u64, len: u64, source: io::Error) -> Error {
        Error::Read {
            offset,
            len,
            source,
        }
    }

    pub(crate) fn write(offset: u64, source: io::Error) -> Error {
        Error::Write { offset, source }
    }
}
