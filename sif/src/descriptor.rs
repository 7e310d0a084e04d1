//! The 585-byte object descriptors and the metadata kept in their `extra` field.

use crate::error::{Error, Result};
use crate::header::trim_nul;
use crate::types::{
    Arch, DataType, FormatType, FsType, HashType, MessageType, PartType, SbomFormat,
};

/// Size of one on-disk descriptor.
pub const DESCRIPTOR_SIZE: usize = 585;
/// Length of the name field.
pub const NAME_LEN: usize = 128;
/// Length of the type-specific `extra` field.
pub const EXTRA_LEN: usize = 384;
/// Bit pattern that marks group IDs (in the group field, and group links).
pub const GROUP_MASK: u32 = 0xF000_0000;
/// The group sif v2 writers put objects in unless told otherwise.
pub const DEFAULT_GROUP: u32 = 1;

/// Byte offsets of descriptor fields, used in error messages.
pub(crate) mod offset {
    pub const ID: u64 = 5;
    pub const OFFSET: u64 = 17;
    pub const SIZE: u64 = 25;
    pub const SIZE_WITH_PADDING: u64 = 33;
}

/// One descriptor, field for field as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct RawDescriptor {
    /// What the object holds.
    pub data_type: DataType,
    /// Whether the slot is in use.
    pub used: bool,
    /// The object ID (slot + 1 when written).
    pub id: u32,
    /// Group ID with [`GROUP_MASK`] set; `GROUP_MASK` alone means no group.
    pub group_raw: u32,
    /// Linked object ID, or group ID with [`GROUP_MASK`] set; 0 means none.
    pub link_raw: u32,
    /// Absolute file offset of the object's data.
    pub offset: i64,
    /// Length of the object's data.
    pub size: i64,
    /// Alignment gap before the object plus its size.
    pub size_with_padding: i64,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Modification time (Unix seconds).
    pub modified_at: i64,
    /// Deprecated; writers store 0.
    pub uid: i64,
    /// Deprecated; writers store 0.
    pub gid: i64,
    /// NUL-padded name.
    pub name: [u8; NAME_LEN],
    /// Type-specific metadata, zero padded.
    pub extra: [u8; EXTRA_LEN],
}

impl Default for RawDescriptor {
    fn default() -> Self {
        RawDescriptor {
            data_type: DataType(0),
            used: false,
            id: 0,
            group_raw: 0,
            link_raw: 0,
            offset: 0,
            size: 0,
            size_with_padding: 0,
            created_at: 0,
            modified_at: 0,
            uid: 0,
            gid: 0,
            name: [0; NAME_LEN],
            extra: [0; EXTRA_LEN],
        }
    }
}

impl std::fmt::Debug for RawDescriptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDescriptor")
            .field("data_type", &self.data_type)
            .field("used", &self.used)
            .field("id", &self.id)
            .field("group_raw", &format_args!("{:#x}", self.group_raw))
            .field("link_raw", &format_args!("{:#x}", self.link_raw))
            .field("offset", &self.offset)
            .field("size", &self.size)
            .field("size_with_padding", &self.size_with_padding)
            .field("created_at", &self.created_at)
            .field("modified_at", &self.modified_at)
            .field("name", &trim_nul(&self.name))
            .finish_non_exhaustive()
    }
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(v)
}

impl RawDescriptor {
    /// Decodes one descriptor without judging it.
    pub fn decode(b: &[u8; DESCRIPTOR_SIZE]) -> RawDescriptor {
        let mut d = RawDescriptor {
            data_type: DataType(le_i32(b, 0)),
            used: b[4] != 0,
            id: le_u32(b, 5),
            group_raw: le_u32(b, 9),
            link_raw: le_u32(b, 13),
            offset: le_i64(b, 17),
            size: le_i64(b, 25),
            size_with_padding: le_i64(b, 33),
            created_at: le_i64(b, 41),
            modified_at: le_i64(b, 49),
            uid: le_i64(b, 57),
            gid: le_i64(b, 65),
            name: [0; NAME_LEN],
            extra: [0; EXTRA_LEN],
        };
        d.name.copy_from_slice(&b[73..201]);
        d.extra.copy_from_slice(&b[201..585]);
        d
    }

