//! The container plan: what to mount where, which files to generate, which
//! identity maps to write, where to start. Computed purely from the inputs
//! (options, facts about the host, the image tree) so that it can be
//! golden-tested; [`crate::apply`] carries it out over the syscall seam.

use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use crate::bind::BindSpec;
use crate::fuse::TargetKind;

/// What the plan needs to know about the image's tree.
pub trait ImageTree {
    /// The entry at `path`, whose parent components are directories
    /// (symlinks are reported, not followed).
    fn entry(&self, path: &Path) -> Option<Entry>;
    /// The contents of a small regular file, if it exists.
    fn read_small(&self, path: &Path) -> Option<Vec<u8>>;
    /// The names in a directory (not following a final symlink).
    fn list(&self, path: &Path) -> Option<Vec<std::ffi::OsString>>;
}

/// An entry of the image tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File,
    Symlink(PathBuf),
    Other,
}

/// What the plan needs to know about the host.
pub trait HostFs {
    /// Whether `path` exists on the host, and as what.
    fn kind(&self, path: &Path) -> Option<TargetKind>;
    /// Why [`HostFs::kind`] found nothing at `path`, for the message.
    fn why_missing(&self, _path: &Path) -> String {
        "no such file or directory".into()
    }
}

/// Facts about the user and the host.
#[derive(Clone, Debug)]
pub struct HostFacts {
    pub uid: u32,
    pub gid: u32,
    pub user: String,
    pub home: PathBuf,
    pub cwd: PathBuf,
    /// The user's line from the host's passwd database.
    pub passwd_line: String,
    /// Lines of the groups the user is in (primary group first).
    pub group_lines: Vec<String>,
}

/// User options that shape the container.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub binds: Vec<BindSpec>,
    pub no_home: bool,
    pub contain: bool,
    pub workdir: Option<PathBuf>,
    pub pwd: Option<PathBuf>,
    pub writable_tmpfs: bool,
    pub fakeroot: bool,
}

/// Where a mount's content comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A host path, bound (recursively for /dev and /sys).
    Host { path: PathBuf, recursive: bool },
    /// A file the launcher generates (passwd, group), by name.
    Generated(String),
    /// A new procfs for the container's PID namespace.
    Proc,
    /// An empty tmpfs.
    Tmpfs,
}

/// One mount onto the container root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountOp {
    pub source: Source,
    /// The target as the user named it.
    pub target: PathBuf,
    /// The target with the image's symlinks resolved inside the root.
    pub resolved: PathBuf,
    /// File or directory.
    pub kind: TargetKind,
    pub readonly: bool,
    /// Device nodes stay usable (only the host /dev); everything else is nodev.
    pub allow_devices: bool,
    /// The target lies inside an earlier bind of a host directory, so it must
    /// already exist there; otherwise it is created in the served image.
    pub in_host_dir: bool,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub uid_map: String,
    pub gid_map: String,
    pub mounts: Vec<MountOp>,
    /// Mount targets the image lacks, to be synthesised by the server.
    pub synth: Vec<(PathBuf, TargetKind)>,
    /// Generated files: (name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Working directory to start in, and whether it was asked for (--pwd).
    pub cwd: PathBuf,
    pub cwd_required: bool,
    /// Home directory inside the container.
    pub home: PathBuf,
    pub writable_tmpfs: bool,
}

/// Why no plan can be made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--bind: {}: {}", .0.display(), .1)]
    MissingSource(PathBuf, String),
    #[error("{}: too many levels of symbolic links in the image", .0.display())]
    SymlinkLoop(PathBuf),
    #[error("{}: {} in the image is not a directory", path.display(), component.display())]
    NotADirectory { path: PathBuf, component: PathBuf },
    #[error("--workdir: {}: not a directory", .0.display())]
    Workdir(PathBuf),
    #[error("--pwd: {}: must be an absolute path", .0.display())]
    Pwd(PathBuf),
}

