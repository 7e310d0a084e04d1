//! Opening an image: header and descriptors are read with positional reads and
//! checked against the file length before anything trusts them.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::descriptor::{self, DESCRIPTOR_SIZE, Descriptor, RawDescriptor};
use crate::error::{Error, Result};
use crate::header::{self, HEADER_SIZE, Header, MAGIC, VERSION_01};
use crate::types::{DataType, PartType};

/// Positional reads from something with a length: a file, or bytes in memory.
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn byte_len(&self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(buf.len())
            .filter(|&end| end <= <[u8]>::len(self))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn byte_len(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn byte_len(&self) -> io::Result<u64> {
        (**self).byte_len()
    }
}

/// Descriptors read per positional read while loading.
const DESCRIPTOR_BATCH: usize = 256;
/// Largest descriptor count sif v2 accepts.
const MAX_DESCRIPTORS: i64 = u32::MAX as i64 - 1;

/// An opened SIF image: its header and used descriptors, with object data
/// left in the file until asked for.
#[derive(Debug)]
pub struct Image<R> {
    pub(crate) source: R,
    pub(crate) file_len: u64,
    pub(crate) header: Header,
    /// Used descriptors in slot order.
    pub(crate) descriptors: Vec<Descriptor>,
}

fn header_err(field: &'static str, offset: u64, reason: impl Into<String>) -> Error {
    Error::Header {
        field,
        offset,
        reason: reason.into(),
    }
}

impl<R: ReadAt> Image<R> {
    /// Reads and checks the header and descriptors of the image in `source`.
    ///
    /// Time and memory are proportional to the number of descriptors, not to
    /// the size of the image: object data is read only on request.
    pub fn open(source: R) -> Result<Image<R>> {
        let file_len = source.byte_len().map_err(|e| Error::read(0, 0, e))?;
        if file_len < HEADER_SIZE as u64 {
            return Err(Error::TooShort { len: file_len });
        }
        let mut raw = [0u8; HEADER_SIZE];
        source
            .read_exact_at(&mut raw, 0)
            .map_err(|e| Error::read(0, HEADER_SIZE as u64, e))?;
        let header = Header::decode(&raw);
        check_header(&header, file_len)?;
        let raws = read_descriptors(&source, &header)?;
        let descriptors = check_descriptors(&header, file_len, raws)?;
        Ok(Image {
            source,
            file_len,
            header,
            descriptors,
        })
    }
}

impl<R> Image<R> {
    /// The global header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Length of the file when it was opened or last written.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The used descriptors, in descriptor-array order.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }

    /// The descriptor with object ID `id`.
    pub fn descriptor(&self, id: u32) -> Result<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.id() == id)
            .ok_or(Error::ObjectNotFound { id })
    }

    /// The primary system partition: the container's root filesystem.
    pub fn primary_partition(&self) -> Result<&Descriptor> {
        let mut prim = self
            .descriptors
            .iter()
            .filter(|d| d.is_partition_of_type(PartType::PRIMARY_SYSTEM));
        let first = prim.next().ok_or(Error::NoPrimaryPartition)?;
        if let Some(second) = prim.next() {
            return Err(Error::MultiplePrimaryPartitions {
                first: first.id(),
                second: second.id(),
            });
        }
        Ok(first)
    }

    /// Descriptors of the given data type.
    pub fn descriptors_of_type(&self, t: DataType) -> impl Iterator<Item = &Descriptor> {
        self.descriptors.iter().filter(move |d| d.data_type() == t)
    }

    /// The IDs of the object groups present, ascending (group 0 = none excluded).
    pub fn group_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .descriptors
            .iter()
            .map(Descriptor::group_id)
            .filter(|&g| g != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The source the image was opened from.
    pub fn source(&self) -> &R {
        &self.source
    }

    /// Gives the source back.
    pub fn into_source(self) -> R {
        self.source
    }

    /// Recomputes relative IDs after descriptors changed.
    pub(crate) fn refresh_relative_ids(&mut self) {
        let min_ids = min_ids_by_group(self.descriptors.iter().map(|d| &d.raw));
        for d in &mut self.descriptors {
            d.relative_id = d.raw.id - min_ids[&d.raw.group_raw];
        }
    }
}

