//! What a new object is made of: its typed metadata, where its bytes come
//! from, and the options of adding and deleting objects.

use std::io::Read;

use crate::descriptor::{DEFAULT_GROUP, EXTRA_LEN, Link};
use crate::error::{Error, Result};
use crate::types::{
    Arch, DataType, FormatType, FsType, HashType, MessageType, PartType, SbomFormat,
};

/// Typed metadata for the `extra` field of a new object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metadata {
    /// No metadata (all zero).
    None,
    /// A filesystem partition.
    Partition {
        /// The filesystem.
        fs_type: FsType,
        /// The partition's role.
        part_type: PartType,
        /// The architecture of its contents.
        arch: Arch,
    },
    /// A signature.
    Signature {
        /// The hash the signature uses.
        hash_type: HashType,
        /// The signer's primary key fingerprint (20 bytes for OpenPGP v4).
        fingerprint: Vec<u8>,
    },
    /// A cryptographic message.
    CryptoMessage {
        /// How the message is encoded.
        format: FormatType,
        /// What the message is.
        message: MessageType,
    },
    /// A software bill of materials in this format.
    Sbom(SbomFormat),
    /// Raw bytes, zero padded to 384.
    Raw(Vec<u8>),
}

impl Metadata {
    /// Encodes the metadata into a zero-padded `extra` field.
    pub fn encode(&self) -> Result<[u8; EXTRA_LEN]> {
        let mut e = [0u8; EXTRA_LEN];
        match self {
            Metadata::None => {}
            Metadata::Partition {
                fs_type,
                part_type,
                arch,
            } => {
                e[0..4].copy_from_slice(&fs_type.0.to_le_bytes());
                e[4..8].copy_from_slice(&part_type.0.to_le_bytes());
                e[8..11].copy_from_slice(&arch.0);
            }
            Metadata::Signature {
                hash_type,
                fingerprint,
            } => {
                if fingerprint.len() > 256 {
                    return Err(Error::TooLarge {
                        field: "signing entity",
                        len: fingerprint.len(),
                        max: 256,
                    });
                }
                e[0..4].copy_from_slice(&hash_type.0.to_le_bytes());
                e[4..4 + fingerprint.len()].copy_from_slice(fingerprint);
            }
            Metadata::CryptoMessage { format, message } => {
                e[0..4].copy_from_slice(&format.0.to_le_bytes());
                e[4..8].copy_from_slice(&message.0.to_le_bytes());
            }
            Metadata::Sbom(format) => e[0..4].copy_from_slice(&format.0.to_le_bytes()),
            Metadata::Raw(bytes) => {
                if bytes.len() > EXTRA_LEN {
                    return Err(Error::TooLarge {
                        field: "metadata",
                        len: bytes.len(),
                        max: EXTRA_LEN,
                    });
                }
                e[..bytes.len()].copy_from_slice(bytes);
            }
        }
        Ok(e)
    }
}

/// Where the bytes of a new object come from.
pub enum ObjectData<'a> {
    /// Copied from a reader to the object's offset.
    Reader(&'a mut dyn Read),
    /// Already written at the object's offset (see [`first_object_offset`]) by
    /// someone else, for example `mksquashfs -o`; `size` bytes long.
    InPlace {
        /// Its length in bytes.
        size: u64,
    },
}

/// A data object to add.
pub struct ObjectInput<'a> {
    /// What the object holds.
    pub data_type: DataType,
    /// Where its bytes come from.
    pub data: ObjectData<'a>,
    /// Object group; `None` for no group. Defaults to group 1.
    pub group: Option<u32>,
    /// The object or group it refers to.
    pub link: Link,
    /// Alignment of the object's offset; `None` for the default
    /// (4096 for partitions, none otherwise).
    pub alignment: Option<u64>,
    /// Its name (at most 128 bytes).
    pub name: String,
    /// Its type-specific metadata.
    pub metadata: Metadata,
    /// Object creation time; `None` uses the time of the operation.
    pub time: Option<i64>,
}

impl<'a> ObjectInput<'a> {
    /// An object in the default group with default alignment and no metadata.
    pub fn new(data_type: DataType, data: &'a mut dyn Read) -> ObjectInput<'a> {
        Self::with_data(data_type, ObjectData::Reader(data))
    }

    /// An object whose `size` bytes are already in place in the file.
    pub fn in_place(data_type: DataType, size: u64) -> ObjectInput<'a> {
        Self::with_data(data_type, ObjectData::InPlace { size })
    }

    fn with_data(data_type: DataType, data: ObjectData<'a>) -> ObjectInput<'a> {
        ObjectInput {
            data_type,
            data,
            group: Some(DEFAULT_GROUP),
            link: Link::None,
            alignment: None,
            name: String::new(),
            metadata: Metadata::None,
            time: None,
        }
    }

    /// Sets the metadata (builder style).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the alignment (builder style).
    pub fn with_alignment(mut self, alignment: u64) -> Self {
        self.alignment = Some(alignment);
        self
    }
}

/// Options of a deletion.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOptions {
    /// Overwrite the object's bytes with zeros.
    pub zero: bool,
    /// Truncate the file after the last remaining object.
    pub compact: bool,
    /// Modification time; `None` means now (unset for deterministic images).
    pub time: Option<i64>,
}
