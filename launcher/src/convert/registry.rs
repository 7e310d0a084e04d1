//! `docker://` sources: the manifest (an index goes through the platform
//! choice), the config, and the layers downloaded in parallel into a
//! private temporary directory (`$SIFRUN_TMPDIR`, default the output's
//! directory) laid out as an OCI layout's `blobs/sha256/`, each blob's
//! size and digest checked while it streams. The conversion then reads
//! them as it reads a local layout (and checks the digests again).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use oci::auth::creds::{self, Environment};
use oci::digest::Digest;
use oci::layout;
use oci::manifest::{self, Descriptor, MAX_CONFIG_BYTES, Parsed};
use oci::platform::{self, MAX_INDEX_DEPTH, Wanted};
use oci::reference::Reference;
use oci::registry::{Client, Options, RegistryError};

use oci::tree::Layer;

use super::cleanup::TempDir;
use super::follow::{Feed, Follower};
use super::layer;
use super::source::{Image, LayerBlob, Store};
use super::{ConvertError, ConvertOptions, ProgressSink};

/// Concurrent blob downloads (oci-design.md §2.4).
const MAX_CONNECTIONS: usize = 4;

impl From<RegistryError> for ConvertError {
    fn from(e: RegistryError) -> Self {
        ConvertError::Other(e.to_string())
    }
}

/// The client options: `--nohttps`, the user's credential (looked up in
/// `credentials`, else in this process's environment), and
/// `SIFRUN_REGISTRY_TIMEOUT` (seconds without data before giving up).
fn options(
    reference: &Reference,
    plain_http: bool,
    credentials: Option<&Environment>,
) -> Result<Options, ConvertError> {
    let read = |p: &Path| -> Option<String> {
        let f = File::open(p).ok()?;
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, creds::MAX_CONFIG_BYTES), &mut s)
            .ok()?;
        Some(s)
    };
    let process;
    let env = match credentials {
        Some(e) => e,
        None => {
            process = Environment::from_process();
            &process
        }
    };
    let credential = creds::lookup(env, reference.domain(), read)
        .map_err(|e| ConvertError::Other(e.to_string()))?;
    if let Some((_, origin)) = &credential {
        tracing::info!(registry = reference.domain(), "credentials from {origin}");
    }
    let mut o = Options {
        plain_http,
        credential,
        ..Options::default()
    };
    if let Some(t) = std::env::var("SIFRUN_REGISTRY_TIMEOUT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        let secs: u64 = t.parse().ok().filter(|&s| s > 0).ok_or_else(|| {
            ConvertError::Other(format!(
                "SIFRUN_REGISTRY_TIMEOUT={t:?}: not a number of seconds"
            ))
        })?;
        o.read_timeout = Duration::from_secs(secs);
        o.connect_timeout = o.connect_timeout.min(o.read_timeout);
    }
    Ok(o)
}

/// Where the temporary directory goes: `opts.tmpdir`, else the output's
/// directory.
fn temp_parent(opts: &ConvertOptions) -> PathBuf {
    opts.tmpdir
        .clone()
        .unwrap_or_else(|| match opts.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        })
}

/// The manifest for `wanted`: through indexes, each fetched by digest.
fn manifest_for(
    client: &Client,
    reference: &Reference,
    wanted: &Wanted,
    what: &str,
) -> Result<(manifest::Manifest, Digest, Option<Digest>), ConvertError> {
    let mut fetched = client.manifest(&reference.fetch_ref())?;
    let mut index_digest = None;
    for _ in 0..MAX_INDEX_DEPTH {
        match manifest::parse_manifest(&fetched.bytes, fetched.content_type.as_deref(), what)? {
            Parsed::Manifest(m) => return Ok((m, fetched.digest, index_digest)),
            Parsed::Index(i) => {
                index_digest = Some(fetched.digest.clone());
                let desc = platform::select(&i, wanted, what)?;
                let size = desc.size;
                fetched = client.manifest(&desc.digest.to_string())?;
                if fetched.bytes.len() as u64 != size {
                    return Err(ConvertError::Other(format!(
                        "{what}: manifest {}: size {} bytes, expected {size}",
                        desc.digest,
                        fetched.bytes.len()
                    )));
                }
            }
        }
    }
    Err(ConvertError::Other(format!(
        "{what}: indexes nested deeper than {MAX_INDEX_DEPTH}"
    )))
}

