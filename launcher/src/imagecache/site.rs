//! The site cache (oci-design.md §6.5): the admin's `[images] cache_dir`,
//! shared by every user, so writable by none of them. Its entries count
//! only when they, and every directory above them, belong to root or to
//! the cache's account (`[images] cache_user`) and nobody else may write
//! them (the checks of [`slurm_conf::trusted`]); anything else is ignored
//! with one line. Conversions into it run in a child of the holder that
//! has become that account for good ([`as_account`]): no other groups, no
//! capabilities, no-new-privileges, not dumpable, no core files.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::wait::{WaitStatus, waitpid};

use super::{Cache, CacheError, Key};
use crate::syscall::{self, Forked, to_io};

/// How often a site cache entry's last use is recorded.
const USE_STAMP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The account that owns a site cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Its name (for messages).
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

impl Account {
    /// The account `name` from the password database.
    pub fn by_name(name: &str) -> Result<Account, CacheError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) if !u.uid.is_root() => Ok(Account {
                name: name.to_owned(),
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
            }),
            Ok(Some(_)) => Err(CacheError::Convert(format!(
                "images.cache_user: {name} is root"
            ))),
            Ok(None) => Err(CacheError::Convert(format!(
                "images.cache_user: no account {name}"
            ))),
            Err(e) => Err(CacheError::Convert(format!(
                "images.cache_user: {name}: {e}"
            ))),
        }
    }
}

/// The owner of the site cache `dir` when it is not root: whom root's
/// `sifrun cache … --site DIR` becomes before reading anything there. It
/// must own `DIR/v1` too (when there is one), have an entry in the
/// password database (its name and primary group come from there), and a
/// primary group other than root's: root never becomes an account it
/// cannot fully name, nor keeps group root.
pub fn owner_of(dir: &Path) -> Result<Option<Account>, CacheError> {
    let m = std::fs::metadata(dir).map_err(|e| super::io_err(dir, e))?;
    let v1 = dir.join("v1");
    let v1_uid = match std::fs::symlink_metadata(&v1) {
        Ok(v) => Some(v.uid()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(super::io_err(&v1, e)),
    };
    let user = match m.uid() {
        0 => None,
        uid => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .map_err(|e| CacheError::SiteOwner {
                dir: dir.to_owned(),
                reason: format!("the account of its owner (uid {uid}): {e}"),
            })?
            .map(|u| (u.name, u.gid.as_raw())),
    };
    owner_from(dir, m.uid(), v1_uid, user)
}

/// Checks the site cache `dir` (absolute) before root's `sifrun cache …
/// --site DIR` uses it: a directory, not a symlink; every directory above
/// it root's and writable by no one else (no other user can put another
/// directory there: `slurm_conf::trusted::check_parents`); it and its `v1`
/// (when there is one, a directory too) writable by their owner alone
/// (nobody else can swap what is in them while root's command works).
pub fn check_site_dir(dir: &Path) -> Result<(), CacheError> {
    check_site_dir_for(dir, 0)
}

/// [`check_site_dir`], with `trusted` (root or, in tests, the user) as
/// the owner the directories above `dir` may have besides root.
fn check_site_dir_for(dir: &Path, trusted: u32) -> Result<(), CacheError> {
    let refuse = |reason: String| CacheError::SiteOwner {
        dir: dir.to_owned(),
        reason,
    };
    for (path, what) in [(dir.to_owned(), "it"), (dir.join("v1"), "its v1")] {
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && what != "it" => continue,
            Err(e) => return Err(super::io_err(&path, e)),
        };
        if m.file_type().is_symlink() {
            return Err(refuse(format!(
                "{what} is a symlink: name the directory itself (no link), and make its v1 a directory"
            )));
        }
        if !m.file_type().is_dir() {
            return Err(refuse(format!("{what} is not a directory")));
        }
        if m.mode() & 0o022 != 0 {
            return Err(refuse(format!(
                "{what} has mode {:04o}, which lets others write it: chmod go-w {}",
                m.mode() & 0o7777,
                path.display()
            )));
        }
    }
    slurm_conf::trusted::check_parents(dir, trusted).map_err(|e| {
        refuse(format!(
            "the directory above it {e}: keep the cache under directories only root may write"
        ))
    })
}

