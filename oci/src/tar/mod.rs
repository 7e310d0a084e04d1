//! A tar header reader for layer blobs (design §3.3): ustar, GNU (long
//! names and links, base-256 numbers), PAX (`path`, `linkpath`, `size`,
//! `uid`, `gid`, `mtime`, `SCHILY.xattr.*`), V7. Special headers are capped
//! at 1 MiB; sparse files, multi-volume archives and unknown types are
//! refused. It never panics on arbitrary bytes, and every error names the
//! offset of the header at fault.

mod header;
pub mod write;

use std::io::{self, Read};

use header::{BLOCK, Format, Pax};

/// Largest PAX or GNU long-name header accepted (Go's `archive/tar`,
/// libarchive).
pub const MAX_SPECIAL: u64 = 1 << 20;
/// Largest total of one entry's xattrs.
pub const MAX_XATTRS: usize = 64 << 10;

/// What went wrong, and where (byte offset of the header in the stream).
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Reading failed.
    #[error("tar stream at offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The stream ended inside a header or an entry's data.
    #[error("tar stream truncated at offset {offset}")]
    Truncated {
        /// Where.
        offset: u64,
    },
    /// A header's checksum does not match.
    #[error("tar header at offset {offset}: bad checksum (not a tar stream?)")]
    Checksum {
        /// Where.
        offset: u64,
    },
    /// A numeric field does not decode.
    #[error("tar header at offset {offset}: bad {field} field")]
    BadNumber {
        /// Where.
        offset: u64,
        /// Which field.
        field: &'static str,
    },
    /// A PAX header is malformed.
    #[error("tar PAX header at offset {offset}: {why}")]
    Pax {
        /// Where.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// A special header (PAX, GNU long name) is larger than [`MAX_SPECIAL`].
    #[error("tar header at offset {offset}: {kind} header of {size} bytes (limit {MAX_SPECIAL})")]
    SpecialTooLarge {
        /// Where.
        offset: u64,
        /// `PAX` or `GNU long name`.
        kind: &'static str,
        /// Its size.
        size: u64,
    },
    /// An entry's xattrs exceed [`MAX_XATTRS`].
    #[error("tar entry at offset {offset}: xattrs larger than {MAX_XATTRS} bytes")]
    XattrsTooLarge {
        /// Where.
        offset: u64,
    },
    /// A sparse file.
    #[error("tar entry at offset {offset}: sparse file in layer: not supported")]
    Sparse {
        /// Where.
        offset: u64,
    },
    /// A type flag this reader does not accept.
    #[error("tar entry at offset {offset}: unsupported type flag {typeflag:?}")]
    Unsupported {
        /// Where.
        offset: u64,
        /// The flag byte, as a char.
        typeflag: char,
    },
    /// An entry with an empty name.
    #[error("tar entry at offset {offset}: empty name")]
    EmptyName {
        /// Where.
        offset: u64,
    },
}

/// The type of a tar entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A regular file.
    File,
    /// A hard link to an earlier entry.
    HardLink,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Char,
    /// A block device.
    Block,
    /// A directory.
    Dir,
    /// A FIFO.
    Fifo,
}

/// One entry's header, with special headers applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as recorded (PAX `path` > GNU long name > prefix/name);
    /// not cleaned.
    pub path: Vec<u8>,
    /// The type.
    pub kind: Kind,
    /// The 12 permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in seconds.
    pub mtime: i64,
    /// Data size (0 for everything but files).
    pub size: u64,
    /// Link target (hard and symbolic links).
    pub link: Option<Vec<u8>>,
    /// Device numbers.
    pub device: (u32, u32),
    /// Extended attributes from PAX `SCHILY.xattr.*`.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Offset of the entry's first header (special headers included).
    pub header_offset: u64,
    /// Offset of the data.
    pub data_offset: u64,
}

/// Whether an xattr is carried into an image (`user.*`,
/// `security.capability`); `trusted.*`, `security.selinux` and the rest
/// are dropped, as umoci does.
pub fn keep_xattr(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

/// Reads entry headers from a tar stream, skipping (or handing out) data.
pub struct Reader<R> {
    inner: R,
    pos: u64,
    /// Data bytes of the current entry not yet read, and its padding.
    remaining: u64,
    padding: u64,
    done: bool,
}

/// Pending special-header state before a real entry.
#[derive(Default)]
struct Pending {
    start: Option<u64>,
    pax: Pax,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64).saturating_mul(BLOCK as u64)
}

impl<R: Read> Reader<R> {
    /// Reads tar from `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    /// The offset reached in the stream.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader (after the end marker, the caller reads the
    /// rest to EOF so a digest covers every byte).
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn io(&self, source: io::Error) -> TarError {
        TarError::Io {
            offset: self.pos,
            source,
        }
    }