const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside the image as if the image were the root: symlinks
/// (absolute or relative) are followed within the image and `..` stops at
/// the root, so no link can point a mount outside the container. Components
/// past the first missing one are kept as they are.
pub fn resolve_in_image(tree: &dyn ImageTree, path: &Path) -> Result<PathBuf, PlanError> {
    let mut todo: Vec<PathBuf> = components_rev(path);
    let mut done = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            if !missing {
                done.pop();
            } else {
                done.push("..");
            }
            continue;
        }
        let next = done.join(&c);
        if missing {
            done = next;
            continue;
        }
        match tree.entry(&next) {
            None => {
                missing = true;
                done = next;
            }
            Some(Entry::Symlink(target)) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(PlanError::SymlinkLoop(path.to_owned()));
                }
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                todo.extend(components_rev(&target));
            }
            Some(Entry::Dir) => done = next,
            Some(Entry::File | Entry::Other) => {
                if !todo.is_empty() {
                    return Err(PlanError::NotADirectory {
                        path: path.to_owned(),
                        component: next,
                    });
                }
                done = next;
            }
        }
    }
    Ok(done)
}

fn components_rev(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// Whether `path` is `base` or below it, comparing whole components.
pub fn is_under(path: &Path, base: &Path) -> bool {
    path.starts_with(base)
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

/// The passwd file of the container: the image's, plus the user's entry.
fn passwd(tree: &dyn ImageTree, host: &HostFacts, opts: &RunOptions, home: &Path) -> Vec<u8> {
    let image = tree
        .read_small(Path::new("/etc/passwd"))
        .unwrap_or_default();
    let mut text = String::from_utf8_lossy(&image).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let (name, uid, gid) = if opts.fakeroot {
        ("root".to_owned(), 0, 0)
    } else {
        (host.user.clone(), host.uid, host.gid)
    };
    let has_uid = text
        .lines()
        .any(|l| l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid));
    if !has_uid {
        let gecos = host.passwd_line.split(':').nth(4).unwrap_or("");
        let _ = writeln!(
            text,
            "{name}:x:{uid}:{gid}:{gecos}:{}:/bin/sh",
            home.display()
        );
    } else if !opts.fakeroot {
        // Point the existing entry's home at the bound home.
        text = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                let h = home.display().to_string();
                if f.len() == 7 && f[2].parse::<u32>().ok() == Some(uid) {
                    f[5] = &h;
                    format!("{}\n", f.join(":"))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
    }
    text.into_bytes()
}

/// The group file of the container: the image's, plus the user's groups.
fn group(tree: &dyn ImageTree, host: &HostFacts, opts: &RunOptions) -> Vec<u8> {
    let image = tree.read_small(Path::new("/etc/group")).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&image).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if opts.fakeroot {
        return text.into_bytes();
    }
    let present: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split(':').nth(2).and_then(|g| g.parse().ok()))
        .collect();
    for line in &host.group_lines {
        let gid = line.split(':').nth(2).and_then(|g| g.parse::<u32>().ok());
        if gid.is_some_and(|g| !present.contains(&g)) {
            let _ = writeln!(text, "{line}");
        }
    }
    text.into_bytes()
}

