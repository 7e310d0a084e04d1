//! The pure parts of the local sources (design §1.4): choosing a manifest
//! in an OCI layout's `index.json` by tag, the `oci-layout` marker,
//! `docker save`'s `manifest.json`, blob paths, and an index of a tar
//! archive's members so blobs can be read in place.

use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{Descriptor, Index, MAX_MANIFEST_BYTES, REF_NAME};
use crate::reference::Reference;
use crate::tar::{Kind, Reader, TarError};

/// Most members indexed in one archive.
pub const MAX_MEMBERS: usize = 1_000_000;

/// Why a layout or archive is refused; `what` names the layout/archive.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// `oci-layout` is not `{"imageLayoutVersion": "1.0.x"}`.
    #[error("{what}: not an OCI image layout (oci-layout: {why})")]
    NotLayout {
        /// The layout.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// No manifest has the wanted tag.
    #[error("{what}: no image tagged {tag:?}; tags: {tags}")]
    NoTag {
        /// The layout or archive.
        what: String,
        /// The tag asked for.
        tag: String,
        /// The tags present.
        tags: String,
    },
    /// No tag given and several images present.
    #[error("{what} holds {count} images; choose one by tag: {tags}")]
    Ambiguous {
        /// The layout or archive.
        what: String,
        /// How many images.
        count: usize,
        /// The tags present.
        tags: String,
    },
    /// `manifest.json` does not parse.
    #[error("{what}: invalid manifest.json: {source}")]
    Json {
        /// The archive.
        what: String,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// `manifest.json` is larger than the cap.
    #[error("{what}: manifest.json larger than {limit} bytes")]
    TooLarge {
        /// The archive.
        what: String,
        /// The cap.
        limit: u64,
    },
    /// A member path that leaves the archive.
    #[error("{what}: member path {path:?} is absolute or contains '..'")]
    BadPath {
        /// The archive.
        what: String,
        /// The path.
        path: String,
    },
    /// The archive's tar stream is broken.
    #[error("{what}: {source}")]
    Tar {
        /// The archive.
        what: String,
        /// The reader's error.
        source: TarError,
    },
    /// More than [`MAX_MEMBERS`] members.
    #[error("{what}: more than {MAX_MEMBERS} members")]
    TooManyMembers {
        /// The archive.
        what: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

/// Checks an `oci-layout` file's text.
pub fn check_oci_layout(bytes: &[u8], what: &str) -> Result<(), LayoutError> {
    let not = |why: String| LayoutError::NotLayout {
        what: what.to_owned(),
        why,
    };
    let l: OciLayout = serde_json::from_slice(bytes).map_err(|e| not(e.to_string()))?;
    if l.image_layout_version != "1.0.0" && !l.image_layout_version.starts_with("1.0.") {
        return Err(not(format!("version {}", l.image_layout_version)));
    }
    Ok(())
}

fn tag_list<'a>(tags: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = tags.collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// The `index.json` entry for `tag` (annotation
/// `org.opencontainers.image.ref.name`), or the only entry when no tag is
/// given.
pub fn select_by_tag<'a>(
    index: &'a Index,
    tag: Option<&str>,
    what: &str,
) -> Result<&'a Descriptor, LayoutError> {
    let name = |d: &'a Descriptor| d.annotations.get(REF_NAME).map(String::as_str);
    let tags = || tag_list(index.manifests.iter().filter_map(name));
    match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| name(d) == Some(t))
            .ok_or_else(|| LayoutError::NoTag {
                what: what.to_owned(),
                tag: t.to_owned(),
                tags: tags(),
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            all => Err(LayoutError::Ambiguous {
                what: what.to_owned(),
                count: all.len(),
                tags: tags(),
            }),
        },
    }
}

/// The path of a blob inside a layout: `blobs/sha256/<hex>`.
pub fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveImage {
    /// Path of the config in the archive.
    pub config: String,
    /// `name:tag` references.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, base first.
    pub layers: Vec<String>,
}

