//! X.509 certificates as DSSE key material, as Apptainer's `verify
//! --certificate` uses them: the leaf certificate's public key verifies the
//! envelope once the leaf is validated against trusted roots, through
//! intermediates, for code signing.
//!
//! The checks (OpenSSL's chain validation plus the usage rules):
//! - the chain leads from the leaf through the intermediates to one of the
//!   roots (the system's roots when none are given, as Apptainer does), every
//!   issuer a CA (basic constraints) with its signature over the next;
//! - every certificate of the chain is valid at the time of the check;
//! - extended key usage as Go's `x509.Verify` with `ExtKeyUsageCodeSigning`
//!   (what Apptainer asks): a certificate of the chain that has the
//!   extension must list code signing or any usage;
//! - stricter than Apptainer (Go ignores the key usage extension): a leaf
//!   with a key usage extension must allow digital signatures.
//!
//! No revocation checking (Apptainer's `--ocsp-verify` queries the network,
//! which cluster nodes usually cannot reach): a revoked certificate must be
//! removed from the files that list it.

use openssl::stack::Stack;
pub use openssl::x509::X509 as Certificate;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509ExtendedKeyUsage, X509KeyUsage, X509StoreContext, X509VerifyResult};

/// OpenSSL's `X509_V_ERR_CERT_NOT_YET_VALID`.
const X509_V_ERR_CERT_NOT_YET_VALID: i32 = 9;
/// OpenSSL's `X509_V_ERR_CERT_HAS_EXPIRED`.
const X509_V_ERR_CERT_HAS_EXPIRED: i32 = 10;

/// The most certificates one file may hold (a bundle of roots included).
const MAX_CERTIFICATES: usize = 4096;

/// Why a certificate cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("not a PEM certificate{}: {reason}", if *.index > 0 { format!(" (block {})", .index + 1) } else { String::new() })]
    /// The bytes are not PEM certificates (which block, counted from 0; why).
    Format {
        /// The offending PEM block.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    #[error("the certificate {subject} has expired (not after {not_after})")]
    /// A certificate of the chain has expired.
    Expired {
        /// Its subject.
        subject: String,
        /// Its end of validity.
        not_after: String,
    },
    #[error("the certificate {subject} is not valid yet (not before {not_before})")]
    /// A certificate of the chain is not valid yet.
    NotYetValid {
        /// Its subject.
        subject: String,
        /// Its start of validity.
        not_before: String,
    },
    #[error("untrusted chain: {0}")]
    /// No chain leads to a trusted root (why, as OpenSSL says).
    Untrusted(String),
    #[error("wrong usage: {0}")]
    /// The chain does not allow code signing (which certificate, why).
    Usage(String),
}

fn format_error(index: usize, reason: impl ToString) -> CertificateError {
    CertificateError::Format {
        index,
        reason: reason.to_string(),
    }
}

/// Reads the first certificate of a PEM file (the leaf, as Apptainer's
/// `--certificate` reads it).
pub fn leaf_from_pem(pem: &[u8]) -> Result<X509, CertificateError> {
    X509::from_pem(pem).map_err(|e| format_error(0, e))
}

/// Reads every certificate of a PEM file (a pool of intermediates or
/// roots); anything in it that is not a certificate is an error, and an
/// empty pool too.
pub fn pool_from_pem(pem: &[u8]) -> Result<Vec<X509>, CertificateError> {
    let blocks = pem
        .windows(b"-----BEGIN ".len())
        .filter(|w| *w == b"-----BEGIN ")
        .count();
    if blocks == 0 {
        return Err(format_error(0, "no PEM block"));
    }
    if blocks > MAX_CERTIFICATES {
        return Err(format_error(
            0,
            format!("{blocks} PEM blocks, more than {MAX_CERTIFICATES}"),
        ));
    }
    let certs = X509::stack_from_pem(pem).map_err(|e| format_error(0, e))?;
    if certs.len() != blocks {
        return Err(format_error(
            certs.len(),
            "a PEM block that is not a certificate",
        ));
    }
    Ok(certs)
}

/// A certificate's subject, one line.
pub fn subject(cert: &X509) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".into());
            format!("{key}={value}")
        })
        .collect();
    format!("\"{}\"", parts.join(", "))
}

/// The SHA-256 digest of a certificate's DER form (its fingerprint, as
/// `openssl x509 -fingerprint -sha256` prints it).
pub fn fingerprint(cert: &X509) -> Result<[u8; 32], CertificateError> {
    use sha2::Digest;
    let der = cert.to_der().map_err(|e| format_error(0, e))?;
    Ok(sha2::Sha256::digest(&der).into())
}

