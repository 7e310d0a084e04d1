//! What each SPANK callback does, over the [`Spank`] trait.
//!
//! Lifecycle, one container per node per step:
//! * user_init (slurmstepd): start `sifrun slurm-hold` (fork+exec by std's
//!   Command: no Rust code runs between fork and exec), wait for its `ready`
//!   line or its error. The holder serves the image and holds the user and
//!   mount namespaces.
//! * task_init (each task, as the user): join the holder's user, then mount
//!   namespace, restore the working directory, set no-new-privileges. Any
//!   failure ends the task before it runs (see `ffi`).
//! * task_post_fork (slurmstepd, root): record the holder in the runtime
//!   directory, for the job epilog's sweep.
//! * exit (slurmstepd): stop the holder, drop the record.
//! * job_epilog (slurmd, root): kill whatever holder of the job is left
//!   (a killed slurmstepd, a node fault) and drop its records.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use slurm_conf::admin::AdminConfig;
use slurm_conf::holder::EnvChange;

use crate::options::{Args, OPTIONS};
use crate::spank::{Context, Spank};

/// The step's option values (one plugin instance per process).
pub static ARGS: Mutex<Args> = Mutex::new(Args {
    image: None,
    binds: Vec::new(),
    workdir: None,
    env: Vec::new(),
    writable_tmpfs: false,
    no_home: false,
    gpu: None,
    run: false,
});

fn args() -> std::sync::MutexGuard<'static, Args> {
    ARGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where `make install` puts the launcher; `launcher=` in plugstack.conf overrides it.
pub const DEFAULT_LAUNCHER: &str = "/usr/local/bin/sifrun";

/// The `launcher=` setting from plugstack.conf.
pub static LAUNCHER: Mutex<Option<String>> = Mutex::new(None);

/// Where per-step records live unless `runtime_dir=` says otherwise.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/sifrun";

/// The `runtime_dir=` setting from plugstack.conf.
pub static RUNTIME_DIR: Mutex<Option<String>> = Mutex::new(None);

/// The admin configuration (`config=` in plugstack.conf), or the defaults.
pub static CONFIG: Mutex<Option<AdminConfig>> = Mutex::new(None);

/// The `config=` path, which the holder re-reads for the ECL.
pub static CONFIG_PATH: Mutex<Option<String>> = Mutex::new(None);

/// The step's holder, as user_init left it for the tasks (forked later, they
/// inherit this memory) and for exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// Running; the changes the image makes to each task's environment.
    Ready {
        pid: i32,
        env: Vec<EnvChange>,
    },
    Failed(String),
}

pub static HOLDER: Mutex<Option<Holder>> = Mutex::new(None);

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An option value srun or salloc inherited from the allocation it runs in
/// (sbatch and salloc leave them in the environment, and Slurm replays them
/// through the option callbacks before the command line's).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Inherited {
    /// Not yet contradicted.
    Value(i32, String),
    /// The command line gave another value, which replaced this one.
    Replaced(i32, String),
}

static INHERITED: Mutex<Vec<Inherited>> = Mutex::new(Vec::new());

