//! `--sif-image=docker://REF` and `--container=docker://REF` on the
//! submitting side (srun, sbatch, salloc; oci-design.md §6.4): the tag is
//! resolved once, by `LAUNCHER resolve docker://REF` (HTTP and TLS stay
//! out of srun's address space), and the result pinned in
//! [`PIN_ENV`] (`REGISTRY/NAME:TAG@sha256:HEX`), which Slurm passes to
//! every step of the job in every `--export` mode (a `SLURM_*` variable).
//! Each step's holder converts the pinned digest into the user's image
//! cache once and serves it. With an activated ECL, converted images are
//! unsigned: refused here, before anything is downloaded (the holder
//! refuses them too).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::PluginError;

/// The variable that carries the pin to the steps.
pub const PIN_ENV: &str = "SLURM_SIFRUN_IMAGE_PIN";

/// The image (as given) [`PIN_ENV`] is the pin of: a nested `srun` of the
/// same image reuses the pin without running the launcher.
pub const PIN_OF_ENV: &str = "SLURM_SIFRUN_IMAGE_PIN_OF";

/// The transport of registry images.
pub const DOCKER: &str = "docker://";

/// How long `sifrun resolve` may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(60);

/// What `sifrun resolve` gets from the user's environment: the registry's
/// credentials and TLS settings, proxies, the job's existing pin, where the
/// user's image cache is (a digest it holds needs no registry).
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "SIFRUN_CACHEDIR",
    "XDG_CACHE_HOME",
    "DOCKER_CONFIG",
    "REGISTRY_AUTH_FILE",
    "SIFRUN_DOCKER_USERNAME",
    "SIFRUN_DOCKER_PASSWORD",
    "SIFRUN_NOHTTPS",
    "SIFRUN_REGISTRY_TIMEOUT",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    PIN_ENV,
];

/// Whether `image` names a registry image rather than a file.
pub fn is_registry_image(image: &str) -> bool {
    image.starts_with(DOCKER)
}

/// The submitting side's `--sif-image` callback: with an activated ECL a
/// registry image is refused as the option is read, so srun, sbatch and
/// salloc stop before submitting (a failed init_post_opt does not stop
/// them on every series). The holder refuses again (the authoritative
/// check).
pub fn refuse_early(value: Option<&str>, ecl_activated: bool) -> Result<(), PluginError> {
    match value.filter(|v| ecl_activated && is_registry_image(v)) {
        Some(v) => Err(unsigned(v)),
        None => Ok(()),
    }
}

/// Why an ECL cluster refuses `image`.
pub fn unsigned(image: &str) -> PluginError {
    PluginError::Unsigned(image.to_owned())
}