    /// Encodes the descriptor as stored on disk.
    pub fn encode(&self) -> [u8; DESCRIPTOR_SIZE] {
        let mut b = [0u8; DESCRIPTOR_SIZE];
        b[0..4].copy_from_slice(&self.data_type.0.to_le_bytes());
        b[4] = u8::from(self.used);
        b[5..9].copy_from_slice(&self.id.to_le_bytes());
        b[9..13].copy_from_slice(&self.group_raw.to_le_bytes());
        b[13..17].copy_from_slice(&self.link_raw.to_le_bytes());
        let fields = [
            self.offset,
            self.size,
            self.size_with_padding,
            self.created_at,
            self.modified_at,
            self.uid,
            self.gid,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[17 + i * 8..25 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        b[73..201].copy_from_slice(&self.name);
        b[201..585].copy_from_slice(&self.extra);
        b
    }

    /// The 557 bytes a signature covers, with the object's ID relative to its group.
    ///
    /// Not covered: absolute ID, group, offset, padding and modification time,
    /// so that signing and compaction do not invalidate earlier signatures.
    pub fn integrity_bytes(&self, relative_id: u32) -> [u8; 557] {
        let mut b = [0u8; 557];
        b[0..4].copy_from_slice(&self.data_type.0.to_le_bytes());
        b[4] = u8::from(self.used);
        b[5..9].copy_from_slice(&relative_id.to_le_bytes());
        b[9..13].copy_from_slice(&self.link_raw.to_le_bytes());
        b[13..21].copy_from_slice(&self.size.to_le_bytes());
        b[21..29].copy_from_slice(&self.created_at.to_le_bytes());
        b[29..37].copy_from_slice(&self.uid.to_le_bytes());
        b[37..45].copy_from_slice(&self.gid.to_le_bytes());
        b[45..173].copy_from_slice(&self.name);
        b[173..557].copy_from_slice(&self.extra);
        b
    }
}

/// What an object is linked to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Not linked.
    None,
    /// Linked to the object with this ID.
    Object(u32),
    /// Linked to the object group with this ID.
    Group(u32),
}

impl Link {
    /// Decodes the raw link field the way sif v2 does.
    pub fn from_raw(raw: u32) -> Link {
        let id = raw & !GROUP_MASK;
        if id == 0 {
            Link::None
        } else if raw & GROUP_MASK == GROUP_MASK {
            Link::Group(id)
        } else {
            Link::Object(id)
        }
    }

    /// The raw link field.
    pub(crate) fn to_raw(self) -> u32 {
        match self {
            Link::None => 0,
            Link::Object(id) => id,
            Link::Group(id) => id | GROUP_MASK,
        }
    }
}

/// Metadata of a partition object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The filesystem.
    pub fs_type: FsType,
    /// The partition's role.
    pub part_type: PartType,
    /// The architecture of its contents.
    pub arch: Arch,
}

/// Metadata of a signature object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The hash the signature uses.
    pub hash_type: HashType,
    /// The signer's 20-byte primary key fingerprint; `None` when all zero (DSSE).
    pub fingerprint: Option<[u8; 20]>,
}

/// A used descriptor of a loaded image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub(crate) raw: RawDescriptor,
    pub(crate) slot: usize,
    pub(crate) relative_id: u32,
}

impl Descriptor {
    /// The stored fields.
    pub fn raw(&self) -> &RawDescriptor {
        &self.raw
    }

    /// Index of the descriptor in the descriptor array.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// What the object holds.
    pub fn data_type(&self) -> DataType {
        self.raw.data_type
    }

    /// The object ID.
    pub fn id(&self) -> u32 {
        self.raw.id
    }

    /// The object group, 0 when the object is in none.
    pub fn group_id(&self) -> u32 {
        self.raw.group_raw & !GROUP_MASK
    }

    /// The object or group this one refers to.
    pub fn link(&self) -> Link {
        Link::from_raw(self.raw.link_raw)
    }

    /// Absolute file offset of the data.
    pub fn offset(&self) -> u64 {
        self.raw.offset as u64
    }

    /// Length of the data in bytes.
    pub fn size(&self) -> u64 {
        self.raw.size as u64
    }

    /// Creation time (Unix seconds).
    pub fn created_at(&self) -> i64 {
        self.raw.created_at
    }

    /// Modification time (Unix seconds).
    pub fn modified_at(&self) -> i64 {
        self.raw.modified_at
    }

    /// The name with trailing NULs removed.
    pub fn name(&self) -> String {
        trim_nul(&self.raw.name)
    }

    /// ID minus the smallest ID in the object's group, as signatures record it.
    pub fn relative_id(&self) -> u32 {
        self.relative_id
    }

    /// The canonical bytes a signature digests for this descriptor.
    pub fn integrity_bytes(&self) -> [u8; 557] {
        self.raw.integrity_bytes(self.relative_id)
    }

    fn expect(&self, want: DataType, what: &'static str) -> Result<()> {
        if self.raw.data_type == want {
            Ok(())
        } else {
            Err(Error::Metadata {
                id: self.id(),
                what,
                reason: format!("object is {}, not {}", self.raw.data_type, want),
            })
        }
    }

