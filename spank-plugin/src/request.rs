//! The holder's [`Request`] for one step: the step's options, the admin's
//! settings and what slurmstepd knows about the step.

use std::path::PathBuf;

use slurm_conf::protocol::{GpuMode, RELEASE, Request, VERSION};
use slurm_conf::slurm::DEFAULT_SLURM_CONF;

use crate::options::Args;
use crate::plugin::Settings;
use crate::spank::Spank;

/// Slurm's step ID of a batch script.
pub const BATCH_STEP: u32 = 0xffff_fffb;

/// What slurmstepd knows about the step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// `JOB.STEP`.
    pub name: String,
    /// The task's working directory (the job's PWD; `/` when that is not
    /// an absolute path).
    pub cwd: String,
    /// Whether the job's PWD was an absolute path.
    pub cwd_known: bool,
    /// A batch step's script, in slurmd's spool directory.
    pub batch_script: Option<String>,
    /// slurm.conf as slurmstepd sees it.
    pub slurm_conf: PathBuf,
    /// The job's environment.
    pub job_env: Vec<(String, String)>,
    /// The command of a step that is not a batch script (its argv[0]).
    pub command: Option<String>,
    /// This node's name from slurmstepd's own environment (never the job's).
    pub node_name: Option<String>,
}

impl Step {
    /// The step slurmstepd runs.
    pub fn of(sp: &dyn Spank) -> Step {
        let argv = sp.job_argv();
        let pwd = sp.getenv("PWD").filter(|p| p.starts_with('/'));
        let batch = sp.step_id() == Some(BATCH_STEP);
        let batch_script = batch
            .then(|| argv.first().cloned())
            .flatten()
            .filter(|s| s.starts_with('/') && !s.contains([',', ':']));
        let command = (!batch)
            .then(|| argv.first().cloned())
            .flatten()
            .filter(|c| !c.is_empty());
        Step {
            name: step_name(sp),
            // Only an absolute PWD says where the job is (a relative one
            // would be taken relative to slurmstepd's own directory).
            cwd: pwd.clone().unwrap_or_else(|| "/".into()),
            cwd_known: pwd.is_some(),
            batch_script,
            slurm_conf: slurm_conf_path(sp),
            job_env: sp.job_env(),
            command,
            node_name: sp
                .process_getenv("SLURMD_NODENAME")
                .filter(|n| !n.is_empty()),
        }
    }
}

/// slurm.conf as slurmstepd reads it: slurmstepd's own `SLURM_CONF` (a
/// configless slurmd keeps its copy in its spool directory), or Slurm's
/// default. Never the job's variable: the job's user chooses that one.
pub fn slurm_conf_path(sp: &dyn Spank) -> PathBuf {
    sp.process_getenv("SLURM_CONF")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SLURM_CONF))
}

/// The step's name in requests and runtime records: `JOB.STEP`.
pub fn step_name(sp: &dyn Spank) -> String {
    let job = sp.job_id().map_or("unknown".into(), |j| j.to_string());
    match sp.step_id() {
        Some(BATCH_STEP) => format!("{job}.batch"),
        Some(s) => format!("{job}.{s}"),
        None => format!("{job}.unknown"),
    }
}

/// The image as an absolute path (relative ones are relative to the task's cwd).
pub fn image_path(a: &Args, cwd: &str) -> String {
    let image = a.image.clone().unwrap_or_default();
    if image.starts_with('/') || crate::image_pin::is_registry_image(&image) {
        image
    } else {
        format!("{}/{image}", cwd.trim_end_matches('/'))
    }
}

