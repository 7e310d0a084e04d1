//! Serde types for OCI image indexes and manifests, Docker schema 2
//! manifests and manifest lists, and image configs, with size-capped,
//! validating parsers (design §2.1). Schema 1 is refused with a message
//! that says how to fix the image.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media;

/// Largest manifest or index accepted (containers/image's limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config accepted.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Most layers in one manifest.
pub const MAX_LAYERS: usize = 1000;
/// Most entries in one index.
pub const MAX_INDEX_ENTRIES: usize = 1000;
/// Annotation naming an entry of an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Why a manifest, index or config was refused. `what` names the object
/// (a reference, a digest, a file in an archive).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than the cap.
    #[error("{what}: larger than {limit} bytes")]
    TooLarge {
        /// The object.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// Not valid JSON of the expected shape.
    #[error("{what}: invalid JSON: {source}")]
    Json {
        /// The object.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A Docker schema 1 manifest.
    #[error(
        "{what} uses a Docker schema 1 manifest (deprecated since Docker 1.10, pulls removed from current Docker); \
         re-push it with a current docker or `skopeo copy`"
    )]
    Schema1 {
        /// The object.
        what: String,
    },
    /// The `Content-Type` and the body's `mediaType` disagree.
    #[error("{what}: served as {header} but its mediaType is {body}")]
    MediaTypeConflict {
        /// The object.
        what: String,
        /// The media type from the transport.
        header: String,
        /// The media type in the body.
        body: String,
    },
    /// Neither an index nor a manifest.
    #[error("{what}: not an image manifest or index (media type {media_type:?})")]
    UnknownType {
        /// The object.
        what: String,
        /// The media type, if any.
        media_type: String,
    },
    /// Too many layers or index entries.
    #[error("{what}: {count} {items}, more than the {limit} allowed")]
    TooMany {
        /// The object.
        what: String,
        /// `layers` or `index entries`.
        items: &'static str,
        /// How many.
        count: usize,
        /// The cap.
        limit: usize,
    },
    /// The config's media type is not an image config.
    #[error("{what}: not a container image (config type {config_type})")]
    NotContainerImage {
        /// The object.
        what: String,
        /// The config media type.
        config_type: String,
    },
    /// The config is for another OS.
    #[error("{what}: image is for OS {os:?}, not linux")]
    NotLinux {
        /// The object.
        what: String,
        /// The OS.
        os: String,
    },
    /// `rootfs` is not `layers` with one diff id per layer.
    #[error("{what}: rootfs has type {rootfs_type:?} and {diff_ids} diff_ids for {layers} layers")]
    RootFs {
        /// The object.
        what: String,
        /// `rootfs.type`.
        rootfs_type: String,
        /// Number of diff ids.
        diff_ids: usize,
        /// Number of layers in the manifest.
        layers: usize,
    },
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A platform in an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ...
    pub architecture: String,
    /// `linux`, ...
    pub os: String,
    /// `v8`, `v7`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Must be 2.
    pub schema_version: u32,
    /// The body's media type, when present.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Must be 2.
    pub schema_version: u32,
    /// The body's media type, when present.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// A parsed manifest-like document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An index or manifest list.
    Index(Index),
    /// An image manifest.
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<serde_json::Value>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

fn json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, ManifestError> {
    serde_json::from_slice(bytes).map_err(|source| ManifestError::Json {
        what: what.to_owned(),
        source,
    })
}

fn check_size(bytes: &[u8], limit: u64, what: &str) -> Result<(), ManifestError> {
    if bytes.len() as u64 > limit {
        return Err(ManifestError::TooLarge {
            what: what.to_owned(),
            limit,
        });
    }
    Ok(())
}

