//! The plugin's options, all under `--sif-` (clashing with neither Slurm's
//! own options nor pyxis' `--container-*`). Handlers are idempotent (Slurm
//! may call them twice with the same value) and refuse conflicting values
//! with a message naming the option. `SIFRUN_*` environment variables give
//! defaults through the same handlers.

/// One option as registered with Slurm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionDef {
    /// Name without the leading `--`.
    pub name: &'static str,
    /// Argument name in `srun --help`, or `None` for a flag.
    pub arg: Option<&'static str>,
    pub usage: &'static str,
    /// The environment variable that gives a default.
    pub env: &'static str,
    /// Identifies the option in callbacks.
    pub val: i32,
}

/// Every option, in `srun --help` order.
pub const OPTIONS: &[OptionDef] = &[
    OptionDef {
        name: "sif-image",
        arg: Some("IMAGE"),
        usage: "run every task in this SIF image",
        env: "SIFRUN_IMAGE",
        val: 1,
    },
    OptionDef {
        name: "sif-bind",
        arg: Some("SPEC[,SPEC]"),
        usage: "bind SRC[:DST[:ro|rw]] into the container",
        env: "SIFRUN_BIND",
        val: 2,
    },
    OptionDef {
        name: "sif-workdir",
        arg: Some("DIR"),
        usage: "start tasks in DIR inside the container",
        env: "SIFRUN_WORKDIR",
        val: 3,
    },
    OptionDef {
        name: "sif-env",
        arg: Some("NAME=VALUE"),
        usage: "set a variable inside the container",
        env: "SIFRUN_ENV",
        val: 4,
    },
    OptionDef {
        name: "sif-writable-tmpfs",
        arg: None,
        usage: "make the image root writable (in memory)",
        env: "SIFRUN_WRITABLE_TMPFS",
        val: 5,
    },
    OptionDef {
        name: "sif-no-home",
        arg: None,
        usage: "do not bind the home directory",
        env: "SIFRUN_NO_HOME",
        val: 6,
    },
    OptionDef {
        name: "sif-gpu",
        arg: Some("auto|nvidia|rocm|none"),
        usage: "which GPUs to bind (default auto)",
        env: "SIFRUN_GPU",
        val: 7,
    },
    OptionDef {
        name: "sif-run",
        arg: None,
        usage: "run the image's runscript with the task's arguments",
        env: "SIFRUN_RUN",
        val: 8,
    },
];

/// The options' values for one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Args {
    pub image: Option<String>,
    pub binds: Vec<String>,
    pub workdir: Option<String>,
    pub env: Vec<String>,
    pub writable_tmpfs: bool,
    pub no_home: bool,
    pub gpu: Option<gpu::GpuPolicy>,
    pub run: bool,
}

/// The variable in which sbatch and salloc pass option `name` to the job.
pub fn allocation_var(name: &str) -> String {
    format!(
        "SLURM_SPANK__SLURM_SPANK_OPTION_sifrun_{}",
        name.replace('-', "_")
    )
}

/// A refused option value.
#[derive(Debug, PartialEq, Eq)]
pub struct OptionError(pub String);

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

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
    /// Applies option `val` with `value`; calling twice with the same value is harmless.
    pub fn apply(&mut self, val: i32, value: Option<&str>) -> Result<(), OptionError> {
        let def = OPTIONS
            .iter()
            .find(|o| o.val == val)
            .ok_or_else(|| OptionError(format!("unknown option number {val}")))?;
        let name = def.name;
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
        match val {
            1 => set_once(&mut self.image, name, need()?)?,
            2 => push_once(&mut self.binds, need()?),
            3 => {
                let v = need()?;
                if !v.starts_with('/') {
                    return Err(OptionError(format!(
                        "--{name}: {v:?} must be an absolute path"
                    )));
                }
                set_once(&mut self.workdir, name, v)?
            }
            4 => {
                let v = need()?;
                if !v.contains('=') {
                    return Err(OptionError(format!("--{name}: {v:?}: expected NAME=VALUE")));
                }
                push_once(&mut self.env, v)
            }
            5 => self.writable_tmpfs = flag(value, name)?,
            6 => self.no_home = flag(value, name)?,
            7 => {
                let policy: gpu::GpuPolicy = need()?
                    .parse()
                    .map_err(|e| OptionError(format!("--{name}: {e}")))?;
                match self.gpu {
                    Some(old) if old != policy => {
                        return Err(OptionError(format!(
                            "--{name}: given twice with different values ({old} and {policy})"
                        )));
                    }
                    _ => self.gpu = Some(policy),
                }
            }
            8 => self.run = flag(value, name)?,
            _ => unreachable!("every OPTIONS entry is handled"),
        }
        Ok(())
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
            let unset = match def.val {
                1 => given.image.is_none(),
                2 => given.binds.is_empty(),
                3 => given.workdir.is_none(),
                4 => given.env.is_empty(),
                5 => !given.writable_tmpfs,
                6 => !given.no_home,
                7 => given.gpu.is_none(),
                8 => !given.run,
                _ => false,
            };
            if unset {
                let values: Vec<&str> = if def.val == 2 || def.val == 4 {
                    v.split(',').collect()
                } else {
                    vec![v.as_str()]
                };
                for value in values {
                    self.apply(def.val, Some(value))
                        .map_err(|e| OptionError(format!("{} (from {origin})", e.0)))?;
                }
            }
        }
        Ok(())
    }

    /// Forgets option `val`'s value.
    pub fn clear(&mut self, val: i32) {
        match val {
            1 => self.image = None,
            2 => self.binds.clear(),
            3 => self.workdir = None,
            4 => self.env.clear(),
            5 => self.writable_tmpfs = false,
            6 => self.no_home = false,
            7 => self.gpu = None,
            8 => self.run = false,
            _ => {}
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
                    .all(|p| p.name != o.name && p.val != o.val)
            );
        }
    }

    #[test]
    fn handlers_are_idempotent_and_refuse_conflicts() {
        let mut a = Args::default();
        a.apply(1, Some("/img.sif")).unwrap();
        a.apply(1, Some("/img.sif")).unwrap();
        let e = a.apply(1, Some("/other.sif")).unwrap_err();
        assert!(e.0.starts_with("--sif-image: given twice"), "{e}");
        a.apply(2, Some("/data:/d")).unwrap();
        a.apply(2, Some("/data:/d")).unwrap();
        assert_eq!(a.binds, vec!["/data:/d"]);
        a.apply(5, None).unwrap();
        assert!(a.writable_tmpfs);
        assert!(a.apply(3, Some("rel")).unwrap_err().0.contains("absolute"));
        for (val, v) in [
            (1, "/i\0.sif"),
            (2, "/a:/b\n/etc"),
            (4, "A=1\0B=2"),
            (3, "/w\n"),
        ] {
            let e = a.apply(val, Some(v)).unwrap_err();
            assert!(e.0.contains("newline or NUL"), "{v:?}: {e}");
        }
        assert!(
            a.apply(4, Some("NOEQ"))
                .unwrap_err()
                .0
                .contains("NAME=VALUE")
        );
        assert!(
            a.apply(7, Some("cuda"))
                .unwrap_err()
                .0
                .contains("--sif-gpu")
        );
        assert!(a.apply(1, Some("a\nb")).unwrap_err().0.contains("newline"));
        assert!(a.apply(99, None).is_err());
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
        a.apply(1, Some("/cli.sif")).unwrap();
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
        b.apply(1, Some("/step.sif")).unwrap();
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