/// `slurm_spank_init`: checks the plugstack.conf arguments, then registers
/// the options where users can give them.
pub fn init(sp: &dyn Spank, plugstack_args: &[String]) -> Result<(), String> {
    take_plugstack_args(plugstack_args)?;
    if sp.context() == Context::Local {
        *lock(&INHERITED) = OPTIONS
            .iter()
            .filter_map(|o| {
                let v = sp.getenv(&crate::options::allocation_var(o.name))?;
                Some(Inherited::Value(o.val, v))
            })
            .collect();
    }
    match sp.context() {
        Context::Local | Context::Remote | Context::Allocator => {
            for opt in OPTIONS {
                sp.register(opt)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Checks and keeps the plugstack.conf arguments (and loads `config=`).
pub fn take_plugstack_args(plugstack_args: &[String]) -> Result<(), String> {
    let conf = slurm_conf::parse_plugstack_args(
        plugstack_args.iter().map(String::as_str),
        crate::PLUGSTACK_KEYS,
    )
    .map_err(|e| format!("plugstack.conf: {e}"))?;
    *lock(&LAUNCHER) = conf.get("launcher").cloned();
    *lock(&RUNTIME_DIR) = conf.get("runtime_dir").cloned();
    *lock(&CONFIG_PATH) = conf.get("config").cloned();
    if let Some(path) = conf.get("config") {
        let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
        let c = AdminConfig::load(Path::new(path), config_owner(), &names)
            .map_err(|e| format!("config: {e}"))?;
        *lock(&CONFIG) = Some(c);
    }
    Ok(())
}

/// The owner the admin file must have: root, where root runs us (slurmd,
/// slurmstepd); unchecked in the user's own srun, sbatch and salloc (see
/// `AdminConfig::load`); in unit tests, the tester.
fn config_owner() -> Option<u32> {
    if cfg!(test) {
        return Some(nix::unistd::getuid().as_raw());
    }
    nix::unistd::getuid().is_root().then_some(0)
}

fn config() -> AdminConfig {
    lock(&CONFIG).clone().unwrap_or_default()
}

/// An option callback.
pub fn option(val: i32, value: Option<&str>) -> Result<(), String> {
    if let Some(def) = OPTIONS.iter().find(|o| o.val == val)
        && config().forbids(def.name)
    {
        return Err(format!(
            "--{}: disabled on this cluster by the administrator",
            def.name
        ));
    }
    let value_str = value.unwrap_or("");
    let mut inherited = lock(&INHERITED);
    let mut a = args();
    for entry in inherited.iter_mut() {
        match entry {
            Inherited::Value(v, x) if *v == val && x != value_str => {
                // The step asks for something else than the allocation.
                a.clear(val);
                *entry = Inherited::Replaced(val, x.clone());
            }
            Inherited::Replaced(v, x) if *v == val && x == value_str => return Ok(()),
            _ => {}
        }
    }
    a.apply(val, value).map_err(|e| e.to_string())
}

/// The admin's limits on what a step asks for.
pub fn check_policy(a: &Args, c: &AdminConfig) -> Result<(), String> {
    let used = [
        ("sif-image", a.image.is_some()),
        ("sif-bind", !a.binds.is_empty()),
        ("sif-workdir", a.workdir.is_some()),
        ("sif-env", !a.env.is_empty()),
        ("sif-writable-tmpfs", a.writable_tmpfs),
        ("sif-no-home", a.no_home),
        ("sif-gpu", a.gpu.is_some()),
        ("sif-run", a.run),
    ];
    for (name, given) in used {
        if given && c.forbids(name) {
            return Err(format!(
                "sifrun: --{name} (or its SIFRUN_ variable): disabled on this cluster by the administrator"
            ));
        }
    }
    if let Some(max) = c.users.max_binds
        && a.binds.len() > max
    {
        return Err(format!(
            "sifrun: --sif-bind: {} bind specs given, this cluster allows {max}",
            a.binds.len()
        ));
    }
    Ok(())
}

/// `slurm_spank_init_post_opt`: `SIFRUN_*` defaults, from the command's
/// environment locally and from the job's environment in slurmstepd (where
/// the command-line options arrive through their callbacks), so both sides
/// agree on what the step asked for.
pub fn init_post_opt(sp: &dyn Spank) -> Result<(), String> {
    if matches!(
        sp.context(),
        Context::Local | Context::Allocator | Context::Remote
    ) {
        args()
            .apply_env(|k| sp.getenv(k))
            .map_err(|e| format!("sifrun: {e}"))?;
        let policy = check_policy(&args(), &config());
        if let Err(msg) = policy {
            if sp.context() != Context::Remote {
                return Err(msg);
            }
            // Remotely the step goes on regardless: fail its tasks instead.
            *lock(&HOLDER) = Some(Holder::Failed(msg));
        }
    }
    if sp.context() == Context::Remote
        && let Some(value) = sp.getenv("SLURM_CONTAINER")
        && let Err(msg) =
            honour_native_container(&value, Path::new(OCI_CONF), |p| Path::new(p).is_dir())
    {
        // slurmstepd neither stops the step nor shows this error to the user:
        // keep it for task_init, which fails every task with it.
        *lock(&HOLDER) = Some(Holder::Failed(msg));
    }
    Ok(())
}

/// Slurm's OCI runtime configuration; when it exists, `--container` is Slurm's.
pub const OCI_CONF: &str = "/etc/slurm/oci.conf";

/// Slurm's own `--container=VALUE` (seen remotely as SLURM_CONTAINER): when
/// Slurm would ignore it (no oci.conf) and it is not an OCI bundle (a
/// directory), it names our image, unless `--sif-image` already named one.
pub fn honour_native_container(
    value: &str,
    oci_conf: &Path,
    is_dir: impl Fn(&str) -> bool,
) -> Result<(), String> {
    if value.is_empty() || oci_conf.exists() || is_dir(value) {
        return Ok(());
    }
    let mut a = args();
    match &a.image {
        Some(image) if image != value => Err(format!(
            "sifrun: --container={value} and --sif-image={image} name different images"
        )),
        Some(_) => Ok(()),
        None => a
            .apply(1, Some(value))
            .map_err(|e| format!("sifrun: --container: {e}")),
    }
}

/// Slurm's step ID of a batch script.
pub const BATCH_STEP: u32 = 0xffff_fffb;

/// The launcher's command line for this step. A batch step's script lives in
/// slurmd's spool directory: it is bound read-only at the same path.
pub fn holder_args(
    a: &Args,
    c: &AdminConfig,
    cwd: &str,
    batch_script: Option<&str>,
    step: &str,
) -> Vec<String> {
    let mut v = vec!["slurm-hold".to_owned(), format!("--slurm-step={step}")];
    if c.ecl.activated
        && let Some(path) = lock(&CONFIG_PATH).as_deref()
    {
        // The holder checks the image against the ECL before it drops
        // root's real uid, on the file it then serves.
        v.push(format!("--ecl-config={path}"));
    }
    if let Some(script) = batch_script {
        // The script runs in the image and may start steps: it needs srun.
        v.push("--slurm-client".into());
        v.push(format!("--bind={script}:{script}:ro"));
    }
    for b in c.container.binds.iter().chain(&a.binds) {
        v.push(format!("--bind={b}"));
    }
    for e in &a.env {
        v.push(format!("--env={e}"));
    }
    if let Some(w) = &a.workdir {
        v.push(format!("--pwd={w}"));
    }
    if a.writable_tmpfs {
        v.push("--writable-tmpfs".into());
    }
    if a.no_home {
        v.push("--no-home".into());
    }
    // GPUs: auto unless the user chose (--sif-gpu).
    v.push(format!("--gpu={}", a.gpu.unwrap_or_default()));
    if !c.container.network_filesystems {
        v.push("--no-netfs".into());
    }
    if !c.container.fabric_libraries {
        v.push("--no-fabric-libs".into());
    }
    if c.container.allow_umad {
        v.push("--allow-umad".into());
    }
    for t in &c.container.netfs_types {
        v.push(format!("--netfs-type={t}"));
    }
    v.push(image_path(a, cwd));
    v
}

/// The image as an absolute path (relative ones are relative to the task's cwd).
fn image_path(a: &Args, cwd: &str) -> String {
    let image = a.image.clone().unwrap_or_default();
    if image.starts_with('/') {
        image
    } else {
        format!("{}/{image}", cwd.trim_end_matches('/'))
    }
}

/// The step's name in holder command lines and runtime records: `JOB.STEP`.
fn step_name(sp: &dyn Spank) -> String {
    let job = sp.job_id().map_or("unknown".into(), |j| j.to_string());
    match sp.step_id() {
        Some(BATCH_STEP) => format!("{job}.batch"),
        Some(s) => format!("{job}.{s}"),
        None => format!("{job}.unknown"),
    }
}

/// `slurm_spank_user_init`: starts the step's container holder.
pub fn user_init(sp: &dyn Spank) -> Result<(), String> {
    if sp.context() != Context::Remote {
        return Ok(());
    }
    let a = args().clone();
    if !a.wants_container() || matches!(*lock(&HOLDER), Some(Holder::Failed(_))) {
        return Ok(());
    }
    let cwd = sp.getenv("PWD").unwrap_or_else(|| "/".into());
    let launcher = lock(&LAUNCHER)
        .clone()
        .unwrap_or_else(|| DEFAULT_LAUNCHER.into());
    let c = config();
    if !c.users.image_dirs.is_empty() {
        let image = image_path(&a, &cwd);
        let allowed = std::fs::canonicalize(&image).is_ok_and(|p| c.image_allowed(&p));
        if !allowed {
            let dirs: Vec<String> = c
                .users
                .image_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            *lock(&HOLDER) = Some(Holder::Failed(format!(
                "sifrun: {image}: images must lie below {} on this cluster",
                dirs.join(" or ")
            )));
            return Ok(());
        }
    }
    let started = std::time::Instant::now();
    let argv = sp.job_argv();
    let batch_script = (sp.step_id() == Some(BATCH_STEP))
        .then(|| argv.first().cloned())
        .flatten()
        .filter(|s| s.starts_with('/') && !s.contains([',', ':']));
    let holder = start_holder(
        &launcher,
        &holder_args(&a, &c, &cwd, batch_script.as_deref(), &step_name(sp)),
        &cwd,
        &sp.job_env(),
        std::time::Duration::from_secs(c.container.setup_timeout),
    );
    if let Holder::Ready { pid, .. } = &holder {
        sp.info(&format!(
            "sifrun: container ready in {} ms (holder pid {pid})",
            started.elapsed().as_millis()
        ));
    }
    *lock(&HOLDER) = Some(holder);
    Ok(())
}

/// Starts the holder, hands it the job's environment on its standard input
/// (a socket, written with MSG_NOSIGNAL: a holder that dies early must not
/// SIGPIPE slurmstepd) and waits for its report.
fn start_holder(
    launcher: &str,
    args: &[String],
    cwd: &str,
    job_env: &[(String, String)],
    timeout: std::time::Duration,
) -> Holder {
    use std::io::{BufRead, BufReader, Read};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::process::{Command, Stdio};
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return Holder::Failed(format!("sifrun: creating a socket pair: {e}")),
    };
    let spawned = Command::new(launcher)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Holder::Failed(format!("sifrun: cannot start the launcher {launcher}: {e}"));
        }
    };
    let pid = child.id() as i32;
    let mut env_bytes = Vec::new();
    for (k, v) in job_env {
        env_bytes.extend_from_slice(k.as_bytes());
        env_bytes.push(b'=');
        env_bytes.extend_from_slice(v.as_bytes());
        env_bytes.push(0);
    }
    std::thread::spawn(move || {
        use nix::sys::socket::{MsgFlags, send};
        let mut rest = &env_bytes[..];
        while !rest.is_empty() {
            match send(ours.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(nix::Error::EINTR) => {}
                Err(_) => break,
            }
        }
        let _ = ours.shutdown(std::net::Shutdown::Write);
    });
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut env = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.trim() == slurm_conf::holder::READY {
                let _ = tx.send(Some(env));
                return;
            }
            if let Some(change) = EnvChange::decode(&line) {
                env.push(change);
            }
        }
        let _ = tx.send(None);
    });
    match rx.recv_timeout(timeout) {
        Ok(Some(env)) => Holder::Ready { pid, env },
        other => {
            if other.is_err() {
                let _ = child.kill();
                let _ = child.wait();
                return Holder::Failed(format!(
                    "sifrun: the container was not ready within {} s (container.setup_timeout)",
                    timeout.as_secs()
                ));
            }
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let msg = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned();
            Holder::Failed(if msg.is_empty() {
                "sifrun: the container launcher ended without a message".into()
            } else {
                msg
            })
        }
    }
}

