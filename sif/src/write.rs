//! Creating and modifying images, laid out byte for byte as sylabs/sif v2 does.
//!
//! Every operation writes object data first, then the descriptor, then the
//! header, so an interrupted write leaves the old header describing the old
//! objects.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::descriptor::{DESCRIPTOR_SIZE, Descriptor, GROUP_MASK, NAME_LEN, RawDescriptor};
use crate::error::{Error, Result};
use crate::header::{
    DEFAULT_DESCRIPTOR_CAPACITY, DEFAULT_DESCRIPTORS_OFFSET, Header, MAGIC, VERSION_01, ZERO_TIME,
    random_uuid,
};
use crate::image::Image;
use crate::types::{Arch, DataType, PartType};

mod input;

pub use input::{DeleteOptions, Metadata, ObjectData, ObjectInput};

/// Default alignment of partitions, so they can be mapped page by page.
pub const PARTITION_ALIGNMENT: u64 = 4096;

/// The current time in Unix seconds.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How a new image is created.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// The `#!` line at the start of the file (under 32 bytes).
    pub launch_script: String,
    /// Image UUID; `None` picks a random one.
    pub id: Option<[u8; 16]>,
    /// Creation time; `None` means now.
    pub time: Option<i64>,
    /// Number of descriptor slots.
    pub descriptor_capacity: i64,
}

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            launch_script: String::new(),
            id: None,
            time: None,
            descriptor_capacity: DEFAULT_DESCRIPTOR_CAPACITY,
        }
    }
}

impl CreateOptions {
    /// Options for a reproducible image: nil UUID and unset times.
    pub fn deterministic() -> CreateOptions {
        CreateOptions {
            id: Some([0; 16]),
            time: Some(ZERO_TIME),
            ..CreateOptions::default()
        }
    }
}

fn default_alignment(data_type: DataType) -> u64 {
    if data_type == DataType::PARTITION {
        PARTITION_ALIGNMENT
    } else {
        0
    }
}

/// Where [`create`] will put the first object of an image made with `opts`.
pub fn first_object_offset(
    opts: &CreateOptions,
    data_type: DataType,
    alignment: Option<u64>,
) -> Result<u64> {
    let data_offset =
        DEFAULT_DESCRIPTORS_OFFSET + opts.descriptor_capacity.max(0) * DESCRIPTOR_SIZE as i64;
    next_aligned(
        data_offset as u64,
        alignment.unwrap_or_else(|| default_alignment(data_type)),
    )
}

fn next_aligned(offset: u64, alignment: u64) -> Result<u64> {
    if offset > i64::MAX as u64 {
        return Err(Error::Invalid {
            what: "offset",
            reason: format!("{offset} does not fit a SIF offset"),
        });
    }
    if alignment == 0 || offset.is_multiple_of(alignment) {
        return Ok(offset);
    }
    (offset - offset % alignment)
        .checked_add(alignment)
        .filter(|&o| o <= i64::MAX as u64)
        .ok_or(Error::Invalid {
            what: "alignment",
            reason: format!("aligning offset {offset} to {alignment} overflows"),
        })
}

fn write_at(file: &File, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| Error::write(offset, e))
}

