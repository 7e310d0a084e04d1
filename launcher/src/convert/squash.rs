//! The mksquashfs process: `mksquashfs - DEST -tar -o OFFSET`, fed a tar
//! stream on its standard input. As an ordinary user it runs in a new user
//! namespace mapping the user to root, so the image's root directory is
//! root's (`-root-uid` is ignored with `-tar`). mksquashfs reports some
//! failures on stderr and still exits 0: those fail the build too.
//!
//! gzip is asked for at level 6 (zlib's default) rather than mksquashfs's
//! 9: on 540 MB of binaries and documents, level 9 took 64 s of CPU and
//! level 6 21 s, for an image 0.4 % larger (docs/performance.md).

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::build::{Compression, ROOT_MODE};

use super::ConvertError;

/// The command line (program first) that packs a tar stream from stdin.
pub(crate) fn args(
    dest: &Path,
    offset: u64,
    compression: Compression,
    root: bool,
) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    if !root {
        v.extend(["unshare", "--user", "--map-root-user"].map(OsString::from));
    }
    v.extend(["mksquashfs".into(), "-".into(), dest.into()]);
    let level: &[&str] = match compression {
        Compression::Gzip => &["-Xcompression-level", GZIP_LEVEL],
        _ => &[],
    };
    v.extend(
        [
            "-tar",
            "-o",
            &offset.to_string(),
            "-noappend",
            "-comp",
            compression.name(),
            "-no-progress",
            "-quiet",
            "-root-mode",
            &format!("{ROOT_MODE:o}"),
        ]
        .map(OsString::from),
    );
    v.extend(level.iter().map(OsString::from));
    v
}

/// The gzip level of converted images (see the module's comment).
const GZIP_LEVEL: &str = "6";

/// A line of mksquashfs's output that means the image is incomplete.
pub(crate) fn complaint(output: &str) -> Option<&str> {
    output.lines().find(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("failed")
            || l.contains("could not")
            || l.contains("error")
            || l.contains("already exists")
            || l.contains("permission denied")
    })
}

/// `PATH` for mksquashfs when the caller has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `argv` (with `PATH` and `env`, nothing else of this process's
/// environment) and feeds its stdin with `feed`; fails when the feed fails,
/// the process fails, or it complains.
pub(crate) fn run(
    argv: &[OsString],
    env: &[(&str, String)],
    feed: impl FnOnce(&mut dyn Write) -> Result<(), ConvertError>,
) -> Result<(), ConvertError> {
    let mut cmd = Command::new(&argv[0]);
    // The caller's environment stays here (root's, for `cache add --site`:
    // registry credentials): mksquashfs runs as the cache's account, who
    // may read its environment.
    cmd.args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or(DEFAULT_PATH.into()),
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ConvertError::Other(format!(
            "{} not found: install squashfs-tools (and util-linux for unshare)",
            argv[0].to_string_lossy()
        )),
        _ => ConvertError::io("mksquashfs", e),
    })?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.by_ref().take(1 << 20).read_to_end(&mut s);
        let mut o = Vec::new();
        let _ = stdout.by_ref().take(1 << 20).read_to_end(&mut o);
        s.extend(o);
        s
    });
    let mut stdin = child.stdin.take().expect("piped");
    let fed = feed(&mut stdin);
    drop(stdin);
    if fed.is_err() {
        let _ = child.kill();
    }
    let status = child
        .wait()
        .map_err(|e| ConvertError::io("mksquashfs", e))?;
    let text = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    // A broken pipe means mksquashfs stopped reading: its own words say why.
    let broken_pipe = matches!(&fed, Err(ConvertError::Io { error, .. }) if error.kind() == io::ErrorKind::BrokenPipe);
    if !broken_pipe {
        fed?;
    }
    if broken_pipe || !status.success() || complaint(&text).is_some() {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        return Err(ConvertError::Other(format!(
            "mksquashfs failed ({status}): {}",
            lines[lines.len().saturating_sub(5)..].join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_asked_for_at_level_6() {
        let a = args(Path::new("/o"), 4096, Compression::Gzip, true);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(a[a.len() - 2..], ["-Xcompression-level", "6"]);
        assert_eq!(a[a.iter().position(|&x| x == "-comp").unwrap() + 1], "gzip");
    }

    #[test]
    fn command_line() {
        let a = args(Path::new("/o"), 4096, Compression::Zstd, false);
        let a: Vec<&str> = a.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            a,
            [
                "unshare",
                "--user",
                "--map-root-user",
                "mksquashfs",
                "-",
                "/o",
                "-tar",
                "-o",
                "4096",
                "-noappend",
                "-comp",
                "zstd",
                "-no-progress",
                "-quiet",
                "-root-mode",
                "755"
            ]
        );
        assert_eq!(
            args(Path::new("/o"), 1, Compression::Gzip, true)[0],
            "mksquashfs"
        );
    }

    #[test]
    fn complaints_fail() {
        assert!(complaint("Parallel mksquashfs: Using 2 processors\n").is_none());
        assert!(complaint("Could not create destination file\n").is_some());
        assert!(complaint("x: already exists in tar\n").is_some());
    }

    /// mksquashfs gets `PATH` and what the caller names, no other
    /// variable of this process's (the test harness has several).
    #[test]
    fn the_environment_is_cleared_but_path() {
        assert!(std::env::vars_os().any(|(k, _)| k != "PATH"));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let argv: Vec<OsString> = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("cat >/dev/null; cat /proc/$$/environ > {}", out.display()).into(),
        ];
        run(&argv, &[("SOURCE_DATE_EPOCH", "7".into())], |_| Ok(())).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let mut names: Vec<&str> = text
            .split('\0')
            .filter(|v| !v.is_empty())
            .map(|v| v.split_once('=').map_or(v, |(k, _)| k))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["PATH", "SOURCE_DATE_EPOCH"], "{text}");
    }

    #[test]
    fn feed_reaches_the_process_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            format!("cat > {}", out.display()).into(),
        ];
        run(&argv, &[], |w| {
            w.write_all(b"tar bytes")
                .map_err(|e| ConvertError::io("w", e))
        })
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"tar bytes");
        let fail: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            "cat >/dev/null; echo Could not write >&2".into(),
        ];
        let e = run(&fail, &[], |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("Could not write"), "{e}");
        let e = run(&argv, &[], |_| {
            Err(ConvertError::Other("feed broke".into()))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "feed broke");
        // mksquashfs quits early: its words, not the broken pipe.
        let quits: Vec<OsString> =
            vec!["sh".into(), "-c".into(), "echo Could not go on >&2".into()];
        let e = run(&quits, &[], |w| {
            loop {
                if let Err(e) = w.write_all(&[0; 65536]) {
                    return Err(ConvertError::io("mksquashfs input", e));
                }
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("Could not go on"), "{e}");
    }
}
