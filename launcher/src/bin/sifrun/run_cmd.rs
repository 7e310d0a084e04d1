//! `sifrun exec|run|shell`: options shared by the container commands.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use launcher::bind;
use launcher::env::EnvOptions;
use launcher::launch::{Action, Launch, launch};
use launcher::plan::RunOptions;
use launcher::squash::Tuning;

#[derive(Args, Clone, Debug)]
pub struct ContainerArgs {
    /// Bind SRC[:DST[:ro|rw]] into the container (repeatable, comma lists; also SIFRUN_BIND, APPTAINER_BIND)
    #[arg(short = 'B', long = "bind", value_name = "SPEC")]
    binds: Vec<String>,
    /// Do not bind the home directory
    #[arg(long)]
    no_home: bool,
    /// Only the minimum from the host: fresh /tmp, /var/tmp and home, no current directory
    #[arg(short = 'c', long)]
    contain: bool,
    /// With --contain: take /tmp, /var/tmp and home from DIR/tmp, DIR/var_tmp, DIR/home
    #[arg(short = 'W', long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Start in DIR inside the container
    #[arg(long, value_name = "DIR")]
    pwd: Option<PathBuf>,
    /// Make the root writable with an in-memory overlay (changes are discarded)
    #[arg(long)]
    writable_tmpfs: bool,
    /// Be root inside the container (still your own user outside)
    #[arg(long)]
    fakeroot: bool,
    /// Do not pass the host environment (TERM and proxies excepted)
    #[arg(short = 'e', long)]
    cleanenv: bool,
    /// Set NAME=VALUE inside (repeatable; wins over everything else)
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Read NAME=VALUE lines from FILE
    #[arg(long, value_name = "FILE")]
    env_file: Option<PathBuf>,
    /// Take the host environment from FILE (NAME=VALUE entries ended by NUL
    /// or newline) instead of sifrun's own: Slurm's `%e` with oci.conf
    /// `CreateEnvFile=null`, when Slurm runs sifrun as its OCI runtime
    #[arg(long, value_name = "FILE")]
    host_env_file: Option<PathBuf>,
    /// Bind the host's NVIDIA driver libraries and tools (as Apptainer's --nv)
    #[arg(long)]
    nv: bool,
    /// Bind the host's AMD ROCm libraries and tools (as Apptainer's --rocm)
    #[arg(long, conflicts_with = "nv")]
    rocm: bool,
    /// GPU integration: auto (what the host has), nvidia, rocm or none [default: none; --nv, --rocm]
    #[arg(long, value_name = "POLICY", conflicts_with_all = ["nv", "rocm"])]
    gpu: Option<gpu::GpuPolicy>,
    /// Do not bind the host's network filesystems (Lustre, GPFS, NFS, BeeGFS, CephFS, CIFS)
    #[arg(long)]
    no_netfs: bool,
    /// Do not bind the host's fabric libraries (libibverbs and providers, librdmacm, libfabric, libcxi, libpsm2)
    #[arg(long)]
    no_fabric_libs: bool,
    /// Leave InfiniBand umad/issm device nodes usable (set from the admin file)
    #[arg(long, hide = true)]
    allow_umad: bool,
    /// Also bind network filesystems of this type (repeatable; set by the admin file)
    #[arg(long = "netfs-type", value_name = "TYPE", hide = true)]
    netfs_types: Vec<String>,
    /// FUSE worker threads
    #[arg(long, hide = true)]
    threads: Option<usize>,
}

impl ContainerArgs {
    /// The options for `sifrun run`: an OCI image's `WORKDIR` becomes the
    /// working directory unless `--pwd` was given; `--no-eval` sets
    /// `SINGULARITY_NO_EVAL=1` for the runscript (Apptainer's switch).
    pub fn for_run(&self, image: &std::path::Path, no_eval: bool) -> ContainerArgs {
        let mut a = self.clone();
        if a.pwd.is_none() {
            a.pwd = launcher::convert::config::image_workdir(image);
        }
        if no_eval {
            a.env.push("SINGULARITY_NO_EVAL=1".into());
            a.env.push("APPTAINER_NO_EVAL=1".into());
        }
        a
    }

    fn launch(&self, image: PathBuf, action: Action) -> Result<Launch> {
        let pid_namespace = !matches!(action, Action::Hold(_));
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut binds = Vec::new();
        for var in ["APPTAINER_BIND", "SINGULARITY_BIND", "SIFRUN_BIND"] {
            if let Ok(list) = std::env::var(var) {
                binds.extend(bind::parse_list(&list, &cwd).context(var)?);
            }
        }
        for spec in &self.binds {
            binds.extend(bind::parse_list(spec, &cwd).context("--bind")?);
        }
        let env_file = match &self.env_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("--env-file: {}", p.display()))?,
            ),
            None => None,
        };
        let host_env = match &self.host_env_file {
            Some(p) => Some(launcher::env::parse_environ_file(
                &std::fs::read(p).with_context(|| format!("--host-env-file: {}", p.display()))?,
            )?),
            None => None,
        };
        Ok(Launch {
            host_env,
            image,
            run: RunOptions {
                binds,
                no_home: self.no_home,
                contain: self.contain,
                workdir: self.workdir.clone(),
                pwd: self.pwd.clone(),
                writable_tmpfs: self.writable_tmpfs,
                fakeroot: self.fakeroot,
            },
            env: EnvOptions {
                cleanenv: self.cleanenv,
                env_file,
                env: self.env.clone(),
            },
            action,
            tuning: Tuning::default(),
            threads: self
                .threads
                .unwrap_or_else(launcher::serve::default_threads),
            pid_namespace,
            netfs: !self.no_netfs,
            netfs_types: self.netfs_types.clone(),
            fabric: interconnect::fabric::Policy {
                libraries: !self.no_fabric_libs,
                allow_umad: self.allow_umad,
            },
            gpu: match (self.nv, self.rocm, self.gpu) {
                (true, _, _) => gpu::GpuPolicy::Nvidia,
                (_, true, _) => gpu::GpuPolicy::Rocm,
                (_, _, Some(p)) => p,
                _ => gpu::GpuPolicy::None,
            },
        })
    }
}

/// Runs a container command; returns its exit status.
pub fn run(args: &ContainerArgs, image: PathBuf, action: Action, what: &str) -> Result<i32> {
    if let Action::Hold(h) = &action
        && h.verbose
    {
        crate::logging::at_least(1);
    }
    let l = args
        .launch(image, action)
        .with_context(|| what.to_owned())?;
    // Errors name the image or the option themselves.
    launch(&l).with_context(|| what.to_owned())
}

pub fn os(v: &[String]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}