/// Creates a new image in `file` (which should be empty), adding `objects` in order.
pub fn create(
    file: File,
    opts: &CreateOptions,
    objects: Vec<ObjectInput<'_>>,
) -> Result<Image<File>> {
    if opts.launch_script.len() >= 32 {
        return Err(Error::TooLarge {
            field: "launch script",
            len: opts.launch_script.len(),
            max: 31,
        });
    }
    if !(0..u32::MAX as i64 - 1).contains(&opts.descriptor_capacity) {
        return Err(Error::Invalid {
            what: "descriptor capacity",
            reason: format!("{} is not supported", opts.descriptor_capacity),
        });
    }
    let id = match opts.id {
        Some(id) => id,
        None => random_uuid().map_err(|e| Error::Invalid {
            what: "image ID",
            reason: format!("cannot read /dev/urandom: {e}"),
        })?,
    };
    let t = opts.time.unwrap_or_else(now);
    let mut launch_script = [0u8; 32];
    launch_script[..opts.launch_script.len()].copy_from_slice(opts.launch_script.as_bytes());
    let descriptors_size = opts.descriptor_capacity * DESCRIPTOR_SIZE as i64;
    let header = Header {
        launch_script,
        magic: MAGIC,
        version: VERSION_01,
        arch: Arch::UNKNOWN,
        id,
        created_at: t,
        modified_at: t,
        descriptors_free: opts.descriptor_capacity,
        descriptors_total: opts.descriptor_capacity,
        descriptors_offset: DEFAULT_DESCRIPTORS_OFFSET,
        descriptors_size,
        data_offset: DEFAULT_DESCRIPTORS_OFFSET + descriptors_size,
        data_size: 0,
    };
    let mut image = Image {
        source: file,
        file_len: 0,
        header,
        descriptors: Vec::new(),
    };
    for object in objects {
        image.write_object(object, t)?;
    }
    // The whole descriptor array is written, unused slots as zeros.
    let mut table = vec![0u8; descriptors_size as usize];
    for d in &image.descriptors {
        let at = d.slot * DESCRIPTOR_SIZE;
        table[at..at + DESCRIPTOR_SIZE].copy_from_slice(&d.raw.encode());
    }
    write_at(&image.source, &table, DEFAULT_DESCRIPTORS_OFFSET as u64)?;
    write_at(&image.source, &image.header.encode(), 0)?;
    image.ensure_len(image.header.data_offset as u64)?;
    image.sync_len()?;
    Ok(image)
}

impl Image<File> {
    /// Opens an existing image for modification.
    pub fn open_rw(file: File) -> Result<Image<File>> {
        Image::open(file)
    }

    fn default_time(&self, time: Option<i64>) -> i64 {
        time.unwrap_or_else(|| {
            if self.header.is_deterministic() {
                ZERO_TIME
            } else {
                now()
            }
        })
    }

    fn sync_len(&mut self) -> Result<()> {
        self.file_len = self
            .source
            .metadata()
            .map_err(|e| Error::write(0, e))?
            .len();
        Ok(())
    }

    fn ensure_len(&self, len: u64) -> Result<()> {
        let cur = self
            .source
            .metadata()
            .map_err(|e| Error::write(0, e))?
            .len();
        if cur < len {
            self.source.set_len(len).map_err(|e| Error::write(len, e))?;
        }
        Ok(())
    }

    /// End of the last object, relative to the data section.
    fn calculated_data_size(&self) -> i64 {
        self.descriptors
            .iter()
            .map(|d| d.raw.offset + d.raw.size)
            .max()
            .map_or(0, |end| (end - self.header.data_offset).max(0))
    }

    fn first_free_slot(&self) -> Option<usize> {
        let total = self.header.descriptors_total as usize;
        let mut used: Vec<usize> = self.descriptors.iter().map(|d| d.slot).collect();
        used.sort_unstable();
        (0..total).find(|s| used.binary_search(s).is_err())
    }

    fn write_descriptor_slot(&self, slot: usize, raw: &RawDescriptor) -> Result<()> {
        let at = self.header.descriptors_offset as u64 + (slot * DESCRIPTOR_SIZE) as u64;
        write_at(&self.source, &raw.encode(), at)
    }

    fn write_header(&self) -> Result<()> {
        write_at(&self.source, &self.header.encode(), 0)
    }

    /// Writes the object's data and records its descriptor in memory.
    /// Checks `input` against the image; returns the slot it will take and,
    /// for a primary partition, the architecture the header will record.
    fn check_input(&self, input: &ObjectInput<'_>) -> Result<(usize, Option<Arch>)> {
        let slot = self.first_free_slot().ok_or(Error::InsufficientCapacity {
            capacity: self.header.descriptors_total as u64,
        })?;
        if input.name.len() > NAME_LEN {
            return Err(Error::TooLarge {
                field: "object name",
                len: input.name.len(),
                max: NAME_LEN,
            });
        }
        let primary_arch = match &input.metadata {
            Metadata::Partition {
                part_type, arch, ..
            } if *part_type == PartType::PRIMARY_SYSTEM => {
                if let Ok(existing) = self.primary_partition() {
                    return Err(Error::PrimaryPartitionExists { id: existing.id() });
                }
                Some(*arch)
            }
            _ => None,
        };
        if let Some(0) = input.group {
            return Err(Error::Invalid {
                what: "group ID",
                reason: "0 is not a group; use no group instead".into(),
            });
        }
        if input.group.is_some_and(|g| g & GROUP_MASK != 0) {
            return Err(Error::Invalid {
                what: "group ID",
                reason: format!("{:#x} is too large", input.group.unwrap_or(0)),
            });
        }
        Ok((slot, primary_arch))
    }

