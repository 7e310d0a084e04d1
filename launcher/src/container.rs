//! `sifrun exec|run|shell`: the unprivileged container.
//!
//! Process layout:
//!
//! * The launcher (P) opens and indexes the image while single-threaded,
//!   computes the plan, then unshares user, mount and PID namespaces, maps
//!   the user to itself (or to root with `--fakeroot`), mounts a private
//!   tmpfs staging area and the FUSE image on it, and forks.
//! * P serves the image (FUSE worker and readahead threads), forwards
//!   signals, and exits with the container's status once it ends. The
//!   namespaces hold nothing else, so no mount and no process outlives it.
//! * The child (C) is PID 1 of the new PID namespace: it takes its own copy of
//!   the mount namespace, applies the plan (binds, pivot_root, cwd), then
//!   forks the command (C') and reaps until C' exits. When PID 1 exits the
//!   kernel kills everything left in the namespace.
//! * C' sets no-new-privileges, restores the signal mask and execs.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Group, Pid, Uid, User, execve, getgroups};

use crate::apply::{ApplyError, apply};
use crate::env::{ContainerEnv, EnvError, EnvOptions, container_env, user_env_script};
use crate::fuse::{Synth, SynthError, TargetKind};
use crate::plan::{
    HostFacts, HostFs, ImageTree, MountOp, Plan, PlanError, RunOptions, Source, plan,
};
use crate::serve::{self, ServeError};
use crate::squash::Tuning;
use crate::syscall::{self, Forked, Linux};
use slurm_conf::protocol::{Report, Stage};

/// What to run.
#[derive(Clone, Debug)]
pub enum Action {
    /// A command resolved inside the container.
    Exec(Vec<OsString>),
    /// The image's runscript with these arguments.
    Run(Vec<OsString>),
    /// The image's shell.
    Shell(Vec<OsString>),
    /// No command: set the container up, print the report (the tasks'
    /// environment changes, see `slurm_conf::protocol`) on standard output, and
    /// hold the user and mount namespaces until SIGTERM, for Slurm tasks to
    /// join (`sifrun slurm-hold`).
    Hold(Hold),
}

/// What a Slurm step's holder needs beyond the options.
#[derive(Clone, Debug, Default)]
pub struct Hold {
    /// The job's environment, which the tasks' is computed from.
    pub job_env: Vec<(String, String)>,
    /// Make the host's Slurm client usable inside (a batch step's script
    /// starts steps with srun): see [`crate::slurm_client`].
    pub slurm_client: bool,
    /// The image, already open (and checked against the ECL).
    pub image_file: Option<std::sync::Arc<std::fs::File>>,
    /// slurm.conf as slurmstepd sees it (spool directory, service accounts,
    /// plugstack.conf): the holder's own environment is cleared.
    pub slurm_conf: PathBuf,
}

/// A whole launch.
#[derive(Clone, Debug)]
pub struct Launch {
    pub image: PathBuf,
    pub run: RunOptions,
    pub env: EnvOptions,
    pub action: Action,
    pub tuning: Tuning,
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
}

/// The site's admin file; with an activated `[ecl]` it decides which images
/// `sifrun exec|run|shell` run (a fixed path: the caller's environment must
/// not choose it).
pub const SITE_CONFIG: &str = "/etc/sifrun/sifrun.toml";

/// With an activated ECL in [`SITE_CONFIG`], opens `image`, checks it and
/// returns the file to serve; `None` when there is no ECL to apply.
pub fn ecl_gate(image: &Path) -> Result<Option<std::sync::Arc<fs::File>>, LaunchError> {
    ecl_gate_with(Path::new(SITE_CONFIG), image)
}

