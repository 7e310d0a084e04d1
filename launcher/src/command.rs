//! What the container runs: the argument vector for exec, run and shell,
//! the shell prelude that reads the image's environment scripts and ours,
//! and the container's environment.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::env::{ContainerEnv, EnvError, EnvOptions, container_env};
use crate::plan::resolve::is_file;
use crate::plan::{ImageTree, PlanError, resolve_in_image};

/// What to run.
#[derive(Clone, Debug)]
pub enum Action {
    /// A command resolved inside the container.
    Exec(Vec<OsString>),
    /// The image's runscript with these arguments.
    Run(Vec<OsString>),
    /// The image's shell.
    Shell(Vec<OsString>),
    /// No command: set the container up, print the tasks' environment
    /// changes and `ready` on standard output (see `slurm_conf::holder`), and
    /// hold the user and mount namespaces until SIGTERM, for Slurm tasks to
    /// join (`sifrun slurm-hold`).
    Hold(crate::hold::Hold),
}

/// The shell snippet that reads the image's environment scripts and ours.
pub(crate) const ENV_PRELUDE: &str = "for f in /.singularity.d/env/*.sh; do if [ -r \"$f\" ]; then . \"$f\"; fi; done\n\
if [ -r /.sifrun/env.sh ]; then . /.sifrun/env.sh; fi\n";

const EXEC_SCRIPT: &str = "case \"$1\" in\n\
*/*) if [ ! -e \"$1\" ]; then echo \"sifrun: exec: $1: no such file in the container\" >&2; exit 127; fi\n\
     if [ -d \"$1\" ] || [ ! -x \"$1\" ]; then echo \"sifrun: exec: $1: not executable\" >&2; exit 126; fi ;;\n\
*) if ! command -v \"$1\" >/dev/null 2>&1; then echo \"sifrun: exec: $1: command not found in the container\" >&2; exit 127; fi ;;\n\
esac\n\
exec \"$@\"\n";

/// Whether the image has `/.singularity.d/env/*.sh` scripts.
fn has_env_scripts(tree: &dyn ImageTree) -> bool {
    let Ok(dir) = resolve_in_image(tree, Path::new("/.singularity.d/env")) else {
        return false;
    };
    tree.list(&dir)
        .is_some_and(|names| names.iter().any(|n| n.as_bytes().ends_with(b".sh")))
}

/// `sh -c PRELUDE+body sifrun args...`.
fn wrap(body: &str, args: &[OsString]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("{ENV_PRELUDE}{body}").into(),
        "sifrun".into(),
    ];
    v.extend(args.iter().cloned());
    v
}

/// The argument vector the container runs, and whether it goes through the
/// image's shell (which then reads the environment scripts).
pub(crate) fn argv(
    action: &Action,
    tree: &dyn ImageTree,
) -> Result<(Vec<OsString>, bool), PlanError> {
    let has_sh = is_file(tree, "/bin/sh")?;
    Ok(match action {
        Action::Exec(cmd) if has_sh => (wrap(EXEC_SCRIPT, cmd), true),
        Action::Exec(cmd) => (cmd.clone(), false),
        Action::Run(args) => {
            let script = ["/.singularity.d/runscript", "/singularity", "/apptainer"]
                .into_iter()
                .find(|p| is_file(tree, p).unwrap_or(false));
            match (script, has_sh) {
                (Some(s), true) => (wrap(&format!("exec {s} \"$@\"\n"), args), true),
                (Some(s), false) => {
                    let mut v = vec![OsString::from(s)];
                    v.extend(args.iter().cloned());
                    (v, false)
                }
                (None, true) => (wrap("exec /bin/sh \"$@\"\n", args), true),
                (None, false) => (vec![OsString::from("/bin/sh")], false),
            }
        }
        // The image's shell computes the tasks' environment only when the
        // image has environment scripts (it costs a process start).
        Action::Hold(_) => (Vec::new(), has_sh && has_env_scripts(tree)),
        Action::Shell(args) => {
            let shell = if is_file(tree, "/bin/bash")? {
                "/bin/bash --norc"
            } else {
                "/bin/sh"
            };
            if has_sh {
                (wrap(&format!("exec {shell} \"$@\"\n"), args), true)
            } else {
                (vec![OsString::from("/bin/sh")], false)
            }
        }
    })
}

