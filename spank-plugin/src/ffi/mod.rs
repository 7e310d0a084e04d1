//! The C interface Slurm loads: the plugin's identity symbols and the
//! `slurm_spank_*` callbacks, over the one `Plugin` state of the process.
//! Every callback catches panics and turns them into an error return,
//! never unwinding into Slurm. Slurm's functions are looked up in the
//! loading process at run time (srun, sbatch, salloc and slurmstepd all
//! carry them), so the library neither links libslurm nor leaves `spank_*`
//! symbols undefined.
#![allow(unsafe_code)]

mod handle;
pub mod pidfd;
pub mod spawn;

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{LazyLock, Mutex, MutexGuard, OnceLock};

use handle::Handle;

use crate::error::PluginError;
use crate::options::{OPTIONS, Opt, OptionDef};
use crate::plugin::Plugin;
use crate::spank::{Context, Spank};
use crate::sys;

/// The plugin's name, as `SPANK_PLUGIN(sifrun, 1)` would define it.
#[unsafe(no_mangle)]
pub static plugin_name: [u8; 7] = *b"sifrun\0";
/// Slurm's plugin type for SPANK plugins.
#[unsafe(no_mangle)]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// The Slurm release this was built against; Slurm checks major.minor.
#[unsafe(no_mangle)]
pub static plugin_version: c_uint = sys::SLURM_VERSION_NUMBER;
/// The SPANK plugin interface version.
#[unsafe(no_mangle)]
pub static spank_plugin_version: c_uint = 1;
/// Slurm 25.05 and later: when this required plugin's `slurm_spank_init`
/// fails, fail the job instead of draining the node (Slurm's default, and
/// the only behaviour before 25.05). Built only against headers that have it.
#[cfg(slurm_init_failure_mode)]
#[unsafe(no_mangle)]
pub static slurm_spank_init_failure_mode: c_int = sys::slurm_err_t_ESPANK_JOB_FAILURE as c_int;

const ESPANK_SUCCESS: c_int = 0;
const ESPANK_ERROR: c_int = 1;

/// The plugin's state in this process. Slurm runs the callbacks one at a
/// time; the lock never is held across a fork (tasks inherit a copy).
static PLUGIN: LazyLock<Mutex<Plugin>> = LazyLock::new(|| Mutex::new(Plugin::for_this_process()));

fn plugin() -> MutexGuard<'static, Plugin> {
    PLUGIN.lock().unwrap_or_else(|p| p.into_inner())
}

fn api() -> Option<&'static sys::SpankApi> {
    static API: OnceLock<Option<sys::SpankApi>> = OnceLock::new();
    API.get_or_init(|| {
        let this = libloading::os::unix::Library::this();
        // SAFETY: looking symbols up in the process that loaded us; each is
        // used only with the signature bindgen read from <slurm/spank.h>.
        unsafe { sys::SpankApi::from_library(this) }.ok()
    })
    .as_ref()
}

/// The option table handed to Slurm; it must outlive every callback.
struct Table(Vec<sys::spank_option>);

// SAFETY: the table is built once and never changed; its pointers lead to
// leaked, immutable C strings, so sharing it between threads is sound.
unsafe impl Send for Table {}
// SAFETY: as above.
unsafe impl Sync for Table {}

fn option_table() -> &'static [sys::spank_option] {
    static TABLE: OnceLock<Table> = OnceLock::new();
    &TABLE
        .get_or_init(|| {
            let leak = |s: &str| CString::new(s).expect("no NUL in option text").into_raw();
            Table(
                OPTIONS
                    .iter()
                    .map(|o: &OptionDef| sys::spank_option {
                        name: leak(o.name),
                        arginfo: o.arg.map_or(std::ptr::null_mut(), leak),
                        usage: leak(o.usage),
                        has_arg: c_int::from(o.arg.is_some()),
                        val: o.opt.val(),
                        cb: Some(option_callback),
                    })
                    .collect(),
            )
        })
        .0
}

