//! `sifrun resolve docker://REF`, and `docker://` images for `exec`, `run`
//! and `shell`: the tag resolved to the platform's manifest digest, the
//! SIF for that digest taken from the image cache (`SIFRUN_CACHEDIR`) or
//! converted into it once (see `launcher::imagecache`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use launcher::build::Compression;
use launcher::convert::{self, ConvertOptions};
use launcher::imagecache::{Cache, Key};
use oci::reference::{Reference, Source};

use crate::build_cmd::{ImageArgs, wanted};

/// The compression of cached images.
const CACHE_COMPRESSION: Compression = Compression::Gzip;

/// `sifrun resolve`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    /// Print {"ref", "digest", "manifest", "pin"} as JSON
    #[arg(long)]
    json: bool,
    /// The image: docker://[REGISTRY/]NAME[:TAG|@sha256:DIGEST]
    source: String,
    #[command(flatten)]
    image_args: ImageArgs,
}

fn docker_ref(text: &str) -> Result<Reference> {
    match Source::parse(text)? {
        Source::Docker(r) => Ok(r),
        _ => bail!("{text}: not a docker:// reference"),
    }
}

/// `sifrun resolve`: prints `REGISTRY/NAME@sha256:DIGEST`, the digest the
/// tag points to now (an index for a multi-platform image).
pub fn run_resolve(a: &ResolveArgs) -> Result<()> {
    let fail = || format!("resolve: {}", a.source);
    let reference = docker_ref(&a.source).with_context(fail)?;
    let wanted = wanted(a.image_args.arch.as_deref()).with_context(fail)?;
    let r = convert::resolve(&reference, a.image_args.nohttps, &wanted, &a.source)
        .with_context(fail)?;
    let pin = format!("{}@{}", reference.name(), r.digest);
    if a.json {
        let v = serde_json::json!({
            "ref": reference.to_string(),
            "digest": r.digest.to_string(),
            "manifest": r.manifest.to_string(),
            "pin": pin,
        });
        println!("{v}");
    } else {
        println!("{pin}");
    }
    Ok(())
}

/// The SIF to run for `image`: itself, or for a `docker://` reference that
/// is not an existing path, the cache's entry (converted if needed).
pub fn image_path(image: PathBuf, args: &ImageArgs) -> Result<PathBuf> {
    let Some(text) = image
        .to_str()
        .filter(|t| t.starts_with("docker://") && !image.exists())
        .map(str::to_owned)
    else {
        return Ok(image);
    };
    let reference = docker_ref(&text)?;
    let cache = Cache::new(Cache::user_root()?);
    // A digest with an entry is a platform manifest: no network needed.
    if let Some(d) = reference.digest()
        && let Some(p) = cache.lookup(&Key::new(&d.to_string(), CACHE_COMPRESSION.name())?)?
    {
        return Ok(p);
    }
    let wanted = wanted(args.arch.as_deref())?;
    let resolved = convert::resolve(&reference, args.nohttps, &wanted, &text)?;
    let key = Key::new(&resolved.manifest.to_string(), CACHE_COMPRESSION.name())?;
    let pinned = reference.with_digest(resolved.manifest);
    let progress = |l: &str| eprintln!("sifrun: {l}");
    let entry = cache.ensure(&key, &text, &progress, |out| {
        let opts = ConvertOptions {
            output: out.to_owned(),
            source_text: text.clone(),
            source: Source::Docker(pinned),
            compression: CACHE_COMPRESSION,
            force: false,
            source_date_epoch: None,
            wanted,
            plain_http: args.nohttps,
            tmpdir: std::env::var_os("SIFRUN_TMPDIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        convert::convert(&opts)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    Ok(entry.path)
}
