//! `sifrun slurm-hold` (hidden): the holder of one Slurm step's container,
//! started by the SPANK plugin in slurmstepd. It reads one
//! [`Request`] on standard input and answers with one [`Report`] line on
//! standard output (see `slurm_conf::protocol`); its command line only
//! shows, for `ps` and the job epilog's sweep, which step and image it
//! serves (`slurm-hold --slurm-step=JOB.STEP IMAGE`), and must agree with
//! the request.
//!
//! Shared by `sifrun` and the lean holder `sifrun-hold`, which has neither
//! the ECL's privileged path nor the registry ([`Full`] is `None` there):
//! it serves a `docker://` image only from the user's cache (the job's
//! pinned digest, no site cache configured) and refuses the rest; the
//! plugin runs `sifrun` for them.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use launcher::convert::ProgressSink;
use launcher::env::EnvOptions;
use launcher::imagecache::site::uses::Uses;
use launcher::launch::{Action, Hold, Launch, launch};
use launcher::plan::RunOptions;
use launcher::squash::Tuning;
use slurm_conf::protocol::{GpuMode, PROGRESS_EVERY_MS, Progress, Report, Request, Stage};

/// What `ps` shows of a holder.
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// The step served (JOB.STEP); it marks the process for the job epilog's sweep
    #[arg(long)]
    slurm_step: String,
    /// The image served
    image: PathBuf,
}

/// A failure at one stage, for the report.
pub struct Failure(pub Stage, pub anyhow::Error);

