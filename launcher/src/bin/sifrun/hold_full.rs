//! What the full holder has beyond the lean `sifrun-hold`: the ECL's
//! privileged path (it verifies signatures) and `docker://` images (the
//! registry client).

use std::path::PathBuf;

use anyhow::Context;
use slurm_conf::protocol::{Request, Stage};

use crate::hold_cmd::{AtStage, Failure, Full, to_launch};

/// The full holder's paths.
pub const FULL: Full = Full {
    privileged,
    step_image: crate::cache_cmd::step_image,
};

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
