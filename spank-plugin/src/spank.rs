//! The small SPANK surface the plugin's logic needs, as a trait: the real
//! implementation is in `ffi`; unit tests use a recording fake.

use crate::error::PluginError;
use crate::options::OptionDef;

/// Where a callback runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// srun.
    Local,
    /// slurmstepd.
    Remote,
    /// sbatch or salloc.
    Allocator,
    /// slurmd (the job epilog).
    Slurmd,
    /// The job script context (unused).
    JobScript,
    /// Slurm could not say.
    Error,
}

/// What the callbacks may ask of Slurm.
pub trait Spank {
    /// Where this callback runs.
    fn context(&self) -> Context;
    /// Registers an option with Slurm.
    fn register(&self, opt: &OptionDef) -> Result<(), PluginError>;
    /// A variable of the job's environment (remote) or of the process (local).
    fn getenv(&self, name: &str) -> Option<String>;
    /// A variable of the process the plugin runs in (slurmstepd's own, not
    /// the job's: the job's user chooses the job's).
    fn process_getenv(&self, name: &str) -> Option<String>;
    /// The step ID (remote context), `SLURM_BATCH_SCRIPT` for a batch step.
    fn step_id(&self) -> Option<u32>;
    /// The step's command line (remote context).
    fn job_argv(&self) -> Vec<String>;
    /// Replaces the first word of the command the task is about to exec
    /// (task_init; the other words stay).
    fn set_task_argv0(&self, arg0: &str) -> Result<(), PluginError>;
    /// The job ID.
    fn job_id(&self) -> Option<u32>;
    /// The job owner's uid.
    fn job_uid(&self) -> Option<u32>;
    /// The job owner's primary gid (remote context).
    fn job_gid(&self) -> Option<u32>;
    /// The job's supplementary groups, as slurmstepd gives them to the
    /// tasks (remote context); `None` where Slurm could not say.
    fn job_gids(&self) -> Option<Vec<u32>>;
    /// The job's whole environment (remote context).
    fn job_env(&self) -> Vec<(String, String)>;
    /// Sets a variable in the task's environment (task_init).
    fn setenv(&self, name: &str, value: &str) -> Result<(), PluginError>;
    /// Removes a variable from the task's environment (task_init).
    fn unsetenv(&self, name: &str) -> Result<(), PluginError>;
    /// Logs an error where the user sees it (srun's stderr locally).
    fn error(&self, msg: &str);
    /// Logs at info level (slurmd's log remotely).
    fn info(&self, msg: &str);
    /// Writes a line on the task's standard error, which srun shows
    /// (task_init only).
    fn task_message(&self, msg: &str);
    /// The ending task's wait status (task_exit only).
    fn task_exit_status(&self) -> Option<i32>;
}