/// The request for `step`. A batch step's script is bound read-only at its
/// path and gets the Slurm client (it may start steps with srun). The
/// admin's binds come first: a user's bind on the same target wins.
pub fn build(a: &Args, s: &Settings, step: Step) -> Request {
    let c = &s.config;
    let mut binds = c.container.binds.clone();
    if let Some(script) = &step.batch_script {
        binds.insert(0, format!("{script}:{script}:ro"));
    }
    binds.extend(a.binds.iter().cloned());
    let ns_dir = c
        .ecl
        .activated
        .then(|| s.runtime_dir().join(format!("{}.ns", step.name)));
    Request {
        version: VERSION,
        release: RELEASE.into(),
        image: PathBuf::from(image_path(a, &step.cwd)),
        step: step.name,
        // The holder checks the image against the ECL before it drops
        // root's real uid, on the file it then serves.
        ecl_config: s.config_path.clone().filter(|_| c.ecl.activated),
        ns_dir,
        image_dirs: c.users.image_dirs.clone(),
        site_cache: c.images.cache_dir.clone(),
        site_cache_user: c.images.cache_user.clone(),
        site_registries: c.images.site_registries.clone(),
        site_max_image_size: Some(c.images.max_image_size()),
        site_min_free: Some(c.images.min_free()),
        binds,
        env: a.env.clone(),
        pwd: a.workdir.as_ref().map(PathBuf::from),
        writable_tmpfs: a.writable_tmpfs,
        no_home: a.no_home,
        gpu: match a.gpu.unwrap_or_default() {
            gpu::GpuPolicy::Auto => GpuMode::Auto,
            gpu::GpuPolicy::Nvidia => GpuMode::Nvidia,
            gpu::GpuPolicy::Rocm => GpuMode::Rocm,
            gpu::GpuPolicy::None => GpuMode::None,
        },
        netfs: c.container.network_filesystems,
        netfs_types: c.container.netfs_types.clone(),
        fabric_libraries: c.container.fabric_libraries,
        allow_umad: c.container.allow_umad,
        slurm_client: step.batch_script.is_some(),
        slurm_conf: step.slurm_conf,
        verbosity: u8::from(a.verbose),
        job_env: step.job_env,
        command: step.command,
        node_name: step.node_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;
    use std::path::Path;

    fn args() -> Args {
        Args {
            image: Some("img.sif".into()),
            binds: vec!["/data:/d:ro".into()],
            env: vec!["A=1".into()],
            workdir: Some("/w".into()),
            no_home: true,
            ..Args::default()
        }
    }

    fn step(cwd: &str, batch_script: Option<&str>) -> Step {
        Step {
            name: "7.0".into(),
            cwd: cwd.into(),
            cwd_known: true,
            batch_script: batch_script.map(str::to_owned),
            slurm_conf: DEFAULT_SLURM_CONF.into(),
            job_env: vec![("PATH".into(), "/usr/bin".into())],
            command: batch_script.is_none().then(|| "hostname".into()),
            node_name: None,
        }
    }

    #[test]
    fn the_request_carries_the_steps_options() {
        let mut s = Settings::default();
        let r = build(&args(), &s, step("/home/u/run/", None));
        assert_eq!(r.version, VERSION);
        assert_eq!(r.release, RELEASE, "the plugin names its release");
        assert_eq!(r.image, Path::new("/home/u/run/img.sif"));
        assert_eq!(r.step, "7.0");
        assert_eq!(r.binds, ["/data:/d:ro"]);
        assert_eq!(r.env, ["A=1"]);
        assert_eq!(r.pwd.as_deref(), Some(Path::new("/w")));
        assert!(r.no_home && !r.writable_tmpfs && !r.slurm_client);
        assert_eq!(r.gpu, GpuMode::Auto, "GPUs: auto unless the user chose");
        assert!(r.netfs && r.fabric_libraries && !r.allow_umad);
        assert_eq!(r.ecl_config, None);
        assert_eq!(r.job_env, [("PATH".to_owned(), "/usr/bin".to_owned())]);
        assert_eq!(r.verbosity, 0);

        let script = "/var/spool/slurmd/job00007/slurm_script";
        let r = build(&args(), &s, step("/", Some(script)));
        assert!(r.slurm_client);
        assert_eq!(r.binds[0], format!("{script}:{script}:ro"));

        // The admin's binds come first; fabric and ECL policy from the admin file.
        s.config.container.binds = vec!["/scratch".into()];
        s.config.container.fabric_libraries = false;
        s.config.container.allow_umad = true;
        s.config_path = Some("/etc/sifrun/sifrun.toml".into());
        let r = build(&args(), &s, step("/", None));
        assert_eq!(r.binds, ["/scratch", "/data:/d:ro"]);
        assert!(!r.fabric_libraries && r.allow_umad);
        assert_eq!(r.ecl_config, None, "no activated ECL, no check");
        assert_eq!(r.ns_dir, None, "no ECL: the unprivileged path");
        s.config.ecl.activated = true;
        s.config.users.image_dirs = vec!["/shared/images".into()];
        s.runtime_dir = Some("/run/sifrun-x".into());
        let r = build(&args(), &s, step("/", None));
        assert_eq!(
            r.ecl_config.as_deref(),
            Some(Path::new("/etc/sifrun/sifrun.toml"))
        );
        // The ECL path pins the step's namespace in the runtime directory.
        assert_eq!(r.ns_dir.as_deref(), Some(Path::new("/run/sifrun-x/7.0.ns")));
        assert_eq!(r.image_dirs, [Path::new("/shared/images")]);
        assert_eq!(r.site_cache, None);
        // The site cache reaches the holder.
        s.config.images.cache_dir = Some("/shared/sifrun-cache".into());
        s.config.images.cache_user = Some("sifrun-cache".into());
        let r = build(&args(), &s, step("/", None));
        assert_eq!(
            r.site_cache.as_deref(),
            Some(Path::new("/shared/sifrun-cache"))
        );
        assert_eq!(r.site_cache_user.as_deref(), Some("sifrun-cache"));
        // With its limits (the defaults when unset).
        assert_eq!(
            r.site_max_image_size,
            Some(slurm_conf::admin::DEFAULT_CACHE_MAX_IMAGE_SIZE)
        );
        s.config.images.cache_min_free = Some(slurm_conf::admin::Size::Text("1G".into()));
        assert_eq!(
            build(&args(), &s, step("/", None)).site_min_free,
            Some(1 << 30)
        );
    }

    #[test]
    fn only_an_absolute_pwd_is_the_jobs_directory() {
        let mut sp = Fake::remote();
        sp.env.insert("PWD".into(), "rel/dir".into());
        let s = Step::of(&sp);
        assert!(!s.cwd_known);
        assert_eq!(s.cwd, "/", "never slurmstepd's own directory");
        sp.env.insert("PWD".into(), "/home/u".into());
        let s = Step::of(&sp);
        assert!(s.cwd_known && s.cwd == "/home/u");
    }

    #[test]
    fn the_node_name_is_slurmstepds_own_never_the_jobs() {
        let mut sp = Fake::remote();
        sp.env.insert("SLURMD_NODENAME".into(), "other".into());
        assert_eq!(
            Step::of(&sp).node_name,
            None,
            "the job's variable is the user's"
        );
        sp.process_env.insert("SLURMD_NODENAME".into(), "n2".into());
        assert_eq!(Step::of(&sp).node_name.as_deref(), Some("n2"));
    }

    #[test]
    fn slurm_conf_is_slurmstepds_own_never_the_jobs() {
        let mut sp = Fake::remote();
        assert_eq!(slurm_conf_path(&sp), Path::new(DEFAULT_SLURM_CONF));
        sp.env
            .insert("SLURM_CONF".into(), "/home/u/evil.conf".into());
        assert_eq!(
            slurm_conf_path(&sp),
            Path::new(DEFAULT_SLURM_CONF),
            "the job's SLURM_CONF is the user's choice"
        );
        sp.process_env.insert(
            "SLURM_CONF".into(),
            "/var/spool/slurmd/conf-cache/slurm.conf".into(),
        );
        assert_eq!(
            Step::of(&sp).slurm_conf,
            Path::new("/var/spool/slurmd/conf-cache/slurm.conf")
        );
        sp.process_env
            .insert("SLURM_CONF".into(), "rel.conf".into());
        assert_eq!(slurm_conf_path(&sp), Path::new(DEFAULT_SLURM_CONF));
    }

    #[test]
    fn steps_are_named_job_dot_step() {
        let mut sp = Fake::remote();
        sp.job_id = Some(42);
        sp.step_id = Some(BATCH_STEP);
        *sp.argv.borrow_mut() = vec!["/var/spool/slurmd/job00042/slurm_script".into()];
        let s = Step::of(&sp);
        assert_eq!(s.name, "42.batch");
        assert_eq!(
            s.batch_script.as_deref(),
            Some("/var/spool/slurmd/job00042/slurm_script")
        );
        assert_eq!(s.cwd, "/");
        assert_eq!(
            s.command, None,
            "a batch script is no command to read ahead"
        );
        sp.step_id = Some(3);
        assert_eq!(Step::of(&sp).name, "42.3");
        assert_eq!(Step::of(&sp).batch_script, None);
    }

    /// The holder reads a step's command ahead: argv[0], as srun gave it.
    #[test]
    fn a_steps_command_goes_to_the_holder() {
        let mut sp = Fake::remote();
        sp.step_id = Some(0);
        *sp.argv.borrow_mut() = vec!["hostname".into(), "-f".into()];
        let s = Step::of(&sp);
        assert_eq!(s.command.as_deref(), Some("hostname"));
        let r = build(&args(), &Settings::default(), s);
        assert_eq!(r.command.as_deref(), Some("hostname"));
        sp.argv.borrow_mut().clear();
        assert_eq!(Step::of(&sp).command, None);
    }
}
