//! The image-metadata JSON a signature signs (sylabs/sif `integrity`):
//!
//! ```json
//! {"version":1,"header":{"digest":"sha256:…"},"objects":[{"relativeId":0,"descriptorDigest":"sha256:…","objectDigest":"sha256:…"}]}
//! ```
//!
//! Written exactly as Go's `json.Marshal` writes it (field order, no
//! whitespace); read leniently in layout but strictly in content: every
//! digest must name an allowed SHA-2 algorithm and have that algorithm's
//! length (SHA-1, MD5 and the like are refused: CVE-2022-39237).

use sha2::Digest as _;

use crate::descriptor::Descriptor;
use crate::image::{Image, ReadAt};

/// The digest algorithms a signature's metadata may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlg {
    /// SHA-224.
    Sha224,
    /// SHA-256 (the default).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA-512/224.
    Sha512_224,
    /// SHA-512/256.
    Sha512_256,
}

impl DigestAlg {
    /// The name in digest strings (`sha256:…`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha224 => "sha224",
            DigestAlg::Sha256 => "sha256",
            DigestAlg::Sha384 => "sha384",
            DigestAlg::Sha512 => "sha512",
            DigestAlg::Sha512_224 => "sha512_224",
            DigestAlg::Sha512_256 => "sha512_256",
        }
    }

    /// The algorithm a name stands for; `None` for anything not allowed.
    pub fn from_name(name: &str) -> Option<DigestAlg> {
        [
            DigestAlg::Sha224,
            DigestAlg::Sha256,
            DigestAlg::Sha384,
            DigestAlg::Sha512,
            DigestAlg::Sha512_224,
            DigestAlg::Sha512_256,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// Digest length in bytes.
    pub fn size(self) -> usize {
        match self {
            DigestAlg::Sha224 | DigestAlg::Sha512_224 => 28,
            DigestAlg::Sha256 | DigestAlg::Sha512_256 => 32,
            DigestAlg::Sha384 => 48,
            DigestAlg::Sha512 => 64,
        }
    }

    /// A streaming hasher.
    pub(crate) fn hasher(self) -> Hasher {
        match self {
            DigestAlg::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            DigestAlg::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            DigestAlg::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            DigestAlg::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            DigestAlg::Sha512_224 => Hasher::Sha512_224(sha2::Sha512_224::new()),
            DigestAlg::Sha512_256 => Hasher::Sha512_256(sha2::Sha512_256::new()),
        }
    }

    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut h = self.hasher();
        h.update(bytes);
        h.finish()
    }
}

/// A hasher for one of the [`DigestAlg`]s.
pub enum Hasher {
    /// SHA-224.
    Sha224(sha2::Sha224),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-384.
    Sha384(sha2::Sha384),
    /// SHA-512.
    Sha512(sha2::Sha512),
    /// SHA-512/224.
    Sha512_224(sha2::Sha512_224),
    /// SHA-512/256.
    Sha512_256(sha2::Sha512_256),
}

impl Hasher {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha224(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha384(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
            Hasher::Sha512_224(h) => h.update(bytes),
            Hasher::Sha512_256(h) => h.update(bytes),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let (alg, value) = match self {
            Hasher::Sha224(h) => (DigestAlg::Sha224, h.finalize().to_vec()),
            Hasher::Sha256(h) => (DigestAlg::Sha256, h.finalize().to_vec()),
            Hasher::Sha384(h) => (DigestAlg::Sha384, h.finalize().to_vec()),
            Hasher::Sha512(h) => (DigestAlg::Sha512, h.finalize().to_vec()),
            Hasher::Sha512_224(h) => (DigestAlg::Sha512_224, h.finalize().to_vec()),
            Hasher::Sha512_256(h) => (DigestAlg::Sha512_256, h.finalize().to_vec()),
        };
        Digest { alg, value }
    }
}

/// An algorithm and a digest value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The hash algorithm.
    pub alg: DigestAlg,
    /// The digest bytes.
    pub value: Vec<u8>,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:", self.alg.name())?;
        self.value.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for Digest {
    type Err = MetadataError;

    fn from_str(s: &str) -> Result<Digest, MetadataError> {
        let bad = |why: &str| MetadataError(format!("digest {s:?}: {why}"));
        let (name, hex) = s.split_once(':').ok_or_else(|| bad("expected ALG:HEX"))?;
        let alg = DigestAlg::from_name(name).ok_or_else(|| {
            bad("algorithm not allowed (allowed: sha224, sha256, sha384, sha512, sha512_224, sha512_256)")
        })?;
        if hex.len() != alg.size() * 2 {
            return Err(bad(&format!(
                "{name} digests are {} hex digits",
                alg.size() * 2
            )));
        }
        let value = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .filter(|d| {
                        d.bytes()
                            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
                    })
                    .and_then(|d| u8::from_str_radix(d, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("not lowercase hex"))?;
        Ok(Digest { alg, value })
    }
}

/// A malformed metadata document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("signature metadata: {0}")]
pub struct MetadataError(pub String);

/// One signed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMetadata {
    /// Object ID minus the smallest ID of its group.
    pub relative_id: u32,
    /// Digest of the descriptor's 557-byte view.
    pub descriptor_digest: Digest,
    /// Digest of the object's data.
    pub object_digest: Digest,
}

/// What a signature signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMetadata {
    /// Digest of the header's 61-byte view.
    pub header_digest: Digest,
    /// The signed objects, by ascending ID.
    pub objects: Vec<ObjectMetadata>,
}

