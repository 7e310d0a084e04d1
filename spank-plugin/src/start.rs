//! Starting the step's holder: what user_init and init_post_opt share, and
//! the early start.
//!
//! slurmstepd spends about 10 ms between init_post_opt and user_init on
//! its own set-up (I/O with srun, PAM, task plugins). A holder started in
//! init_post_opt sets the container up meanwhile, on another CPU, and
//! user_init only reads its report (issue 11, section 7). init_post_opt
//! runs as root, so the holder becomes the job's user in its child before
//! exec (the groups, gid and uid slurmstepd gives the tasks) and enters the
//! working directory as that user; root itself reads no path of the user's.
//! The early start is taken only where it changes nothing else:
//! * a local image served by the lean holder (a `docker://` image is
//!   looked up in the user's cache, as the user, by user_init);
//! * no ECL (its holder starts as root on purpose, see `holder`);
//! * no `SlurmdParameters=contain_spank` in slurm.conf: there user_init runs
//!   inside the job's namespaces (`job_container`), which the holder must
//!   see; a holder started early where user_init then finds itself
//!   contained anyway is ended and started again there;
//! * not `task/cgroup` on cgroup v1, which puts slurmstepd in the step's
//!   cgroups only after init_post_opt (see [`placed_before_init`]).

use std::path::{Path, PathBuf};

use slurm_conf::protocol::Request;

use crate::error::PluginError;
use crate::holder::{self, JobUser, StartAs};
use crate::plugin::Plugin;
use crate::remote::HolderState;
use crate::request::{self, Step};
use crate::spank::Spank;

/// What a start needs, once the step's checks passed.
pub(crate) struct StartPlan {
    /// The holder program (the lean holder or the launcher).
    pub(crate) program: PathBuf,
    pub(crate) request: Request,
    /// The step's working directory.
    pub(crate) cwd: String,
}

/// A holder started, and what the plugin keeps about it until its report.
#[derive(Debug)]
pub struct Starting {
    pub(crate) spawned: holder::Spawned,
    /// The program's file name, for the log.
    pub(crate) program: String,
    /// The ECL path's namespace directory.
    pub(crate) ns: Option<PathBuf>,
    /// Started by init_post_opt.
    pub(crate) early: bool,
}

impl StartPlan {
    pub(crate) fn starting(self, spawned: holder::Spawned, early: bool) -> Starting {
        Starting {
            spawned,
            program: self
                .program
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            ns: self.request.ns_dir.clone(),
            early,
        }
    }
}

impl Plugin {
    /// The checks before a start, and the request: `Ok(None)` when the step
    /// has no container after all (Slurm's `--container` naming an OCI
    /// bundle, which user_init looks at as the user; `as_root` leaves that
    /// to the holder's child, see [`StartAs::Root`]).
    pub(crate) fn holder_plan(
        &mut self,
        sp: &dyn Spank,
        as_root: bool,
    ) -> Result<Option<StartPlan>, PluginError> {
        let step = Step::of(sp);
        let image = request::image_path(&self.args, &step.cwd);
        if !as_root && self.image_from_container && Path::new(&image).is_dir() {
            self.args.image = None;
            return Ok(None);
        }
        // users.image_dirs is judged by the holder on the file it opens.
        let given = self.args.image.as_deref().unwrap_or("");
        if !step.cwd_known && !given.starts_with('/') && !crate::image_pin::is_registry_image(given)
        {
            return Err(PluginError::Task(format!(
                "{given}: a relative image needs the job's working directory, and the job's PWD is not an absolute path"
            )));
        }
        // slurmstepd runs the launcher with root's real uid.
        let launcher = self.settings.launcher();
        self.check_trusted("launcher", &launcher)?;
        let cwd = step.cwd.clone();
        let request = request::build(&self.args, &self.settings, step);
        let program = holder::program(&launcher, &request, &|p| self.check_trusted("launcher", p))?;
        Ok(Some(StartPlan {
            program,
            request,
            cwd,
        }))
    }

