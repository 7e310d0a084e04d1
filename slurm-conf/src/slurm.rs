//! Slurm's own configuration files, read the way Slurm reads them: every
//! place sifrun looks at slurm.conf or plugstack.conf goes through here.
//!
//! * [`SlurmConf`]: `slurm.conf` (`key=value` lines, `#` comments, keys
//!   case-insensitive). The holder takes its path from slurmstepd (the
//!   request's `slurm_conf`), never from its own environment.
//! * [`plugstack_plugins`]: the plugins plugstack.conf and its includes load.

use std::path::{Path, PathBuf};

/// Where Slurm looks for slurm.conf when `SLURM_CONF` is not set.
pub const DEFAULT_SLURM_CONF: &str = "/etc/slurm/slurm.conf";

/// slurmd's spool directory when slurm.conf does not name one.
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/slurmd";

/// The text of a slurm.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlurmConf {
    text: String,
}

impl SlurmConf {
    /// Parses `text` (nothing can fail: unknown lines are Slurm's business).
    pub fn parse(text: &str) -> SlurmConf {
        SlurmConf {
            text: text.to_owned(),
        }
    }

    /// Reads `path`; a missing or unreadable file reads as empty (every
    /// value then takes Slurm's default), as the holder always did.
    pub fn load(path: &Path) -> SlurmConf {
        SlurmConf::parse(&std::fs::read_to_string(path).unwrap_or_default())
    }

    /// The values of `key` (case-insensitive), in file order, each without
    /// its comment and surrounding blanks.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.split_once('='))
            .filter(move |(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim())
    }

    /// `SlurmdSpoolDir`, where slurmd keeps batch scripts and the PMIx
    /// server directories; a relative value or one with `%` patterns
    /// (per-node names) falls back to the default.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir_on(None, None)
    }

    /// `SlurmdSpoolDir` as slurmd `node` on host `host` has it: `%n` (the
    /// node's name) and `%h` (the host's) expanded as slurmd expands them
    /// (several slurmd on one machine, each with its own spool). A relative
    /// value, another pattern, a pattern whose name is not given, or a name
    /// that is not one plain path component falls back to the default.
    pub fn spool_dir_on(&self, node: Option<&str>, host: Option<&str>) -> PathBuf {
        let plain = |n: &str| !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '%']);
        let expand = |v: &str| -> Option<String> {
            let mut out = String::new();
            let mut rest = v;
            while let Some(i) = rest.find('%') {
                out.push_str(&rest[..i]);
                let name = match rest[i + 1..].chars().next() {
                    Some('n') => node,
                    Some('h') => host,
                    _ => None,
                };
                out.push_str(name.filter(|n| plain(n))?);
                rest = &rest[i + 2..];
            }
            out.push_str(rest);
            Some(out)
        };
        self.values("SlurmdSpoolDir")
            .next()
            .and_then(expand)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR))
    }

    /// The service accounts the configuration names (`SlurmUser`,
    /// `SlurmdUser`; `slurm` always): Slurm's client refuses a
    /// configuration whose SlurmUser it cannot resolve.
    pub fn service_users(&self) -> Vec<String> {
        let mut names = vec!["slurm".to_owned()];
        for key in ["SlurmUser", "SlurmdUser"] {
            for v in self.values(key) {
                let v = v.split_whitespace().next().unwrap_or("").to_owned();
                if !v.is_empty() && !names.contains(&v) {
                    names.push(v);
                }
            }
        }
        names
    }

    /// The lines of `host_passwd` for [`SlurmConf::service_users`].
    pub fn service_accounts(&self, host_passwd: &str) -> Vec<String> {
        let names = self.service_users();
        host_passwd
            .lines()
            .filter(|l| {
                names
                    .iter()
                    .any(|n| l.split(':').next() == Some(n.as_str()))
            })
            .map(str::to_owned)
            .collect()
    }

    /// The plugstack.conf Slurm reads with this slurm.conf at `conf_path`:
    /// `PlugStackConfig`, or plugstack.conf beside slurm.conf.
    pub fn plugstack_path(&self, conf_path: &Path) -> PathBuf {
        match self.values("PlugStackConfig").next() {
            Some(v) if Path::new(v).is_absolute() => PathBuf::from(v),
            _ => conf_path
                .parent()
                .unwrap_or(Path::new("/etc/slurm"))
                .join("plugstack.conf"),
        }
    }
}