/// [`ecl_gate`] with another admin file (the Slurm holder's `config=`).
pub fn ecl_gate_with(
    config: &Path,
    image: &Path,
) -> Result<Option<std::sync::Arc<fs::File>>, LaunchError> {
    if !config.exists() {
        return Ok(None);
    }
    let ecl = slurm_conf::ecl::Ecl::load(config).map_err(LaunchError::Ecl)?;
    if !ecl.activated {
        return Ok(None);
    }
    let file = fs::File::open(image).map_err(|source| {
        LaunchError::Serve(ServeError::Open {
            path: image.to_owned(),
            source,
        })
    })?;
    let d = crate::ecl_check::check(&file, image, &ecl, Some(0))
        .map_err(|e| LaunchError::Ecl(e.to_string()))?;
    if !d.allowed {
        return Err(LaunchError::Ecl(format!(
            "{}: denied{}: {}",
            image.display(),
            d.group
                .map(|g| format!(" by execgroup {g:?}"))
                .unwrap_or_default(),
            d.reason
        )));
    }
    Ok(Some(std::sync::Arc::new(file)))
}

/// The binds that integrate the host's GPUs under `policy` (driver
/// libraries into [`GPU_LIB_DIR`], tools into /usr/bin, the persistenced
/// socket), and whether any library was bound. Warnings go to stderr.
fn gpu_binds(
    policy: gpu::GpuPolicy,
    host_env: &[(String, String)],
) -> Result<(Vec<crate::bind::BindSpec>, bool), LaunchError> {
    use crate::bind::BindSpec;
    use gpu::GpuPolicy;
    let var = |k: &str| {
        host_env
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let root = Path::new("/");
    let (mut libraries, mut tools, mut files, mut warnings) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if matches!(policy, GpuPolicy::Nvidia | GpuPolicy::Auto) {
        let caps = gpu::nvidia::capabilities(var("NVIDIA_DRIVER_CAPABILITIES"));
        match gpu::nvidia::discover(root, &caps, var("NVIDIA_VISIBLE_DEVICES")) {
            Some(n) => {
                libraries.extend(n.libraries);
                tools.extend(n.tools);
                files.extend(n.files);
                warnings.extend(n.warnings.into_iter().map(|w| format!("--nv: {w}")));
            }
            None if policy == GpuPolicy::Nvidia => {
                return Err(LaunchError::Gpu(
                    "--nv: this host has no NVIDIA driver (no /dev/nvidiactl)".into(),
                ));
            }
            None => {}
        }
    }
    if matches!(policy, GpuPolicy::Rocm | GpuPolicy::Auto) {
        match gpu::rocm::discover(root) {
            Some(r) => {
                for lib in r.libraries {
                    if !libraries
                        .iter()
                        .any(|(s, _): &(String, PathBuf)| *s == lib.0)
                    {
                        libraries.push(lib);
                    }
                }
                tools.extend(r.tools);
                warnings.extend(r.warnings.into_iter().map(|w| format!("--rocm: {w}")));
            }
            None if policy == GpuPolicy::Rocm => {
                return Err(LaunchError::Gpu(
                    "--rocm: this host has no AMD GPU driver (no /dev/kfd)".into(),
                ));
            }
            None => {}
        }
    }
    for w in &warnings {
        eprintln!("sifrun: warning: {w}");
    }
    let mut binds = Vec::new();
    binds.extend(library_binds(&libraries, GPU_LIB_DIR));
    for tool in &tools {
        binds.push(BindSpec {
            source: tool.clone(),
            target: Path::new("/usr/bin").join(tool.file_name().unwrap_or_default()),
            readonly: true,
        });
    }
    for f in &files {
        binds.push(BindSpec {
            source: f.clone(),
            target: f.clone(),
            readonly: false,
        });
    }
    Ok((binds, !libraries.is_empty()))
}

/// Where the host's GPU driver libraries appear inside (first on
/// LD_LIBRARY_PATH).
pub const GPU_LIB_DIR: &str = "/.sifrun/gpu/lib";

/// Read-only binds of host libraries, (soname, host path), as `dir/soname`.
fn library_binds<'a>(
    libraries: &'a [(String, PathBuf)],
    dir: &'a str,
) -> impl Iterator<Item = crate::bind::BindSpec> + 'a {
    libraries
        .iter()
        .map(move |(soname, path)| crate::bind::BindSpec {
            source: path.clone(),
            target: Path::new(dir).join(soname),
            readonly: true,
        })
}

