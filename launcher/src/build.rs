//! `sifrun build`: a squashfs root filesystem, written as the primary system
//! partition of a new SIF image, laid out as Apptainer lays out its images.
//!
//! From a directory, `mksquashfs` writes the filesystem straight into the new
//! image at the partition's offset (`-o`), so the data is written once. The
//! image is assembled under a temporary name in the output's directory and
//! renamed into place only when complete: a failure leaves no partial output.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sif::header::APPTAINER_LAUNCH_SCRIPT;
use sif::write::{self, CreateOptions, Metadata, ObjectInput};
use sif::{Arch, DataType, FsType, PartType};

/// Squashfs compressors `sifrun build` offers (all readable by the launcher).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Xz,
    Lz4,
}

impl Compression {
    /// The name mksquashfs uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "lz4" => Ok(Compression::Lz4),
            other => Err(format!(
                "{other:?} is not a supported compression (gzip, zstd, xz, lz4)"
            )),
        }
    }
}

/// What the root filesystem is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory tree, packed with mksquashfs.
    Dir(PathBuf),
    /// A ready squashfs file, copied as is.
    Squashfs(PathBuf),
}

/// Everything `sifrun build` needs to know.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub output: PathBuf,
    pub source: Source,
    pub compression: Compression,
    /// Keep file owners from the source instead of making everything root's.
    pub keep_owner: bool,
    /// Keep the source directory's own mode for the image's root directory
    /// instead of [`ROOT_MODE`].
    pub keep_root_mode: bool,
    /// Replace an existing output.
    pub force: bool,
    /// `SOURCE_DATE_EPOCH`: a reproducible image (nil UUID, this time).
    pub source_date_epoch: Option<i64>,
    /// Architecture recorded for the partition.
    pub arch: Arch,
}

/// Why a build failed. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}: already exists (use --force to replace it)", .0.display())]
    OutputExists(PathBuf),
    #[error("{}: is a directory, not an image path", .0.display())]
    OutputIsDirectory(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: not a squashfs filesystem (no \"hsqs\" magic)", .0.display())]
    NotSquashfs(PathBuf),
    #[error("mksquashfs not found: install squashfs-tools")]
    MksquashfsMissing,
    #[error("mksquashfs failed on {} ({status}): {stderr}", source_dir.display())]
    Mksquashfs {
        source_dir: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("{}: {source}", path.display())]
    Sif {
        path: PathBuf,
        #[source]
        source: sif::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The SIF creation options for a build.
pub fn create_options(opts: &BuildOptions) -> CreateOptions {
    create_options_for(opts.source_date_epoch)
}

/// The SIF creation options for a build at `SOURCE_DATE_EPOCH` (if set).
pub(crate) fn create_options_for(source_date_epoch: Option<i64>) -> CreateOptions {
    let mut c = CreateOptions {
        launch_script: APPTAINER_LAUNCH_SCRIPT.into(),
        ..CreateOptions::default()
    };
    if let Some(epoch) = source_date_epoch {
        c.id = Some([0; 16]);
        c.time = Some(epoch);
    }
    c
}

/// The mode of an image's root directory unless the source's is kept: a
/// source made by `mktemp -d` is 0700, and a root directory only its owner
/// may enter is an image no other user can start.
pub const ROOT_MODE: u32 = 0o755;

/// The mksquashfs command line that packs `dir` into `dest` at `offset`.
pub fn mksquashfs_args(
    dir: &Path,
    dest: &Path,
    offset: u64,
    compression: Compression,
    keep_owner: bool,
    keep_root_mode: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        dir.into(),
        dest.into(),
        "-o".into(),
        offset.to_string().into(),
        "-noappend".into(),
        "-comp".into(),
        compression.name().into(),
        "-no-progress".into(),
        "-quiet".into(),
    ];
    if !keep_owner {
        args.push("-all-root".into());
    }
    if !keep_root_mode {
        args.push("-root-mode".into());
        args.push(format!("{ROOT_MODE:o}").into());
    }
    args
}

