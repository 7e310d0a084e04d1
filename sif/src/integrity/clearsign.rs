//! OpenPGP cleartext signatures (RFC 9580 §7), as SIF signature objects
//! carry them, by sequoia-openpgp.
//!
//! Verification is strict where Apptainer's had holes: the object must be a
//! cleartext-signed message, the signature's hash must be SHA-224, SHA-256,
//! SHA-384 or SHA-512 (CVE-2022-39237), and the caller gets the verifying
//! certificate's *primary* fingerprint to bind against the descriptor.

use std::io::{Read, Write};

use sequoia_openpgp as openpgp;

use openpgp::Cert;
use openpgp::cert::CertParser;
use openpgp::parse::Parse;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Message, Signer};
use openpgp::types::HashAlgorithm;

/// The armor line a cleartext-signed message starts with.
pub const BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";

/// Hash algorithms a signature may use.
pub(crate) const ALLOWED_HASHES: &[HashAlgorithm] = &[
    HashAlgorithm::SHA224,
    HashAlgorithm::SHA256,
    HashAlgorithm::SHA384,
    HashAlgorithm::SHA512,
];

/// Why a signature or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearsignError {
    #[error("not an OpenPGP cleartext-signed message")]
    /// The data is not a cleartext-signed message.
    NotCleartext,
    #[error("{0}")]
    /// The signature does not verify (why).
    Invalid(String),
    #[error("signed with {0}, which is not allowed (allowed: SHA-224, SHA-256, SHA-384, SHA-512)")]
    /// The signature uses a hash outside the allow-list (which).
    HashNotAllowed(String),
    #[error("{0}")]
    /// The key cannot be used (why).
    Key(String),
}

/// A verified cleartext signature.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signed text.
    pub plaintext: Vec<u8>,
    /// The verifying certificate's primary key fingerprint.
    pub fingerprint: [u8; 20],
    /// Its first user ID, for messages.
    pub signer: String,
}

/// A set of OpenPGP certificates (public keys).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    /// The certificates.
    pub certs: Vec<Cert>,
}

impl Keyring {
    /// Reads every certificate (armored or binary) in `bytes`, with the
    /// MPIs of its signatures normalised as for image signatures: keys made
    /// by Apptainer's OpenPGP library can have self-signatures whose MPI bit
    /// counts overstate the numbers (gpg and Apptainer accept them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Keyring, ClearsignError> {
        let normalized = super::packets::dearmor_all(bytes)
            .and_then(|binary| super::packets::normalize_signature_mpis(&binary));
        let certs = CertParser::from_bytes(normalized.as_deref().unwrap_or(bytes))
            .map_err(|e| ClearsignError::Key(format!("not an OpenPGP keyring: {e}")))?
            .collect::<openpgp::Result<Vec<Cert>>>()
            .map_err(|e| ClearsignError::Key(format!("not an OpenPGP keyring: {e}")))?;
        Ok(Keyring { certs })
    }
}

/// The 20-byte fingerprint of a v4 certificate.
pub(crate) fn fingerprint20(cert: &Cert) -> Option<[u8; 20]> {
    cert.fingerprint().as_bytes().try_into().ok()
}

/// The parts of a cleartext-signed message.
struct Cleartext<'a> {
    /// The signed text in canonical form: lines without trailing
    /// whitespace, dash-unescaped, joined by CRLF, no final line ending.
    canonical: Vec<u8>,
    /// The text as the reader sees it (LF line endings).
    text: Vec<u8>,
    /// The armored signature block.
    signature: &'a [u8],
}

const BEGIN_SIGNATURE: &str = "-----BEGIN PGP SIGNATURE-----";

fn split_cleartext(data: &[u8]) -> Option<Cleartext<'_>> {
    let text = std::str::from_utf8(data).ok()?;
    let start = text.find(BEGIN)?;
    if !text[..start].trim().is_empty() {
        return None;
    }
    let mut rest = &text[start + BEGIN.len()..];
    rest = rest.strip_prefix("\r").unwrap_or(rest).strip_prefix('\n')?;
    // Armor headers ("Hash: SHA256") up to the first empty line.
    loop {
        let (line, after) = rest.split_once('\n')?;
        rest = after;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if !line.starts_with("Hash: ") {
            return None;
        }
    }
    let mut lines = Vec::new();
    let sig_at = loop {
        let (line, after) = rest.split_once('\n')?;
        let clean = line.trim_end_matches('\r');
        if clean == BEGIN_SIGNATURE {
            break text.len() - rest.len();
        }
        if clean.starts_with('-') && !clean.starts_with("- ") {
            // A line starting with a dash must be dash-escaped.
            return None;
        }
        lines.push(clean.strip_prefix("- ").unwrap_or(clean));
        rest = after;
    };
    let canonical = lines
        .iter()
        .map(|l| l.trim_end_matches([' ', '\t']))
        .collect::<Vec<_>>()
        .join("\r\n")
        .into_bytes();
    Some(Cleartext {
        canonical,
        text: lines.join("\n").into_bytes(),
        signature: &data[sig_at..],
    })
}

