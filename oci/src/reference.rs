//! Image references and source forms.
//!
//! `docker://` references follow distribution/reference's grammar and
//! normalisation (`docker.io`, `library/`, default tag `latest`, see
//! `notes-coord/oci-design.md` §1.1–1.2); `oci:`, `oci-archive:` and
//! `docker-archive:` name local layouts and archives (§1.4). [`pull_name`]
//! gives the file name Apptainer's `pull` would choose (§1.3).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestError};

/// The registry Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's actual registry host.
pub const DOCKER_HUB_WIRE: &str = "registry-1.docker.io";
/// The key Docker Hub credentials are stored under in `config.json`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a reference or source was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// A 64-hex string, which Docker refuses as a repository name.
    #[error("{reference:?}: cannot specify 64-byte hexadecimal strings as a repository name")]
    HexName {
        /// The reference as given.
        reference: String,
    },
    /// Upper case in the repository path.
    #[error("{reference:?}: repository name must be lowercase")]
    Uppercase {
        /// The reference as given.
        reference: String,
    },
    /// The reference does not match the grammar.
    #[error("{reference:?}: invalid reference format ({why})")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// Which part is wrong.
        why: &'static str,
    },
    /// The name exceeds 255 characters.
    #[error("{reference:?}: repository name longer than 255 characters")]
    TooLong {
        /// The reference as given.
        reference: String,
    },
    /// The digest part is wrong.
    #[error("{reference:?}: {source}")]
    Digest {
        /// The reference as given.
        reference: String,
        /// The digest error.
        source: DigestError,
    },
    /// A source without a known transport.
    #[error(
        "{source_text:?}: unknown image source (expected docker://, oci:, oci-archive: or docker-archive:)"
    )]
    UnknownTransport {
        /// The source as given.
        source_text: String,
    },
    /// A transport with nothing after it.
    #[error("{source_text:?}: missing path or reference after the transport")]
    Empty {
        /// The source as given.
        source_text: String,
    },
}

/// A normalised `docker://` reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

fn invalid(reference: &str, why: &'static str) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_owned(),
        why,
    }
}

/// `[a-z0-9]+ (separator [a-z0-9]+)*`, separator `[._] | "__" | "-"+`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_host_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
}

/// `host [":" port]`, host = DNS labels or `[IPv6]`.
fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty() || !v6.bytes().all(|x| x.is_ascii_hexdigit() || x == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("x", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()));
    port_ok && host.split('.').all(is_host_label)
}

/// `[\w][\w.-]{0,127}`.
pub fn is_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

impl Reference {
    /// Parses and normalises a reference without its `docker://` prefix
    /// (`ubuntu:22.04` → `docker.io/library/ubuntu:22.04`).
    pub fn parse(reference: &str) -> Result<Self, ReferenceError> {
        if reference.len() == 64
            && reference
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::HexName {
                reference: reference.to_owned(),
            });
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((r, d)) => {
                let d = Digest::parse(d).map_err(|source| ReferenceError::Digest {
                    reference: reference.to_owned(),
                    source,
                })?;
                (r, Some(d))
            }
            None => (reference, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !is_tag(t)
        {
            return Err(invalid(reference, "tag"));
        }
        if name.is_empty() {
            return Err(invalid(reference, "empty name"));
        }
        let (domain, path) = split_domain(name);
        if path.to_ascii_lowercase() != path {
            return Err(ReferenceError::Uppercase {
                reference: reference.to_owned(),
            });
        }
        if !is_domain(&domain) {
            return Err(invalid(reference, "registry host"));
        }
        if !path.split('/').all(is_path_component) {
            return Err(invalid(reference, "repository path"));
        }
        if domain.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::TooLong {
                reference: reference.to_owned(),
            });
        }
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry, as normalised (`docker.io`, `localhost:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path (`library/ubuntu`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag (`latest` when neither tag nor digest was given; kept for
    /// display when a digest was given too).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, when the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry for: the digest when given, else the tag.
    pub fn fetch_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// `DOMAIN/PATH`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The host to connect to (`registry-1.docker.io` for Docker Hub).
    pub fn wire_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_WIRE
        } else {
            &self.domain
        }
    }

    /// The key of this registry's entry in a Docker `config.json`.
    pub fn credential_key(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_AUTH_KEY
        } else {
            &self.domain
        }
    }

    /// The same reference pinned to `digest` (the tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

/// distribution/reference's `splitDockerDomain`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest))
            if first == "localhost"
                || first.contains(['.', ':'])
                || first.to_ascii_lowercase() != first =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if domain == "index.docker.io" {
        DOCKER_HUB.clone_into(&mut domain);
    }
    if domain == DOCKER_HUB && !path.contains('/') {
        path = format!("library/{path}");
    }
    (domain, path)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `docker://REF`: a registry.
    Docker(Reference),
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    OciDir {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to select.
        tag: Option<String>,
    },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive {
        /// The archive.
        file: PathBuf,
        /// The `org.opencontainers.image.ref.name` to select.
        tag: Option<String>,
    },
    /// `docker-archive:FILE[:NAME:TAG]`: `docker save` output.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// The `RepoTags` entry to select.
        name: Option<String>,
    },
}