/// Reads a file's text, for [`plugstack_plugins`].
pub type ReadFn<'a> = &'a dyn Fn(&Path) -> Option<String>;
/// Lists a directory's entries, for [`plugstack_plugins`].
pub type ListFn<'a> = &'a dyn Fn(&Path) -> Vec<PathBuf>;

/// The SPANK plugins (absolute paths) that `plugstack` and the files it
/// includes load, and the absolute paths their `key=PATH` arguments name
/// (an admin config file, say): srun loads the plugins too, so inside a
/// container all of them must exist at their paths. An include's pattern
/// may have one `*` in its last component. Includes nest at most 8 deep.
pub fn plugstack_plugins(plugstack: &Path, read: ReadFn<'_>, list: ListFn<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(plugstack, 0, read, list, &mut out);
    out
}

fn walk(file: &Path, depth: usize, read: ReadFn<'_>, list: ListFn<'_>, out: &mut Vec<PathBuf>) {
    let Some(text) = read(file).filter(|_| depth < 8) else {
        return;
    };
    for line in text.lines() {
        let mut words = line.split('#').next().unwrap_or("").split_whitespace();
        match (words.next(), words.next()) {
            (Some("include"), Some(pattern)) => {
                for f in included(Path::new(pattern), list) {
                    walk(&f, depth + 1, read, list, out);
                }
            }
            (Some("required" | "optional"), Some(plugin)) => {
                let args = words.filter_map(|w| w.split_once('=').map(|(_, v)| v));
                for p in std::iter::once(plugin).chain(args) {
                    let p = PathBuf::from(p);
                    if p.is_absolute() && !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The files an `include` pattern names, sorted.
fn included(pattern: &Path, list: ListFn<'_>) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return Vec::new();
    };
    let name = name.to_string_lossy();
    let (head, tail) = name.split_once('*').unwrap_or((&name, ""));
    let mut files: Vec<PathBuf> = list(dir)
        .into_iter()
        .filter(|f| {
            let n = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.contains('*') {
                n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
            } else {
                n == name
            }
        })
        .collect();
    files.sort();
    files
}

/// [`plugstack_plugins`] over the real filesystem.
pub fn host_plugstack_plugins(plugstack: &Path) -> Vec<PathBuf> {
    plugstack_plugins(plugstack, &|p| std::fs::read_to_string(p).ok(), &|d| {
        std::fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_spool_directory() {
        let c = SlurmConf::parse("SlurmdSpoolDir=/var/lib/slurm/slurmd # here\nOther=1\n");
        assert_eq!(c.spool_dir(), Path::new("/var/lib/slurm/slurmd"));
        assert_eq!(
            SlurmConf::parse("").spool_dir(),
            Path::new(DEFAULT_SPOOL_DIR)
        );
        let lower = SlurmConf::parse("slurmdspooldir = /s\n");
        assert_eq!(
            lower.spool_dir(),
            Path::new("/s"),
            "keys are case-insensitive"
        );
        for per_node in ["SlurmdSpoolDir=/var/spool/slurmd.%n", "SlurmdSpoolDir=rel"] {
            assert_eq!(
                SlurmConf::parse(per_node).spool_dir(),
                Path::new(DEFAULT_SPOOL_DIR)
            );
        }
        let missing = SlurmConf::load(Path::new("/nonexistent/slurm.conf"));
        assert_eq!(missing.spool_dir(), Path::new(DEFAULT_SPOOL_DIR));
    }

    #[test]
    fn a_per_node_spool_directory_is_expanded_for_the_node() {
        let c = SlurmConf::parse("SlurmdSpoolDir=/var/spool/slurmd-%n/on-%h\n");
        assert_eq!(
            c.spool_dir_on(Some("n2"), Some("box")),
            Path::new("/var/spool/slurmd-n2/on-box")
        );
        let default = Path::new(DEFAULT_SPOOL_DIR);
        assert_eq!(c.spool_dir_on(Some("n2"), None), default, "no host name");
        assert_eq!(c.spool_dir_on(None, Some("box")), default, "no node name");
        for bad in ["..", "a/b", "", "%h", "."] {
            assert_eq!(c.spool_dir_on(Some(bad), Some("box")), default, "{bad:?}");
        }
        let other = SlurmConf::parse("SlurmdSpoolDir=/s/%x\n");
        assert_eq!(other.spool_dir_on(Some("n"), Some("h")), default);
        let trailing = SlurmConf::parse("SlurmdSpoolDir=/s/%\n");
        assert_eq!(trailing.spool_dir_on(Some("n"), Some("h")), default);
        let plain = SlurmConf::parse("SlurmdSpoolDir=/s/plain\n");
        assert_eq!(plain.spool_dir_on(None, None), Path::new("/s/plain"));
    }

    #[test]
    fn service_accounts_from_slurm_conf() {
        let conf = SlurmConf::parse("# c\nSlurmUser=slurmsvc # the controller\nSlurmdUser=root\n");
        let passwd = "root:x:0:0::/root:/bin/bash\nslurmsvc:x:64030:64030::/nonexistent:/usr/sbin/nologin\nalice:x:1001:1001::/home/alice:/bin/sh\n";
        assert_eq!(
            conf.service_accounts(passwd),
            [
                "root:x:0:0::/root:/bin/bash",
                "slurmsvc:x:64030:64030::/nonexistent:/usr/sbin/nologin"
            ]
        );
        assert!(
            SlurmConf::parse("")
                .service_accounts("alice:x:1:1::/:/bin/sh")
                .is_empty()
        );
    }

    #[test]
    fn plugstack_beside_slurm_conf_unless_named() {
        let at = Path::new("/var/spool/slurmd/conf-cache/slurm.conf");
        assert_eq!(
            SlurmConf::parse("").plugstack_path(at),
            Path::new("/var/spool/slurmd/conf-cache/plugstack.conf")
        );
        assert_eq!(
            SlurmConf::parse("PlugStackConfig=/etc/x/p.conf").plugstack_path(at),
            Path::new("/etc/x/p.conf")
        );
    }

    #[test]
    fn plugins_from_plugstack_and_its_includes() {
        let files: BTreeMap<&str, &str> = [
            ("/etc/slurm/plugstack.conf", "# c\ninclude /etc/slurm/plugstack.conf.d/*.conf\noptional relative.so\n"),
            ("/etc/slurm/plugstack.conf.d/a.conf", "required /usr/local/lib/libspank_sifrun.so config=/etc/sifrun.toml x=rel\n"),
            ("/etc/slurm/plugstack.conf.d/b.conf", "optional /opt/pyxis/spank_pyxis.so # c\ninclude /etc/slurm/plugstack.conf.d/a.conf\n"),
            ("/etc/slurm/plugstack.conf.d/b.conf.bak", "required /nope.so\n"),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p.to_str().unwrap()).map(|s| s.to_string());
        let list = |d: &Path| {
            files
                .keys()
                .map(PathBuf::from)
                .filter(|f| f.parent() == Some(d))
                .collect()
        };
        assert_eq!(
            plugstack_plugins(Path::new("/etc/slurm/plugstack.conf"), &read, &list),
            [
                PathBuf::from("/usr/local/lib/libspank_sifrun.so"),
                PathBuf::from("/etc/sifrun.toml"),
                PathBuf::from("/opt/pyxis/spank_pyxis.so")
            ]
        );
        // A file that includes itself stops at the depth limit.
        let looping = |_: &Path| Some("include /l.conf\nrequired /p.so\n".to_owned());
        let one = |_: &Path| vec![PathBuf::from("/l.conf")];
        assert_eq!(
            plugstack_plugins(Path::new("/l.conf"), &looping, &one),
            [PathBuf::from("/p.so")]
        );
    }
}
