//! A recording [`Spank`] for unit tests.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::error::PluginError;
use crate::options::OptionDef;
use crate::spank::{Context, Spank};

/// Records what the plugin asked of Slurm.
#[derive(Default)]
pub struct Fake {
    pub context: Option<Context>,
    pub env: BTreeMap<String, String>,
    pub process_env: BTreeMap<String, String>,
    pub registered: RefCell<Vec<String>>,
    pub log: RefCell<Vec<String>>,
    pub refuse_registration: bool,
    pub step_id: Option<u32>,
    pub job_id: Option<u32>,
    pub job_uid: Option<u32>,
    pub job_gid: Option<u32>,
    pub job_gids: Option<Vec<u32>>,
    pub argv: RefCell<Vec<String>>,
    /// The task's environment as changed by setenv/unsetenv.
    pub task_env: RefCell<BTreeMap<String, String>>,
    /// The ending task's wait status (task_exit).
    pub task_exit_status: Option<i32>,
}

impl Fake {
    /// A fake for slurmstepd.
    pub fn remote() -> Fake {
        Fake {
            context: Some(Context::Remote),
            ..Fake::default()
        }
    }
}

impl Spank for Fake {
    fn context(&self) -> Context {
        self.context.unwrap_or(Context::Local)
    }
    fn register(&self, opt: &OptionDef) -> Result<(), PluginError> {
        if self.refuse_registration {
            return Err(PluginError::Slurm(format!(
                "cannot register --{}",
                opt.name
            )));
        }
        self.registered.borrow_mut().push(opt.name.to_owned());
        Ok(())
    }
    fn getenv(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn process_getenv(&self, name: &str) -> Option<String> {
        self.process_env.get(name).cloned()
    }
    fn step_id(&self) -> Option<u32> {
        self.step_id
    }
    fn job_argv(&self) -> Vec<String> {
        self.argv.borrow().clone()
    }
    fn set_task_argv0(&self, arg0: &str) -> Result<(), PluginError> {
        match self.argv.borrow_mut().first_mut() {
            Some(a) => *a = arg0.to_owned(),
            None => return Err(PluginError::Slurm("no command".into())),
        }
        Ok(())
    }
    fn job_id(&self) -> Option<u32> {
        self.job_id
    }
    fn job_uid(&self) -> Option<u32> {
        self.job_uid
    }
    fn job_gid(&self) -> Option<u32> {
        self.job_gid
    }
    fn job_gids(&self) -> Option<Vec<u32>> {
        self.job_gids.clone()
    }
    fn job_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn setenv(&self, name: &str, value: &str) -> Result<(), PluginError> {
        self.task_env
            .borrow_mut()
            .insert(name.to_owned(), value.to_owned());
        Ok(())
    }
    fn unsetenv(&self, name: &str) -> Result<(), PluginError> {
        self.task_env.borrow_mut().remove(name);
        Ok(())
    }
    fn error(&self, msg: &str) {
        self.log.borrow_mut().push(format!("error: {msg}"));
    }
    fn info(&self, msg: &str) {
        self.log.borrow_mut().push(format!("info: {msg}"));
    }
    fn task_message(&self, msg: &str) {
        self.log.borrow_mut().push(format!("task: {msg}"));
    }
    fn task_exit_status(&self) -> Option<i32> {
        self.task_exit_status
    }
}

/// A scratch directory whose ancestors are the build tree's (root's or the
/// tester's, 0755), not /tmp's: nothing under a directory others may write
/// is trusted.
pub fn scratch() -> tempfile::TempDir {
    let exe = std::env::current_exe().expect("the test binary");
    tempfile::tempdir_in(exe.parent().expect("its directory")).expect("a scratch directory")
}
