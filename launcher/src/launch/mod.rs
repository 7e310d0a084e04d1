//! `sifrun exec|run|shell` and a Slurm step's holder: the unprivileged
//! container, step by step.
//!
//! [`launch`] reads top to bottom: the ECL gate ([`ecl_gate`]), serve the
//! image ([`crate::serve`]), gather the host's side (`host`,
//! [`crate::host_binds`], [`crate::slurm_client`]), make the plan
//! ([`crate::plan`], [`crate::command`]), stage it ([`crate::stage`]),
//! mount the image, spawn the container (`spawn`: [`crate::init`] or
//! [`crate::hold`]) and wait. Each phase is logged with its duration
//! (`sifrun -v`, `SIFRUN_LOG=launcher=info`).
//!
//! Process layout:
//!
//! * The launcher (P) opens and indexes the image while single-threaded,
//!   computes the plan, then unshares user and mount namespaces, maps the
//!   user to itself (or to root with `--fakeroot`), mounts a private
//!   staging tmpfs and the FUSE image on it, and forks.
//! * P serves the image (FUSE worker and readahead threads), forwards
//!   signals, and exits with the container's status once it ends. The
//!   namespaces hold nothing else, so no mount and no process outlives it.
//! * The child (C) is PID 1 of a new PID namespace: it applies the plan
//!   (binds, pivot_root, cwd), then forks the command (C') and reaps until
//!   C' exits. When PID 1 exits the kernel kills everything left in the
//!   namespace.
//! * C' sets no-new-privileges, restores the signal mask and execs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::{SigmaskHow, sigprocmask};

use crate::env::{ContainerEnv, EnvOptions, user_env_script};
use crate::fuse::Synth;
use crate::plan::{Plan, PlanInput, RunOptions, plan};
use crate::serve::{self, Served};
use crate::squash::{ROOT_INO, Tuning};
use crate::syscall::Linux;

pub(crate) mod ahead;
mod ecl_gate;
mod error;
pub(crate) mod host;
mod spawn;

pub use crate::command::Action;
pub use crate::hold::{DEFAULT_SLURM_CONF, Hold};
pub use crate::host_binds::{FABRIC_LIB_DIR, GPU_LIB_DIR};
pub use ecl_gate::{SITE_CONFIG, ecl_gate, ecl_gate_with};
pub use error::LaunchError;
pub(crate) use error::setup;
pub use host::host_facts;

/// A whole launch.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The SIF image.
    pub image: PathBuf,
    /// The options that shape the container.
    pub run: RunOptions,
    /// The environment options.
    pub env: EnvOptions,
    /// What to run.
    pub action: Action,
    /// The squashfs server's tuning.
    pub tuning: Tuning,
    /// FUSE worker threads.
    pub threads: usize,
    /// Give the container its own PID namespace (not for Slurm: tasks that
    /// join from outside must see themselves in /proc).
    pub pid_namespace: bool,
    /// Which host GPUs to integrate.
    pub gpu: gpu::GpuPolicy,
    /// Bind the host's network filesystems at their paths.
    pub netfs: bool,
    /// Filesystem types to bind besides the default ones.
    pub netfs_types: Vec<String>,
    /// What the host's InfiniBand, Slingshot and Omni-Path give.
    pub fabric: interconnect::fabric::Policy,
    /// The host environment to start from instead of the process's (`sifrun
    /// exec --host-env-file`: Slurm's oci.conf `%e` file, when Slurm runs
    /// sifrun as its OCI runtime); a Slurm step's holder has the job's.
    pub host_env: Option<Vec<(String, String)>>,
}

/// Logs the end of set-up phase `name`, begun at `started`.
pub(crate) fn phase_done(name: &str, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        phase = name,
        ms = format_args!("{ms:.1}"),
        "set-up phase done"
    );
}

/// Runs phase `name`, logging its duration.
fn timed<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let r = f();
    phase_done(name, started);
    r
}

/// The plan and what the container's first process needs with it.
pub(crate) struct Prepared {
    pub(crate) plan: Plan,
    pub(crate) argv: Vec<OsString>,
    /// The command goes through the image's shell.
    pub(crate) wrapped: bool,
    pub(crate) env: ContainerEnv,
    /// The host's Slurm client is in the plan.
    pub(crate) client: bool,
}

/// Computes the plan and the command from the host's side and the image.
fn prepare(l: &Launch, served: &Served, h: &host::HostSide) -> Result<Prepared, LaunchError> {
    prepare_with(l, served.squash.as_ref(), &host::RealHost, h)
}

