//! DSSE envelopes (sylabs/sif's alternative signature format): the metadata
//! JSON as the base64 payload of an in-toto DSSE envelope, signed with
//! plain public keys (ed25519, RSA PKCS#1 v1.5 with SHA-256, ECDSA with
//! SHA-256), verified here by OpenSSL against PEM public keys or the keys
//! of X.509 certificates (see [`crate::integrity::certificate`]), and made
//! with PEM private keys.

use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::sign::{Signer, Verifier};

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

/// A public key for DSSE signatures, with the identity that a signature it
/// verifies is reported under.
#[derive(Clone)]
pub struct PublicKey {
    key: PKey<Public>,
    id: [u8; 20],
    name: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({:?}, {:?})", self.key.id(), self.name)
    }
}

fn supported(key: PKey<Public>) -> Result<PublicKey, DsseError> {
    match key.id() {
        Id::ED25519 | Id::RSA | Id::EC => Ok(PublicKey {
            key,
            id: [0; 20],
            name: "a DSSE key given with --key".into(),
        }),
        other => Err(DsseError::Key(format!("unsupported key type {other:?}"))),
    }
}

impl PublicKey {
    /// Reads a PEM public key (ed25519, RSA or ECDSA).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, DsseError> {
        let key = PKey::public_key_from_pem(pem)
            .map_err(|e| DsseError::Key(format!("not a PEM public key: {e}")))?;
        supported(key)
    }

    /// The public key of a certificate (validate the certificate first:
    /// [`crate::integrity::certificate::validate`]); reported as its
    /// subject.
    pub fn from_certificate(cert: &openssl::x509::X509Ref) -> Result<PublicKey, DsseError> {
        let key = cert
            .public_key()
            .map_err(|e| DsseError::Key(format!("the certificate's public key: {e}")))?;
        let owned = cert.to_owned();
        Ok(supported(key)?.named(
            [0; 20],
            format!(
                "certificate {}",
                crate::integrity::certificate::subject(&owned)
            ),
        ))
    }

    /// The same key reported as `name`, with `id` as the fingerprint of
    /// the signatures it verifies (zero: none).
    pub fn named(mut self, id: [u8; 20], name: String) -> PublicKey {
        self.id = id;
        self.name = name;
        self
    }

    /// The identity signatures it verifies are reported with.
    pub fn id(&self) -> [u8; 20] {
        self.id
    }

    /// The name signatures it verifies are reported with.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        let k = &self.key;
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

/// An envelope that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The payload.
    pub payload: Vec<u8>,
    /// The indices (in the keys given) of every key that verified one of
    /// its signatures, ascending.
    pub keys: Vec<usize>,
}

/// Verifies an envelope; returns its payload and the keys that verified
/// when at least one signature verifies with one of `keys`.
pub fn verify(envelope: &[u8], keys: &[PublicKey]) -> Result<Verified, DsseError> {
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
    let mut verified: Vec<usize> = Vec::new();
    for s in sigs {
        let Some(sig) = s.get("sig").and_then(|x| x.as_str()) else {
            continue;
        };
        let Ok(sig) = b64(sig) else { continue };
        for (i, k) in keys.iter().enumerate() {
            if !verified.contains(&i) && k.verifies(&message, &sig) {
                verified.push(i);
            }
        }
    }
    if verified.is_empty() {
        return Err(DsseError::NoValidSignature);
    }
    verified.sort_unstable();
    Ok(Verified {
        payload,
        keys: verified,
    })
}

/// A private key that makes DSSE signatures (ed25519; RSA PKCS#1 v1.5
/// and ECDSA with SHA-256), as sylabs/sif's DSSE signer.
pub struct PrivateKey(PKey<Private>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?})", self.0.id())
    }
}

impl PrivateKey {
    /// Reads an unencrypted PEM private key (PKCS#8, or PKCS#1 RSA / SEC1
    /// EC).
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, DsseError> {
        let key = PKey::private_key_from_pem(pem)
            .map_err(|e| DsseError::Key(format!("not an unencrypted PEM private key: {e}")))?;
        match key.id() {
            Id::ED25519 | Id::RSA | Id::EC => Ok(PrivateKey(key)),
            other => Err(DsseError::Key(format!("unsupported key type {other:?}"))),
        }
    }

    /// Whether `data` looks like a PEM private key rather than OpenPGP.
    pub fn is_pem(data: &[u8]) -> bool {
        let first = data.trim_ascii_start().split(|b| *b == b'\n').next();
        first.is_some_and(|l| {
            let l = l.trim_ascii_end();
            l.starts_with(b"-----BEGIN ") && l.ends_with(b"PRIVATE KEY-----")
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DsseError> {
        let k = &self.0;
        let err = |e: openssl::error::ErrorStack| DsseError::Key(format!("signing: {e}"));
        if k.id() == Id::ED25519 {
            let mut s = Signer::new_without_digest(k).map_err(err)?;
            return s.sign_oneshot_to_vec(message).map_err(err);
        }
        let mut s = Signer::new(MessageDigest::sha256(), k).map_err(err)?;
        s.update(message).map_err(err)?;
        s.sign_to_vec().map_err(err)
    }

    /// An envelope over `payload` signed with this key.
    pub fn envelope(&self, payload: &[u8]) -> Result<Vec<u8>, DsseError> {
        let sig = self.sign(&pae(PAYLOAD_TYPE, payload))?;
        let v = serde_json::json!({
            "payloadType": PAYLOAD_TYPE,
            "payload": openssl::base64::encode_block(payload),
            "signatures": [{ "keyid": "", "sig": openssl::base64::encode_block(&sig) }],
        });
        Ok(v.to_string().into_bytes())
    }
}

/// Whether an object holds a DSSE envelope rather than an OpenPGP message.
pub(crate) fn looks_like_envelope(data: &[u8]) -> bool {
    data.trim_ascii_start().starts_with(b"{")
}