/// Removes the temporary output unless the build completed.
pub(crate) struct TempOutput {
    pub(crate) path: PathBuf,
    keep: bool,
}

impl TempOutput {
    /// A temporary name beside `output`, in the same directory (so that
    /// the final rename is atomic).
    pub(crate) fn beside(output: &Path) -> Result<TempOutput, BuildError> {
        let dir = match output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = output
            .file_name()
            .ok_or_else(|| BuildError::OutputIsDirectory(output.to_owned()))?;
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".sifrun-build-{}", std::process::id()));
        Ok(TempOutput {
            path: dir.join(tmp_name),
            keep: false,
        })
    }

    /// Renames the finished image to `output`.
    pub(crate) fn commit(mut self, output: &Path) -> Result<(), BuildError> {
        fs::rename(&self.path, output).map_err(io_err(output))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// What a successful build made.
#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub partition_size: u64,
    pub image_size: u64,
}

/// Builds the image described by `opts`.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let output = &opts.output;
    check_output(output, opts.force)?;
    check_source(&opts.source)?;
    let tmp = TempOutput::beside(output)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&tmp.path)
        .map_err(io_err(&tmp.path))?;
    let create = create_options(opts);
    let offset = write::first_object_offset(&create, DataType::PARTITION, None)
        .expect("the default layout has a valid first offset");
    write_partition(opts, &mut file, &tmp.path, offset)?;
    // mksquashfs rewrote the file through its own descriptor; ours still
    // refers to the same inode.
    let len = file.metadata().map_err(io_err(&tmp.path))?.len();
    let partition_size = len.checked_sub(offset).filter(|&s| s > 0).ok_or_else(|| {
        BuildError::NotSquashfs(match &opts.source {
            Source::Dir(d) | Source::Squashfs(d) => d.clone(),
        })
    })?;
    finish_sif(file, &create, opts.arch, partition_size, &tmp.path)?;
    tmp.commit(output)?;
    Ok(BuildReport {
        output: output.clone(),
        partition_size,
        image_size: len,
    })
}

/// The output must not be a directory, nor exist unless `force`.
pub(crate) fn check_output(output: &Path, force: bool) -> Result<(), BuildError> {
    match fs::symlink_metadata(output) {
        Ok(m) if m.is_dir() => Err(BuildError::OutputIsDirectory(output.to_owned())),
        Ok(_) if !force => Err(BuildError::OutputExists(output.to_owned())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(output)(e)),
    }
}

/// The source must be a readable directory or a squashfs file.
fn check_source(source: &Source) -> Result<(), BuildError> {
    match source {
        Source::Dir(dir) => {
            let m = fs::metadata(dir).map_err(io_err(dir))?;
            if !m.is_dir() {
                return Err(BuildError::NotADirectory(dir.clone()));
            }
            fs::read_dir(dir).map_err(io_err(dir))?;
        }
        Source::Squashfs(file) => {
            let mut magic = [0u8; 4];
            File::open(file)
                .and_then(|mut f| f.read_exact(&mut magic))
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => BuildError::NotSquashfs(file.clone()),
                    _ => io_err(file)(e),
                })?;
            if &magic != b"hsqs" {
                return Err(BuildError::NotSquashfs(file.clone()));
            }
        }
    }
    Ok(())
}

/// Writes the squashfs at `offset` of `file` (at `path`): made by
/// mksquashfs from a directory, or copied from a squashfs file.
fn write_partition(
    opts: &BuildOptions,
    file: &mut File,
    path: &Path,
    offset: u64,
) -> Result<(), BuildError> {
    match &opts.source {
        Source::Dir(src) => run_mksquashfs(src, path, offset, opts),
        Source::Squashfs(src) => {
            let mut input = File::open(src).map_err(io_err(src))?;
            file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
            // File-to-file copies use copy_file_range (reflinks where supported).
            io::copy(&mut input, file).map_err(io_err(path))?;
            Ok(())
        }
    }
}

