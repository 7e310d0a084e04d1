//! DSSE envelopes (sylabs/sif's alternative signature format): the metadata
//! JSON as the base64 payload of an in-toto DSSE envelope, signed with
//! plain public keys (ed25519, RSA PKCS#1 v1.5 with SHA-256, ECDSA with
//! SHA-256), verified here by OpenSSL against PEM public keys.

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;

/// The payload type sylabs/sif signs.
pub(crate) const PAYLOAD_TYPE: &str = "application/vnd.sylabs.sif-metadata+json";

/// Why an envelope did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsseError {
    #[error("not a DSSE envelope: {0}")]
    /// Not a DSSE envelope, or not a public key (why).
    Format(String),
    #[error("payload type {0:?} is not {PAYLOAD_TYPE}")]
    /// The envelope carries another payload type (which).
    PayloadType(String),
    #[error("no signature in the envelope verifies with the given key(s)")]
    /// No signature verifies with any of the keys.
    NoValidSignature,
    #[error("{0}")]
    /// The key cannot be used (why).
    Key(String),
}

/// A public key for DSSE signatures.
#[derive(Clone)]
pub struct PublicKey(PKey<Public>);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?})", self.0.id())
    }
}

impl PublicKey {
    /// Reads a PEM public key (ed25519, RSA or ECDSA).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, DsseError> {
        let key = PKey::public_key_from_pem(pem)
            .map_err(|e| DsseError::Key(format!("not a PEM public key: {e}")))?;
        match key.id() {
            Id::ED25519 | Id::RSA | Id::EC => Ok(PublicKey(key)),
            other => Err(DsseError::Key(format!("unsupported key type {other:?}"))),
        }
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let k = &self.0;
        let verifier = match k.id() {
            Id::ED25519 => Verifier::new_without_digest(k),
            _ => Verifier::new(MessageDigest::sha256(), k),
        };
        let Ok(mut v) = verifier else { return false };
        if k.id() == Id::ED25519 {
            return v.verify_oneshot(sig, message).unwrap_or(false);
        }
        v.update(message).is_ok() && v.verify(sig).unwrap_or(false)
    }
}

/// DSSE's pre-authentication encoding of a payload.
pub(crate) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn b64(s: &str) -> Result<Vec<u8>, DsseError> {
    openssl::base64::decode_block(s.trim()).map_err(|_| DsseError::Format("bad base64".into()))
}

/// Verifies an envelope; returns its payload when at least one signature
/// verifies with one of `keys`.
pub fn verify(envelope: &[u8], keys: &[PublicKey]) -> Result<Vec<u8>, DsseError> {
    let v: serde_json::Value =
        serde_json::from_slice(envelope).map_err(|e| DsseError::Format(e.to_string()))?;
    let ptype = v
        .get("payloadType")
        .and_then(|p| p.as_str())
        .ok_or_else(|| DsseError::Format("no payloadType".into()))?;
    if ptype != PAYLOAD_TYPE {
        return Err(DsseError::PayloadType(ptype.to_owned()));
    }
    let payload = b64(v
        .get("payload")
        .and_then(|p| p.as_str())
        .ok_or_else(|| DsseError::Format("no payload".into()))?)?;
    let sigs = v
        .get("signatures")
        .and_then(|s| s.as_array())
        .ok_or_else(|| DsseError::Format("no signatures".into()))?;
    let message = pae(ptype, &payload);
    for s in sigs {
        let Some(sig) = s.get("sig").and_then(|x| x.as_str()) else {
            continue;
        };
        let Ok(sig) = b64(sig) else { continue };
        if keys.iter().any(|k| k.verifies(&message, &sig)) {
            return Ok(payload);
        }
    }
    Err(DsseError::NoValidSignature)
}

/// Whether an object holds a DSSE envelope rather than an OpenPGP message.
pub(crate) fn looks_like_envelope(data: &[u8]) -> bool {
    data.trim_ascii_start().starts_with(b"{")
}
