//! `sifrun cache list|clean|add`: the image cache's entries (the user's,
//! or with `--site DIR` the admin's site cache), removing old ones and
//! the debris of dead conversions, and putting a pulled (and signed) SIF
//! into it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use launcher::imagecache::gc::{Entry, Source, open_source, printable};
use launcher::imagecache::{Cache, Key};
use launcher::imagecache::{detached, site};

/// `sifrun cache`'s subcommands.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum CacheCommand {
    /// List the cached images: reference, manifest digest, size, last use
    List(Which),
    /// Remove cached images and what killed conversions left behind
    #[command(
        after_help = "Without --older-than or --all only the debris goes: work directories of \
conversions that died, stale and broken locks, old failure records. An image being converted \
right now (a live lock) is never removed; a step that has an image open keeps running."
    )]
    Clean {
        #[command(flatten)]
        which: Which,
        /// Remove images not used for this long: 30d, 12h, 90m, 3600s, 2w
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: Option<Duration>,
        /// Remove every image
        #[arg(long, conflicts_with = "older_than")]
        all: bool,
    },
    /// Put a SIF made by `sifrun pull docker://…` (and perhaps signed since)
    /// into the cache under the manifest digest it records, or convert
    /// `docker://REF` into it (for --site anonymously, as the cache's owner)
    Add {
        #[command(flatten)]
        which: Which,
        /// The image: a SIF file (yours or root's, writable by no one
        /// else), or docker://REF
        image: PathBuf,
    },
}

/// Which cache.
#[derive(clap::Args, Clone, Debug)]
pub struct Which {
    /// The site cache at DIR (the admin file's [images] cache_dir), as its
    /// owner (cache_user or root), instead of yours
    #[arg(long, value_name = "DIR")]
    site: Option<PathBuf>,
}

impl Which {
    fn cache(&self) -> Result<Cache> {
        Ok(match &self.site {
            Some(d) => {
                let mut c = Cache::new(d.clone());
                c.shared = true;
                c
            }
            None => Cache::new(Cache::user_root()?),
        })
    }
}

/// `30d`, `12h`, `90m`, `3600s`, `2w`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(format!("{s}: not a duration (e.g. 30d, 12h, 90m, 3600s)")),
    };
    n.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s}: not a duration (e.g. 30d, 12h, 90m, 3600s)"))
}

