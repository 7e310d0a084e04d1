//! The holder protocol's plugin side against scripts standing in for the holder.

use super::*;
use slurm_conf::protocol::{Report, Stage, VERSION};

/// The holder started and waited for, as user_init does.
fn start(
    launcher: &Path,
    request: &Request,
    cwd: &str,
    timeout: Duration,
) -> Result<Started, PluginError> {
    spawn(launcher, request, cwd, StartAs::Hook)?.wait(timeout)
}

/// A test process is not a contained hook.
#[test]
fn a_test_is_not_a_contained_hook() {
    assert!(!in_contained_hook());
}

/// A slurmstepd under its own prefix puts that prefix's clients first;
/// Debian's (/usr/sbin) and an unknown one leave the usual PATH.
#[test]
fn the_holder_path_leads_to_the_running_slurms_client() {
    let usual = "/usr/local/bin:/usr/bin:/bin";
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path();
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    std::fs::write(prefix.join("bin/srun"), "").unwrap();
    assert_eq!(
        holder_path(Some(&prefix.join("sbin/slurmstepd"))),
        format!("{}:{usual}", prefix.join("bin").display())
    );
    assert_eq!(
        holder_path(Some(&prefix.join("sbin/x/slurmstepd"))),
        usual,
        "no srun next to it"
    );
    assert_eq!(holder_path(None), usual);
    if Path::new("/usr/bin/srun").is_file() {
        assert_eq!(holder_path(Some(Path::new("/usr/sbin/slurmstepd"))), usual);
    }
}

/// The lean holder beside the launcher for a local image without an
/// ECL, once trusted; the launcher for the ECL's path, a docker://
/// image, or where the lean holder is missing; an untrusted lean holder
/// is not run, and fails the step as an untrusted launcher does.
#[test]
fn the_lean_holder_serves_local_images_without_an_ecl() {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::fake::scratch();
    let launcher = dir.path().join("sifrun");
    let lean = dir.path().join(LEAN_HOLDER);
    std::fs::write(&launcher, "").unwrap();
    let me = nix::unistd::geteuid().as_raw();
    let trusted = |p: &Path| {
        slurm_conf::trusted::check_file(p, me).map_err(|source| PluginError::Untrusted {
            key: "launcher",
            source,
        })
    };
    let local = Request {
        image: "/i.sif".into(),
        ..Request::default()
    };
    let ecl = Request {
        ecl_config: Some("/etc/sifrun/sifrun.toml".into()),
        ns_dir: Some("/run/sifrun/ns".into()),
        ..local.clone()
    };
    let docker = Request {
        image: "docker://alpine:3".into(),
        ..local.clone()
    };
    // An older install: no lean holder, the launcher with no error.
    assert_eq!(program(&launcher, &local, &trusted).unwrap(), launcher);
    std::fs::write(&lean, "").unwrap();
    std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(program(&launcher, &local, &trusted).unwrap(), lean);
    assert_eq!(program(&launcher, &ecl, &trusted).unwrap(), launcher);
    assert_eq!(program(&launcher, &docker, &trusted).unwrap(), launcher);
    std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = program(&launcher, &local, &trusted).unwrap_err();
    assert!(e.to_string().contains("lets others write it"), "{e}");
    // The ECL's path never looks at it.
    assert_eq!(program(&launcher, &ecl, &trusted).unwrap(), launcher);
    std::fs::set_permissions(&lean, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A docker:// image whose pinned digest the user's cache holds: the
    // lean holder too (it looks the entry up again), unless a site cache
    // is configured; not cached: the launcher.
    let hex = "9c22c3b62402c55877e94e9f3a7458d2400d768ed707a8adb891e08ddcb611e5";
    let cache = dir.path().join("cache");
    let cached = Request {
        job_env: vec![
            (
                "SLURM_SIFRUN_IMAGE_PIN".into(),
                format!("alpine:3@sha256:{hex}"),
            ),
            (
                "SLURM_SIFRUN_IMAGE_PIN_OF".into(),
                "docker://alpine:3".into(),
            ),
            ("SIFRUN_CACHEDIR".into(), cache.display().to_string()),
        ],
        ..docker.clone()
    };
    assert_eq!(program(&launcher, &cached, &trusted).unwrap(), launcher);
    let entry = cache.join(format!("v1/sif/sha256/{hex}.gzip.sif"));
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    std::fs::write(&entry, "SIF").unwrap();
    assert_eq!(program(&launcher, &cached, &trusted).unwrap(), lean);
    let with_site = Request {
        site_cache: Some("/var/cache/sifrun-site".into()),
        ..cached.clone()
    };
    assert_eq!(program(&launcher, &with_site, &trusted).unwrap(), launcher);
    assert_eq!(program(&launcher, &docker, &trusted).unwrap(), launcher);
}

/// Runs `script` as the holder: the launcher is /bin/sh, which takes
/// the `slurm-hold` argument as the script to run, in `dir`.
fn hold(script: &str, timeout: Duration) -> Result<Started, PluginError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slurm-hold"), script).unwrap();
    let request = Request {
        version: VERSION,
        step: "7.0".into(),
        image: "/i.sif".into(),
        job_env: vec![("B".into(), "two words\nand a line".into())],
        ..Request::default()
    };
    start(
        Path::new("/bin/sh"),
        &request,
        dir.path().to_str().unwrap(),
        timeout,
    )
}