impl Source {
    /// Parses a source, deciding `PATH:TAG` splits with `Path::exists`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        Self::parse_with(text, |p| p.exists())
    }

    /// Parses a source; `exists` says whether a local path exists (the last
    /// `:` of `oci:`/`oci-archive:` splits off a tag only when the whole
    /// string is not an existing path; `docker-archive:` splits at the first
    /// `:` whose prefix exists, else at the first `:`).
    pub fn parse_with(text: &str, exists: impl Fn(&Path) -> bool) -> Result<Self, ReferenceError> {
        let empty = || ReferenceError::Empty {
            source_text: text.to_owned(),
        };
        if let Some(r) = text.strip_prefix("docker://") {
            return Reference::parse(r).map(Source::Docker);
        }
        let (transport, rest) = text
            .split_once(':')
            .filter(|(t, _)| matches!(*t, "oci" | "oci-archive" | "docker-archive"))
            .ok_or_else(|| ReferenceError::UnknownTransport {
                source_text: text.to_owned(),
            })?;
        if rest.is_empty() {
            return Err(empty());
        }
        if transport == "docker-archive" {
            let (file, name) = split_archive(rest, &exists);
            if file.is_empty() {
                return Err(empty());
            }
            return Ok(Source::DockerArchive {
                file: file.into(),
                name: name.map(str::to_owned),
            });
        }
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !exists(Path::new(rest)) && is_tag(t) => (p, Some(t.to_owned())),
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(empty());
        }
        Ok(if transport == "oci" {
            Source::OciDir {
                dir: path.into(),
                tag,
            }
        } else {
            Source::OciArchive {
                file: path.into(),
                tag,
            }
        })
    }

    /// The bootstrap agent name Apptainer records for this source.
    pub fn bootstrap(&self) -> &'static str {
        match self {
            Source::Docker(_) => "docker",
            Source::OciDir { .. } => "oci",
            Source::OciArchive { .. } => "oci-archive",
            Source::DockerArchive { .. } => "docker-archive",
        }
    }
}

fn split_archive<'a>(rest: &'a str, exists: &impl Fn(&Path) -> bool) -> (&'a str, Option<&'a str>) {
    if exists(Path::new(rest)) {
        return (rest, None);
    }
    let colons = rest.match_indices(':').map(|(i, _)| i);
    let split = colons
        .clone()
        .find(|&i| exists(Path::new(&rest[..i])))
        .or_else(|| colons.clone().next());
    match split {
        Some(i) => (&rest[..i], Some(&rest[i + 1..]).filter(|n| !n.is_empty())),
        None => (rest, None),
    }
}

/// The file name Apptainer's `pull` gives an image when none is given
/// (`uri.GetName`): transport stripped, the last `/` element, split on `:`
/// into container and tag (default `latest`; a tag's first `,` part), then
/// `CONTAINER_TAG.sif`. Digest references keep Apptainer's odd names
/// (`ubuntu@sha256_<hex>.sif`).
pub fn pull_name(source_text: &str) -> String {
    let rest = match source_text.split_once(':') {
        Some(("docker" | "oci" | "oci-archive" | "docker-archive", r)) => r,
        _ => source_text,
    };
    let last = rest
        .trim_start_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let mut parts = last.split(':');
    let container = parts.next().unwrap_or_default();
    let tag = parts
        .next()
        .map_or("latest", |t| t.split(',').next().unwrap_or(t));
    format!("{container}_{tag}.sif")
}

#[cfg(test)]
mod tests;