/// Verifies a cleartext-signed message against `keyring`.
///
/// The certificate must be valid now (not revoked, not expired, under
/// sequoia's standard policy) and the key that made the signature must be
/// its primary key or a signing-capable subkey. Unlike a streaming
/// verifier, the key's self-signatures need not predate the signature:
/// keys whose binding signatures were refreshed after an image was signed
/// (as the sylabs test key's were) still verify, as they do for Apptainer.
pub fn verify(data: &[u8], keyring: &Keyring) -> Result<Verified, ClearsignError> {
    let parts = split_cleartext(data).ok_or(ClearsignError::NotCleartext)?;
    let sigs = signature_packets(parts.signature)?;
    let mut error = None;
    for sig in &sigs {
        if let Err(e) = acceptable(sig) {
            error = Some(e);
            continue;
        }
        if let Some((fingerprint, signer)) =
            verify_by_keyring(sig, keyring, &parts.canonical, &mut error)?
        {
            return Ok(Verified {
                plaintext: parts.text,
                fingerprint,
                signer,
            });
        }
    }
    Err(error.unwrap_or_else(|| ClearsignError::Invalid("no signature verified".into())))
}

/// The signature packets of an armored signature block (MPIs normalised,
/// see [`super::packets`]); anything else in it is an error.
fn signature_packets(block: &[u8]) -> Result<Vec<openpgp::packet::Signature>, ClearsignError> {
    use openpgp::Packet;
    use openpgp::parse::{PacketParser, PacketParserResult};
    let mut binary = Vec::new();
    openpgp::armor::Reader::from_bytes(block, openpgp::armor::ReaderMode::Tolerant(None))
        .read_to_end(&mut binary)
        .map_err(|e| ClearsignError::Invalid(format!("the signature block: {e}")))?;
    let binary = super::packets::normalize_signature_mpis(&binary).unwrap_or(binary);
    let mut sigs = Vec::new();
    let mut ppr = PacketParser::from_bytes(&binary)
        .map_err(|e| ClearsignError::Invalid(format!("the signature block: {e}")))?;
    while let PacketParserResult::Some(pp) = ppr {
        let (packet, next) = pp
            .next()
            .map_err(|e| ClearsignError::Invalid(format!("the signature block: {e}")))?;
        match packet {
            Packet::Signature(sig) => sigs.push(sig),
            Packet::Unknown(u) => {
                return Err(ClearsignError::Invalid(format!(
                    "the signature block: unreadable {} packet: {}",
                    u.tag(),
                    u.error()
                )));
            }
            other => {
                return Err(ClearsignError::Invalid(format!(
                    "unexpected {} packet in the signature block",
                    other.tag()
                )));
            }
        }
        ppr = next;
    }
    if sigs.is_empty() {
        return Err(ClearsignError::Invalid(
            "the message has no signature".into(),
        ));
    }
    Ok(sigs)
}

/// Whether `sig` may count at all: an allowed hash, a text (or binary)
/// signature, alive now.
fn acceptable(sig: &openpgp::packet::Signature) -> Result<(), ClearsignError> {
    let hash = sig.hash_algo();
    if !ALLOWED_HASHES.contains(&hash) {
        return Err(ClearsignError::HashNotAllowed(hash.to_string()));
    }
    if sig.typ() != openpgp::types::SignatureType::Text
        && sig.typ() != openpgp::types::SignatureType::Binary
    {
        return Err(ClearsignError::Invalid(format!(
            "a {} signature, not a text signature",
            sig.typ()
        )));
    }
    sig.signature_alive(None, std::time::Duration::from_secs(300))
        .map_err(|e| ClearsignError::Invalid(format!("the signature is not alive: {e}")))
}