/// Computes the plan.
pub fn plan(
    opts: &RunOptions,
    host: &HostFacts,
    host_fs: &dyn HostFs,
    tree: &dyn ImageTree,
) -> Result<Plan, PlanError> {
    let (uid_map, gid_map) = if opts.fakeroot {
        (format!("0 {} 1\n", host.uid), format!("0 {} 1\n", host.gid))
    } else {
        (
            format!("{0} {0} 1\n", host.uid),
            format!("{0} {0} 1\n", host.gid),
        )
    };
    if let Some(w) = &opts.workdir
        && host_fs.kind(w) != Some(TargetKind::Dir)
    {
        return Err(PlanError::Workdir(w.clone()));
    }
    if let Some(p) = &opts.pwd
        && !p.is_absolute()
    {
        return Err(PlanError::Pwd(p.clone()));
    }

    struct Want {
        source: Source,
        target: PathBuf,
        kind: TargetKind,
        readonly: bool,
        allow_devices: bool,
    }
    let mut wants: Vec<Want> = Vec::new();
    let mut add = |source, target: &str, kind, readonly| {
        wants.push(Want {
            source,
            target: PathBuf::from(target),
            kind,
            readonly,
            allow_devices: false,
        })
    };
    let host_bind = |p: &str, recursive| Source::Host {
        path: PathBuf::from(p),
        recursive,
    };
    add(Source::Proc, "/proc", TargetKind::Dir, false);
    add(host_bind("/sys", true), "/sys", TargetKind::Dir, false);
    wants.push(Want {
        source: host_bind("/dev", true),
        target: "/dev".into(),
        kind: TargetKind::Dir,
        readonly: false,
        allow_devices: true,
    });
    let home = host.home.clone();
    if opts.contain {
        for (t, sub) in [("/tmp", "tmp"), ("/var/tmp", "var_tmp")] {
            let source = match &opts.workdir {
                Some(w) => Source::Host {
                    path: w.join(sub),
                    recursive: false,
                },
                None => Source::Tmpfs,
            };
            wants.push(Want {
                source,
                target: t.into(),
                kind: TargetKind::Dir,
                readonly: false,
                allow_devices: false,
            });
        }
        if !opts.no_home {
            let source = match &opts.workdir {
                Some(w) => Source::Host {
                    path: w.join("home"),
                    recursive: false,
                },
                None => Source::Tmpfs,
            };
            wants.push(Want {
                source,
                target: home.clone(),
                kind: TargetKind::Dir,
                readonly: false,
                allow_devices: false,
            });
        }
    } else {
        for t in ["/tmp", "/var/tmp"] {
            if host_fs.kind(Path::new(t)) == Some(TargetKind::Dir) {
                wants.push(Want {
                    source: host_bind(t, false),
                    target: t.into(),
                    kind: TargetKind::Dir,
                    readonly: false,
                    allow_devices: false,
                });
            }
        }
        if !opts.no_home && host_fs.kind(&home) == Some(TargetKind::Dir) {
            wants.push(Want {
                source: Source::Host {
                    path: home.clone(),
                    recursive: false,
                },
                target: home.clone(),
                kind: TargetKind::Dir,
                readonly: false,
                allow_devices: false,
            });
        }
    }
    // A cwd under one of the user's bind targets is whatever that bind shows
    // there (mounting it would need a target inside the bound host directory).
    let cwd_covered = wants.iter().any(|w| is_under(&host.cwd, &w.target))
        || opts.binds.iter().any(|b| is_under(&host.cwd, &b.target));
    if !opts.contain
        && !cwd_covered
        && !is_system_dir(&host.cwd)
        && host_fs.kind(&host.cwd) == Some(TargetKind::Dir)
    {
        wants.push(Want {
            source: Source::Host {
                path: host.cwd.clone(),
                recursive: false,
            },
            target: host.cwd.clone(),
            kind: TargetKind::Dir,
            readonly: false,
            allow_devices: false,
        });
    }
    let etc: &[&str] = if opts.contain {
        &["/etc/localtime", "/etc/hosts"]
    } else {
        &["/etc/localtime", "/etc/hosts", "/etc/resolv.conf"]
    };
    for f in etc {
        if host_fs.kind(Path::new(f)) == Some(TargetKind::File) {
            wants.push(Want {
                source: host_bind(f, false),
                target: (*f).into(),
                kind: TargetKind::File,
                readonly: true,
                allow_devices: false,
            });
        }
    }
    for name in ["passwd", "group"] {
        wants.push(Want {
            source: Source::Generated(name.into()),
            target: format!("/etc/{name}").into(),
            kind: TargetKind::File,
            readonly: true,
            allow_devices: false,
        });
    }
    for b in &opts.binds {
        let kind = host_fs.kind(&b.source).ok_or_else(|| {
            PlanError::MissingSource(b.source.clone(), host_fs.why_missing(&b.source))
        })?;
        wants.push(Want {
            source: Source::Host {
                path: b.source.clone(),
                recursive: true,
            },
            target: b.target.clone(),
            kind,
            readonly: b.readonly,
            allow_devices: false,
        });
    }

    // Parents before children; otherwise the order above (later wins on equal targets).
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

    let files = vec![
        ("passwd".to_owned(), passwd(tree, host, opts, &home)),
        ("group".to_owned(), group(tree, host, opts)),
    ];
    let (cwd, cwd_required) = match &opts.pwd {
        Some(p) => (p.clone(), true),
        None => (host.cwd.clone(), false),
    };
    Ok(Plan {
        uid_map,
        gid_map,
        mounts,
        synth,
        files,
        cwd,
        cwd_required,
        home,
        writable_tmpfs: opts.writable_tmpfs,
    })
}

