//! Signing an image in the SIF v2 format, as Apptainer does: per object
//! group, the image metadata JSON over the canonical header, descriptor and
//! object bytes, cleartext-signed, stored as a signature object outside any
//! group, linked to the signed group, with the hash type and the signer's
//! primary key fingerprint in its descriptor.

use std::fs::File;

use sequoia_openpgp::types::HashAlgorithm;

use crate::descriptor::{Descriptor, Link};
use crate::image::Image;
use crate::integrity::clearsign::{ClearsignError, SigningKey};
use crate::integrity::dsse::{DsseError, PrivateKey};
use crate::integrity::metadata::{DigestAlg, ImageMetadata};
use crate::types::{DataType, HashType};
use crate::write::{Metadata, ObjectInput};

/// What to sign.
#[derive(Clone, Debug, Default)]
pub struct SignOptions {
    /// Groups to sign; with `objects` empty too, every group.
    pub groups: Vec<u32>,
    /// Objects to sign: one signature per group they belong to, covering
    /// only them.
    pub objects: Vec<u32>,
    /// Time of the signing: the creation time of the signature objects and
    /// the image's new modification time; `None` for now. Unlike sylabs/sif,
    /// whose signer leaves an image with unset times unset, `None` always
    /// records the modification; pass [`crate::header::ZERO_TIME`] to keep
    /// such an image reproducible.
    pub time: Option<i64>,
}

/// Why an image could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    /// The image could not be read or written.
    Sif(#[from] crate::Error),
    #[error("{0}")]
    /// The key could not sign.
    Key(#[from] ClearsignError),
    #[error("{0}")]
    /// The DSSE key could not sign.
    Dsse(#[from] DsseError),
    #[error("object {0} is in no object group; only grouped objects can be signed")]
    /// The object (this ID) is in no group.
    NotGrouped(u32),
    #[error("no object group {0}")]
    /// The image has no group with this ID.
    NoSuchGroup(u32),
    #[error("the image has no object groups to sign")]
    /// The image has no object groups.
    NothingToSign,
    #[error("the key is not an OpenPGP v4 key (SIF descriptors hold 20-byte fingerprints)")]
    /// The key is not an OpenPGP v4 key.
    NotV4,
}

/// Signs `image` (opened for writing); returns the new signature object IDs.
pub fn sign(
    image: &mut Image<File>,
    key: &SigningKey,
    passphrase: Option<&str>,
    opts: &SignOptions,
) -> Result<Vec<u32>, SignError> {
    let fingerprint = key.fingerprint().ok_or(SignError::NotV4)?;
    sign_with(image, opts, fingerprint.to_vec(), |json| {
        Ok(key.sign(json, HashAlgorithm::SHA256, passphrase)?)
    })
}

/// Signs `image` with DSSE envelopes (sylabs/sif's DSSE signer): the same
/// objects as [`sign`], descriptors with no fingerprint.
pub fn sign_dsse(
    image: &mut Image<File>,
    key: &PrivateKey,
    opts: &SignOptions,
) -> Result<Vec<u32>, SignError> {
    sign_with(image, opts, vec![0; 20], |json| Ok(key.envelope(json)?))
}

fn sign_with(
    image: &mut Image<File>,
    opts: &SignOptions,
    fingerprint: Vec<u8>,
    encode: impl Fn(&[u8]) -> Result<Vec<u8>, SignError>,
) -> Result<Vec<u32>, SignError> {
    // (group, objects covered)
    let mut tasks: Vec<(u32, Vec<u32>)> = Vec::new();
    for g in &opts.groups {
        if !image.group_ids().contains(g) {
            return Err(SignError::NoSuchGroup(*g));
        }
        tasks.push((*g, members(image, *g)));
    }
    for id in &opts.objects {
        let g = image.descriptor(*id)?.group_id();
        if g == 0 {
            return Err(SignError::NotGrouped(*id));
        }
        match tasks.iter_mut().find(|(tg, _)| *tg == g) {
            Some((_, ids)) if !ids.contains(id) => ids.push(*id),
            Some(_) => {}
            None => tasks.push((g, vec![*id])),
        }
    }
    if tasks.is_empty() {
        tasks = image
            .group_ids()
            .into_iter()
            .map(|g| (g, members(image, g)))
            .collect();
    }
    if tasks.is_empty() {
        return Err(SignError::NothingToSign);
    }
    let time = opts.time.unwrap_or_else(crate::write::now);
    let mut signatures = Vec::new();
    for (group, ids) in tasks {
        let objects: Vec<&Descriptor> = ids
            .iter()
            .map(|id| image.descriptor(*id))
            .collect::<crate::Result<_>>()?;
        let json = ImageMetadata::compute(image, &objects, DigestAlg::Sha256)?.to_json();
        let signed = encode(json.as_bytes())?;
        let mut data: &[u8] = &signed;
        let mut input =
            ObjectInput::new(DataType::SIGNATURE, &mut data).with_metadata(Metadata::Signature {
                hash_type: HashType::SHA256,
                fingerprint: fingerprint.clone(),
            });
        input.group = None;
        input.link = Link::Group(group);
        signatures.push(image.add_object(input, Some(time))?);
    }
    Ok(signatures)
}

fn members(image: &Image<File>, group: u32) -> Vec<u32> {
    image
        .descriptors()
        .iter()
        .filter(|d| d.group_id() == group)
        .map(|d| d.id())
        .collect()
}