/// Runs `LAUNCHER resolve docker://REF` with the variables of [`PASSED`]
/// (from `getenv`); returns the pin it printed.
pub fn resolve(
    launcher: &Path,
    image: &str,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<String, PluginError> {
    let failed = |message: String| PluginError::Resolve {
        image: image.to_owned(),
        message,
    };
    let mut cmd = Command::new(launcher);
    cmd.args(["resolve", image])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in PASSED {
        if let Some(v) = getenv(name) {
            cmd.env(name, v);
        }
    }
    let mut child = cmd.spawn().map_err(|source| PluginError::Spawn {
        launcher: launcher.to_owned(),
        source,
    })?;
    // Woken when it ends (a process descriptor), not on a polling tick:
    // srun waits for this on every docker:// step.
    let pidfd = crate::ffi::pidfd::open(child.id()).ok();
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < RESOLVE_TIMEOUT => match &pidfd {
                Some(fd) => {
                    let left = RESOLVE_TIMEOUT.saturating_sub(start.elapsed());
                    crate::remote::ended_within(fd, left.min(Duration::from_secs(1)));
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            },
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "no answer from the registry within {} s",
                    RESOLVE_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
    };
    let read = |r: Option<&mut dyn Read>| {
        let mut s = String::new();
        if let Some(r) = r {
            let _ = r.take(64 * 1024).read_to_string(&mut s);
        }
        s
    };
    let out = read(child.stdout.as_mut().map(|r| r as &mut dyn Read));
    let err = read(child.stderr.as_mut().map(|r| r as &mut dyn Read));
    let pin = out.trim();
    if !status.success() || pin.is_empty() || pin.contains(char::is_whitespace) {
        let last = err.trim().lines().last().unwrap_or("resolve failed");
        // The launcher's own line repeats the reference: keep its reason.
        let reason = last
            .strip_prefix("sifrun: ")
            .and_then(|l| l.strip_prefix(&format!("resolve: {image}: ")))
            .unwrap_or(last);
        return Err(failed(reason.to_owned()));
    }
    Ok(pin.to_owned())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn script(dir: &Path, body: &str) -> std::path::PathBuf {
        let p = dir.join("sifrun");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_launchers_pin_is_returned() {
        let d = tempfile::tempdir().unwrap();
        // The launcher sees only the passed variables.
        let l = script(
            d.path(),
            r#"[ "$1 $2" = "resolve docker://r/a:t" ] && [ -z "$SECRET" ] && [ "$SIFRUN_CACHEDIR" = /c ] && echo "r/a:t@sha256:$DOCKER_CONFIG""#,
        );
        let env = |k: &str| match k {
            "DOCKER_CONFIG" => Some("abc".to_owned()),
            // Where the user's cache is: a cached digest needs no registry.
            "SIFRUN_CACHEDIR" => Some("/c".to_owned()),
            "SECRET" => Some("x".to_owned()),
            _ => None,
        };
        assert_eq!(
            resolve(&l, "docker://r/a:t", &env).unwrap(),
            "r/a:t@sha256:abc"
        );
    }

    #[test]
    fn failures_say_why() {
        let d = tempfile::tempdir().unwrap();
        let l = script(
            d.path(),
            r#"echo "sifrun: resolve: docker://r/a:t: r/a: repository or tag not found" >&2; exit 1"#,
        );
        let e = resolve(&l, "docker://r/a:t", &|_| None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "docker://r/a:t: cannot resolve: r/a: repository or tag not found"
        );
        let e = resolve(Path::new("/nonexistent/sifrun"), "docker://r/a:t", &|_| {
            None
        })
        .unwrap_err();
        assert!(e.to_string().contains("cannot start the launcher"), "{e}");
    }

    #[test]
    fn the_submitting_side_pins_registry_images_only() {
        use crate::fake::Fake;
        use crate::options::Opt;
        use crate::plugin::Plugin;
        let d = tempfile::tempdir().unwrap();
        let l = script(d.path(), r#"echo "r/a:t@sha256:1""#);
        let none = None;
        let local = Fake::default();
        // A file image: nothing to resolve.
        let mut p = Plugin::new(None);
        p.settings.launcher = Some("/nonexistent/sifrun".into());
        p.option(Opt::Image, Some("/x.sif")).unwrap();
        p.pin_registry_image(&local, none).unwrap();
        assert_eq!(p.image_pin, None);
        // --sif-image=docker://.
        let mut p = Plugin::new(None);
        p.settings.launcher = Some(l.clone());
        p.option(Opt::Image, Some("docker://r/a:t")).unwrap();
        p.pin_registry_image(&local, none).unwrap();
        assert_eq!(
            p.image_pin.as_ref().map(|(_, p)| p.as_str()),
            Some("r/a:t@sha256:1")
        );
        assert_eq!(p.image_pin.as_ref().unwrap().0, "docker://r/a:t");
        // --container=docker:// without an OCI runtime; with one it is Slurm's.
        let mut with_container = Fake::default();
        with_container
            .env
            .insert("SLURM_CONTAINER".into(), "docker://r/a:t".into());
        let mut p = Plugin::new(None);
        p.settings.launcher = Some(l.clone());
        p.pin_registry_image(&with_container, none).unwrap();
        assert_eq!(
            p.image_pin.as_ref().map(|(_, p)| p.as_str()),
            Some("r/a:t@sha256:1")
        );
        let mut p = Plugin::new(None);
        p.settings.launcher = Some(l.clone());
        p.pin_registry_image(&with_container, Some(&l)).unwrap();
        assert_eq!(p.image_pin, None);
        // A nested srun of the job's image reuses the job's pin, without
        // the launcher; another image is resolved.
        let mut nested = Fake::default();
        nested
            .env
            .insert(PIN_OF_ENV.into(), "docker://r/a:t".into());
        nested.env.insert(PIN_ENV.into(), "r/a:t@sha256:0".into());
        let mut p = Plugin::new(None);
        p.settings.launcher = Some("/nonexistent/sifrun".into());
        p.option(Opt::Image, Some("docker://r/a:t")).unwrap();
        p.pin_registry_image(&nested, none).unwrap();
        assert_eq!(p.image_pin.as_ref().unwrap().1, "r/a:t@sha256:0");
        let mut p = Plugin::new(None);
        p.settings.launcher = Some(l.clone());
        p.option(Opt::Image, Some("docker://r/b:t")).unwrap();
        p.pin_registry_image(&nested, none).unwrap();
        assert_eq!(p.image_pin.as_ref().unwrap().1, "r/a:t@sha256:1");
        // An activated ECL refuses before resolving.
        let mut p = Plugin::new(None);
        p.settings.launcher = Some("/nonexistent/sifrun".into());
        p.settings.config.ecl.activated = true;
        p.option(Opt::Image, Some("docker://r/a:t")).unwrap();
        let e = p.pin_registry_image(&local, none).unwrap_err();
        assert!(matches!(e, PluginError::Unsigned(_)), "{e}");
        // ...and already as the option is read on the submitting side; in
        // slurmstepd the option is taken (the holder refuses).
        let mut p = Plugin::new(None);
        p.settings.config.ecl.activated = true;
        let e = p
            .option_in(Opt::Image, Some("docker://r/a:t"), false)
            .unwrap_err();
        assert!(matches!(e, PluginError::Unsigned(_)), "{e}");
        p.option_in(Opt::Image, Some("/i.sif"), false).unwrap();
        let mut p = Plugin::new(None);
        p.settings.config.ecl.activated = true;
        p.option_in(Opt::Image, Some("docker://r/a:t"), true)
            .unwrap();
    }

    #[test]
    fn a_step_request_keeps_the_reference() {
        let a = crate::options::Args {
            image: Some("docker://r/a:t".into()),
            ..Default::default()
        };
        assert_eq!(crate::request::image_path(&a, "/home/u"), "docker://r/a:t");
    }

    #[test]
    fn the_ecl_message_says_why() {
        let m = unsigned("docker://r/a:t").to_string();
        assert!(
            m.starts_with("docker://r/a:t: images converted from Docker/OCI are unsigned"),
            "{m}"
        );
    }
}
