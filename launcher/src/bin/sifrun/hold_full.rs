//! What the full holder has beyond the lean `sifrun-hold`: the ECL's
//! privileged path (it verifies signatures) and `docker://` images (the
//! registry client).

use std::path::PathBuf;

use anyhow::Context;
use slurm_conf::protocol::{Request, Stage};

use launcher::imagecache::site::uses::Uses;

use crate::hold_cmd::{AtStage, Failure, Full, SiteEntry, to_launch};

/// The full holder's paths.
pub const FULL: Full = Full {
    privileged,
    site_entry,
    step_image,
};

/// The site cache a request names (`[images]`), if any.
fn site(request: &Request) -> anyhow::Result<Option<launcher::imagecache::site::Site>> {
    crate::cache_cmd::site_of(
        request.site_cache.as_deref(),
        request.site_cache_user.as_deref(),
    )
}

fn site_entry(
    request: &Request,
    text: &str,
    progress: launcher::convert::ProgressSink,
) -> anyhow::Result<SiteEntry> {
    let Some(s) = site(request)?.filter(|_| nix::unistd::getuid().is_root()) else {
        return Ok(SiteEntry::default());
    };
    let limits = launcher::imagecache::site::limits::Limits {
        max_image_size: request.site_max_image_size,
        min_free: request.site_min_free,
    };
    let allowed = request.site_registries.as_deref();
    let found =
        crate::cache_cmd::fill_site(text, &request.job_env, &s, allowed, limits, Some(&progress));
    Ok(match found {
        Some(p) => SiteEntry {
            found: Some(p),
            uses: None,
        },
        None => SiteEntry {
            found: None,
            uses: Uses::start(&s, crate::cache_cmd::CACHE_COMPRESSION.name()),
        },
    })
}

fn step_image(
    request: &Request,
    text: &str,
    progress: launcher::convert::ProgressSink,
    uses: Option<Uses>,
) -> anyhow::Result<PathBuf> {
    let site = site(request)?;
    crate::cache_cmd::step_image(text, &request.job_env, site.as_ref(), Some(progress), uses)
}

/// The ECL path: root keeps the set-up (see `launcher::privileged`).
fn privileged(request: Request, config: PathBuf, ns_dir: PathBuf) -> Result<i32, Failure> {
    let user = launcher::privilege::become_root()
        .context("slurm-hold")
        .at(Stage::Privileges)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let p = launcher::privileged::Privileged {
        admin_file: config,
        ns_dir,
        image_dirs: request.image_dirs.clone(),
    };
    let l = to_launch(request, None, &cwd).at(Stage::Request)?;
    match launcher::privileged::hold(&l, &p, &user) {
        Ok(line) => {
            let _ = launcher::privileged::write_report(&line);
            Ok(0)
        }
        Err(f) => {
            let m = f.message.strip_prefix("sifrun: ").unwrap_or(&f.message);
            Err(Failure(f.stage, anyhow::anyhow!(m.to_owned())))
        }
    }
}