    /// Puts the object's bytes at `offset`; returns their length and, when
    /// `hash` is set, their SHA-256 digest text.
    fn place_data(
        &self,
        data: ObjectData<'_>,
        offset: u64,
        hash: bool,
    ) -> Result<(u64, Option<String>)> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size: u64 = 0;
        match data {
            ObjectData::Reader(data) => loop {
                let n = match data.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(Error::Read {
                            offset: size,
                            len: buf.len() as u64,
                            source: e,
                        });
                    }
                };
                write_at(&self.source, &buf[..n], offset + size)?;
                if hash {
                    hasher.update(&buf[..n]);
                }
                size += n as u64;
            },
            ObjectData::InPlace { size: placed } => {
                let file_len = self
                    .source
                    .metadata()
                    .map_err(|e| Error::read(0, 0, e))?
                    .len();
                if offset.checked_add(placed).is_none_or(|end| end > file_len) {
                    return Err(Error::Invalid {
                        what: "in-place object",
                        reason: format!(
                            "[{offset}, +{placed}) is not inside the {file_len}-byte file"
                        ),
                    });
                }
                while hash && size < placed {
                    let n = (placed - size).min(buf.len() as u64) as usize;
                    self.source
                        .read_exact_at(&mut buf[..n], offset + size)
                        .map_err(|e| Error::read(offset + size, n as u64, e))?;
                    hasher.update(&buf[..n]);
                    size += n as u64;
                }
                size = placed;
            }
        }
        Ok((
            size,
            hash.then(|| format!("sha256:{:x}", hasher.finalize())),
        ))
    }

    /// Writes the object's data and records its descriptor in memory.
    fn write_object(&mut self, input: ObjectInput<'_>, t: i64) -> Result<usize> {
        let (slot, primary_arch) = self.check_input(&input)?;
        let mut extra = input.metadata.encode()?;
        let start = (self.header.data_offset + self.calculated_data_size()) as u64;
        let alignment = input
            .alignment
            .unwrap_or_else(|| default_alignment(input.data_type));
        let offset = next_aligned(start, alignment)?;
        let hash_oci =
            input.data_type == DataType::OCI_BLOB || input.data_type == DataType::OCI_ROOT_INDEX;
        let (size, digest) = self.place_data(input.data, offset, hash_oci)?;
        if let Some(digest) = digest {
            extra = Metadata::Raw(digest.into_bytes()).encode()?;
        }
        let object_time = input.time.unwrap_or(t);
        let mut name = [0u8; NAME_LEN];
        name[..input.name.len()].copy_from_slice(input.name.as_bytes());
        let raw = RawDescriptor {
            data_type: input.data_type,
            used: true,
            id: slot as u32 + 1,
            group_raw: input.group.unwrap_or(0) | GROUP_MASK,
            link_raw: input.link.to_raw(),
            offset: offset as i64,
            size: size as i64,
            size_with_padding: (offset - start + size) as i64,
            created_at: object_time,
            modified_at: object_time,
            uid: 0,
            gid: 0,
            name,
            extra,
        };
        if let Some(arch) = primary_arch {
            self.header.arch = arch;
        }
        self.header.descriptors_free -= 1;
        self.header.data_size = self.calculated_data_size() + raw.size_with_padding;
        let pos = self.descriptors.partition_point(|d| d.slot < slot);
        self.descriptors.insert(
            pos,
            Descriptor {
                raw,
                slot,
                relative_id: 0,
            },
        );
        self.refresh_relative_ids();
        Ok(slot)
    }

    /// Appends an object. `time` is the modification time of the image and
    /// the default creation time of the object; `None` means now (unset for
    /// deterministic images). Returns the new object's ID.
    pub fn add_object(&mut self, input: ObjectInput<'_>, time: Option<i64>) -> Result<u32> {
        let t = self.default_time(time);
        let slot = self.write_object(input, t)?;
        let d = self
            .descriptors
            .iter()
            .find(|d| d.slot == slot)
            .expect("the object was just added")
            .clone();
        self.write_descriptor_slot(d.slot, &d.raw)?;
        self.header.modified_at = t;
        self.write_header()?;
        self.sync_len()?;
        Ok(d.raw.id)
    }

    /// Deletes object `id`.
    pub fn delete_object(&mut self, id: u32, opts: DeleteOptions) -> Result<()> {
        let t = self.default_time(opts.time);
        let pos = self
            .descriptors
            .iter()
            .position(|d| d.id() == id)
            .ok_or(Error::ObjectNotFound { id })?;
        let d = self.descriptors[pos].clone();
        if opts.zero {
            let zeros = vec![0u8; 1 << 20];
            let mut done = 0;
            while done < d.size() {
                let n = (d.size() - done).min(zeros.len() as u64) as usize;
                write_at(&self.source, &zeros[..n], d.offset() + done)?;
                done += n as u64;
            }
        }
        self.header.descriptors_free += 1;
        self.header.modified_at = t;
        if d.is_partition_of_type(PartType::PRIMARY_SYSTEM) {
            self.header.arch = Arch::UNKNOWN;
        }
        self.descriptors.remove(pos);
        self.write_descriptor_slot(d.slot, &RawDescriptor::default())?;
        if opts.compact {
            self.header.data_size = self.calculated_data_size();
            let len = (self.header.data_offset + self.header.data_size) as u64;
            self.source.set_len(len).map_err(|e| Error::write(len, e))?;
        }
        self.write_header()?;
        self.refresh_relative_ids();
        self.sync_len()
    }

    /// Makes system partition `id` the primary one, demoting the current primary.
    pub fn set_primary_partition(&mut self, id: u32, time: Option<i64>) -> Result<()> {
        let t = self.default_time(time);
        let d = self.descriptor(id)?;
        if d.data_type() != DataType::PARTITION {
            return Err(Error::NotAPartition { id });
        }
        let part = d.partition()?;
        if part.part_type == PartType::PRIMARY_SYSTEM {
            return Ok(());
        }
        if part.part_type != PartType::SYSTEM {
            return Err(Error::NotASystemPartition {
                id,
                part_type: part.part_type.to_string(),
            });
        }
        let old = self.primary_partition().ok().map(Descriptor::id);
        for d in &mut self.descriptors {
            let new_type = if Some(d.raw.id) == old {
                PartType::SYSTEM
            } else if d.raw.id == id {
                PartType::PRIMARY_SYSTEM
            } else {
                continue;
            };
            d.raw.extra[4..8].copy_from_slice(&new_type.0.to_le_bytes());
            d.raw.modified_at = t;
        }
        for d in self
            .descriptors
            .iter()
            .filter(|d| Some(d.raw.id) == old || d.raw.id == id)
        {
            self.write_descriptor_slot(d.slot, &d.raw)?;
        }
        self.header.arch = part.arch;
        self.header.modified_at = t;
        self.write_header()
    }

    /// Replaces the metadata of object `id`.
    pub fn set_metadata(&mut self, id: u32, metadata: &Metadata, time: Option<i64>) -> Result<()> {
        let t = self.default_time(time);
        let extra = metadata.encode()?;
        let d = self
            .descriptors
            .iter_mut()
            .find(|d| d.raw.id == id)
            .ok_or(Error::ObjectNotFound { id })?;
        d.raw.extra = extra;
        d.raw.modified_at = t;
        let (slot, raw) = (d.slot, d.raw.clone());
        self.write_descriptor_slot(slot, &raw)?;
        self.header.modified_at = t;
        self.write_header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_rounds_up() {
        assert_eq!(next_aligned(0, 0).unwrap(), 0);
        assert_eq!(next_aligned(1, 0).unwrap(), 1);
        assert_eq!(next_aligned(1, 1024).unwrap(), 1024);
        assert_eq!(next_aligned(1024, 1024).unwrap(), 1024);
        assert_eq!(next_aligned(1025, 1024).unwrap(), 2048);
        assert_eq!(next_aligned(32176, 4096).unwrap(), 32768);
        assert!(next_aligned(i64::MAX as u64, 1024).is_err());
        assert!(next_aligned(u64::MAX, 3).is_err());
    }
}
