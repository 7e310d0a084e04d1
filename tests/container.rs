//! `sifrun exec|run|shell` as an unprivileged user, with images built here
//! (busybox-static as the userland): identity, privileges, escapes, binds,
//! environment, exit codes, cleanup.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sifrun_tests::*;

fn uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").unwrap().uid()
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// A busybox root filesystem with an env script, a runscript and fixtures.
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
        "sh", "ls", "cat", "id", "echo", "env", "pwd", "touch", "grep", "sleep", "readlink",
        "head", "true", "false", "stat", "wc", "mount",
    ] {
        symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    // A setuid copy: squashfs records it as root-owned 4755.
    fs::create_dir_all(root.join("bin/suid")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/suid/busybox")).unwrap();
    fs::set_permissions(
        root.join("bin/suid/busybox"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(
        root.join(".singularity.d/env/90-environment.sh"),
        "export FROM_IMAGE=yes\nexport PATH=/bin:$PATH\n",
    )
    .unwrap();
    fs::write(
        root.join(".singularity.d/runscript"),
        "#!/bin/sh\necho \"runscript got: $*\"\n",
    )
    .unwrap();
    fs::set_permissions(
        root.join(".singularity.d/runscript"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::write(root.join("etc/not-exec"), "#!/bin/sh\necho hi\n").unwrap();
    // Links that try to lead mounts out of the container.
    symlink("../../../../../etc", root.join("mnt/escape")).unwrap();
    symlink("/proc/1/root/etc", root.join("mnt/magic")).unwrap();
    root
}

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    // A device node, added with a mksquashfs pseudo definition (no root needed).
    let sq = dir.path().join("root.sqfs");
    ok(Command::new("mksquashfs")
        .args([
            s(&root),
            s(&sq),
            "-noappend",
            "-quiet",
            "-no-progress",
            "-all-root",
            "-comp",
            "zstd",
        ])
        .args(["-p", "/bin/evil-null c 666 root root 1 3"])
        .output()
        .unwrap());
    let image = dir.path().join("bb.sif");
    ok(sifrun(&["build", s(&image), "--from-squashfs", s(&sq)]));
    Fixture { dir, image }
}

fn exec(f: &Fixture, opts: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec!["exec"];
    args.extend(opts);
    args.push(s(&f.image));
    args.extend(cmd);
    Command::new(sifrun_bin())
        .args(&args)
        .current_dir(f.dir.path())
        .output()
        .unwrap()
}

fn sh(f: &Fixture, opts: &[&str], script: &str) -> Output {
    exec(f, opts, &["sh", "-c", script])
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn identity_privileges_and_exit_status() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let me = uid();
    let out = sh(
        &f,
        &[],
        "id -u; id -g; grep -E '^(NoNewPrivs|CapEff|CapPrm)' /proc/self/status; exit 42",
    );
    assert_eq!(
        out.status.code(),
        Some(42),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], me.to_string());
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("CapEff:\t0000000000000000"), "{text}");
    assert!(text.contains("CapPrm:\t0000000000000000"), "{text}");

    // A setuid-root binary in the image gains nothing.
    let out = exec(
        &f,
        &[],
        &[
            "sh",
            "-c",
            "ls -ln /bin/suid/busybox; /bin/suid/busybox id -u",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.starts_with("-rwsr-xr-x"),
        "the image keeps the setuid bit: {text}"
    );
    assert_eq!(text.lines().last(), Some(me.to_string().as_str()), "{text}");

    // --fakeroot: root inside, still us outside.
    let out = exec(&f, &["--fakeroot"], &["id", "-u"]);
    assert_eq!(stdout(&out).trim(), "0");

    let out = exec(&f, &[], &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no-such-command: command not found in the container")
    );
    let out = exec(&f, &[], &["/etc/not-exec"]);
    assert_eq!(out.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not executable"));
}

#[test]
fn device_nodes_in_the_image_are_unusable() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let out = sh(
        &f,
        &[],
        "ls -l /bin/evil-null; echo x > /bin/evil-null && echo WROTE; cat /bin/evil-null && echo READ; true",
    );
    let text = stdout(&out);
    assert!(text.contains("evil-null"), "{text}");
    assert!(
        !text.contains("WROTE") && !text.contains("READ"),
        "device node usable: {text}"
    );
}

#[test]
fn mount_targets_stay_inside_the_container() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let data = f.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("marker"), "bound").unwrap();
    // /mnt/escape -> ../../../../../etc resolves to the container's /etc.
    let spec = format!("{}:/mnt/escape/sub", data.display());
    let out = sh(
        &f,
        &["--bind", &spec],
        "cat /etc/sub/marker; grep ' /etc/sub ' /proc/self/mountinfo | wc -l",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.starts_with("bound"), "{text}");
    assert!(!Path::new("/etc/sub").exists(), "a bind reached the host");

    // A magic link into /proc is refused, not followed.
    let spec = format!("{}:/mnt/magic/x", data.display());
    let out = exec(&f, &["--bind", &spec], &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/mnt/magic/x"), "{err}");
}

#[test]
fn binds_home_cwd_and_readonly() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let data = f.dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let rw = format!("{}:/work", data.display());
    let ro = format!("{}:/ro:ro", data.display());
    let out = sh(
        &f,
        &["-B", &format!("{rw},{ro}")],
        "touch /work/new && echo RW-OK; touch /ro/other 2>/dev/null || echo RO-REFUSED; pwd; echo $HOME; ls $HOME >/dev/null && echo HOME-OK",
    );
    let text = stdout(&out);
    assert!(
        text.contains("RW-OK") && text.contains("RO-REFUSED"),
        "{text}"
    );
    assert!(data.join("new").exists());
    assert!(!data.join("other").exists());
    assert!(
        text.contains(&format!("{}\n", f.dir.path().display())),
        "cwd kept: {text}"
    );
    assert!(text.contains("HOME-OK"), "{text}");

    // SIFRUN_BIND works like --bind.
    let out = Command::new(sifrun_bin())
        .args(["exec", s(&f.image), "ls", "/work"])
        .env("SIFRUN_BIND", &rw)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("new"), "{out:?}");

    let out = sh(&f, &["--contain", "--pwd", "/tmp"], "pwd; ls /tmp | wc -l");
    assert_eq!(stdout(&out), "/tmp\n0\n");
    let wd = f.dir.path().join("wd");
    fs::create_dir(&wd).unwrap();
    let out = sh(
        &f,
        &["--contain", "--workdir", s(&wd)],
        "touch /tmp/t $HOME/h && echo OK",
    );
    assert_eq!(
        stdout(&out),
        "OK\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wd.join("tmp/t").exists() && wd.join("home/h").exists());

    // The image's files belong to root, so writing to /etc needs --fakeroot too.
    let out = sh(
        &f,
        &["--writable-tmpfs", "--fakeroot"],
        "echo hi > /etc/new-file && cat /etc/new-file",
    );
    if kernel_at_least(5, 11) {
        // The overlay in a user namespace works from Linux 5.11 on (its
        // layers must not be on an unbindable mount, as the staging area is).
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout(&out), "hi\n");
    } else if !out.status.success() {
        assert!(String::from_utf8_lossy(&out.stderr).contains("--writable-tmpfs"));
    }
    let out = sh(&f, &[], "echo hi > /etc/new-file");
    assert!(!out.status.success(), "the image root must be read-only");
}

