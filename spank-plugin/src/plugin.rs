//! The plugin's state and the callbacks every context shares.
//!
//! One [`Plugin`] lives per process (the FFI layer owns it); each callback
//! is a method. What a callback does in each Slurm context lives in its own
//! file: [`crate::local`] (srun, sbatch, salloc), [`crate::remote`]
//! (slurmstepd: the step's container) and [`crate::slurmd`] (the job
//! epilog).
//!
//! Lifecycle, one container per node per step:
//! * init / option callbacks / init_post_opt (everywhere): read the
//!   plugstack.conf arguments and the admin file, register and collect the
//!   `--sif-*` options, apply the admin's policy; in slurmstepd, start the
//!   step's holder early where that changes nothing but the time
//!   ([`crate::start`]).
//! * user_init (slurmstepd): read the early holder's report, or start
//!   `sifrun slurm-hold`, hand it the [`slurm_conf::protocol::Request`],
//!   wait for its report.
//! * task_init_privileged (each task, root, before Slurm drops to the
//!   user): with an activated ECL, enter the step's root-owned mount
//!   namespace the holder pinned (`crate::ecl_path`).
//! * task_init (each task, as the user): join the holder's namespaces
//!   (with the ECL: return to the working directory).
//! * task_post_fork (slurmstepd, root): record the holder for the epilog.
//! * exit (slurmstepd): stop the holder (with the ECL: unmount and remove
//!   the step's namespace directory).
//! * job_epilog (slurmd, root): kill whatever holder of the job is left.

use std::path::{Path, PathBuf};

use slurm_conf::admin::AdminConfig;

use crate::error::PluginError;
use crate::local::Inherited;
use crate::options::{Args, OPTIONS, Opt};
use crate::remote::HolderState;
use crate::spank::{Context, Spank};

/// Where `make install` puts the launcher; `launcher=` in plugstack.conf overrides it.
pub const DEFAULT_LAUNCHER: &str = "/usr/local/bin/sifrun";

/// Where per-step records live unless `runtime_dir=` says otherwise.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/sifrun";

/// What plugstack.conf says.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// `launcher=`.
    pub launcher: Option<PathBuf>,
    /// `runtime_dir=`.
    pub runtime_dir: Option<PathBuf>,
    /// `config=`, which the holder re-reads for the ECL.
    pub config_path: Option<PathBuf>,
    /// The admin file, or the defaults.
    pub config: AdminConfig,
    /// The site's oci.conf, where Slurm runs `--container` itself and the
    /// plugin leaves it alone (`slurm_conf::oci`: beside the slurm.conf of
    /// this process's `SLURM_CONF`); `None` where there is none.
    pub oci_conf: Option<PathBuf>,
}

impl Settings {
    /// The launcher to run.
    pub fn launcher(&self) -> PathBuf {
        self.launcher
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LAUNCHER))
    }

    /// The runtime directory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR))
    }
}

/// The plugin's state in one process.
#[derive(Debug)]
pub struct Plugin {
    /// plugstack.conf's arguments and the admin file.
    pub settings: Settings,
    /// The step's options.
    pub args: Args,
    /// Local context: options inherited from the allocation.
    pub(crate) inherited: Vec<Inherited>,
    /// Remote context: the step's holder, as user_init left it for the
    /// tasks (forked later, they inherit this memory) and for exit.
    pub holder: Option<HolderState>,
    /// Local context: this command's own `--container` (not one inherited
    /// from the job it runs in), as srun, sbatch or salloc set it.
    pub(crate) own_container: Option<String>,
    /// The image came from Slurm's `--container`; it may still turn out to
    /// be an OCI bundle (a directory), which user_init checks as the user.
    pub(crate) image_from_container: bool,
    /// The owner trusted files must have (root where root runs us; `None`
    /// in the user's own srun, sbatch and salloc, where nothing is trusted).
    trusted_owner: Option<u32>,
    /// Remote context: the plugin itself is unusable for this step (its
    /// configuration, an option, a panic): every task fails with this.
    pub(crate) unusable: Option<String>,
    /// Remote context: the node's GPUs and RDMA devices, scanned once in
    /// user_init for the tasks' placement hints (each task only matches
    /// them to its CPUs).
    pub(crate) devices: interconnect::topology::Devices,
    /// Local context: a `docker://` image as given and its pin, for the FFI
    /// layer to put in the command's environment
    /// ([`crate::image_pin::PIN_OF_ENV`], [`crate::image_pin::PIN_ENV`]).
    pub image_pin: Option<(String, String)>,
}

