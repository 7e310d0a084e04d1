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
//! * exit (slurmstepd): stop the holder.

use std::path::Path;
use std::sync::Mutex;

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

/// The step's holder, as user_init left it for the tasks (forked later, they
/// inherit this memory) and for exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    Ready(i32),
    Failed(String),
}

pub static HOLDER: Mutex<Option<Holder>> = Mutex::new(None);

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `slurm_spank_init`: checks the plugstack.conf arguments, then registers
/// the options where users can give them.
pub fn init(sp: &dyn Spank, plugstack_args: &[String]) -> Result<(), String> {
    let conf = slurm_conf::parse_plugstack_args(
        plugstack_args.iter().map(String::as_str),
        crate::PLUGSTACK_KEYS,
    )
    .map_err(|e| format!("plugstack.conf: {e}"))?;
    *lock(&LAUNCHER) = conf.get("launcher").cloned();
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

/// An option callback.
pub fn option(val: i32, value: Option<&str>) -> Result<(), String> {
    args().apply(val, value).map_err(|e| e.to_string())
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
pub fn holder_args(a: &Args, cwd: &str, batch_script: Option<&str>) -> Vec<String> {
    let mut v = vec!["slurm-hold".to_owned()];
    if let Some(script) = batch_script {
        v.push(format!("--bind={script}:{script}:ro"));
    }
    for b in &a.binds {
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
    let image = a.image.clone().unwrap_or_default();
    v.push(if image.starts_with('/') {
        image
    } else {
        format!("{}/{image}", cwd.trim_end_matches('/'))
    });
    v
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
    let started = std::time::Instant::now();
    let argv = sp.job_argv();
    let batch_script = (sp.step_id() == Some(BATCH_STEP))
        .then(|| argv.first().cloned())
        .flatten()
        .filter(|s| s.starts_with('/') && !s.contains([',', ':']));
    let holder = start_holder(
        &launcher,
        &holder_args(&a, &cwd, batch_script.as_deref()),
        &cwd,
    );
    if let Holder::Ready(pid) = &holder {
        sp.info(&format!(
            "sifrun: container ready in {} ms (holder pid {pid})",
            started.elapsed().as_millis()
        ));
    }
    *lock(&HOLDER) = Some(holder);
    Ok(())
}

fn start_holder(launcher: &str, args: &[String], cwd: &str) -> Holder {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let spawned = Command::new(launcher)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
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
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(line) if line.trim() == "ready" => Holder::Ready(pid),
        other => {
            if other.is_err() {
                let _ = child.kill();
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
        Some(Holder::Ready(pid)) => match join(pid) {
            Ok(()) => Ok(()),
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
    if let Some(Holder::Ready(pid)) = lock(&HOLDER).take() {
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
        assert_eq!(
            holder_args(&a, "/home/u/run/", None),
            [
                "slurm-hold",
                "--bind=/data:/d:ro",
                "--env=A=1",
                "--pwd=/w",
                "--no-home",
                "/home/u/run/img.sif"
            ]
        );
        assert_eq!(
            holder_args(&a, "/", Some("/var/spool/slurmd/job00007/slurm_script"))[1],
            "--bind=/var/spool/slurmd/job00007/slurm_script:/var/spool/slurmd/job00007/slurm_script:ro"
        );
        let missing = start_holder("/nonexistent/sifrun", &["slurm-hold".into()], "/");
        assert!(matches!(missing, Holder::Failed(m) if m.contains("cannot start the launcher")));
        let quiet = start_holder("/bin/false", &[], "/");
        assert!(matches!(quiet, Holder::Failed(m) if m.contains("without a message")));
        let talks = start_holder(
            "/bin/sh",
            &[
                "-c".into(),
                "echo 'sifrun: exec: x: broken' >&2; exit 3".into(),
            ],
            "/",
        );
        assert_eq!(talks, Holder::Failed("sifrun: exec: x: broken".into()));
        let ready = start_holder(
            "/bin/sh",
            &["-c".into(), "echo ready; sleep 0.1".into()],
            "/",
        );
        assert!(matches!(ready, Holder::Ready(_)));
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
