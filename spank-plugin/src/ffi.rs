//! The C interface Slurm loads: the plugin's identity symbols and the
//! `slurm_spank_*` callbacks. Every callback catches panics and turns them
//! into an error return, never unwinding into Slurm. Slurm's functions are
//! looked up in the loading process at run time (srun, sbatch, salloc and
//! slurmstepd all carry them), so the library neither links libslurm nor
//! leaves `spank_*` symbols undefined.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crate::options::{OPTIONS, OptionDef};
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

const ESPANK_SUCCESS: c_int = 0;
const ESPANK_ERROR: c_int = 1;

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
            OPTIONS
                .iter()
                .map(|o: &OptionDef| sys::spank_option {
                    name: leak(o.name),
                    arginfo: o.arg.map_or(std::ptr::null_mut(), leak),
                    usage: leak(o.usage),
                    has_arg: c_int::from(o.arg.is_some()),
                    val: o.val,
                    cb: Some(option_callback),
                })
                .collect::<Vec<_>>()
                .into()
        })
        .0
}

impl From<Vec<sys::spank_option>> for Table {
    fn from(v: Vec<sys::spank_option>) -> Table {
        Table(v)
    }
}

unsafe extern "C" fn option_callback(val: c_int, optarg: *const c_char, _remote: c_int) -> c_int {
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
    match catch_unwind(|| crate::plugin::option(val, value.as_deref())) {
        Ok(Ok(())) => ESPANK_SUCCESS,
        Ok(Err(msg)) => {
            log_error(&format!("sifrun: {msg}"));
            ESPANK_ERROR
        }
        Err(_) => ESPANK_ERROR,
    }
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

/// The real SPANK handle of one callback.
struct Handle(sys::spank_t);

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

    fn register(&self, opt: &OptionDef) -> Result<(), String> {
        let api = api().ok_or("Slurm's SPANK functions are not available")?;
        let entry = option_table()
            .iter()
            .find(|o| o.val == opt.val)
            .ok_or("unknown option")?;
        // SAFETY: `entry` points into a table that lives for the whole
        // process; Slurm copies what it needs.
        let rc = unsafe { api.spank_option_register(self.0, entry as *const _ as *mut _) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "registering --{} failed (SPANK error {rc})",
                opt.name
            ))
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
        let Some(f) = api().and_then(|a| a.spank_get_item.as_ref().ok()) else {
            return Vec::new();
        };
        let mut argc: c_int = 0;
        let mut argv: *mut *mut c_char = std::ptr::null_mut();
        // SAFETY: S_JOB_ARGV takes `int *` and `char ***`, both pointing to locals.
        let rc = unsafe {
            f(
                self.0,
                sys::spank_item::S_JOB_ARGV,
                &mut argc as *mut c_int,
                &mut argv as *mut *mut *mut c_char,
            )
        };
        if rc != 0 || argv.is_null() {
            return Vec::new();
        }
        plugstack_args(argc, argv)
    }

    fn job_id(&self) -> Option<u32> {
        let f = api()?.spank_get_item.as_ref().ok()?;
        let mut id: u32 = 0;
        // SAFETY: S_JOB_ID takes one `uint32_t *`, which points at a live local.
        let rc = unsafe { f(self.0, sys::spank_item::S_JOB_ID, &mut id as *mut u32) };
        (rc == 0).then_some(id)
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

    fn setenv(&self, name: &str, value: &str) -> Result<(), String> {
        let api = api().ok_or("Slurm's SPANK functions are not available")?;
        let (k, v) = (
            CString::new(name).map_err(|_| format!("{name:?}: NUL in the name"))?,
            CString::new(value).map_err(|_| format!("{name}: NUL in the value"))?,
        );
        // SAFETY: both pointers are NUL-terminated strings that outlive the call.
        let rc = unsafe { api.spank_setenv(self.0, k.as_ptr(), v.as_ptr(), 1) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{name}: SPANK error {rc}"))
        }
    }

    fn unsetenv(&self, name: &str) -> Result<(), String> {
        let api = api().ok_or("Slurm's SPANK functions are not available")?;
        let k = CString::new(name).map_err(|_| format!("{name:?}: NUL in the name"))?;
        // SAFETY: a NUL-terminated string that outlives the call.
        let rc = unsafe { api.spank_unsetenv(self.0, k.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!("{name}: SPANK error {rc}"))
        }
    }

    fn error(&self, msg: &str) {
        log_error(msg);
    }

    fn info(&self, msg: &str) {
        log_info(msg);
    }
}