fn human_size(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(t: SystemTime) -> String {
    let s = t.elapsed().unwrap_or_default().as_secs();
    match s {
        0..120 => format!("{s} s ago"),
        120..7200 => format!("{} min ago", s / 60),
        7200..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn line(e: &Entry) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        printable(e.reference.as_deref().unwrap_or("-")),
        e.digest,
        human_size(e.size),
        ago(e.last_use)
    )
}

/// A leftover's path as printed: its name is the cache account's (or a
/// dead conversion's) choice, so without control characters.
fn debris(p: &Path) -> String {
    printable(&p.display().to_string())
}

/// The `docker://` reference `image` names, if it names one.
fn docker_text(image: &Path) -> Option<&str> {
    image.to_str().filter(|t| t.starts_with("docker://"))
}

/// Runs `sifrun cache …`: as root with `--site DIR`, the cache owner's
/// work runs in a child that has become that owner and has no terminal
/// (root's process copies its lines without control characters, and
/// exits as it did); otherwise here.
pub fn run(cmd: &CacheCommand) -> Result<()> {
    if which(cmd).site.is_none() || !nix::unistd::geteuid().is_root() {
        return quiet_on_broken_pipe(owner_side(cmd, None));
    }
    // Absolute: the child works in `/`.
    let cmd = &absolute(cmd).context("cache --site")?;
    let Some(dir) = &which(cmd).site else {
        unreachable!("--site was given")
    };
    site::check_site_dir(dir).context("cache --site")?;
    let owner = site::owner_of(dir).context("cache --site")?;
    let mut src = None;
    if let CacheCommand::Add { image, .. } = cmd {
        match docker_text(image) {
            Some(text) => refuse_root_conversion(dir, owner.as_ref(), text)?,
            // Opened and checked as the caller, copied as the cache's
            // owner from that descriptor.
            None => {
                let uid = nix::unistd::getuid().as_raw();
                src = Some(open_source(image, uid).context("cache add")?);
            }
        }
    }
    let parent = nix::unistd::getpid();
    let work = || {
        let done = match &owner {
            Some(account) => site::become_owner(account).context("cache --site"),
            None => Ok(()),
        };
        // PDEATHSIG is set again (become_owner): a parent that died before
        // it was is seen here, and the child stops.
        if done.is_ok() && nix::unistd::getppid() != parent {
            return 125;
        }
        match done.and_then(|()| owner_side(cmd, src.as_ref())) {
            Ok(()) => 0,
            Err(e) if broken_pipe(&e) => BROKEN_PIPE,
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "sifrun: {}",
                    crate::hold_cmd::one_line(&e)
                );
                1
            }
        }
    };
    let ended = detached::run_detached(work, &mut std::io::stdout(), &mut std::io::stderr())
        .context("cache --site");
    let ended = quiet_on_broken_pipe(ended)?;
    if let detached::Ended::Killed(sig) = ended {
        let who = owner.as_ref().map_or("root", |a| a.name.as_str());
        let _ = writeln!(
            std::io::stderr(),
            "sifrun: cache --site: the cache's process (as {}) was killed by {}",
            printable(who),
            sig.as_str()
        );
    }
    match ended.code() {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

/// The exit status of a command whose output went to a closed pipe (as a
/// shell reports one SIGPIPE killed).
const BROKEN_PIPE: i32 = 128 + libc::SIGPIPE;

/// `r`, but a closed pipe (`sifrun cache list | head`) ends the command
/// quietly, with [`BROKEN_PIPE`].
fn quiet_on_broken_pipe<T>(r: Result<T>) -> Result<T> {
    match r {
        Err(e) if broken_pipe(&e) => std::process::exit(BROKEN_PIPE),
        r => r,
    }
}

/// The cache a command names.
fn which(cmd: &CacheCommand) -> &Which {
    match cmd {
        CacheCommand::List(which)
        | CacheCommand::Clean { which, .. }
        | CacheCommand::Add { which, .. } => which,
    }
}

/// `cmd` with its `--site DIR` and the file it adds (not a `docker://`
/// reference) made absolute, from this process's working directory.
fn absolute(cmd: &CacheCommand) -> std::io::Result<CacheCommand> {
    let mut cmd = cmd.clone();
    let which = match &mut cmd {
        CacheCommand::List(which) | CacheCommand::Clean { which, .. } => which,
        CacheCommand::Add { which, image } => {
            if docker_text(image).is_none() {
                *image = std::path::absolute(&*image)?;
            }
            which
        }
    };
    if let Some(dir) = &mut which.site {
        *dir = std::path::absolute(&*dir)?;
    }
    Ok(cmd)
}

/// A closed pipe (`sifrun cache list --site DIR | head`) is no error to
/// report.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Root converts no registry image: `cache add --site DIR docker://REF`
/// needs DIR to have an unprivileged owner to do it.
fn refuse_root_conversion(dir: &Path, owner: Option<&site::Account>, text: &str) -> Result<()> {
    if owner.is_some() {
        return Ok(());
    }
    anyhow::bail!(
        "cache add --site {dir} {text}: {dir} belongs to root, and root converts no registry \
         image: chown -R {dir} to the [images] cache_user account, or pull it as an \
         unprivileged user (sifrun pull FILE {text}) and `sifrun cache add --site {dir} FILE`",
        dir = printable(&dir.display().to_string()),
        text = printable(text),
    )
}

/// The cache's work, by its owner (or any user on their own cache).
/// `src`: the image to add, already opened by the caller.
fn owner_side(cmd: &CacheCommand, src: Option<&Source>) -> Result<()> {
    match cmd {
        CacheCommand::List(which) => list(which, &mut std::io::stdout().lock()),
        CacheCommand::Clean {
            which,
            older_than,
            all,
        } => clean(which, *older_than, *all, &mut std::io::stdout().lock()),
        CacheCommand::Add { which, image } => {
            if let Some(text) = docker_text(image) {
                let entry =
                    crate::cache_cmd::add_docker(&which.cache()?, text, which.site.is_some())
                        .context("cache add")?;
                writeln!(std::io::stdout().lock(), "{}", entry.display())?;
                return Ok(());
            }
            let opened;
            let src = match src {
                Some(src) => src,
                None => {
                    let uid = nix::unistd::getuid().as_raw();
                    opened = open_source(image, uid).context("cache add")?;
                    &opened
                }
            };
            add(&which.cache()?, image, src)
        }
    }
}

fn list(which: &Which, out: &mut dyn Write) -> Result<()> {
    let cache = which.cache()?;
    let entries = cache.entries().context("cache list")?;
    writeln!(out, "REFERENCE\tDIGEST\tSIZE\tLAST USE")?;
    for e in &entries {
        writeln!(out, "{}", line(e))?;
    }
    out.flush()?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    writeln!(
        std::io::stderr(),
        "{} image(s), {} in {}",
        entries.len(),
        human_size(total),
        printable(&cache.root.display().to_string())
    )?;
    Ok(())
}

fn clean(
    which: &Which,
    older_than: Option<Duration>,
    all: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let cache = which.cache()?;
    let done = cache.clean(older_than, all).context("cache clean")?;
    for e in &done.removed {
        writeln!(out, "removed {}", line(e))?;
    }
    for e in &done.locked {
        writeln!(out, "kept (being converted) {}", line(e))?;
    }
    for p in &done.debris {
        writeln!(out, "removed {}", debris(p))?;
    }
    out.flush()?;
    let freed: u64 = done.removed.iter().map(|e| e.size).sum();
    writeln!(
        std::io::stderr(),
        "{} image(s) removed ({}), {} kept while converted, {} leftover(s) removed",
        done.removed.len(),
        human_size(freed),
        done.locked.len(),
        done.debris.len()
    )?;
    Ok(())
}

fn add(cache: &Cache, image: &Path, src: &Source) -> Result<()> {
    let shown = image.display();
    let key = Key::new(&src.digest, crate::cache_cmd::CACHE_COMPRESSION.name())
        .with_context(|| format!("cache add: {shown}"))?;
    let entry = cache
        .add(&key, src)
        .with_context(|| format!("cache add: {shown}"))?;
    writeln!(std::io::stdout().lock(), "{}", entry.display())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert_eq!(
            parse_duration("12h").unwrap(),
            Duration::from_secs(12 * 3600)
        );
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        for bad in ["", "d", "3y", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }

    /// `cache clean` prints a leftover's name without its control
    /// characters (no terminal escapes from the cache's account).
    #[test]
    fn debris_names_are_printable() {
        let p = Path::new("/c/v1/lock/.probe.\x1b]0;owned\x07.\x1b[2J1.lock.broken.x");
        assert_eq!(debris(p), "/c/v1/lock/.probe.]0;owned.[2J1.lock.broken.x");
    }

    /// A writer whose reader went away.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    /// `cache list|clean` into a closed pipe fail with that error (which
    /// ends the command quietly), no panic.
    #[test]
    fn a_closed_pipe_is_an_error_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let which = Which {
            site: Some(d.path().join("site")),
        };
        let e = list(&which, &mut Closed).unwrap_err();
        assert!(broken_pipe(&e), "{e:#}");
        let mut out = Vec::new();
        list(&which, &mut out).unwrap();
        assert_eq!(out, b"REFERENCE\tDIGEST\tSIZE\tLAST USE\n");
        let e = clean(&which, None, true, &mut Closed).unwrap_err();
        assert!(broken_pipe(&e), "{e:#}");
    }

    /// The child works in `/`: `--site DIR` and `cache add FILE` are made
    /// absolute before it starts; a docker:// reference stays as it is.
    #[test]
    fn site_paths_are_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        let add = CacheCommand::Add {
            which: Which {
                site: Some("c".into()),
            },
            image: "i.sif".into(),
        };
        let CacheCommand::Add { which, image } = absolute(&add).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            (which.site.unwrap(), image),
            (cwd.join("c"), cwd.join("i.sif"))
        );
        let docker = CacheCommand::Add {
            which: Which {
                site: Some("/abs".into()),
            },
            image: "docker://r/i:t".into(),
        };
        let CacheCommand::Add { which, image } = absolute(&docker).unwrap() else {
            unreachable!()
        };
        assert_eq!(
            (which.site.unwrap(), image),
            ("/abs".into(), "docker://r/i:t".into())
        );
    }

    /// Root's `cache add --site DIR docker://…` into a cache no
    /// unprivileged account owns converts nothing, with one line that
    /// names DIR and what to do; with an owner it goes on.
    #[test]
    fn root_converts_no_registry_image() {
        let dir = Path::new("/srv/sifrun-cache");
        let e = refuse_root_conversion(dir, None, "docker://r/img:t")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "cache add --site /srv/sifrun-cache docker://r/img:t: /srv/sifrun-cache \
                 belongs to root, and root converts no registry image: chown -R \
                 /srv/sifrun-cache to the [images] cache_user account, or pull"
            ),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let owner = site::Account {
            name: "cache".into(),
            uid: 990,
            gid: 990,
        };
        assert!(refuse_root_conversion(dir, Some(&owner), "docker://r/img:t").is_ok());
    }
}
