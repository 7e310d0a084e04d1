//! The container plan: what to mount where, which files to generate, which
//! identity maps to write, where to start. Computed purely from its inputs
//! (options, facts about the host, the launcher's own binds, the Slurm
//! client, the environment script, the image tree) so that it is complete
//! when [`plan`] returns and can be golden-tested; [`crate::stage`] writes
//! its files and [`crate::apply`] carries its mounts out over the syscall
//! seam.
//!
//! * [`resolve`]: paths inside the image, symlinks followed within it;
//! * `etc_files`: the generated passwd and group;
//! * `mounts`: the default mounts, the binds, the generated files' mounts;
//! * `render`: the stable text form.

use std::path::{Path, PathBuf};

use crate::bind::BindSpec;
use crate::fuse::TargetKind;
use crate::slurm_client::ClientPlan;

mod etc_files;
mod mounts;
mod render;
pub mod resolve;
#[cfg(test)]
pub(crate) mod tests;

pub use resolve::{is_under, resolve_in_image};

/// What the plan needs to know about the image's tree.
pub trait ImageTree {
    /// The entry at `path`, whose parent components are directories
    /// (symlinks are reported, not followed).
    fn entry(&self, path: &Path) -> Option<Entry>;
    /// The contents of a small regular file, if it exists.
    fn read_small(&self, path: &Path) -> Option<Vec<u8>>;
    /// The names in a directory (not following a final symlink).
    fn list(&self, path: &Path) -> Option<Vec<std::ffi::OsString>>;
}

/// An entry of the image tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link, with its target.
    Symlink(PathBuf),
    /// A device node, FIFO or socket.
    Other,
}

/// What the plan needs to know about the host.
pub trait HostFs {
    /// Whether `path` exists on the host, and as what.
    fn kind(&self, path: &Path) -> Option<TargetKind>;
    /// Why [`HostFs::kind`] found nothing at `path`, for the message.
    fn why_missing(&self, _path: &Path) -> String {
        "no such file or directory".into()
    }
}

/// Facts about the user and the host.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// The user's uid.
    pub uid: u32,
    /// The user's primary gid.
    pub gid: u32,
    /// The user's name.
    pub user: String,
    /// The user's home directory (also the container's).
    pub home: PathBuf,
    /// The launcher's working directory.
    pub cwd: PathBuf,
    /// The user's line from the host's passwd database.
    pub passwd_line: String,
    /// Lines of the groups the user is in (primary group first).
    pub group_lines: Vec<String>,
}

/// User options that shape the container.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `--bind`, in order (a later one wins on the same target).
    pub binds: Vec<BindSpec>,
    /// `--no-home`.
    pub no_home: bool,
    /// `--contain`.
    pub contain: bool,
    /// `--workdir`.
    pub workdir: Option<PathBuf>,
    /// `--pwd`.
    pub pwd: Option<PathBuf>,
    /// `--writable-tmpfs`.
    pub writable_tmpfs: bool,
    /// `--fakeroot`.
    pub fakeroot: bool,
}

/// Everything the plan is computed from, besides the host's and the
/// image's trees.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The user's options.
    pub opts: &'a RunOptions,
    /// Facts about the user.
    pub host: &'a HostFacts,
    /// The launcher's binds of host paths (network filesystems, PMIx, GPU
    /// and fabric integration), mounted before the user's, which win on
    /// the same target.
    pub host_binds: &'a [BindSpec],
    /// The host's Slurm client, for a batch step: its binds come first,
    /// its scripts are mounted in [`crate::slurm_client::BIN_DIR`].
    pub slurm_client: Option<&'a ClientPlan>,
    /// Host passwd lines of Slurm's service accounts, added to the
    /// container's passwd when they are missing.
    pub service_accounts: &'a [String],
    /// The environment script the image's shell reads
    /// ([`ENV_SCRIPT`]), when the command runs through it.
    pub env_script: Option<&'a str>,
}

impl<'a> PlanInput<'a> {
    /// The inputs of a plain container: options and user facts only.
    pub fn new(opts: &'a RunOptions, host: &'a HostFacts) -> PlanInput<'a> {
        PlanInput {
            opts,
            host,
            host_binds: &[],
            slurm_client: None,
            service_accounts: &[],
            env_script: None,
        }
    }
}

/// Where the environment script appears inside the container.
pub const ENV_SCRIPT: &str = "/.sifrun/env.sh";