/// Writes the SIF header and the partition's descriptor around the
/// squashfs already in place, and syncs the file.
fn finish_sif(
    file: File,
    create: &CreateOptions,
    arch: Arch,
    partition_size: u64,
    path: &Path,
) -> Result<(), BuildError> {
    let partition = ObjectInput::in_place(DataType::PARTITION, partition_size).with_metadata(
        Metadata::Partition {
            fs_type: FsType::SQUASHFS,
            part_type: PartType::PRIMARY_SYSTEM,
            arch,
        },
    );
    let image = write::create(file, create, vec![partition]).map_err(|source| BuildError::Sif {
        path: path.to_owned(),
        source,
    })?;
    image.into_source().sync_all().map_err(io_err(path))
}

fn run_mksquashfs(
    src: &Path,
    dest: &Path,
    offset: u64,
    opts: &BuildOptions,
) -> Result<(), BuildError> {
    let mut cmd = Command::new("mksquashfs");
    cmd.args(mksquashfs_args(
        src,
        dest,
        offset,
        opts.compression,
        opts.keep_owner,
        opts.keep_root_mode,
    ));
    if let Some(epoch) = opts.source_date_epoch {
        cmd.env("SOURCE_DATE_EPOCH", epoch.max(0).to_string());
    }
    let out = cmd.output().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BuildError::MksquashfsMissing,
        _ => io_err(Path::new("mksquashfs"))(e),
    })?;
    // mksquashfs reports unreadable files on stderr but still exits 0;
    // an image silently missing files is a failed build.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaint = stderr.lines().find(|l| {
        l.contains("Failed to") || l.contains("failed to") || l.contains("Permission denied")
    });
    if !out.status.success() || complaint.is_some() {
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(5)..].join("; ");
        return Err(BuildError::Mksquashfs {
            source_dir: src.to_owned(),
            status: out.status.to_string(),
            stderr: if tail.is_empty() {
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            } else {
                tail
            },
        });
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` from the environment, if set and valid.
pub fn source_date_epoch_from_env() -> Result<Option<i64>, String> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(_) => Err("SOURCE_DATE_EPOCH is not valid UTF-8".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mksquashfs_plan() {
        let args = mksquashfs_args(
            Path::new("/src"),
            Path::new("/o.sif"),
            32768,
            Compression::Zstd,
            false,
            false,
        );
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "/src",
                "/o.sif",
                "-o",
                "32768",
                "-noappend",
                "-comp",
                "zstd",
                "-no-progress",
                "-quiet",
                "-all-root",
                "-root-mode",
                "755"
            ]
        );
        let keep = mksquashfs_args(
            Path::new("/s"),
            Path::new("/o"),
            1,
            Compression::Gzip,
            true,
            true,
        );
        assert!(!keep.iter().any(|a| a == "-all-root"));
        assert!(!keep.iter().any(|a| a == "-root-mode"));
    }

    #[test]
    fn compression_names() {
        for c in ["gzip", "zstd", "xz", "lz4"] {
            assert_eq!(c.parse::<Compression>().unwrap().name(), c);
        }
        assert!("lzo".parse::<Compression>().unwrap_err().contains("lzo"));
    }

    #[test]
    fn reproducible_builds_use_the_epoch() {
        let opts = BuildOptions {
            output: "o.sif".into(),
            source: Source::Dir("d".into()),
            compression: Compression::Gzip,
            keep_owner: false,
            keep_root_mode: false,
            force: false,
            source_date_epoch: Some(1_700_000_000),
            arch: Arch::host(),
        };
        let c = create_options(&opts);
        assert_eq!(c.id, Some([0; 16]));
        assert_eq!(c.time, Some(1_700_000_000));
        assert_eq!(c.launch_script, APPTAINER_LAUNCH_SCRIPT);
        let c = create_options(&BuildOptions {
            source_date_epoch: None,
            ..opts
        });
        assert_eq!(c.id, None);
    }
}