impl Plugin {
    /// A fresh state whose trusted files must belong to `trusted_owner`.
    pub fn new(trusted_owner: Option<u32>) -> Plugin {
        Plugin {
            settings: Settings::default(),
            args: Args::default(),
            inherited: Vec::new(),
            own_container: None,
            holder: None,
            image_from_container: false,
            trusted_owner,
            unusable: None,
            devices: interconnect::topology::Devices::default(),
            image_pin: None,
        }
    }

    /// The state for this process: root-owned files are trusted where root
    /// runs us (slurmd, slurmstepd).
    pub fn for_this_process() -> Plugin {
        Plugin::new(nix::unistd::getuid().is_root().then_some(0))
    }

    /// `slurm_spank_init`: checks the plugstack.conf arguments, then
    /// registers the options where users can give them.
    ///
    /// In slurmstepd a failure never stops here: Slurm 22.05 logs a failed
    /// init (`required` or not) and runs the step anyway, where the options
    /// it did not register would leave the tasks on the host. The options
    /// are registered regardless and every task of the step fails instead.
    pub fn init(&mut self, sp: &dyn Spank, plugstack_args: &[String]) -> Result<(), PluginError> {
        let taken = self.take_plugstack_args(plugstack_args);
        let slurm_conf = sp
            .process_getenv("SLURM_CONF")
            .map(std::ffi::OsString::from);
        self.settings.oci_conf = slurm_conf::oci::site_oci_conf(slurm_conf.as_deref());
        match sp.context() {
            Context::Local => {
                taken?;
                self.remember_inherited(sp);
                register_all(sp)
            }
            Context::Allocator => taken.and_then(|()| register_all(sp)),
            Context::Remote => {
                let registered = register_all(sp);
                if let Err(e) = taken.and(registered) {
                    self.fail_closed(sp, &e);
                }
                Ok(())
            }
            _ => taken,
        }
    }

    /// Remote context: the step cannot be contained as configured; every
    /// task fails with `e` (the first such error), and slurmd's log says it.
    pub(crate) fn fail_closed(&mut self, sp: &dyn Spank, e: &PluginError) {
        sp.error(&format!("sifrun: {e}"));
        self.unusable.get_or_insert_with(|| e.to_string());
    }

    /// An option callback where it runs: in slurmstepd a refused option
    /// fails every task of the step (Slurm goes on without the option).
    pub fn option_in(
        &mut self,
        opt: Opt,
        value: Option<&str>,
        remote: bool,
    ) -> Result<(), PluginError> {
        if !remote && opt == Opt::Image {
            crate::image_pin::refuse_early(value, self.settings.config.ecl.activated)?;
        }
        let given = self.option(opt, value);
        if remote && let Err(e) = &given {
            self.unusable.get_or_insert_with(|| e.to_string());
        }
        given
    }

    /// Checks and keeps the plugstack.conf arguments (and loads `config=`).
    pub fn take_plugstack_args(&mut self, plugstack_args: &[String]) -> Result<(), PluginError> {
        let conf = slurm_conf::parse_plugstack_args(
            plugstack_args.iter().map(String::as_str),
            crate::PLUGSTACK_KEYS,
        )?;
        let path = |k: &str| conf.get(k).map(PathBuf::from);
        let mut settings = Settings {
            launcher: path("launcher"),
            runtime_dir: path("runtime_dir"),
            config_path: path("config"),
            config: AdminConfig::default(),
            oci_conf: self.settings.oci_conf.take(),
        };
        if let Some(p) = &settings.config_path {
            let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
            settings.config = AdminConfig::load(p, self.trusted_owner, &names)?;
        }
        self.settings = settings;
        Ok(())
    }