/// Puts a failure at its stage.
pub trait AtStage<T> {
    /// This result, failed at `stage`.
    fn at(self, stage: Stage) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> AtStage<T> for Result<T, E> {
    fn at(self, stage: Stage) -> Result<T, Failure> {
        self.map_err(|e| Failure(stage, e.into()))
    }
}

/// Why an ECL step refuses a `docker://` image.
const UNSIGNED: &str = "images converted from Docker/OCI are unsigned, and this cluster's \
execution control list only runs signed images; ask your administrator to convert and sign it \
(sifrun pull + sifrun sign) and use that SIF";

/// What only the full `sifrun` holds (it verifies signatures and reaches
/// registries).
pub struct Full {
    /// The ECL's privileged path: the request, the admin file, the
    /// namespace's directory.
    pub privileged: fn(Request, PathBuf, PathBuf) -> Result<i32, Failure>,
    /// Before root's real uid is dropped: a `docker://` image's entry in
    /// the site cache the request names, converted there by the cache's
    /// account if missing (`None`: no site cache, or it cannot serve);
    /// the sink hears that the account's conversion moves. Without an
    /// entry, the account's child that will record the use of one the
    /// user's side finds.
    pub site_entry: fn(&Request, &str, ProgressSink) -> Result<SiteEntry>,
    /// As the user: a `docker://` image as a SIF of the site cache (its
    /// use recorded by the child given) or the user's cache.
    pub step_image: fn(&Request, &str, ProgressSink, Option<Uses>) -> Result<PathBuf>,
}

/// What the site cache gave before root's real uid was dropped.
#[derive(Default)]
pub struct SiteEntry {
    /// Its entry for the image.
    pub found: Option<PathBuf>,
    /// Without one: the child that records the use of an entry the user's
    /// side finds, if the cache records uses.
    pub uses: Option<Uses>,
}

/// Runs the holder (`full`: `None` for the lean holder); returns its exit
/// status. Every failure is reported on standard output before the holder
/// ends.
pub fn run(args: &HoldArgs, full: Option<&Full>) -> i32 {
    match hold(args, full) {
        Ok(code) => code,
        Err(Failure(stage, e)) => {
            let message = format!("sifrun: {}", one_line(&e));
            let _ = Report::failed(stage, message).write_to(&mut std::io::stdout());
            1
        }
    }
}

/// Why the lean holder refuses a request (the plugin should not send it).
fn not_lean(what: &str) -> Failure {
    Failure(
        Stage::Request,
        anyhow::anyhow!(
            "{what} needs the full holder, sifrun; this is the lean sifrun-hold (local images without an ECL only)"
        ),
    )
}

fn hold(args: &HoldArgs, full: Option<&Full>) -> Result<i32, Failure> {
    let started = Instant::now();
    let request = Request::read_from(std::io::stdin().lock()).at(Stage::Request)?;
    let name = if full.is_some() {
        "sifrun"
    } else {
        "sifrun-hold"
    };
    request.check_release(name).at(Stage::Request)?;
    init_tracing(request.verbosity);
    phase("request read", started);
    if request.step != args.slurm_step || request.image != args.image {
        return Err(Failure(
            Stage::Request,
            anyhow::anyhow!(
                "the command line ({} {}) does not match the request ({} {})",
                args.slurm_step,
                args.image.display(),
                request.step,
                request.image.display()
            ),
        ));
    }
    let docker = request
        .image
        .to_str()
        .filter(|t| t.starts_with("docker://"));
    if let (Some(text), Some(_)) = (docker, &request.ecl_config) {
        return Err(Failure(Stage::Image, anyhow::anyhow!("{text}: {UNSIGNED}")));
    }
    if let (Some(config), Some(ns_dir)) = (&request.ecl_config, &request.ns_dir) {
        let full = full.ok_or_else(|| not_lean("a step under an ECL"))?;
        return (full.privileged)(request.clone(), config.clone(), ns_dir.clone());
    }
    if request.ecl_config.is_some() {
        return Err(Failure(
            Stage::Request,
            anyhow::anyhow!("an ECL step's request names no runtime directory for its namespace"),
        ));
    }
    if let (Some(text), None) = (docker, &full) {
        // Decided on the request alone, before any file is read.
        if request.site_cache.is_some() {
            return Err(not_lean("a docker:// image with a site cache"));
        }
        if slurm_conf::cached_pin::pinned_hex(text, &request.job_env).is_none() {
            return Err(not_lean(
                "a docker:// image without the job's pin of its digest",
            ));
        }
    }
    // The site cache is filled by its own account, before root's real uid
    // is dropped (the holder has no other thread yet).
    let from_site = match (docker, full) {
        (Some(text), Some(full)) => {
            (full.site_entry)(&request, text, progress_sink()).at(Stage::Image)?
        }
        _ => SiteEntry::default(),
    };
    launcher::privilege::drop_to_effective_user()
        .context("slurm-hold")
        .at(Stage::Privileges)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut request = request;
    if let Some(p) = from_site.found {
        request.image = p;
    } else if let Some(text) = request
        .image
        .to_str()
        .filter(|t| t.starts_with("docker://"))
        .map(str::to_owned)
    {
        request.image = match full {
            Some(full) => (full.step_image)(&request, &text, progress_sink(), from_site.uses)
                .at(Stage::Image)?,
            None => cached_entry(&text, &request.job_env)
                .ok_or_else(|| not_lean("a docker:// image not in your image cache"))?,
        };
    }
    let image_dirs = request.image_dirs.clone();
    let image = open_in_dirs(&request.image, &image_dirs).at(Stage::Image)?;
    let l = to_launch(request, Some(image), &cwd).at(Stage::Request)?;
    launch(&l).at(Stage::Image)
}

/// The lean holder's `docker://` image: the user's cache entry of the
/// job's pinned digest (the plugin chose this holder because it saw it),
/// looked up as the user with the cache's checks; no registry.
fn cached_entry(text: &str, job_env: &[(String, String)]) -> Option<PathBuf> {
    use launcher::imagecache::{Cache, Key};
    use slurm_conf::cached_pin::{COMPRESSION, cache_root, pinned_hex};
    let key = Key::new(
        &format!("sha256:{}", pinned_hex(text, job_env)?),
        COMPRESSION,
    )
    .ok()?;
    let cache = Cache::new(cache_root(job_env)?);
    let entry = cache.lookup(&key).ok()??;
    cache.mark_used(&key);
    Some(entry)
}

/// Progress lines to the plugin on standard output (see
/// `slurm_conf::protocol::Progress`): at most one every
/// `PROGRESS_EVERY_MS`, or on a change of phase; the plugin's set-up
/// timeout counts from the last.
fn progress_sink() -> ProgressSink {
    let last: std::sync::Mutex<Option<(Instant, String)>> = std::sync::Mutex::new(None);
    ProgressSink(std::sync::Arc::new(
        move |phase: &str, done: u64, total: u64, message: &str| {
            let Ok(mut last) = last.lock() else { return };
            if !due(&mut last, phase, Instant::now()) {
                return;
            }
            let p = Progress {
                phase: phase.to_owned(),
                done,
                total,
                message: message.to_owned(),
            };
            let _ = p.write_to(&mut std::io::stdout().lock());
        },
    ))
}

/// Whether a progress line of `phase` is due at `now` after `last` (the
/// time and phase of the last line sent), which it updates when it is.
fn due(last: &mut Option<(Instant, String)>, phase: &str, now: Instant) -> bool {
    let every = std::time::Duration::from_millis(PROGRESS_EVERY_MS);
    if matches!(&*last, Some((t, p)) if p == phase && now.saturating_duration_since(*t) < every) {
        return false;
    }
    *last = Some((now, phase.to_owned()));
    true
}

/// Opens the image (as the user) and judges `users.image_dirs` on the
/// file opened, not on a path resolved earlier.
fn open_in_dirs(image: &Path, dirs: &[PathBuf]) -> Result<std::sync::Arc<std::fs::File>> {
    let file = std::fs::File::open(image).with_context(|| image.display().to_string())?;
    if !dirs.is_empty() {
        use std::os::fd::AsRawFd;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .with_context(|| format!("{}: its path", image.display()))?;
        launcher::privileged::check_image_dirs(&real, dirs).map_err(anyhow::Error::msg)?;
    }
    Ok(std::sync::Arc::new(file))
}

/// The launch a request describes. Bind specs are relative to `cwd` (the
/// task's working directory).
pub fn to_launch(
    r: Request,
    image_file: Option<std::sync::Arc<std::fs::File>>,
    cwd: &Path,
) -> Result<Launch> {
    let mut binds = Vec::new();
    for spec in &r.binds {
        binds
            .extend(launcher::bind::parse_list(spec, cwd).with_context(|| format!("bind {spec}"))?);
    }
    Ok(Launch {
        image: r.image,
        run: RunOptions {
            binds,
            no_home: r.no_home,
            contain: false,
            workdir: None,
            pwd: r.pwd,
            writable_tmpfs: r.writable_tmpfs,
            fakeroot: false,
        },
        env: EnvOptions {
            cleanenv: false,
            env_file: None,
            env: r.env,
        },
        action: Action::Hold(Hold {
            job_env: r.job_env,
            slurm_client: r.slurm_client,
            image_file,
            slurm_conf: r.slurm_conf,
            verbose: r.verbosity > 0,
            command: r.command,
            node_name: r.node_name,
        }),
        tuning: Tuning::default(),
        threads: launcher::serve::default_threads(),
        // Tasks that join from outside must see themselves in /proc.
        pid_namespace: false,
        gpu: match r.gpu {
            GpuMode::Auto => gpu::GpuPolicy::Auto,
            GpuMode::Nvidia => gpu::GpuPolicy::Nvidia,
            GpuMode::Rocm => gpu::GpuPolicy::Rocm,
            GpuMode::None => gpu::GpuPolicy::None,
        },
        netfs: r.netfs,
        netfs_types: r.netfs_types,
        fabric: interconnect::fabric::Policy {
            libraries: r.fabric_libraries,
            allow_umad: r.allow_umad,
        },
        host_env: None,
    })
}

/// Diagnostics on standard error, which the plugin relays: warnings only,
/// each set-up phase at verbosity 1, debugging detail above.
fn init_tracing(verbosity: u8) {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_level(false)
        .init();
}

/// An error and its causes on one line, each cause once.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg
}

