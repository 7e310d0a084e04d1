//! A local image source's blobs (an OCI layout directory, or an
//! `oci-archive:`/`docker-archive:` tar read in place) and the image it
//! names: manifest, config and layers, every digest checked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use oci::digest::{Digest, Verifier};
use oci::layout::{self, Member};
use oci::manifest::{self, ImageConfig, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, Parsed};
use oci::media::{self, Compression};
use oci::platform::{self, MAX_INDEX_DEPTH, Wanted};
use oci::reference::Source;

use super::ConvertError;

/// Where the blobs are.
pub(crate) enum Store {
    /// Files under a directory.
    Dir(PathBuf),
    /// Members of a tar archive.
    Archive {
        file: PathBuf,
        members: BTreeMap<String, Member>,
    },
}

impl Store {
    /// Opens a directory or indexes an archive.
    pub(crate) fn open(source: &Source, what: &str) -> Result<Store, ConvertError> {
        let io = |e| ConvertError::io(what, e);
        match source {
            Source::OciDir { dir, .. } => {
                if !std::fs::metadata(dir).map_err(io)?.is_dir() {
                    return Err(ConvertError::Other(format!("{what}: not a directory")));
                }
                Ok(Store::Dir(dir.clone()))
            }
            Source::OciArchive { file, .. } | Source::DockerArchive { file, .. } => {
                let f = File::open(file).map_err(io)?;
                let members = layout::index_archive(io::BufReader::new(f), what)?;
                Ok(Store::Archive {
                    file: file.clone(),
                    members,
                })
            }
            Source::Docker(_) => Err(ConvertError::Registry(what.to_owned())),
        }
    }

    /// A reader of member `name` (a relative path, checked by the caller).
    pub(crate) fn member(&self, name: &str, what: &str) -> Result<Box<dyn Read>, ConvertError> {
        let missing = || {
            ConvertError::Other(format!(
                "{what}: {name}: not in the image (no such file or directory)"
            ))
        };
        match self {
            Store::Dir(dir) => match File::open(dir.join(name)) {
                Ok(f) => Ok(Box::new(io::BufReader::with_capacity(1 << 17, f))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing()),
                Err(e) => Err(ConvertError::io(&format!("{what}: {name}"), e)),
            },
            Store::Archive { file, members } => {
                let m = members.get(name).ok_or_else(missing)?;
                let mut f = File::open(file).map_err(|e| ConvertError::io(what, e))?;
                f.seek(SeekFrom::Start(m.offset))
                    .map_err(|e| ConvertError::io(what, e))?;
                Ok(Box::new(io::BufReader::with_capacity(
                    1 << 17,
                    f.take(m.size),
                )))
            }
        }
    }

    /// A small member, at most `limit` bytes, checked against `digest`.
    fn small(
        &self,
        name: &str,
        what: &str,
        limit: u64,
        expect: Option<(u64, &Digest)>,
    ) -> Result<Vec<u8>, ConvertError> {
        let r = self.member(name, what)?;
        let label = format!("{what}: {name}");
        let mut v = Verifier::new(r, label.clone(), limit);
        if let Some((size, d)) = expect {
            v = v.expect(Some(size), Some(d.clone()));
        }
        let mut out = Vec::new();
        v.read_to_end(&mut out)
            .map_err(|e| ConvertError::io(&label, e))?;
        Ok(out)
    }
}

/// One layer to read: where, what to expect, how it is compressed.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    pub member: String,
    pub size: Option<u64>,
    pub digest: Option<Digest>,
    /// `None`: sniff the first bytes.
    pub compression: Option<Compression>,
    pub diff_id: Digest,
}

impl LayerBlob {
    /// The layers of manifest `m` as blobs of an OCI layout (or a
    /// registry's download directory, which names them alike), each with
    /// its uncompressed digest from `config` (whose count `parse_config`
    /// checked against the manifest's).
    pub(crate) fn of_manifest(
        m: &manifest::Manifest,
        config: &ImageConfig,
    ) -> Result<Vec<LayerBlob>, media::MediaError> {
        m.layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff_id)| {
                Ok(LayerBlob {
                    member: layout::blob_path(&l.digest),
                    size: Some(l.size),
                    digest: Some(l.digest.clone()),
                    compression: Some(media::layer_compression(&l.media_type)?),
                    diff_id: diff_id.clone(),
                })
            })
            .collect()
    }
}

