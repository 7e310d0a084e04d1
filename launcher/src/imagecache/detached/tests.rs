use std::os::fd::AsFd;

use super::*;

/// What the child writes comes back without its terminal escapes (tabs
/// and line ends kept, a line without an end too), and its exit status
/// is returned.
#[test]
fn the_childs_lines_come_back_without_control_characters() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_detached(
        || {
            // (Not print!: the test harness captures that.)
            let _ = write!(
                io::stdout(),
                "REF\tDIGEST\n\x1b]0;owned\x07ref\x1b[2J\tsha256:1\n"
            );
            let _ = write!(io::stderr(), "sifrun: \u{9b}31mbad\x08\x7f\r\nno end");
            3
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!(code, Ended::Exited(3));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "REF\tDIGEST\n]0;ownedref[2J\tsha256:1\n"
    );
    assert_eq!(String::from_utf8(err).unwrap(), "sifrun: 31mbad\nno end");
    // 8-bit controls that are not UTF-8 become U+FFFD.
    assert_eq!(printable_line(b"a\x9bb\n"), "a\u{fffd}b\n");
}

/// The child leads a session of its own, so it has no controlling
/// terminal (the kernel's tty_nr is 0), and reads /dev/null; a signal
/// that kills it is its exit status as a shell reports it.
#[test]
fn the_child_has_no_terminal() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_detached(
        || {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            // pid (comm) state ppid pgrp session tty_nr ...
            let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
            let fields: Vec<&str> = after.split(' ').collect();
            let id = |s: nix::sys::stat::FileStat| (s.st_mode & libc::S_IFMT, s.st_rdev);
            let null = nix::sys::stat::stat("/dev/null").map(id).ok();
            let fd0 = nix::sys::stat::fstat(io::stdin().as_fd()).map(id).ok();
            let _ = writeln!(
                io::stdout(),
                "session leader {} tty_nr {} stdin null {}",
                fields.get(3) == Some(&std::process::id().to_string().as_str()),
                fields.get(4).copied().unwrap_or("?"),
                fd0.is_some() && fd0 == null
            );
            0
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    assert_eq!((code, err.as_slice()), (Ended::Exited(0), &b""[..]));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "session leader true tty_nr 0 stdin null true\n"
    );
    let killed = run_detached(
        || {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM);
            0
        },
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .unwrap();
    assert_eq!(killed, Ended::Killed(Signal::SIGTERM));
    assert_eq!(killed.code(), 128 + 15);
}

/// A program the child starts inherits no descriptor of root's but 0-2
/// (one without close-on-exec here included) and runs in `/`, not in
/// root's working directory.
#[test]
fn the_childs_programs_get_no_fd_of_roots_nor_its_directory() {
    let leaked = nix::unistd::dup(io::stderr().as_fd()).unwrap();
    let flags = nix::fcntl::fcntl(&leaked, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_eq!(flags & libc::FD_CLOEXEC, 0);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_detached(
        || {
            let status = std::process::Command::new("/bin/sh")
                .args(["-c", "ls /proc/$$/fd; pwd"])
                .status();
            i32::from(!status.is_ok_and(|s| s.success()))
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    drop(leaked);
    assert_eq!(
        (code, String::from_utf8(err).unwrap()),
        (Ended::Exited(0), String::new())
    );
    assert_eq!(String::from_utf8(out).unwrap(), "0\n1\n2\n/\n");
}

/// Root's stdout closed (`… | head`): the child's status gives way to
/// that error, once the child ended (its own next write failed).
#[test]
fn a_closed_stdout_is_the_error() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let e = run_detached(
        || {
            let first = writeln!(io::stdout(), "line");
            let _ = io::stdout().flush();
            // The parent closes its end after its write failed.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let second = writeln!(io::stdout(), "line").and_then(|()| io::stdout().flush());
            i32::from(first.is_err()) + 2 * i32::from(second.is_ok())
        },
        &mut Closed,
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
}
