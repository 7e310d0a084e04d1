//! The canonical bytes that SIF signatures digest (sylabs/sif `pkg/integrity`).
//!
//! A signature's metadata records, per signed object, a digest of the 557-byte
//! descriptor view (with the object ID made relative to its group) and of the
//! object data, plus one digest of the 61-byte header view.

use sha2::Digest;

use crate::descriptor::Descriptor;
use crate::error::Result;
use crate::header::Header;
use crate::image::{Image, ReadAt};

/// The 61-byte header view: launch script, magic, version and image ID.
pub fn header_bytes(h: &Header) -> [u8; 61] {
    h.integrity_bytes()
}

/// The 557-byte descriptor view of `d`.
pub fn descriptor_bytes(d: &Descriptor) -> [u8; 557] {
    d.integrity_bytes()
}

/// Digests object `d`'s data with hash `H`, reading it in 1 MiB positional reads.
pub fn digest_object<H: Digest, R: ReadAt>(image: &Image<R>, d: &Descriptor) -> Result<Vec<u8>> {
    let mut hasher = H::new();
    let mut buf = vec![0u8; (1 << 20).min(d.size() as usize).max(1)];
    let mut at = 0u64;
    while at < d.size() {
        let n = (d.size() - at).min(buf.len() as u64) as usize;
        image.read_object_at(d, &mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finalize().to_vec())
}
