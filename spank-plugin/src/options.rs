//! The plugin's options, all under `--sif-` (clashing with neither Slurm's
//! own options nor pyxis' `--container-*`). Handlers are idempotent (Slurm
//! may call them twice with the same value) and refuse conflicting values
//! with a message naming the option. `SIFRUN_*` environment variables give
//! defaults through the same handlers.

/// One of the plugin's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Opt {
    /// `--sif-image=IMAGE`.
    Image,
    /// `--sif-bind=SPEC[,SPEC]`.
    Bind,
    /// `--sif-workdir=DIR`.
    Workdir,
    /// `--sif-env=NAME=VALUE`.
    Env,
    /// `--sif-writable-tmpfs`.
    WritableTmpfs,
    /// `--sif-no-home`.
    NoHome,
    /// `--sif-gpu=POLICY`.
    Gpu,
    /// `--sif-run`.
    Run,
    /// `--sif-verbose`.
    Verbose,
}

/// One option as registered with Slurm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDef {
    /// Which option.
    pub opt: Opt,
    /// Name without the leading `--`.
    pub name: &'static str,
    /// Argument name in `srun --help`, or `None` for a flag.
    pub arg: Option<&'static str>,
    /// The help text.
    pub usage: &'static str,
    /// The environment variable that gives a default.
    pub env: &'static str,
}

/// Every option, in `srun --help` order.
pub const OPTIONS: &[OptionDef] = &[
    OptionDef {
        opt: Opt::Image,
        name: "sif-image",
        arg: Some("IMAGE"),
        usage: "run every task in this SIF image",
        env: "SIFRUN_IMAGE",
    },
    OptionDef {
        opt: Opt::Bind,
        name: "sif-bind",
        arg: Some("SPEC[,SPEC]"),
        usage: "bind SRC[:DST[:ro|rw]] into the container",
        env: "SIFRUN_BIND",
    },
    OptionDef {
        opt: Opt::Workdir,
        name: "sif-workdir",
        arg: Some("DIR"),
        usage: "start tasks in DIR inside the container",
        env: "SIFRUN_WORKDIR",
    },
    OptionDef {
        opt: Opt::Env,
        name: "sif-env",
        arg: Some("NAME=VALUE"),
        usage: "set a variable inside the container",
        env: "SIFRUN_ENV",
    },
    OptionDef {
        opt: Opt::WritableTmpfs,
        name: "sif-writable-tmpfs",
        arg: None,
        usage: "make the image root writable (in memory)",
        env: "SIFRUN_WRITABLE_TMPFS",
    },
    OptionDef {
        opt: Opt::NoHome,
        name: "sif-no-home",
        arg: None,
        usage: "do not bind the home directory",
        env: "SIFRUN_NO_HOME",
    },
    OptionDef {
        opt: Opt::Gpu,
        name: "sif-gpu",
        arg: Some("auto|nvidia|rocm|none"),
        usage: "which GPUs to bind (default auto)",
        env: "SIFRUN_GPU",
    },
    OptionDef {
        opt: Opt::Run,
        name: "sif-run",
        arg: None,
        usage: "run the image's runscript with the task's arguments",
        env: "SIFRUN_RUN",
    },
    OptionDef {
        opt: Opt::Verbose,
        name: "sif-verbose",
        arg: None,
        usage: "show each container set-up phase and its duration",
        env: "SIFRUN_VERBOSE",
    },
];

impl Opt {
    /// The option's definition.
    pub fn def(self) -> &'static OptionDef {
        OPTIONS
            .iter()
            .find(|d| d.opt == self)
            .expect("every option is in OPTIONS")
    }

    /// The number Slurm hands back to the option callback.
    pub fn val(self) -> i32 {
        OPTIONS
            .iter()
            .position(|d| d.opt == self)
            .map_or(0, |i| i as i32 + 1)
    }

    /// The option for a callback's number.
    pub fn from_val(val: i32) -> Option<Opt> {
        let i = usize::try_from(val).ok()?.checked_sub(1)?;
        OPTIONS.get(i).map(|d| d.opt)
    }

    /// The option's name without `--`.
    pub fn name(self) -> &'static str {
        self.def().name
    }
}

/// The options' values for one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// `--sif-image`, as given (relative to the task's cwd when relative).
    pub image: Option<String>,
    /// `--sif-bind` specs, each one comma list as given.
    pub binds: Vec<String>,
    /// `--sif-workdir`.
    pub workdir: Option<String>,
    /// `--sif-env` settings.
    pub env: Vec<String>,
    /// `--sif-writable-tmpfs`.
    pub writable_tmpfs: bool,
    /// `--sif-no-home`.
    pub no_home: bool,
    /// `--sif-gpu`.
    pub gpu: Option<gpu::GpuPolicy>,
    /// `--sif-run`.
    pub run: bool,
    /// `--sif-verbose`.
    pub verbose: bool,
}

