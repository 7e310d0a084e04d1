//! `sifrun sif …`: siftool's commands, with siftool's output.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use sif::write::{self, CreateOptions, DeleteOptions, Metadata, ObjectInput};
use sif::{Arch, DataType, FsType, HashType, Image, Link, PartType, SbomFormat, siftool};

#[derive(Subcommand)]
pub enum SifCommand {
    /// List data objects
    List {
        /// The image
        image: PathBuf,
    },
    /// Display the global header
    Header {
        /// The image
        image: PathBuf,
    },
    /// Display data object info
    Info {
        /// Object ID
        #[arg(value_parser = parse_id)]
        id: u32,
        /// The image
        image: PathBuf,
    },
    /// Write a data object's bytes to standard output
    Dump {
        /// Object ID
        #[arg(value_parser = parse_id)]
        id: u32,
        /// The image
        image: PathBuf,
    },
    /// Create a new, empty image
    New {
        /// The image to create
        image: PathBuf,
        /// Replace IMAGE if it exists
        #[arg(long)]
        force: bool,
        /// Nil ID and unset times, for reproducible images
        #[arg(long)]
        deterministic: bool,
    },
    /// Add a data object
    #[command(
        after_help = "Data types: 1-Deffile, 2-EnvVar, 3-Labels, 4-Partition, 5-Signature, \
6-GenericJSON, 7-Generic, 8-CryptoMessage, 9-SBOM, 10-OCI.RootIndex, 11-OCI.Blob\n\
Partition fs: 1-Squash, 2-Ext3, 3-ImmuObj, 4-Raw; types: 1-System, 2-PrimSys, 3-Data, 4-Overlay\n\
Architectures: 1-386, 2-amd64, 3-arm, 4-arm64, 5-ppc64, 6-ppc64le, 7-mips, 8-mipsle, 9-mips64, \
10-mips64le, 11-s390x, 12-riscv64, 13-loong64 (or the name)\n\
Signature hashes: 1-SHA256, 2-SHA384, 3-SHA512, 4-BLAKE2s_256, 5-BLAKE2b_256"
    )]
    Add(AddArgs),
    /// Delete a data object
    Del {
        /// Object ID
        #[arg(value_parser = parse_id)]
        id: u32,
        /// The image
        image: PathBuf,
        /// Overwrite the object's bytes with zeros
        #[arg(long)]
        zero: bool,
        /// Truncate the file after the last remaining object
        #[arg(long)]
        compact: bool,
    },
    /// Set the primary system partition
    Setprim {
        /// Object ID of a system partition
        #[arg(value_parser = parse_id)]
        id: u32,
        /// The image
        image: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// The image
    image: PathBuf,
    /// The file holding the object's data
    object: PathBuf,
    /// The type of data (1-11, see below)
    #[arg(long, value_name = "N")]
    datatype: u32,
    /// Partition type (with --datatype 4)
    #[arg(long, value_name = "N")]
    parttype: Option<i32>,
    /// Partition filesystem (with --datatype 4)
    #[arg(long, value_name = "N")]
    partfs: Option<i32>,
    /// Partition architecture, number or name (with --datatype 4)
    #[arg(long, value_name = "N|NAME")]
    partarch: Option<String>,
    /// Signature hash (with --datatype 5)
    #[arg(long, value_name = "N")]
    signhash: Option<i32>,
    /// Signing entity fingerprint, 40 hex digits (with --datatype 5)
    #[arg(long, value_name = "HEX")]
    signentity: Option<String>,
    /// SBOM format (with --datatype 9): cyclonedx-json, spdx-json, ...
    #[arg(long, value_name = "FORMAT")]
    sbomformat: Option<String>,
    /// Object group (0: no group)
    #[arg(long, default_value_t = 0, value_name = "N")]
    groupid: u32,
    /// ID of the object this one is linked to
    #[arg(long, value_name = "ID")]
    link: Option<u32>,
    /// Alignment of the object's offset [default: 4096 for partitions, none otherwise]
    #[arg(long, value_name = "BYTES")]
    alignment: Option<u64>,
    /// Object name
    #[arg(long, value_name = "NAME")]
    filename: Option<String>,
}

fn parse_id(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not an object ID (a number from 1)")),
        Ok(id) => Ok(id),
    }
}

/// Opens an image read-only.
pub fn open_ro(path: &Path) -> Result<Image<File>> {
    let file = File::open(path)?;
    if file.metadata()?.is_dir() {
        bail!("is a directory, not a SIF image");
    }
    Ok(Image::open(file)?)
}

fn open_rw(path: &Path) -> Result<Image<File>> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if file.metadata()?.is_dir() {
        bail!("is a directory, not a SIF image");
    }
    Ok(Image::open(file)?)
}

fn out(bytes: &[u8]) -> Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_all(bytes)?;
    stdout.flush()?;
    Ok(())
}

