//! Reading one layer: blob → digest check → decompressor → `diff_id`
//! check → tar entries, streaming (nothing of the layer is kept but the
//! headers of pass 1 and the entry being copied in pass 2).

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use oci::digest::Verifier;
use oci::media::{self, Compression};
use oci::tar::{Entry, Reader};
use oci::tree::Layer;

use super::ConvertError;
use super::source::{LayerBlob, Store};

/// A reader shared between the decompressor and the code that drains and
/// checks it once the layer ends.
struct Shared<R>(Rc<RefCell<R>>);

impl<R: Read> Read for Shared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

type Blob = Verifier<BufReader<Box<dyn Read>>>;

/// An open layer: its tar entries, with both digests checked by
/// [`OpenLayer::finish`].
pub(crate) struct OpenLayer {
    blob: Rc<RefCell<Blob>>,
    pub tar: Reader<Verifier<Box<dyn Read>>>,
    what: String,
    /// Index of the entry `next` returns.
    pub next_index: usize,
}

/// Opens layer `blob` in `store`.
pub(crate) fn open(store: &Store, blob: &LayerBlob, what: &str) -> Result<OpenLayer, ConvertError> {
    let raw = store.member(&blob.member, &format!("{what}: layer {}", blob.member))?;
    open_raw(raw, blob, what)
}

/// Opens layer `blob` from `raw`, its compressed bytes.
pub(crate) fn open_raw(
    raw: Box<dyn Read>,
    blob: &LayerBlob,
    what: &str,
) -> Result<OpenLayer, ConvertError> {
    let what = format!("{what}: layer {}", blob.member);
    let verifier = Verifier::new(
        BufReader::with_capacity(1 << 17, raw),
        what.clone(),
        u64::MAX,
    )
    .expect(blob.size, blob.digest.clone());
    let mut buffered = BufReader::with_capacity(1 << 17, verifier);
    let compression = match blob.compression {
        Some(c) => c,
        None => media::sniff(
            buffered
                .fill_buf()
                .map_err(|e| ConvertError::io(&what, e))?,
        ),
    };
    // The BufReader keeps what it read ahead: hand the buffered reader on.
    let (inner, pending) = {
        let pending = buffered.buffer().to_vec();
        (buffered.into_inner(), pending)
    };
    let blob_rc = Rc::new(RefCell::new(inner));
    let stream = io::Cursor::new(pending).chain(Shared(blob_rc.clone()));
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(stream).map_err(|e| ConvertError::io(&what, e))?,
        ),
    };
    let diff = Verifier::new(decoded, format!("{what} (uncompressed)"), u64::MAX)
        .expect(None, Some(blob.diff_id.clone()));
    Ok(OpenLayer {
        blob: blob_rc,
        tar: Reader::new(diff),
        what,
        next_index: 0,
    })
}

impl OpenLayer {
    /// The next entry's header.
    pub(crate) fn next(&mut self) -> Result<Option<Entry>, ConvertError> {
        let e = match self.tar.next_entry() {
            Ok(e) => e,
            Err(error) => return Err(self.blame(error)),
        };
        self.next_index += 1;
        Ok(e)
    }

    /// The error to report for a broken tar stream: the blob's digest
    /// mismatch when the blob is not what the manifest names (a corrupt
    /// blob usually breaks the decompressor first), else the tar error.
    fn blame(&mut self, error: oci::tar::TarError) -> ConvertError {
        if let Ok(mut blob) = self.blob.try_borrow_mut()
            && let Err(e) = io::copy(&mut *blob, &mut io::sink())
            && oci::digest::VerifyError::from_io(&e).is_some()
        {
            return ConvertError::io(&self.what, e);
        }
        ConvertError::Tar {
            what: self.what.clone(),
            error,
        }
    }

    /// Reads the rest of the layer and checks the `diff_id`, the blob's
    /// size and its digest.
    pub(crate) fn finish(self) -> Result<(), ConvertError> {
        let what = self.what;
        let io = |e| ConvertError::io(&what, e);
        self.tar.into_inner().finish().map_err(io)?;
        let blob = Rc::try_unwrap(self.blob)
            .map_err(|_| ConvertError::Other(format!("{what}: decompressor still holds the blob")))?
            .into_inner();
        blob.finish().map_err(io)?;
        Ok(())
    }
}

/// Pass 1: the headers of every entry of a layer, both digests checked.
pub(crate) fn headers(store: &Store, blob: &LayerBlob, what: &str) -> Result<Layer, ConvertError> {
    headers_of(open(store, blob, what)?, blob)
}

/// [`headers`] of a layer read from `raw`, its compressed bytes.
#[cfg(feature = "registry")]
pub(crate) fn headers_raw(
    raw: Box<dyn Read>,
    blob: &LayerBlob,
    what: &str,
) -> Result<Layer, ConvertError> {
    headers_of(open_raw(raw, blob, what)?, blob)
}

fn headers_of(mut l: OpenLayer, blob: &LayerBlob) -> Result<Layer, ConvertError> {
    let mut entries = Vec::new();
    while let Some(e) = l.next()? {
        entries.push(e);
    }
    l.finish()?;
    Ok(Layer {
        name: blob.diff_id.to_string(),
        entries,
    })
}
