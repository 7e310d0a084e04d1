//! The local context (srun; sbatch and salloc share the option code): the
//! options a step inherits from the allocation it runs in.
//!
//! sbatch and salloc leave their `--sif-*` values in the job's environment,
//! and Slurm replays them through the option callbacks before the command
//! line's. A step that gives its own value replaces the allocation's; the
//! allocation's value replayed after that must not count as a second one.
//!
//! Where the site has an oci.conf, Slurm runs `--container` itself and the
//! plugin leaves it alone ([`Plugin::leave_container_to_slurm`]): it says
//! so once, here, when the command's own `--container` names a file (a SIF
//! image, not an OCI bundle directory), and refuses it together with
//! `--sif-image`, which would start Slurm's runtime inside sifrun's
//! container.

use crate::error::PluginError;
use crate::options::{OPTIONS, Opt, allocation_var};
use crate::plugin::Plugin;
use crate::spank::Spank;

/// An option value srun inherited from its allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Inherited {
    /// Not yet contradicted.
    Value(Opt, String),
    /// The command line gave another value, which replaced this one.
    Replaced(Opt, String),
}

impl Plugin {
    /// slurm_spank_init in srun: notes the allocation's option values.
    pub(crate) fn remember_inherited(&mut self, sp: &dyn Spank) {
        self.inherited = OPTIONS
            .iter()
            .filter_map(|o| {
                let v = sp.getenv(&allocation_var(o.name))?;
                Some(Inherited::Value(o.opt, v))
            })
            .collect();
    }

    /// Before option `opt` takes `value`: forgets an inherited value the
    /// command line contradicts; returns whether `value` is the replaced
    /// inherited one replayed late (to be ignored).
    pub(crate) fn replayed_inherited(&mut self, opt: Opt, value: &str) -> bool {
        for entry in self.inherited.iter_mut() {
            match entry {
                Inherited::Value(o, x) if *o == opt && x != value => {
                    // The step asks for something else than the allocation.
                    self.args.clear(opt);
                    *entry = Inherited::Replaced(opt, x.clone());
                }
                Inherited::Replaced(o, x) if *o == opt && x == value => return true,
                _ => {}
            }
        }
        false
    }
}

impl Plugin {
    /// srun, sbatch, salloc (init_post_opt): where oci.conf exists, the
    /// command's own `--container` is Slurm's. Says so once for a file;
    /// refuses it with `--sif-image`.
    pub(crate) fn leave_container_to_slurm(&self, sp: &dyn Spank) -> Result<(), PluginError> {
        let (Some(oci_conf), Some(value)) = (&self.settings.oci_conf, &self.own_container) else {
            return Ok(());
        };
        if value.is_empty() {
            return Ok(());
        }
        if let Some(image) = &self.args.image {
            return Err(PluginError::ContainerIsSlurms {
                native: value.clone(),
                image: image.clone(),
                oci_conf: oci_conf.clone(),
            });
        }
        if !std::path::Path::new(value).is_dir() {
            sp.info(&format!(
                "sifrun: --container={value} goes to Slurm's own OCI runtime on this cluster \
                 ({} exists), not to sifrun's plugin; --sif-image={value} runs it in sifrun's \
                 container",
                oci_conf.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::fake::Fake;
    use crate::options::{Opt, allocation_var};
    use crate::plugin::Plugin;

    /// srun with `SLURM_CONF` in `dir` and its own `--container=own`.
    fn srun_with(dir: &std::path::Path, own: Option<&str>, image: Option<&str>) -> (Plugin, Fake) {
        let mut sp = Fake::default();
        let conf = dir.join("slurm.conf").to_string_lossy().into_owned();
        sp.process_env.insert("SLURM_CONF".into(), conf);
        let mut p = Plugin::new(None);
        p.init(&sp, &[]).unwrap();
        if let Some(i) = image {
            p.option(Opt::Image, Some(i)).unwrap();
        }
        p.own_container = own.map(str::to_owned);
        sp.log.borrow_mut().clear();
        (p, sp)
    }

    #[test]
    fn with_an_oci_conf_container_is_slurms_and_srun_says_so_once() {
        let t = crate::fake::scratch();
        // No oci.conf: nothing said.
        let (mut p, sp) = srun_with(t.path(), Some("/data/img.sif"), None);
        p.init_post_opt(&sp).unwrap();
        assert!(sp.log.borrow().is_empty(), "{:?}", sp.log.borrow());
        std::fs::write(t.path().join("oci.conf"), "RunTimeRun=x\n").unwrap();
        let (mut p, sp) = srun_with(t.path(), Some("/data/img.sif"), None);
        p.init_post_opt(&sp).unwrap();
        let log = sp.log.borrow();
        assert_eq!(log.len(), 1, "{log:?}");
        assert!(
            log[0].contains("goes to Slurm's own OCI runtime")
                && log[0].contains(&t.path().join("oci.conf").display().to_string())
                && log[0].contains("--sif-image=/data/img.sif"),
            "{log:?}"
        );
        assert!(!p.args.wants_container());
        // An inherited --container (not this command's): nothing said.
        let (mut p, sp) = srun_with(t.path(), None, None);
        p.init_post_opt(&sp).unwrap();
        assert!(sp.log.borrow().is_empty());
        // An OCI bundle (a directory) is Slurm's anyway: nothing said.
        let bundle = t.path().to_str().unwrap();
        let (mut p, sp) = srun_with(t.path(), Some(bundle), None);
        p.init_post_opt(&sp).unwrap();
        assert!(sp.log.borrow().is_empty());
        // --sif-image alone still works; with --container it is refused.
        let (mut p, sp) = srun_with(t.path(), None, Some("/data/img.sif"));
        p.init_post_opt(&sp).unwrap();
        assert!(p.args.wants_container());
        let (mut p, sp) = srun_with(t.path(), Some("/data/a.sif"), Some("/data/b.sif"));
        let e = p.init_post_opt(&sp).unwrap_err().to_string();
        assert!(
            e.contains("--container=/data/a.sif") && e.contains("--sif-image=/data/b.sif"),
            "{e}"
        );
    }

    #[test]
    fn a_steps_own_options_replace_the_allocations() {
        let mut p = Plugin::new(None);
        let mut local = Fake::default();
        local
            .env
            .insert(allocation_var("sif-image"), "/batch.sif".into());
        p.init(&local, &[]).unwrap();
        p.option(Opt::Image, Some("/batch.sif")).unwrap();
        assert_eq!(p.args.image.as_deref(), Some("/batch.sif"));
        p.option(Opt::Image, Some("/step.sif")).unwrap();
        assert_eq!(p.args.image.as_deref(), Some("/step.sif"));
        p.option(Opt::Image, Some("/batch.sif")).unwrap();
        assert_eq!(
            p.args.image.as_deref(),
            Some("/step.sif"),
            "replayed late, still replaced"
        );
        let e = p.option(Opt::Image, Some("/third.sif")).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }
}