/// What a reference names now (`sifrun resolve`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// What the tag (or digest) points to: an index or a manifest.
    pub digest: Digest,
    /// The manifest for the platform chosen (equal to `digest` unless
    /// that is an index).
    pub manifest: Digest,
    /// The bytes its config and layers declare (each distinct blob once,
    /// compressed as downloaded; saturating).
    pub size: u64,
}

/// Resolves `reference` to digests: the manifests only, no blobs.
pub fn resolve(
    reference: &Reference,
    plain_http: bool,
    wanted: &Wanted,
    what: &str,
) -> Result<Resolved, ConvertError> {
    resolve_as(reference, plain_http, wanted, what, None)
}

/// [`resolve`] with the credentials `credentials` names (`None`: this
/// process's environment).
pub fn resolve_as(
    reference: &Reference,
    plain_http: bool,
    wanted: &Wanted,
    what: &str,
    credentials: Option<&Environment>,
) -> Result<Resolved, ConvertError> {
    let client = Client::new(reference, options(reference, plain_http, credentials)?);
    let (m, manifest, index) = manifest_for(&client, reference, wanted, what)?;
    let mut blobs: BTreeMap<String, u64> = BTreeMap::new();
    for d in std::iter::once(&m.config).chain(&m.layers) {
        blobs.insert(d.digest.to_string(), d.size);
    }
    Ok(Resolved {
        digest: index.unwrap_or_else(|| manifest.clone()),
        manifest,
        size: blobs.values().fold(0u64, |t, n| t.saturating_add(*n)),
    })
}