/// Checks `sig` over `canonical` with every key of `keyring` that may have
/// made it; the verifying certificate's fingerprint and first user ID, or
/// `None` with the last failure in `error`.
fn verify_by_keyring(
    sig: &openpgp::packet::Signature,
    keyring: &Keyring,
    canonical: &[u8],
    error: &mut Option<ClearsignError>,
) -> Result<Option<([u8; 20], String)>, ClearsignError> {
    use openpgp::cert::amalgamation::key::PrimaryKey;
    let policy = StandardPolicy::new();
    let issuers = sig.get_issuers();
    let mut found_key = false;
    for cert in &keyring.certs {
        let valid = match cert.with_policy(&policy, None) {
            Ok(v) => v,
            Err(e) => {
                if cert.keys().key_handles(issuers.iter()).next().is_some() {
                    *error = Some(ClearsignError::Invalid(format!(
                        "key {} is not valid now: {e}",
                        cert.fingerprint()
                    )));
                    found_key = true;
                }
                continue;
            }
        };
        for ka in valid.keys().key_handles(issuers.iter()) {
            found_key = true;
            if !ka.primary() && !ka.for_signing() {
                *error = Some(ClearsignError::Invalid(format!(
                    "subkey {} may not sign",
                    ka.key().fingerprint()
                )));
                continue;
            }
            if let Err(e) = sig.verify_message(ka.key(), canonical) {
                *error = Some(ClearsignError::Invalid(format!("bad signature: {e}")));
                continue;
            }
            let fingerprint = fingerprint20(cert).ok_or_else(|| {
                ClearsignError::Key("the signing certificate is not an OpenPGP v4 key".into())
            })?;
            let signer = cert
                .userids()
                .next()
                .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
                .unwrap_or_default();
            return Ok(Some((fingerprint, signer)));
        }
    }
    if !found_key {
        error.get_or_insert(ClearsignError::Invalid(format!(
            "signed by key {}, which is not in the keyring",
            issuers.first().map_or("(unnamed)".into(), |h| h.to_hex())
        )));
    }
    Ok(None)
}

/// The signed text of a cleartext-signed message, without checking the
/// signature (to tell legacy from current signatures, as sylabs/sif does).
pub fn plaintext_unverified(data: &[u8]) -> Option<Vec<u8>> {
    split_cleartext(data).map(|p| p.text)
}

/// A secret key for signing.
pub struct SigningKey {
    cert: Cert,
}

impl SigningKey {
    /// Reads the first certificate with secret key material in `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<SigningKey, ClearsignError> {
        let ring = Keyring::from_bytes(bytes)?;
        let cert = ring
            .certs
            .into_iter()
            .find(|c| c.is_tsk())
            .ok_or_else(|| ClearsignError::Key("the file holds no secret key".into()))?;
        Ok(SigningKey { cert })
    }

    /// Whether the signing key needs a passphrase.
    pub fn is_encrypted(&self) -> bool {
        let policy = StandardPolicy::new();
        self.cert
            .keys()
            .secret()
            .with_policy(&policy, None)
            .for_signing()
            .next()
            .is_some_and(|k| k.key().secret().is_encrypted())
    }

    /// The primary key's fingerprint (what signature descriptors record).
    pub fn fingerprint(&self) -> Option<[u8; 20]> {
        fingerprint20(&self.cert)
    }

    /// Cleartext-signs `plaintext` with `hash`.
    pub fn sign(
        &self,
        plaintext: &[u8],
        hash: HashAlgorithm,
        passphrase: Option<&str>,
    ) -> Result<Vec<u8>, ClearsignError> {
        let policy = StandardPolicy::new();
        let key = self
            .cert
            .keys()
            .secret()
            .with_policy(&policy, None)
            .supported()
            .alive()
            .revoked(false)
            .for_signing()
            .next()
            .ok_or_else(|| ClearsignError::Key("the key has no valid signing (sub)key".into()))?;
        let mut key = key.key().clone();
        if key.secret().is_encrypted() {
            let pass = passphrase.ok_or_else(|| {
                ClearsignError::Key("the key is protected by a passphrase".into())
            })?;
            key = key
                .decrypt_secret(&pass.into())
                .map_err(|_| ClearsignError::Key("wrong passphrase".into()))?;
        }
        let keypair = key
            .into_keypair()
            .map_err(|e| ClearsignError::Key(e.to_string()))?;
        let fail = |e: anyhow::Error| ClearsignError::Key(e.to_string());
        let mut out = Vec::new();
        {
            let message = Message::new(&mut out);
            let mut signer = Signer::new(message, keypair)
                .map_err(fail)?
                .cleartext()
                .hash_algo(hash)
                .map_err(fail)?
                .build()
                .map_err(fail)?;
            signer
                .write_all(plaintext)
                .map_err(|e| ClearsignError::Key(e.to_string()))?;
            signer.finalize().map_err(fail)?;
        }
        Ok(out)
    }
}
