//! `--sif-run`: each task runs the image's runscript with the task's
//! arguments, as `sifrun run` does.
//!
//! Slurm execs the task's argument array after task_init, and a plugin can
//! change its words but not their number. So task_init (inside the
//! container, as the user) puts in the first word's place a small script,
//! held in an anonymous memory file, that execs the runscript with the
//! original first word and the rest:
//! `srun --sif-run a b` → `/proc/self/fd/N b` → `/.singularity.d/runscript a b`.
//! Like `sifrun run`, an image without a runscript runs its shell.

use std::io::Write;
use std::os::fd::IntoRawFd;

use crate::error::PluginError;
use crate::spank::Spank;

/// Where images keep their runscript, in the order `sifrun run` looks.
pub const RUNSCRIPTS: &[&str] = &["/.singularity.d/runscript", "/singularity", "/apptainer"];

/// `'…'`-quotes `s` for /bin/sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script that runs the runscript with `arg0` and the script's own
/// arguments.
pub fn script(arg0: &str) -> String {
    let a = quote(arg0);
    let mut s = String::from("#!/bin/sh\n");
    for r in RUNSCRIPTS {
        s.push_str(&format!("if [ -f {r} ]; then exec {r} {a} \"$@\"; fi\n"));
    }
    s.push_str(&format!("exec /bin/sh {a} \"$@\"\n"));
    s
}

/// Makes the task about to exec run the runscript instead (task_init,
/// inside the container).
pub fn use_runscript(sp: &dyn Spank) -> Result<(), PluginError> {
    let argv = sp.job_argv();
    let arg0 = argv
        .first()
        .ok_or_else(|| PluginError::Run("the step has no command".into()))?;
    let fd = memfd(&script(arg0))?;
    // The descriptor stays open (not close-on-exec): the kernel runs the
    // script through its /proc path, which only this process can open.
    let raw = fd.into_raw_fd();
    sp.set_task_argv0(&format!("/proc/self/fd/{raw}"))
}

/// An executable memory file holding `text`.
fn memfd(text: &str) -> Result<std::fs::File, PluginError> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    // MFD_EXEC (Linux 6.3): executable even where vm.memfd_noexec asks
    // for non-executable memory files by default; older kernels refuse
    // the flag and make them executable anyway.
    const MFD_EXEC: libc::c_uint = 0x0010;
    let fd = memfd_create(c"sifrun-run", MFdFlags::from_bits_retain(MFD_EXEC))
        .or_else(|_| memfd_create(c"sifrun-run", MFdFlags::empty()))
        .map_err(|e| PluginError::Run(format!("a memory file for the runscript: {e}")))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(text.as_bytes())
        .map_err(|e| PluginError::Run(format!("writing the runscript wrapper: {e}")))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::Fake;

    #[test]
    fn the_wrapper_runs_the_runscript_with_the_first_word() {
        let s = script("it's a");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(
            s.contains("exec /.singularity.d/runscript 'it'\\''s a' \"$@\"; fi\n"),
            "{s}"
        );
        // The script itself, run by sh with a stand-in for the runscript.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &s.replace("exec /bin/sh", "printf '<%s>'")])
            .args(["sh", "b c", "d"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "<it's a><b c><d>");
    }

    #[test]
    fn the_task_execs_the_wrapper_from_a_memory_file() {
        let sp = Fake::remote();
        *sp.argv.borrow_mut() = vec!["first".into(), "second".into()];
        use_runscript(&sp).unwrap();
        let argv = sp.argv.borrow().clone();
        assert_eq!(argv[1], "second");
        let path = argv[0].clone();
        assert!(path.starts_with("/proc/self/fd/"), "{path}");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, script("first"));
        let empty = Fake::remote();
        assert!(use_runscript(&empty).is_err());
    }
}