/// Decides the document's type from the transport's `Content-Type` (when
/// specific) and the body (design §2.1 dispatch).
fn kind(probe: &Probe, content_type: Option<&str>, what: &str) -> Result<String, ManifestError> {
    let header = content_type
        .map(media::essence)
        .filter(|t| !t.is_empty() && *t != "application/json");
    if let (Some(h), Some(b)) = (header, &probe.media_type)
        && h != b
    {
        return Err(ManifestError::MediaTypeConflict {
            what: what.into(),
            header: h.into(),
            body: b.clone(),
        });
    }
    if let Some(t) = header.or(probe.media_type.as_deref()) {
        return Ok(t.to_owned());
    }
    Ok(
        if probe
            .schema_version
            .as_ref()
            .and_then(serde_json::Value::as_u64)
            == Some(1)
        {
            media::DOCKER_SCHEMA1.to_owned()
        } else if probe.manifests.is_some() {
            media::OCI_INDEX.to_owned()
        } else if probe.config.is_some() && probe.layers.is_some() {
            media::OCI_MANIFEST.to_owned()
        } else {
            String::new()
        },
    )
}

/// Parses a manifest or index of at most [`MAX_MANIFEST_BYTES`].
/// `content_type` is the transport's type (HTTP `Content-Type`, a
/// descriptor's `mediaType`), `None` when unknown.
pub fn parse_manifest(
    bytes: &[u8],
    content_type: Option<&str>,
    what: &str,
) -> Result<Parsed, ManifestError> {
    check_size(bytes, MAX_MANIFEST_BYTES, what)?;
    let probe: Probe = json(bytes, what)?;
    let t = kind(&probe, content_type, what)?;
    if media::is_schema1(&t) {
        return Err(ManifestError::Schema1 { what: what.into() });
    }
    let schema = |v: u32| -> Result<(), ManifestError> {
        if v == 2 {
            return Ok(());
        }
        Err(ManifestError::UnknownType {
            what: what.into(),
            media_type: format!("{t} (schemaVersion {v})"),
        })
    };
    if media::is_index(&t) {
        let index: Index = json(bytes, what)?;
        schema(index.schema_version)?;
        let count = index.manifests.len();
        if count > MAX_INDEX_ENTRIES {
            return Err(ManifestError::TooMany {
                what: what.into(),
                items: "index entries",
                count,
                limit: MAX_INDEX_ENTRIES,
            });
        }
        return Ok(Parsed::Index(index));
    }
    if media::is_manifest(&t) {
        let m: Manifest = json(bytes, what)?;
        schema(m.schema_version)?;
        let count = m.layers.len();
        if count > MAX_LAYERS {
            return Err(ManifestError::TooMany {
                what: what.into(),
                items: "layers",
                count,
                limit: MAX_LAYERS,
            });
        }
        if m.config.media_type != media::OCI_CONFIG && m.config.media_type != media::DOCKER_CONFIG {
            return Err(ManifestError::NotContainerImage {
                what: what.into(),
                config_type: m.config.media_type,
            });
        }
        return Ok(Parsed::Manifest(m));
    }
    Err(ManifestError::UnknownType {
        what: what.into(),
        media_type: t,
    })
}

/// An image config (the fields the import uses; others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct ImageConfig {
    /// `amd64`, `arm64`, ...
    #[serde(default)]
    pub architecture: String,
    /// Must be `linux`.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The execution parameters.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// `config` of an image config: what a container runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// `USER`.
    #[serde(default)]
    pub user: Option<String>,
    /// `ENV`, as `NAME=VALUE` (or a bare `NAME`).
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WORKDIR`.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `LABEL`s.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct RootFs {
    /// Must be `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One per layer, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// Parses an image config of at most [`MAX_CONFIG_BYTES`] and checks it
/// against a manifest with `layers` layers: OS `linux`, `rootfs.type`
/// `layers`, one diff id per layer.
pub fn parse_config(bytes: &[u8], layers: usize, what: &str) -> Result<ImageConfig, ManifestError> {
    check_size(bytes, MAX_CONFIG_BYTES, what)?;
    let c: ImageConfig = json(bytes, what)?;
    if c.os != "linux" {
        return Err(ManifestError::NotLinux {
            what: what.into(),
            os: c.os,
        });
    }
    if c.rootfs.kind != "layers" || c.rootfs.diff_ids.len() != layers {
        return Err(ManifestError::RootFs {
            what: what.into(),
            rootfs_type: c.rootfs.kind,
            diff_ids: c.rootfs.diff_ids.len(),
            layers,
        });
    }
    Ok(c)
}

#[cfg(test)]
mod tests;
