//! Verifying an image's signatures: every check of sylabs/sif's verifier
//! (see docs/security.md), each failure naming the object and the check.
//!
//! 1. every object except signatures is in an object group;
//! 2. each task (a group, or selected objects) has a signature of the
//!    current format linked to its group;
//! 3. the signature is an OpenPGP cleartext message, or a DSSE envelope
//!    when PEM public keys were given;
//! 4. it verifies against the keyring with an allowed hash (a DSSE
//!    envelope: against one of the public keys);
//! 5. its text is well-formed metadata with allowed digests;
//! 6. the verifying certificate's primary fingerprint is the one the
//!    signature descriptor records;
//! 7. a group's signature covers exactly the group's objects (selected
//!    objects need only be among them);
//! 8. the header, each descriptor and each object's data match the digests.
//!
//! Legacy signatures (SIFHASH, SHA-384 over object data only) are checked
//! only when asked for: they do not cover the header or descriptors.

use std::collections::BTreeSet;

use crate::descriptor::{Descriptor, Link};
use crate::image::{Image, ReadAt};
use crate::integrity::clearsign::{self, ClearsignError, Keyring};
use crate::integrity::metadata::{DigestAlg, ImageMetadata, digest_object};
use crate::types::DataType;

/// What to verify.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Groups to verify; with `objects` empty too, every group.
    pub groups: Vec<u32>,
    /// Objects to verify (each against its group's signatures).
    pub objects: Vec<u32>,
    /// Verify legacy signatures instead (primary partition by default).
    pub legacy: bool,
    /// With `legacy`: every non-signature object.
    pub legacy_all: bool,
}

/// One signature that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The signature object.
    pub signature: u32,
    /// The primary fingerprint of the key that made it (for DSSE, the
    /// identity of the first key that verified it: zero for plain keys).
    pub fingerprint: [u8; 20],
    /// For DSSE, the identities of every key that verified one of the
    /// envelope's signatures ([`crate::integrity::dsse::PublicKey::id`]);
    /// for OpenPGP, `fingerprint` alone.
    pub fingerprints: Vec<[u8; 20]>,
    /// The key's first user ID (for DSSE, the keys' names).
    pub signer: String,
    /// Objects whose integrity it established.
    pub objects: Vec<u32>,
    /// Whether it is a legacy (SIFHASH) signature.
    pub legacy: bool,
}

/// A failed check.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    /// The image could not be read.
    Sif(#[from] crate::Error),
    #[error(
        "object {id} is in no object group: every object but signatures must be signed within a group"
    )]
    /// An object other than a signature is in no group.
    NotGrouped {
        /// The signature object.
        id: u32,
    },
    #[error("{task}: no {kind}signature found")]
    /// A task has no signature of the kind verified.
    SignatureNotFound {
        /// What was to be verified (a group or objects).
        task: String,
        /// "legacy " for legacy signatures, else empty.
        kind: &'static str,
    },
    #[error("no object group {0}")]
    /// The image has no group with this ID.
    NoSuchGroup(u32),
    #[error("the image has no object groups: there is nothing to verify")]
    /// The image has no object groups: nothing could be verified.
    NoGroups,
    #[error("signature object {id}: {source}")]
    /// A signature did not verify cryptographically.
    NotValid {
        /// The signature object.
        id: u32,
        #[source]
        /// Why it did not verify.
        source: ClearsignError,
    },
    #[error("signature object {id}: {reason}")]
    /// A signature or its signed metadata is malformed.
    Malformed {
        /// The signature object.
        id: u32,
        /// What is wrong with it.
        reason: String,
    },
    #[error("signature object {id}: made by key {actual}, but its descriptor names {expected}")]
    /// The key that made a signature is not the one its descriptor names.
    FingerprintMismatch {
        /// The signature object.
        id: u32,
        /// The fingerprint the descriptor names.
        expected: String,
        /// The fingerprint of the key that made the signature.
        actual: String,
    },
    #[error("signature object {id}: object {object} is in the signed group but was not signed")]
    /// An object of the signed group is not covered by the signature.
    ObjectNotSigned {
        /// The signature object.
        id: u32,
        /// The object ID.
        object: u32,
    },
    #[error("signature object {id}: it signs object {object}, which the image does not have")]
    /// The signature covers an object the image does not have.
    SignedObjectMissing {
        /// The signature object.
        id: u32,
        /// The object ID.
        object: u32,
    },
    #[error(
        "signature object {id}: the image header (launch script, magic, version or ID) changed since signing"
    )]
    /// The header changed since signing.
    HeaderIntegrity {
        /// The signature object.
        id: u32,
    },
    #[error("signature object {id}: the descriptor of object {object} changed since signing")]
    /// A descriptor changed since signing.
    DescriptorIntegrity {
        /// The signature object.
        id: u32,
        /// The object ID.
        object: u32,
    },
    #[error("signature object {id}: the data of object {object} changed since signing")]
    /// An object's data changed since signing.
    ObjectIntegrity {
        /// The signature object.
        id: u32,
        /// The object ID.
        object: u32,
    },
}