pub fn run(cmd: SifCommand) -> Result<()> {
    match cmd {
        SifCommand::List { image } => {
            let img = open_ro(&image).with_context(|| format!("sif list: {}", image.display()))?;
            out(siftool::list(&img).as_bytes())
        }
        SifCommand::Header { image } => {
            let img =
                open_ro(&image).with_context(|| format!("sif header: {}", image.display()))?;
            out(siftool::header(img.header()).as_bytes())
        }
        SifCommand::Info { id, image } => {
            let ctx = || format!("sif info: {}", image.display());
            let img = open_ro(&image).with_context(ctx)?;
            let d = img.descriptor(id).with_context(ctx)?;
            out(siftool::info(d).as_bytes())
        }
        SifCommand::Dump { id, image } => {
            let ctx = || format!("sif dump: {}", image.display());
            let img = open_ro(&image).with_context(ctx)?;
            let d = img.descriptor(id).with_context(ctx)?;
            let mut stdout = io::stdout().lock();
            img.copy_object(d, &mut stdout)
                .context("sif dump: writing to standard output")?;
            stdout.flush()?;
            Ok(())
        }
        SifCommand::New {
            image,
            force,
            deterministic,
        } => {
            let ctx = || format!("sif new: {}", image.display());
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(0o755);
            if force {
                o.create(true).truncate(true);
            } else {
                o.create_new(true);
            }
            let file = o.open(&image).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    anyhow::anyhow!("already exists (use --force to replace it)")
                } else {
                    e.into()
                }
            });
            let file = file.with_context(ctx)?;
            let opts = if deterministic {
                CreateOptions::deterministic()
            } else {
                CreateOptions::default()
            };
            write::create(file, &opts, vec![]).with_context(ctx)?;
            Ok(())
        }
        SifCommand::Add(args) => add(args),
        SifCommand::Del {
            id,
            image,
            zero,
            compact,
        } => {
            let ctx = || format!("sif del: {}", image.display());
            let mut img = open_rw(&image).with_context(ctx)?;
            img.delete_object(
                id,
                DeleteOptions {
                    zero,
                    compact,
                    time: None,
                },
            )
            .with_context(ctx)
        }
        SifCommand::Setprim { id, image } => {
            let ctx = || format!("sif setprim: {}", image.display());
            let mut img = open_rw(&image).with_context(ctx)?;
            img.set_primary_partition(id, None).with_context(ctx)
        }
    }
}

fn parse_arch(s: &str) -> Result<Arch> {
    let arch = match s.parse::<u32>() {
        Ok(n) => Arch::from_number(n),
        Err(_) => Arch::from_go_name(s),
    };
    arch.with_context(|| {
        format!("--partarch: {s:?} is not an architecture (1-13 or a name such as amd64)")
    })
}

fn metadata(args: &AddArgs, dt: DataType) -> Result<Metadata> {
    Ok(match dt {
        DataType::PARTITION => {
            let (Some(pt), Some(fs), Some(arch)) = (args.parttype, args.partfs, &args.partarch)
            else {
                bail!(
                    "with --datatype 4 (partition), --partfs, --parttype and --partarch are required"
                );
            };
            let part_type = PartType(pt);
            if !part_type.is_known() {
                bail!("--parttype: {pt} is not a partition type (1-4)");
            }
            let fs_type = FsType(fs);
            if !fs_type.is_known() {
                bail!("--partfs: {fs} is not a filesystem type (1-6)");
            }
            Metadata::Partition {
                fs_type,
                part_type,
                arch: parse_arch(arch)?,
            }
        }
        DataType::SIGNATURE => {
            let (Some(h), Some(entity)) = (args.signhash, &args.signentity) else {
                bail!("with --datatype 5 (signature), --signhash and --signentity are required");
            };
            let hash_type = HashType(h);
            if !hash_type.is_known() {
                bail!("--signhash: {h} is not a hash type (1-5)");
            }
            if entity.len() != 40 || !entity.bytes().all(|c| c.is_ascii_hexdigit()) {
                bail!("--signentity: {entity:?} is not a 40-hex-digit fingerprint");
            }
            let fingerprint = (0..20)
                .map(|i| u8::from_str_radix(&entity[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?;
            Metadata::Signature {
                hash_type,
                fingerprint,
            }
        }
        DataType::SBOM => {
            let Some(name) = &args.sbomformat else {
                bail!("with --datatype 9 (SBOM), --sbomformat is required");
            };
            Metadata::Sbom(SbomFormat::from_name(name).with_context(|| {
                format!(
                    "--sbomformat: {name:?} is not an SBOM format (cyclonedx-json, spdx-json, ...)"
                )
            })?)
        }
        _ => Metadata::None,
    })
}

fn add(args: AddArgs) -> Result<()> {
    let ctx = || format!("sif add: {}", args.image.display());
    let dt = match args.datatype {
        n @ 1..=11 => DataType(0x4000 + n as i32),
        n => bail!("sif add: --datatype: {n} is not a data type (1-11)"),
    };
    let metadata = metadata(&args, dt).context("sif add")?;
    let mut data =
        File::open(&args.object).with_context(|| format!("sif add: {}", args.object.display()))?;
    let mut img = open_rw(&args.image).with_context(ctx)?;
    let mut input = ObjectInput::new(dt, &mut data).with_metadata(metadata);
    input.group = (args.groupid != 0).then_some(args.groupid);
    input.link = args.link.map_or(Link::None, Link::Object);
    input.alignment = args.alignment;
    input.name = args.filename.clone().unwrap_or_default();
    img.add_object(input, None).with_context(ctx)?;
    Ok(())
}