    /// `path` (from plugstack.conf's `key`) may steer root: it and its
    /// directories must be root's and writable by no one else.
    pub fn check_trusted(&self, key: &'static str, path: &Path) -> Result<(), PluginError> {
        match self.trusted_owner {
            Some(owner) => slurm_conf::trusted::check_file(path, owner)
                .map_err(|source| PluginError::Untrusted { key, source }),
            None => Ok(()),
        }
    }

    /// An option callback.
    pub fn option(&mut self, opt: Opt, value: Option<&str>) -> Result<(), PluginError> {
        if self.settings.config.forbids(opt.name()) {
            return Err(PluginError::ForbiddenOption(opt.name()));
        }
        if self.replayed_inherited(opt, value.unwrap_or("")) {
            return Ok(());
        }
        Ok(self.args.apply(opt, value)?)
    }

    /// `slurm_spank_init_post_opt`: `SIFRUN_*` defaults, from the command's
    /// environment locally and from the job's environment in slurmstepd
    /// (where the command-line options arrive through their callbacks), so
    /// both sides agree on what the step asked for; then the admin's policy.
    pub fn init_post_opt(&mut self, sp: &dyn Spank) -> Result<(), PluginError> {
        let context = sp.context();
        if !matches!(
            context,
            Context::Local | Context::Allocator | Context::Remote
        ) {
            return Ok(());
        }
        let from_env = self.args.apply_env(|k| sp.getenv(k));
        if context != Context::Remote {
            from_env?;
            self.leave_container_to_slurm(sp)?;
            check_policy(&self.args, &self.settings.config)?;
            let oci_conf = self.settings.oci_conf.clone();
            return self.pin_registry_image(sp, oci_conf.as_deref());
        }
        if let Err(e) = from_env {
            // Some variables may be left unapplied (the image among them).
            self.fail_closed(sp, &e.into());
            return Ok(());
        }
        if let Err(e) = check_policy(&self.args, &self.settings.config) {
            // Remotely the step goes on regardless: fail its tasks instead.
            self.holder = Some(HolderState::Failed(e));
            return Ok(());
        }
        if let Some(value) = sp.getenv("SLURM_CONTAINER")
            && let Err(e) = self.honour_native_container(&value)
        {
            // slurmstepd neither stops the step nor shows this error to the
            // user: keep it for task_init, which fails every task with it.
            self.holder = Some(HolderState::Failed(e));
        }
        if self.args.wants_container()
            && self.holder.is_none()
            && let Err(e) = self.prepare_runtime_dir()
        {
            self.holder = Some(HolderState::Failed(e));
        }
        self.start_early(sp);
        Ok(())
    }

    /// Local context: a `docker://` image (`--sif-image`, or `--container`
    /// where Slurm has no OCI runtime) is resolved once, here, and pinned
    /// for every step (see [`crate::image_pin`]); refused with an ECL.
    pub fn pin_registry_image(
        &mut self,
        sp: &dyn Spank,
        oci_conf: Option<&Path>,
    ) -> Result<(), PluginError> {
        use crate::image_pin;
        let image = match &self.args.image {
            Some(i) => Some(i.clone()),
            None => sp.getenv("SLURM_CONTAINER").filter(|_| oci_conf.is_none()),
        };
        let Some(image) = image.filter(|i| image_pin::is_registry_image(i)) else {
            return Ok(());
        };
        if self.settings.config.ecl.activated {
            return Err(image_pin::unsigned(&image));
        }
        // Inside a job of the same image (a nested srun, maybe in a
        // container without the launcher): the job's pin.
        let pin = match (
            sp.getenv(image_pin::PIN_OF_ENV),
            sp.getenv(image_pin::PIN_ENV),
        ) {
            (Some(of), Some(pin)) if of == image && !pin.is_empty() => pin,
            _ => image_pin::resolve(&self.settings.launcher(), &image, &|k| sp.getenv(k))?,
        };
        self.image_pin = Some((image, pin));
        Ok(())
    }