unsafe extern "C" fn option_callback(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    let value = if optarg.is_null() {
        None
    } else {
        // SAFETY: Slurm passes a NUL-terminated string that lives for the call.
        Some(
            unsafe { CStr::from_ptr(optarg) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    let Some(opt) = Opt::from_val(val) else {
        log_error(&format!("sifrun: unknown option number {val}"));
        if remote != 0 {
            refuse_step(&format!("unknown option number {val}"));
        }
        return ESPANK_ERROR;
    };
    let remote = remote != 0;
    match catch_unwind(AssertUnwindSafe(|| {
        plugin().option_in(opt, value.as_deref(), remote)
    })) {
        Ok(Ok(())) => ESPANK_SUCCESS,
        Ok(Err(e)) => {
            log_error(&format!("sifrun: {e}"));
            ESPANK_ERROR
        }
        Err(_) => {
            if remote {
                refuse_step("internal error (a panic was caught)");
            }
            ESPANK_ERROR
        }
    }
}

/// slurmstepd: a callback failed in a way Slurm would run the step
/// through; every task of the step fails with `why` instead.
fn refuse_step(why: &str) {
    plugin().unusable.get_or_insert_with(|| why.to_owned());
}

fn log_error(msg: &str) {
    let f = api().and_then(|a| a.slurm_error.as_ref().ok());
    if let (Some(f), Ok(text)) = (f, CString::new(msg.replace('\0', " "))) {
        // SAFETY: a constant "%s" format with one NUL-terminated argument.
        unsafe { f(c"%s".as_ptr(), text.as_ptr()) };
    } else {
        eprintln!("{msg}");
    }
}

fn log_info(msg: &str) {
    let f = api().and_then(|a| a.slurm_info.as_ref().ok());
    if let (Some(f), Ok(text)) = (f, CString::new(msg.replace('\0', " "))) {
        // SAFETY: as in `log_error`.
        unsafe { f(c"%s".as_ptr(), text.as_ptr()) };
    }
}

/// How a callback reports its error.
#[derive(Clone, Copy)]
enum Report {
    /// Where the user sees it (srun's stderr locally).
    Error,
    /// In slurmd's log (remote callbacks, where the tasks report to the user).
    Info,
    /// Not at all (the callback said it already).
    Silent,
}

/// Runs one callback over the plugin's state, mapping errors and panics to
/// `ESPANK_ERROR`.
fn guard(
    sp: sys::spank_t,
    report: Report,
    f: impl FnOnce(&mut Plugin, &Handle) -> Result<(), PluginError>,
) -> c_int {
    let handle = Handle(sp);
    match catch_unwind(AssertUnwindSafe(|| f(&mut plugin(), &handle))) {
        Ok(Ok(())) => ESPANK_SUCCESS,
        Ok(Err(e)) => {
            let msg = format!("sifrun: {e}");
            match report {
                Report::Error => handle.error(&msg),
                Report::Info => handle.info(&msg),
                Report::Silent => {}
            }
            ESPANK_ERROR
        }
        Err(_) => {
            log_error("sifrun: internal error (a panic was caught); the task was not started");
            if handle.context() == Context::Remote {
                // Slurm goes on with the step: its tasks must not.
                refuse_step("internal error (a panic was caught)");
            }
            ESPANK_ERROR
        }
    }
}

/// `argc` NUL-terminated strings of Slurm's.
///
/// # Safety
/// `av` points to at least `ac` pointers, each null or to a NUL-terminated
/// string that lives for the call.
unsafe fn c_strings(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    (0..usize::try_from(ac).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: the caller's promise: `ac` valid pointers.
            let p = unsafe { *av.add(i) };
            // SAFETY: as above, `p` is NUL-terminated when not null.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// The plugstack.conf arguments Slurm passes to a callback.
fn plugstack_args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    if av.is_null() {
        return Vec::new();
    }
    // SAFETY: Slurm passes `ac` valid pointers to NUL-terminated strings
    // that live for the call.
    unsafe { c_strings(ac, av) }
}

/// Called in every context when the plugin is loaded.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_init(sp: sys::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    let args = plugstack_args(ac, av);
    hide_inherited_container(Handle(sp).context());
    guard(sp, Report::Error, |p, h| p.init(h, &args))
}

/// Called after options are parsed.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_init_post_opt(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    // srun, sbatch and salloc set SLURM_CONTAINER from --container only when
    // it is not already set, so inside a job it goes stale. slurm_spank_init
    // hid the inherited value: now a set variable is exactly this command's
    // --container; an unset one means "inherit", so the old value returns.
    let own = matches!(Handle(sp).context(), Context::Local | Context::Allocator)
        .then(|| std::env::var("SLURM_CONTAINER").ok())
        .flatten();
    if let Some(old) = INHERITED_CONTAINER.get()
        && std::env::var_os("SLURM_CONTAINER").is_none()
    {
        // SAFETY: srun, sbatch and salloc run init_post_opt single-threaded
        // (measured: one thread), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("SLURM_CONTAINER", old) };
    }
    guard(sp, Report::Error, |p, h| {
        p.own_container = own;
        p.init_post_opt(h)?;
        if let Some((image, pin)) = p.image_pin.take() {
            // SAFETY: as above, one thread; srun passes its environment to
            // the steps, sbatch to the batch job (SLURM_* in every --export).
            unsafe {
                std::env::set_var(crate::image_pin::PIN_OF_ENV, image);
                std::env::set_var(crate::image_pin::PIN_ENV, pin);
            }
        }
        Ok(())
    })
}

/// The SLURM_CONTAINER a command inherited, hidden while it parses options.
static INHERITED_CONTAINER: OnceLock<std::ffi::OsString> = OnceLock::new();

fn hide_inherited_container(context: Context) {
    if matches!(context, Context::Local | Context::Allocator)
        && let Some(old) = std::env::var_os("SLURM_CONTAINER")
    {
        let _ = INHERITED_CONTAINER.set(old);
        // SAFETY: slurm_spank_init runs in srun, sbatch and salloc before they
        // read their input environment, with one thread (measured).
        unsafe { std::env::remove_var("SLURM_CONTAINER") };
    }
}

/// Exit status of a task the plugin stopped before it could run.
pub const TASK_REFUSED: c_int = 255;

/// Called in each task, as the user, just before it execs.
///
/// Slurm 22.05 logs a failed task_init and runs the task anyway (measured
/// here: the task ran on the host), so on failure the task process ends
/// itself: no task ever runs on the host because its container failed.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_task_init(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    // task_init reports its own failures on the task's stderr.
    let rc = guard(sp, Report::Silent, |p, h| p.task_init(h));
    if rc != ESPANK_SUCCESS {
        // SAFETY: this is the forked task process, about to exec the user's
        // command; _exit ends it without running slurmstepd's atexit
        // handlers or flushing its stdio, exactly as a failed exec would.
        unsafe { libc::_exit(TASK_REFUSED) };
    }
    rc
}

/// Called in each task as root, before Slurm drops to the user: the ECL
/// path's tasks enter the step's root-owned mount namespace here. A
/// failure ends the task (it must never run on the host).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_task_init_privileged(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    let rc = guard(sp, Report::Silent, |p, h| p.task_init_privileged(h));
    if rc != ESPANK_SUCCESS {
        // SAFETY: the forked task process, as in slurm_spank_task_init.
        unsafe { libc::_exit(TASK_REFUSED) };
    }
    rc
}

/// Called in slurmstepd before the tasks are started, as the job user.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_user_init(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guard(sp, Report::Info, |p, h| p.user_init(h))
}

/// Called when the plugin is unloaded (in slurmstepd: the step is over).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_exit(sp: sys::spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    guard(sp, Report::Info, |p, h| p.exit(h))
}

/// As each task ends (slurmstepd, root): a holder that died during the
/// step is told once per node. Never fails the task.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_task_exit(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    let _ = guard(sp, Report::Info, |p, h| p.task_exit(h));
    ESPANK_SUCCESS
}

/// Records the step's holder for the epilog's sweep (slurmstepd, root).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_task_post_fork(
    sp: sys::spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    // A failed record must not fail the task: the exit callback still stops
    // the holder; the record only serves the epilog.
    let _ = guard(sp, Report::Info, |p, h| p.task_post_fork(h));
    ESPANK_SUCCESS
}

/// Kills what a failed step left of the job's containers (slurmd, root).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_job_epilog(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    let args = plugstack_args(ac, av);
    guard(sp, Report::Error, |p, h| p.job_epilog(h, &args))
}
