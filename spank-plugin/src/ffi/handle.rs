//! [`Handle`]: the [`Spank`] trait over Slurm's functions, looked up in
//! the process that loaded the plugin.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int};
use std::io::Write;

use super::{api, c_strings, log_error, log_info, option_table};
use crate::error::PluginError;
use crate::options::OptionDef;
use crate::spank::{Context, Spank};
use crate::sys;

/// The real SPANK handle of one callback.
pub(super) struct Handle(pub(super) sys::spank_t);

impl Spank for Handle {
    fn context(&self) -> Context {
        let Some(api) = api() else {
            return Context::Error;
        };
        // SAFETY: spank_context takes no argument and only reads Slurm's state.
        match unsafe { api.spank_context() } {
            sys::spank_context::S_CTX_LOCAL => Context::Local,
            sys::spank_context::S_CTX_REMOTE => Context::Remote,
            sys::spank_context::S_CTX_ALLOCATOR => Context::Allocator,
            sys::spank_context::S_CTX_SLURMD => Context::Slurmd,
            sys::spank_context::S_CTX_JOB_SCRIPT => Context::JobScript,
            _ => Context::Error,
        }
    }

    fn register(&self, opt: &OptionDef) -> Result<(), PluginError> {
        let api = api().ok_or_else(unavailable)?;
        let entry = option_table()
            .iter()
            .find(|o| o.val == opt.opt.val())
            .ok_or_else(|| PluginError::Slurm(format!("--{}: not in the table", opt.name)))?;
        // SAFETY: `entry` points into a table that lives for the whole
        // process; Slurm copies what it needs.
        let rc = unsafe { api.spank_option_register(self.0, entry as *const _ as *mut _) };
        if rc == 0 {
            Ok(())
        } else {
            Err(PluginError::Slurm(format!(
                "registering --{} failed (SPANK error {rc})",
                opt.name
            )))
        }
    }

    fn getenv(&self, name: &str) -> Option<String> {
        if self.context() != Context::Remote {
            return std::env::var(name).ok();
        }
        let api = api()?;
        let var = CString::new(name).ok()?;
        let mut buf = vec![0u8; 8192];
        // SAFETY: `buf` is writable for its whole length, which is passed.
        let rc = unsafe {
            api.spank_getenv(
                self.0,
                var.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len() as c_int,
            )
        };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn step_id(&self) -> Option<u32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut id: u32 = 0;
        // SAFETY: S_JOB_STEPID takes one `uint32_t *`, which points to `id`.
        let rc = unsafe { f(self.0, sys::spank_item::S_JOB_STEPID, &mut id as *mut u32) };
        (rc == 0).then_some(id)
    }

    fn job_argv(&self) -> Vec<String> {
        let (argc, argv) = self.argv_array();
        if argv.is_null() {
            return Vec::new();
        }
        // SAFETY: Slurm's array of `argc` NUL-terminated strings.
        unsafe { c_strings(argc, argv) }
    }

