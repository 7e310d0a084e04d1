//! The local context (srun; sbatch and salloc share the option code): the
//! options a step inherits from the allocation it runs in.
//!
//! sbatch and salloc leave their `--sif-*` values in the job's environment,
//! and Slurm replays them through the option callbacks before the command
//! line's. A step that gives its own value replaces the allocation's; the
//! allocation's value replayed after that must not count as a second one.

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

#[cfg(test)]
mod tests {
    use crate::fake::Fake;
    use crate::options::{Opt, allocation_var};
    use crate::plugin::Plugin;

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