impl Plan {
    /// A stable text form, for golden tests and `--dry-run`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "uid_map: {}gid_map: {}", self.uid_map, self.gid_map);
        for m in &self.mounts {
            let src = match &m.source {
                Source::Host { path, recursive } => {
                    format!(
                        "{}{}",
                        if *recursive { "rbind " } else { "bind " },
                        path.display()
                    )
                }
                Source::Generated(n) => format!("generated {n}"),
                Source::Proc => "proc".into(),
                Source::Tmpfs => "tmpfs".into(),
            };
            let mut flags = vec![if m.readonly { "ro" } else { "rw" }, "nosuid"];
            if !m.allow_devices {
                flags.push("nodev");
            }
            if m.in_host_dir {
                flags.push("in-host-dir");
            }
            let target = if m.resolved == m.target {
                m.target.display().to_string()
            } else {
                format!("{} (-> {})", m.target.display(), m.resolved.display())
            };
            let _ = writeln!(out, "mount {src} on {target} [{}]", flags.join(","));
        }
        for (p, k) in &self.synth {
            let _ = writeln!(
                out,
                "synth {} {}",
                if *k == TargetKind::Dir { "dir" } else { "file" },
                p.display()
            );
        }
        let _ = writeln!(
            out,
            "cwd: {}{}",
            self.cwd.display(),
            if self.cwd_required { " (required)" } else { "" }
        );
        if self.writable_tmpfs {
            out.push_str("writable tmpfs overlay\n");
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// An image tree from a list of "path" (dir, ends with /), "path" (file) and "path -> target".
    pub(crate) struct FakeTree(pub BTreeMap<PathBuf, Entry>, pub BTreeMap<PathBuf, Vec<u8>>);

    impl FakeTree {
        pub(crate) fn new(entries: &[&str]) -> FakeTree {
            let mut m = BTreeMap::new();
            m.insert(PathBuf::from("/"), Entry::Dir);
            for e in entries {
                if let Some((p, t)) = e.split_once(" -> ") {
                    m.insert(PathBuf::from(p), Entry::Symlink(t.into()));
                } else if let Some(p) = e.strip_suffix('/') {
                    m.insert(PathBuf::from(p), Entry::Dir);
                } else {
                    m.insert(PathBuf::from(e), Entry::File);
                }
            }
            FakeTree(m, BTreeMap::new())
        }
    }

    impl ImageTree for FakeTree {
        fn entry(&self, path: &Path) -> Option<Entry> {
            self.0.get(path).cloned()
        }
        fn read_small(&self, path: &Path) -> Option<Vec<u8>> {
            self.1.get(path).cloned()
        }
        fn list(&self, path: &Path) -> Option<Vec<std::ffi::OsString>> {
            matches!(self.0.get(path), Some(Entry::Dir)).then(|| {
                self.0
                    .keys()
                    .filter(|p| p.parent() == Some(path))
                    .filter_map(|p| p.file_name().map(|n| n.to_owned()))
                    .collect()
            })
        }
    }

    pub(crate) struct FakeHost(pub BTreeMap<PathBuf, TargetKind>);

    impl HostFs for FakeHost {
        fn kind(&self, path: &Path) -> Option<TargetKind> {
            self.0.get(path).copied()
        }
    }

    pub(crate) fn host() -> (HostFacts, FakeHost) {
        let facts = HostFacts {
            uid: 1001,
            gid: 1001,
            user: "alice".into(),
            home: "/home/alice".into(),
            cwd: "/scratch/run".into(),
            passwd_line: "alice:x:1001:1001:Alice A:/home/alice:/bin/bash".into(),
            group_lines: vec!["alice:x:1001:".into(), "hpc:x:2000:alice".into()],
        };
        let mut fs = BTreeMap::new();
        for d in [
            "/tmp",
            "/var/tmp",
            "/home/alice",
            "/scratch/run",
            "/data",
            "/work",
        ] {
            fs.insert(PathBuf::from(d), TargetKind::Dir);
        }
        for f in [
            "/etc/hosts",
            "/etc/resolv.conf",
            "/etc/localtime",
            "/data/in.txt",
        ] {
            fs.insert(PathBuf::from(f), TargetKind::File);
        }
        (facts, FakeHost(fs))
    }

    fn debian_like() -> FakeTree {
        let mut t = FakeTree::new(&[
            "/bin/",
            "/etc/",
            "/etc/passwd",
            "/etc/group",
            "/home/",
            "/proc/",
            "/sys/",
            "/dev/",
            "/tmp/",
            "/var/",
            "/var/tmp/",
            "/usr/",
            "/usr/bin/",
        ]);
        t.1.insert(
            "/etc/passwd".into(),
            b"root:x:0:0:root:/root:/bin/bash\n".to_vec(),
        );
        t.1.insert("/etc/group".into(), b"root:x:0:\nusers:x:100:\n".to_vec());
        t
    }

    #[test]
    fn default_plan_golden() {
        let (facts, fs) = host();
        let plan = plan(&RunOptions::default(), &facts, &fs, &debian_like()).unwrap();
        let want = "\
uid_map: 1001 1001 1
gid_map: 1001 1001 1
mount proc on /proc [rw,nosuid,nodev]
mount rbind /sys on /sys [rw,nosuid,nodev]
mount rbind /dev on /dev [rw,nosuid]
mount bind /tmp on /tmp [rw,nosuid,nodev]
mount bind /var/tmp on /var/tmp [rw,nosuid,nodev]
mount bind /home/alice on /home/alice [rw,nosuid,nodev]
mount bind /scratch/run on /scratch/run [rw,nosuid,nodev]
mount bind /etc/localtime on /etc/localtime [ro,nosuid,nodev]
mount bind /etc/hosts on /etc/hosts [ro,nosuid,nodev]
mount bind /etc/resolv.conf on /etc/resolv.conf [ro,nosuid,nodev]
mount generated passwd on /etc/passwd [ro,nosuid,nodev]
mount generated group on /etc/group [ro,nosuid,nodev]
synth dir /home/alice
synth dir /scratch/run
synth file /etc/localtime
synth file /etc/hosts
synth file /etc/resolv.conf
cwd: /scratch/run
";
        assert_eq!(plan.render(), want);
        let passwd = String::from_utf8(plan.files[0].1.clone()).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001:Alice A:/home/alice:/bin/sh\n"
        );
        let group = String::from_utf8(plan.files[1].1.clone()).unwrap();
        assert_eq!(
            group,
            "root:x:0:\nusers:x:100:\nalice:x:1001:\nhpc:x:2000:alice\n"
        );
    }