/// Runs one callback's logic, mapping errors and panics to `ESPANK_ERROR`.
fn guard(sp: sys::spank_t, f: fn(&dyn Spank) -> Result<(), String>) -> c_int {
    let handle = Handle(sp);
    match catch_unwind(AssertUnwindSafe(|| f(&handle))) {
        Ok(Ok(())) => ESPANK_SUCCESS,
        Ok(Err(msg)) => {
            if !msg.is_empty() {
                handle.info(&msg);
            }
            ESPANK_ERROR
        }
        Err(_) => {
            log_error("sifrun: internal error (a panic was caught); the task was not started");
            ESPANK_ERROR
        }
    }
}

/// The plugstack.conf arguments Slurm passes to a callback.
fn plugstack_args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    (0..usize::try_from(ac).unwrap_or(0))
        .filter_map(|i| {
            // SAFETY: Slurm passes `ac` valid pointers to NUL-terminated
            // strings that live for the call.
            let p = unsafe { *av.add(i) };
            // SAFETY: as above, `p` is NUL-terminated when not null.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Called in every context when the plugin is loaded.
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_init(sp: sys::spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    let args = plugstack_args(ac, av);
    let handle = Handle(sp);
    hide_inherited_container(handle.context());
    match catch_unwind(AssertUnwindSafe(|| crate::plugin::init(&handle, &args))) {
        Ok(Ok(())) => ESPANK_SUCCESS,
        Ok(Err(msg)) => {
            handle.error(&format!("sifrun: {msg}"));
            ESPANK_ERROR
        }
        Err(_) => ESPANK_ERROR,
    }
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
    if let Some(old) = INHERITED_CONTAINER.get()
        && std::env::var_os("SLURM_CONTAINER").is_none()
    {
        // SAFETY: srun, sbatch and salloc run init_post_opt single-threaded
        // (measured: one thread), so nothing reads the environment meanwhile.
        unsafe { std::env::set_var("SLURM_CONTAINER", old) };
    }
    guard(sp, |s| {
        let r = crate::plugin::init_post_opt(s);
        if let Err(msg) = &r {
            s.error(msg);
        }
        r
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
    let rc = guard(sp, crate::plugin::task_init);
    if rc != ESPANK_SUCCESS {
        // SAFETY: this is the forked task process, about to exec the user's
        // command; _exit ends it without running slurmstepd's atexit
        // handlers or flushing its stdio, exactly as a failed exec would.
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
    guard(sp, crate::plugin::user_init)
}

/// Called when the plugin is unloaded (in slurmstepd: the step is over).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_exit(sp: sys::spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    guard(sp, crate::plugin::exit)
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
    let _ = guard(sp, crate::plugin::task_post_fork);
    ESPANK_SUCCESS
}

/// Kills what a failed step left of the job's containers (slurmd, root).
#[unsafe(no_mangle)]
pub extern "C" fn slurm_spank_job_epilog(
    sp: sys::spank_t,
    ac: c_int,
    av: *mut *mut c_char,
) -> c_int {
    // slurmd's epilog does not run slurm_spank_init: take runtime_dir= here.
    let args = plugstack_args(ac, av);
    match catch_unwind(|| crate::plugin::take_plugstack_args(&args)) {
        Ok(Ok(())) => guard(sp, crate::plugin::job_epilog),
        Ok(Err(msg)) => {
            log_error(&format!("sifrun: {msg}"));
            ESPANK_ERROR
        }
        Err(_) => ESPANK_ERROR,
    }
}
