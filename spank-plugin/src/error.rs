//! Why a callback failed. Messages are for the user: the FFI layer puts
//! `sifrun: ` in front of them.

use std::path::PathBuf;

use slurm_conf::protocol::Stage;

use crate::options::OptionError;

/// A failed callback.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A plugstack.conf argument is wrong.
    #[error("plugstack.conf: {0}")]
    Plugstack(#[from] slurm_conf::ArgError),
    /// The admin file (`config=`) cannot be used.
    #[error("config: {0}")]
    Config(#[from] slurm_conf::admin::AdminError),
    /// A trusted path (`launcher=`, `runtime_dir=`) could be changed by
    /// someone other than root.
    #[error("plugstack.conf: {key}: {source}")]
    Untrusted {
        /// The plugstack.conf key.
        key: &'static str,
        /// The path (or the directory above it) and what is wrong.
        #[source]
        source: slurm_conf::trusted::Untrusted,
    },
    /// An option value is wrong.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// The admin forbids an option given on the command line.
    #[error("--{0}: disabled on this cluster by the administrator")]
    ForbiddenOption(&'static str),
    /// The admin forbids an option the step asks for (on the command line
    /// or through its variable).
    #[error("--{0} (or its SIFRUN_ variable): disabled on this cluster by the administrator")]
    Forbidden(&'static str),
    /// More binds than the admin allows.
    #[error("--sif-bind: {given} bind specs given, this cluster allows {max}")]
    TooManyBinds {
        /// Binds given, each of a comma list counted.
        given: usize,
        /// `users.max_binds`.
        max: usize,
    },
    /// The image lies outside `users.image_dirs`.
    #[error("{image}: images must lie below {dirs} on this cluster")]
    ImageOutsideDirs {
        /// The image as the step names it.
        image: String,
        /// The allowed directories, for the message.
        dirs: String,
    },
    /// `--container` and `--sif-image` disagree.
    #[error("--container={native} and --sif-image={image} name different images")]
    ContainerConflict {
        /// Slurm's `--container` value.
        native: String,
        /// `--sif-image`.
        image: String,
    },
    /// A registry image on a cluster whose ECL only runs signed images.
    #[error(
        "{0}: images converted from Docker/OCI are unsigned, and this cluster's execution control \
list only runs signed images; ask your administrator to convert and sign it (sifrun pull + \
sifrun sign) and use that SIF"
    )]
    Unsigned(String),
    /// `sifrun resolve` failed.
    #[error("{image}: cannot resolve: {message}")]
    Resolve {
        /// The image.
        image: String,
        /// The launcher's reason.
        message: String,
    },
    /// `--container` with `--sif-image` where Slurm runs `--container` itself.
    #[error(
        "--container={native} with --sif-image={image}: Slurm runs --container itself on this cluster ({} exists), inside sifrun's container; give only one",
        oci_conf.display()
    )]
    ContainerIsSlurms {
        /// Slurm's `--container` value.
        native: String,
        /// `--sif-image`.
        image: String,
        /// The oci.conf Slurm reads.
        oci_conf: PathBuf,
    },
    /// The launcher could not be started.
    #[error("cannot start the launcher {}: {source}", launcher.display())]
    Spawn {
        /// `launcher=`.
        launcher: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The holder did not answer in time.
    #[error(
        "the container was not ready within {0} s (container.setup_timeout, counted from the launcher's last progress)"
    )]
    Timeout(u64),
    /// The holder reported a failure.
    #[error("{message}")]
    Holder {
        /// What failed.
        stage: Stage,
        /// The holder's message.
        message: String,
    },
    /// The holder ended, or answered something unreadable, without a report.
    #[error("the container launcher ended without a report{0}")]
    NoReport(String),
    /// No holder was started for a step that asked for an image.
    #[error("no container was started for this step")]
    NotStarted,
    /// A task could not enter the container.
    #[error("joining the container: {0}")]
    Join(String),
    /// `--sif-run` could not be set up.
    #[error("--sif-run: {0}")]
    Run(String),
    /// A SPANK call failed.
    #[error("{0}")]
    Slurm(String),
    /// A task is refused for the reason given (a copy of the step's error:
    /// tasks are forked after it was recorded).
    #[error("{0}")]
    Task(String),
}
