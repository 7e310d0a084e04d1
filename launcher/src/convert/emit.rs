//! Pass 2: the planned tree as one tar stream. Directories first, then
//! each node's header (under its final path) and data read from its layer
//! again, hard links after their targets, the Apptainer layout's entries
//! with their data from memory. Every re-read layer is checked again.

use std::io::{self, Read, Write};

use oci::tar::write::{END, Header, encode, padding};
use oci::tar::{Entry, Kind, keep_xattr};
use oci::tree::{Emission, EntryId, Layer};

use super::ConvertError;
use super::layer::{self, OpenLayer};
use super::source::{LayerBlob, Store};

/// What pass 2 reads from.
pub(crate) struct Inputs<'a> {
    pub store: &'a Store,
    pub blobs: &'a [LayerBlob],
    pub layers: &'a [Layer],
    /// The Apptainer layout as the last layer, and its entries' data.
    pub extra: &'a Layer,
    pub extra_data: &'a [Vec<u8>],
    pub what: &'a str,
}

fn header<'a>(path: &'a [u8], e: &'a Entry, xattrs: &'a [(String, Vec<u8>)]) -> Header<'a> {
    Header {
        path,
        kind: e.kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        size: if e.kind == Kind::File { e.size } else { 0 },
        link: e.link.as_deref().unwrap_or_default(),
        device: e.device,
        xattrs,
    }
}

fn plain<'a>(path: &'a [u8], kind: Kind, link: &'a [u8], mtime: i64) -> Header<'a> {
    Header {
        path,
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0 },
        uid: 0,
        gid: 0,
        mtime,
        size: 0,
        link,
        device: (0, 0),
        xattrs: &[],
    }
}

fn wio(e: io::Error) -> ConvertError {
    ConvertError::io("mksquashfs input", e)
}

impl Inputs<'_> {
    pub(crate) fn entry(&self, id: &EntryId) -> &Entry {
        if id.layer < self.layers.len() {
            &self.layers[id.layer].entries[id.index]
        } else {
            &self.extra.entries[id.index]
        }
    }

    /// Writes the whole stream for `plan` to `out`.
    pub(crate) fn write(&self, plan: &[Emission], out: &mut dyn Write) -> Result<(), ConvertError> {
        let mut open: Option<(usize, OpenLayer)> = None;
        for em in plan {
            match em {
                Emission::Dir { path, .. } if path.is_empty() => {}
                Emission::Dir {
                    path,
                    source: Some(s),
                    ..
                } => {
                    let e = self.entry(s);
                    let x = kept(e);
                    out.write_all(&encode(&header(path, e, &x))).map_err(wio)?;
                }
                Emission::Dir {
                    path,
                    source: None,
                    mtime,
                } => out
                    .write_all(&encode(&plain(path, Kind::Dir, b"", *mtime)))
                    .map_err(wio)?,
                Emission::HardLink { path, target } => out
                    .write_all(&encode(&plain(path, Kind::HardLink, target, 0)))
                    .map_err(wio)?,
                Emission::Node { path, source } => self.node(path, source, &mut open, out)?,
            }
        }
        if let Some((_, l)) = open {
            l.finish()?;
        }
        out.write_all(&END).map_err(wio)
    }

    fn node(
        &self,
        path: &[u8],
        id: &EntryId,
        open: &mut Option<(usize, OpenLayer)>,
        out: &mut dyn Write,
    ) -> Result<(), ConvertError> {
        let e = self.entry(id);
        let x = kept(e);
        out.write_all(&encode(&header(path, e, &x))).map_err(wio)?;
        if e.kind != Kind::File {
            return Ok(());
        }
        if id.layer >= self.layers.len() {
            let data = &self.extra_data[id.index];
            out.write_all(data).map_err(wio)?;
            return pad(out, data.len() as u64);
        }
        // Reopen the layer when the plan moves to another one (or back).
        let reuse = matches!(open, Some((li, l)) if *li == id.layer && l.next_index <= id.index);
        if !reuse {
            if let Some((_, l)) = open.take() {
                l.finish()?;
            }
            *open = Some((
                id.layer,
                layer::open(self.store, &self.blobs[id.layer], self.what)?,
            ));
        }
        let (_, l) = open.as_mut().expect("just opened");
        let mut found = None;
        while l.next_index <= id.index {
            found = l.next()?;
        }
        let found = found.ok_or_else(|| {
            ConvertError::Other(format!(
                "{}: layer {} changed while reading it",
                self.what, id.layer
            ))
        })?;
        if found.size != e.size || found.path != e.path {
            return Err(ConvertError::Other(format!(
                "{}: layer {} changed while reading it",
                self.what, id.layer
            )));
        }
        let copied = copy(&mut (&mut l.tar).take(e.size), out, self.what)?;
        if copied != e.size {
            return Err(ConvertError::Other(format!(
                "{}: layer {}: {} ends early",
                self.what,
                id.layer,
                String::from_utf8_lossy(&e.path)
            )));
        }
        pad(out, e.size)
    }
}

/// Copies `r` to `out`; a read error names the source, a write error
/// mksquashfs's input.
fn copy(r: &mut impl Read, out: &mut dyn Write, what: &str) -> Result<u64, ConvertError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf).map_err(|e| ConvertError::io(what, e))?;
        if got == 0 {
            return Ok(n);
        }
        out.write_all(&buf[..got]).map_err(wio)?;
        n += got as u64;
    }
}

fn kept(e: &Entry) -> Vec<(String, Vec<u8>)> {
    e.xattrs
        .iter()
        .filter(|(k, _)| keep_xattr(k))
        .cloned()
        .collect()
}

fn pad(out: &mut dyn Write, size: u64) -> Result<(), ConvertError> {
    out.write_all(&[0u8; 512][..padding(size)]).map_err(wio)
}