/// `slurm_spank_task_init`: runs in the task, as the user, just before exec.
pub fn task_init(sp: &dyn Spank) -> Result<(), String> {
    if sp.context() != Context::Remote || !args().wants_container() {
        return Ok(());
    }
    let fail = |msg: String| {
        sp.error(&msg);
        Err(msg)
    };
    match lock(&HOLDER).clone() {
        Some(Holder::Ready { pid, env }) => match join(pid) {
            Ok(()) => {
                let hints = placement_hints(sp);
                for change in &env {
                    let applied = match change {
                        EnvChange::Set(k, v) => sp.setenv(k, v),
                        EnvChange::Unset(k) => sp.unsetenv(k),
                    };
                    if let Err(e) = applied {
                        return fail(format!(
                            "sifrun: setting the task's environment: {e}; the task was not started"
                        ));
                    }
                }
                for (k, v) in hints {
                    // Hints only: a failure to set one is not worth the task.
                    let _ = sp.setenv(&k, &v);
                }
                Ok(())
            }
            Err(e) => fail(format!(
                "sifrun: joining the container: {e}; the task was not started"
            )),
        },
        Some(Holder::Failed(msg)) => fail(format!("{msg} (the task was not started)")),
        None => {
            fail("sifrun: no container was started for this step; the task was not started".into())
        }
    }
}