#[test]
fn environment_follows_apptainer() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let out = Command::new(sifrun_bin())
        .args([
            "exec",
            "--env",
            "FLAG=set",
            s(&f.image),
            "sh",
            "-c",
            "echo $FROM_IMAGE $HOST_VAR $FROM_PREFIX $FLAG $LD_LIBRARY_PATH.",
        ])
        .env("HOST_VAR", "host")
        .env("SIFRUN_ENV_FROM_PREFIX", "prefixed")
        .env("LD_LIBRARY_PATH", "/host/lib")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "yes host prefixed set .\n");
    let out = Command::new(sifrun_bin())
        .args([
            "exec",
            "--cleanenv",
            s(&f.image),
            "sh",
            "-c",
            "echo ${HOST_VAR:-gone} $LANG",
        ])
        .env("HOST_VAR", "host")
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "gone C\n");
    let out = Command::new(sifrun_bin())
        .args(["run", s(&f.image), "a", "b c"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "runscript got: a b c\n");
    let out = Command::new(sifrun_bin())
        .args(["shell", s(&f.image)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"echo in-shell $FROM_IMAGE\nexit 5\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(stdout(&out), "in-shell yes\n");
}

/// Processes of ours whose command line mentions `needle`.
fn ours_matching(needle: &str) -> Vec<String> {
    let me = uid();
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let p = e.path();
        let Ok(cmd) = fs::read(p.join("cmdline")) else {
            continue;
        };
        let owner = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&p).map(|m| m.uid()).unwrap_or(u32::MAX)
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if owner == me && cmd.contains(needle) && !cmd.contains("cargo") {
            found.push(cmd);
        }
    }
    found
}

