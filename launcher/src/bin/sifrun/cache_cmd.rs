//! `sifrun resolve docker://REF`, and `docker://` images for `exec`, `run`
//! and `shell`: the tag resolved to the platform's manifest digest, the
//! SIF for that digest taken from the image cache (`SIFRUN_CACHEDIR`) or
//! converted into it once (see `launcher::imagecache`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use launcher::build::Compression;
use launcher::convert::{self, ConvertOptions, ProgressSink};
use launcher::imagecache::site::{Account, Site};
use launcher::imagecache::{Cache, Key};
use oci::auth::creds::Environment;
use oci::reference::{Reference, Source};

use crate::build_cmd::{ImageArgs, wanted};

/// The compression of cached images.
pub const CACHE_COMPRESSION: Compression = Compression::Gzip;

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

/// The variable that carries a job's resolved image from the submitting
/// side to every step (oci-design.md §6.4): `REGISTRY/NAME:TAG@sha256:HEX`.
pub const PIN_ENV: &str = "SLURM_SIFRUN_IMAGE_PIN";

fn truthy(v: Option<&str>) -> bool {
    matches!(v, Some("1" | "true" | "yes"))
}

/// `reference` pinned by `pin` when the pin names the same image
/// (registry, repository and tag); `None` otherwise.
fn pinned_by(reference: &Reference, pin: Option<&str>) -> Option<Reference> {
    let p = Reference::parse(pin?).ok()?;
    let same = p.name() == reference.name() && p.tag() == reference.tag();
    match (same, p.digest()) {
        (true, Some(d)) if reference.digest().is_none_or(|r| r == d) => {
            Some(reference.with_digest(d.clone()))
        }
        _ => {
            tracing::warn!("{PIN_ENV}={}: not a pin of {reference}; ignored", pin?);
            None
        }
    }
}

