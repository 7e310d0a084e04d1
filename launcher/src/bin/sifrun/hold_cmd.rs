//! `sifrun slurm-hold` (hidden): the holder of one Slurm step's container,
//! started by the SPANK plugin in slurmstepd. It reads one
//! [`Request`] on standard input and answers with one [`Report`] line on
//! standard output (see `slurm_conf::protocol`); its command line only
//! shows, for `ps` and the job epilog's sweep, which step and image it
//! serves (`slurm-hold --slurm-step=JOB.STEP IMAGE`), and must agree with
//! the request.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use launcher::env::EnvOptions;
use launcher::launch::{Action, Hold, Launch, launch};
use launcher::plan::RunOptions;
use launcher::squash::Tuning;
use slurm_conf::protocol::{GpuMode, Report, Request, Stage};

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
struct Failure(Stage, anyhow::Error);

trait AtStage<T> {
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

/// Runs the holder; returns its exit status. Every failure is reported on
/// standard output before the holder ends.
pub fn run(args: &HoldArgs) -> i32 {
    match hold(args) {
        Ok(code) => code,
        Err(Failure(stage, e)) => {
            let message = format!("sifrun: {}", crate::one_line(&e));
            let _ = Report::failed(stage, message).write_to(&mut std::io::stdout());
            1
        }
    }
}

fn hold(args: &HoldArgs) -> Result<i32, Failure> {
    let started = Instant::now();
    let request = Request::read_from(std::io::stdin().lock()).at(Stage::Request)?;
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
        return privileged(request.clone(), config.clone(), ns_dir.clone());
    }
    if request.ecl_config.is_some() {
        return Err(Failure(
            Stage::Request,
            anyhow::anyhow!("an ECL step's request names no runtime directory for its namespace"),
        ));
    }
    let site = crate::cache_cmd::site_of(
        request.site_cache.as_deref(),
        request.site_cache_user.as_deref(),
    )
    .at(Stage::Image)?;
    // The site cache is filled by its own account, before root's real uid
    // is dropped (the holder has no other thread yet).
    let from_site = match (docker, &site) {
        (Some(text), Some(s)) if nix::unistd::getuid().is_root() => {
            crate::cache_cmd::fill_site(text, &request.job_env, s)
        }
        _ => None,
    };
    launcher::privilege::drop_to_effective_user()
        .context("slurm-hold")
        .at(Stage::Privileges)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let mut request = request;
    if let Some(p) = from_site {
        request.image = p;
    } else if let Some(text) = request
        .image
        .to_str()
        .filter(|t| t.starts_with("docker://"))
    {
        request.image =
            crate::cache_cmd::step_image(text, &request.job_env, site.as_ref()).at(Stage::Image)?;
    }
    let image_dirs = request.image_dirs.clone();
    let image = open_in_dirs(&request.image, &image_dirs).at(Stage::Image)?;
    let l = to_launch(request, Some(image), &cwd).at(Stage::Request)?;
    launch(&l).at(Stage::Image)
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

/// The ECL path: root keeps the set-up (see `launcher::privileged`).
fn privileged(request: Request, config: PathBuf, ns_dir: PathBuf) -> Result<i32, Failure> {
    let user = launcher::privilege::become_root()
        .context("slurm-hold")
        .at(Stage::Privileges)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let p = launcher::privileged::Privileged {
        admin_file: config,
        ns_dir,
        image_dirs: request.image_dirs.clone(),
    };
    let l = to_launch(request, None, &cwd).at(Stage::Request)?;
    match launcher::privileged::hold(&l, &p, &user) {
        Ok(line) => {
            let _ = launcher::privileged::write_report(&line);
            Ok(0)
        }
        Err(f) => {
            let m = f.message.strip_prefix("sifrun: ").unwrap_or(&f.message);
            Err(Failure(f.stage, anyhow::anyhow!(m.to_owned())))
        }
    }
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