fn wait_gone(needle: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let left = ours_matching(needle);
        if left.is_empty() || start.elapsed() > Duration::from_secs(5) {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn killing_the_launcher_or_the_command_leaves_nothing() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    for (victim, signal, want) in [
        ("launcher", "KILL", None),
        ("launcher", "TERM", Some(143)),
        ("command", "KILL", Some(137)),
    ] {
        let tag = format!("sleep-{victim}-{signal}");
        let mut child = Command::new(sifrun_bin())
            .args([
                "exec",
                s(&f.image),
                "sh",
                "-c",
                &format!("sleep 300 & sleep 301; echo {tag}"),
            ])
            .spawn()
            .unwrap();
        let start = Instant::now();
        while !ours_matching("sleep 301")
            .iter()
            .any(|c| c.starts_with("sleep 301"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "container did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let target = match victim {
            "launcher" => child.id().to_string(),
            _ => {
                let out = Command::new("pgrep")
                    .args(["-u", &uid().to_string(), "-f", "^sh -c sleep 300"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            }
        };
        ok(Command::new("kill")
            .args([&format!("-{signal}"), &target])
            .output()
            .unwrap());
        let status = child.wait().unwrap();
        if let Some(code) = want {
            assert_eq!(status.code(), Some(code), "{victim} {signal}");
        }
        let left = wait_gone("sleep 30");
        assert!(left.is_empty(), "{victim} {signal}: left behind: {left:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains("sifrun:"),
            "a mount is visible on the host"
        );
    }
}

#[test]
fn back_to_back_runs_leak_nothing() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    // Other tests of this binary create temporary directories (".tmp…")
    // in /tmp concurrently, and other users' programs (compilers) their own
    // files; anything else new there of ours would be the launcher's.
    let me = uid();
    let tmp_entries = || -> std::collections::BTreeSet<String> {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir("/tmp")
            .map(|d| {
                d.flatten()
                    .filter(|e| e.metadata().is_ok_and(|m| m.uid() == me))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".tmp"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let tmp_before = tmp_entries();
    for i in 0..50 {
        let out = exec(&f, &[], &["echo", &format!("run-{i}")]);
        assert_eq!(stdout(&out), format!("run-{i}\n"));
    }
    assert!(wait_gone(s(&f.image)).is_empty());
    // No process of ours still runs for this image or holds it (or a FUSE
    // device) open. Other tests' launchers hold their own images, and
    // /dev/fuse too, so only processes tied to this image count.
    let image = s(&f.image);
    for p in fs::read_dir("/proc").unwrap().flatten() {
        use std::os::unix::fs::MetadataExt;
        if fs::metadata(p.path()).map(|m| m.uid()).ok() != Some(me) {
            continue;
        }
        let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(image);
        let fds: Vec<PathBuf> = fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .collect();
        assert!(
            !fds.iter().any(|t| t == &f.image),
            "{} still holds the image",
            p.path().display()
        );
        assert!(
            !(ours && fds.iter().any(|t| t == Path::new("/dev/fuse"))),
            "{} ({}) still holds /dev/fuse",
            p.path().display(),
            String::from_utf8_lossy(&cmdline)
        );
    }
    let tmp_after = tmp_entries();
    let new: Vec<&String> = tmp_after.difference(&tmp_before).collect();
    assert!(new.is_empty(), "left in /tmp: {new:?}");
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let d = f.dir.path();
    let check = |args: &[&str], want: &str| {
        let out = Command::new(sifrun_bin())
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    };
    let text = d.join("notes.txt");
    fs::write(&text, "x".repeat(300)).unwrap();
    check(&["exec", s(&text), "true"], "not a SIF image");
    check(
        &["exec", s(&image("empty.sif")), "true"],
        "no primary system partition",
    );
    let ext3 = d.join("ext3.sif");
    ok(sifrun(&["sif", "new", s(&ext3)]));
    ok(sifrun(&[
        "sif",
        "add",
        "--datatype",
        "4",
        "--partfs",
        "2",
        "--parttype",
        "2",
        "--partarch",
        "2",
        s(&ext3),
        s(&text),
    ]));
    check(&["exec", s(&ext3), "true"], "Ext3");
    let junk = d.join("junk.sif");
    ok(sifrun(&["sif", "new", s(&junk)]));
    ok(sifrun(&[
        "sif",
        "add",
        "--datatype",
        "4",
        "--partfs",
        "1",
        "--parttype",
        "2",
        "--partarch",
        "2",
        s(&junk),
        s(&text),
    ]));
    check(&["exec", s(&junk), "true"], "not a readable squashfs");
    check(
        &[
            "exec",
            "--bind",
            "/definitely/missing:/x",
            s(&f.image),
            "true",
        ],
        "--bind: /definitely/missing: no such file or directory",
    );
    check(
        &["exec", "--bind", "/tmp:/x:suid", s(&f.image), "true"],
        "suid",
    );
    check(
        &["exec", "--bind", "/tmp:relative", s(&f.image), "true"],
        "absolute",
    );
    check(
        &["exec", "--env", "NOPE", s(&f.image), "true"],
        "NAME=VALUE",
    );
    check(
        &["exec", "--pwd", "/nonexistent", s(&f.image), "true"],
        "--pwd: /nonexistent",
    );
    check(&["exec", s(&d.join("missing.sif")), "true"], "No such file");
}

/// `-B /tmp:/x` shows the host's /tmp, not the launcher's private staging
/// area that is mounted over /tmp in the launcher's own namespace (its
/// `root`, `files` and `scratch` directories showed before).
#[test]
fn a_bind_of_the_hosts_tmp_shows_the_hosts_tmp() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let marker = tempfile::Builder::new()
        .prefix("sifrun-host-tmp-marker-")
        .tempfile_in("/tmp")
        .unwrap();
    let name = marker.path().file_name().unwrap().to_str().unwrap();
    for spec in ["/tmp:/x", "/tmp:/x:ro"] {
        let out = exec(&f, &["-B", spec], &["ls", "-a", "/x"]);
        assert!(
            out.status.success(),
            "{spec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = stdout(&out);
        assert!(
            text.lines().any(|l| l == name),
            "{spec}: the host's /tmp is not what /x shows: {text}"
        );
    }
}

/// An image whose root directory is closed to the user (mode 0700, owned
/// by root, as `sifrun build` of a `mktemp -d` directory made it) fails
/// with a message that names the cause, not with "mounting proc on /proc:
/// Permission denied".
#[test]
fn an_image_root_the_user_cannot_enter_is_named_as_the_cause() {
    if !containers_can_run() {
        return;
    }
    let f = fixture();
    let d = f.dir.path();
    let sq = d.join("closed.sqfs");
    ok(Command::new("mksquashfs")
        .args([
            s(&d.join("rootfs")),
            s(&sq),
            "-noappend",
            "-quiet",
            "-no-progress",
        ])
        .args(["-all-root", "-root-mode", "0700"])
        .output()
        .unwrap());
    let closed = d.join("closed.sif");
    ok(sifrun(&["build", s(&closed), "--from-squashfs", s(&sq)]));
    let out = Command::new(sifrun_bin())
        .args(["exec", s(&closed), "true"])
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("the image's root directory is mode 0700, owned by uid 0")
            && err.contains("rebuilt with its root directory mode 0755"),
        "{err}"
    );
    assert!(!err.contains("mounting proc"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    // With --fakeroot the user is the root directory's owner inside.
    let out = Command::new(sifrun_bin())
        .args(["exec", "--fakeroot", s(&closed), "true"])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Waits (up to 10 s) until `path` exists, that is until a mount serves it.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sifrun mount` of the fixture's image on `mnt`, once it serves.
fn serve(f: &Fixture, mnt: &Path) -> std::process::Child {
    let server = Command::new(sifrun_bin())
        .args(["mount", s(&f.image), s(mnt)])
        .spawn()
        .unwrap();
    wait_for(&mnt.join("bin/busybox"));
    server
}

/// `fusermount3 -u mnt`, which also ends the server.
fn unmount(mnt: &Path, server: &mut std::process::Child) {
    ok(Command::new("fusermount3")
        .args(["-u", s(mnt)])
        .output()
        .unwrap());
    assert!(server.wait().unwrap().success());
}

/// A host mount below /tmp (here a FUSE mount in the fixture's directory,
/// which lies under the temporary directory and is the working directory)
/// comes along into the container. A plain bind of a directory with host
/// mounts below fails in a user namespace (EINVAL): CI once saw every
/// container fail while another test's FUSE mount sat below /tmp.
#[test]
fn host_mounts_below_tmp_and_the_working_directory_come_along() {
    if !containers_can_run() || !have("fusermount3") {
        return;
    }
    let f = fixture();
    let mnt = f.dir.path().join("below");
    fs::create_dir(&mnt).unwrap();
    let mut server = serve(&f, &mnt);
    let inside = mnt.join("etc/passwd");
    let out = exec(&f, &[], &["cat", s(&inside)]);
    let contain = exec(&f, &["--contain"], &["true"]);
    unmount(&mnt, &mut server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "root:x:0:0:root:/root:/bin/sh\n");
    assert!(
        contain.status.success(),
        "{}",
        String::from_utf8_lossy(&contain.stderr)
    );
}

#[test]
fn sifrun_mount_serves_and_unmounts_on_sigterm() {
    if !containers_can_run() || !have("fusermount3") {
        return;
    }
    let f = fixture();
    let mnt = f.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut server = serve(&f, &mnt);
    assert_eq!(
        fs::read(mnt.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        fs::read_link(mnt.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert!(fs::write(mnt.join("new"), "x").is_err(), "read-only");
    ok(Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .output()
        .unwrap());
    assert!(server.wait().unwrap().success());
    assert!(!mnt.join("bin").exists(), "still mounted after SIGTERM");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(s(&mnt)));

    // `fusermount3 -u` ends the server too.
    let mut server = serve(&f, &mnt);
    unmount(&mnt, &mut server);
    assert!(!mnt.join("bin").exists());
}

#[test]
fn nv_without_a_driver_is_a_clear_error_and_auto_is_quiet() {
    if !containers_can_run() {
        return;
    }
    if std::path::Path::new("/dev/nvidiactl").exists() {
        eprintln!("skipping: this host has an NVIDIA driver");
        return;
    }
    let f = fixture();
    let out = exec(&f, &["--nv"], &["true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--nv: this host has no NVIDIA driver (no /dev/nvidiactl)"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let out = exec(
        &f,
        &["--gpu", "auto"],
        &["sh", "-c", "echo ${LD_LIBRARY_PATH-unset}"],
    );
    assert_eq!(
        stdout(&out),
        "unset\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A holder started as the plugin starts it (`sifrun slurm-hold`, here
/// without Slurm), with the step's command; killed (SIGTERM) when dropped.
struct TestHolder {
    child: std::process::Child,
    report: String,
}

impl TestHolder {
    fn start(dir: &Path, image: &Path, command: &str) -> TestHolder {
        use std::io::{BufRead, BufReader, Write};
        let request = serde_json::json!({
            "version": 2, "release": env!("CARGO_PKG_VERSION"), "step": "1.0",
            "image": s(image), "ecl_config": null, "binds": [], "env": [], "pwd": null,
            "writable_tmpfs": false, "no_home": true, "gpu": "none", "netfs": false,
            "netfs_types": [], "fabric_libraries": false, "allow_umad": false,
            "slurm_client": false, "slurm_conf": "/etc/slurm/slurm.conf", "verbosity": 0,
            "job_env": [["PATH", "/usr/bin:/bin"], ["HOME", s(dir)]],
            "command": command,
        });
        let mut child = Command::new(sifrun_bin())
            .args(["slurm-hold", "--slurm-step=1.0", s(image)])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{request}").unwrap();
        drop(stdin);
        let mut report = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut report)
            .unwrap();
        TestHolder { child, report }
    }

    /// The server's read system calls so far (`syscr` of /proc/PID/io: one
    /// per FUSE request, one per block read from the image).
    fn reads(&self) -> u64 {
        let io = fs::read_to_string(format!("/proc/{}/io", self.child.id())).unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    /// The container process (the server's child).
    fn container(&self) -> String {
        let pid = self.child.id();
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        children.split_whitespace().next().unwrap().to_owned()
    }

    /// Waits until the container process has finished its work after the
    /// report (its one thread left) and the server has read nothing for
    /// 300 ms.
    fn settle(&self) {
        let tasks = format!("/proc/{}/task", self.container());
        poll_until(
            "the container process's warming thread",
            Duration::from_secs(10),
            || fs::read_dir(&tasks).unwrap().count() == 1,
        );
        let (mut last, mut still) = (self.reads(), Instant::now());
        poll_until("the server to go quiet", Duration::from_secs(10), || {
            let now = self.reads();
            if now != last {
                (last, still) = (now, Instant::now());
            }
            still.elapsed() > Duration::from_millis(300)
        });
    }

    /// The server's reads while a task joins as task_init does (nsenter
    /// into the container process's user and mount namespaces) and runs
    /// `program`.
    fn reads_for_a_task(&self, program: &str) -> u64 {
        let before = self.reads();
        let task = Command::new("nsenter")
            .args([
                "-t",
                &self.container(),
                "-U",
                "-m",
                "--preserve-credentials",
                program,
            ])
            .output()
            .unwrap();
        assert!(task.status.success(), "{task:?}");
        self.reads() - before
    }
}

impl Drop for TestHolder {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// A Slurm step's holder reads an lz4 image's step command ahead into the
/// kernel's page cache once it has reported ready, so the tasks' exec reads
/// none of the program's pages from the FUSE server (issue 11, section 7);
/// the container process keeps no descriptor of the FUSE device. The
/// server's read system calls are counted around a task's exec: 51 when
/// busybox's `true` came through FUSE (before this read-ahead), 5 from the
/// page cache (the open, the release and the like). Control: a zstd image,
/// which is not read ahead. (mincore and fincore cannot tell: for a file
/// the caller may not write they report every page resident.)
#[test]
fn a_holder_reads_an_lz4_image_s_command_ahead_into_the_page_cache() {
    if !containers_can_run() || !require("nsenter") {
        return;
    }
    let dir = scratch();
    let root = dir.path().join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    symlink("busybox", root.join("bin/true")).unwrap();
    let mut through_fuse = Vec::new();
    for compression in ["lz4", "zstd"] {
        let image = dir.path().join(format!("{compression}.sif"));
        ok(sifrun(&[
            "build",
            "--compression",
            compression,
            s(&image),
            s(&root),
        ]));
        let holder = TestHolder::start(dir.path(), &image, "true");
        assert!(holder.report.contains("\"ready\""), "{}", holder.report);
        holder.settle();
        let fds = fs::read_dir(format!("/proc/{}/fd", holder.container())).unwrap();
        for fd in fds {
            let target = fs::read_link(fd.unwrap().path()).unwrap_or_default();
            assert_ne!(
                target,
                Path::new("/dev/fuse"),
                "the container process holds the FUSE device"
            );
        }
        through_fuse.push((compression, holder.reads_for_a_task("/bin/true")));
    }
    let [(_, lz4), (_, zstd)] = through_fuse[..] else {
        unreachable!()
    };
    assert!(
        lz4 <= 10 && zstd > 10,
        "the server's reads for a task's exec: {through_fuse:?} (lz4 read ahead into the page cache, zstd not)"
    );
}