impl<R: ReadAt> Image<R> {
    /// Reads `buf.len()` bytes of object `d` starting `at` bytes into it.
    pub fn read_object_at(&self, d: &Descriptor, buf: &mut [u8], at: u64) -> Result<()> {
        let end = at.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > d.size()) {
            return Err(Error::read(
                d.offset().saturating_add(at),
                buf.len() as u64,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the object",
                ),
            ));
        }
        if buf.is_empty() {
            // An empty object may lie past the end of the file.
            return Ok(());
        }
        let offset = d.offset() + at;
        self.source
            .read_exact_at(buf, offset)
            .map_err(|e| Error::read(offset, buf.len() as u64, e))
    }

    /// Reads a whole object into memory. For small objects (signatures,
    /// metadata); stream partitions with [`Image::object_reader`].
    pub fn read_object(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let len = usize::try_from(d.size()).map_err(|_| Error::TooLarge {
            field: "object",
            len: usize::MAX,
            max: usize::MAX,
        })?;
        // The size was checked against the file length when the image was opened.
        let mut buf = vec![0u8; len];
        self.read_object_at(d, &mut buf, 0)?;
        Ok(buf)
    }

    /// A reader over the bytes of object `d`.
    pub fn object_reader<'a>(&'a self, d: &Descriptor) -> ObjectReader<'a, R> {
        ObjectReader {
            source: &self.source,
            start: d.offset(),
            len: d.size(),
            pos: 0,
        }
    }

    /// Copies object `d` to `out`, returning the number of bytes copied.
    pub fn copy_object(&self, d: &Descriptor, out: &mut dyn io::Write) -> io::Result<u64> {
        io::copy(&mut self.object_reader(d), out)
    }
}

/// Sequential reads of one object through positional reads.
pub struct ObjectReader<'a, R> {
    source: &'a R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: ReadAt> io::Read for ObjectReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.pos;
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.source
            .read_exact_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn check_header(h: &Header, file_len: u64) -> Result<()> {
    use header::offset as off;
    if h.magic != MAGIC {
        return Err(Error::BadMagic);
    }
    if h.version != VERSION_01 {
        return Err(Error::BadVersion {
            found: String::from_utf8_lossy(&h.version)
                .trim_end_matches('\0')
                .to_owned(),
        });
    }
    if !(0..=MAX_DESCRIPTORS).contains(&h.descriptors_total) {
        return Err(header_err(
            "DescriptorsTotal",
            off::DESCRIPTORS_TOTAL,
            format!("{} is outside 0..={MAX_DESCRIPTORS}", h.descriptors_total),
        ));
    }
    if !(0..=h.descriptors_total).contains(&h.descriptors_free) {
        return Err(header_err(
            "DescriptorsFree",
            off::DESCRIPTORS_FREE,
            format!(
                "{} is outside 0..={} (DescriptorsTotal)",
                h.descriptors_free, h.descriptors_total
            ),
        ));
    }
    // Cannot overflow: total is below 2^32 and 585 below 2^10.
    let table_size = h.descriptors_total * DESCRIPTOR_SIZE as i64;
    if h.descriptors_size != table_size {
        return Err(header_err(
            "DescriptorsSize",
            off::DESCRIPTORS_SIZE,
            format!(
                "{} is not DescriptorsTotal ({}) x {DESCRIPTOR_SIZE}",
                h.descriptors_size, h.descriptors_total
            ),
        ));
    }
    if h.descriptors_offset < HEADER_SIZE as i64 {
        return Err(header_err(
            "DescriptorsOffset",
            off::DESCRIPTORS_OFFSET,
            format!(
                "{} overlaps the {HEADER_SIZE}-byte header",
                h.descriptors_offset
            ),
        ));
    }
    let table_end = h.descriptors_offset.checked_add(table_size);
    if table_end.is_none_or(|end| end as u64 > file_len) {
        return Err(header_err(
            "DescriptorsOffset",
            off::DESCRIPTORS_OFFSET,
            format!(
                "descriptor array [{}, +{table_size}) extends past the end of the {file_len}-byte file",
                h.descriptors_offset
            ),
        ));
    }
    if h.data_size < 0 {
        return Err(header_err(
            "DataSize",
            off::DATA_SIZE,
            format!("{} is negative", h.data_size),
        ));
    }
    // An empty data section need not be in the file: writers that place
    // data at 32768 (pre-v2) leave a file with only empty objects shorter
    // than that, and siftool and Apptainer load it.
    if h.data_offset < 0 || (h.data_offset as u64 > file_len && h.data_size != 0) {
        return Err(header_err(
            "DataOffset",
            off::DATA_OFFSET,
            format!("{} is outside the {file_len}-byte file", h.data_offset),
        ));
    }
    Ok(())
}