fn safe_member(path: &str, what: &str) -> Result<(), LayoutError> {
    if path.starts_with('/') || path.split('/').any(|c| c == "..") || path.is_empty() {
        return Err(LayoutError::BadPath {
            what: what.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Parses `manifest.json` (at most 4 MiB; member paths must stay inside
/// the archive).
pub fn parse_archive_manifest(bytes: &[u8], what: &str) -> Result<Vec<ArchiveImage>, LayoutError> {
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(LayoutError::TooLarge {
            what: what.to_owned(),
            limit: MAX_MANIFEST_BYTES,
        });
    }
    let images: Vec<ArchiveImage> =
        serde_json::from_slice(bytes).map_err(|source| LayoutError::Json {
            what: what.to_owned(),
            source,
        })?;
    for i in &images {
        for p in std::iter::once(&i.config).chain(&i.layers) {
            safe_member(p, what)?;
        }
    }
    Ok(images)
}

/// Whether a `RepoTags` entry names `wanted` (exactly, or both normalise
/// to the same reference: `img:t` ≡ `docker.io/library/img:t`).
fn tag_matches(repo_tag: &str, wanted: &str) -> bool {
    repo_tag == wanted
        || matches!((Reference::parse(repo_tag), Reference::parse(wanted)), (Ok(a), Ok(b)) if a == b)
}

/// The image of a `docker save` archive named `NAME:TAG`, or the only one.
pub fn select_archive_image<'a>(
    images: &'a [ArchiveImage],
    name: Option<&str>,
    what: &str,
) -> Result<&'a ArchiveImage, LayoutError> {
    let tags = || {
        tag_list(
            images
                .iter()
                .flat_map(|i| i.repo_tags.iter().flatten())
                .map(String::as_str),
        )
    };
    match name {
        Some(n) => images
            .iter()
            .find(|i| i.repo_tags.iter().flatten().any(|t| tag_matches(t, n)))
            .ok_or_else(|| LayoutError::NoTag {
                what: what.to_owned(),
                tag: n.to_owned(),
                tags: tags(),
            }),
        None => match images {
            [only] => Ok(only),
            all => Err(LayoutError::Ambiguous {
                what: what.to_owned(),
                count: all.len(),
                tags: tags(),
            }),
        },
    }
}

/// The digest a member path announces: `blobs/sha256/<hex>` (Docker ≥ 25,
/// OCI) or legacy `<hex>.json` configs; `None` for other names.
pub fn digest_from_member(path: &str) -> Option<Digest> {
    let name = path
        .strip_prefix("blobs/sha256/")
        .or_else(|| path.strip_suffix(".json"))?;
    Digest::parse(&format!("sha256:{name}")).ok()
}

/// Where a regular file lies in an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of its data.
    pub offset: u64,
    /// Its size.
    pub size: u64,
}

/// Indexes an archive's regular files by cleaned path (`./x` → `x`; a
/// later member of the same name wins, as when extracting), reading the
/// tar stream once.
pub fn index_archive(r: impl Read, what: &str) -> Result<BTreeMap<String, Member>, LayoutError> {
    let tar = |source| LayoutError::Tar {
        what: what.to_owned(),
        source,
    };
    let mut reader = Reader::new(r);
    let mut members = BTreeMap::new();
    let mut count = 0usize;
    while let Some(e) = reader.next_entry().map_err(tar)? {
        count += 1;
        if count > MAX_MEMBERS {
            return Err(LayoutError::TooManyMembers {
                what: what.to_owned(),
            });
        }
        if e.kind != Kind::File {
            continue;
        }
        let path = String::from_utf8_lossy(&e.path);
        let clean: Vec<&str> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        members.insert(
            clean.join("/"),
            Member {
                offset: e.data_offset,
                size: e.size,
            },
        );
    }
    Ok(members)
}

#[cfg(test)]
mod tests;
