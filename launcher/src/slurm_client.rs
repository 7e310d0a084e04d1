//! The host's Slurm client inside a batch step's container, so that a batch
//! script running in the image can start steps (`srun …`), which then run in
//! the image too.
//!
//! The host's client programs need the host's C library, whatever the image
//! has, so they are not run as they are: `/usr` (and any other top-level
//! directory that holds the dynamic loader, the libraries or the programs)
//! is bound read-only below [`HOST_ROOT`], and a small script per program in
//! [`BIN_DIR`] (put first on the batch script's PATH) starts it with the
//! host's dynamic loader and library path. Slurm's configuration directory,
//! its plugin directory (plugins are opened by absolute path) and munge's
//! socket directory are bound at their own paths.
//!
//! The client must be the one of the Slurm that runs the step: a SPANK
//! plugin and the daemons' protocol only fit their own series. The plugin
//! puts the client directory of its slurmstepd (`<prefix>/bin`) first on the
//! launcher's PATH, so the programs are looked up there first, and a client
//! outside `/usr` (a Slurm built into `/opt/slurm-25.11`, `/usr/local`) also
//! gets its own library and plugin directory (`<prefix>/lib/slurm`,
//! reached through absolute run paths) at its own path.
//!
//! [`plan`] is pure: it asks a lookup for the canonical form of host paths.

use std::path::{Component, Path, PathBuf};

use crate::bind::BindSpec;
use slurm_conf::slurm::SlurmConf;

/// Where host directories appear inside the container.
pub const HOST_ROOT: &str = "/.sifrun/host";
/// Where the client scripts appear inside the container.
pub const BIN_DIR: &str = "/.sifrun/slurm/bin";

/// The client programs made available.
pub const COMMANDS: &[&str] = &[
    "srun", "sbatch", "salloc", "scancel", "scontrol", "squeue", "sinfo", "sacct", "sstat",
    "sattach",
];

const LOADERS: &[&str] = &["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"];
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];
const PLUGIN_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/slurm-wlm",
    "/usr/lib/aarch64-linux-gnu/slurm-wlm",
    "/usr/lib64/slurm",
    "/usr/lib/slurm",
    "/usr/local/lib/slurm",
];
const SAME_PATH_DIRS: &[&str] = &["/etc/slurm", "/run/munge"];
const COMMAND_DIRS: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// What the batch step's container gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientPlan {
    /// Read-only binds (host top-level directories, configuration, plugins, munge).
    pub binds: Vec<BindSpec>,
    /// (program name, script) for each program found.
    pub scripts: Vec<(String, String)>,
}

/// The top-level directory of an absolute path (`/usr/bin/srun` -> `/usr`,
/// `/opt/slurm/bin/srun` -> `/opt/slurm`: two components below /opt and /srv).
fn top(path: &Path) -> Option<PathBuf> {
    let mut parts = path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n),
        _ => None,
    });
    let first = parts.next()?;
    let mut t = PathBuf::from("/").join(first);
    if (first == "opt" || first == "srv")
        && let Some(second) = parts.next()
    {
        t.push(second);
    }
    Some(t)
}

fn inside(host: &Path) -> PathBuf {
    Path::new(HOST_ROOT).join(host.strip_prefix("/").unwrap_or(host))
}

/// The absolute directories of a PATH value, in order.
pub(crate) fn path_dirs(path: Option<&std::ffi::OsStr>) -> Vec<PathBuf> {
    path.map(|p| {
        std::env::split_paths(p)
            .filter(|d| d.is_absolute())
            .collect()
    })
    .unwrap_or_default()
}