    #[test]
    fn contain_fakeroot_and_user_binds_golden() {
        let (facts, fs) = host();
        let opts = RunOptions {
            contain: true,
            fakeroot: true,
            pwd: Some("/work".into()),
            binds: vec![
                crate::bind::parse_one("/data:/mnt/data:ro", Path::new("/")).unwrap(),
                crate::bind::parse_one("/data/in.txt:/home/alice/in.txt", Path::new("/")).unwrap(),
            ],
            ..RunOptions::default()
        };
        let plan = plan(&opts, &facts, &fs, &debian_like()).unwrap();
        let want = "\
uid_map: 0 1001 1
gid_map: 0 1001 1
mount proc on /proc [rw,nosuid,nodev]
mount rbind /sys on /sys [rw,nosuid,nodev]
mount rbind /dev on /dev [rw,nosuid]
mount tmpfs on /tmp [rw,nosuid,nodev]
mount tmpfs on /var/tmp [rw,nosuid,nodev]
mount tmpfs on /home/alice [rw,nosuid,nodev]
mount bind /etc/localtime on /etc/localtime [ro,nosuid,nodev]
mount bind /etc/hosts on /etc/hosts [ro,nosuid,nodev]
mount generated passwd on /etc/passwd [ro,nosuid,nodev]
mount generated group on /etc/group [ro,nosuid,nodev]
mount rbind /data on /mnt/data [ro,nosuid,nodev]
mount rbind /data/in.txt on /home/alice/in.txt [rw,nosuid,nodev,in-host-dir]
synth dir /home/alice
synth file /etc/localtime
synth file /etc/hosts
synth dir /mnt/data
cwd: /work (required)
";
        assert_eq!(plan.render(), want);
    }