    /// Starts the holder from user_init (as the user's effective uid),
    /// reading the node's devices meanwhile; `None` when the step has no
    /// container after all, or its failure is recorded.
    pub(crate) fn start_in_hook(
        &mut self,
        sp: &dyn Spank,
    ) -> Option<(Starting, interconnect::topology::Devices)> {
        let plan = match self.holder_plan(sp, false) {
            Ok(Some(plan)) => plan,
            Ok(None) => return None,
            Err(e) => {
                self.holder = Some(HolderState::Failed(e));
                return None;
            }
        };
        // The node's devices are read while the holder starts.
        let (spawned, devices) = std::thread::scope(|scope| {
            let scan = scope.spawn(|| interconnect::topology::Devices::scan(Path::new("/")));
            let spawned = holder::spawn(
                &plan.program,
                &plan.request,
                &plan.cwd,
                holder::StartAs::Hook,
            );
            (spawned, scan.join().unwrap_or_default())
        });
        match spawned {
            Ok(spawned) => Some((plan.starting(spawned, false), devices)),
            Err(e) => {
                self.holder = Some(HolderState::Failed(e));
                None
            }
        }
    }

    /// init_post_opt (slurmstepd, root): starts the step's holder now where
    /// that changes nothing but the time (see the module's text), and reads
    /// the node's devices while it sets up.
    pub(crate) fn start_early(&mut self, sp: &dyn Spank) {
        let Some(user) = self.early_start_user(sp) else {
            return;
        };
        let plan = match self.holder_plan(sp, true) {
            Ok(Some(plan)) => plan,
            Ok(None) => return,
            Err(e) => {
                self.holder = Some(HolderState::Failed(e));
                return;
            }
        };
        if plan.program.file_name() != Some(holder::LEAN_HOLDER.as_ref()) {
            return;
        }
        let refuse_dir = self
            .image_from_container
            .then_some(plan.request.image.as_path());
        let who = StartAs::Root {
            user: &user,
            refuse_dir,
        };
        match holder::spawn(&plan.program, &plan.request, &plan.cwd, who) {
            Ok(spawned) => {
                self.holder = Some(HolderState::Starting(Box::new(
                    plan.starting(spawned, true),
                )));
                self.devices = interconnect::topology::Devices::scan(Path::new("/"));
            }
            // Slurm's --container naming a directory: an OCI bundle.
            Err(PluginError::Spawn { source, .. })
                if self.image_from_container && source.raw_os_error() == Some(libc::EISDIR) =>
            {
                self.args.image = None;
            }
            Err(e) => self.holder = Some(HolderState::Failed(e)),
        }
    }

    /// The job's user when the step's holder may start early, `None` where
    /// it waits for user_init.
    fn early_start_user(&self, sp: &dyn Spank) -> Option<JobUser> {
        if !self.args.wants_container()
            || self.holder.is_some()
            || self.unusable.is_some()
            || self.settings.config.ecl.activated
        {
            return None;
        }
        let image = self.args.image.as_deref()?;
        if crate::image_pin::is_registry_image(image) {
            return None;
        }
        let conf = slurm_conf::slurm::SlurmConf::load(&request::slurm_conf_path(sp));
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if !placed_before_init(&conf, unified) {
            return None;
        }
        Some(JobUser {
            uid: sp.job_uid()?,
            gid: sp.job_gid()?,
            groups: sp.job_gids()?,
        })
    }
}

/// Whether slurm.conf has user_init run inside the job's namespaces.
fn contains_spank(conf: &slurm_conf::slurm::SlurmConf) -> bool {
    listed(conf, "SlurmdParameters", "contain_spank")
}

/// Whether slurmstepd is where the step's processes belong already in
/// init_post_opt, so that a holder forked there is held as one forked in
/// user_init: not with contain_spank (user_init then runs in the job's
/// namespaces), and not with `task/cgroup` on cgroup v1, which moves
/// slurmstepd into the step's cpuset, memory and devices cgroups only after
/// init_post_opt (`task_p_pre_setuid`; a holder forked before would keep
/// slurmd's, and so would what the image's environment scripts start). On
/// cgroup v2 (`unified`: Slurm's own test, `cgroup.controllers` at the
/// root) proctrack puts slurmstepd in the step's cgroup before spank_init.
fn placed_before_init(conf: &slurm_conf::slurm::SlurmConf, unified: bool) -> bool {
    !contains_spank(conf) && (unified || !listed(conf, "TaskPlugin", "task/cgroup"))
}