/// Plans the client for a host where `canonical` resolves an existing path
/// (symlinks followed) and answers `None` for a missing one. The programs
/// are looked up in `search` first (the launcher's PATH), then in the usual
/// directories. `None` when the host has no dynamic loader or no `srun`.
pub fn plan(
    canonical: &dyn Fn(&Path) -> Option<PathBuf>,
    search: &[PathBuf],
) -> Option<ClientPlan> {
    let loader = LOADERS.iter().find_map(|l| canonical(Path::new(l)))?;
    let dirs: Vec<&Path> = search
        .iter()
        .map(PathBuf::as_path)
        .chain(COMMAND_DIRS.iter().map(Path::new))
        .collect();
    let mut programs = Vec::new();
    for cmd in COMMANDS {
        if let Some(p) = dirs.iter().find_map(|d| canonical(&d.join(cmd))) {
            programs.push((cmd.to_string(), p));
        }
    }
    let srun = programs.iter().find(|(c, _)| c == "srun")?.1.clone();
    let mut libs: Vec<PathBuf> = Vec::new();
    for d in LIBRARY_DIRS {
        if let Some(c) = canonical(Path::new(d))
            && !libs.contains(&c)
        {
            libs.push(c);
        }
    }
    let mut tops: Vec<PathBuf> = Vec::new();
    let needed = std::iter::once(&loader)
        .chain(programs.iter().map(|(_, p)| p))
        .chain(libs.iter());
    for p in needed {
        if let Some(t) = top(p)
            && !tops.contains(&t)
        {
            tops.push(t);
        }
    }
    let mut binds: Vec<BindSpec> = tops
        .iter()
        .map(|t| BindSpec {
            source: t.clone(),
            target: inside(t),
            readonly: true,
        })
        .collect();
    let mut same: Vec<PathBuf> = PLUGIN_DIRS
        .iter()
        .chain(SAME_PATH_DIRS)
        .filter_map(|d| canonical(Path::new(d)).map(|_| PathBuf::from(d)))
        .collect();
    same.extend(own_plugin_dir(&srun, canonical).filter(|d| !same.contains(d)));
    for d in same {
        binds.push(BindSpec {
            source: d.clone(),
            target: d,
            readonly: true,
        });
    }
    let library_path: Vec<String> = libs
        .iter()
        .map(|l| inside(l).display().to_string())
        .collect();
    let scripts = programs
        .into_iter()
        .map(|(cmd, p)| {
            let script = format!(
                "#!/bin/sh\n# The host's {cmd}, with the host's loader and libraries (sifrun).\nexec {} --library-path {} {} \"$@\"\n",
                inside(&loader).display(),
                library_path.join(":"),
                inside(&p).display()
            );
            (cmd, script)
        })
        .collect();
    Some(ClientPlan { binds, scripts })
}

/// `<prefix>/lib/slurm` (or `lib64/slurm`) of a client outside `/usr`
/// (`<prefix>/bin/srun`, canonical): its libslurm and plugins, which it opens
/// by absolute path.
fn own_plugin_dir(srun: &Path, canonical: &dyn Fn(&Path) -> Option<PathBuf>) -> Option<PathBuf> {
    let prefix = srun.parent()?.parent()?;
    if prefix == Path::new("/usr") || prefix == Path::new("/") {
        return None;
    }
    ["lib/slurm", "lib64/slurm"]
        .iter()
        .find_map(|d| canonical(&prefix.join(d)))
}

/// The host's Slurm client below `root` (`/` in production) for a step
/// whose slurm.conf is `slurm_conf`, with text `conf`: the client's plan,
/// its binds extended by the SPANK plugins plugstack.conf loads (srun
/// loads them too), and the host passwd lines of Slurm's service accounts.
/// The programs are looked up on this process's PATH first (see the module
/// documentation).
/// `None` when the host has no client.
pub fn gather(root: &Path, slurm_conf: &Path, conf: &str) -> Option<(ClientPlan, Vec<String>)> {
    let at = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let canonical = |p: &Path| {
        let c = std::fs::canonicalize(at(p)).ok()?;
        Some(Path::new("/").join(c.strip_prefix(root).ok()?))
    };
    let search = path_dirs(std::env::var_os("PATH").as_deref());
    let mut client = plan(&canonical, &search)?;
    let conf = SlurmConf::parse(conf);
    let plugins = slurm_conf::slurm::plugstack_plugins(
        &conf.plugstack_path(slurm_conf),
        &|p| std::fs::read_to_string(at(p)).ok(),
        &|d| {
            std::fs::read_dir(at(d))
                .map(|r| r.flatten().map(|e| d.join(e.file_name())).collect())
                .unwrap_or_default()
        },
    );
    for p in plugins.into_iter().filter(|p| at(p).is_file()) {
        client.binds.push(BindSpec {
            source: p.clone(),
            target: p,
            readonly: true,
        });
    }
    // A slurm.conf outside the directories bound above: a configless node's
    // copy in slurmd's spool (`<SlurmdSpoolDir>/conf-cache`), which the
    // batch script's SLURM_CONF names, at its own path.
    if let Some(dir) = slurm_conf.parent().filter(|d| is_conf_cache(d))
        && canonical(dir).is_some()
        && !client
            .binds
            .iter()
            .any(|b| b.source == b.target && dir.starts_with(&b.target))
    {
        client.binds.push(BindSpec {
            source: dir.to_path_buf(),
            target: dir.to_path_buf(),
            readonly: true,
        });
    }
    let passwd = std::fs::read_to_string(at(Path::new("/etc/passwd"))).unwrap_or_default();
    Some((client, conf.service_accounts(&passwd)))
}

