//! The opener: a child of the privileged holder that has become the job's
//! user for good (its groups, no capabilities, no-new-privileges,
//! non-dumpable) and opens paths for root, sending back descriptors over a
//! socket (`SCM_RIGHTS`). Root never resolves a path the user controls:
//! whatever the opener sends, the user could have opened themselves, and
//! root judges only the object it receives.

use std::ffi::OsStr;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recv,
    recvmsg, send, sendmsg, socketpair,
};
use nix::sys::stat::Mode;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::UserCreds;
use crate::syscall::{self, Forked, to_io};

/// What to open a path as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The image: read-only, never blocking on a FIFO, never a terminal.
    Image,
    /// A bind source: a path handle (`O_PATH`), symlinks followed as the
    /// user's own open would.
    Source,
}

/// The root side of a running opener.
pub(crate) struct Opener {
    sock: OwnedFd,
    pid: Pid,
}

impl Opener {
    /// Forks the opener (the caller is single-threaded).
    pub(crate) fn start(user: &UserCreds) -> io::Result<Opener> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(to_io)?;
        match syscall::fork_single_threaded()? {
            Forked::Child => {
                drop(ours);
                let code = match super::become_user(user) {
                    Ok(()) => serve(&theirs),
                    Err(_) => 1,
                };
                std::process::exit(code)
            }
            Forked::Parent(pid) => {
                drop(theirs);
                Ok(Opener { sock: ours, pid })
            }
        }
    }

    /// Opens `path` as the user.
    pub(crate) fn open(&self, kind: Kind, path: &Path) -> io::Result<OwnedFd> {
        let mut msg = vec![match kind {
            Kind::Image => b'i',
            Kind::Source => b's',
        }];
        msg.extend_from_slice(path.as_os_str().as_bytes());
        if msg.len() > MAX_MESSAGE {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        send(self.sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL).map_err(to_io)?;
        let mut errno = [0u8; 4];
        let mut iov = [IoSliceMut::new(&mut errno)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let got = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(to_io)?;
        let mut fd = None;
        for c in got.cmsgs().map_err(to_io)? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                for raw in fds {
                    let owned = syscall::adopt_received_fd(raw);
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
        }
        if got.bytes == 0 {
            return Err(io::Error::other("the opener ended"));
        }
        let errno = i32::from_le_bytes(errno);
        match (errno, fd) {
            (0, Some(fd)) => Ok(fd),
            (0, None) => Err(io::Error::other("the opener sent no descriptor")),
            (e, _) => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        // The opener ends when its socket closes.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let _ = waitpid(self.pid, None);
    }
}

/// The longest request: a kind byte and a path.
const MAX_MESSAGE: usize = 1 + 4096;

/// The opener's loop, as the user: one request, one answer, until the
/// socket closes.
fn serve(sock: &OwnedFd) -> i32 {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => n,
        };
        let path = Path::new(OsStr::from_bytes(&buf[1..n]));
        let flags = match buf[0] {
            b'i' => OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            _ => OFlag::O_PATH,
        };
        let opened = if path.as_os_str().is_empty() {
            Err(nix::Error::ENOENT)
        } else {
            nix::fcntl::open(path, flags | OFlag::O_CLOEXEC, Mode::empty())
        };
        let sent = match opened {
            Ok(fd) => {
                let fds = [fd.as_raw_fd()];
                let iov = [IoSlice::new(&[0u8; 4])];
                sendmsg::<()>(
                    sock.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
            }
            Err(e) => send(
                sock.as_raw_fd(),
                &(e as i32).to_le_bytes(),
                MsgFlags::MSG_NOSIGNAL,
            ),
        };
        if sent.is_err() {
            return 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opener_opens_as_the_user_and_reports_errors() {
        // Run as whoever runs the tests: becoming oneself needs no privilege.
        let me = UserCreds::current();
        let o = Opener::start(&me).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        let fd = o.open(Kind::Image, &f).unwrap();
        let mut s = String::new();
        use std::io::Read;
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let e = o
            .open(Kind::Source, &dir.path().join("missing"))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let d = o.open(Kind::Source, dir.path()).unwrap();
        assert!(
            nix::sys::stat::fstat(&d).unwrap().st_mode & libc::S_IFMT == libc::S_IFDIR,
            "a path handle of the directory"
        );
        let long = Path::new("/").join("x".repeat(5000));
        assert!(o.open(Kind::Source, &long).is_err());
    }

    /// Started by root (CI), the opener is the user: what root alone may
    /// reach, it may not.
    #[test]
    fn the_opener_has_only_the_users_rights() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("root-only");
        std::fs::create_dir(&secret).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(secret.join("f"), b"x").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let user = UserCreds {
            uid: 4242,
            gid: 4242,
            groups: vec![],
        };
        let o = Opener::start(&user).unwrap();
        for kind in [Kind::Image, Kind::Source] {
            let e = o.open(kind, &secret.join("f")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{kind:?}");
        }
        // What the user may reach, it opens.
        o.open(Kind::Source, dir.path()).unwrap();
    }
}