/// Reads the used descriptors in batches, keeping their slot index.
fn read_descriptors<R: ReadAt>(source: &R, h: &Header) -> Result<Vec<(usize, RawDescriptor)>> {
    // Both were checked by `check_header`: the array lies inside the file.
    let total = h.descriptors_total as usize;
    let base = h.descriptors_offset as u64;
    let mut used = Vec::new();
    let mut buf = vec![0u8; DESCRIPTOR_BATCH.min(total) * DESCRIPTOR_SIZE];
    let mut slot = 0;
    while slot < total {
        let n = DESCRIPTOR_BATCH.min(total - slot);
        let chunk = &mut buf[..n * DESCRIPTOR_SIZE];
        let offset = base + (slot * DESCRIPTOR_SIZE) as u64;
        source
            .read_exact_at(chunk, offset)
            .map_err(|e| Error::read(offset, chunk.len() as u64, e))?;
        for (i, raw) in chunk.chunks_exact(DESCRIPTOR_SIZE).enumerate() {
            // A used flag is any non-zero byte, as in sif v2.
            if raw[4] != 0 {
                let raw: &[u8; DESCRIPTOR_SIZE] = raw.try_into().expect("exact chunk");
                used.push((slot + i, RawDescriptor::decode(raw)));
            }
        }
        slot += n;
    }
    Ok(used)
}

fn check_descriptors(
    h: &Header,
    file_len: u64,
    raws: Vec<(usize, RawDescriptor)>,
) -> Result<Vec<Descriptor>> {
    use descriptor::offset as off;
    let mut seen: HashMap<u32, usize> = HashMap::with_capacity(raws.len());
    for (slot, d) in &raws {
        let field_at = |field_off: u64| {
            h.descriptors_offset as u64 + (*slot * DESCRIPTOR_SIZE) as u64 + field_off
        };
        let err = |field: &'static str, field_off: u64, reason: String| Error::Descriptor {
            index: *slot as u64,
            field,
            offset: field_at(field_off),
            reason,
        };
        if d.id == 0 {
            return Err(err(
                "ID",
                off::ID,
                "a used descriptor has object ID 0".into(),
            ));
        }
        if let Some(other) = seen.insert(d.id, *slot) {
            return Err(err(
                "ID",
                off::ID,
                format!("object ID {} is also used by descriptor {other}", d.id),
            ));
        }
        if d.size < 0 {
            return Err(err("Size", off::SIZE, format!("{} is negative", d.size)));
        }
        if d.offset < h.data_offset {
            return Err(err(
                "Offset",
                off::OFFSET,
                format!(
                    "object {} starts at {}, before the data section at {}",
                    d.id, d.offset, h.data_offset
                ),
            ));
        }
        let end = d.offset.checked_add(d.size);
        // An empty object reads no bytes: it may sit at or past the end of
        // the file, within the data section the header describes (an empty
        // partition is aligned past a file nothing was written to).
        let section_end = h.data_offset.checked_add(h.data_size);
        let empty_in_section =
            d.size == 0 && section_end.is_some_and(|section_end| d.offset <= section_end);
        if !empty_in_section && end.is_none_or(|end| end as u64 > file_len) {
            return Err(err(
                "Size",
                off::SIZE,
                format!(
                    "object {} [{}, +{}) extends past the end of the {file_len}-byte file",
                    d.id, d.offset, d.size
                ),
            ));
        }
        if d.size_with_padding < d.size {
            return Err(err(
                "SizeWithPadding",
                off::SIZE_WITH_PADDING,
                format!(
                    "{} is smaller than the object size {}",
                    d.size_with_padding, d.size
                ),
            ));
        }
    }
    let min_ids = min_ids_by_group(raws.iter().map(|(_, d)| d));
    Ok(raws
        .into_iter()
        .map(|(slot, raw)| Descriptor {
            relative_id: raw.id - min_ids[&raw.group_raw],
            raw,
            slot,
        })
        .collect())
}

/// The smallest object ID of each group, keyed by the raw group field.
fn min_ids_by_group<'a>(raws: impl Iterator<Item = &'a RawDescriptor>) -> HashMap<u32, u32> {
    let mut min_ids: HashMap<u32, u32> = HashMap::new();
    for d in raws {
        min_ids
            .entry(d.group_raw)
            .and_modify(|m| *m = (*m).min(d.id))
            .or_insert(d.id);
    }
    min_ids
}