/// GPU and NIC placement hints for this task's CPUs (see
/// `interconnect::topology`), read from the host's sysfs.
fn placement_hints(sp: &dyn Spank) -> Vec<(String, String)> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return Vec::new();
    };
    let cpus: Vec<u32> = (0..nix::sched::CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect();
    interconnect::topology::hints(Path::new("/"), &cpus, &|k| sp.getenv(k))
}

/// Joins the holder's user, then mount namespace; keeps the working directory.
fn join(pid: i32) -> Result<(), String> {
    use nix::sched::{CloneFlags, setns};
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(|e| format!("the container is gone ({ns}: {e})"))
    };
    let (user, mnt) = (open("user")?, open("mnt")?);
    setns(user, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("user namespace: {e}"))?;
    setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))?;
    std::env::set_current_dir(&cwd)
        .map_err(|e| format!("{}: {e} inside the container", cwd.display()))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no-new-privileges: {e}"))?;
    Ok(())
}

/// `slurm_spank_exit`: stops the step's holder (slurmstepd, once per step).
pub fn exit(sp: &dyn Spank) -> Result<(), String> {
    if sp.context() != Context::Remote {
        return Ok(());
    }
    if let Some(Holder::Ready { pid, .. }) = lock(&HOLDER).take() {
        remove_record(&step_name(sp));
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = kill(pid, Signal::SIGTERM);
        for _ in 0..500 {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                _ => return Ok(()),
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
    Ok(())
}

fn runtime_dir() -> PathBuf {
    PathBuf::from(
        lock(&RUNTIME_DIR)
            .clone()
            .unwrap_or_else(|| DEFAULT_RUNTIME_DIR.into()),
    )
}

/// The start time of a process (field 22 of /proc/PID/stat), which tells a
/// process from a later one with a reused PID.
fn start_time(proc_root: &Path, pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // The command name may contain spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// `slurm_spank_task_post_fork` (slurmstepd, as root): records the step's
/// holder in the runtime directory once, for the job epilog's sweep.
pub fn task_post_fork(sp: &dyn Spank) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if sp.context() != Context::Remote {
        return Ok(());
    }
    let Some(Holder::Ready { pid, .. }) = lock(&HOLDER).clone() else {
        return Ok(());
    };
    let dir = runtime_dir();
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir);
    let path = dir.join(format!("{}.holder", step_name(sp)));
    // create_new: the first task of the step writes it.
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        let start = start_time(Path::new("/proc"), pid).unwrap_or(0);
        let _ = writeln!(f, "{pid} {start}");
    }
    Ok(())
}