/// Where the host's fabric libraries appear inside (on LD_LIBRARY_PATH
/// after the GPU's).
pub const FABRIC_LIB_DIR: &str = "/.sifrun/fabric/lib";

/// The binds for the host's fabrics under `policy`: libraries into
/// [`FABRIC_LIB_DIR`], provider and configuration directories read-only at
/// their paths, and each masked device node bound over itself `nodev`
/// (it stays visible; opening it fails). Warnings go to stderr.
fn fabric_binds(
    root: &Path,
    policy: interconnect::fabric::Policy,
) -> (Vec<crate::bind::BindSpec>, bool) {
    use crate::bind::BindSpec;
    let Some(f) = interconnect::fabric::discover(root, policy) else {
        return (Vec::new(), false);
    };
    for w in &f.warnings {
        eprintln!("sifrun: warning: fabric: {w}");
    }
    let mut binds = Vec::new();
    binds.extend(library_binds(&f.libraries, FABRIC_LIB_DIR));
    for p in f.dirs.iter().chain(&f.files).chain(&f.masked) {
        binds.push(BindSpec {
            source: p.clone(),
            target: p.clone(),
            readonly: true,
        });
    }
    (binds, !f.libraries.is_empty())
}

/// Why a container could not start.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("mount target {0}")]
    Synth(#[from] SynthError),
    #[error(
        "/dev/fuse: {0} (it must be mode 0666, as Debian's fuse3 udev rule makes it; ask your administrator)"
    )]
    Fuse(io::Error),
    #[error(
        "cannot create a user namespace: {0} (unprivileged user namespaces may be disabled: check user.max_user_namespaces and kernel.unprivileged_userns_clone)"
    )]
    UserNamespace(io::Error),
    #[error("setting up the container: {what}: {source}")]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("who are you? uid {0} has no passwd entry")]
    NoUser(u32),
    #[error("{0}")]
    Gpu(String),
    #[error("ECL: {0}")]
    Ecl(String),
}

fn setup(what: impl Into<String>) -> impl FnOnce(io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Setup { what, source }
}

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

struct RealHost;

impl HostFs for RealHost {
    fn kind(&self, path: &Path) -> Option<TargetKind> {
        let m = fs::metadata(path).ok()?;
        Some(if m.is_dir() {
            TargetKind::Dir
        } else {
            TargetKind::File
        })
    }

    fn why_missing(&self, path: &Path) -> String {
        match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                "permission denied (you cannot reach it on the host)".into()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => "no such file or directory".into(),
            Err(e) => e.to_string(),
            Ok(_) => "no such file or directory".into(),
        }
    }
}