/// Whether `dir` is where a configless slurmd keeps the configuration it
/// fetched: `<SlurmdSpoolDir>/conf-cache`, or `/run/slurm/conf` (newer
/// series). Only such a directory is bound for a `SLURM_CONF` outside the
/// ones bound already: any other directory of a slurm.conf (`/etc` for a
/// Slurm built with `--sysconfdir=/etc`, `/usr/local/etc`, `/`) would cover
/// the image's own.
fn is_conf_cache(dir: &Path) -> bool {
    dir.is_absolute()
        && (dir.file_name() == Some(std::ffi::OsStr::new("conf-cache"))
            || dir == Path::new("/run/slurm/conf"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A merged-/usr Debian host: /lib, /bin and /lib64 lead into /usr.
    fn debian(extra: &[(&str, &str)]) -> impl Fn(&Path) -> Option<PathBuf> {
        let mut m: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
        let mut add = |k: &str, v: &str| {
            m.insert(k.into(), v.into());
        };
        add(
            "/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        );
        add("/usr/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu");
        add("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu");
        add("/usr/lib", "/usr/lib");
        add("/lib", "/usr/lib");
        add("/usr/lib64", "/usr/lib64");
        add("/lib64", "/usr/lib64");
        add(
            "/usr/lib/x86_64-linux-gnu/slurm-wlm",
            "/usr/lib/x86_64-linux-gnu/slurm-wlm",
        );
        add("/etc/slurm", "/etc/slurm");
        add("/run/munge", "/run/munge");
        for c in ["srun", "sbatch", "scontrol"] {
            add(&format!("/usr/bin/{c}"), &format!("/usr/bin/{c}"));
            add(&format!("/bin/{c}"), &format!("/usr/bin/{c}"));
        }
        for (k, v) in extra {
            add(k, v);
        }
        move |p: &Path| m.get(p).cloned()
    }

    #[test]
    fn debian_host_golden() {
        let plan = plan(&debian(&[]), &[]).unwrap();
        let binds: Vec<String> = plan
            .binds
            .iter()
            .map(|b| format!("{} -> {}", b.source.display(), b.target.display()))
            .collect();
        assert_eq!(
            binds,
            [
                "/usr -> /.sifrun/host/usr",
                "/usr/lib/x86_64-linux-gnu/slurm-wlm -> /usr/lib/x86_64-linux-gnu/slurm-wlm",
                "/etc/slurm -> /etc/slurm",
                "/run/munge -> /run/munge",
            ]
        );
        assert!(plan.binds.iter().all(|b| b.readonly));
        let names: Vec<&str> = plan.scripts.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["srun", "sbatch", "scontrol"]);
        assert_eq!(
            plan.scripts[0].1,
            "#!/bin/sh\n# The host's srun, with the host's loader and libraries (sifrun).\n\
exec /.sifrun/host/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
--library-path /.sifrun/host/usr/lib/x86_64-linux-gnu:/.sifrun/host/usr/lib64:/.sifrun/host/usr/lib \
/.sifrun/host/usr/bin/srun \"$@\"\n"
        );
    }

    #[test]
    fn slurm_under_opt_and_hosts_without_srun() {
        let host = debian(&[("/usr/local/bin/srun", "/opt/slurm/23.02/bin/srun")]);
        let plan = plan(&host, &[]).unwrap();
        assert!(
            plan.binds
                .iter()
                .any(|b| b.source == Path::new("/opt/slurm")
                    && b.target == Path::new("/.sifrun/host/opt/slurm")),
            "{plan:?}"
        );
        assert!(
            plan.scripts[0]
                .1
                .contains(" /.sifrun/host/opt/slurm/23.02/bin/srun ")
        );
        let bare =
            |p: &Path| (p == Path::new("/lib64/ld-linux-x86-64.so.2")).then(|| p.to_path_buf());
        assert_eq!(super::plan(&bare, &[]), None);
    }

    /// Slurm built into its own prefix beside Debian's 22.05 (issue 13): the
    /// client on the search path (the one of the Slurm running the step) is
    /// taken, not /usr/bin/srun, with its library and plugin directory at
    /// its own path.
    #[test]
    fn the_client_of_the_running_slurm_is_taken_from_the_search_path() {
        let cache = "/var/cache/sifrun-slurm/25.11";
        let srun = format!("{cache}/bin/srun");
        let sbatch = format!("{cache}/bin/sbatch");
        let libdir = format!("{cache}/lib/slurm");
        let extra = [
            ("/opt/slurm-25.11/bin/srun", srun.as_str()),
            ("/opt/slurm-25.11/bin/sbatch", sbatch.as_str()),
            (libdir.as_str(), libdir.as_str()),
        ];
        let host = debian(&extra);
        let search = path_dirs(Some(std::ffi::OsStr::new(
            "/opt/slurm-25.11/bin:relative:/usr/bin",
        )));
        assert_eq!(
            search,
            [PathBuf::from("/opt/slurm-25.11/bin"), "/usr/bin".into()]
        );
        let plan = plan(&host, &search).unwrap();
        let srun_script = &plan.scripts.iter().find(|(c, _)| c == "srun").unwrap().1;
        assert!(
            srun_script.contains(&format!(" /.sifrun/host{srun} ")),
            "{srun_script}"
        );
        assert!(
            plan.scripts
                .iter()
                .any(|(c, s)| c == "scontrol" && s.contains(" /.sifrun/host/usr/bin/scontrol ")),
            "a program the prefix lacks still comes from the usual places: {plan:?}"
        );
        assert!(
            plan.binds
                .iter()
                .any(|b| b.source == Path::new(&libdir) && b.target == Path::new(&libdir)),
            "{plan:?}"
        );
        // Without the search path, Debian's client (the old behaviour).
        let plain = super::plan(&host, &[]).unwrap();
        assert!(plain.scripts[0].1.contains(" /.sifrun/host/usr/bin/srun "));
        assert!(!plain.binds.iter().any(|b| b.source == Path::new(&libdir)));
    }

    /// Writes `text` at `p` below the fake host root `r`.
    fn put_file(r: &Path, p: &str, text: &str) {
        let p = r.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// slurm.conf outside /etc/slurm: its service accounts and the
    /// plugstack.conf next to it are the ones used.
    #[test]
    fn gather_reads_the_given_slurm_conf_and_its_plugstack() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let put = |p: &str, text: &str| put_file(r, p, text);
        put("/lib64/ld-linux-x86-64.so.2", "");
        put("/usr/bin/srun", "");
        put(
            "/etc/passwd",
            "svc:x:900:900::/:/bin/false\nslurm:x:64030:64030::/:/bin/false\n",
        );
        put("/run/slurm/conf/slurm.conf", "SlurmUser=svc\n");
        put(
            "/run/slurm/conf/plugstack.conf",
            "required /opt/p/spank.so\n",
        );
        put("/etc/slurm/plugstack.conf", "required /opt/wrong.so\n");
        put("/opt/p/spank.so", "");
        put("/opt/wrong.so", "");
        let conf_path = Path::new("/run/slurm/conf/slurm.conf");
        let (client, accounts) = gather(r, conf_path, "SlurmUser=svc\n").unwrap();
        assert!(
            client
                .binds
                .iter()
                .any(|b| b.source == Path::new("/opt/p/spank.so")),
            "{client:?}"
        );
        assert!(
            !client
                .binds
                .iter()
                .any(|b| b.source == Path::new("/opt/wrong.so")),
            "{client:?}"
        );
        assert_eq!(
            accounts,
            [
                "svc:x:900:900::/:/bin/false",
                "slurm:x:64030:64030::/:/bin/false"
            ]
        );
        assert_eq!(
            SlurmConf::parse("PlugStackConfig=/x/p.conf # c\n").plugstack_path(conf_path),
            Path::new("/x/p.conf")
        );
        assert_eq!(client.scripts[0].0, "srun");
    }

    /// Configless: slurm.conf is slurmd's copy in its spool directory; the
    /// batch script's srun reads it there (SLURM_CONF), so that directory
    /// is bound at its own path, read-only; /etc/slurm's is covered already.
    #[test]
    fn gather_binds_a_configless_nodes_conf_cache() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let put = |p: &str, text: &str| put_file(r, p, text);
        put("/lib64/ld-linux-x86-64.so.2", "");
        put("/usr/bin/srun", "");
        put("/var/spool/slurmd/conf-cache/slurm.conf", "ClusterName=c\n");
        put("/etc/slurm/slurm.conf", "ClusterName=c\n");
        let cache = Path::new("/var/spool/slurmd/conf-cache");
        let (client, _) = gather(r, &cache.join("slurm.conf"), "ClusterName=c\n").unwrap();
        let to_cache: Vec<&BindSpec> = client.binds.iter().filter(|b| b.target == cache).collect();
        assert_eq!(to_cache.len(), 1, "{client:?}");
        assert!(to_cache[0].source == cache && to_cache[0].readonly);
        let (client, _) = gather(r, Path::new("/etc/slurm/slurm.conf"), "").unwrap();
        let etc: Vec<&BindSpec> = client
            .binds
            .iter()
            .filter(|b| b.target.starts_with("/etc/slurm"))
            .collect();
        assert_eq!(etc.len(), 1, "bound once: {client:?}");
        // A Slurm built with --sysconfdir=/etc (or /usr/local/etc): its
        // slurm.conf's directory is no configless cache and is not bound,
        // or the host's /etc would cover the image's.
        put("/etc/slurm.conf", "ClusterName=c\n");
        put("/usr/local/etc/slurm.conf", "ClusterName=c\n");
        for conf in ["/etc/slurm.conf", "/usr/local/etc/slurm.conf"] {
            let (client, _) = gather(r, Path::new(conf), "").unwrap();
            let dir = Path::new(conf).parent().unwrap();
            assert!(
                !client.binds.iter().any(|b| b.target == dir),
                "{conf}: {client:?}"
            );
        }
    }
}