fn remove_record(step: &str) {
    let _ = std::fs::remove_file(runtime_dir().join(format!("{step}.holder")));
}

/// `slurm_spank_job_epilog` (slurmd, as root, when the job ends on this
/// node): kills every holder of the job that is still there and drops the
/// job's records.
pub fn job_epilog(sp: &dyn Spank) -> Result<(), String> {
    let (Some(job), Some(uid)) = (sp.job_id(), sp.job_uid()) else {
        return Ok(());
    };
    let killed = sweep(&runtime_dir(), Path::new("/proc"), job, uid, |pid| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    if !killed.is_empty() {
        sp.info(&format!(
            "sifrun: job {job} epilog: killed leftover container holders {killed:?}"
        ));
    }
    Ok(())
}

/// The sweep behind [`job_epilog`], over an injectable /proc and kill: the
/// job's records (PID and start time must both match), then any process of
/// the job's user whose command line is a holder of this job. Returns the
/// PIDs killed.
pub fn sweep(
    runtime_dir: &Path,
    proc_root: &Path,
    job: u32,
    uid: u32,
    kill: impl Fn(i32),
) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let prefix = format!("{job}.");
    let mut killed = Vec::new();
    for entry in std::fs::read_dir(runtime_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with(&prefix) && name.ends_with(".holder")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let mut words = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pid)), Some(Ok(start))) = (words.next(), words.next())
            && let Ok(pid) = i32::try_from(pid)
            && start_time(proc_root, pid) == Some(start)
        {
            kill(pid);
            killed.push(pid);
        }
        let _ = std::fs::remove_file(entry.path());
    }
    let marker = format!("--slurm-step={prefix}");
    for entry in std::fs::read_dir(proc_root).into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if killed.contains(&pid) || entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let holder = argv.get(1) == Some(&&b"slurm-hold"[..])
            && argv.iter().any(|a| a.starts_with(marker.as_bytes()));
        if holder {
            kill(pid);
            killed.push(pid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spank::Fake;

    #[test]
    fn native_container_values() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        let none = Path::new("/nonexistent/oci.conf");
        honour_native_container("/data/img.sif", none, |_| false).unwrap();
        assert_eq!(args().image.as_deref(), Some("/data/img.sif"));
        honour_native_container("/data/img.sif", none, |_| false).unwrap();
        let e = honour_native_container("/data/other.sif", none, |_| false).unwrap_err();
        assert!(e.contains("name different images"), "{e}");
        reset();
        // An OCI bundle (a directory), or a configured OCI runtime: Slurm's business.
        honour_native_container("/bundles/app", none, |_| true).unwrap();
        let conf = std::env::current_exe().unwrap();
        honour_native_container("/data/img.sif", &conf, |_| false).unwrap();
        assert_eq!(args().image, None);
    }

    #[test]
    fn holder_command_line() {
        let a = Args {
            image: Some("img.sif".into()),
            binds: vec!["/data:/d:ro".into()],
            env: vec!["A=1".into()],
            workdir: Some("/w".into()),
            no_home: true,
            ..Args::default()
        };
        let mut admin = AdminConfig::default();
        assert_eq!(
            holder_args(&a, &admin, "/home/u/run/", None, "7.0"),
            [
                "slurm-hold",
                "--slurm-step=7.0",
                "--bind=/data:/d:ro",
                "--env=A=1",
                "--pwd=/w",
                "--no-home",
                "--gpu=auto",
                "/home/u/run/img.sif"
            ]
        );
        assert_eq!(
            holder_args(
                &a,
                &admin,
                "/",
                Some("/var/spool/slurmd/job00007/slurm_script"),
                "7.batch"
            )[2..4],
            [
                "--slurm-client",
                "--bind=/var/spool/slurmd/job00007/slurm_script:/var/spool/slurmd/job00007/slurm_script:ro"
            ]
        );
        // The admin's binds come first: a user's bind on the same target wins.
        admin.container.binds = vec!["/scratch".into()];
        assert_eq!(
            holder_args(&a, &admin, "/", None, "7.0")[2..4],
            ["--bind=/scratch", "--bind=/data:/d:ro"]
        );
        // Fabric policy from the admin file.
        admin.container.fabric_libraries = false;
        admin.container.allow_umad = true;
        let v = holder_args(&a, &admin, "/", None, "7.0");
        assert!(v.contains(&"--no-fabric-libs".to_owned()), "{v:?}");
        assert!(v.contains(&"--allow-umad".to_owned()), "{v:?}");
    }

    #[test]
    fn holder_start_report_and_failures() {
        let t = std::time::Duration::from_secs(10);
        let sh = |script: &str, env: &[(String, String)], t| {
            start_holder("/bin/sh", &["-c".into(), script.into()], "/", env, t)
        };
        let missing = start_holder("/nonexistent/sifrun", &["slurm-hold".into()], "/", &[], t);
        assert!(matches!(missing, Holder::Failed(m) if m.contains("cannot start the launcher")));
        let quiet = start_holder("/bin/false", &[], "/", &[], t);
        assert!(matches!(quiet, Holder::Failed(m) if m.contains("without a message")));
        let talks = sh("echo 'sifrun: exec: x: broken' >&2; exit 3", &[], t);
        assert_eq!(talks, Holder::Failed("sifrun: exec: x: broken".into()));
        let slow = sh("sleep 5", &[], std::time::Duration::from_millis(200));
        assert!(matches!(slow, Holder::Failed(m) if m.contains("not ready within")));
        // The job's environment arrives on stdin, NUL-separated; the report's
        // environment lines come back decoded.
        let job = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "two words\nand a line".to_owned()),
        ];
        let set = EnvChange::Set("X".into(), "y z".into()).encode();
        let script = format!(
            "test \"$(tr '\\0' '|')\" = 'A=1|B=two words\nand a line|' || exit 9; echo '{set}'; echo unset 41; echo ready; sleep 0.1"
        );
        let ready = sh(&script, &job, t);
        match ready {
            Holder::Ready { env, .. } => assert_eq!(
                env,
                [
                    EnvChange::Set("X".into(), "y z".into()),
                    EnvChange::Unset("A".into())
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn admin_policy() {
        let c = AdminConfig::parse(
            "[users]\nforbid = [\"sif-writable-tmpfs\"]\nmax_binds = 1",
            &OPTIONS.iter().map(|o| o.name).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut a = Args {
            image: Some("/i.sif".into()),
            binds: vec!["/a".into()],
            ..Args::default()
        };
        check_policy(&a, &c).unwrap();
        a.binds.push("/b".into());
        let e = check_policy(&a, &c).unwrap_err();
        assert!(
            e.contains("--sif-bind: 2 bind specs given, this cluster allows 1"),
            "{e}"
        );
        a.binds.pop();
        a.writable_tmpfs = true;
        let e = check_policy(&a, &c).unwrap_err();
        assert!(e.contains("--sif-writable-tmpfs"), "{e}");
    }

    #[test]
    fn the_epilog_sweep_kills_only_this_jobs_holders() {
        let dir = tempfile::tempdir().unwrap();
        let (run, proc) = (dir.path().join("run"), dir.path().join("proc"));
        std::fs::create_dir_all(&run).unwrap();
        let me = nix::unistd::getuid().as_raw();
        let stat = |start: u64| format!("1 (sifrun (x)) S {}{start} 0", "0 ".repeat(18));
        let fake = |pid: i32, argv: &[&str], start: u64| {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cmdline"), argv.join("\0") + "\0").unwrap();
            std::fs::write(d.join("stat"), stat(start)).unwrap();
        };
        assert_eq!(start_time(&proc, 1), None);
        fake(
            10,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=42.0",
                "/i.sif",
            ],
            500,
        );
        fake(
            11,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=42.batch",
                "/i.sif",
            ],
            600,
        );
        fake(
            12,
            &[
                "/usr/local/bin/sifrun",
                "slurm-hold",
                "--slurm-step=420.0",
                "/i.sif",
            ],
            700,
        );
        fake(13, &["sleep", "--slurm-step=42.0"], 800);
        fake(
            14,
            &["/usr/local/bin/sifrun", "slurm-hold", "--slurm-step=42.1"],
            900,
        );
        assert_eq!(start_time(&proc, 10), Some(500));
        // Records: 42.0 matches; 42.1's PID was reused (other start time).
        std::fs::write(run.join("42.0.holder"), "10 500\n").unwrap();
        std::fs::write(run.join("42.1.holder"), "14 1\n").unwrap();
        std::fs::write(run.join("43.0.holder"), "12 700\n").unwrap();
        let killed = std::cell::RefCell::new(Vec::new());
        let got = sweep(&run, &proc, 42, me, |p| killed.borrow_mut().push(p));
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, [10, 11, 14], "by record, then by command line");
        assert_eq!(*killed.borrow(), got);
        assert!(!run.join("42.0.holder").exists() && !run.join("42.1.holder").exists());
        assert!(
            run.join("43.0.holder").exists(),
            "another job's record stays"
        );
        // Another user's processes are never touched.
        assert!(sweep(&run, &proc, 42, me + 1, |_| {}).is_empty());
    }

    #[test]
    fn a_steps_own_options_replace_the_allocations() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        let mut local = Fake::default();
        local.env.insert(
            crate::options::allocation_var("sif-image"),
            "/batch.sif".into(),
        );
        init(&local, &[]).unwrap();
        option(1, Some("/batch.sif")).unwrap();
        assert_eq!(args().image.as_deref(), Some("/batch.sif"));
        option(1, Some("/step.sif")).unwrap();
        assert_eq!(args().image.as_deref(), Some("/step.sif"));
        option(1, Some("/batch.sif")).unwrap();
        assert_eq!(
            args().image.as_deref(),
            Some("/step.sif"),
            "replayed late, still replaced"
        );
        let e = option(1, Some("/third.sif")).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
        *lock(&INHERITED) = Vec::new();
        reset();
    }

    /// The plugin keeps per-process state; tests that touch it take turns.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn reset() {
        *args() = Args::default();
    }

    #[test]
    fn lifecycle_against_the_fake() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        let local = Fake::default();
        init(&local, &[]).unwrap();
        assert_eq!(local.registered.borrow().len(), OPTIONS.len());
        let slurmd = Fake {
            context: Some(Context::Slurmd),
            ..Fake::default()
        };
        init(&slurmd, &[]).unwrap();
        assert!(slurmd.registered.borrow().is_empty());
        let refusing = Fake {
            refuse_registration: true,
            ..Fake::default()
        };
        assert!(init(&refusing, &[]).is_err());
        let e = init(&local, &["bogus=1".to_owned()]).unwrap_err();
        assert!(e.contains("unknown key \"bogus\""), "{e}");
        init(&local, &["launcher=/usr/local/bin/sifrun".to_owned()]).unwrap();

        // No image: tasks run normally.
        let remote = Fake {
            context: Some(Context::Remote),
            ..Fake::default()
        };
        task_init(&remote).unwrap();

        // An image requested through the job's SIFRUN_IMAGE, but no holder: fail closed.
        let mut with_env = Fake {
            context: Some(Context::Remote),
            ..Fake::default()
        };
        with_env
            .env
            .insert("SIFRUN_IMAGE".into(), "/img.sif".into());
        init_post_opt(&with_env).unwrap();
        let err = task_init(&remote).unwrap_err();
        assert!(
            err.contains("no container was started") && err.contains("not started"),
            "{err}"
        );
        assert!(remote.log.borrow()[0].starts_with("error: sifrun:"));
        *lock(&HOLDER) = Some(Holder::Failed(
            "sifrun: exec: /x.sif: not a SIF image".into(),
        ));
        let err = task_init(&remote).unwrap_err();
        assert!(
            err.starts_with("sifrun: exec: /x.sif: not a SIF image (the task was not started)"),
            "{err}"
        );
        *lock(&HOLDER) = None;

        option(1, Some("/img.sif")).unwrap();
        assert!(option(1, Some("/other.sif")).is_err());
        reset();
    }
}