/// Whether `key`'s comma-separated values name `item`.
fn listed(conf: &slurm_conf::slurm::SlurmConf, key: &str, item: &str) -> bool {
    conf.values(key)
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(item))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;
    use crate::options::Opt;

    fn step_with(conf: &str, dir: &Path) -> Fake {
        let path = dir.join("slurm.conf");
        std::fs::write(&path, conf).unwrap();
        let mut sp = Fake::remote();
        sp.process_env
            .insert("SLURM_CONF".into(), path.to_str().unwrap().into());
        sp.job_uid = Some(1001);
        sp.job_gid = Some(1001);
        sp.job_gids = Some(vec![1001, 27]);
        sp
    }

    fn plugin(image: &str) -> Plugin {
        let mut p = Plugin::new(None);
        p.option(Opt::Image, Some(image)).unwrap();
        p
    }

    #[test]
    fn contain_spank_is_found_among_the_slurmd_parameters() {
        let conf = |text: &str| slurm_conf::slurm::SlurmConf::parse(text);
        assert!(contains_spank(&conf("SlurmdParameters=contain_spank\n")));
        assert!(contains_spank(&conf(
            "SlurmdParameters=config_overrides, Contain_Spank\n"
        )));
        assert!(!contains_spank(&conf(
            "SlurmdParameters=config_overrides\n"
        )));
        assert!(!contains_spank(&conf("# SlurmdParameters=contain_spank\n")));
        assert!(!contains_spank(&conf("")));
    }

    #[test]
    fn task_cgroup_on_cgroup_v1_places_slurmstepd_too_late() {
        let conf = |text: &str| slurm_conf::slurm::SlurmConf::parse(text);
        let cgroup = conf("TaskPlugin=task/affinity,task/cgroup\n");
        assert!(!placed_before_init(&cgroup, false));
        assert!(placed_before_init(&cgroup, true));
        assert!(placed_before_init(
            &conf("TaskPlugin=task/affinity\n"),
            false
        ));
        assert!(placed_before_init(&conf("TaskPlugin=task/none\n"), false));
        assert!(placed_before_init(&conf(""), false));
        let contained = conf("SlurmdParameters=contain_spank\n");
        assert!(!placed_before_init(&contained, true));
    }

    /// The early start is taken for a local image with the job's user known,
    /// and left to user_init under contain_spank, with an ECL, for a
    /// registry image, or where Slurm cannot give the job's groups.
    #[test]
    fn the_early_start_is_taken_only_where_it_changes_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let plain = step_with("ClusterName=c\n", dir.path());
        let user = plugin("/i.sif").early_start_user(&plain).unwrap();
        assert_eq!(
            user,
            JobUser {
                uid: 1001,
                gid: 1001,
                groups: vec![1001, 27]
            }
        );
        let contained = step_with("SlurmdParameters=contain_spank\n", dir.path());
        assert_eq!(plugin("/i.sif").early_start_user(&contained), None);
        let plain = step_with("ClusterName=c\n", dir.path());
        assert_eq!(plugin("docker://alpine").early_start_user(&plain), None);
        let mut ecl = plugin("/i.sif");
        ecl.settings.config.ecl.activated = true;
        assert_eq!(ecl.early_start_user(&plain), None);
        let mut no_groups = step_with("ClusterName=c\n", dir.path());
        no_groups.job_gids = None;
        assert_eq!(plugin("/i.sif").early_start_user(&no_groups), None);
        let mut started = plugin("/i.sif");
        started.holder = Some(HolderState::Failed(PluginError::NotStarted));
        assert_eq!(started.early_start_user(&plain), None);
        assert_eq!(Plugin::new(None).early_start_user(&plain), None);
    }
}