    /// Remote context, as root, before any task: creates the runtime
    /// directory where a trusted one may be made and checks it, so a
    /// container step never runs with records root would write (and the
    /// epilog remove) in a directory someone else controls.
    fn prepare_runtime_dir(&self) -> Result<(), PluginError> {
        use std::os::unix::fs::DirBuilderExt;
        if self.trusted_owner.is_none() {
            return Ok(());
        }
        let dir = self.settings.runtime_dir();
        if let Some(made) = dir.ancestors().find(|a| a.exists()) {
            // What root would create below must be below a trusted directory.
            self.check_trusted("runtime_dir", made)?;
        }
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir);
        self.check_trusted("runtime_dir", &dir)
    }

    /// Slurm's own `--container=VALUE` (seen remotely as SLURM_CONTAINER):
    /// when Slurm would ignore it (this node has no oci.conf), it names our
    /// image, unless `--sif-image` already named one. An OCI bundle (a
    /// directory) stays Slurm's; that is decided in user_init, as the user:
    /// here slurmstepd is root, and what root sees of the user's path must
    /// not show.
    pub fn honour_native_container(&mut self, value: &str) -> Result<(), PluginError> {
        if value.is_empty() || self.settings.oci_conf.is_some() {
            return Ok(());
        }
        match &self.args.image {
            Some(image) if image != value => Err(PluginError::ContainerConflict {
                native: value.to_owned(),
                image: image.clone(),
            }),
            Some(_) => Ok(()),
            None => {
                self.args.apply(Opt::Image, Some(value))?;
                self.image_from_container = true;
                Ok(())
            }
        }
    }
}

fn register_all(sp: &dyn Spank) -> Result<(), PluginError> {
    for opt in OPTIONS {
        sp.register(opt)?;
    }
    Ok(())
}

