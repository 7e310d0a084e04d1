//! `sifrun`: run, build and inspect SIF container images.
#![warn(clippy::too_many_lines)]

mod build_cmd;
mod cache_cmd;
mod cache_gc_cmd;
mod hold_cmd;
mod hold_full;
mod logging;
mod mount_cmd;
mod run_cmd;
mod sif_cmd;
mod sign_cmd;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hold_cmd::one_line;

#[derive(Parser)]
#[command(
    name = "sifrun",
    version,
    about = "Run, build and inspect SIF container images",
    long_about = "sifrun runs SIF images (Apptainer/Singularity's single-file format) as an \
ordinary user, builds them, and reads and edits them like siftool."
)]
struct Cli {
    /// Show the set-up phases with their durations (-vv: more; SIFRUN_LOG overrides)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read and edit the objects of a SIF image (siftool's commands and output)
    #[command(subcommand)]
    Sif(sif_cmd::SifCommand),
    /// Build a SIF image from a directory, a squashfs file or an OCI/Docker image
    #[command(
        after_help = "The root filesystem becomes the primary system partition, squashfs, for the \
host architecture, in object group 1 (Apptainer's layout). SOURCE_DATE_EPOCH makes the \
image reproducible (nil ID, that time)."
    )]
    Build(build_cmd::BuildArgs),
    /// Make a SIF image from an OCI or Docker image (OUT defaults to NAME_TAG.sif)
    #[command(
        after_help = "docker:// credentials: SIFRUN_DOCKER_USERNAME and SIFRUN_DOCKER_PASSWORD, else $REGISTRY_AUTH_FILE, else $DOCKER_CONFIG/config.json or ~/.docker/config.json. Layers are downloaded into $SIFRUN_TMPDIR (default: the output's directory). SIFRUN_REGISTRY_TIMEOUT: seconds without data before giving up (default 60)."
    )]
    Pull(build_cmd::PullArgs),
    /// Print the digest a docker:// reference points to now (REGISTRY/NAME@sha256:…)
    Resolve(cache_cmd::ResolveArgs),
    /// The cache of images converted from registries: list, clean, add
    #[command(subcommand)]
    Cache(cache_gc_cmd::CacheCommand),
    /// Sign an image's object groups with an OpenPGP key (SIF v2 signatures, as Apptainer)
    Sign(sign_cmd::SignArgs),
    /// Verify an image's signatures: every object group by default
    #[command(
        after_help = "Checks each signature cryptographically (SHA-2 hashes only), binds it to the key its descriptor names, and checks the header, every descriptor and every object against the signed digests. Exit status 0 only when everything verified."
    )]
    Verify(sign_cmd::VerifyArgs),
    /// The execution control list: which signed images may run
    #[command(subcommand)]
    Ecl(sign_cmd::EclCommand),
    /// Run a command inside an image
    #[command(
        after_help = "The command is looked up on the container's PATH; its exit status is sifrun's \
(127: not found, 126: not executable).",
        trailing_var_arg = true
    )]
    Exec {
        #[command(flatten)]
        opts: run_cmd::ContainerArgs,
        #[command(flatten)]
        source: build_cmd::ImageArgs,
        /// The image: a SIF file, or docker://REF (converted once into the cache)
        image: PathBuf,
        /// The command and its arguments
        #[arg(required = true, allow_hyphen_values = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Run an image's runscript
    #[command(trailing_var_arg = true)]
    Run {
        #[command(flatten)]
        opts: run_cmd::ContainerArgs,
        #[command(flatten)]
        source: build_cmd::ImageArgs,
        /// The image: a SIF file, or docker://REF (converted once into the cache)
        image: PathBuf,
        /// Do not let the runscript of an OCI image evaluate its arguments
        /// (sets SINGULARITY_NO_EVAL=1 in the container, as Apptainer)
        #[arg(long)]
        no_eval: bool,
        /// Arguments for the runscript
        #[arg(allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// Start an interactive shell inside an image
    Shell {
        #[command(flatten)]
        opts: run_cmd::ContainerArgs,
        #[command(flatten)]
        source: build_cmd::ImageArgs,
        /// The image: a SIF file, or docker://REF (converted once into the cache)
        image: PathBuf,
    },
    /// (For the SPANK plugin) set up a step's container and hold it for tasks to join;
    /// reads the plugin's request on standard input, answers on standard output
    #[command(hide = true)]
    SlurmHold(hold_cmd::HoldArgs),
    /// Serve an image's root filesystem read-only on a directory (foreground)
    #[command(
        after_help = "Unmounts on SIGINT or SIGTERM, or when `fusermount3 -u DIR` is run. \
As an ordinary user outside a user namespace the mount goes through the setuid fusermount3 \
(package fuse3)."
    )]
    Mount {
        /// The image to serve
        image: PathBuf,
        /// Where to mount it (an existing directory)
        dir: PathBuf,
        /// FUSE worker threads [default: CPUs, 2 to 16]
        #[arg(long)]
        threads: Option<usize>,
        /// Megabytes of decompressed blocks to cache
        #[arg(long, default_value_t = 64)]
        cache_mb: usize,
    },
    /// Summarise an image: partitions, signatures, other objects, definition file
    Inspect {
        /// The image to inspect
        image: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The holder sets up its diagnostics from the plugin's request.
    if !matches!(cli.command, Command::SlurmHold(_)) {
        logging::init(cli.verbose);
    }

    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (`sifrun sif dump … | head`) is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(io::stderr(), "sifrun: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    use launcher::launch::Action;
    match cli.command {
        Command::Exec {
            opts,
            source,
            image,
            command,
        } => {
            let image = cache_cmd::image_path(image, &source).context("exec")?;
            let code = run_cmd::run(&opts, image, Action::Exec(run_cmd::os(&command)), "exec")?;
            std::process::exit(code)
        }
        Command::Run {
            opts,
            source,
            image,
            no_eval,
            args,
        } => {
            let image = cache_cmd::image_path(image, &source).context("run")?;
            let opts = opts.for_run(&image, no_eval);
            let code = run_cmd::run(&opts, image, Action::Run(run_cmd::os(&args)), "run")?;
            std::process::exit(code)
        }
        Command::SlurmHold(args) => {
            std::process::exit(hold_cmd::run(&args, Some(&hold_full::FULL)))
        }
        Command::Shell {
            opts,
            source,
            image,
        } => {
            let image = cache_cmd::image_path(image, &source).context("shell")?;
            let code = run_cmd::run(&opts, image, Action::Shell(vec![]), "shell")?;
            std::process::exit(code)
        }
        Command::Sif(cmd) => sif_cmd::run(cmd),
        Command::Sign(a) => sign_cmd::run_sign(&a),
        Command::Verify(a) => sign_cmd::run_verify(&a),
        Command::Ecl(cmd) => {
            let code = sign_cmd::run_ecl(&cmd)?;
            if code != ExitCode::SUCCESS {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Build(a) => build_cmd::run_build(a),
        Command::Pull(a) => build_cmd::run_pull(a),
        Command::Resolve(a) => cache_cmd::run_resolve(&a),
        Command::Cache(c) => cache_gc_cmd::run(&c),
        Command::Mount {
            image,
            dir,
            threads,
            cache_mb,
        } => mount_cmd::run(&image, &dir, threads, cache_mb),
        Command::Inspect { image } => {
            let shown = image.display().to_string();
            let img = sif_cmd::open_ro(&image).with_context(|| format!("inspect: {shown}"))?;
            io::stdout().write_all(launcher::inspect::summary(&shown, &img).as_bytes())?;
            Ok(())
        }
    }
}