/// Fetches the image `reference` names into a new temporary directory,
/// and its layers' headers, read while the blobs arrive (pass 1).
pub(crate) fn fetch(
    reference: &Reference,
    opts: &ConvertOptions,
) -> Result<(TempDir, Image, Vec<Layer>), ConvertError> {
    let what = opts.source_text.as_str();
    let client = Client::new(
        reference,
        options(reference, opts.plain_http, opts.credentials.as_ref())?,
    );
    let (m, manifest_digest, index_digest) = manifest_for(&client, reference, &opts.wanted, what)?;
    let config_bytes = client.blob_bytes(&m.config, MAX_CONFIG_BYTES)?;
    let config = manifest::parse_config(&config_bytes, m.layers.len(), what)?;
    let layers = LayerBlob::of_manifest(&m, &config)?;
    let parent = temp_parent(opts);
    let dir = TempDir::new_in(&parent).map_err(|e| {
        ConvertError::io(
            &format!("{what}: temporary directory in {}", parent.display()),
            e,
        )
    })?;
    let blobs = dir.path.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .map_err(|e| ConvertError::io(&blobs.display().to_string(), e))?;
    let mut headers = download(&client, &m.layers, &layers, &dir.path, what, opts)?;
    // A blob used by several layers was read once: copied for all but the last.
    let layer_headers = layers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let key = b.member.as_str();
            let again = layers[i + 1..].iter().any(|l| l.member == b.member);
            let h = if again {
                headers.get(key).cloned()
            } else {
                headers.remove(key)
            };
            h.ok_or_else(|| ConvertError::Other(format!("{what}: layer {key} not downloaded")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let image = Image {
        config_digest: m.config.digest.clone(),
        config_bytes,
        config,
        manifest_digest: Some(manifest_digest),
        index_digest,
        layers,
    };
    Ok((dir, image, layer_headers))
}

/// Progress on a terminal: one line, rewritten at most twice a second.
struct Progress {
    tty: bool,
    total: u64,
    done: AtomicU64,
    layers_done: AtomicUsize,
    layers: usize,
    last: Mutex<Instant>,
    start: Instant,
    /// Who else hears of it (the Slurm holder).
    sink: Option<ProgressSink>,
}

impl Progress {
    fn show(&self, force: bool) {
        if !self.tty && self.sink.is_none() {
            return;
        }
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if !force && last.elapsed() < Duration::from_millis(500) {
            return;
        }
        *last = Instant::now();
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let line = format!(
            "layers {}/{}, {:.1}/{:.1} MiB, {:.1} MiB/s",
            self.layers_done.load(Ordering::Relaxed),
            self.layers,
            mib(done),
            mib(self.total),
            mib(done) / secs
        );
        if let Some(sink) = &self.sink {
            sink.report("download", done, self.total, &line);
        }
        if self.tty {
            eprint!("\rsifrun: {line}   ");
            let _ = std::io::stderr().flush();
        }
    }
}

/// The blobs to download, each digest once, largest first, and their
/// total size; a digest declared with two sizes is an error.
fn plan<'a>(
    layers: &'a [Descriptor],
    what: &str,
) -> Result<(Vec<&'a Descriptor>, u64), ConvertError> {
    let mut by_digest: BTreeMap<String, &Descriptor> = BTreeMap::new();
    for d in layers {
        let prev = by_digest.entry(d.digest.to_string()).or_insert(d);
        if prev.size != d.size {
            return Err(ConvertError::Other(format!(
                "{what}: layer {} is declared with two sizes ({} and {} bytes)",
                d.digest, prev.size, d.size
            )));
        }
    }
    let mut order: Vec<&Descriptor> = by_digest.into_values().collect();
    order.sort_by_key(|d| (std::cmp::Reverse(d.size), d.digest.to_string()));
    let total = order
        .iter()
        .try_fold(0u64, |t, d| t.checked_add(d.size))
        .ok_or_else(|| {
            ConvertError::Other(format!(
                "{what}: the layers' declared sizes add up to more than 2^64 bytes"
            ))
        })?;
    Ok((order, total))
}

/// Fails when the filesystem of `dir` has less than `total` bytes free
/// (when it can tell).
fn check_space(dir: &Path, total: u64, what: &str) -> Result<(), ConvertError> {
    let Ok(st) = nix::sys::statvfs::statvfs(dir) else {
        tracing::debug!(dir = %dir.display(), "statvfs failed; free space not checked");
        return Ok(());
    };
    let free = st.blocks_available().saturating_mul(st.fragment_size());
    if total > free {
        return Err(ConvertError::Other(format!(
            "{what}: the layers need {total} bytes but {} has only {free} bytes free \
             (set SIFRUN_TMPDIR to a directory with more space)",
            dir.display()
        )));
    }
    Ok(())
}

/// Downloads `layers` into `dir/blobs/sha256/`, largest first, up to
/// [`MAX_CONNECTIONS`] at a time; a blob gets its final name only once
/// verified. Each blob's headers are read while it arrives (`blobs` says
/// how to read each); returns them by blob path.
fn download(
    client: &Client,
    layers: &[Descriptor],
    blobs: &[LayerBlob],
    dir: &Path,
    what: &str,
    opts: &ConvertOptions,
) -> Result<BTreeMap<String, Layer>, ConvertError> {
    let (order, total) = plan(layers, what)?;
    check_space(dir, total, what)?;
    let blob_of = |d: &Descriptor| -> Result<&LayerBlob, ConvertError> {
        let member = layout::blob_path(&d.digest);
        let mut same = blobs.iter().filter(|b| b.member == member);
        let first = same.next().ok_or_else(|| {
            ConvertError::Other(format!("{what}: layer {} has no diff_id", d.digest))
        })?;
        if same.any(|b| b.diff_id != first.diff_id) {
            return Err(ConvertError::Other(format!(
                "{what}: layer {} is declared with two diff_ids",
                d.digest
            )));
        }
        Ok(first)
    };
    let order = order
        .into_iter()
        .map(|d| Ok((d, blob_of(d)?)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    let progress = Progress {
        tty: std::io::stderr().is_terminal(),
        total,
        done: AtomicU64::new(0),
        layers_done: AtomicUsize::new(0),
        layers: order.len(),
        last: Mutex::new(Instant::now()),
        start: Instant::now(),
        sink: opts.progress.clone(),
    };
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<ConvertError>> = Mutex::new(None);
    let done: Mutex<BTreeMap<String, Layer>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for _ in 0..MAX_CONNECTIONS.min(order.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((d, blob)) = order.get(i) else {
                        return;
                    };
                    if failed.lock().map_or(true, |f| f.is_some()) {
                        return;
                    }
                    match one_blob(client, d, blob, dir, what, &progress) {
                        Ok(l) => {
                            if let Ok(mut m) = done.lock() {
                                m.insert(blob.member.clone(), l);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(e);
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    progress.show(true);
    if progress.tty {
        eprintln!();
    }
    match failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        Some(e) => Err(e),
        None => Ok(done
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)),
    }
}

/// Downloads one blob and reads its headers as it arrives.
fn one_blob(
    client: &Client,
    d: &Descriptor,
    blob: &LayerBlob,
    dir: &Path,
    what: &str,
    progress: &Progress,
) -> Result<Layer, ConvertError> {
    let name = dir.join(layout::blob_path(&d.digest));
    let partial = name.with_extension("partial");
    let shown = format!("{what}: {}", partial.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| ConvertError::io(&shown, e))?;
    let reread = File::open(&partial).map_err(|e| ConvertError::io(&shown, e))?;
    let feed = Feed::new();
    let before = AtomicU64::new(0);
    let (fetched, indexed) = std::thread::scope(|s| {
        let follower = Follower::new(reread, feed.clone());
        let indexer = s.spawn(|| layer::headers_raw(Box::new(follower), blob, what));
        let fetched = client.blob_to(d, &mut f, &|n| {
            feed.grow(n);
            let prev = before.swap(n, Ordering::Relaxed);
            progress
                .done
                .fetch_add(n.saturating_sub(prev), Ordering::Relaxed);
            progress.show(false);
        });
        feed.end(fetched.is_ok());
        let indexed = indexer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (fetched, indexed)
    });
    fetched?;
    std::fs::rename(&partial, &name).map_err(|e| ConvertError::io(&shown, e))?;
    progress.layers_done.fetch_add(1, Ordering::Relaxed);
    progress.show(true);
    tracing::debug!(blob = %d.digest, size = d.size, "downloaded");
    match indexed {
        Ok(l) => Ok(l),
        // Started over: the finished file is read instead.
        Err(_) if feed.restarted() => layer::headers(&Store::Dir(dir.to_owned()), blob, what),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(data: &[u8], size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(data),
            size,
            platform: None,
            annotations: std::collections::BTreeMap::new(),
        }
    }

    /// `download` against a registry that does not answer: checks made
    /// before any request decide the error.
    fn download_err(layers: &[Descriptor]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let r = Reference::parse("127.0.0.1:9/none/img:t").unwrap();
        let o = Options {
            attempts: 1,
            connect_timeout: Duration::from_millis(200),
            ..Options::default()
        };
        let client = Client::new(&r, o);
        let opts = ConvertOptions {
            output: dir.path().join("o.sif"),
            source_text: "docker://x".into(),
            source: oci::reference::Source::Docker(r.clone()),
            compression: crate::build::Compression::Gzip,
            force: false,
            source_date_epoch: None,
            wanted: Wanted {
                architecture: "amd64".into(),
                variant: None,
            },
            plain_http: true,
            tmpdir: None,
            credentials: None,
            progress: None,
        };
        download(&client, layers, &[], dir.path(), "docker://x", &opts)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn declared_sizes_that_overflow_are_refused() {
        let e = download_err(&[layer(b"a", u64::MAX), layer(b"b", 2)]);
        assert!(e.contains("more than 2^64 bytes"), "{e}");
    }

    #[test]
    fn one_digest_with_two_sizes_is_refused() {
        let e = download_err(&[layer(b"a", 5), layer(b"b", 7), layer(b"a", 9)]);
        assert!(e.contains("declared with two sizes (5 and 9 bytes)"), "{e}");
    }

    #[test]
    fn repeated_digests_are_fetched_once() {
        let l = [layer(b"a", 5), layer(b"b", 7), layer(b"a", 5)];
        let (order, total) = plan(&l, "x").unwrap();
        assert_eq!(order.len(), 2);
        assert_eq!(total, 12);
    }

    #[test]
    fn layers_larger_than_the_free_space_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_space(dir.path(), u64::MAX - 1, "docker://x")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("bytes free"),
            "{e}"
        );
        let e = download_err(&[layer(b"a", u64::MAX - 1)]);
        assert!(e.contains("bytes free"), "{e}");
    }
}