/// The admin's limits on what a step asks for.
pub fn check_policy(a: &Args, c: &AdminConfig) -> Result<(), PluginError> {
    for def in OPTIONS {
        if a.is_set(def.opt) && c.forbids(def.name) {
            return Err(PluginError::Forbidden(def.name));
        }
    }
    if let Some(max) = c.users.max_binds {
        // Each bind of a comma list counts, as the holder makes each one.
        let given: usize = a
            .binds
            .iter()
            .map(|b| b.split(',').filter(|s| !s.is_empty()).count())
            .sum();
        if given > max {
            return Err(PluginError::TooManyBinds { given, max });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;

    #[test]
    fn native_container_values() {
        let mut p = Plugin::new(None);
        p.honour_native_container("/data/img.sif").unwrap();
        assert_eq!(p.args.image.as_deref(), Some("/data/img.sif"));
        p.honour_native_container("/data/img.sif").unwrap();
        let e = p.honour_native_container("/data/other.sif").unwrap_err();
        assert!(e.to_string().contains("name different images"), "{e}");
    }

    /// slurmstepd with `SLURM_CONF` in `dir`, the step asking `--container=value`.
    fn remote_with_container(dir: &Path, value: &str) -> (Plugin, Fake) {
        let mut sp = Fake::remote();
        let conf = dir.join("slurm.conf").to_string_lossy().into_owned();
        sp.process_env.insert("SLURM_CONF".into(), conf);
        sp.env.insert("SLURM_CONTAINER".into(), value.into());
        let mut p = Plugin::new(None);
        p.init(&sp, &[]).unwrap();
        p.init_post_opt(&sp).unwrap();
        (p, sp)
    }

    #[test]
    fn an_oci_conf_beside_the_nodes_slurm_conf_leaves_container_to_slurm() {
        let t = crate::fake::scratch();
        let (p, _) = remote_with_container(t.path(), "/data/img.sif");
        assert_eq!(p.args.image.as_deref(), Some("/data/img.sif"));
        // Any oci.conf Slurm finds, an empty one too (Slurm then fails the
        // step itself): --container is Slurm's, the plugin starts nothing.
        std::fs::write(t.path().join("oci.conf"), "").unwrap();
        let (mut p, sp) = remote_with_container(t.path(), "/data/img.sif");
        assert_eq!(
            p.settings.oci_conf.as_deref(),
            Some(t.path().join("oci.conf").as_path())
        );
        assert!(!p.args.wants_container() && p.holder.is_none());
        p.user_init(&sp).unwrap();
        assert!(p.holder.is_none());
        p.task_init(&sp).unwrap();
        // --sif-image still runs sifrun's container.
        let mut sp = Fake::remote();
        let conf = t.path().join("slurm.conf").to_string_lossy().into_owned();
        sp.process_env.insert("SLURM_CONF".into(), conf);
        let mut q = Plugin::new(None);
        q.init(&sp, &[]).unwrap();
        q.option(Opt::Image, Some("/data/img.sif")).unwrap();
        q.init_post_opt(&sp).unwrap();
        assert!(q.args.wants_container());
    }

    #[test]
    fn an_oci_bundle_stays_slurms_as_the_user_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        // slurmstepd (root) does not look at the path: whether a root-only
        // directory exists must not change what happens to the step.
        let mut p = Plugin::new(None);
        let bundle = dir.path().to_str().unwrap();
        p.honour_native_container(bundle).unwrap();
        assert_eq!(p.args.image.as_deref(), Some(bundle));
        // user_init, as the user, finds a directory: Slurm's, no container.
        let mut sp = Fake::remote();
        sp.env.insert("PWD".into(), "/".into());
        p.user_init(&sp).unwrap();
        assert!(p.holder.is_none() && !p.args.wants_container());
        p.task_init(&sp).unwrap();
        // --sif-image naming a directory is still an image (and fails).
        let mut q = Plugin::new(None);
        q.option(Opt::Image, Some(bundle)).unwrap();
        q.settings.launcher = Some("/nonexistent/sifrun".into());
        q.user_init(&sp).unwrap();
        assert!(matches!(q.holder, Some(HolderState::Failed(_))));
    }

    #[test]
    fn admin_policy() {
        let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
        let c = AdminConfig::parse(
            "[users]\nforbid = [\"sif-writable-tmpfs\"]\nmax_binds = 1",
            &names,
        )
        .unwrap();
        let mut a = Args {
            image: Some("/i.sif".into()),
            binds: vec!["/a".into()],
            ..Args::default()
        };
        check_policy(&a, &c).unwrap();
        a.binds.push("/b".into());
        let e = check_policy(&a, &c).unwrap_err().to_string();
        assert!(
            e.contains("--sif-bind: 2 bind specs given, this cluster allows 1"),
            "{e}"
        );
        // One --sif-bind with a comma list is as many binds.
        a.binds = vec!["/a,/b,/c".into()];
        let e = check_policy(&a, &c).unwrap_err().to_string();
        assert!(
            e.contains("--sif-bind: 3 bind specs given, this cluster allows 1"),
            "{e}"
        );
        a.binds = vec!["/a,".into()];
        check_policy(&a, &c).unwrap();
        a.writable_tmpfs = true;
        let e = check_policy(&a, &c).unwrap_err().to_string();
        assert!(e.contains("--sif-writable-tmpfs"), "{e}");
        // The option callback refuses a forbidden option at once.
        let mut p = Plugin::new(None);
        p.settings.config = c;
        let e = p.option(Opt::WritableTmpfs, None).unwrap_err();
        assert!(e.to_string().contains("disabled on this cluster"), "{e}");
    }

    #[test]
    fn lifecycle_against_the_fake() {
        let mut p = Plugin::new(None);
        let local = Fake::default();
        p.init(&local, &[]).unwrap();
        assert_eq!(local.registered.borrow().len(), OPTIONS.len());
        let slurmd = Fake {
            context: Some(Context::Slurmd),
            ..Fake::default()
        };
        p.init(&slurmd, &[]).unwrap();
        assert!(slurmd.registered.borrow().is_empty());
        let refusing = Fake {
            refuse_registration: true,
            ..Fake::default()
        };
        assert!(p.init(&refusing, &[]).is_err());
        let e = p.init(&local, &["bogus=1".to_owned()]).unwrap_err();
        assert!(e.to_string().contains("unknown key \"bogus\""), "{e}");
        p.init(&local, &["launcher=/usr/local/bin/sifrun".to_owned()])
            .unwrap();
        assert_eq!(p.settings.launcher(), Path::new("/usr/local/bin/sifrun"));

        // No image: tasks run normally.
        let remote = Fake::remote();
        p.task_init(&remote).unwrap();

        // An image requested through the job's SIFRUN_IMAGE, but no holder: fail closed.
        let mut with_env = Fake::remote();
        with_env
            .env
            .insert("SIFRUN_IMAGE".into(), "/img.sif".into());
        p.init_post_opt(&with_env).unwrap();
        let err = p.task_init(&remote).unwrap_err().to_string();
        assert!(err.contains("no container was started"), "{err}");
        assert!(
            remote.log.borrow()[0].starts_with("error: sifrun: no container was started")
                && remote.log.borrow()[0].ends_with("(the task was not started)"),
            "{:?}",
            remote.log.borrow()
        );
        p.holder = Some(HolderState::Failed(PluginError::Holder {
            stage: slurm_conf::protocol::Stage::Image,
            message: "exec: /x.sif: not a SIF image".into(),
        }));
        let remote = Fake::remote();
        p.task_init(&remote).unwrap_err();
        assert_eq!(
            remote.log.borrow()[0],
            "error: sifrun: exec: /x.sif: not a SIF image (the task was not started)"
        );
        // On a node of a multi-node step: the node's name, from its first
        // task only (every task of the node fails alike).
        let mut first = Fake::remote();
        first
            .env
            .insert("SLURMD_NODENAME".into(), "sifrun-n2".into());
        first.env.insert("SLURM_LOCALID".into(), "0".into());
        let mut second = Fake::remote();
        second.env = first.env.clone();
        second.env.insert("SLURM_LOCALID".into(), "1".into());
        p.task_init(&first).unwrap_err();
        p.task_init(&second).unwrap_err();
        assert_eq!(
            *first.log.borrow(),
            ["error: sifrun: sifrun-n2: exec: /x.sif: not a SIF image (the task was not started)"]
        );
        assert!(second.log.borrow().is_empty(), "{:?}", second.log.borrow());
        p.option(Opt::Image, Some("/img.sif")).unwrap();
        assert!(p.option(Opt::Image, Some("/other.sif")).is_err());
    }

    #[test]
    fn a_forbidden_option_fails_the_steps_tasks_remotely() {
        let names: Vec<&str> = OPTIONS.iter().map(|o| o.name).collect();
        let mut p = Plugin::new(None);
        p.settings.config =
            AdminConfig::parse("[users]\nforbid = [\"sif-no-home\"]", &names).unwrap();
        let mut sp = Fake::remote();
        sp.env.insert("SIFRUN_IMAGE".into(), "/i.sif".into());
        sp.env.insert("SIFRUN_NO_HOME".into(), "1".into());
        p.init_post_opt(&sp).unwrap();
        assert!(matches!(
            p.holder,
            Some(HolderState::Failed(PluginError::Forbidden("sif-no-home")))
        ));
        // Locally the command itself fails.
        let local = Fake {
            env: sp.env.clone(),
            ..Fake::default()
        };
        let mut p2 = Plugin::new(None);
        p2.settings.config = p.settings.config.clone();
        assert!(p2.init_post_opt(&local).is_err());
    }
}