impl VerifyError {
    /// Whether this is a signature that did not verify cryptographically
    /// (an unknown key, say) rather than a broken image.
    pub fn is_not_valid(&self) -> bool {
        matches!(self, VerifyError::NotValid { .. })
    }
}

/// Hex of a fingerprint, upper case as OpenPGP tools print it.
pub fn fingerprint_hex(fp: &[u8; 20]) -> String {
    fp.iter().map(|b| format!("{b:02X}")).collect()
}

const LEGACY_PREFIX: &[u8] = b"SIFHASH:\n";

/// The largest signature object read: metadata for tens of thousands of
/// objects plus several signatures fits easily.
pub(crate) const MAX_SIGNATURE_SIZE: u64 = 16 << 20;

/// Checks every signature of a task: all must pass, except that
/// `on_invalid` may excuse one that did not verify cryptographically.
fn each_signature(
    sigs: &[&Descriptor],
    on_invalid: &mut impl FnMut(&VerifyError, Option<[u8; 20]>) -> bool,
    out: &mut Vec<SignatureCheck>,
    mut check: impl FnMut(&Descriptor) -> Result<SignatureCheck, VerifyError>,
) -> Result<(), VerifyError> {
    for sig in sigs {
        match check(sig) {
            Ok(c) => out.push(c),
            Err(e) => {
                let fp = sig.signature().ok().and_then(|s| s.fingerprint);
                if !(e.is_not_valid() && on_invalid(&e, fp)) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The verifier over an opened image.
pub struct Verifier<'a, R> {
    image: &'a Image<R>,
    keyring: &'a Keyring,
    dsse_keys: &'a [crate::integrity::dsse::PublicKey],
}

enum Task {
    Group(u32),
    Objects(u32, Vec<u32>),
}

impl<'a, R: ReadAt> Verifier<'a, R> {
    /// A verifier of `image` against the OpenPGP certificates in `keyring`.
    pub fn new(image: &'a Image<R>, keyring: &'a Keyring) -> Self {
        Verifier {
            image,
            keyring,
            dsse_keys: &[],
        }
    }

    /// Also verifies DSSE envelopes, against these public keys.
    pub fn with_dsse_keys(mut self, keys: &'a [crate::integrity::dsse::PublicKey]) -> Self {
        self.dsse_keys = keys;
        self
    }

    /// Runs every check; `on_invalid` may excuse a signature that failed
    /// cryptographically (return true to go on; the ECL does, to count only
    /// signatures that verified). Returns the signatures that verified.
    pub fn verify(
        &self,
        opts: &VerifyOptions,
        mut on_invalid: impl FnMut(&VerifyError, Option<[u8; 20]>) -> bool,
    ) -> Result<Vec<SignatureCheck>, VerifyError> {
        let img = self.image;
        for d in img.descriptors() {
            if d.data_type() != DataType::SIGNATURE && d.group_id() == 0 {
                return Err(VerifyError::NotGrouped { id: d.id() });
            }
        }
        if opts.legacy {
            return self.verify_legacy(opts, &mut on_invalid);
        }
        let mut tasks = Vec::new();
        for g in &opts.groups {
            if !img.group_ids().contains(g) {
                return Err(VerifyError::NoSuchGroup(*g));
            }
            tasks.push(Task::Group(*g));
        }
        for id in &opts.objects {
            let d = img.descriptor(*id)?;
            let g = d.group_id();
            match tasks
                .iter_mut()
                .find(|t| matches!(t, Task::Objects(tg, _) if *tg == g))
            {
                Some(Task::Objects(_, ids)) => ids.push(*id),
                _ => tasks.push(Task::Objects(g, vec![*id])),
            }
        }
        if tasks.is_empty() {
            tasks = img.group_ids().into_iter().map(Task::Group).collect();
        }
        // Nothing checked is not "verified" (sylabs/sif: errNoGroupsFound).
        if tasks.is_empty() {
            return Err(VerifyError::NoGroups);
        }
        let mut out = Vec::new();
        for task in tasks {
            let (group, name) = match &task {
                Task::Group(g) => (*g, format!("object group {g}")),
                Task::Objects(g, ids) => (*g, format!("object(s) {ids:?} (group {g})")),
            };
            let sigs: Vec<&Descriptor> = self
                .signatures_linked(Link::Group(group))
                .into_iter()
                .filter(|s| !self.is_legacy(s))
                .collect();
            if sigs.is_empty() {
                return Err(VerifyError::SignatureNotFound {
                    task: name,
                    kind: "",
                });
            }
            each_signature(&sigs, &mut on_invalid, &mut out, |sig| {
                self.check_signature(sig, group, &task)
            })?;
        }
        Ok(out)
    }

    fn signatures_linked(&self, link: Link) -> Vec<&'a Descriptor> {
        self.image
            .descriptors()
            .iter()
            .filter(|d| d.data_type() == DataType::SIGNATURE && d.link() == link)
            .collect()
    }

    fn is_legacy(&self, sig: &Descriptor) -> bool {
        if sig.size() > MAX_SIGNATURE_SIZE {
            return false;
        }
        self.image
            .read_object(sig)
            .ok()
            .and_then(|data| clearsign::plaintext_unverified(&data))
            .is_some_and(|p| p.starts_with(LEGACY_PREFIX))
    }

    /// Steps 3 and 4 and 6: the signature verifies, by the named key.
    /// Returns also every identity that verified it.
    fn crypto(
        &self,
        sig: &Descriptor,
    ) -> Result<(clearsign::Verified, Vec<[u8; 20]>), VerifyError> {
        let id = sig.id();
        if sig.size() > MAX_SIGNATURE_SIZE {
            return Err(VerifyError::Malformed {
                id,
                reason: format!(
                    "{} bytes, more than a signature can need ({MAX_SIGNATURE_SIZE})",
                    sig.size()
                ),
            });
        }
        let data = self.image.read_object(sig)?;
        if crate::integrity::dsse::looks_like_envelope(&data) {
            if self.dsse_keys.is_empty() {
                return Err(VerifyError::Malformed {
                    id,
                    reason: "a DSSE envelope; verify it with --key PUBLIC.pem".into(),
                });
            }
            let v = crate::integrity::dsse::verify(&data, self.dsse_keys).map_err(|e| {
                VerifyError::NotValid {
                    id,
                    source: ClearsignError::Invalid(format!("DSSE: {e}")),
                }
            })?;
            // DSSE signature descriptors carry no fingerprint to bind.
            let keys: Vec<&crate::integrity::dsse::PublicKey> =
                v.keys.iter().map(|i| &self.dsse_keys[*i]).collect();
            let mut names: Vec<&str> = keys.iter().map(|k| k.name()).collect();
            names.dedup();
            return Ok((
                clearsign::Verified {
                    plaintext: v.payload,
                    fingerprint: keys.first().map_or([0; 20], |k| k.id()),
                    signer: names.join(", "),
                },
                keys.iter().map(|k| k.id()).collect(),
            ));
        }
        let v = clearsign::verify(&data, self.keyring)
            .map_err(|source| VerifyError::NotValid { id, source })?;
        let recorded = sig.signature()?.fingerprint;
        if recorded != Some(v.fingerprint) {
            return Err(VerifyError::FingerprintMismatch {
                id,
                expected: recorded.map_or("no key".into(), |f| fingerprint_hex(&f)),
                actual: fingerprint_hex(&v.fingerprint),
            });
        }
        let fps = vec![v.fingerprint];
        Ok((v, fps))
    }

    fn check_signature(
        &self,
        sig: &Descriptor,
        group: u32,
        task: &Task,
    ) -> Result<SignatureCheck, VerifyError> {
        let id = sig.id();
        let (v, fingerprints) = self.crypto(sig)?;
        let meta = ImageMetadata::from_json(&v.plaintext).map_err(|e| VerifyError::Malformed {
            id,
            reason: e.to_string(),
        })?;
        let members: Vec<&Descriptor> = self
            .image
            .descriptors()
            .iter()
            .filter(|d| d.group_id() == group)
            .collect();
        let min_id = members.iter().map(|d| d.id()).min().unwrap_or(0);
        let mut signed: BTreeSet<u32> = BTreeSet::new();
        for o in &meta.objects {
            let object = min_id
                .checked_add(o.relative_id)
                .ok_or(VerifyError::Malformed {
                    id,
                    reason: format!("relative ID {} out of range", o.relative_id),
                })?;
            if !members.iter().any(|d| d.id() == object) {
                return Err(VerifyError::SignedObjectMissing { id, object });
            }
            if !signed.insert(object) {
                return Err(VerifyError::Malformed {
                    id,
                    reason: format!("object {object} is listed twice"),
                });
            }
        }
        let wanted: Vec<u32> = match task {
            Task::Group(_) => {
                for d in &members {
                    if !signed.contains(&d.id()) {
                        return Err(VerifyError::ObjectNotSigned { id, object: d.id() });
                    }
                }
                signed.iter().copied().collect()
            }
            Task::Objects(_, ids) => {
                for o in ids {
                    if !signed.contains(o) {
                        return Err(VerifyError::ObjectNotSigned { id, object: *o });
                    }
                }
                ids.clone()
            }
        };
        if meta
            .header_digest
            .alg
            .digest(&self.image.header().integrity_bytes())
            != meta.header_digest
        {
            return Err(VerifyError::HeaderIntegrity { id });
        }
        for o in &meta.objects {
            let object = min_id + o.relative_id;
            if !wanted.contains(&object) {
                continue;
            }
            let d = self.image.descriptor(object)?;
            let alg = o.descriptor_digest.alg;
            if alg.digest(&d.integrity_bytes()) != o.descriptor_digest {
                return Err(VerifyError::DescriptorIntegrity { id, object });
            }
            if digest_object(self.image, d, o.object_digest.alg)? != o.object_digest {
                return Err(VerifyError::ObjectIntegrity { id, object });
            }
        }
        Ok(SignatureCheck {
            signature: id,
            fingerprint: v.fingerprint,
            fingerprints,
            signer: v.signer,
            objects: wanted,
            legacy: false,
        })
    }

    fn verify_legacy(
        &self,
        opts: &VerifyOptions,
        on_invalid: &mut impl FnMut(&VerifyError, Option<[u8; 20]>) -> bool,
    ) -> Result<Vec<SignatureCheck>, VerifyError> {
        let img = self.image;
        // (link, objects whose data is digested, task name)
        let mut tasks: Vec<(Link, Vec<u32>, String)> = Vec::new();
        for g in &opts.groups {
            let ids: Vec<u32> = img
                .descriptors()
                .iter()
                .filter(|d| d.group_id() == *g && d.data_type() != DataType::SIGNATURE)
                .map(|d| d.id())
                .collect();
            if ids.is_empty() {
                return Err(VerifyError::NoSuchGroup(*g));
            }
            tasks.push((Link::Group(*g), ids, format!("object group {g}")));
        }
        let mut objects = opts.objects.clone();
        if opts.legacy_all {
            objects.extend(
                img.descriptors()
                    .iter()
                    .filter(|d| d.data_type() != DataType::SIGNATURE)
                    .map(|d| d.id()),
            );
        }
        if tasks.is_empty() && objects.is_empty() {
            objects.push(img.primary_partition()?.id());
        }
        for id in objects {
            img.descriptor(id)?;
            tasks.push((Link::Object(id), vec![id], format!("object {id}")));
        }
        let mut out = Vec::new();
        for (link, ids, name) in tasks {
            let sigs: Vec<&Descriptor> = self
                .signatures_linked(link)
                .into_iter()
                .filter(|s| self.is_legacy(s))
                .collect();
            if sigs.is_empty() {
                return Err(VerifyError::SignatureNotFound {
                    task: name,
                    kind: "legacy ",
                });
            }
            each_signature(&sigs, on_invalid, &mut out, |sig| {
                self.check_legacy(sig, &ids)
            })?;
        }
        Ok(out)
    }

    fn check_legacy(&self, sig: &Descriptor, ids: &[u32]) -> Result<SignatureCheck, VerifyError> {
        let id = sig.id();
        let (v, fingerprints) = self.crypto(sig)?;
        let text = String::from_utf8_lossy(&v.plaintext);
        let want = text
            .strip_prefix("SIFHASH:")
            .map(|rest| rest.trim())
            .filter(|h| h.len() == 96 && h.bytes().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| VerifyError::Malformed {
                id,
                reason: "not a SIFHASH legacy digest".into(),
            })?
            .to_ascii_lowercase();
        let mut h = DigestAlg::Sha384.hasher();
        let mut buf = vec![0u8; 1 << 20];
        for object in ids {
            let d = self.image.descriptor(*object)?;
            let mut at = 0;
            while at < d.size() {
                let n = (d.size() - at).min(buf.len() as u64) as usize;
                self.image.read_object_at(d, &mut buf[..n], at)?;
                h.update(&buf[..n]);
                at += n as u64;
            }
        }
        let got: String = h
            .finish()
            .value
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != want {
            return Err(VerifyError::ObjectIntegrity { id, object: ids[0] });
        }
        Ok(SignatureCheck {
            signature: id,
            fingerprint: v.fingerprint,
            fingerprints,
            signer: v.signer,
            objects: ids.to_vec(),
            legacy: true,
        })
    }
}
