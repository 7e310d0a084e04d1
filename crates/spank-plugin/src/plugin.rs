//! What each SPANK callback does, over the [`Spank`] trait.
//!
//! Status: options are registered, parsed and checked in every context. The
//! container lifecycle (starting the launcher in user_init, joining it in
//! task_init) is not built yet, so until it is, a task that asks for an image
//! fails before it runs: it never runs on the host by mistake.

use std::sync::Mutex;

use crate::options::{Args, OPTIONS};
use crate::spank::{Context, Spank};

/// The step's option values (one plugin instance per process).
pub static ARGS: Mutex<Args> = Mutex::new(Args {
    image: None,
    binds: Vec::new(),
    workdir: None,
    env: Vec::new(),
    writable_tmpfs: false,
    no_home: false,
    gpu: None,
    run: false,
});

fn args() -> std::sync::MutexGuard<'static, Args> {
    ARGS.lock().unwrap_or_else(|p| p.into_inner())
}

/// `slurm_spank_init`: checks the plugstack.conf arguments, then registers
/// the options where users can give them.
pub fn init(sp: &dyn Spank, plugstack_args: &[String]) -> Result<(), String> {
    slurm_conf::parse_plugstack_args(
        plugstack_args.iter().map(String::as_str),
        crate::PLUGSTACK_KEYS,
    )
    .map_err(|e| format!("plugstack.conf: {e}"))?;
    match sp.context() {
        Context::Local | Context::Remote | Context::Allocator => {
            for opt in OPTIONS {
                sp.register(opt)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An option callback.
pub fn option(val: i32, value: Option<&str>) -> Result<(), String> {
    args().apply(val, value).map_err(|e| e.to_string())
}

/// `slurm_spank_init_post_opt`: `SIFRUN_*` defaults, from the command's
/// environment locally and from the job's environment in slurmstepd (where
/// the command-line options arrive through their callbacks), so both sides
/// agree on what the step asked for.
pub fn init_post_opt(sp: &dyn Spank) -> Result<(), String> {
    if matches!(
        sp.context(),
        Context::Local | Context::Allocator | Context::Remote
    ) {
        args()
            .apply_env(|k| sp.getenv(k))
            .map_err(|e| format!("sifrun: {e}"))?;
    }
    Ok(())
}

/// `slurm_spank_task_init`: runs in the task, as the user, just before exec.
pub fn task_init(sp: &dyn Spank) -> Result<(), String> {
    if sp.context() != Context::Remote {
        return Ok(());
    }
    let a = args().clone();
    if a.wants_container() {
        let msg = format!(
            "sifrun: --sif-image={}: running Slurm tasks in containers is not available in this build yet; the task was not started",
            a.image.as_deref().unwrap_or_default()
        );
        sp.error(&msg);
        return Err(msg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spank::Fake;

    fn reset() {
        *args() = Args::default();
    }

    #[test]
    fn lifecycle_against_the_fake() {
        reset();
        let local = Fake::default();
        init(&local, &[]).unwrap();
        assert_eq!(local.registered.borrow().len(), OPTIONS.len());
        let slurmd = Fake {
            context: Some(Context::Slurmd),
            ..Fake::default()
        };
        init(&slurmd, &[]).unwrap();
        assert!(slurmd.registered.borrow().is_empty());
        let refusing = Fake {
            refuse_registration: true,
            ..Fake::default()
        };
        assert!(init(&refusing, &[]).is_err());
        let e = init(&local, &["bogus=1".to_owned()]).unwrap_err();
        assert!(e.contains("unknown key \"bogus\""), "{e}");
        init(&local, &["launcher=/usr/local/bin/sifrun".to_owned()]).unwrap();

        // No image: tasks run normally.
        let remote = Fake {
            context: Some(Context::Remote),
            ..Fake::default()
        };
        task_init(&remote).unwrap();

        // An image requested (here through SIFRUN_IMAGE): fail closed.
        let mut with_env = Fake::default();
        with_env
            .env
            .insert("SIFRUN_IMAGE".into(), "/img.sif".into());
        init_post_opt(&with_env).unwrap();
        let err = task_init(&remote).unwrap_err();
        assert!(
            err.contains("--sif-image=/img.sif") && err.contains("not started"),
            "{err}"
        );
        assert!(remote.log.borrow()[0].starts_with("error: sifrun:"));

        option(1, Some("/img.sif")).unwrap();
        assert!(option(1, Some("/other.sif")).is_err());
        reset();
    }
}