/// [`owner_of`]'s rules: `dir` is owned by `uid`, its `v1` by `v1_uid`
/// (if it exists), and `user` is `uid`'s name and primary gid from the
/// password database (if it has an entry).
fn owner_from(
    dir: &Path,
    uid: u32,
    v1_uid: Option<u32>,
    user: Option<(String, u32)>,
) -> Result<Option<Account>, CacheError> {
    let refuse = |reason: String| CacheError::SiteOwner {
        dir: dir.to_owned(),
        reason,
    };
    if let Some(v1) = v1_uid.filter(|&v1| v1 != uid) {
        return Err(refuse(format!(
            "owned by uid {uid} but its v1 by uid {v1}: both must belong to the \
             [images] cache_user account (chown -R it)"
        )));
    }
    if uid == 0 {
        return Ok(None);
    }
    let Some((name, gid)) = user else {
        return Err(refuse(format!(
            "owned by uid {uid}, which has no account: chown -R it to the [images] \
             cache_user account"
        )));
    };
    if gid == 0 {
        return Err(refuse(format!(
            "owned by {name}, whose primary group is root (gid 0): give {name} a group \
             of its own"
        )));
    }
    Ok(Some(Account { name, uid, gid }))
}

/// Becomes the site cache's owner `account` for good (root's `sifrun cache
/// … --site`: no capabilities, no supplementary groups).
pub fn become_owner(account: &Account) -> Result<(), CacheError> {
    become_account(account)
        .map_err(|e| CacheError::Convert(format!("cannot become {}: {e}", account.name)))
}

/// A site cache and who may own its entries.
#[derive(Clone, Debug)]
pub struct Site {
    /// The cache (its directories made 0755: every user reads them).
    pub cache: Cache,
    /// The account that fills it; `None`: read-only for sifrun (root's
    /// entries only, put there by an admin).
    pub account: Option<Account>,
}

impl Site {
    /// The site cache at `dir`, owned by `account` (or root only).
    pub fn new(dir: PathBuf, account: Option<Account>) -> Site {
        let mut cache = Cache::new(dir);
        cache.shared = true;
        Site { cache, account }
    }

    /// Who may own entries besides root.
    fn owner(&self) -> u32 {
        self.account.as_ref().map_or(0, |a| a.uid)
    }

    /// The trusted entry `key`, if there is one; an entry that is there
    /// but not trusted is ignored and `say` gets why.
    pub fn lookup(&self, key: &Key, say: &dyn Fn(&str)) -> Option<PathBuf> {
        let path = self.cache.entry_path(key);
        if std::fs::symlink_metadata(&path).is_err() {
            return None;
        }
        match self.trusted(&path) {
            Ok(()) => Some(path),
            Err(why) => {
                say(&format!("site cache entry ignored: {why}"));
                None
            }
        }
    }

    /// Records a use of `key` as the cache's account (the only one who
    /// may write `used/`), at most once an hour per entry: directly when
    /// this process is the account, else in a child that becomes it (the
    /// holder, before it drops root's real uid). Read-only site caches
    /// record nothing.
    pub fn note_use(&self, key: &Key) {
        let Some(account) = &self.account else { return };
        let stamp = self.cache.dir("used").join(key.name());
        let fresh = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() < USE_STAMP_EVERY);
        if fresh {
            return;
        }
        if nix::unistd::geteuid().as_raw() == account.uid {
            self.cache.mark_used(key);
        } else if nix::unistd::getuid().is_root() {
            let _ = as_account(account, || {
                self.cache.mark_used(key);
                Ok(PathBuf::new())
            });
        }
    }

    /// Whether `path` (an entry of this cache) may be used: a regular
    /// file, it and its directories root's or the account's, writable by
    /// no one else.
    pub fn trusted(&self, path: &Path) -> Result<(), String> {
        let owner = self.owner();
        let who = self
            .account
            .as_ref()
            .map_or_else(|| "root".to_owned(), |a| format!("root or {}", a.name));
        let meta =
            std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.file_type().is_file() {
            return Err(format!("{}: not a regular file", path.display()));
        }
        if meta.uid() != 0 && meta.uid() != owner {
            return Err(format!(
                "{}: owned by uid {}, must be owned by {who}",
                path.display(),
                meta.uid()
            ));
        }
        slurm_conf::trusted::check_file(path, owner).map_err(|e| {
            match e.reason.strip_suffix("must be owned by root") {
                Some(r) => format!("{}: {r}must be owned by {who}", e.path.display()),
                None => e.to_string(),
            }
        })
    }
}