/// Facts about the calling user.
pub fn host_facts() -> Result<HostFacts, LaunchError> {
    let uid = Uid::current();
    let gid = Gid::current();
    let user = User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or(LaunchError::NoUser(uid.as_raw()))?;
    let mut group_lines = Vec::new();
    let mut gids = vec![gid];
    gids.extend(
        getgroups()
            .unwrap_or_default()
            .into_iter()
            .filter(|g| *g != gid),
    );
    for g in gids {
        if let Ok(Some(gr)) = Group::from_gid(g) {
            group_lines.push(format!("{}:x:{}:{}", gr.name, gr.gid, gr.mem.join(",")));
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Ok(HostFacts {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        passwd_line: format!(
            "{}:x:{}:{}:{}:{}:{}",
            user.name,
            uid,
            gid,
            user.gecos.to_string_lossy(),
            user.dir.display(),
            user.shell.display()
        ),
        user: user.name,
        home: user.dir,
        cwd,
        group_lines,
    })
}

/// The shell snippet that reads the image's environment scripts and ours.
const ENV_PRELUDE: &str = "for f in /.singularity.d/env/*.sh; do if [ -r \"$f\" ]; then . \"$f\"; fi; done\n\
if [ -r /.sifrun/env.sh ]; then . /.sifrun/env.sh; fi\n";

const EXEC_SCRIPT: &str = "case \"$1\" in\n\
*/*) if [ ! -e \"$1\" ]; then echo \"sifrun: exec: $1: no such file in the container\" >&2; exit 127; fi\n\
     if [ -d \"$1\" ] || [ ! -x \"$1\" ]; then echo \"sifrun: exec: $1: not executable\" >&2; exit 126; fi ;;\n\
*) if ! command -v \"$1\" >/dev/null 2>&1; then echo \"sifrun: exec: $1: command not found in the container\" >&2; exit 127; fi ;;\n\
esac\n\
exec \"$@\"\n";

/// Whether the image has `/.singularity.d/env/*.sh` scripts.
fn has_env_scripts(tree: &dyn ImageTree) -> bool {
    let Ok(dir) = crate::plan::resolve_in_image(tree, Path::new("/.singularity.d/env")) else {
        return false;
    };
    tree.list(&dir)
        .is_some_and(|names| names.iter().any(|n| n.as_bytes().ends_with(b".sh")))
}

/// The argument vector the container runs, and whether it uses the image's shell.
pub fn argv(action: &Action, tree: &dyn ImageTree) -> Result<(Vec<OsString>, bool), PlanError> {
    let exists = |p: &str| -> Result<bool, PlanError> {
        let r = crate::plan::resolve_in_image(tree, Path::new(p))?;
        Ok(matches!(tree.entry(&r), Some(crate::plan::Entry::File)))
    };
    let has_sh = exists("/bin/sh")?;
    let wrap = |body: String, args: &[OsString]| {
        let mut v: Vec<OsString> = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("{ENV_PRELUDE}{body}").into(),
            "sifrun".into(),
        ];
        v.extend(args.iter().cloned());
        v
    };
    Ok(match action {
        Action::Exec(cmd) if has_sh => (wrap(EXEC_SCRIPT.into(), cmd), true),
        Action::Exec(cmd) => (cmd.clone(), false),
        Action::Run(args) => {
            let script = ["/.singularity.d/runscript", "/singularity", "/apptainer"]
                .into_iter()
                .find(|p| exists(p).unwrap_or(false));
            match (script, has_sh) {
                (Some(s), true) => (wrap(format!("exec {s} \"$@\"\n"), args), true),
                (Some(s), false) => {
                    let mut v = vec![OsString::from(s)];
                    v.extend(args.iter().cloned());
                    (v, false)
                }
                (None, true) => (wrap("exec /bin/sh \"$@\"\n".into(), args), true),
                (None, false) => (vec![OsString::from("/bin/sh")], false),
            }
        }
        // The image's shell computes the tasks' environment only when the
        // image has environment scripts (it costs a process start).
        Action::Hold(_) => (Vec::new(), has_sh && has_env_scripts(tree)),
        Action::Shell(args) => {
            let shell = if exists("/bin/bash")? {
                "/bin/bash --norc"
            } else {
                "/bin/sh"
            };
            if has_sh {
                (wrap(format!("exec {shell} \"$@\"\n"), args), true)
            } else {
                (vec![OsString::from("/bin/sh")], false)
            }
        }
    })
}

fn write_proc(path: &str, text: &str) -> Result<(), LaunchError> {
    fs::write(path, text).map_err(setup(format!("writing {path}")))
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

fn exit_code(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        _ => 255,
    }
}

/// Runs the container; returns its exit status.
pub fn launch(l: &Launch) -> Result<i32, LaunchError> {
    // Preflight, while nothing has changed yet.
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(LaunchError::Fuse)?;
    let tuning = Tuning {
        prefetch_threads: 0,
        ..l.tuning
    };
    let checked = match &l.action {
        Action::Hold(h) => h.image_file.clone(),
        _ => ecl_gate(&l.image)?,
    };
    let served = match checked {
        Some(f) => serve::open_image_file(f, &l.image, tuning)?,
        None => serve::open_image(&l.image, tuning)?,
    };
    let facts = host_facts()?;
    if l.run.contain
        && let Some(w) = &l.run.workdir
    {
        for sub in ["tmp", "var_tmp", "home"] {
            let d = w.join(sub);
            fs::create_dir_all(&d)
                .map_err(setup(format!("--workdir: creating {}", d.display())))?;
        }
    }
    let host_env: Vec<(String, String)> = match &l.action {
        Action::Hold(h) => h.job_env.clone(),
        _ => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    let client = match &l.action {
        Action::Hold(h) if h.slurm_client => {
            crate::slurm_client::plan(&crate::slurm_client::real_host)
        }
        _ => None,
    };
    let mut run = l.run.clone();
    let (mut gpu_binds, gpu_libs) = gpu_binds(l.gpu, &host_env)?;
    let (mut fabric_binds, fabric_libs) = fabric_binds(Path::new("/"), l.fabric);
    gpu_binds.append(&mut fabric_binds);
    gpu_binds.append(&mut run.binds);
    run.binds = gpu_binds;
    // Integration over isolation: network filesystems and, for a Slurm
    // step, what its MPI ranks need for PMIx, at the host's paths; the
    // user's own binds come after (and win on the same target).
    let mut host_paths: Vec<PathBuf> = Vec::new();
    if l.netfs {
        let mut types: Vec<&str> = interconnect::netfs::DEFAULT_TYPES.to_vec();
        types.extend(l.netfs_types.iter().map(String::as_str));
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        host_paths.extend(interconnect::netfs::mounts(&mountinfo, &types));
    }
    let slurm = match &l.action {
        Action::Hold(h) => Some(slurm_conf::slurm::SlurmConf::load(&h.slurm_conf)),
        _ => None,
    };
    if let Some(conf) = &slurm {
        let spool = conf.spool_dir();
        host_paths.extend(interconnect::pmix::binds(&host_env, &spool, &|p| {
            p.exists()
        }));
    }
    if !host_paths.is_empty() {
        let mut binds: Vec<crate::bind::BindSpec> = host_paths
            .into_iter()
            .map(|p| crate::bind::BindSpec {
                source: p.clone(),
                target: p,
                readonly: false,
            })
            .collect();
        binds.append(&mut run.binds);
        run.binds = binds;
    }
    if let Some(c) = &client {
        let mut binds = c.binds.clone();
        // srun loads the SPANK plugins of plugstack.conf too.
        let plugstack = match (&slurm, &l.action) {
            (Some(conf), Action::Hold(h)) => {
                slurm_conf::slurm::host_plugstack_plugins(&conf.plugstack_path(&h.slurm_conf))
            }
            _ => Vec::new(),
        };
        for p in plugstack.into_iter().filter(|p| p.is_file()) {
            binds.push(crate::bind::BindSpec {
                source: p.clone(),
                target: p,
                readonly: true,
            });
        }
        binds.append(&mut run.binds);
        run.binds = binds;
    }
    let mut plan = plan(&run, &facts, &RealHost, served.squash.as_ref())?;
    if client.is_some()
        && let Some(conf) = &slurm
    {
        let accounts =
            conf.service_accounts(&fs::read_to_string("/etc/passwd").unwrap_or_default());
        if let Some((_, passwd)) = plan.files.iter_mut().find(|(n, _)| n == "passwd") {
            let text = String::from_utf8_lossy(passwd).into_owned();
            for line in accounts {
                let name = line.split(':').next().unwrap_or("");
                if !text.lines().any(|l| l.split(':').next() == Some(name)) {
                    passwd.extend_from_slice(line.as_bytes());
                    passwd.push(b'\n');
                }
            }
        }
    }
    for (cmd, script) in client.iter().flat_map(|c| &c.scripts) {
        // Generated files named exec-* are made executable below.
        let name = format!("exec-slurm-{cmd}");
        let target = Path::new(crate::slurm_client::BIN_DIR).join(cmd);
        plan.synth.push((target.clone(), TargetKind::File));
        plan.mounts.push(MountOp {
            source: Source::Generated(name.clone()),
            target: target.clone(),
            resolved: target,
            kind: TargetKind::File,
            readonly: true,
            allow_devices: false,
            in_host_dir: false,
        });
        plan.files.push((name, script.clone().into_bytes()));
    }
    let mut cenv = container_env(&host_env, &l.env, &plan.home.to_string_lossy())?;
    let lib_dirs: Vec<&str> = [(gpu_libs, GPU_LIB_DIR), (fabric_libs, FABRIC_LIB_DIR)]
        .iter()
        .filter(|(used, _)| *used)
        .map(|(_, d)| *d)
        .collect();
    if !lib_dirs.is_empty() {
        cenv.base
            .insert("LD_LIBRARY_PATH".into(), lib_dirs.join(":"));
    }
    for w in &cenv.warnings {
        eprintln!("sifrun: warning: {w}");
    }
    let (argv, wrapped) = argv(&l.action, served.squash.as_ref())?;
    if wrapped {
        let target = PathBuf::from("/.sifrun/env.sh");
        plan.synth.push((target.clone(), TargetKind::File));
        plan.mounts.push(MountOp {
            source: Source::Generated("env.sh".into()),
            target: target.clone(),
            resolved: target,
            kind: TargetKind::File,
            readonly: true,
            allow_devices: false,
            in_host_dir: false,
        });
        plan.files
            .push(("env.sh".into(), user_env_script(&cenv).into_bytes()));
    }
    let mut synth = Synth::new(&served.squash);
    for (p, k) in &plan.synth {
        synth.ensure(&served.squash, p, *k)?;
    }

    // Signals are taken with sigwaitinfo from here on (C' restores the mask).
    let signals = signal_set();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None)
        .map_err(|e| setup("blocking signals")(nix_io(e)))?;

    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| LaunchError::UserNamespace(nix_io(e)))?;
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &plan.uid_map)?;
    write_proc("/proc/self/gid_map", &plan.gid_map)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| setup("making mounts private")(nix_io(e)))?;

    // Host sources are opened now, before the staging tmpfs covers /tmp.
    let mut sources: HashMap<PathBuf, OwnedFd> = HashMap::new();
    let mut wanted: Vec<PathBuf> = plan
        .mounts
        .iter()
        .filter_map(|m| match &m.source {
            Source::Host { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect();
    wanted.push("/proc".into());
    for p in wanted {
        let fd = nix::fcntl::open(&p, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| setup(format!("opening {}", p.display()))(nix_io(e)))?;
        sources.insert(p, fd);
    }
    let staging = Path::new("/tmp");
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700,size=64m"),
    )
    .map_err(|e| setup("mounting the staging tmpfs")(nix_io(e)))?;
    let (root, files, scratch) = (
        staging.join("root"),
        staging.join("files"),
        staging.join("scratch"),
    );
    for d in [&root, &files, &scratch] {
        fs::create_dir(d).map_err(setup(format!("creating {}", d.display())))?;
    }
    for (name, bytes) in &plan.files {
        fs::write(files.join(name), bytes)
            .map_err(setup(format!("writing the generated {name}")))?;
        if name.starts_with("exec-") {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(files.join(name), fs::Permissions::from_mode(0o755))
                .map_err(setup(format!("making the generated {name} executable")))?;
        }
    }
    let session = serve::mount(&served, synth, &root, l.threads)?;

    let linux = std::cell::RefCell::new(Some(Linux::new(root, files, scratch, sources)));
    let session = std::cell::RefCell::new(Some(session));
    let hold = matches!(l.action, Action::Hold(_));
    let client_path = client.is_some();
    let init = || {
        // The session belongs to P: dropping it here would unmount the
        // image in the namespace P still serves.
        std::mem::forget(session.borrow_mut().take());
        let sys = linux.borrow_mut().take().expect("runs once");
        if hold {
            container_hold(&plan, sys, &signals, &cenv, wrapped, &host_env, client_path)
        } else {
            container_init(&plan, sys, &argv, wrapped, &cenv, &signals)
        }
    };
    let child = if l.pid_namespace {
        syscall::spawn_pid_namespace(init)
    } else {
        match syscall::fork_single_threaded() {
            Ok(Forked::Child) => std::process::exit(init()),
            Ok(Forked::Parent(pid)) => Ok(pid),
            Err(e) => Err(e),
        }
    }
    .map_err(setup("starting the container"))?;
    let session = session.into_inner().expect("still here in the parent");
    drop(linux);

    // P: serve the image, forward signals, wait for the container.
    served.squash.start_readahead(l.tuning);
    std::thread::spawn(move || {
        let _ = session.run();
    });
    let forward = signals;
    std::thread::spawn(move || {
        loop {
            match syscall::wait_signal(&forward) {
                Ok((sig, sent_by_process)) => {
                    if sig != libc::SIGCHLD
                        && sent_by_process
                        && let Ok(s) = Signal::try_from(sig)
                    {
                        let _ = kill(child, s);
                    }
                }
                Err(_) => return,
            }
        }
    });
    loop {
        match waitpid(child, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Ok(exit_code(status));
            }
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(setup("waiting for the container")(nix_io(e))),
        }
    }
}