/// The variable in which sbatch and salloc pass option `name` to the job.
pub fn allocation_var(name: &str) -> String {
    format!(
        "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_{}",
        name.replace('-', "_")
    )
}

/// A refused option value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

fn set_once(slot: &mut Option<String>, name: &str, value: &str) -> Result<(), OptionError> {
    match slot {
        Some(old) if old != value => Err(OptionError(format!(
            "--{name}: given twice with different values ({old:?} and {value:?})"
        ))),
        _ => {
            *slot = Some(value.to_owned());
            Ok(())
        }
    }
}

fn push_once(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

fn flag(value: Option<&str>, name: &str) -> Result<bool, OptionError> {
    match value {
        None | Some("") | Some("1") | Some("yes") | Some("true") => Ok(true),
        Some("0") | Some("no") | Some("false") => Ok(false),
        Some(v) => Err(OptionError(format!(
            "--{name}: {v:?} is not a yes/no value"
        ))),
    }
}

impl Args {
    /// Applies option `opt` with `value`; calling twice with the same value is harmless.
    pub fn apply(&mut self, opt: Opt, value: Option<&str>) -> Result<(), OptionError> {
        let name = opt.name();
        let need = || {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| OptionError(format!("--{name}: a value is required")))
        };
        if value.is_some_and(|v| v.contains(['\n', '\0'])) {
            return Err(OptionError(format!(
                "--{name}: the value contains a newline or NUL"
            )));
        }
        match opt {
            Opt::Image => set_once(&mut self.image, name, need()?)?,
            Opt::Bind => push_once(&mut self.binds, need()?),
            Opt::Workdir => {
                let v = need()?;
                if !v.starts_with('/') {
                    return Err(OptionError(format!(
                        "--{name}: {v:?} must be an absolute path"
                    )));
                }
                set_once(&mut self.workdir, name, v)?
            }
            Opt::Env => {
                let v = need()?;
                if !v.contains('=') {
                    return Err(OptionError(format!("--{name}: {v:?}: expected NAME=VALUE")));
                }
                push_once(&mut self.env, v)
            }
            Opt::WritableTmpfs => self.writable_tmpfs = flag(value, name)?,
            Opt::NoHome => self.no_home = flag(value, name)?,
            Opt::Gpu => self.apply_gpu(name, need()?)?,
            Opt::Run => self.run = flag(value, name)?,
            Opt::Verbose => self.verbose = flag(value, name)?,
        }
        Ok(())
    }

    fn apply_gpu(&mut self, name: &str, value: &str) -> Result<(), OptionError> {
        let policy: gpu::GpuPolicy = value
            .parse()
            .map_err(|e| OptionError(format!("--{name}: {e}")))?;
        match self.gpu {
            Some(old) if old != policy => Err(OptionError(format!(
                "--{name}: given twice with different values ({old} and {policy})"
            ))),
            _ => {
                self.gpu = Some(policy);
                Ok(())
            }
        }
    }

    /// Whether option `opt` has a value.
    pub fn is_set(&self, opt: Opt) -> bool {
        match opt {
            Opt::Image => self.image.is_some(),
            Opt::Bind => !self.binds.is_empty(),
            Opt::Workdir => self.workdir.is_some(),
            Opt::Env => !self.env.is_empty(),
            Opt::WritableTmpfs => self.writable_tmpfs,
            Opt::NoHome => self.no_home,
            Opt::Gpu => self.gpu.is_some(),
            Opt::Run => self.run,
            Opt::Verbose => self.verbose,
        }
    }

    /// Applies defaults for options not given on the command line: the
    /// `SIFRUN_*` variables, then the options of the allocation the step runs
    /// in (`SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_*`, which sbatch and salloc
    /// leave in the job's environment). The latter makes a step inherit the
    /// batch job's image even when the srun that started it could not load
    /// the plugin: it never silently runs on the host.
    pub fn apply_env(
        &mut self,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<(), OptionError> {
        let given = self.clone();
        for def in OPTIONS {
            let allocation = allocation_var(def.name);
            let (v, origin) = match getenv(def.env) {
                Some(v) => (v, def.env),
                None => match getenv(&allocation) {
                    Some(v) => (v, allocation.as_str()),
                    None => continue,
                },
            };
            if given.is_set(def.opt) {
                continue;
            }
            let values: Vec<&str> = if matches!(def.opt, Opt::Bind | Opt::Env) {
                v.split(',').collect()
            } else {
                vec![v.as_str()]
            };
            for value in values {
                self.apply(def.opt, Some(value))
                    .map_err(|e| OptionError(format!("{} (from {origin})", e.0)))?;
            }
        }
        Ok(())
    }

    /// Forgets option `opt`'s value.
    pub fn clear(&mut self, opt: Opt) {
        match opt {
            Opt::Image => self.image = None,
            Opt::Bind => self.binds.clear(),
            Opt::Workdir => self.workdir = None,
            Opt::Env => self.env.clear(),
            Opt::WritableTmpfs => self.writable_tmpfs = false,
            Opt::NoHome => self.no_home = false,
            Opt::Gpu => self.gpu = None,
            Opt::Run => self.run = false,
            Opt::Verbose => self.verbose = false,
        }
    }

    /// Whether a container was asked for at all.
    pub fn wants_container(&self) -> bool {
        self.image.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        for (i, o) in OPTIONS.iter().enumerate() {
            assert!(o.name.starts_with("sif-"));
            assert!(o.env.starts_with("SIFRUN_"));
            assert!(
                OPTIONS[i + 1..]
                    .iter()
                    .all(|p| p.name != o.name && p.opt != o.opt)
            );
            assert_eq!(Opt::from_val(o.opt.val()), Some(o.opt));
            assert_eq!(o.opt.def(), o);
        }
        assert_eq!(Opt::from_val(0), None);
        assert_eq!(Opt::from_val(-1), None);
        assert_eq!(Opt::from_val(OPTIONS.len() as i32 + 1), None);
    }

    #[test]
    fn handlers_are_idempotent_and_refuse_conflicts() {
        let mut a = Args::default();
        a.apply(Opt::Image, Some("/img.sif")).unwrap();
        a.apply(Opt::Image, Some("/img.sif")).unwrap();
        let e = a.apply(Opt::Image, Some("/other.sif")).unwrap_err();
        assert!(e.0.starts_with("--sif-image: given twice"), "{e}");
        a.apply(Opt::Bind, Some("/data:/d")).unwrap();
        a.apply(Opt::Bind, Some("/data:/d")).unwrap();
        assert_eq!(a.binds, vec!["/data:/d"]);
        a.apply(Opt::WritableTmpfs, None).unwrap();
        assert!(a.writable_tmpfs);
        assert!(
            a.apply(Opt::Workdir, Some("rel"))
                .unwrap_err()
                .0
                .contains("absolute")
        );
        for (opt, v) in [
            (Opt::Image, "/i\0.sif"),
            (Opt::Bind, "/a:/b\n/etc"),
            (Opt::Env, "A=1\0B=2"),
            (Opt::Workdir, "/w\n"),
        ] {
            let e = a.apply(opt, Some(v)).unwrap_err();
            assert!(e.0.contains("newline or NUL"), "{v:?}: {e}");
        }
        assert!(
            a.apply(Opt::Env, Some("NOEQ"))
                .unwrap_err()
                .0
                .contains("NAME=VALUE")
        );
        assert!(
            a.apply(Opt::Gpu, Some("cuda"))
                .unwrap_err()
                .0
                .contains("--sif-gpu")
        );
        assert!(
            a.apply(Opt::Image, Some("a\nb"))
                .unwrap_err()
                .0
                .contains("newline")
        );
        assert!(a.apply(Opt::Verbose, Some("loud")).is_err());
    }

    #[test]
    fn environment_defaults_use_the_same_handlers() {
        let env = |k: &str| match k {
            "SIFRUN_IMAGE" => Some("/env.sif".to_owned()),
            "SIFRUN_BIND" => Some("/a,/b:/c".to_owned()),
            "SIFRUN_GPU" => Some("bogus".to_owned()),
            _ => None,
        };
        let mut a = Args::default();
        a.apply(Opt::Image, Some("/cli.sif")).unwrap();
        let e = a.apply_env(env).unwrap_err();
        assert!(e.0.contains("(from SIFRUN_GPU)"), "{e}");
        assert_eq!(
            a.image.as_deref(),
            Some("/cli.sif"),
            "the command line wins"
        );
        assert_eq!(a.binds, vec!["/a", "/b:/c"]);
    }

    #[test]
    fn the_allocations_options_are_the_last_default() {
        let env = |k: &str| match k {
            "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_sif_image" => Some("/batch.sif".to_owned()),
            "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_sif_writable_tmpfs" => Some(String::new()),
            "SIFRUN_BIND" => Some("/a".to_owned()),
            "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_sif_bind" => Some("/ignored".to_owned()),
            _ => None,
        };
        let mut a = Args::default();
        a.apply_env(env).unwrap();
        assert_eq!(a.image.as_deref(), Some("/batch.sif"));
        assert!(a.writable_tmpfs);
        assert_eq!(a.binds, vec!["/a"], "SIFRUN_BIND wins over the allocation");
        let mut b = Args::default();
        b.apply(Opt::Image, Some("/step.sif")).unwrap();
        b.apply_env(env).unwrap();
        assert_eq!(
            b.image.as_deref(),
            Some("/step.sif"),
            "the step's own option wins"
        );
        assert_eq!(
            allocation_var("sif-no-home"),
            "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_sif_no_home"
        );
    }
}
