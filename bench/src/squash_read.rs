//! Benchmark: how fast the squashfs server decompresses one file of an
//! image, cold (a fresh reader each run, readahead off), as a step's first
//! exec of its program needs it; beside the `zstd`/`gzip` command-line
//! tools' speed on the same bytes when they are installed.
//!
//! Usage: squash-read IMAGE.sif PATH-IN-IMAGE [RUNS]   (see docs/performance.md)

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use launcher::serve::open_image;
use launcher::squash::Tuning;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (image, path) = match args.as_slice() {
        [i, p] | [i, p, _] => (Path::new(i), Path::new(p)),
        _ => bail!("usage: squash-read IMAGE.sif PATH-IN-IMAGE [RUNS]"),
    };
    let runs: usize = args.get(2).map_or(Ok(20), |r| r.parse())?;
    if runs == 0 {
        bail!("RUNS must be at least 1");
    }
    let tuning = Tuning {
        cache_bytes: 256 << 20,
        readahead_blocks: 0,
        prefetch_threads: 0,
    };
    let mut times = Vec::new();
    let mut bytes = 0u64;
    for _ in 0..runs {
        let served = open_image(image, tuning).context("opening the image")?;
        let squash = &served.squash;
        let ino = squash
            .lookup_path(path)
            .with_context(|| format!("{}: not in the image", path.display()))?;
        let size = squash.try_inode(ino)?.size;
        let bs = u64::from(squash.block_size());
        let t = Instant::now();
        let mut at = 0;
        while at < size {
            let got = squash.read(ino, at, bs as u32)?;
            if got.is_empty() {
                bail!("short read at {at}");
            }
            at += got.len() as u64;
        }
        times.push(t.elapsed());
        bytes = size;
    }
    let m = median(times);
    println!(
        "{}: {} bytes in {:.2} ms cold (median of {runs}): {:.0} MB/s",
        path.display(),
        bytes,
        m.as_secs_f64() * 1e3,
        bytes as f64 / m.as_secs_f64() / 1e6
    );
    Ok(())
}