/// Runs `work` in a child that has become `account` for good (see
/// [`become_account`]), and returns what it returned. The caller has no
/// other thread (the holder, before its image server starts), and has
/// root's real uid or is `account` already.
pub fn as_account(
    account: &Account,
    work: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<PathBuf, String> {
    as_account_relaying(account, |_| work(), &mut |_| {})
}

/// [`as_account`], with the child's progress: `work` gets a
/// [`relay::Relay`] to report to, and `rose` hears each rise of its count
/// while the child works (see [`relay`]).
pub fn as_account_relaying(
    account: &Account,
    work: impl FnOnce(&Arc<relay::Relay>) -> Result<PathBuf, String>,
    rose: &mut dyn FnMut(u64),
) -> Result<PathBuf, String> {
    let start = |e: nix::Error| format!("starting the site cache's converter: {e}");
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(start)?;
    let (p_read, p_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(start)?;
    let parent = nix::unistd::getpid();
    let started = std::time::Instant::now();
    let pid = match syscall::fork_single_threaded() {
        Err(e) => return Err(format!("starting the site cache's converter: {e}")),
        Ok(Forked::Child) => {
            drop(read);
            drop(p_read);
            let relay = Arc::new(relay::Relay::new(p_write));
            std::process::exit(child(account, parent, || work(&relay), write))
        }
        Ok(Forked::Parent(pid)) => pid,
    };
    drop(write);
    drop(p_write);
    // Until the child exits (its answer is small: the pipe holds it).
    relay::follow(p_read, rose);
    let mut text = String::new();
    let read_ok = File::from(read)
        .take(64 << 10)
        .read_to_string(&mut text)
        .is_ok();
    let status = waitpid(pid, None);
    match (status, read_ok) {
        (Ok(WaitStatus::Exited(_, 0)), true) => match text.split_once('\n') {
            Some(("ok", path)) => Ok(PathBuf::from(path)),
            Some(("error", message)) => Err(message.to_owned()),
            _ => Err("the site cache's converter gave no answer".into()),
        },
        (Ok(WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)), _)
            if started.elapsed() >= MAX_CONVERSION =>
        {
            Err(format!(
                "the site cache's conversion took more than {} min",
                MAX_CONVERSION.as_secs() / 60
            ))
        }
        (Ok(s), _) => Err(format!("the site cache's converter failed ({s:?})")),
        (Err(e), _) => Err(format!("the site cache's converter: {e}")),
    }
}

fn child(
    account: &Account,
    parent: nix::unistd::Pid,
    work: impl FnOnce() -> Result<PathBuf, String>,
    out: OwnedFd,
) -> i32 {
    let answer = match detach()
        .map_err(|e| format!("detaching: {e}"))
        .and_then(|()| {
            become_account(account).map_err(|e| format!("cannot become {}: {e}", account.name))
        }) {
        Err(e) => format!("error\n{e}"),
        // PDEATHSIG is set (in become_account): a parent that died before
        // it was is seen here, and the child stops.
        Ok(()) if nix::unistd::getppid() != parent => return 5,
        Ok(()) => match out.try_clone().map(die_with_reader) {
            Err(e) => format!("error\nwatching the holder: {e}"),
            Ok(()) => match work() {
                Ok(p) => format!("ok\n{}", p.display()),
                Err(e) => format!("error\n{e}"),
            },
        },
    };
    match File::from(out).write_all(capped(answer).as_bytes()) {
        Ok(()) => 0,
        Err(_) => 4,
    }
}

/// The longest answer the child gives (an error quoting a long reference
/// is cut): the holder reads it only once the child has ended, so it must
/// fit in the pipe.
const MAX_ANSWER: usize = 4 << 10;

/// The longest a site cache conversion may take, progress or not: a
/// registry that trickles bytes would otherwise hold the step in its
/// set-up, and the conversion's lock, until the job's time limit. The
/// step then converts into the user's cache.
pub const MAX_CONVERSION: std::time::Duration = std::time::Duration::from_secs(3600);

/// `answer` cut to [`MAX_ANSWER`] bytes, at a character boundary.
fn capped(mut answer: String) -> String {
    if answer.len() > MAX_ANSWER {
        let mut end = MAX_ANSWER;
        while !answer.is_char_boundary(end) {
            end -= 1;
        }
        answer.truncate(end);
    }
    answer
}

/// Ends this process (SIGKILL to itself) as soon as nobody can read
/// `answer` any more (the holder died), or after [`MAX_CONVERSION`].
/// PDEATHSIG alone does not cover the first: the kernel sends the
/// parent-death signal with the dying parent's credentials, and the
/// holder (the user's effective uid, no capabilities in effect) may not
/// signal the cache's account, so a holder killed at setup_timeout left
/// its converter running. A watcher thread, started after the identity
/// change.
fn die_with_reader(answer: OwnedFd) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + MAX_CONVERSION;
    std::thread::spawn(move || {
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            if ms == 0 {
                break;
            }
            // A pipe's write end polls POLLERR once its read end is closed.
            let mut fds = [PollFd::new(answer.as_fd(), PollFlags::empty())];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
                Ok(_) if fds[0].revents().is_some_and(|r| r.is_empty()) => continue,
                _ => break,
            }
        }
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    });
}

