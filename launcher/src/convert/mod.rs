//! `sifrun build`/`pull` from an OCI image: `docker://REF` (a registry:
//! the blobs are downloaded and verified into a temporary directory
//! first, see `registry`), `oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
//! `docker-archive:FILE[:NAME:TAG]`.
//!
//! Two streaming passes over the layers (see the `oci` crate's recipe):
//! pass 1 reads the headers and checks every blob's digest and each
//! layer's `diff_id`; the merged tree plus Apptainer's `/.singularity.d`
//! layout is planned; pass 2 re-reads the layers and writes the planned
//! entries as one tar stream into `mksquashfs - OUT -tar`, straight into
//! the new SIF at the partition's offset. Memory holds headers only, and
//! nothing is unpacked to disk. The image config is stored as a JSON
//! object `oci-config.json`, the labels (with the source and digests) as
//! the SIF's labels object. Like `sifrun build`, the SIF is assembled
//! under a temporary name beside the output and renamed when complete.

pub mod cleanup;
pub mod config;
mod emit;
#[cfg(feature = "registry")]
mod follow;
mod layer;
#[cfg(feature = "registry")]
mod registry;
#[cfg(feature = "registry")]
pub use registry::{Resolved, resolve, resolve_as};
mod source;
mod squash;
#[cfg(test)]
mod tests;

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use oci::apptainer::{self, Provenance};
use oci::platform::Wanted;
use oci::reference::Source;
use sif::write::{self, CreateOptions, Metadata, ObjectInput};
use sif::{Arch, DataType, FsType, PartType};

use crate::build::{self, BuildError, Compression, TempOutput};

/// Name of the object holding the image config.
pub const CONFIG_OBJECT: &str = "oci-config.json";