const T: Duration = Duration::from_secs(10);

#[test]
fn a_ready_report_carries_the_environment_and_the_phases() {
    let ready = Report::ready(vec![
        EnvChange::Set("X".into(), "y z".into()),
        EnvChange::Unset("A".into()),
    ])
    .encode_line();
    // The script sees the request on stdin and its own command line.
    let script = format!(
        "req=$(cat)\n\
         case \"$req\" in *'\"step\":\"7.0\"'*'\"two words\\nand a line\"'*) ;; *) echo \"bad $req\" >&2; exit 9 ;; esac\n\
         [ \"$1 $2\" = '--slurm-step=7.0 /i.sif' ] || exit 8\n\
         echo 'sifrun: image served in 3.0 ms' >&2\n\
         printf '%s' '{ready}'\n\
         sleep 0.2\n"
    );
    let started = hold(&script, T).unwrap();
    assert_eq!(
        started.env,
        [
            EnvChange::Set("X".into(), "y z".into()),
            EnvChange::Unset("A".into())
        ]
    );
    assert_eq!(started.log, ["sifrun: image served in 3.0 ms"]);
}

fn progress(phase: &str, done: u64) -> String {
    Progress {
        phase: phase.into(),
        done,
        total: 100,
        message: format!("{done}/100 MiB"),
    }
    .encode_line()
}

/// A holder that keeps reporting progress gets past a set-up timeout
/// shorter than its whole set-up; the log keeps the last line of each
/// phase. One that stops reporting times out all the same.
#[test]
fn progress_extends_the_deadline_and_a_stall_still_times_out() {
    let ready = Report::ready(vec![EnvChange::Unset("A".into())]).encode_line();
    let mut script = String::from("cat >/dev/null\n");
    for i in 1..=8 {
        let phase = if i <= 5 { "download" } else { "convert" };
        script += &format!("printf '%s' '{}'\nsleep 0.15\n", progress(phase, i * 10));
    }
    script += &format!("echo 'sifrun: image served' >&2\nsleep 0.1\nprintf '%s' '{ready}'\n");
    let started = hold(&script, Duration::from_millis(600)).unwrap();
    assert_eq!(started.env, [EnvChange::Unset("A".into())]);
    assert_eq!(
        started.log,
        [
            "sifrun: download: 50/100 MiB",
            "sifrun: convert: 80/100 MiB",
            "sifrun: image served"
        ]
    );
    let stalled = format!(
        "cat >/dev/null\nprintf '%s' '{}'\nsleep 0.3\nprintf '%s' '{}'\nsleep 5\n",
        progress("download", 1),
        progress("download", 2)
    );
    let t = Instant::now();
    let e = hold(&stalled, Duration::from_millis(600)).unwrap_err();
    assert!(matches!(e, PluginError::Timeout(0)), "{e:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(850) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // Without a progress line the deadline is the first one.
    let t = Instant::now();
    let e = hold("cat >/dev/null; sleep 5", Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, PluginError::Timeout(0)), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn failures_come_back_typed() {
    let failed = Report::failed(Stage::Ecl, "sifrun: ECL: /i.sif: denied").encode_line();
    let e = hold(&format!("cat >/dev/null; printf '%s' '{failed}'"), T).unwrap_err();
    assert!(
        matches!(&e, PluginError::Holder { stage: Stage::Ecl, message } if message == "ECL: /i.sif: denied"),
        "{e:?}"
    );
    let missing = start(
        Path::new("/nonexistent/sifrun"),
        &Request::default(),
        "/",
        T,
    );
    assert!(
        missing
            .unwrap_err()
            .to_string()
            .contains("cannot start the launcher /nonexistent/sifrun")
    );
    let quiet = hold("exit 1", T).unwrap_err();
    assert_eq!(
        quiet.to_string(),
        "the container launcher ended without a report"
    );
    let crashed = hold("echo 'thread main panicked' >&2; exit 101", T).unwrap_err();
    assert_eq!(
        crashed.to_string(),
        "the container launcher ended without a report: thread main panicked"
    );
    let garbage = hold("echo ready", T).unwrap_err();
    assert!(
        garbage
            .to_string()
            .contains("(it answered: malformed report"),
        "{garbage}"
    );
    let slow = hold("sleep 5", Duration::from_millis(200)).unwrap_err();
    assert!(matches!(slow, PluginError::Timeout(0)), "{slow:?}");
}
