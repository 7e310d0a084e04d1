//! Escape suite: hostile images and hostile options against `sifrun exec`,
//! run as an unprivileged user. Every case either runs inside the container
//! or fails with one clear line; in both cases nothing outside changes and
//! no mount lands on a host path. See docs/security.md (threat model).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sifrun_tests::*;

/// A minimal busybox root filesystem at `dir/rootfs`.
fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "home",
        "var/tmp",
        "mnt",
        ".singularity.d/env",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in [
        "sh", "cat", "id", "grep", "echo", "ls", "touch", "mount", "head", "wc", "stat",
    ] {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(
        root.join(".singularity.d/env/90-env.sh"),
        "export FROM_IMAGE=1\n",
    )
    .unwrap();
    root
}

fn build(root: &Path, image: &Path) {
    ok(sifrun(&["build", s(image), s(root)]));
}

fn exec_in(dir: &Path, opts: &[&str], image: &Path, script: &str) -> Output {
    Command::new(sifrun_bin())
        .arg("exec")
        .args(opts)
        .arg(image)
        .args(["sh", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Names, sizes, modes and contents of everything below `dir`.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.insert(p.clone(), (m.mode(), content));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// A failure must be one line naming the problem, never a panic.
fn clean_failure(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(err.contains("sifrun:"), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
}

/// Mount points (field 5 of mountinfo, unescaped spaces aside) in `text`.
fn mount_points(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .collect()
}

#[test]
fn links_at_every_default_mount_target_stay_inside() {
    if !containers_can_run() {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let base = rootfs(d);
    // What the links aim at: a host directory the user owns, with files
    // named like the targets; it must be the same after every run.
    let victim = d.join("victim");
    for sub in ["tmp", "var/tmp", "home", "etc", "proc", "sys", "dev", "env"] {
        fs::create_dir_all(victim.join(sub)).unwrap();
    }
    for f in ["passwd", "group", "hosts", "resolv.conf", "localtime"] {
        fs::write(victim.join("etc").join(f), "victim\n").unwrap();
    }
    let before = snapshot(&victim);
    let victim_str = victim.to_str().unwrap().trim_start_matches('/');

    // Every path the launcher mounts on by default, and the parents of
    // some, replaced by a link aimed out of the image three ways.
    let targets = [
        "proc",
        "sys",
        "dev",
        "tmp",
        "var/tmp",
        "var",
        "home",
        "etc",
        "etc/passwd",
        "etc/group",
        "etc/hosts",
        "etc/resolv.conf",
        "etc/localtime",
        ".sifrun",
        ".singularity.d/env",
        ".singularity.d",
    ];
    let mut ran = 0;
    let mut refused = 0;
    for (i, target) in targets.iter().enumerate() {
        let depth = target.matches('/').count();
        let aim = |sub: &str| format!("{victim_str}/{sub}");
        let sub = match *target {
            t if t.starts_with("etc/") => t.to_owned(),
            ".singularity.d/env" | ".singularity.d" | ".sifrun" => "env".to_owned(),
            "var" => "var".to_owned(),
            t => t.to_owned(),
        };
        // Existing host paths, and missing ones (the launcher must not
        // create anything on the host to mount on).
        let missing = format!("missing/{sub}");
        let links = [
            format!("/{}", aim(&sub)),
            format!("/{}", aim(&missing)),
            format!("/proc/1/root/{}", aim(&sub)),
            format!("{}{}", "../".repeat(depth + 8), aim(&missing)),
        ];
        for (k, link) in links.iter().enumerate() {
            let root = d.join(format!("r{i}-{k}"));
            ok(Command::new("cp")
                .args(["-a", s(&base), s(&root)])
                .output()
                .unwrap());
            let p = root.join(target);
            if p.is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else if p.exists() {
                fs::remove_file(&p).unwrap();
            }
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(link, &p).unwrap();
            let image = d.join(format!("r{i}-{k}.sif"));
            build(&root, &image);
            fs::remove_dir_all(&root).unwrap();
            let out = exec_in(d, &[], &image, "id -un; cat /proc/self/mountinfo");
            let what = format!("/{target} -> {link}");
            if out.status.success() {
                ran += 1;
                let text = String::from_utf8_lossy(&out.stdout);
                let me = text.lines().next().unwrap_or("");
                assert_ne!(me, "root", "{what}: the image's passwd won");
                // Every mount is in the container's own mount namespace;
                // a link can at most move one to another container path.
                assert!(!mount_points(&text).is_empty(), "{what}: {text}");
            } else {
                refused += 1;
                clean_failure(&out, &what);
                eprintln!(
                    "{what}: {}",
                    String::from_utf8_lossy(&out.stderr).trim_end()
                );
            }
            assert_eq!(snapshot(&victim), before, "{what}: the host changed");
            fs::remove_file(&image).unwrap();
        }
    }
    eprintln!(
        "{} hostile links: {ran} ran inside, {refused} refused, 0 escapes",
        ran + refused
    );
    assert_eq!(ran + refused, targets.len() * 4);
}

#[test]
fn bind_specs_cannot_climb_or_smuggle_options() {
    if !containers_can_run() {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let root = rootfs(d);
    // A link in the image that points out of it, used as a bind parent.
    symlink("/proc/self/root/etc", root.join("mnt/magic")).unwrap();
    symlink("../../../../../../etc", root.join("mnt/up")).unwrap();
    let image = d.join("img.sif");
    build(&root, &image);
    let data = d.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("marker"), "data\n").unwrap();
    let src = data.to_str().unwrap();

    // Refused, with the reason in one line.
    let refused = [
        (format!("{src}:/x:suid"), "\"suid\" is not allowed"),
        (format!("{src}:/x:dev"), "\"dev\" is not allowed"),
        (format!("{src}:/x:exec"), "\"exec\" is not allowed"),
        // A comma starts the next spec (Apptainer's lists): "suid" alone
        // is a relative path, refused too.
        (format!("{src}:/x:rw,suid"), "suid"),
        (format!("{src}:/x:ro,dev"), "dev"),
        (format!("{src}:/x:bind,rbind"), "is not allowed"),
        (format!("{src}:/x:ro:extra"), "too many ':'"),
        (format!("{src}:x"), "absolute"),
        (format!("{src}:/mnt/../../etc/x"), ".."),
        (format!("{src}:/x\n/y"), "newline"),
        (format!("{src}:/mnt/magic/x"), "/mnt/magic/x"),
        (format!("{src},/no/such/dir"), "/no/such/dir"),
        (":/x".to_owned(), "empty"),
    ];
    for (spec, want) in &refused {
        let out = exec_in(d, &["--bind", spec], &image, "echo RAN");
        assert!(!out.status.success(), "{spec:?} was accepted");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("RAN"));
        clean_failure(&out, spec);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{spec:?}: {err}");
    }
    // The same through SIFRUN_BIND.
    let out = Command::new(sifrun_bin())
        .args(["exec", s(&image), "true"])
        .env("SIFRUN_BIND", format!("{src}:/x:suid"))
        .current_dir(d)
        .output()
        .unwrap();
    assert!(!out.status.success());
    clean_failure(&out, "SIFRUN_BIND");

    // Accepted forms land inside, nosuid and nodev, whatever the image's
    // links say.
    let accepted = [
        (format!("{src}:/mnt/up/data"), "/etc/data"),
        (format!("{src}/../data:/d1:ro"), "/d1"),
        (format!("{src}:/./d2/./"), "/d2"),
    ];
    for (spec, inside) in &accepted {
        let script = format!("cat {inside}/marker; grep ' {inside} ' /proc/self/mountinfo");
        let out = exec_in(d, &["--bind", spec], &image, &script);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{spec:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("data\n"), "{spec:?}: {text}");
        let line = text.lines().nth(1).unwrap_or("");
        let opts = line.split(' ').nth(5).unwrap_or("");
        assert!(
            opts.contains("nosuid") && opts.contains("nodev"),
            "{spec:?}: {line}"
        );
    }
    assert!(!Path::new("/etc/data").exists(), "a bind reached the host");

    // A bind source that links to a file the user may not read stays
    // unreadable: binds never lend the launcher's privileges.
    if Path::new("/etc/shadow").exists() && fs::read("/etc/shadow").is_err() {
        let link = d.join("shadow-link");
        symlink("/etc/shadow", &link).unwrap();
        let spec = format!("{}:/s", link.display());
        let out = exec_in(d, &["--bind", &spec], &image, "cat /s && echo READ");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("READ"));
    }
}

#[test]
fn capabilities_setuid_and_fakeroot_gain_nothing_outside() {
    if !containers_can_run() {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let root = rootfs(d);
    // Busybox picks its applet by the name it runs as: the copies keep
    // the name in directories of their own.
    fs::create_dir_all(root.join("bin/suid")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/suid/busybox")).unwrap();
    fs::set_permissions(
        root.join("bin/suid/busybox"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    // File capabilities: setting them takes root, so tests/run-all prepares
    // a directory holding `busybox` with cap_sys_admin, cap_dac_override
    // and cap_setuid (SIFRUN_CAPDIR). mksquashfs keeps security.* xattrs;
    // appending that directory puts the file at /busybox.
    let capdir = std::env::var_os("SIFRUN_CAPDIR").map(PathBuf::from);
    assert!(
        capdir.is_some() || std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "SIFRUN_CAPDIR (a directory with a file-capability busybox) is needed"
    );
    let sq = d.join("root.sqfs");
    ok(Command::new("mksquashfs")
        .args([s(&root), s(&sq), "-noappend", "-quiet", "-no-progress"])
        .output()
        .unwrap());
    if let Some(capdir) = &capdir {
        ok(Command::new("mksquashfs")
            .args([s(capdir), s(&sq), "-quiet", "-no-progress"])
            .output()
            .unwrap());
    }
    let image = d.join("img.sif");
    ok(sifrun(&["build", s(&image), "--from-squashfs", s(&sq)]));
    let caps = "grep -E '^(Uid|Gid|CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs)' /proc/self/status";
    let me = fs::metadata("/proc/self").unwrap().uid();
    let mut binaries = vec!["/bin/busybox", "/bin/suid/busybox"];
    if capdir.is_some() {
        binaries.push("/busybox");
    }
    for binary in binaries {
        let out = exec_in(d, &[], &image, &format!("{binary} sh -c \"{caps}\""));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{binary}: {text}");
        for want in [
            "CapInh:\t0000000000000000",
            "CapPrm:\t0000000000000000",
            "CapEff:\t0000000000000000",
            "CapAmb:\t0000000000000000",
            "NoNewPrivs:\t1",
        ] {
            assert!(text.contains(want), "{binary}: no {want:?} in {text}");
        }
        let my_gid = fs::metadata("/proc/self").unwrap().gid();
        for (field, want) in [("Uid:", me), ("Gid:", my_gid)] {
            let line = text.lines().find(|l| l.starts_with(field)).unwrap();
            assert!(
                line.split_whitespace()
                    .skip(1)
                    .all(|u| u == want.to_string()),
                "{binary}: {line}"
            );
        }
    }

    // --fakeroot is root inside a namespace that owns nothing outside: a
    // root-owned host file bound read-write stays unwritable, and the
    // host's own root files are not its to change.
    let host_file = Path::new("/etc/hostname");
    if host_file.exists() && fs::metadata(host_file).unwrap().uid() == 0 && me != 0 {
        let before = fs::read(host_file).unwrap();
        let spec = format!("{}:/h:rw", host_file.display());
        let out = exec_in(
            d,
            &["--fakeroot", "--bind", &spec],
            &image,
            "id -u; echo pwned >> /h && echo WROTE; chmod 666 /h && echo CHMOD; true",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("0\n"), "{text}");
        assert!(!text.contains("WROTE") && !text.contains("CHMOD"), "{text}");
        assert_eq!(fs::read(host_file).unwrap(), before);
    }
}

#[test]
fn hard_links_and_device_nodes_in_the_image_open_nothing_on_the_host() {
    if !containers_can_run() {
        return;
    }
    let dir = scratch();
    let d = dir.path();
    let root = rootfs(d);
    fs::write(root.join("etc/orig"), "in the image\n").unwrap();
    fs::hard_link(root.join("etc/orig"), root.join("mnt/hard")).unwrap();
    // Nodes a hostile image might carry: the host's disk, memory, a tty.
    let sq = d.join("root.sqfs");
    ok(Command::new("mksquashfs")
        .args([s(&root), s(&sq), "-noappend", "-quiet", "-no-progress"])
        .args(["-p", "/mnt/disk b 666 root root 8 0"])
        .args(["-p", "/mnt/mem c 666 root root 1 1"])
        .args(["-p", "/mnt/tty c 666 root root 5 0"])
        .args(["-p", "/mnt/fifo f 666 root root true"])
        .output()
        .unwrap());
    let image = d.join("img.sif");
    ok(sifrun(&["build", s(&image), "--from-squashfs", s(&sq)]));
    let out = exec_in(
        d,
        &[],
        &image,
        "cat /mnt/hard; for n in disk mem tty; do head -c1 /mnt/$n >/dev/null 2>&1 && echo OPENED-$n; done; \
         echo x > /mnt/hard 2>/dev/null && echo WROTE; true",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("in the image\n"), "{text}");
    assert!(
        !text.contains("OPENED") && !text.contains("WROTE"),
        "{text}"
    );
}