/// The container's environment from the host's (or the job's), the user's
/// options, the container home and the library directories of the host
/// integration (which make `LD_LIBRARY_PATH`).
pub(crate) fn environment(
    host_env: &[(String, String)],
    opts: &EnvOptions,
    home: &Path,
    lib_dirs: &[&str],
) -> Result<ContainerEnv, EnvError> {
    let mut cenv = container_env(host_env, opts, &home.to_string_lossy())?;
    if !lib_dirs.is_empty() {
        cenv.base
            .insert("LD_LIBRARY_PATH".into(), lib_dirs.join(":"));
    }
    Ok(cenv)
}

/// The environment a command gets when no shell reads the scripts: the
/// base, with the user's settings applied directly (they win).
pub(crate) fn direct_env(env: &ContainerEnv) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = env
        .base
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &env.user {
        e.retain(|(ek, _)| ek != k);
        e.push((k.clone(), v.clone()));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::FakeTree;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn exec_goes_through_the_shell_when_the_image_has_one() {
        let with_sh = FakeTree::new(&["/bin/", "/bin/sh"]);
        let (v, wrapped) = argv(&Action::Exec(vec!["ls".into(), "/x".into()]), &with_sh).unwrap();
        assert!(wrapped);
        let v = strs(&v);
        assert_eq!(v[..2], ["/bin/sh", "-c"]);
        assert!(v[2].starts_with(ENV_PRELUDE) && v[2].ends_with("exec \"$@\"\n"));
        assert_eq!(v[3..], ["sifrun", "ls", "/x"]);

        let bare = FakeTree::new(&["/app"]);
        let (v, wrapped) = argv(&Action::Exec(vec!["/app".into()]), &bare).unwrap();
        assert!(!wrapped);
        assert_eq!(strs(&v), ["/app"]);
    }

    #[test]
    fn run_shell_and_hold() {
        let tree = FakeTree::new(&[
            "/bin/",
            "/bin/sh",
            "/bin/bash",
            "/.singularity.d/",
            "/.singularity.d/runscript",
            "/.singularity.d/env/",
            "/.singularity.d/env/90-environment.sh",
        ]);
        let (v, _) = argv(&Action::Run(vec!["a".into()]), &tree).unwrap();
        let v = strs(&v);
        assert!(
            v[2].ends_with("exec /.singularity.d/runscript \"$@\"\n"),
            "{v:?}"
        );
        assert_eq!(v[4], "a");
        let (v, _) = argv(&Action::Shell(vec![]), &tree).unwrap();
        assert!(strs(&v)[2].ends_with("exec /bin/bash --norc \"$@\"\n"));
        let hold = Action::Hold(crate::hold::Hold::default());
        assert_eq!(argv(&hold, &tree).unwrap(), (vec![], true));
        let no_scripts = FakeTree::new(&["/bin/", "/bin/sh"]);
        assert_eq!(argv(&hold, &no_scripts).unwrap(), (vec![], false));
        let (v, wrapped) = argv(&Action::Run(vec![]), &FakeTree::new(&[])).unwrap();
        assert_eq!((strs(&v), wrapped), (vec!["/bin/sh".to_owned()], false));
    }

    #[test]
    fn library_dirs_make_ld_library_path_and_user_settings_win_directly() {
        let host = [("LD_LIBRARY_PATH".to_owned(), "/host/lib".to_owned())];
        let opts = EnvOptions {
            env: vec!["A=1".into()],
            ..EnvOptions::default()
        };
        let e = environment(&host, &opts, Path::new("/home/a"), &["/g", "/f"]).unwrap();
        assert_eq!(e.base["LD_LIBRARY_PATH"], "/g:/f");
        assert_eq!(e.base["HOME"], "/home/a");
        let e = environment(&host, &opts, Path::new("/home/a"), &[]).unwrap();
        assert!(!e.base.contains_key("LD_LIBRARY_PATH"));
        let d = direct_env(&e);
        assert!(d.contains(&("A".to_owned(), "1".to_owned())), "{d:?}");
    }
}
