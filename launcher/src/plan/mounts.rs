//! The mounts of a plan: the defaults (proc, sys, dev, tmp, home, the
//! working directory, a few /etc files, passwd and group), the launcher's
//! and the user's binds, then the generated programs and scripts.

use std::path::{Path, PathBuf};

use super::{
    ENV_SCRIPT, Generated, HostFs, ImageTree, MountOp, PlanError, PlanInput, Source, is_under,
    resolve_in_image,
};
use crate::bind::BindSpec;
use crate::fuse::TargetKind;

/// A mount before its target is resolved in the image.
pub(super) struct Want {
    source: Source,
    target: PathBuf,
    kind: TargetKind,
    readonly: bool,
    allow_devices: bool,
}

impl Want {
    fn new(source: Source, target: impl Into<PathBuf>, kind: TargetKind, readonly: bool) -> Want {
        Want {
            source,
            target: target.into(),
            kind,
            readonly,
            allow_devices: false,
        }
    }
}

fn host(path: impl Into<PathBuf>, recursive: bool) -> Source {
    Source::Host {
        path: path.into(),
        recursive,
    }
}

/// Directories of the image that the current directory is never bound over.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/opt", "/proc", "/root",
    "/run", "/sbin", "/sys", "/usr", "/var",
];

fn is_system_dir(p: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| Path::new(d) == p)
        || [
            "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/proc", "/sys", "/dev", "/boot",
        ]
        .iter()
        .any(|d| p.starts_with(d))
}

/// Every bind of host paths, in order: the Slurm client's, the launcher's
/// host integration, the user's (later wins on the same target).
pub(super) fn all_binds<'a>(input: &PlanInput<'a>) -> impl Iterator<Item = &'a BindSpec> + 'a {
    input
        .slurm_client
        .into_iter()
        .flat_map(|c| &c.binds)
        .chain(input.host_binds)
        .chain(&input.opts.binds)
}

/// /tmp, /var/tmp and home: fresh (or from --workdir) with --contain, the
/// host's otherwise. Every host directory is bound recursively: in a user
/// namespace the host's mounts below it are locked to it, and the kernel
/// refuses a plain bind of a directory with locked mounts below (EINVAL), so
/// one FUSE or automount below /tmp or home would stop every container.
fn scratch_dirs(input: &PlanInput<'_>, host_fs: &dyn HostFs, wants: &mut Vec<Want>) {
    let (opts, home) = (input.opts, &input.host.home);
    let from_workdir = |sub: &str| match &opts.workdir {
        Some(w) => host(w.join(sub), true),
        None => Source::Tmpfs,
    };
    if opts.contain {
        for (t, sub) in [("/tmp", "tmp"), ("/var/tmp", "var_tmp")] {
            wants.push(Want::new(from_workdir(sub), t, TargetKind::Dir, false));
        }
        if !opts.no_home {
            wants.push(Want::new(
                from_workdir("home"),
                home.clone(),
                TargetKind::Dir,
                false,
            ));
        }
        return;
    }
    for t in ["/tmp", "/var/tmp"] {
        if host_fs.kind(Path::new(t)) == Some(TargetKind::Dir) {
            wants.push(Want::new(host(t, true), t, TargetKind::Dir, false));
        }
    }
    if !opts.no_home && host_fs.kind(home) == Some(TargetKind::Dir) {
        wants.push(Want::new(
            host(home.clone(), true),
            home.clone(),
            TargetKind::Dir,
            false,
        ));
    }
}