/// Where to look for trusted roots.
#[derive(Clone, Copy, Debug)]
pub enum Roots<'a> {
    /// The system's roots (OpenSSL's default paths), as Apptainer without
    /// `--certificate-roots`.
    System,
    /// Only these.
    Only(&'a [X509]),
}

/// Validates `leaf` for code signing against `roots` through
/// `intermediates`, at `at` (seconds since the epoch; `None` for now).
pub fn validate(
    leaf: &X509,
    intermediates: &[X509],
    roots: Roots<'_>,
    at: Option<i64>,
) -> Result<(), CertificateError> {
    validate_until(leaf, intermediates, roots, at).map(|_| ())
}

/// A certificate's end of validity (`notAfter`), in seconds since the
/// epoch; `None` when it cannot be told.
pub fn not_after(cert: &X509) -> Option<i64> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// As [`validate`], and on success the earliest end of validity of the
/// certificates of the verified chain (leaf, intermediates, root): the
/// time until which the validation holds. A chain whose ends of validity
/// cannot be read fails ([`CertificateError::Untrusted`]).
pub fn validate_until(
    leaf: &X509,
    intermediates: &[X509],
    roots: Roots<'_>,
    at: Option<i64>,
) -> Result<i64, CertificateError> {
    let untrusted = |e: openssl::error::ErrorStack| CertificateError::Untrusted(e.to_string());
    let mut store = X509StoreBuilder::new().map_err(untrusted)?;
    match roots {
        Roots::System => store.set_default_paths().map_err(untrusted)?,
        Roots::Only(certs) => {
            for c in certs {
                store.add_cert(c.clone()).map_err(untrusted)?;
            }
        }
    }
    // As Go's x509.Verify, every certificate of the given roots is a trust
    // anchor, self-signed or not.
    let mut param = openssl::x509::verify::X509VerifyParam::new().map_err(untrusted)?;
    if matches!(roots, Roots::Only(_)) {
        param
            .set_flags(X509VerifyFlags::PARTIAL_CHAIN)
            .map_err(untrusted)?;
    }
    if let Some(t) = at {
        param.set_time(t);
    }
    store.set_param(&param).map_err(untrusted)?;
    let store = store.build();
    let mut chain = Stack::new().map_err(untrusted)?;
    for c in intermediates {
        chain.push(c.clone()).map_err(untrusted)?;
    }
    let mut ctx = X509StoreContext::new().map_err(untrusted)?;
    let outcome = ctx
        .init(&store, leaf, &chain, |c| {
            let ok = c.verify_cert()?;
            let verified: Vec<X509> = c
                .chain()
                .map(|s| s.iter().map(|x| x.to_owned()).collect())
                .unwrap_or_default();
            let failed = c.current_cert().map(|x| x.to_owned());
            Ok((ok, c.error(), failed, verified))
        })
        .map_err(untrusted)?;
    let (ok, error, failed, verified) = outcome;
    if !ok {
        return Err(chain_error(error, failed.as_ref().unwrap_or(leaf)));
    }
    usage(leaf, &verified)?;
    std::iter::once(leaf)
        .chain(verified.iter())
        .map(not_after)
        .try_fold(i64::MAX, |m, t| t.map(|t| m.min(t)))
        .ok_or_else(|| CertificateError::Untrusted("an unreadable end of validity".into()))
}

fn chain_error(error: X509VerifyResult, cert: &X509) -> CertificateError {
    match error.as_raw() {
        X509_V_ERR_CERT_HAS_EXPIRED => CertificateError::Expired {
            subject: subject(cert),
            not_after: cert.not_after().to_string(),
        },
        X509_V_ERR_CERT_NOT_YET_VALID => CertificateError::NotYetValid {
            subject: subject(cert),
            not_before: cert.not_before().to_string(),
        },
        _ => CertificateError::Untrusted(format!(
            "{} (at the certificate {})",
            error.error_string(),
            subject(cert)
        )),
    }
}

/// Go's extended key usage rule over the whole chain, and digital
/// signatures for the leaf.
fn usage(leaf: &X509, chain: &[X509]) -> Result<(), CertificateError> {
    if let Some(ku) = leaf.key_usage()
        && !ku.contains(X509KeyUsage::DIGITAL_SIGNATURE)
    {
        return Err(CertificateError::Usage(format!(
            "the key usage of {} does not allow digital signatures",
            subject(leaf)
        )));
    }
    let allowed = X509ExtendedKeyUsage::CODE_SIGN | X509ExtendedKeyUsage::ANYEKU;
    for c in std::iter::once(leaf).chain(chain.iter()) {
        if let Some(eku) = c.extended_key_usage()
            && !eku.intersects(allowed)
        {
            return Err(CertificateError::Usage(format!(
                "the extended key usage of {} does not allow code signing",
                subject(c)
            )));
        }
    }
    Ok(())
}
