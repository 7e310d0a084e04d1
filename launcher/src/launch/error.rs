//! Why a container could not start.

use std::io;
use std::path::PathBuf;

use crate::env::EnvError;
use crate::fuse::SynthError;
use crate::host_binds::HostBindError;
use crate::plan::PlanError;
use crate::serve::ServeError;

/// Why a container could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The image cannot be opened or served.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The options do not make a plan.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// An environment setting is wrong.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// A mount target cannot be made in the image.
    #[error("mount target {0}")]
    Synth(#[from] SynthError),
    /// `/dev/fuse` cannot be opened.
    #[error(
        "/dev/fuse: {0} (it must be mode 0666, as Debian's fuse3 udev rule makes it; ask your administrator)"
    )]
    Fuse(io::Error),
    /// The kernel refuses a user namespace.
    #[error(
        "cannot create a user namespace: {0} (unprivileged user namespaces may be disabled: check user.max_user_namespaces and kernel.unprivileged_userns_clone)"
    )]
    UserNamespace(io::Error),
    /// The image's root directory is closed to the container's user.
    #[error(
        "{}: the image's root directory is mode {mode:04o}, owned by uid {owner} and gid {group}, which the container's user (uid {user}) cannot enter; the image must be rebuilt with its root directory mode 0755 (as `sifrun build` makes it)",
        image.display()
    )]
    ImageRoot {
        /// The image.
        image: PathBuf,
        /// The root directory's permission bits.
        mode: u16,
        /// Its owner, as the image records it.
        owner: u32,
        /// Its group, as the image records it.
        group: u32,
        /// The user inside the container.
        user: u32,
    },
    /// A set-up step failed.
    #[error("setting up the container: {what}: {source}")]
    Setup {
        /// The step.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The calling user has no passwd entry.
    #[error("who are you? uid {0} has no passwd entry")]
    NoUser(u32),
    /// The host lacks the GPU driver asked for.
    #[error(transparent)]
    Gpu(#[from] HostBindError),
    /// The ECL refuses the image (or cannot be read).
    #[error("ECL: {0}")]
    Ecl(String),
}

/// A [`LaunchError::Setup`] for step `what`.
pub(crate) fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Setup { what, source }
}