    /// Fills `buf`; returns how many bytes came before EOF.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        self.pos += n as u64;
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let got =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| self.io(e))?;
        self.pos += got;
        if got != n {
            return Err(TarError::Truncated { offset: self.pos });
        }
        Ok(())
    }

    /// Reads the data of the current entry (what is left of it).
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.inner.read(&mut buf[..want]).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(TarError::Truncated { offset: self.pos });
        }
        self.pos += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }

    fn read_special(
        &mut self,
        size: u64,
        kind: &'static str,
        offset: u64,
    ) -> Result<Vec<u8>, TarError> {
        if size > MAX_SPECIAL {
            return Err(TarError::SpecialTooLarge { offset, kind, size });
        }
        let mut data = vec![0u8; usize::try_from(size).unwrap_or(0)];
        if self.read_full(&mut data)? != data.len() {
            return Err(TarError::Truncated { offset: self.pos });
        }
        self.skip(padded(size) - size)?;
        Ok(data)
    }

    /// The next entry, or `None` at the end of the archive (two zero
    /// blocks, one zero block then EOF, or EOF at a header boundary).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let rest = self.remaining.saturating_add(self.padding);
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest)?;
        let mut pending = Pending::default();
        loop {
            let offset = self.pos;
            let mut h = [0u8; BLOCK];
            match self.read_full(&mut h)? {
                0 => return self.end(),
                BLOCK => {}
                _ => return Err(TarError::Truncated { offset }),
            }
            if h.iter().all(|&b| b == 0) {
                // A second zero block may follow; either way this is the end.
                return self.end();
            }
            if !header::checksum_ok(&h, offset)? {
                return Err(TarError::Checksum { offset });
            }
            pending.start.get_or_insert(offset);
            let size = header::number(&h, &header::SIZE, offset)?;
            match h[156] {
                b'x' => header::parse_pax(
                    &self.read_special(size, "PAX", offset)?,
                    &mut pending.pax,
                    offset,
                )?,
                b'g' => drop(self.read_special(size, "PAX", offset)?),
                b'L' => {
                    pending.long_name = Some(trim_nul(self.read_special(
                        size,
                        "GNU long name",
                        offset,
                    )?))
                }
                b'K' => {
                    pending.long_link = Some(trim_nul(self.read_special(
                        size,
                        "GNU long name",
                        offset,
                    )?))
                }
                b'S' => return Err(TarError::Sparse { offset }),
                _ => return self.entry(&h, offset, size, pending).map(Some),
            }
        }
    }

    fn end(&mut self) -> Result<Option<Entry>, TarError> {
        self.done = true;
        Ok(None)
    }

    fn entry(
        &mut self,
        h: &[u8; BLOCK],
        offset: u64,
        size: u64,
        p: Pending,
    ) -> Result<Entry, TarError> {
        let num = |f| header::number(h, f, offset);
        let name = header::bytes(h, &header::NAME);
        let format = header::format(h);
        let prefix = if format == Format::Ustar {
            header::bytes(h, &header::PREFIX)
        } else {
            &[]
        };
        let path = match (p.pax.path, p.long_name) {
            (Some(path), _) | (None, Some(path)) => path,
            _ if !prefix.is_empty() => [prefix, b"/", name].concat(),
            _ => name.to_vec(),
        };
        let kind = kind_of(h[156], &path, offset)?;
        if p.pax.sparse {
            return Err(TarError::Sparse { offset });
        }
        if path.is_empty() {
            return Err(TarError::EmptyName { offset });
        }
        if p.pax
            .xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            > MAX_XATTRS
        {
            return Err(TarError::XattrsTooLarge { offset });
        }
        let link = matches!(kind, Kind::HardLink | Kind::Symlink).then(|| {
            p.pax
                .linkpath
                .or(p.long_link)
                .unwrap_or_else(|| header::bytes(h, &header::LINKNAME).to_vec())
        });
        let size = if kind == Kind::File {
            p.pax.size.unwrap_or(size)
        } else {
            0
        };
        let device = if matches!(kind, Kind::Char | Kind::Block) {
            let dev = |f| num(f).map(|v| u32::try_from(v).unwrap_or(u32::MAX));
            (dev(&header::DEVMAJOR)?, dev(&header::DEVMINOR)?)
        } else {
            (0, 0)
        };
        let entry = Entry {
            path,
            kind,
            mode: u32::try_from(num(&header::MODE)? & 0o7777).unwrap_or(0),
            uid: p.pax.uid.map_or_else(|| num(&header::UID), Ok)?,
            gid: p.pax.gid.map_or_else(|| num(&header::GID), Ok)?,
            mtime: match p.pax.mtime {
                Some(t) => t,
                None => i64::try_from(num(&header::MTIME)?).unwrap_or(i64::MAX),
            },
            size,
            link,
            device,
            xattrs: p.pax.xattrs,
            header_offset: p.start.unwrap_or(offset),
            data_offset: self.pos,
        };
        self.remaining = size;
        self.padding = padded(size) - size;
        Ok(entry)
    }
}

/// The entry type of a typeflag (a V7 `\0` entry ending in `/` is a
/// directory).
fn kind_of(typeflag: u8, path: &[u8], offset: u64) -> Result<Kind, TarError> {
    Ok(match typeflag {
        b'0' | b'7' => Kind::File,
        0 if path.ends_with(b"/") => Kind::Dir,
        0 => Kind::File,
        b'1' => Kind::HardLink,
        b'2' => Kind::Symlink,
        b'3' => Kind::Char,
        b'4' => Kind::Block,
        b'5' => Kind::Dir,
        b'6' => Kind::Fifo,
        t => {
            return Err(TarError::Unsupported {
                offset,
                typeflag: char::from(t),
            });
        }
    })
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(end) = v.iter().position(|&b| b == 0) {
        v.truncate(end);
    }
    v
}

impl<R: Read> Read for Reader<R> {
    /// Reads the current entry's data.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_data(buf).map_err(|e| match e {
            TarError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::UnexpectedEof, other),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