/// [`prepare`] over any image tree and view of the host (the privileged
/// path reads the kernel's mount of the verified image and the host as
/// the user's opener sees it).
pub(crate) fn prepare_with(
    l: &Launch,
    tree: &dyn crate::plan::ImageTree,
    host_fs: &dyn crate::plan::HostFs,
    h: &host::HostSide,
) -> Result<Prepared, LaunchError> {
    let env = crate::command::environment(&h.env, &l.env, &h.facts.home, &h.binds.lib_dirs)?;
    for w in &env.warnings {
        tracing::warn!("{w}");
    }
    let (argv, wrapped) = crate::command::argv(&l.action, tree)?;
    let env_script = wrapped.then(|| user_env_script(&env));
    let input = PlanInput {
        host_binds: &h.binds.binds,
        slurm_client: h.client.as_ref().map(|(c, _)| c),
        service_accounts: h.client.as_ref().map_or(&[], |(_, a)| a.as_slice()),
        env_script: env_script.as_deref(),
        ..PlanInput::new(&l.run, &h.facts)
    };
    let plan = plan(&input, host_fs, tree)?;
    tracing::debug!(plan = %plan.render(), "the plan");
    Ok(Prepared {
        plan,
        argv,
        wrapped,
        env,
        client: h.client.is_some(),
    })
}

/// Checks that the container's user can enter the image's root directory
/// (FUSE applies the image's permissions): otherwise every mount onto the
/// root would fail with a bare "permission denied".
fn check_image_root(
    l: &Launch,
    served: &Served,
    facts: &crate::plan::HostFacts,
) -> Result<(), LaunchError> {
    let Some(root) = served.squash.inode(ROOT_INO) else {
        return Ok(());
    };
    let (uid, gid) = if l.run.fakeroot {
        (0, 0)
    } else {
        (facts.uid, facts.gid)
    };
    let mode = root.perm;
    let enters = mode & 0o001 != 0
        || (root.uid == uid && mode & 0o100 != 0)
        || (root.gid == gid && mode & 0o010 != 0)
        // Root of the user namespace overrides permissions on what it owns.
        || (l.run.fakeroot && root.uid == 0 && root.gid == 0);
    if enters {
        return Ok(());
    }
    Err(LaunchError::ImageRoot {
        image: l.image.clone(),
        mode,
        owner: root.uid,
        group: root.gid,
        user: uid,
    })
}

/// Runs the container; returns its exit status.
pub fn launch(l: &Launch) -> Result<i32, LaunchError> {
    // Preflight, while nothing has changed yet.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(LaunchError::Fuse)?;
    let checked = timed("ecl gate", || match &l.action {
        Action::Hold(h) => Ok(h.image_file.clone()),
        _ => ecl_gate(&l.image),
    })?;
    let served = timed("serve", || {
        let tuning = Tuning {
            prefetch_threads: 0,
            ..l.tuning
        };
        match checked {
            Some(f) => serve::open_image_file(f, &l.image, tuning),
            None => serve::open_image(&l.image, tuning),
        }
    })?;
    let host = timed("host facts", || host::gather(l, host_facts()?))?;
    check_image_root(l, &served, &host.facts)?;
    let prepared = timed("plan", || prepare(l, &served, &host))?;
    let ahead = step_command(l, &served, &prepared);
    let synth = timed("synthesise targets", || {
        let mut synth = Synth::new(&served.squash);
        for (p, k) in &prepared.plan.synth {
            synth.ensure(&served.squash, p, *k)?;
        }
        Ok::<_, LaunchError>(synth)
    })?;
    // Signals are taken with sigwaitinfo from here on (C' restores the mask).
    let signals = crate::init::signal_set();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| setup("blocking signals")(crate::syscall::to_io(e)))?;
    let sys = Linux::default();
    let root = timed("stage", || crate::stage::stage(&prepared.plan, &sys))?;
    let session = timed("mount the image", || {
        serve::mount(&served, synth, &root, l.threads)
    })?;
    let spawned = timed("spawn", || {
        spawn::spawn(
            l,
            &prepared,
            &host.env,
            sys,
            session,
            &signals,
            ahead.as_ref(),
        )
    })?;
    spawn::serve_and_wait(l, &served, spawned, signals, ahead)
}

/// What to warm for a Slurm step's command ([`Hold::command`]), found the
/// way the tasks' exec will find it (see `ahead`).
fn step_command(l: &Launch, served: &Served, p: &Prepared) -> Option<ahead::Warm> {
    let Action::Hold(h) = &l.action else {
        return None;
    };
    let tree = served.squash.as_ref();
    let mut warm = ahead::warm(tree, h.command.as_deref()?, ahead::task_path(&p.env))?;
    warm.ino = served.squash.lookup_path(&warm.file);
    warm.page_cache = served.squash.compression() == crate::squash::Compression::Lz4;
    Some(warm)
}
