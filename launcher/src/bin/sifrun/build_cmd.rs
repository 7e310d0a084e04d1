//! `sifrun build` and `sifrun pull` from OCI and Docker image sources.

use std::path::{Path, PathBuf};

use anyhow::Context;
use launcher::build::{self, BuildOptions, Compression, Source as BuildSource};
use launcher::convert::{self, ConvertOptions};
use oci::platform::Wanted;
use oci::reference::{Source, pull_name};

/// `sifrun build`'s arguments.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The image to write
    image: PathBuf,
    /// Directory to pack as the container's root filesystem, or an image:
    /// docker://[REGISTRY/]NAME[:TAG|@sha256:DIGEST], oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG]
    #[arg(
        required_unless_present = "from_squashfs",
        conflicts_with = "from_squashfs"
    )]
    source_dir: Option<PathBuf>,
    /// Use this squashfs file as the root filesystem instead of a directory
    #[arg(long, value_name = "FILE")]
    from_squashfs: Option<PathBuf>,
    /// Squashfs compression (lz4 decompresses about twice as fast as zstd
    /// and three times as fast as gzip, which a step's start waits for;
    /// zstd makes images about a third smaller; gzip for kernels before
    /// 4.14 and squashfuse builds without zstd or lz4)
    #[arg(long, default_value = "lz4", value_name = "gzip|zstd|xz|lz4")]
    compression: Compression,
    /// Keep file owners from the source (default: everything owned by root)
    #[arg(long)]
    keep_owner: bool,
    /// Keep the source directory's mode for the image's root directory
    /// (default: 0755, so every user can enter it)
    #[arg(long)]
    keep_root_mode: bool,
    /// Replace IMAGE if it exists
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    image_args: ImageArgs,
}

/// What `build` and `pull` from an image source share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ImageArgs {
    /// Architecture to choose from a multi-platform image (default: the host's)
    #[arg(long)]
    pub arch: Option<String>,
    /// Talk plain HTTP (no TLS) to the docker:// registry (also SIFRUN_NOHTTPS=1)
    #[arg(long = "nohttps", visible_alias = "no-https")]
    pub nohttps: bool,
}

impl ImageArgs {
    /// `--nohttps`, or `SIFRUN_NOHTTPS=1` (or `true`, `yes`) in the
    /// environment.
    pub fn plain_http(&self) -> bool {
        self.nohttps || crate::cache_cmd::truthy(std::env::var("SIFRUN_NOHTTPS").ok().as_deref())
    }
}

/// `sifrun pull`'s arguments.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// OUT.sif, or the source when OUT is omitted
    first: String,
    /// The source: docker://[REGISTRY/]NAME[:TAG|@sha256:DIGEST], oci:DIR[:TAG],
    /// oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG]
    source: Option<String>,
    /// Squashfs compression (gzip, as the image cache converts: an image
    /// pulled may be added to it with `sifrun cache add`)
    #[arg(long, default_value = "gzip", value_name = "gzip|zstd|xz|lz4")]
    compression: Compression,
    /// Replace the output if it exists
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    image_args: ImageArgs,
}

/// `sifrun build`: from an image source, a directory or a squashfs file.
pub fn run_build(a: BuildArgs) -> anyhow::Result<()> {
    if let Some(d) = a.source_dir.as_deref().filter(|d| is_image_source(d)) {
        let text = d.to_string_lossy().into_owned();
        return convert(
            "build",
            a.image,
            &text,
            a.compression,
            a.force,
            &a.image_args,
        );
    }
    let source = match (a.source_dir, a.from_squashfs) {
        (_, Some(f)) => BuildSource::Squashfs(f),
        (Some(d), None) => BuildSource::Dir(d),
        (None, None) => unreachable!("clap requires one source"),
    };
    let opts = BuildOptions {
        output: a.image,
        source,
        compression: a.compression,
        keep_owner: a.keep_owner,
        keep_root_mode: a.keep_root_mode,
        force: a.force,
        source_date_epoch: build::source_date_epoch_from_env().map_err(anyhow::Error::msg)?,
        arch: sif::Arch::host(),
    };
    let report = build::build(&opts).context("build")?;
    println!(
        "sifrun: built {} ({} bytes, squashfs partition {} bytes)",
        report.output.display(),
        report.image_size,
        report.partition_size
    );
    Ok(())
}

/// `sifrun pull`.
pub fn run_pull(a: PullArgs) -> anyhow::Result<()> {
    pull(a.first, a.source, a.compression, a.force, &a.image_args)
}

/// Whether `text` names an image source rather than a directory: it starts
/// with a known transport and is not an existing path.
pub fn is_image_source(text: &Path) -> bool {
    let Some(s) = text.to_str() else {
        return false;
    };
    ["docker://", "oci:", "oci-archive:", "docker-archive:"]
        .iter()
        .any(|p| s.starts_with(p))
        && !text.exists()
}

/// The platform to choose: `--arch` or the host's.
pub fn wanted(arch: Option<&str>) -> anyhow::Result<Wanted> {
    Ok(match arch {
        Some(a) => Wanted::parse_arch(a)?,
        None => Wanted::host()?,
    })
}

/// Converts `source_text` into `output`.
pub fn convert(
    cmd: &str,
    output: PathBuf,
    source_text: &str,
    compression: Compression,
    force: bool,
    image_args: &ImageArgs,
) -> anyhow::Result<()> {
    let fail = || cmd.to_owned();
    let source = Source::parse(source_text).with_context(fail)?;
    // Temporary files go on SIGINT/SIGTERM/SIGHUP too (before any thread).
    convert::cleanup::on_signals().context("blocking signals")?;
    let opts = ConvertOptions {
        output,
        source_text: source_text.to_owned(),
        source,
        compression,
        force,
        source_date_epoch: build::source_date_epoch_from_env().map_err(anyhow::Error::msg)?,
        wanted: wanted(image_args.arch.as_deref()).with_context(fail)?,
        plain_http: image_args.plain_http(),
        tmpdir: std::env::var_os("SIFRUN_TMPDIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        credentials: None,
        progress: None,
    };
    let report = convert::convert(&opts).with_context(fail)?;
    println!(
        "sifrun: {cmd}: wrote {} ({} bytes, {} layers{})",
        report.output.display(),
        report.image_size,
        report.layers,
        report
            .manifest_digest
            .map(|d| format!(", manifest {d}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// `sifrun pull [OUT] SOURCE`: OUT defaults to Apptainer's `NAME_TAG.sif`.
pub fn pull(
    first: String,
    second: Option<String>,
    compression: Compression,
    force: bool,
    image_args: &ImageArgs,
) -> anyhow::Result<()> {
    let (output, source) = match second {
        Some(s) => (PathBuf::from(first), s),
        None => (PathBuf::from(pull_name(&first)), first),
    };
    if !is_image_source(Path::new(&source)) {
        anyhow::bail!(
            "pull: {source}: not an image source (docker://, oci:, oci-archive:, docker-archive:)"
        );
    }
    convert("pull", output, &source, compression, force, image_args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_recognised() {
        assert!(is_image_source(Path::new("oci-archive:/nonexistent/x.tar")));
        assert!(is_image_source(Path::new("docker://alpine")));
        assert!(!is_image_source(Path::new("/tmp")));
        assert!(!is_image_source(Path::new("rootfs")));
    }
}
