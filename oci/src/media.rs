//! Media types of manifests, configs and layers, and their classification
//! (design §2.1).

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (schema 2).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 manifest (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 manifest (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The `Accept` list for manifest requests, in order.
pub const MANIFEST_ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Why a layer media type is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    /// An encrypted (ocicrypt) layer.
    #[error("layer type {media_type}: encrypted layers are not supported")]
    Encrypted {
        /// The media type.
        media_type: String,
    },
    /// A foreign or non-distributable layer (Windows base layers).
    #[error(
        "layer type {media_type}: foreign/non-distributable layers (Windows bases) are not supported"
    )]
    Foreign {
        /// The media type.
        media_type: String,
    },
    /// Anything else.
    #[error("unknown layer type {media_type}")]
    Unknown {
        /// The media type.
        media_type: String,
    },
}

/// The compression of a layer of `media_type`, or why it is refused.
pub fn layer_compression(media_type: &str) -> Result<Compression, MediaError> {
    let owned = || media_type.to_owned();
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
        t if t.ends_with("+encrypted") => Err(MediaError::Encrypted {
            media_type: owned(),
        }),
        t if t.starts_with("application/vnd.oci.image.layer.nondistributable.")
            || t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" =>
        {
            Err(MediaError::Foreign {
                media_type: owned(),
            })
        }
        _ => Err(MediaError::Unknown {
            media_type: owned(),
        }),
    }
}

/// The compression announced by a blob's first bytes (gzip `1f 8b`, zstd
/// `28 b5 2f fd`, else none), for archives and layouts.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A media type without parameters (`application/json; charset=utf-8` →
/// `application/json`).
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

/// Whether `media_type` names an image index or manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// Whether `media_type` names an image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Whether `media_type` names a schema 1 manifest.
pub fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar").unwrap(),
            Compression::None
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Compression::Gzip
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            Compression::Zstd
        );
        let e =
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").unwrap_err();
        assert!(
            e.to_string().contains("encrypted layers are not supported"),
            "{e}"
        );
        let e = layer_compression("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
            .unwrap_err();
        assert!(matches!(e, MediaError::Foreign { .. }));
        let e = layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
            .unwrap_err();
        assert!(matches!(e, MediaError::Foreign { .. }));
        let e =
            layer_compression("application/vnd.cncf.helm.chart.content.v1.tar+gzip").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown layer type application/vnd.cncf.helm.chart.content.v1.tar+gzip"
        );
    }

    #[test]
    fn sniffing_and_essence() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(sniff(b"usr/"), Compression::None);
        assert_eq!(sniff(&[0x1f]), Compression::None);
        assert_eq!(
            essence("application/json; charset=utf-8"),
            "application/json"
        );
        assert_eq!(essence(OCI_INDEX), OCI_INDEX);
        assert!(
            is_index(DOCKER_LIST)
                && is_manifest(DOCKER_MANIFEST)
                && is_schema1(DOCKER_SCHEMA1_SIGNED)
        );
        assert!(!is_index(OCI_MANIFEST));
    }
}