/// A holder's failure, reported to the plugin (see `slurm_conf::protocol`).
fn hold_failed(stage: Stage, message: String) -> i32 {
    let _ = Report::failed(stage, message).write_to(&mut io::stdout());
    255
}

/// The holder of a Slurm step's container: set up the root, report the
/// tasks' environment and ready, wait for SIGTERM. Tasks join its
/// namespaces with setns.
fn container_hold(
    plan: &Plan,
    sys: Linux,
    signals: &SigSet,
    env: &ContainerEnv,
    has_sh: bool,
    job_env: &[(String, String)],
    slurm_client: bool,
) -> i32 {
    // The holder's server is our parent: never outlive it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Err(e) = apply(plan, &sys) {
        return hold_failed(
            Stage::Setup,
            format!("sifrun: setting up the container: {e}"),
        );
    }
    drop(sys);
    let task_env = if has_sh {
        match image_env(env) {
            Ok(e) => e,
            Err(e) => {
                return hold_failed(
                    Stage::Environment,
                    format!("sifrun: reading the image's environment scripts: {e}"),
                );
            }
        }
    } else {
        let mut e: Vec<(String, String)> = env.base.clone().into_iter().collect();
        for (k, v) in &env.user {
            e.retain(|(ek, _)| ek != k);
            e.push((k.clone(), v.clone()));
        }
        e
    };
    let mut task_env = task_env;
    if slurm_client {
        let bin = crate::slurm_client::BIN_DIR;
        match task_env.iter_mut().find(|(k, _)| k == "PATH") {
            Some((_, v)) => *v = format!("{bin}:{v}"),
            None => task_env.push(("PATH".into(), format!("{bin}:{}", crate::env::DEFAULT_PATH))),
        }
    }
    // Tasks (same user) open /proc/PID/ns/*: that needs a dumpable target.
    let _ = nix::sys::prctl::set_dumpable(true);
    let ready = Report::ready(slurm_conf::task_env::delta(job_env, &task_env));
    if ready.write_to(&mut io::stdout()).is_err() {
        return 255;
    }
    loop {
        match syscall::wait_signal(signals) {
            Ok((libc::SIGCHLD, _)) => {}
            Ok(_) => return 0,
            Err(_) => return 255,
        }
    }
}

