//! The small SPANK surface the plugin's logic needs, as a trait with a real
//! implementation (in `ffi`) and a fake for unit tests.

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
    Slurmd,
    JobScript,
    Error,
}

/// What the callbacks may ask of Slurm.
pub trait Spank {
    fn context(&self) -> Context;
    /// Registers an option with Slurm.
    fn register(&self, opt: &OptionDef) -> Result<(), String>;
    /// A variable of the job's environment (remote) or of the process (local).
    fn getenv(&self, name: &str) -> Option<String>;
    /// The step ID (remote context), `SLURM_BATCH_SCRIPT` for a batch step.
    fn step_id(&self) -> Option<u32>;
    /// The step's command line (remote context).
    fn job_argv(&self) -> Vec<String>;
    /// The job ID.
    fn job_id(&self) -> Option<u32>;
    /// The job owner's uid.
    fn job_uid(&self) -> Option<u32>;
    /// The job's whole environment (remote context).
    fn job_env(&self) -> Vec<(String, String)>;
    /// Sets a variable in the task's environment (task_init).
    fn setenv(&self, name: &str, value: &str) -> Result<(), String>;
    /// Removes a variable from the task's environment (task_init).
    fn unsetenv(&self, name: &str) -> Result<(), String>;
    /// Logs an error where the user sees it (srun's stderr locally).
    fn error(&self, msg: &str);
    /// Logs at info level (slurmd's log remotely).
    fn info(&self, msg: &str);
}

/// A recording fake.
#[derive(Default)]
pub struct Fake {
    pub context: Option<Context>,
    pub env: std::collections::BTreeMap<String, String>,
    pub registered: std::cell::RefCell<Vec<String>>,
    pub log: std::cell::RefCell<Vec<String>>,
    pub refuse_registration: bool,
    pub step_id: Option<u32>,
    pub job_id: Option<u32>,
    pub job_uid: Option<u32>,
    pub argv: Vec<String>,
    /// The task's environment as changed by setenv/unsetenv.
    pub task_env: std::cell::RefCell<std::collections::BTreeMap<String, String>>,
}

impl Spank for Fake {
    fn context(&self) -> Context {
        self.context.unwrap_or(Context::Local)
    }
    fn register(&self, opt: &OptionDef) -> Result<(), String> {
        if self.refuse_registration {
            return Err(format!("cannot register --{}", opt.name));
        }
        self.registered.borrow_mut().push(opt.name.to_owned());
        Ok(())
    }
    fn getenv(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn step_id(&self) -> Option<u32> {
        self.step_id
    }
    fn job_argv(&self) -> Vec<String> {
        self.argv.clone()
    }
    fn job_id(&self) -> Option<u32> {
        self.job_id
    }
    fn job_uid(&self) -> Option<u32> {
        self.job_uid
    }
    fn job_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn setenv(&self, name: &str, value: &str) -> Result<(), String> {
        self.task_env
            .borrow_mut()
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }
    fn unsetenv(&self, name: &str) -> Result<(), String> {
        self.task_env.borrow_mut().remove(name);
        Ok(())
    }
    fn error(&self, msg: &str) {
        self.log.borrow_mut().push(format!("error: {msg}"));
    }
    fn info(&self, msg: &str) {
        self.log.borrow_mut().push(format!("info: {msg}"));
    }
}