    fn job_id(&self) -> Option<u32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut id: u32 = 0;
        // SAFETY: S_JOB_ID takes one `uint32_t *`, which points at a live local.
        let rc = unsafe { f(self.0, sys::spank_item::S_JOB_ID, &mut id as *mut u32) };
        (rc == 0).then_some(id)
    }

    fn task_exit_status(&self) -> Option<i32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut status: c_int = 0;
        // SAFETY: S_TASK_EXIT_STATUS takes one `int *`, which points at a
        // live local.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_TASK_EXIT_STATUS,
                &mut status as *mut c_int,
            )
        };
        (rc == 0).then_some(status)
    }

    fn job_uid(&self) -> Option<u32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut uid: libc::uid_t = 0;
        // SAFETY: S_JOB_UID takes one `uid_t *`, which points at a live local.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_UID,
                &mut uid as *mut libc::uid_t,
            )
        };
        (rc == 0).then_some(uid)
    }

    fn job_gid(&self) -> Option<u32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut gid: libc::gid_t = 0;
        // SAFETY: S_JOB_GID takes one `gid_t *`, which points at a live local.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_GID,
                &mut gid as *mut libc::gid_t,
            )
        };
        (rc == 0).then_some(gid)
    }

    fn job_gids(&self) -> Option<Vec<u32>> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut gids: *mut libc::gid_t = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: S_JOB_SUPPLEMENTARY_GIDS takes a `gid_t **` and an
        // `int *`, both pointing at live locals; Slurm stores a pointer to
        // its own array (which it keeps) and the array's length there.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_SUPPLEMENTARY_GIDS,
                &mut gids as *mut *mut libc::gid_t,
                &mut count as *mut c_int,
            )
        };
        if rc != 0 || count < 0 || (count > 0 && gids.is_null()) {
            return None;
        }
        if count == 0 {
            return Some(Vec::new());
        }
        // SAFETY: Slurm's array holds `count` gids and outlives this call.
        Some(unsafe { std::slice::from_raw_parts(gids, count as usize) }.to_vec())
    }

    fn job_env(&self) -> Vec<(String, String)> {
        let Some(f) = api().and_then(|a| a.spank_get_item.as_ref().ok()) else {
            return Vec::new();
        };
        let mut env: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: S_JOB_ENV takes one `char ***`, which points at a live local;
        // Slurm stores a pointer to its NULL-terminated array there.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_ENV,
                &mut env as *mut *mut *mut c_char,
            )
        };
        let mut out = Vec::new();
        if rc != 0 || env.is_null() {
            return out;
        }
        for i in 0.. {
            // SAFETY: the array is NULL-terminated; we stop at the NULL.
            let p = unsafe { *env.add(i) };
            if p.is_null() {
                break;
            }
            // SAFETY: each entry is a NUL-terminated string owned by Slurm
            // for the duration of the callback; it is copied at once.
            let kv = unsafe { CStr::from_ptr(p) }.to_string_lossy();
            if let Some((k, v)) = kv.split_once('=') {
                out.push((k.to_owned(), v.to_owned()));
            }
        }
        out
    }

    fn setenv(&self, name: &str, value: &str) -> Result<(), PluginError> {
        let api = api().ok_or_else(unavailable)?;
        let (k, v) = (c_string(name, name)?, c_string(name, value)?);
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe { api.spank_setenv(self.0, k.as_ptr(), v.as_ptr(), 1) };
        if rc == 0 {
            Ok(())
        } else {
            Err(PluginError::Slurm(format!("{name}: SPANK error {rc}")))
        }
    }

    fn unsetenv(&self, name: &str) -> Result<(), PluginError> {
        let api = api().ok_or_else(unavailable)?;
        let k = c_string(name, name)?;
        // SAFETY: a NUL-terminated string that outlives the call.
        let rc = unsafe { api.spank_unsetenv(self.0, k.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(PluginError::Slurm(format!("{name}: SPANK error {rc}")))
        }
    }

    fn error(&self, msg: &str) {
        log_error(msg);
    }

    fn info(&self, msg: &str) {
        log_info(msg);
    }

    fn process_getenv(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn task_message(&self, msg: &str) {
        // In task_init, standard error is the task's, which srun shows.
        let _ = writeln!(std::io::stderr(), "{msg}");
    }

    fn set_task_argv0(&self, arg0: &str) -> Result<(), PluginError> {
        let (argc, argv) = self.argv_array();
        if argc < 1 || argv.is_null() {
            return Err(PluginError::Slurm("the task has no command".into()));
        }
        let word = c_string("argv[0]", arg0)?;
        // SAFETY: `argv` is the task's argument array (S_JOB_ARGV), with
        // `argc` >= 1 entries, in this forked task process, which execs it
        // right after task_init. Only its first pointer is replaced, by a
        // leaked string that lives until that exec; the old string stays
        // owned by Slurm.
        unsafe { *argv = word.into_raw() };
        Ok(())
    }
}

impl Handle {
    /// Slurm's argument array of the step (S_JOB_ARGV).
    fn argv_array(&self) -> (c_int, *mut *mut c_char) {
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        let Some(f) = api().and_then(|a| a.spank_get_item.as_ref().ok()) else {
            return (0, argv);
        };
        // SAFETY: S_JOB_ARGV takes `int *` and `char ***`, both pointing to locals.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        };
        if rc != 0 {
            (0, std::ptr::null_mut())
        } else {
            (argc, argv)
        }
    }
}

fn unavailable() -> PluginError {
    PluginError::Slurm("Slurm's SPANK functions are not available".into())
}

fn c_string(name: &str, s: &str) -> Result<CString, PluginError> {
    CString::new(s).map_err(|_| PluginError::Slurm(format!("{name:?}: NUL in the name or value")))
}
