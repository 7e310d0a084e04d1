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
        /// Byte offset in the file.
        offset: u64,
        /// Length in bytes.
        len: u64,
        #[source]
        /// The I/O error.
        source: io::Error,
    },
    /// A positional write or truncate failed.
    #[error("cannot write at byte offset {offset}: {source}")]
    Write {
        /// Byte offset in the file.
        offset: u64,
        #[source]
        /// The I/O error.
        source: io::Error,
    },
    /// The file is shorter than the 128-byte global header.
    #[error(
        "file is {len} bytes long, too short for the 128-byte SIF header: truncated or not a SIF image"
    )]
    TooShort {
        /// Length in bytes.
        len: u64,
    },
    /// The magic string is missing.
    #[error("not a SIF image: no \"SIF_MAGIC\" at byte offset 32")]
    BadMagic,
    /// The specification version is not "01".
    #[error("unsupported SIF version {found:?} at byte offset 42 (supported: \"01\")")]
    BadVersion {
        /// The version string found.
        found: String,
    },
    /// A global header field is inconsistent with the file.
    #[error("corrupt SIF header: field {field} at byte offset {offset}: {reason}")]
    Header {
        /// The field.
        field: &'static str,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A descriptor field is inconsistent with the file.
    #[error("corrupt SIF descriptor {index}: field {field} at byte offset {offset}: {reason}")]
    Descriptor {
        /// The descriptor's slot in the descriptor array.
        index: u64,
        /// The field.
        field: &'static str,
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The extra metadata of an object does not decode.
    #[error("object {id}: bad {what} metadata: {reason}")]
    Metadata {
        /// The object ID.
        id: u32,
        /// What kind of metadata.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No used descriptor has this ID.
    #[error("object {id} not found")]
    ObjectNotFound {
        /// The object ID.
        id: u32,
    },
    /// The image has no primary system partition.
    #[error("image has no primary system partition")]
    NoPrimaryPartition,
    /// The image has more than one primary system partition.
    #[error("image has more than one primary system partition (objects {first} and {second})")]
    MultiplePrimaryPartitions {
        /// The first primary partition's object ID.
        first: u32,
        /// The second primary partition's object ID.
        second: u32,
    },
    /// Every descriptor slot is in use.
    #[error("no free descriptor: all {capacity} descriptors are in use")]
    InsufficientCapacity {
        /// The number of descriptor slots.
        capacity: u64,
    },
    /// A second primary system partition was to be added.
    #[error("image already contains a primary system partition (object {id})")]
    PrimaryPartitionExists {
        /// The object ID.
        id: u32,
    },
    /// A value does not fit the field that stores it.
    #[error("{field} is {len} bytes, more than the {max} bytes SIF allows")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Length in bytes.
        len: usize,
        /// The most SIF allows.
        max: usize,
    },
    /// An option value is outside what SIF can record.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What kind of metadata.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The object is not a partition.
    #[error("object {id} is not a partition")]
    NotAPartition {
        /// The object ID.
        id: u32,
    },
    /// Only a system partition can become the primary one.
    #[error("object {id} is a {part_type} partition; only a System partition can become primary")]
    NotASystemPartition {
        /// The object ID.
        id: u32,
        /// Its partition type.
        part_type: String,
    },
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
