//! The ECL gate: with an activated execution control list in the admin
//! file, only the images it allows run, from the very file it checked.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::LaunchError;
use crate::serve::ServeError;

/// The site's admin file; with an activated `[ecl]` it decides which images
/// `sifrun exec|run|shell` run (a fixed path: the caller's environment must
/// not choose it).
pub const SITE_CONFIG: &str = "/etc/sifrun/sifrun.toml";

/// With an activated ECL in [`SITE_CONFIG`], opens `image`, checks it and
/// returns the file to serve; `None` when there is no ECL to apply.
pub fn ecl_gate(image: &Path) -> Result<Option<Arc<fs::File>>, LaunchError> {
    ecl_gate_with(Path::new(SITE_CONFIG), image)
}

/// [`ecl_gate`] with another admin file (the Slurm holder's `config=`).
pub fn ecl_gate_with(config: &Path, image: &Path) -> Result<Option<Arc<fs::File>>, LaunchError> {
    // Only a file that is not there means "no ECL": one the caller cannot
    // see (a 0700 directory) fails closed instead of switching it off.
    match std::fs::symlink_metadata(config) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LaunchError::Ecl(format!(
                "{}: {e}; the site's execution control list cannot be read, so nothing runs (ask the admin to make it readable)",
                config.display()
            )));
        }
        Ok(_) => {}
    }
    let ecl = slurm_conf::ecl::Ecl::load(config).map_err(LaunchError::Ecl)?;
    if !ecl.activated {
        return Ok(None);
    }
    check_activated(&ecl, image)
}

/// An activated ECL: the image is checked against it.
#[cfg(feature = "integrity")]
fn check_activated(
    ecl: &slurm_conf::ecl::Ecl,
    image: &Path,
) -> Result<Option<Arc<fs::File>>, LaunchError> {
    let file = fs::File::open(image).map_err(|source| {
        LaunchError::Serve(ServeError::Open {
            path: image.to_owned(),
            source,
        })
    })?;
    let d = crate::ecl_check::check(&file, image, ecl, &|_| Some(0))
        .map_err(|e| LaunchError::Ecl(e.to_string()))?;
    if !d.allowed {
        return Err(LaunchError::Ecl(format!(
            "{}: denied{}: {}",
            image.display(),
            d.group
                .map(|g| format!(" by execgroup {g:?}"))
                .unwrap_or_default(),
            d.reason
        )));
    }
    Ok(Some(Arc::new(file)))
}

/// A build without signature verification (the lean holder): an activated
/// ECL stops the launch, nothing runs unchecked.
#[cfg(not(feature = "integrity"))]
fn check_activated(
    _ecl: &slurm_conf::ecl::Ecl,
    image: &Path,
) -> Result<Option<Arc<fs::File>>, LaunchError> {
    Err(LaunchError::Ecl(format!(
        "{}: the execution control list is activated and this build of sifrun cannot verify signatures (built without the `integrity` feature)",
        image.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_file_that_cannot_be_seen_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            ecl_gate_with(&d.path().join("none.toml"), Path::new("/i.sif"))
                .unwrap()
                .is_none()
        );
        // ENOTDIR (a path through a file) is no "missing file" either.
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let e = ecl_gate_with(&f.join("sifrun.toml"), Path::new("/i.sif")).unwrap_err();
        assert!(
            e.to_string().contains("cannot be read, so nothing runs"),
            "{e}"
        );
    }

    /// Built without `integrity` (the lean holder's build), an activated
    /// ECL stops every launch: nothing runs unchecked.
    #[cfg(not(feature = "integrity"))]
    #[test]
    fn without_verification_an_activated_ecl_fails_closed() {
        // Beside the test binary: the admin file must lie in trusted
        // directories (not /tmp).
        let exe = std::env::current_exe().unwrap();
        let d = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        let admin = d.path().join("sifrun.toml");
        let keyring = d.path().join("keyring.pgp");
        std::fs::write(&keyring, b"").unwrap();
        std::fs::write(
            &admin,
            format!(
                "[ecl]\nactivated = true\nkeyring = {:?}\n[[ecl.execgroup]]\ntagname = \"a\"\nmode = \"whitelist\"\ndirpath = {:?}\nkeyfp = [\"12045c8c0b1004d058de4beda20c27ee7ff7ba84\"]\n",
                keyring,
                d.path()
            ),
        )
        .unwrap();
        let e = ecl_gate_with(&admin, &d.path().join("i.sif")).unwrap_err();
        assert!(e.to_string().contains("cannot verify signatures"), "{e}");
        std::fs::write(&admin, "[ecl]\nactivated = false\n").unwrap();
        assert!(
            ecl_gate_with(&admin, Path::new("/i.sif"))
                .unwrap()
                .is_none()
        );
    }
}