/// Why a conversion failed; each names the source or file involved.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0}: not a local image source")]
    Registry(String),
    #[error("{}", io_line(what, error))]
    Io { what: String, error: io::Error },
    #[error("{what}: {error}")]
    Tar {
        what: String,
        error: oci::tar::TarError,
    },
    #[error(transparent)]
    Reference(#[from] oci::reference::ReferenceError),
    #[error(transparent)]
    Layout(#[from] oci::layout::LayoutError),
    #[error(transparent)]
    Manifest(#[from] oci::manifest::ManifestError),
    #[error(transparent)]
    Platform(#[from] oci::platform::PlatformError),
    #[error(transparent)]
    Media(#[from] oci::media::MediaError),
    #[error(transparent)]
    Tree(#[from] oci::tree::TreeError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("{0}")]
    Other(String),
}

/// An I/O error as one short line: `no such file or directory`, not
/// `No such file or directory (os error 2)`; other errors as they are.
fn short_io(e: &io::Error) -> String {
    if e.raw_os_error().is_none() {
        return e.to_string();
    }
    let s = e.to_string();
    let s = s.split(" (os error").next().unwrap_or(&s);
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}

/// `WHAT: ERROR`, or a digest check's own line (which names its object).
fn io_line(what: &str, e: &io::Error) -> String {
    match oci::digest::VerifyError::from_io(e) {
        Some(v) => v.to_string(),
        None => format!("{what}: {}", short_io(e)),
    }
}

impl ConvertError {
    fn io(what: &str, source: io::Error) -> ConvertError {
        ConvertError::Io {
            what: what.to_owned(),
            error: source,
        }
    }
}

/// What to convert, and how.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub output: PathBuf,
    /// The source as the user wrote it.
    pub source_text: String,
    pub source: Source,
    pub compression: Compression,
    pub force: bool,
    pub source_date_epoch: Option<i64>,
    /// The platform to pick from an index.
    pub wanted: Wanted,
    /// `docker://` over plain HTTP (`--nohttps`).
    pub plain_http: bool,
    /// Where downloaded blobs go (`$SIFRUN_TMPDIR`); `None`: the output's
    /// directory.
    pub tmpdir: Option<PathBuf>,
    /// Whose credentials a `docker://` pull uses; `None`: this process's
    /// environment (the Slurm holder passes the job's).
    pub credentials: Option<oci::auth::creds::Environment>,
    /// Who hears how far the conversion got, besides a terminal.
    pub progress: Option<ProgressSink>,
}

/// Where a conversion tells how far it got, every half second at most
/// while it moves: the phase (`download`, `convert`), bytes done and the
/// total (0: unknown), and a line for a person. The Slurm holder forwards
/// it to the plugin, whose set-up timeout counts from the last one.
#[derive(Clone)]
pub struct ProgressSink(pub std::sync::Arc<ProgressFn>);

/// What a [`ProgressSink`] calls: `(phase, done, total, line)`.
pub type ProgressFn = dyn Fn(&str, u64, u64, &str) + Send + Sync;

impl ProgressSink {
    fn report(&self, phase: &str, done: u64, total: u64, line: &str) {
        (self.0)(phase, done, total, line);
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// A phase of the conversion, on a terminal only (quiet otherwise).
fn status(line: &str) {
    use std::io::IsTerminal;
    if io::stderr().is_terminal() {
        eprintln!("sifrun: {line}");
    }
}

/// What a conversion made.
#[derive(Debug)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub image_size: u64,
    pub layers: usize,
    pub manifest_digest: Option<String>,
}

fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// What pass 1 gives: where the blobs are (and the temporary directory
/// holding them, for a registry), the image, its layers' headers.
type Read1 = (
    Option<cleanup::TempDir>,
    source::Store,
    source::Image,
    Vec<oci::tree::Layer>,
);

/// Pass 1: the image a source names and its layers' headers, every
/// digest checked.
fn read_image(opts: &ConvertOptions) -> Result<Read1, ConvertError> {
    let what = opts.source_text.as_str();
    let started = std::time::Instant::now();
    #[cfg(feature = "registry")]
    if let Source::Docker(r) = &opts.source {
        return read_registry(r, opts, started);
    }
    let store = source::Store::open(&opts.source, what)?;
    let image = source::resolve(&store, &opts.source, &opts.wanted, what)?;
    check_arch(&image, opts);
    status(&format!("reading {} layers", image.layers.len()));
    let layers = image
        .layers
        .iter()
        .map(|blob| layer::headers(&store, blob, what))
        .collect::<Result<_, _>>()?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "read the layers");
    Ok((None, store, image, layers))
}

/// [`read_image`] of a registry's image: pass 1 runs as the layers arrive.
#[cfg(feature = "registry")]
fn read_registry(
    r: &oci::reference::Reference,
    opts: &ConvertOptions,
    started: std::time::Instant,
) -> Result<Read1, ConvertError> {
    let (tmp, image, layers) = registry::fetch(r, opts)?;
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        "downloaded and read {} layers",
        layers.len()
    );
    let store = source::Store::Dir(tmp.path.clone());
    check_arch(&image, opts);
    Ok((Some(tmp), store, image, layers))
}

/// Warns when the image is for another architecture than wanted.
fn check_arch(image: &source::Image, opts: &ConvertOptions) {
    let what = opts.source_text.as_str();
    if image.config.architecture != opts.wanted.architecture {
        tracing::warn!(
            "{what}: the image is for {}, not {}",
            image.config.architecture,
            opts.wanted.architecture
        );
    }
}

/// Converts the image `opts.source` names into a SIF at `opts.output`.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport, ConvertError> {
    let what = opts.source_text.as_str();
    build::check_output(&opts.output, opts.force)?;
    // `_blobs` (a registry's downloads) lives until the SIF is written.
    let (_blobs, store, image, layers) = read_image(opts)?;
    let in_source = |e: oci::tree::TreeError| ConvertError::Other(format!("{what}: {e}"));
    let mut tree = oci::tree::merge(&layers).map_err(in_source)?;
    for w in tree.warnings() {
        tracing::warn!("{what}: {w}");
    }
    let time = opts.source_date_epoch.unwrap_or_else(write::now);
    let provenance = provenance(opts, &image, time);
    let (extra, extra_data) = apptainer::as_layer(
        &apptainer::layout(&image.config, &provenance),
        &mut tree,
        time,
    );
    tree.apply(layers.len(), &extra).map_err(in_source)?;
    let inputs = emit::Inputs {
        store: &store,
        blobs: &image.layers,
        layers: &layers,
        extra: &extra,
        extra_data: &extra_data,
        what,
    };
    let objects = Objects {
        config: &image.config_bytes,
        labels: apptainer::labels_json(&apptainer::labels(&image.config, &provenance)),
        arch: &image.config.architecture,
    };
    status(&format!("writing {}", opts.output.display()));
    let image_size = write_sif(opts, &inputs, &tree.plan(), &objects)?;
    Ok(ConvertReport {
        output: opts.output.clone(),
        image_size,
        layers: layers.len(),
        manifest_digest: image.manifest_digest.map(|d| d.to_string()),
    })
}

/// What the SIF holds besides the partition.
struct Objects<'a> {
    config: &'a [u8],
    labels: String,
    /// The image's architecture (Go name).
    arch: &'a str,
}

/// Pass 2 into mksquashfs, then the SIF around it, under a temporary name
/// renamed to the output when complete; returns the image's size.
fn write_sif(
    opts: &ConvertOptions,
    inputs: &emit::Inputs<'_>,
    plan: &[oci::tree::Emission],
    objects: &Objects<'_>,
) -> Result<u64, ConvertError> {
    let tmp = TempOutput::beside(&opts.output)?;
    cleanup::register(&tmp.path);
    let result = write_sif_at(opts, inputs, plan, objects, &tmp.path);
    cleanup::unregister(&tmp.path);
    let image_size = result?;
    tmp.commit(&opts.output)?;
    Ok(image_size)
}

/// [`write_sif`] into the temporary file `path`.
fn write_sif_at(
    opts: &ConvertOptions,
    inputs: &emit::Inputs<'_>,
    plan: &[oci::tree::Emission],
    objects: &Objects<'_>,
    path: &std::path::Path,
) -> Result<u64, ConvertError> {
    let shown = path.display().to_string();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .map_err(|e| ConvertError::io(&shown, e))?;
    let create = build::create_options_for(opts.source_date_epoch);
    let offset = write::first_object_offset(&create, DataType::PARTITION, None)
        .expect("the default layout has a valid first offset");
    let root = nix::unistd::geteuid().is_root();
    let argv = squash::args(path, offset, opts.compression, root);
    let env: Vec<(&str, String)> = opts
        .source_date_epoch
        .map(|e| ("SOURCE_DATE_EPOCH", e.max(0).to_string()))
        .into_iter()
        .collect();
    let started = std::time::Instant::now();
    squash::run(&argv, &env, |w| match &opts.progress {
        Some(sink) => inputs.write(plan, &mut Counting::new(w, sink, plan_bytes(inputs, plan))),
        None => inputs.write(plan, w),
    })?;
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "squashfs written");
    let len = file
        .metadata()
        .map_err(|e| ConvertError::io(&shown, e))?
        .len();
    let partition_size = len.checked_sub(offset).filter(|&s| s > 0).ok_or_else(|| {
        ConvertError::Other(format!("{}: mksquashfs wrote nothing", opts.source_text))
    })?;
    finish(file, &create, path, partition_size, objects)?;
    Ok(std::fs::metadata(path).map_or(len, |m| m.len()))
}

