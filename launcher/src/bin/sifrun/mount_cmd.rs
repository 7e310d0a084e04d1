//! `sifrun mount IMAGE DIR`: the image server on a host directory.

use std::path::Path;
use std::sync::mpsc::channel;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{SigSet, Signal};

use launcher::fuse::Synth;
use launcher::serve;
use launcher::squash::Tuning;

pub fn run(image: &Path, dir: &Path, threads: Option<usize>, cache_mb: usize) -> Result<()> {
    let meta = std::fs::metadata(dir).with_context(|| format!("mount: {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("mount: {}: not a directory", dir.display());
    }
    // Block the stop signals before any thread starts, so every thread
    // inherits the mask and only the waiter below receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().context("mount: blocking signals")?;

    let tuning = Tuning {
        cache_bytes: cache_mb << 20,
        ..Tuning::default()
    };
    // The site's ECL applies as it does to exec: the file checked is served.
    let served = match launcher::container::ecl_gate(image).context("mount")? {
        Some(file) => serve::open_image_file(file, image, tuning),
        None => serve::open_image(image, tuning),
    }
    .context("mount")?;
    let synth = Synth::new(&served.squash);
    let mut session = serve::mount(
        &served,
        synth,
        dir,
        threads.unwrap_or_else(serve::default_threads),
    )
    .context("mount")?;
    let mut unmounter = session.unmount_callable();
    tracing::info!(image = %image.display(), dir = %dir.display(), "serving");

    let (tx, rx) = channel::<Option<Signal>>();
    let done = tx.clone();
    let server = std::thread::spawn(move || {
        let r = session.run();
        let _ = done.send(None);
        r
    });
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            let _ = tx.send(Some(sig));
        }
    });
    if let Ok(Some(sig)) = rx.recv() {
        tracing::info!(signal = ?sig, "unmounting");
        unmounter
            .unmount()
            .with_context(|| format!("mount: unmounting {}", dir.display()))?;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("mount: the server thread panicked"))?
        .context("mount: serving")?;
    Ok(())
}
