//! `sifrun resolve docker://REF`, and `docker://` images for `exec`, `run`
//! and `shell`: the tag resolved to the platform's manifest digest, the
//! SIF for that digest taken from the image cache (`SIFRUN_CACHEDIR`) or
//! converted into it once (see `launcher::imagecache`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use launcher::build::Compression;
use launcher::convert::{self, ConvertOptions, ProgressSink};
use launcher::imagecache::site::limits::{Limits, free_bytes};
use launcher::imagecache::site::relay::LINE_PHASE;
use launcher::imagecache::site::uses::Uses;
use launcher::imagecache::site::{Account, Site};
use launcher::imagecache::{Admission, Cache, Key, Watch};
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

pub(crate) fn truthy(v: Option<&str>) -> bool {
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
    let plain_http = a.image_args.plain_http();
    let pinned = pinned_by(&reference, std::env::var(PIN_ENV).ok().as_deref())
        .and_then(|p| p.digest().cloned());
    // A digest the user's cache holds an entry for is a platform
    // manifest's: nothing to ask the registry (srun runs this for every
    // docker:// step).
    let cached = match (&pinned, &a.image_args.arch) {
        (None, None) => cached_manifest(&reference),
        _ => None,
    };
    let (digest, manifest) = match (pinned, cached) {
        (Some(d), _) => (d, None),
        (None, Some(d)) => (d.clone(), Some(d)),
        (None, None) => {
            let wanted = wanted(a.image_args.arch.as_deref()).with_context(fail)?;
            let r =
                convert::resolve(&reference, plain_http, &wanted, &a.source).with_context(fail)?;
            (r.digest, Some(r.manifest))
        }
    };
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

/// The digest of `reference` when the user's cache has an entry for it.
fn cached_manifest(reference: &Reference) -> Option<oci::digest::Digest> {
    let d = reference.digest()?;
    let key = Key::new(&d.to_string(), CACHE_COMPRESSION.name()).ok()?;
    let cache = Cache::new(Cache::user_root().ok()?);
    cache.lookup(&key).ok()??;
    Some(d.clone())
}

/// `sifrun cache add [--site DIR] docker://REF`: the image converted into
/// `cache` by this process (for the site cache: already its owner, and
/// anonymously, since every user reads the entry).
pub fn add_docker(cache: &Cache, text: &str, site: bool) -> Result<PathBuf> {
    let reference = docker_ref(text)?;
    let how = How {
        arch: None,
        plain_http: truthy(std::env::var("SIFRUN_NOHTTPS").ok().as_deref()),
        credentials: site.then(Environment::default),
        progress: None,
        tmpdir: !site,
        limits: None,
    };
    ensure(cache, &reference, text, &how)
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
    let plain_http = args.plain_http();
    let cache = Cache::new(Cache::user_root()?);
    let how = How {
        arch: args.arch.as_deref(),
        plain_http,
        credentials: None,
        progress: None,
        tmpdir: true,
        limits: None,
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
/// missing, all by a child that has become the cache's account (the
/// holder, still with root's real uid, before it drops it): the child
/// parses the user's reference, the job's pin and `SIFRUN_NOHTTPS`; root's
/// side only forks and checks the path the child names with
/// [`Site::trusted`]. Anonymous: the entry is for every user, so no user's
/// credentials take part. `None` (with a line saying why) when it cannot:
/// the step then uses the user's cache.
///
/// While the child converts, or waits for another conversion of the image,
/// `progress` hears that it moves, each time the count the child relays
/// rises (see `launcher::imagecache::site::relay`): nothing of the child's
/// but that count reaches it.
pub fn fill_site(
    text: &str,
    job_env: &[(String, String)],
    site: &Site,
    allowed: Option<&[String]>,
    limits: Limits,
    progress: Option<&ProgressSink>,
) -> Option<PathBuf> {
    let account = site.account.as_ref()?;
    let mut rose = |n: u64| {
        if let Some(sink) = progress {
            (sink.0)(
                "site",
                n,
                0,
                "converting into the site cache (or waiting for its conversion)",
            );
        }
    };
    let made = launcher::imagecache::site::as_account_relaying(
        account,
        |relay| site_child(text, job_env, site, (allowed, limits), Some(relay.sink())),
        &mut rose,
    );
    match made {
        Ok(p) if is_site_entry(site, &p) => match site.trusted(&p) {
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

/// Whether `path` (named by the site cache's child) has the form of one of
/// its entries: `ROOT/v1/sif/sha256/<64 hex>.<compression>.sif`, the
/// directory compared component by component (so no `..`), the name
/// that of a key of the cache's compression.
fn is_site_entry(site: &Site, path: &Path) -> bool {
    let key = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(&format!(".{}.sif", CACHE_COMPRESSION.name())))
        .and_then(|hex| Key::new(&format!("sha256:{hex}"), CACHE_COMPRESSION.name()).ok());
    key.is_some_and(|k| site.cache.entry_path(&k).as_os_str() == path.as_os_str())
}

/// The site cache's child, as its account: the step's reference (pinned
/// by the job), its entry if there is one, else a conversion into it of
/// an image of a registry on the `allowed` list, within the `limits`.
fn site_child(
    text: &str,
    job_env: &[(String, String)],
    site: &Site,
    (allowed, limits): (Option<&[String]>, Limits),
    progress: Option<ProgressSink>,
) -> Result<PathBuf, String> {
    let reference = step_reference(text, job_env).map_err(|e| format!("{e:#}"))?;
    if let Some(p) = site_hit(site, &reference) {
        return Ok(p);
    }
    let (domain, path) = (reference.domain(), reference.path());
    if !slurm_conf::admin::site_registry_allowed(allowed, domain, path) {
        return Err(format!(
            "{domain}/{path} is not in the admin's images.site_registries"
        ));
    }
    let how = How {
        arch: None,
        plain_http: truthy(job_var(job_env, "SIFRUN_NOHTTPS")),
        credentials: Some(Environment::default()),
        progress,
        tmpdir: false,
        limits: Some(limits),
    };
    ensure(&site.cache, &reference, text, &how).map_err(|e| format!("{e:#}"))
}

/// The trusted site cache entry of a digest-pinned reference, without
/// the network (the digest must be the platform manifest's), and its use
/// recorded (by this process, the cache's account).
fn site_hit(site: &Site, reference: &Reference) -> Option<PathBuf> {
    let (p, key) = site_entry(site, reference)?;
    site.note_use(&key);
    Some(p)
}

/// The trusted site cache entry of a digest-pinned reference, and its key.
fn site_entry(site: &Site, reference: &Reference) -> Option<(PathBuf, Key)> {
    let d = reference.digest()?;
    let key = Key::new(&d.to_string(), CACHE_COMPRESSION.name()).ok()?;
    let p = site.lookup(&key, &say)?;
    Some((p, key))
}

/// [`site_hit`] on the user's side: the use is recorded by `uses`, the
/// account's child the holder started before it dropped root.
fn user_site_hit(site: &Site, reference: &Reference, uses: &mut Option<Uses>) -> Option<PathBuf> {
    let (p, key) = site_entry(site, reference)?;
    if let Some(u) = uses.take() {
        u.record(&key);
    }
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
/// hears how the conversion goes; `uses` records the use of a site cache
/// entry found here.
pub fn step_image(
    text: &str,
    job_env: &[(String, String)],
    site: Option<&Site>,
    progress: Option<ProgressSink>,
    mut uses: Option<Uses>,
) -> Result<PathBuf> {
    let get = |k: &str| job_var(job_env, k);
    let reference = step_reference(text, job_env)?;
    if let Some(p) = site.and_then(|s| user_site_hit(s, &reference, &mut uses)) {
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
        limits: None,
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
    if let Some(p) = user_site_hit(s, &pinned, &mut uses) {
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
    /// What a new entry may take (the site cache's limits).
    limits: Option<Limits>,
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
    // Locked per source: another requester's registry cannot stall this one.
    let source = format!(
        "{}{}/{}",
        if plain_http { "http:" } else { "" },
        reference.domain(),
        reference.path()
    );
    let key =
        Key::new(&resolved.manifest.to_string(), CACHE_COMPRESSION.name())?.from_source(&source);
    // Checked if this process converts, under its lock (which records
    // the size, so conversions at once count one another).
    let check = |reserved| match &how.limits {
        Some(l) => l.admit(resolved.size, free_bytes(&cache.root), reserved),
        None => Ok(()),
    };
    let admission = how.limits.map(|_| Admission {
        size: resolved.size,
        check: &check,
    });
    let pinned = reference.with_digest(resolved.manifest);
    let line = |l: &str| {
        eprintln!("sifrun: {l}");
        if let Some(sink) = &how.progress {
            (sink.0)(LINE_PHASE, 0, 0, l);
        }
    };
    // The conversion waited for (another process's) moves.
    let grew = |n: u64| {
        if let Some(sink) = &how.progress {
            let l = format!(
                "waiting for another conversion of {text}: {:.1} MiB written",
                n as f64 / f64::from(1 << 20)
            );
            (sink.0)("wait", n, 0, &l);
        }
    };
    let watch = Watch {
        line: &line,
        grew: &grew,
    };
    let entry = cache.ensure_watched(&key, text, admission.as_ref(), &watch, |out| {
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
mod tests;
