//! Benchmark: how long opening an image takes per descriptor, and how fast
//! `sifrun sif list` is on a 4 GiB (sparse) image next to `siftool list`.
//!
//! Usage: sif-parse [SIFRUN_BIN]   (see docs/performance.md)

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sif::write::{self, CreateOptions, Metadata, ObjectInput};
use sif::{Arch, DataType, FsType, Image, PartType};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// An image with `n` small objects in `n` descriptor slots.
fn image_with(path: &Path, n: usize) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let data: Vec<[u8; 16]> = (0..n).map(|i| [(i % 251) as u8; 16]).collect();
    let mut readers: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    let inputs = readers
        .iter_mut()
        .map(|r| ObjectInput::new(DataType::GENERIC, r as &mut dyn std::io::Read))
        .collect();
    let opts = CreateOptions {
        descriptor_capacity: n as i64,
        ..CreateOptions::deterministic()
    };
    write::create(file, &opts, inputs)?;
    Ok(())
}

/// A 4 GiB image whose primary partition is a hole.
fn sparse_image(path: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let opts = CreateOptions::default();
    let offset = write::first_object_offset(&opts, DataType::PARTITION, None)?;
    let size = 4u64 << 30;
    file.set_len(offset + size)?;
    let input =
        ObjectInput::in_place(DataType::PARTITION, size).with_metadata(Metadata::Partition {
            fs_type: FsType::SQUASHFS,
            part_type: PartType::PRIMARY_SYSTEM,
            arch: Arch::host(),
        });
    write::create(file, &opts, vec![input])?;
    Ok(())
}

fn time_command(program: &str, args: &[&str], runs: usize) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let out = Command::new(program)
            .args(args)
            .output()
            .with_context(|| program.to_owned())?;
        times.push(start.elapsed());
        if !out.status.success() {
            bail!(
                "{program} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(median(times))
}

fn max_rss_kib(program: &str, args: &[&str]) -> Result<u64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", program])
        .args(args)
        .output()
        .context("/usr/bin/time (package time)")?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no RSS in {err:?}"))
}

fn main() -> Result<()> {
    let sifrun = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/sifrun".into());
    let dir = tempfile_dir()?;

    println!("# Image::open time per descriptor (median of 50 opens)");
    println!(
        "{:>10} {:>14} {:>16}",
        "objects", "open (us)", "ns/descriptor"
    );
    for n in [48usize, 1_000, 10_000, 100_000] {
        let path = dir.join(format!("n{n}.sif"));
        image_with(&path, n)?;
        let mut times = Vec::new();
        for _ in 0..50 {
            let f = File::open(&path)?;
            let start = Instant::now();
            let img = Image::open(f)?;
            times.push(start.elapsed());
            assert_eq!(img.descriptors().len(), n);
        }
        let m = median(times);
        println!(
            "{n:>10} {:>14.1} {:>16.1}",
            m.as_secs_f64() * 1e6,
            m.as_nanos() as f64 / n as f64
        );
    }

    let sparse = dir.join("sparse-4g.sif");
    sparse_image(&sparse)?;
    let p = sparse.to_str().unwrap();
    println!("\n# list a 4 GiB image (sparse), median of 21 runs, side by side");
    let ours = time_command(&sifrun, &["sif", "list", p], 21)?;
    let ours_rss = max_rss_kib(&sifrun, &["sif", "list", p])?;
    println!(
        "sifrun sif list: {:>8.2} ms  max RSS {:>6} KiB",
        ours.as_secs_f64() * 1e3,
        ours_rss
    );
    if Command::new("siftool").arg("help").output().is_ok() {
        let theirs = time_command("siftool", &["list", p], 21)?;
        let theirs_rss = max_rss_kib("siftool", &["list", p])?;
        println!(
            "siftool list:    {:>8.2} ms  max RSS {:>6} KiB",
            theirs.as_secs_f64() * 1e3,
            theirs_rss
        );
        println!(
            "ratio (siftool / sifrun): time {:.2}x, RSS {:.2}x",
            theirs.as_secs_f64() / ours.as_secs_f64(),
            theirs_rss as f64 / ours_rss as f64
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("sifrun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