/// The image a source names.
#[derive(Debug)]
pub(crate) struct Image {
    pub config_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub config_digest: Digest,
    pub manifest_digest: Option<Digest>,
    pub index_digest: Option<Digest>,
    pub layers: Vec<LayerBlob>,
}

/// Resolves the image of `source` in `store` for `wanted`.
pub(crate) fn resolve(
    store: &Store,
    source: &Source,
    wanted: &Wanted,
    what: &str,
) -> Result<Image, ConvertError> {
    match source {
        Source::OciDir { tag, .. } | Source::OciArchive { tag, .. } => {
            resolve_oci(store, tag.as_deref(), wanted, what)
        }
        Source::DockerArchive { name, .. } => resolve_docker_archive(store, name.as_deref(), what),
        Source::Docker(_) => Err(ConvertError::Registry(what.to_owned())),
    }
}

fn resolve_oci(
    store: &Store,
    tag: Option<&str>,
    wanted: &Wanted,
    what: &str,
) -> Result<Image, ConvertError> {
    layout::check_oci_layout(&store.small("oci-layout", what, 4096, None)?, what)?;
    let index_bytes = store.small("index.json", what, MAX_MANIFEST_BYTES, None)?;
    let Parsed::Index(index) =
        manifest::parse_manifest(&index_bytes, Some(media::OCI_INDEX), what)?
    else {
        return Err(ConvertError::Other(format!(
            "{what}: index.json is not an index"
        )));
    };
    let mut desc = layout::select_by_tag(&index, tag, what)?.clone();
    let mut index_digest = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let bytes = store.small(
            &layout::blob_path(&desc.digest),
            what,
            MAX_MANIFEST_BYTES,
            Some((desc.size, &desc.digest)),
        )?;
        match manifest::parse_manifest(&bytes, Some(&desc.media_type), what)? {
            Parsed::Index(i) => {
                index_digest = Some(desc.digest.clone());
                desc = platform::select(&i, wanted, what)?.clone();
            }
            Parsed::Manifest(m) => {
                let c = &m.config;
                let config_bytes = store.small(
                    &layout::blob_path(&c.digest),
                    what,
                    MAX_CONFIG_BYTES,
                    Some((c.size, &c.digest)),
                )?;
                let config = manifest::parse_config(&config_bytes, m.layers.len(), what)?;
                let layers = LayerBlob::of_manifest(&m, &config)?;
                return Ok(Image {
                    config_digest: c.digest.clone(),
                    config_bytes,
                    config,
                    manifest_digest: Some(desc.digest),
                    index_digest,
                    layers,
                });
            }
        }
    }
    Err(ConvertError::Other(format!(
        "{what}: indexes nested deeper than {MAX_INDEX_DEPTH}"
    )))
}

fn resolve_docker_archive(
    store: &Store,
    name: Option<&str>,
    what: &str,
) -> Result<Image, ConvertError> {
    let bytes = store.small("manifest.json", what, MAX_MANIFEST_BYTES, None)?;
    let images = layout::parse_archive_manifest(&bytes, what)?;
    let image = layout::select_archive_image(&images, name, what)?;
    let config_bytes = store.small(&image.config, what, MAX_CONFIG_BYTES, None)?;
    let config_digest = Digest::of(&config_bytes);
    if let Some(d) = layout::digest_from_member(&image.config)
        && d != config_digest
    {
        return Err(ConvertError::Other(format!(
            "{what}: {}: digest mismatch: expected {d}, got {config_digest}",
            image.config
        )));
    }
    let config = manifest::parse_config(&config_bytes, image.layers.len(), what)?;
    let layers = image
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .map(|(member, diff_id)| LayerBlob {
            member: member.clone(),
            size: None,
            digest: layout::digest_from_member(member),
            compression: None,
            diff_id: diff_id.clone(),
        })
        .collect();
    Ok(Image {
        config_bytes,
        config,
        config_digest,
        manifest_digest: None,
        index_digest: None,
        layers,
    })
}