/// `sifrun resolve`: prints `REGISTRY/NAME:TAG@sha256:DIGEST`, the digest
/// the tag points to now (an index for a multi-platform image); inside a
/// job whose pin names the same image, the pin.
pub fn run_resolve(a: &ResolveArgs) -> Result<()> {
    let fail = || format!("resolve: {}", a.source);
    let reference = docker_ref(&a.source).with_context(fail)?;
    let plain_http =
        a.image_args.nohttps || truthy(std::env::var("SIFRUN_NOHTTPS").ok().as_deref());
    let (digest, manifest) = match pinned_by(&reference, std::env::var(PIN_ENV).ok().as_deref()) {
        Some(p) => (p.digest().cloned(), None),
        None => {
            let wanted = wanted(a.image_args.arch.as_deref()).with_context(fail)?;
            let r =
                convert::resolve(&reference, plain_http, &wanted, &a.source).with_context(fail)?;
            (Some(r.digest), Some(r.manifest))
        }
    };
    let digest = digest.expect("a pin has a digest");
    let pin = reference.with_digest(digest.clone()).to_string();
    if a.json {
        let v = serde_json::json!({
            "ref": reference.to_string(),
            "digest": digest.to_string(),
            "manifest": manifest.map(|m| m.to_string()),
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
    let plain_http = args.nohttps || truthy(std::env::var("SIFRUN_NOHTTPS").ok().as_deref());
    let cache = Cache::new(Cache::user_root()?);
    let how = How {
        arch: args.arch.as_deref(),
        plain_http,
        credentials: None,
        progress: None,
        tmpdir: true,
    };
    ensure(&cache, &reference, &text, &how)
}

fn job_var<'a>(job_env: &'a [(String, String)], k: &str) -> Option<&'a str> {
    job_env
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The reference a step runs: `text` pinned by the job's pin when it
/// names the same image.
fn step_reference(text: &str, job_env: &[(String, String)]) -> Result<Reference> {
    let reference = docker_ref(text)?;
    Ok(pinned_by(&reference, job_var(job_env, PIN_ENV)).unwrap_or(reference))
}

/// The site cache a request names (`[images]`), if any.
pub fn site_of(dir: Option<&Path>, user: Option<&str>) -> Result<Option<Site>> {
    let Some(dir) = dir else { return Ok(None) };
    let account = user.map(Account::by_name).transpose()?;
    Ok(Some(Site::new(dir.to_owned(), account)))
}

fn say(line: &str) {
    eprintln!("sifrun: {line}");
}

/// A Slurm step's `docker://` image in the site cache, converted there if
/// missing by a child that becomes the cache's account (the holder, still
/// with root's real uid, before it drops it). Anonymous: the entry is for
/// every user, so no user's credentials take part. `None` (with a line
/// saying why) when it cannot: the step then uses the user's cache.
pub fn fill_site(text: &str, job_env: &[(String, String)], site: &Site) -> Option<PathBuf> {
    let account = site.account.as_ref()?;
    let reference = step_reference(text, job_env).ok()?;
    if let Some(p) = site_hit(site, &reference) {
        return Some(p);
    }
    let plain_http = truthy(job_var(job_env, "SIFRUN_NOHTTPS"));
    let cache = site.cache.clone();
    let made = launcher::imagecache::site::as_account(account, || {
        let how = How {
            arch: None,
            plain_http,
            credentials: Some(Environment::default()),
            progress: None,
            tmpdir: false,
        };
        ensure(&cache, &reference, text, &how).map_err(|e| format!("{e:#}"))
    });
    match made {
        Ok(p) if p.starts_with(&site.cache.root) => match site.trusted(&p) {
            Ok(()) => Some(p),
            Err(why) => {
                say(&format!("site cache entry ignored: {why}"));
                None
            }
        },
        Ok(p) => {
            say(&format!(
                "{text}: the site cache's converter named {}",
                p.display()
            ));
            None
        }
        Err(e) => {
            say(&format!(
                "{text}: not in the site cache ({e}); using your cache"
            ));
            None
        }
    }
}

/// The trusted site cache entry of a digest-pinned reference, without
/// the network (the digest must be the platform manifest's).
fn site_hit(site: &Site, reference: &Reference) -> Option<PathBuf> {
    let d = reference.digest()?;
    let key = Key::new(&d.to_string(), CACHE_COMPRESSION.name()).ok()?;
    let p = site.lookup(&key, &say)?;
    site.note_use(&key);
    Some(p)
}

/// A Slurm step's `docker://` image (`sifrun slurm-hold`, as the user):
/// the job's pin when it names the same image; the site cache's entry if
/// it has a trusted one, else the user's cache at `SIFRUN_CACHEDIR`,
/// `XDG_CACHE_HOME` or `HOME` of the job's environment. The job's registry
/// credentials are looked up as `sifrun pull` does
/// (`SIFRUN_DOCKER_USERNAME`/`PASSWORD`, `REGISTRY_AUTH_FILE`,
/// `DOCKER_CONFIG` or `HOME`'s `.docker/config.json`, from the job's
/// environment), by the holder already running as the user; `progress`
/// hears how the conversion goes.
pub fn step_image(
    text: &str,
    job_env: &[(String, String)],
    site: Option<&Site>,
    progress: Option<ProgressSink>,
) -> Result<PathBuf> {
    let get = |k: &str| job_var(job_env, k);
    let reference = step_reference(text, job_env)?;
    if let Some(p) = site.and_then(|s| site_hit(s, &reference)) {
        return Ok(p);
    }
    let root = match (get("SIFRUN_CACHEDIR"), get("XDG_CACHE_HOME"), get("HOME")) {
        (Some(d), _, _) => PathBuf::from(d),
        (None, Some(x), _) => PathBuf::from(x).join("sifrun"),
        (None, None, Some(h)) => PathBuf::from(h).join(".cache/sifrun"),
        _ => bail!("{text}: no cache directory: the job has no SIFRUN_CACHEDIR or HOME"),
    };
    let plain_http = truthy(get("SIFRUN_NOHTTPS"));
    let user = Cache::new(root);
    let how = How {
        arch: None,
        plain_http,
        credentials: Some(Environment::from_lookup(|k| get(k).map(str::to_owned))),
        progress,
        tmpdir: true,
    };
    let Some(s) = site else {
        return ensure(&user, &reference, text, &how);
    };
    // The user's entry of a platform digest: no network.
    if let Some(d) = reference.digest() {
        let key = Key::new(&d.to_string(), CACHE_COMPRESSION.name())?;
        if let Some(p) = user.lookup(&key)? {
            user.mark_used(&key);
            return Ok(p);
        }
    }
    // The tag or index resolved: the site cache may have the manifest.
    let wanted = wanted(None)?;
    let resolved = convert::resolve_as(
        &reference,
        plain_http,
        &wanted,
        text,
        how.credentials.as_ref(),
    )?;
    let pinned = reference.with_digest(resolved.manifest);
    if let Some(p) = site_hit(s, &pinned) {
        return Ok(p);
    }
    ensure(&user, &pinned, text, &how)
}

/// How [`ensure`] reaches the registry and reports.
struct How<'a> {
    /// The platform (`None`: this host's).
    arch: Option<&'a str>,
    plain_http: bool,
    /// Where the credentials come from (`None`: this process's environment).
    credentials: Option<Environment>,
    progress: Option<ProgressSink>,
    /// Whether `SIFRUN_TMPDIR` applies (not for the site cache).
    tmpdir: bool,
}

/// The cache's entry for `reference` on this host's platform (or `arch`).
fn ensure(cache: &Cache, reference: &Reference, text: &str, how: &How<'_>) -> Result<PathBuf> {
    let (arch, plain_http, tmpdir) = (how.arch, how.plain_http, how.tmpdir);
    // A digest with an entry is a platform manifest: no network needed.
    if let Some(d) = reference.digest() {
        let key = Key::new(&d.to_string(), CACHE_COMPRESSION.name())?;
        if let Some(p) = cache.lookup(&key)? {
            cache.mark_used(&key);
            return Ok(p);
        }
    }
    let wanted = wanted(arch)?;
    let resolved = convert::resolve_as(
        reference,
        plain_http,
        &wanted,
        text,
        how.credentials.as_ref(),
    )?;
    let key = Key::new(&resolved.manifest.to_string(), CACHE_COMPRESSION.name())?;
    let pinned = reference.with_digest(resolved.manifest);
    let progress = |l: &str| {
        eprintln!("sifrun: {l}");
        if let Some(sink) = &how.progress {
            (sink.0)("cache", 0, 0, l);
        }
    };
    let entry = cache.ensure(&key, text, &progress, |out| {
        let opts = ConvertOptions {
            output: out.to_owned(),
            source_text: text.to_owned(),
            source: Source::Docker(pinned),
            compression: CACHE_COMPRESSION,
            force: false,
            source_date_epoch: None,
            wanted,
            plain_http,
            tmpdir: std::env::var_os("SIFRUN_TMPDIR")
                .filter(|v| tmpdir && !v.is_empty())
                .map(PathBuf::from),
            credentials: how.credentials.clone(),
            progress: how.progress.clone(),
        };
        convert::convert(&opts)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })?;
    Ok(entry.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pins_apply_to_their_image_only() {
        let r = docker_ref("docker://reg.example:5000/a/b:t").unwrap();
        let pin = format!("reg.example:5000/a/b:t@{D}");
        let p = pinned_by(&r, Some(&pin)).unwrap();
        assert_eq!(p.digest().unwrap().to_string(), D);
        assert!(pinned_by(&r, Some(&format!("reg.example:5000/a/b:u@{D}"))).is_none());
        assert!(pinned_by(&r, Some(&format!("reg.example:5000/a/c:t@{D}"))).is_none());
        assert!(pinned_by(&r, Some("reg.example:5000/a/b:t")).is_none());
        assert!(pinned_by(&r, None).is_none());
        // docker://alpine is docker.io/library/alpine:latest.
        let hub = docker_ref("docker://alpine").unwrap();
        assert!(pinned_by(&hub, Some(&format!("docker.io/library/alpine:latest@{D}"))).is_some());
    }

    #[test]
    fn a_steps_cache_comes_from_the_job() {
        let env = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
        };
        let e = step_image("docker://reg.example/a:t", &env(&[]), None, None).unwrap_err();
        assert!(e.to_string().contains("no cache directory"), "{e}");
    }
}