/// The environment the image's `/.singularity.d/env` scripts and the user's
/// settings make from `env.base`: the image's shell sources them, then
/// execs a shell that waits, whose /proc environ is read.
fn image_env(env: &ContainerEnv) -> io::Result<Vec<(String, String)>> {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    const MARK: &str = "sifrun-environment-ready";
    let script = format!("{ENV_PRELUDE}exec /bin/sh -c 'echo {MARK}; read x'\n");
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .envs(env.base.iter())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut marked = false;
    for line in BufReader::new(stdout).lines() {
        if line?.trim() == MARK {
            marked = true;
            break;
        }
    }
    let environ = if marked {
        fs::read(format!("/proc/{}/environ", child.id()))
    } else {
        Err(io::Error::other("the image's shell ended early"))
    };
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    Ok(environ?
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// PID 1 of the container: set up the root, start the command, reap, return its status.
fn container_init(
    plan: &Plan,
    sys: Linux,
    argv: &[OsString],
    wrapped: bool,
    env: &ContainerEnv,
    signals: &SigSet,
) -> i32 {
    let fail = |msg: String| {
        let _ = writeln!(io::stderr(), "sifrun: {msg}");
        255
    };
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let applied = match apply(plan, &sys) {
        Ok(a) => a,
        Err(e @ ApplyError::Pwd { .. }) => return fail(e.to_string()),
        Err(e) => return fail(format!("setting up the container: {e}")),
    };
    drop(sys);
    if applied.cwd_fallback {
        let _ = writeln!(
            io::stderr(),
            "sifrun: warning: {} does not exist in the container; starting in {}",
            plan.cwd.display(),
            applied.cwd.display()
        );
    }
    let mut envp: Vec<(String, String)> = env
        .base
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !wrapped {
        // No shell to read the scripts: apply the user's settings directly.
        for (k, v) in &env.user {
            envp.retain(|(ek, _)| ek != k);
            envp.push((k.clone(), v.clone()));
        }
    }
    envp.push(("PWD".into(), applied.cwd.display().to_string()));
    let command = match syscall::fork_single_threaded() {
        Ok(Forked::Child) => exec_command(argv, &envp),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => return fail(format!("starting the command: {e}")),
    };
    reap(command, signals)
}

/// Reaps children until `command` exits; forwards signals sent to PID 1.
fn reap(command: Pid, signals: &SigSet) -> i32 {
    loop {
        // Reap whatever has exited (orphans re-parent to PID 1).
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) => {
                    if status.pid() == Some(command)
                        && matches!(status, WaitStatus::Exited(..) | WaitStatus::Signaled(..))
                    {
                        return exit_code(status);
                    }
                }
            }
        }
        match syscall::wait_signal(signals) {
            Ok((libc::SIGCHLD, _)) => {}
            Ok((sig, _)) => {
                if let Ok(s) = Signal::try_from(sig) {
                    let _ = kill(command, s);
                }
            }
            Err(_) => {}
        }
    }
}

