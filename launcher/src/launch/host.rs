//! Facts about the host and the user, gathered before the plan: who the
//! user is, the environment the container's is made from, the host
//! integration's binds and, for a batch step, the host's Slurm client.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User, getgroups};

use super::{Action, Launch, LaunchError, setup};
use crate::fuse::TargetKind;
use crate::host_binds::{HostBinds, Request, host_binds};
use crate::plan::{HostFacts, HostFs};
use crate::slurm_client::ClientPlan;

/// The host as the plan sees it.
pub(crate) struct RealHost;

impl HostFs for RealHost {
    fn kind(&self, path: &Path) -> Option<TargetKind> {
        let m = fs::metadata(path).ok()?;
        Some(if m.is_dir() {
            TargetKind::Dir
        } else {
            TargetKind::File
        })
    }

    fn why_missing(&self, path: &Path) -> String {
        match fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                "permission denied (you cannot reach it on the host)".into()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => "no such file or directory".into(),
            Err(e) => e.to_string(),
            Ok(_) => "no such file or directory".into(),
        }
    }
}

/// Facts about the calling user.
pub fn host_facts() -> Result<HostFacts, LaunchError> {
    let groups: Vec<u32> = getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    host_facts_of(Uid::current().as_raw(), Gid::current().as_raw(), &groups)
}

/// Facts about user `uid` (primary group `gid`, supplementary `groups`),
/// working in the caller's current directory.
pub(crate) fn host_facts_of(uid: u32, gid: u32, groups: &[u32]) -> Result<HostFacts, LaunchError> {
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    let user = User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or(LaunchError::NoUser(uid.as_raw()))?;
    let mut group_lines = Vec::new();
    let mut gids = vec![gid];
    gids.extend(
        groups
            .iter()
            .map(|g| Gid::from_raw(*g))
            .filter(|g| *g != gid),
    );
    for g in gids {
        if let Ok(Some(gr)) = Group::from_gid(g) {
            group_lines.push(format!("{}:x:{}:{}", gr.name, gr.gid, gr.mem.join(",")));
        }
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    Ok(HostFacts {
        uid: uid.as_raw(),
        gid: gid.as_raw(),
        passwd_line: format!(
            "{}:x:{}:{}:{}:{}:{}",
            user.name,
            uid,
            gid,
            user.gecos.to_string_lossy(),
            user.dir.display(),
            user.shell.display()
        ),
        user: user.name,
        home: user.dir,
        cwd,
        group_lines,
    })
}

/// What the plan is made from on the host's side.
pub(crate) struct HostSide {
    pub(crate) facts: HostFacts,
    /// The environment the container's is computed from: the launcher's,
    /// or the job's for a Slurm step.
    pub(crate) env: Vec<(String, String)>,
    pub(crate) binds: HostBinds,
    /// The Slurm client and Slurm's service accounts, for a batch step.
    pub(crate) client: Option<(ClientPlan, Vec<String>)>,
}

/// `--contain --workdir DIR`: DIR's tmp, var_tmp and home subdirectories.
fn make_workdir(l: &Launch) -> Result<(), LaunchError> {
    if l.run.contain
        && let Some(w) = &l.run.workdir
    {
        for sub in ["tmp", "var_tmp", "home"] {
            let d = w.join(sub);
            fs::create_dir_all(&d)
                .map_err(setup(format!("--workdir: creating {}", d.display())))?;
        }
    }
    Ok(())
}

/// A Slurm step's slurm.conf, its path and text: slurmstepd's, handed
/// over in [`Hold::slurm_conf`](crate::hold::Hold::slurm_conf), never the
/// holder's own environment; `None` outside Slurm.
fn step_slurm_conf(action: &Action) -> Option<(&Path, String)> {
    match action {
        Action::Hold(h) => Some((
            h.slurm_conf.as_path(),
            fs::read_to_string(&h.slurm_conf).unwrap_or_default(),
        )),
        _ => None,
    }
}

/// Gathers the host's side of the launch (below `/`) for the user `facts`
/// describe.
pub(crate) fn gather(l: &Launch, facts: HostFacts) -> Result<HostSide, LaunchError> {
    make_workdir(l)?;
    let env: Vec<(String, String)> = match &l.action {
        Action::Hold(h) => h.job_env.clone(),
        _ if l.host_env.is_some() => l.host_env.clone().unwrap_or_default(),
        _ => std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect(),
    };
    let root = Path::new("/");
    let slurm_conf = step_slurm_conf(&l.action);
    let mut types: Vec<&str> = Vec::new();
    if l.netfs {
        types.extend(interconnect::netfs::DEFAULT_TYPES);
        types.extend(l.netfs_types.iter().map(String::as_str));
    }
    let binds = host_binds(
        root,
        &Request {
            gpu: l.gpu,
            fabric: l.fabric,
            netfs_types: &types,
            env: &env,
            slurm_conf: slurm_conf.as_ref().map(|(_, text)| text.as_str()),
            node_name: match &l.action {
                Action::Hold(h) => h.node_name.as_deref(),
                _ => None,
            },
        },
    )?;
    for w in &binds.warnings {
        tracing::warn!("{w}");
    }
    let client = match (&l.action, &slurm_conf) {
        (Action::Hold(h), Some((path, text))) if h.slurm_client => {
            crate::slurm_client::gather(root, path, text)
        }
        _ => None,
    };
    Ok(HostSide {
        facts,
        env,
        binds,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Hold;

    #[test]
    fn a_steps_slurm_conf_is_the_one_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("slurm.conf");
        fs::write(&conf, "SlurmdSpoolDir=/var/spool/elsewhere\n").unwrap();
        let hold = Action::Hold(Hold {
            slurm_conf: conf.clone(),
            ..Hold::default()
        });
        let (path, text) = step_slurm_conf(&hold).unwrap();
        assert_eq!(path, conf);
        assert_eq!(
            slurm_conf::slurm::SlurmConf::parse(&text).spool_dir(),
            Path::new("/var/spool/elsewhere")
        );
        assert!(step_slurm_conf(&Action::Exec(vec![])).is_none());
    }
}