    #[test]
    fn image_symlinks_never_lead_outside_the_root() {
        let tree = FakeTree::new(&[
            "/etc/",
            "/home -> /var/home",
            "/var/",
            "/evil -> ../../../../host/etc",
            "/loop -> /loop",
            "/abs -> /proc/1/root/etc",
            "/rel/",
            "/rel/up -> ../..",
            "/etc/hosts -> /tmp/x",
            "/file",
        ]);
        let r = |p: &str| resolve_in_image(&tree, Path::new(p));
        assert_eq!(r("/home/alice").unwrap(), Path::new("/var/home/alice"));
        assert_eq!(r("/evil/passwd").unwrap(), Path::new("/host/etc/passwd"));
        assert_eq!(r("/rel/up/etc").unwrap(), Path::new("/etc"));
        assert_eq!(r("/abs").unwrap(), Path::new("/proc/1/root/etc"));
        assert_eq!(r("/etc/hosts").unwrap(), Path::new("/tmp/x"));
        assert!(matches!(r("/loop"), Err(PlanError::SymlinkLoop(_))));
        assert!(matches!(r("/file/x"), Err(PlanError::NotADirectory { .. })));

        // A bind through a link into /proc lands inside the container's own /proc
        // mount, never on the host's.
        let (facts, fs) = host();
        let opts = RunOptions {
            binds: vec![crate::bind::parse_one("/data:/abs", Path::new("/")).unwrap()],
            ..RunOptions::default()
        };
        let plan = plan(&opts, &facts, &fs, &tree).unwrap();
        let m = plan
            .mounts
            .iter()
            .find(|m| m.target == Path::new("/abs"))
            .unwrap();
        assert_eq!(m.resolved, Path::new("/proc/1/root/etc"));
        assert!(
            m.in_host_dir,
            "resolved under the container's /proc mount, where apply refuses magic links"
        );
    }

    #[test]
    fn bad_inputs() {
        let (facts, fs) = host();
        let missing = RunOptions {
            binds: vec![crate::bind::parse_one("/nope:/x", Path::new("/")).unwrap()],
            ..RunOptions::default()
        };
        let e = plan(&missing, &facts, &fs, &debian_like()).unwrap_err();
        assert_eq!(e.to_string(), "--bind: /nope: no such file or directory");
        let wd = RunOptions {
            workdir: Some("/nowhere".into()),
            ..RunOptions::default()
        };
        assert!(matches!(
            plan(&wd, &facts, &fs, &debian_like()),
            Err(PlanError::Workdir(_))
        ));
        let pwd = RunOptions {
            pwd: Some("rel".into()),
            ..RunOptions::default()
        };
        assert!(matches!(
            plan(&pwd, &facts, &fs, &debian_like()),
            Err(PlanError::Pwd(_))
        ));
    }

    #[test]
    fn contain_with_workdir_takes_tmp_and_home_from_it() {
        let (facts, fs) = host();
        let opts = RunOptions {
            contain: true,
            workdir: Some("/work".into()),
            ..RunOptions::default()
        };
        let r = plan(&opts, &facts, &fs, &debian_like()).unwrap().render();
        assert!(
            r.contains("mount bind /work/tmp on /tmp [rw,nosuid,nodev]\n"),
            "{r}"
        );
        assert!(
            r.contains("mount bind /work/var_tmp on /var/tmp [rw,nosuid,nodev]\n"),
            "{r}"
        );
        assert!(
            r.contains("mount bind /work/home on /home/alice [rw,nosuid,nodev]\n"),
            "{r}"
        );
        assert!(!r.contains("/scratch/run on"), "no cwd with --contain: {r}");
        assert!(!r.contains("resolv.conf"), "{r}");
    }

    #[test]
    fn no_home_and_system_cwd() {
        let (mut facts, fs) = host();
        facts.cwd = "/usr/bin".into();
        let opts = RunOptions {
            no_home: true,
            ..RunOptions::default()
        };
        let plan = plan(&opts, &facts, &fs, &debian_like()).unwrap();
        let r = plan.render();
        assert!(!r.contains("/home/alice on"), "{r}");
        assert!(!r.contains("bind /usr/bin"), "{r}");
        assert!(r.contains("cwd: /usr/bin\n"), "{r}");
    }

    #[test]
    fn cwd_under_a_bind_target_is_left_to_that_bind() {
        let (mut facts, fs) = host();
        facts.cwd = "/work/main".into();
        let opts = RunOptions {
            binds: vec![crate::bind::parse_one("/data:/work", Path::new("/")).unwrap()],
            ..RunOptions::default()
        };
        let plan = plan(&opts, &facts, &fs, &debian_like()).unwrap();
        let r = plan.render();
        assert!(
            r.contains("mount rbind /data on /work [rw,nosuid,nodev]\n"),
            "{r}"
        );
        assert!(!r.contains("on /work/main"), "{r}");
        assert!(r.contains("cwd: /work/main\n"), "{r}");
    }
}