/// Where a mount's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A host path, bound (recursively for /dev and /sys).
    Host {
        /// The host path.
        path: PathBuf,
        /// Whether the mounts below it come along.
        recursive: bool,
    },
    /// A file the launcher generates (passwd, group), by name.
    Generated(String),
    /// A new procfs for the container's PID namespace.
    Proc,
    /// An empty tmpfs.
    Tmpfs,
}

/// One mount onto the container root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOp {
    /// What is mounted.
    pub source: Source,
    /// The target as the user named it.
    pub target: PathBuf,
    /// The target with the image's symlinks resolved inside the root.
    pub resolved: PathBuf,
    /// File or directory.
    pub kind: TargetKind,
    /// Mounted read-only.
    pub readonly: bool,
    /// Device nodes stay usable (only the host /dev); everything else is nodev.
    pub allow_devices: bool,
    /// The target lies inside an earlier bind of a host directory, so it must
    /// already exist there; otherwise it is created in the served image.
    pub in_host_dir: bool,
}

/// A file the launcher generates for the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// Its name in the staging area ([`Source::Generated`]).
    pub name: String,
    /// Its contents.
    pub bytes: Vec<u8>,
    /// Whether it is a program (the Slurm client's scripts).
    pub executable: bool,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The user namespace's uid map.
    pub uid_map: String,
    /// The user namespace's gid map.
    pub gid_map: String,
    /// The mounts, in order.
    pub mounts: Vec<MountOp>,
    /// Mount targets the image lacks, to be synthesised by the server.
    pub synth: Vec<(PathBuf, TargetKind)>,
    /// Generated files.
    pub files: Vec<Generated>,
    /// Working directory to start in.
    pub cwd: PathBuf,
    /// Whether the working directory was asked for (--pwd).
    pub cwd_required: bool,
    /// Home directory inside the container.
    pub home: PathBuf,
    /// Whether the root gets a writable overlay.
    pub writable_tmpfs: bool,
}

impl Plan {
    /// The generated file `name`'s contents.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.bytes.as_slice())
    }
}

/// Why no plan can be made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A bind's host source is missing or unreachable.
    #[error("--bind: {}: {}", .0.display(), .1)]
    MissingSource(PathBuf, String),
    /// The image's links loop.
    #[error("{}: too many levels of symbolic links in the image", .0.display())]
    SymlinkLoop(PathBuf),
    /// A path component in the image is not a directory.
    #[error("{}: {} in the image is not a directory", path.display(), component.display())]
    NotADirectory {
        /// The path resolved.
        path: PathBuf,
        /// Its component that is not a directory.
        component: PathBuf,
    },
    /// `--workdir` is not a directory.
    #[error("--workdir: {}: not a directory", .0.display())]
    Workdir(PathBuf),
    /// `--pwd` is relative.
    #[error("--pwd: {}: must be an absolute path", .0.display())]
    Pwd(PathBuf),
}

/// Computes the plan.
pub fn plan(
    input: &PlanInput<'_>,
    host_fs: &dyn HostFs,
    tree: &dyn ImageTree,
) -> Result<Plan, PlanError> {
    let (opts, host) = (input.opts, input.host);
    let (uid_map, gid_map) = if opts.fakeroot {
        (format!("0 {} 1\n", host.uid), format!("0 {} 1\n", host.gid))
    } else {
        (
            format!("{0} {0} 1\n", host.uid),
            format!("{0} {0} 1\n", host.gid),
        )
    };
    if let Some(w) = &opts.workdir
        && host_fs.kind(w) != Some(TargetKind::Dir)
    {
        return Err(PlanError::Workdir(w.clone()));
    }
    if let Some(p) = &opts.pwd
        && !p.is_absolute()
    {
        return Err(PlanError::Pwd(p.clone()));
    }
    let home = host.home.clone();
    let wants = mounts::wanted(input, host_fs)?;
    let (mut mounts, mut synth) = mounts::resolve_all(wants, tree)?;
    let mut files = etc_files::generate(tree, input, &home);
    mounts::add_generated(input, &mut mounts, &mut synth, &mut files);
    let (cwd, cwd_required) = match &opts.pwd {
        Some(p) => (p.clone(), true),
        None => (host.cwd.clone(), false),
    };
    Ok(Plan {
        uid_map,
        gid_map,
        mounts,
        synth,
        files,
        cwd,
        cwd_required,
        home,
        writable_tmpfs: opts.writable_tmpfs,
    })
}