/// Logs a finished phase with its duration (shown with `--sif-verbose`).
fn phase(what: &str, since: Instant) {
    tracing::info!(
        "sifrun: {what} in {:.1} ms",
        since.elapsed().as_secs_f64() * 1e3
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// users.image_dirs is judged on the file opened: a link from outside
    /// into the directory passes, a file outside fails even when reached
    /// through a link that lies inside the directory.
    #[test]
    fn image_dirs_are_judged_on_the_file_opened() {
        let d = tempfile::tempdir().unwrap();
        let d = std::fs::canonicalize(d.path()).unwrap();
        let allowed = d.join("images");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::write(allowed.join("a.sif"), b"x").unwrap();
        std::fs::write(d.join("mine.sif"), b"y").unwrap();
        std::os::unix::fs::symlink(allowed.join("a.sif"), d.join("in.sif")).unwrap();
        std::os::unix::fs::symlink(d.join("mine.sif"), allowed.join("out.sif")).unwrap();
        let dirs = [allowed.clone()];
        open_in_dirs(&d.join("in.sif"), &dirs).unwrap();
        let e = open_in_dirs(&allowed.join("out.sif"), &dirs).unwrap_err();
        assert!(e.to_string().contains("images must lie below"), "{e}");
        open_in_dirs(&d.join("mine.sif"), &[]).unwrap();
    }

    /// Progress lines go at most every PROGRESS_EVERY_MS per phase, and at
    /// once when the phase changes.
    #[test]
    fn progress_lines_are_spaced() {
        let t0 = Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        let mut last = None;
        assert!(due(&mut last, "download", t0));
        assert!(!due(&mut last, "download", ms(PROGRESS_EVERY_MS - 1)));
        assert!(due(&mut last, "download", ms(PROGRESS_EVERY_MS)));
        assert!(due(&mut last, "convert", ms(PROGRESS_EVERY_MS + 1)));
        assert!(!due(&mut last, "convert", ms(PROGRESS_EVERY_MS + 2)));
    }

    #[test]
    fn a_request_becomes_the_launch_it_describes() {
        let r = Request {
            version: slurm_conf::protocol::VERSION,
            step: "7.batch".into(),
            image: "/i.sif".into(),
            binds: vec!["/scratch".into(), "/a:/b:ro,rel:/c".into()],
            env: vec!["A=1".into()],
            pwd: Some("/w".into()),
            no_home: true,
            gpu: GpuMode::None,
            netfs: true,
            netfs_types: vec!["wekafs".into()],
            fabric_libraries: false,
            allow_umad: true,
            slurm_client: true,
            slurm_conf: "/etc/slurm-elsewhere/slurm.conf".into(),
            job_env: vec![("PATH".into(), "/usr/bin".into())],
            ..Request::default()
        };
        let l = to_launch(r, None, Path::new("/home/u")).unwrap();
        let Action::Hold(h) = &l.action else {
            panic!("{:?}", l.action)
        };
        assert_eq!(h.slurm_conf, Path::new("/etc/slurm-elsewhere/slurm.conf"));
        assert!(h.slurm_client);
        assert_eq!(h.job_env, [("PATH".to_owned(), "/usr/bin".to_owned())]);
        let targets: Vec<_> = l.run.binds.iter().map(|b| b.target.clone()).collect();
        assert_eq!(targets, ["/scratch", "/b", "/c"].map(PathBuf::from));
        assert_eq!(l.run.binds[2].source, Path::new("/home/u/rel"));
        assert!(l.run.binds[1].readonly);
        assert!(l.run.no_home && !l.pid_namespace && l.netfs);
        assert_eq!(l.run.pwd.as_deref(), Some(Path::new("/w")));
        assert_eq!(l.env.env, ["A=1"]);
        assert_eq!(l.gpu, gpu::GpuPolicy::None);
        assert!(!l.fabric.libraries && l.fabric.allow_umad);
        assert_eq!(l.netfs_types, ["wekafs"]);
    }
}