impl ImageMetadata {
    /// The metadata of `objects` (IDs ascending) of `image`.
    pub fn compute<R: ReadAt>(
        image: &Image<R>,
        objects: &[&Descriptor],
        alg: DigestAlg,
    ) -> crate::Result<ImageMetadata> {
        let header_digest = alg.digest(&image.header().integrity_bytes());
        let mut sorted: Vec<&Descriptor> = objects.to_vec();
        sorted.sort_by_key(|d| d.id());
        let mut out = Vec::new();
        for d in sorted {
            out.push(ObjectMetadata {
                relative_id: d.relative_id(),
                descriptor_digest: alg.digest(&d.integrity_bytes()),
                object_digest: digest_object(image, d, alg)?,
            });
        }
        Ok(ImageMetadata {
            header_digest,
            objects: out,
        })
    }

    /// The JSON as sylabs/sif writes it.
    pub fn to_json(&self) -> String {
        let objects: Vec<String> = self
            .objects
            .iter()
            .map(|o| {
                format!(
                    r#"{{"relativeId":{},"descriptorDigest":"{}","objectDigest":"{}"}}"#,
                    o.relative_id, o.descriptor_digest, o.object_digest
                )
            })
            .collect();
        format!(
            r#"{{"version":1,"header":{{"digest":"{}"}},"objects":[{}]}}"#,
            self.header_digest,
            objects.join(",")
        )
    }

    /// Parses and checks signed JSON.
    pub fn from_json(text: &[u8]) -> Result<ImageMetadata, MetadataError> {
        let v: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| MetadataError(format!("not JSON: {e}")))?;
        let field = |v: &serde_json::Value, k: &str| -> Result<serde_json::Value, MetadataError> {
            v.get(k)
                .cloned()
                .ok_or_else(|| MetadataError(format!("no {k:?} field")))
        };
        let digest = |v: serde_json::Value, k: &str| -> Result<Digest, MetadataError> {
            v.as_str()
                .ok_or_else(|| MetadataError(format!("{k:?} is not a string")))?
                .parse()
        };
        match field(&v, "version")?.as_u64() {
            Some(1) => {}
            other => return Err(MetadataError(format!("unsupported version {other:?}"))),
        }
        let header_digest = digest(field(&field(&v, "header")?, "digest")?, "header.digest")?;
        let list = field(&v, "objects")?;
        let list = list
            .as_array()
            .ok_or_else(|| MetadataError("\"objects\" is not a list".into()))?;
        let mut objects = Vec::with_capacity(list.len());
        for o in list {
            let relative_id = field(o, "relativeId")?
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| MetadataError("\"relativeId\" is not a 32-bit number".into()))?;
            objects.push(ObjectMetadata {
                relative_id,
                descriptor_digest: digest(field(o, "descriptorDigest")?, "descriptorDigest")?,
                object_digest: digest(field(o, "objectDigest")?, "objectDigest")?,
            });
        }
        Ok(ImageMetadata {
            header_digest,
            objects,
        })
    }
}

/// Digests object `d`'s data, reading it in 1 MiB positional reads.
pub fn digest_object<R: ReadAt>(
    image: &Image<R>,
    d: &Descriptor,
    alg: DigestAlg,
) -> crate::Result<Digest> {
    let mut h = alg.hasher();
    let mut buf = vec![0u8; (1 << 20).min(d.size() as usize).max(1)];
    let mut at = 0u64;
    while at < d.size() {
        let n = (d.size() - at).min(buf.len() as u64) as usize;
        image.read_object_at(d, &mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_only_allowed_algorithms() {
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert_eq!(d.alg, DigestAlg::Sha256);
        assert_eq!(d.to_string(), format!("sha256:{}", "ab".repeat(32)));
        for bad in [
            format!("sha1:{}", "ab".repeat(20)),
            format!("md5:{}", "ab".repeat(16)),
            format!("sha256:{}", "ab".repeat(31)),
            format!("sha256:{}", "AB".repeat(32)),
            "sha256".to_owned(),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
        assert_eq!(DigestAlg::Sha512_224.digest(b"").value.len(), 28);
    }

    #[test]
    fn json_round_trips_and_refuses_nonsense() {
        let m = ImageMetadata {
            header_digest: DigestAlg::Sha256.digest(b"h"),
            objects: vec![ObjectMetadata {
                relative_id: 1,
                descriptor_digest: DigestAlg::Sha256.digest(b"d"),
                object_digest: DigestAlg::Sha256.digest(b"o"),
            }],
        };
        let json = m.to_json();
        assert!(json.starts_with(r#"{"version":1,"header":{"digest":"sha256:"#));
        assert_eq!(ImageMetadata::from_json(json.as_bytes()).unwrap(), m);
        for bad in [
            r#"{"version":2,"header":{"digest":"x"},"objects":[]}"#,
            r#"{"version":1,"objects":[]}"#,
            r#"{"version":1,"header":{"digest":"sha1:00"},"objects":[]}"#,
            "[]",
            "",
        ] {
            assert!(ImageMetadata::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
