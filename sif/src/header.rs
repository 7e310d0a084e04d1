//! The 128-byte global header at the start of every SIF image.

use crate::types::Arch;

/// Size of the on-disk header.
pub const HEADER_SIZE: usize = 128;
/// The magic string at byte offset 32, NUL included.
pub const MAGIC: [u8; 10] = *b"SIF_MAGIC\0";
/// The only specification version in use.
pub const VERSION_01: [u8; 3] = *b"01\0";
/// Go's zero time in Unix seconds: what deterministic images store as "no time".
pub const ZERO_TIME: i64 = -62_135_596_800;
/// Where sif v2 writers put the descriptor array.
pub const DEFAULT_DESCRIPTORS_OFFSET: i64 = 4096;
/// How many descriptors sif v2 writers reserve.
pub const DEFAULT_DESCRIPTOR_CAPACITY: i64 = 48;
/// Where pre-v2 ("legacy") writers started the data section.
pub const LEGACY_DATA_OFFSET: i64 = 32768;
/// Launch script written by Apptainer builds and legacy writers.
pub const APPTAINER_LAUNCH_SCRIPT: &str = "#!/usr/bin/env run-singularity\n";

/// Byte offsets of the header fields, used in error messages.
pub(crate) mod offset {
    pub const DESCRIPTORS_FREE: u64 = 80;
    pub const DESCRIPTORS_TOTAL: u64 = 88;
    pub const DESCRIPTORS_OFFSET: u64 = 96;
    pub const DESCRIPTORS_SIZE: u64 = 104;
    pub const DATA_OFFSET: u64 = 112;
    pub const DATA_SIZE: u64 = 120;
}

/// The global header, field for field as stored (little-endian, packed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The `#!` line, NUL padded.
    pub launch_script: [u8; 32],
    /// `SIF_MAGIC` and a NUL.
    pub magic: [u8; 10],
    /// The specification version, `01` and a NUL.
    pub version: [u8; 3],
    /// Architecture of the primary partition, "00" when there is none.
    pub arch: Arch,
    /// Image UUID in RFC 4122 byte order; all zero for deterministic images.
    pub id: [u8; 16],
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// Modification time (Unix seconds).
    pub modified_at: i64,
    /// Unused descriptor slots.
    pub descriptors_free: i64,
    /// All descriptor slots.
    pub descriptors_total: i64,
    /// File offset of the descriptor array.
    pub descriptors_offset: i64,
    /// Length of the descriptor array (slots x 585).
    pub descriptors_size: i64,
    /// File offset of the data section.
    pub data_offset: i64,
    /// Length of the data section, padding included.
    pub data_size: i64,
}

fn i64_at(b: &[u8; HEADER_SIZE], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(v)
}

impl Header {
    /// Decodes a header without judging it; see [`crate::Image::open`] for the checks.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Header {
        let mut h = Header {
            launch_script: [0; 32],
            magic: [0; 10],
            version: [0; 3],
            arch: Arch([0; 3]),
            id: [0; 16],
            created_at: i64_at(b, 64),
            modified_at: i64_at(b, 72),
            descriptors_free: i64_at(b, 80),
            descriptors_total: i64_at(b, 88),
            descriptors_offset: i64_at(b, 96),
            descriptors_size: i64_at(b, 104),
            data_offset: i64_at(b, 112),
            data_size: i64_at(b, 120),
        };
        h.launch_script.copy_from_slice(&b[0..32]);
        h.magic.copy_from_slice(&b[32..42]);
        h.version.copy_from_slice(&b[42..45]);
        h.arch.0.copy_from_slice(&b[45..48]);
        h.id.copy_from_slice(&b[48..64]);
        h
    }

    /// Encodes the header as stored on disk.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..32].copy_from_slice(&self.launch_script);
        b[32..42].copy_from_slice(&self.magic);
        b[42..45].copy_from_slice(&self.version);
        b[45..48].copy_from_slice(&self.arch.0);
        b[48..64].copy_from_slice(&self.id);
        let fields = [
            self.created_at,
            self.modified_at,
            self.descriptors_free,
            self.descriptors_total,
            self.descriptors_offset,
            self.descriptors_size,
            self.data_offset,
            self.data_size,
        ];
        for (i, v) in fields.iter().enumerate() {
            b[64 + i * 8..72 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The 61 bytes a signature covers: launch script, magic, version and ID.
    ///
    /// Times, counts, offsets and the architecture are deliberately not
    /// covered (they change when objects are added, signatures included).
    pub fn integrity_bytes(&self) -> [u8; 61] {
        let mut b = [0u8; 61];
        b[0..32].copy_from_slice(&self.launch_script);
        b[32..42].copy_from_slice(&self.magic);
        b[42..45].copy_from_slice(&self.version);
        b[45..61].copy_from_slice(&self.id);
        b
    }

    /// The launch script with trailing NULs removed.
    pub fn launch_script(&self) -> String {
        trim_nul(&self.launch_script)
    }

    /// The version string with trailing NULs removed ("01").
    pub fn version_string(&self) -> String {
        trim_nul(&self.version)
    }

    /// The image ID in the canonical 8-4-4-4-12 form.
    pub fn id_string(&self) -> String {
        format_uuid(&self.id)
    }

    /// Whether ID and both times hold their "unset" values, as in images
    /// written for reproducible builds.
    pub fn is_deterministic(&self) -> bool {
        self.id == [0; 16] && self.created_at == ZERO_TIME && self.modified_at == ZERO_TIME
    }
}

/// Removes trailing NUL bytes and decodes the rest (invalid UTF-8 replaced).
pub(crate) fn trim_nul(b: &[u8]) -> String {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Formats 16 bytes as a UUID string.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Parses a UUID in 8-4-4-4-12 form (also accepting `urn:uuid:` and braces).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.strip_prefix("urn:uuid:").unwrap_or(s);
    let s = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(s);
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if !(lens == [8, 4, 4, 4, 12] || lens == [32]) {
        return None;
    }
    let hex: String = groups.concat();
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// A random (version 4) UUID read from the kernel's random source.
pub(crate) fn random_uuid() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut id)?;
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_round_trip() {
        let s = "de170c43-36ab-44a8-bca9-1ea1a070a274";
        let id = parse_uuid(s).unwrap();
        assert_eq!(format_uuid(&id), s);
        assert_eq!(parse_uuid(&format!("urn:uuid:{s}")), Some(id));
        assert_eq!(parse_uuid("de170c43-36ab-44a8-bca9-1ea1a070a27"), None);
        assert_eq!(parse_uuid("zz170c43-36ab-44a8-bca9-1ea1a070a274"), None);
        let r = random_uuid().unwrap();
        assert_eq!(r[6] >> 4, 4);
        assert_eq!(r[8] >> 6, 2);
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut raw = [0u8; HEADER_SIZE];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(Header::decode(&raw).encode(), raw);
    }

    #[test]
    fn trim_nul_keeps_interior_bytes() {
        assert_eq!(trim_nul(b"ab\0c\0\0"), "ab\0c");
        assert_eq!(trim_nul(b"\0\0"), "");
    }
}