/// The mounts wanted, before resolution, in plan order.
pub(super) fn wanted(input: &PlanInput<'_>, host_fs: &dyn HostFs) -> Result<Vec<Want>, PlanError> {
    let (opts, facts) = (input.opts, input.host);
    let mut wants = vec![
        Want::new(Source::Proc, "/proc", TargetKind::Dir, false),
        Want::new(host("/sys", true), "/sys", TargetKind::Dir, false),
        Want {
            allow_devices: true,
            ..Want::new(host("/dev", true), "/dev", TargetKind::Dir, false)
        },
    ];
    scratch_dirs(input, host_fs, &mut wants);
    // A cwd under one of the binds' targets is whatever that bind shows
    // there (mounting it would need a target inside the bound host directory).
    let cwd_covered = wants.iter().any(|w| is_under(&facts.cwd, &w.target))
        || all_binds(input).any(|b| is_under(&facts.cwd, &b.target));
    if !opts.contain
        && !cwd_covered
        && !is_system_dir(&facts.cwd)
        && host_fs.kind(&facts.cwd) == Some(TargetKind::Dir)
    {
        wants.push(Want::new(
            host(facts.cwd.clone(), true),
            facts.cwd.clone(),
            TargetKind::Dir,
            false,
        ));
    }
    let etc: &[&str] = if opts.contain {
        &["/etc/localtime", "/etc/hosts"]
    } else {
        &["/etc/localtime", "/etc/hosts", "/etc/resolv.conf"]
    };
    for f in etc {
        if host_fs.kind(Path::new(f)) == Some(TargetKind::File) {
            wants.push(Want::new(host(*f, false), *f, TargetKind::File, true));
        }
    }
    for name in ["passwd", "group"] {
        wants.push(Want::new(
            Source::Generated(name.into()),
            format!("/etc/{name}"),
            TargetKind::File,
            true,
        ));
    }
    for b in all_binds(input) {
        let kind = host_fs.kind(&b.source).ok_or_else(|| {
            PlanError::MissingSource(b.source.clone(), host_fs.why_missing(&b.source))
        })?;
        wants.push(Want::new(
            host(b.source.clone(), true),
            b.target.clone(),
            kind,
            b.readonly,
        ));
    }
    Ok(wants)
}

/// The mounts and the targets to synthesise.
type Resolved = (Vec<MountOp>, Vec<(PathBuf, TargetKind)>);

/// Resolves the targets in the image and orders the mounts, parents before
/// children (otherwise as wanted: later wins on equal targets); returns
/// them and the targets the image lacks.
pub(super) fn resolve_all(wants: Vec<Want>, tree: &dyn ImageTree) -> Result<Resolved, PlanError> {
    let mut resolved: Vec<(PathBuf, Want)> = Vec::new();
    for w in wants {
        let r = resolve_in_image(tree, &w.target)?;
        resolved.push((r, w));
    }
    resolved.sort_by_key(|(r, _)| r.components().count());

    let mut mounts: Vec<MountOp> = Vec::new();
    let mut synth: Vec<(PathBuf, TargetKind)> = Vec::new();
    for (r, w) in resolved {
        let in_host_dir = mounts.iter().any(|m| {
            !matches!(m.source, Source::Generated(_))
                && m.kind == TargetKind::Dir
                && r != m.resolved
                && is_under(&r, &m.resolved)
        });
        if !in_host_dir && tree.entry(&r).is_none() && !synth.iter().any(|(p, _)| *p == r) {
            synth.push((r.clone(), w.kind));
        }
        mounts.push(MountOp {
            source: w.source,
            target: w.target,
            resolved: r,
            kind: w.kind,
            readonly: w.readonly,
            allow_devices: w.allow_devices,
            in_host_dir,
        });
    }
    Ok((mounts, synth))
}

/// The Slurm client's scripts and the environment script: generated files
/// mounted read-only at the launcher's own paths, after everything else.
pub(super) fn add_generated(
    input: &PlanInput<'_>,
    mounts: &mut Vec<MountOp>,
    synth: &mut Vec<(PathBuf, TargetKind)>,
    files: &mut Vec<Generated>,
) {
    let scripts = input.slurm_client.into_iter().flat_map(|c| &c.scripts);
    let scripts = scripts.map(|(cmd, script)| {
        (
            format!("exec-slurm-{cmd}"),
            Path::new(crate::slurm_client::BIN_DIR).join(cmd),
            script.as_str(),
            true,
        )
    });
    let env = input
        .env_script
        .map(|s| ("env.sh".to_owned(), PathBuf::from(ENV_SCRIPT), s, false));
    for (name, target, text, executable) in scripts.chain(env) {
        synth.push((target.clone(), TargetKind::File));
        mounts.push(MountOp {
            source: Source::Generated(name.clone()),
            target: target.clone(),
            resolved: target,
            kind: TargetKind::File,
            readonly: true,
            allow_devices: false,
            in_host_dir: false,
        });
        files.push(Generated {
            name,
            bytes: text.as_bytes().to_vec(),
            executable,
        });
    }
}