/// Lets go of what the converter child inherited from the holder: its
/// stdin (the request socket) and stdout (the protocol pipe to
/// slurmstepd) become /dev/null, its working directory `/`. Its answer
/// goes back through its own pipe; stderr stays, for its lines.
fn detach() -> std::io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    nix::unistd::dup2_stdin(&null).map_err(to_io)?;
    nix::unistd::dup2_stdout(&null).map_err(to_io)?;
    nix::unistd::chdir("/").map_err(to_io)
}

/// Becomes `account` for good: real, effective and saved uid and gid, no
/// supplementary groups (so no capabilities are left), then
/// no-new-privileges, not dumpable, no core files, killed with its
/// parent. From root's real uid (the holder: slurmstepd's real uid 0 with
/// the job user's effective uid), root's effective uid is taken back
/// first, as setting the ids needs it.
pub(crate) fn become_account(account: &Account) -> std::io::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    use nix::unistd::{Gid, Uid, getresuid, setgroups, setresgid, setresuid};
    let (u, g) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    let ids = getresuid().map_err(to_io)?;
    if ids.real.is_root() && !ids.effective.is_root() {
        setresuid(ids.real, Uid::from_raw(0), ids.saved).map_err(to_io)?;
    }
    if nix::unistd::geteuid().is_root() {
        setgroups(&[]).map_err(to_io)?;
        setresgid(g, g, g).map_err(to_io)?;
        setresuid(u, u, u).map_err(to_io)?;
    }
    let now = getresuid().map_err(to_io)?;
    if [now.real, now.effective, now.saved] != [u, u, u] {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("uids are {now:?}, not {}", account.uid),
        ));
    }
    // After the identity change, which clears it.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    nix::sys::prctl::set_no_new_privs().map_err(to_io)?;
    nix::sys::prctl::set_dumpable(false).map_err(to_io)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(to_io)?;
    // Entries and directories readable by every user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    Ok(())
}

pub mod limits;
pub mod relay;
#[cfg(test)]
mod tests;
pub mod uses;