/// The bytes of file data pass 2 writes (for progress).
fn plan_bytes(inputs: &emit::Inputs<'_>, plan: &[oci::tree::Emission]) -> u64 {
    plan.iter()
        .filter_map(|e| match e {
            oci::tree::Emission::Node { source, .. } => Some(inputs.entry(source).size),
            _ => None,
        })
        .sum()
}

/// A writer that tells a [`ProgressSink`] how much went through, at most
/// twice a second.
struct Counting<'a> {
    inner: &'a mut dyn io::Write,
    sink: &'a ProgressSink,
    total: u64,
    done: u64,
    last: std::time::Instant,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a mut dyn io::Write, sink: &'a ProgressSink, total: u64) -> Self {
        Counting {
            inner,
            sink,
            total,
            done: 0,
            last: std::time::Instant::now(),
        }
    }
}

impl io::Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.done += n as u64;
        if self.last.elapsed() >= std::time::Duration::from_millis(500) {
            self.last = std::time::Instant::now();
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            let line = format!(
                "squashing: {:.1}/{:.1} MiB",
                mib(self.done),
                mib(self.total)
            );
            self.sink.report("convert", self.done, self.total, &line);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn provenance(opts: &ConvertOptions, image: &source::Image, time: i64) -> Provenance {
    let reference = match &opts.source {
        Source::Docker(r) => r.to_string(),
        Source::OciDir { dir: p, tag } | Source::OciArchive { file: p, tag } => match tag {
            Some(t) => format!("{}:{t}", p.display()),
            None => p.display().to_string(),
        },
        Source::DockerArchive { file, name } => match name {
            Some(n) => format!("{}:{n}", file.display()),
            None => file.display().to_string(),
        },
    };
    let c = &image.config;
    let platform = match &c.variant {
        Some(v) => format!("{}/{}/{v}", c.os, c.architecture),
        None => format!("{}/{}", c.os, c.architecture),
    };
    Provenance {
        bootstrap: opts.source.bootstrap().to_owned(),
        from: opts.source_text.clone(),
        reference,
        digest: image.manifest_digest.clone(),
        index_digest: image.index_digest.clone(),
        config_digest: image.config_digest.clone(),
        platform,
        arch: c.architecture.clone(),
        build_date: rfc3339(time),
        converter: format!("sifrun {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The SIF header, the partition already in place, the labels and the
/// config objects.
fn finish(
    file: std::fs::File,
    create: &CreateOptions,
    path: &std::path::Path,
    partition_size: u64,
    objects: &Objects<'_>,
) -> Result<(), ConvertError> {
    let arch = Arch::from_go_name(objects.arch).unwrap_or(Arch::UNKNOWN);
    let partition = ObjectInput::in_place(DataType::PARTITION, partition_size).with_metadata(
        Metadata::Partition {
            fs_type: FsType::SQUASHFS,
            part_type: PartType::PRIMARY_SYSTEM,
            arch,
        },
    );
    let mut labels_r = objects.labels.as_bytes();
    let mut config_r = objects.config;
    let mut labels_obj = ObjectInput::new(DataType::LABELS, &mut labels_r);
    labels_obj.name = "labels.json".into();
    let mut config_obj = ObjectInput::new(DataType::GENERIC_JSON, &mut config_r);
    config_obj.name = CONFIG_OBJECT.into();
    let what = path.display().to_string();
    let image = write::create(file, create, vec![partition, labels_obj, config_obj])
        .map_err(|e| ConvertError::Other(format!("{what}: {e}")))?;
    image
        .into_source()
        .sync_all()
        .map_err(|e| ConvertError::io(&what, e))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn io_errors_are_short() {
        let e = ConvertError::io("oci-archive:/x.tar", io::Error::from_raw_os_error(2));
        assert_eq!(
            e.to_string(),
            "oci-archive:/x.tar: no such file or directory"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_953_600), "2026-11-29T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
