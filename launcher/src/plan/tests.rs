//! Golden tests of the plan, with fake image and host trees.

use super::*;
use crate::slurm_client::ClientPlan;
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
    let plan = plan(
        &PlanInput::new(&RunOptions::default(), &facts),
        &fs,
        &debian_like(),
    )
    .unwrap();
    let want = "\
uid_map: 1001 1001 1
gid_map: 1001 1001 1
mount proc on /proc [rw,nosuid,nodev]
mount rbind /sys on /sys [rw,nosuid,nodev]
mount rbind /dev on /dev [rw,nosuid]
mount rbind /tmp on /tmp [rw,nosuid,nodev]
mount rbind /var/tmp on /var/tmp [rw,nosuid,nodev]
mount rbind /home/alice on /home/alice [rw,nosuid,nodev]
mount rbind /scratch/run on /scratch/run [rw,nosuid,nodev]
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
file passwd
file group
cwd: /scratch/run
";
    assert_eq!(plan.render(), want);
    let passwd = String::from_utf8(plan.file("passwd").unwrap().to_vec()).unwrap();
    assert_eq!(
        passwd,
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001:Alice A:/home/alice:/bin/sh\n"
    );
    let group = String::from_utf8(plan.file("group").unwrap().to_vec()).unwrap();
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
    let plan = plan(&PlanInput::new(&opts, &facts), &fs, &debian_like()).unwrap();
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
file passwd
file group
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
    let plan = plan(&PlanInput::new(&opts, &facts), &fs, &tree).unwrap();
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
    let e = plan(&PlanInput::new(&missing, &facts), &fs, &debian_like()).unwrap_err();
    assert_eq!(e.to_string(), "--bind: /nope: no such file or directory");
    let wd = RunOptions {
        workdir: Some("/nowhere".into()),
        ..RunOptions::default()
    };
    assert!(matches!(
        plan(&PlanInput::new(&wd, &facts), &fs, &debian_like()),
        Err(PlanError::Workdir(_))
    ));
    let pwd = RunOptions {
        pwd: Some("rel".into()),
        ..RunOptions::default()
    };
    assert!(matches!(
        plan(&PlanInput::new(&pwd, &facts), &fs, &debian_like()),
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
    let r = plan(&PlanInput::new(&opts, &facts), &fs, &debian_like())
        .unwrap()
        .render();
    assert!(
        r.contains("mount rbind /work/tmp on /tmp [rw,nosuid,nodev]\n"),
        "{r}"
    );
    assert!(
        r.contains("mount rbind /work/var_tmp on /var/tmp [rw,nosuid,nodev]\n"),
        "{r}"
    );
    assert!(
        r.contains("mount rbind /work/home on /home/alice [rw,nosuid,nodev]\n"),
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
    let plan = plan(&PlanInput::new(&opts, &facts), &fs, &debian_like()).unwrap();
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
    let plan = plan(&PlanInput::new(&opts, &facts), &fs, &debian_like()).unwrap();
    let r = plan.render();
    assert!(
        r.contains("mount rbind /data on /work [rw,nosuid,nodev]\n"),
        "{r}"
    );
    assert!(!r.contains("on /work/main"), "{r}");
    assert!(r.contains("cwd: /work/main\n"), "{r}");
}

/// A batch step's plan: the Slurm client's binds first, then the
/// launcher's host binds, then the user's; the client's scripts and the
/// environment script mounted last; Slurm's service accounts in passwd.
#[test]
#[allow(clippy::too_many_lines)]
fn batch_step_with_slurm_client_and_env_script_golden() {
    let (facts, mut fs) = host();
    for d in ["/usr", "/etc/slurm", "/var/spool/slurmd", "/usr/lib/gpu"] {
        fs.0.insert(d.into(), TargetKind::Dir);
    }
    let spec = |s: &str| crate::bind::parse_one(s, Path::new("/")).unwrap();
    let client = ClientPlan {
        binds: vec![
            spec("/usr:/.sifrun/host/usr:ro"),
            spec("/etc/slurm:/etc/slurm:ro"),
        ],
        scripts: vec![
            ("srun".into(), "#!/bin/sh\nexec srun\n".into()),
            ("sbatch".into(), "#!/bin/sh\nexec sbatch\n".into()),
        ],
    };
    let accounts = vec![
        "root:x:0:0::/root:/bin/bash".to_owned(),
        "slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin".to_owned(),
    ];
    let host_binds = vec![
        spec("/var/spool/slurmd:/var/spool/slurmd"),
        spec("/usr/lib/gpu:/.sifrun/gpu/lib:ro"),
    ];
    let opts = RunOptions {
        binds: vec![spec("/data:/.sifrun/gpu/lib")],
        ..RunOptions::default()
    };
    let input = PlanInput {
        host_binds: &host_binds,
        slurm_client: Some(&client),
        service_accounts: &accounts,
        env_script: Some("export A=1\n"),
        ..PlanInput::new(&opts, &facts)
    };
    let plan = plan(&input, &fs, &debian_like()).unwrap();
    let want = "\
uid_map: 1001 1001 1
gid_map: 1001 1001 1
mount proc on /proc [rw,nosuid,nodev]
mount rbind /sys on /sys [rw,nosuid,nodev]
mount rbind /dev on /dev [rw,nosuid]
mount rbind /tmp on /tmp [rw,nosuid,nodev]
mount rbind /var/tmp on /var/tmp [rw,nosuid,nodev]
mount rbind /home/alice on /home/alice [rw,nosuid,nodev]
mount rbind /scratch/run on /scratch/run [rw,nosuid,nodev]
mount bind /etc/localtime on /etc/localtime [ro,nosuid,nodev]
mount bind /etc/hosts on /etc/hosts [ro,nosuid,nodev]
mount bind /etc/resolv.conf on /etc/resolv.conf [ro,nosuid,nodev]
mount generated passwd on /etc/passwd [ro,nosuid,nodev]
mount generated group on /etc/group [ro,nosuid,nodev]
mount rbind /etc/slurm on /etc/slurm [ro,nosuid,nodev]
mount rbind /usr on /.sifrun/host/usr [ro,nosuid,nodev]
mount rbind /var/spool/slurmd on /var/spool/slurmd [rw,nosuid,nodev]
mount rbind /usr/lib/gpu on /.sifrun/gpu/lib [ro,nosuid,nodev]
mount rbind /data on /.sifrun/gpu/lib [rw,nosuid,nodev]
mount generated exec-slurm-srun on /.sifrun/slurm/bin/srun [ro,nosuid,nodev]
mount generated exec-slurm-sbatch on /.sifrun/slurm/bin/sbatch [ro,nosuid,nodev]
mount generated env.sh on /.sifrun/env.sh [ro,nosuid,nodev]
synth dir /home/alice
synth dir /scratch/run
synth file /etc/localtime
synth file /etc/hosts
synth file /etc/resolv.conf
synth dir /etc/slurm
synth dir /.sifrun/host/usr
synth dir /var/spool/slurmd
synth dir /.sifrun/gpu/lib
synth file /.sifrun/slurm/bin/srun
synth file /.sifrun/slurm/bin/sbatch
synth file /.sifrun/env.sh
file passwd
file group
file exec-slurm-srun (executable)
file exec-slurm-sbatch (executable)
file env.sh
cwd: /scratch/run
";
    assert_eq!(plan.render(), want);
    assert_eq!(
        String::from_utf8_lossy(plan.file("passwd").unwrap()),
        "root:x:0:0:root:/root:/bin/bash\n\
alice:x:1001:1001:Alice A:/home/alice:/bin/sh\n\
slurm:x:64030:64030::/nonexistent:/usr/sbin/nologin\n",
        "the image's root stays; the missing service account is added"
    );
    assert_eq!(
        plan.file("exec-slurm-srun").unwrap(),
        b"#!/bin/sh\nexec srun\n"
    );
    assert_eq!(plan.file("env.sh").unwrap(), b"export A=1\n");
}