    /// Partition metadata; an error for other object types.
    pub fn partition(&self) -> Result<Partition> {
        self.expect(DataType::PARTITION, "partition")?;
        let e = &self.raw.extra;
        Ok(Partition {
            fs_type: FsType(le_i32(e, 0)),
            part_type: PartType(le_i32(e, 4)),
            arch: Arch([e[8], e[9], e[10]]),
        })
    }

    /// Whether this is a partition of the given type.
    pub fn is_partition_of_type(&self, part_type: PartType) -> bool {
        self.partition().is_ok_and(|p| p.part_type == part_type)
    }

    /// Signature metadata; an error for other types or an unknown hash type.
    pub fn signature(&self) -> Result<SignatureInfo> {
        self.expect(DataType::SIGNATURE, "signature")?;
        let e = &self.raw.extra;
        let hash_type = HashType(le_i32(e, 0));
        if !hash_type.is_known() {
            return Err(Error::Metadata {
                id: self.id(),
                what: "signature",
                reason: format!("unknown hash type {}", hash_type.0),
            });
        }
        let mut fp = [0u8; 20];
        fp.copy_from_slice(&e[4..24]);
        Ok(SignatureInfo {
            hash_type,
            fingerprint: (fp != [0; 20]).then_some(fp),
        })
    }

    /// Crypto message metadata; an error for other object types.
    pub fn crypto_message(&self) -> Result<(FormatType, MessageType)> {
        self.expect(DataType::CRYPTO_MESSAGE, "crypto message")?;
        let e = &self.raw.extra;
        Ok((FormatType(le_i32(e, 0)), MessageType(le_i32(e, 4))))
    }

    /// SBOM metadata; an error for other object types.
    pub fn sbom_format(&self) -> Result<SbomFormat> {
        self.expect(DataType::SBOM, "SBOM")?;
        Ok(SbomFormat(le_i32(&self.raw.extra, 0)))
    }

    /// The digest text ("sha256:<hex>") of an OCI blob or root index.
    pub fn oci_digest(&self) -> Result<String> {
        if self.raw.data_type != DataType::OCI_BLOB
            && self.raw.data_type != DataType::OCI_ROOT_INDEX
        {
            return Err(Error::Metadata {
                id: self.id(),
                what: "OCI digest",
                reason: format!("object is {}, not an OCI blob", self.raw.data_type),
            });
        }
        let e = &self.raw.extra;
        let end = e.iter().position(|&c| c == 0).unwrap_or(e.len());
        let text = std::str::from_utf8(&e[..end]).map_err(|_| Error::Metadata {
            id: self.id(),
            what: "OCI digest",
            reason: "digest is not text".into(),
        })?;
        let valid = text.split_once(':').is_some_and(|(alg, hex)| {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"+._-".contains(&c))
                && !hex.is_empty()
                && hex.bytes().all(|c| c.is_ascii_hexdigit())
        });
        if !valid {
            return Err(Error::Metadata {
                id: self.id(),
                what: "OCI digest",
                reason: format!("{text:?} is not of the form algorithm:hex"),
            });
        }
        Ok(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_decode_like_sif_v2() {
        assert_eq!(Link::from_raw(0), Link::None);
        assert_eq!(Link::from_raw(GROUP_MASK), Link::None);
        assert_eq!(Link::from_raw(GROUP_MASK | 1), Link::Group(1));
        assert_eq!(Link::from_raw(2), Link::Object(2));
        // A partial mask is an object link, as in sif v2.
        assert_eq!(Link::from_raw(0x1000_0003), Link::Object(0x0000_0003));
        for l in [Link::None, Link::Object(7), Link::Group(3)] {
            assert_eq!(Link::from_raw(l.to_raw()), l);
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut raw = [0u8; DESCRIPTOR_SIZE];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        raw[4] = 1;
        assert_eq!(RawDescriptor::decode(&raw).encode(), raw);
    }

    #[test]
    fn integrity_bytes_skip_unsigned_fields() {
        let mut d = RawDescriptor {
            used: true,
            id: 9,
            size: 5,
            ..Default::default()
        };
        let a = d.integrity_bytes(0);
        d.id = 10;
        d.group_raw = GROUP_MASK | 4;
        d.offset = 4096;
        d.size_with_padding = 99;
        d.modified_at = 77;
        assert_eq!(d.integrity_bytes(0), a);
        d.size = 6;
        assert_ne!(d.integrity_bytes(0), a);
        assert_ne!(d.integrity_bytes(1), a);
    }
}
