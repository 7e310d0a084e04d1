//! `sifrun build` and `sifrun pull` from OCI and Docker image sources.

use std::path::{Path, PathBuf};

use anyhow::Context;
use launcher::build::{self, Compression};
use launcher::convert::{self, ConvertOptions};
use oci::platform::Wanted;
use oci::reference::{Source, pull_name};

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
fn wanted(arch: Option<&str>) -> anyhow::Result<Wanted> {
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
    arch: Option<&str>,
) -> anyhow::Result<()> {
    let fail = || cmd.to_owned();
    let source = Source::parse(source_text).with_context(fail)?;
    let opts = ConvertOptions {
        output,
        source_text: source_text.to_owned(),
        source,
        compression,
        force,
        source_date_epoch: build::source_date_epoch_from_env().map_err(anyhow::Error::msg)?,
        wanted: wanted(arch).with_context(fail)?,
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
    arch: Option<&str>,
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
    convert("pull", output, &source, compression, force, arch)
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
