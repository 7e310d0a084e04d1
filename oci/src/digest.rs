//! Content digests (sha256 only) and a `Read` adapter that hashes what
//! passes through it, caps its size, and checks size and digest at the end.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// A `sha256:` digest of 64 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

/// Why a digest string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// Not `ALGORITHM:ENCODED` with a valid algorithm and encoding.
    #[error("invalid digest {value:?}: expected sha256:<64 hex digits>")]
    Malformed {
        /// The string as given.
        value: String,
    },
    /// A well-formed digest of an algorithm other than sha256.
    #[error("unsupported digest algorithm {algorithm:?} in {value:?} (only sha256 is supported)")]
    Unsupported {
        /// The algorithm part.
        algorithm: String,
        /// The string as given.
        value: String,
    },
}

fn is_algorithm(a: &str) -> bool {
    // [A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*
    a.split(['-', '_', '+', '.']).all(|part| {
        let mut c = part.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic()) && c.all(|x| x.is_ascii_alphanumeric())
    })
}

impl Digest {
    /// Parses `sha256:<64 lower hex>`; other valid algorithms are refused as
    /// unsupported, anything else as malformed.
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let malformed = || DigestError::Malformed {
            value: value.to_owned(),
        };
        let (algorithm, encoded) = value.split_once(':').ok_or_else(malformed)?;
        if !is_algorithm(algorithm)
            || encoded.len() < 32
            || !encoded.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(malformed());
        }
        if algorithm != "sha256" {
            return Err(DigestError::Unsupported {
                algorithm: algorithm.to_owned(),
                value: value.to_owned(),
            });
        }
        if encoded.len() != 64 || encoded.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(malformed());
        }
        Ok(Self {
            hex: encoded.to_owned(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Self {
        let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Self { hex }
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A failed verification of a stream (carried inside `io::Error` by
/// [`Verifier`]'s `Read`; get it back with [`VerifyError::from_io`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum VerifyError {
    /// More bytes than allowed arrived.
    #[error("{what}: more than {limit} bytes")]
    TooLarge {
        /// What was read (e.g. `blob sha256:…`).
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The stream ended at a size other than the expected one.
    #[error("{what}: size {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// What was read.
        what: String,
        /// The size announced (descriptor `size`).
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// The content does not hash to the expected digest.
    #[error("{what}: content has digest {actual}, expected {expected}")]
    DigestMismatch {
        /// What was read.
        what: String,
        /// The expected digest.
        expected: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
}

impl VerifyError {
    /// The verification error inside an I/O error returned by a [`Verifier`].
    pub fn from_io(e: &io::Error) -> Option<&VerifyError> {
        e.get_ref().and_then(|inner| inner.downcast_ref())
    }
}

/// A `Read` adapter that hashes every byte, fails as soon as more than
/// `limit` bytes (or more than the expected size) arrive, and at EOF checks
/// the expected size and digest. A failed check is an `io::Error` of kind
/// `InvalidData` carrying a [`VerifyError`].
pub struct Verifier<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
    size: Option<u64>,
    digest: Option<Digest>,
    what: String,
    checked: bool,
}

impl<R: Read> Verifier<R> {
    /// Wraps `inner`; `what` names the object in errors. Nothing is expected
    /// until [`Verifier::expect`]; the cap is `limit` bytes.
    pub fn new(inner: R, what: impl Into<String>, limit: u64) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
            limit,
            size: None,
            digest: None,
            what: what.into(),
            checked: false,
        }
    }

    /// Expect exactly `size` bytes (if given) hashing to `digest` (if given).
    pub fn expect(mut self, size: Option<u64>, digest: Option<Digest>) -> Self {
        self.size = size;
        self.digest = digest;
        self
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads to EOF (discarding), checks, and returns the digest.
    pub fn finish(mut self) -> io::Result<Digest> {
        io::copy(&mut self, &mut io::sink())?;
        self.check()?;
        Ok(Digest::from_hasher(self.hasher))
    }

    fn fail(&self, e: VerifyError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    fn check(&mut self) -> io::Result<()> {
        if self.checked {
            return Ok(());
        }
        self.checked = true;
        if let Some(expected) = self.size
            && expected != self.count
        {
            let e = VerifyError::SizeMismatch {
                what: self.what.clone(),
                expected,
                actual: self.count,
            };
            return Err(self.fail(e));
        }
        if let Some(expected) = &self.digest {
            let actual = Digest::from_hasher(self.hasher.clone());
            if &actual != expected {
                let e = VerifyError::DigestMismatch {
                    what: self.what.clone(),
                    expected: expected.clone(),
                    actual,
                };
                return Err(self.fail(e));
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Verifier<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cap = self.size.map_or(self.limit, |s| s.min(self.limit));
        // Allow one byte past the cap so an oversized stream is noticed.
        let room = cap.saturating_add(1).saturating_sub(self.count);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 && !buf.is_empty() {
            return Err(self.over(cap));
        }
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > cap {
            return Err(self.over(cap));
        }
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            self.check()?;
        }
        Ok(n)
    }
}

impl<R> Verifier<R> {
    fn over(&self, cap: u64) -> io::Error {
        let e = match self.size {
            Some(expected) if cap == expected && expected < self.limit => {
                VerifyError::SizeMismatch {
                    what: self.what.clone(),
                    expected,
                    actual: self.count,
                }
            }
            _ => VerifyError::TooLarge {
                what: self.what.clone(),
                limit: self.limit,
            },
        };
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Reads all of `r` into memory, failing with [`VerifyError::TooLarge`]
/// (inside the `io::Error`) once more than `limit` bytes arrive.
pub fn read_capped(r: impl Read, what: &str, limit: u64) -> io::Result<Vec<u8>> {
    let mut v = Verifier::new(r, what, limit);
    let mut out = Vec::new();
    v.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display() {
        let d = Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.hex(), EMPTY);
        for bad in [
            "sha256:short",
            "sha256",
            ":abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "1sha:0123456789abcdef0123456789abcdef",
            "sha256:zz",
        ] {
            assert!(
                matches!(Digest::parse(bad), Err(DigestError::Malformed { .. })),
                "{bad}"
            );
        }
        let e =
            Digest::parse("sha512:0123456789abcdef0123456789abcdef0123456789abcdef").unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported digest algorithm \"sha512\""),
            "{e}"
        );
    }

    #[test]
    fn verifier_accepts_exact_content() {
        let v =
            Verifier::new(&b"hello"[..], "blob", 100).expect(Some(5), Some(Digest::of(b"hello")));
        assert_eq!(v.finish().unwrap(), Digest::of(b"hello"));
    }

    fn verify_err(
        data: &[u8],
        limit: u64,
        size: Option<u64>,
        digest: Option<Digest>,
    ) -> VerifyError {
        let mut v = Verifier::new(data, "blob x", limit).expect(size, digest);
        let mut out = Vec::new();
        let e = v.read_to_end(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        VerifyError::from_io(&e).unwrap().clone()
    }

    #[test]
    fn verifier_reports_each_failure() {
        assert_eq!(
            verify_err(b"hello", 4, None, None),
            VerifyError::TooLarge {
                what: "blob x".into(),
                limit: 4
            }
        );
        assert_eq!(
            verify_err(b"hello", 100, Some(3), None),
            VerifyError::SizeMismatch {
                what: "blob x".into(),
                expected: 3,
                actual: 4
            }
        );
        assert_eq!(
            verify_err(b"hello", 100, Some(6), None),
            VerifyError::SizeMismatch {
                what: "blob x".into(),
                expected: 6,
                actual: 5
            }
        );
        let e = verify_err(b"hellO", 100, Some(5), Some(Digest::of(b"hello")));
        assert!(
            matches!(&e, VerifyError::DigestMismatch { actual, .. } if *actual == Digest::of(b"hellO"))
        );
        assert!(
            e.to_string()
                .starts_with("blob x: content has digest sha256:"),
            "{e}"
        );
    }

    #[test]
    fn unbounded_limit_does_not_overflow() {
        let v = Verifier::new(&b"abc"[..], "blob", u64::MAX).expect(None, Some(Digest::of(b"abc")));
        assert_eq!(v.finish().unwrap(), Digest::of(b"abc"));
    }

    #[test]
    fn read_capped_stops_at_limit_plus_one() {
        assert_eq!(read_capped(&b"abcd"[..], "m", 4).unwrap(), b"abcd");
        let mut endless = io::repeat(b'a');
        let e = read_capped(&mut endless, "manifest", 4 << 20).unwrap_err();
        assert!(
            e.to_string().contains("manifest: more than 4194304 bytes"),
            "{e}"
        );
    }
}