/// The command process: no new privileges, default signal mask, exec.
fn exec_command(argv: &[OsString], env: &[(String, String)]) -> ! {
    let die = |code: i32, msg: String| -> ! {
        let _ = writeln!(io::stderr(), "sifrun: {msg}");
        std::process::exit(code)
    };
    if let Err(e) = nix::sys::prctl::set_no_new_privs() {
        die(255, format!("setting no-new-privileges: {e}"));
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let Some(first) = argv.first() else {
        die(255, "no command given".into())
    };
    let path = if first.as_bytes().contains(&b'/') {
        PathBuf::from(first)
    } else {
        let search = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(crate::env::DEFAULT_PATH.to_owned(), |(_, v)| v.clone());
        match search
            .split(':')
            .map(|d| Path::new(d).join(first))
            .find(|p| p.is_file())
        {
            Some(p) => p,
            None => die(
                127,
                format!(
                    "exec: {}: command not found in the container",
                    first.to_string_lossy()
                ),
            ),
        }
    };
    let c_argv: Vec<_> = match argv
        .iter()
        .map(|a| syscall::cstring(a))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(v) => v,
        Err(e) => die(255, format!("exec: {e}")),
    };
    let c_env: Vec<_> = env
        .iter()
        .filter_map(|(k, v)| syscall::cstring(OsStr::new(&format!("{k}={v}"))).ok())
        .collect();
    let c_path = match syscall::cstring(path.as_os_str()) {
        Ok(p) => p,
        Err(e) => die(255, format!("exec: {e}")),
    };
    let err = execve(&c_path, &c_argv, &c_env).unwrap_err();
    let code = if err == nix::Error::ENOENT { 127 } else { 126 };
    let what = match err {
        nix::Error::ENOENT => "no such file in the container".to_owned(),
        nix::Error::EACCES => "not executable".to_owned(),
        e => e.desc().to_owned(),
    };
    die(code, format!("exec: {}: {what}", path.display()))
}
