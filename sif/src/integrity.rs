//! The canonical bytes that SIF signatures digest (sylabs/sif `pkg/integrity`).
//!
//! A signature's metadata records, per signed object, a digest of the 557-byte
//! descriptor view (with the object ID made relative to its group) and of the
//! object data, plus one digest of the 61-byte header view.

#[cfg(feature = "integrity")]
pub mod certificate;
#[cfg(feature = "integrity")]
pub mod clearsign;
#[cfg(feature = "integrity")]
pub mod dsse;
pub mod metadata;
#[cfg(feature = "integrity")]
mod packets;
#[cfg(feature = "integrity")]
pub mod sign;
#[cfg(feature = "integrity")]
pub mod verify;

use crate::descriptor::Descriptor;
use crate::header::Header;

/// The 61-byte header view: launch script, magic, version and image ID.
pub fn header_bytes(h: &Header) -> [u8; 61] {
    h.integrity_bytes()
}

/// The 557-byte descriptor view of `d`.
pub fn descriptor_bytes(d: &Descriptor) -> [u8; 557] {
    d.integrity_bytes()
}

pub use metadata::digest_object;
