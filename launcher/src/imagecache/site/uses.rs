//! Uses of site cache entries found on the user's side of the holder
//! (after it dropped root's real uid: a tag resolved with the user's
//! credentials, an image the cache's account does not convert). Only the
//! cache's account may write `used/`, so before dropping root the holder
//! starts a child that becomes it ([`Uses::start`]); the user's side
//! names the entry it used ([`Uses::record`]) in a fixed form the child
//! parses strictly (`HEX.COMP`, a [`Key`]'s name, in the cache's own
//! compression), and the child records the use as [`Site::note_use`]
//! does, of an entry that is there and trusted ([`Site::lookup`]) only.

use std::fs::File;
use std::io::{Read, Write};

use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::{Account, Site, become_account};
use crate::imagecache::Key;
use crate::syscall::{self, Forked};

/// The longest name read: `<64 hex>.<compression>` and a newline.
const MAX_NAME: u64 = 128;

/// The child that records a use, waiting for the entry's name.
#[derive(Debug)]
pub struct Uses {
    pid: Pid,
    out: Option<File>,
}

impl Uses {
    /// Starts the child, as `site`'s account (`None`: a read-only site
    /// cache, or the child could not start), recording uses of entries
    /// compressed with `compression` (the cache's). The caller has no
    /// other thread and has root's real uid, or is the account.
    pub fn start(site: &Site, compression: &str) -> Option<Uses> {
        let account = site.account.as_ref()?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
        match syscall::fork_single_threaded() {
            Err(e) => {
                tracing::debug!("site cache use recorder: {e}");
                None
            }
            Ok(Forked::Child) => {
                drop(write);
                std::process::exit(child(site, account, compression, File::from(read)))
            }
            Ok(Forked::Parent(pid)) => Some(Uses {
                pid,
                out: Some(File::from(write)),
            }),
        }
    }

    /// Records a use of `key` (by the child) and waits for it.
    pub fn record(mut self, key: &Key) {
        if let Some(mut out) = self.out.take() {
            let _ = out.write_all(format!("{}\n", key.name()).as_bytes());
        }
        self.finish();
    }

    fn finish(&mut self) {
        // The child reads to the end: closing lets it finish.
        self.out = None;
        let _ = waitpid(self.pid, None);
    }
}

impl Drop for Uses {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.finish();
        }
    }
}

fn child(site: &Site, account: &Account, compression: &str, input: File) -> i32 {
    let null = File::options().read(true).write(true).open("/dev/null");
    if let Ok(n) = &null {
        let _ = nix::unistd::dup2_stdin(n);
        let _ = nix::unistd::dup2_stdout(n);
    }
    let _ = nix::unistd::chdir("/");
    if become_account(account).is_err() {
        return 3;
    }
    let mut text = String::new();
    if input.take(MAX_NAME).read_to_string(&mut text).is_err() {
        return 4;
    }
    // Only an entry that is there and trusted: no stamp without one.
    let Some(key) = parse(&text, compression) else {
        return 0;
    };
    if site.lookup(&key, &|_| {}).is_some() {
        site.note_use(&key);
    }
    0
}

/// The entry named by `HEX.COMP\n` (`COMP` being `compression`), nothing
/// else.
fn parse(text: &str, compression: &str) -> Option<Key> {
    let (hex, comp) = text.strip_suffix('\n')?.split_once('.')?;
    if comp != compression {
        return None;
    }
    Key::new(&format!("sha256:{hex}"), comp).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_entrys_name_is_taken() {
        let hex = "ab".repeat(32);
        assert_eq!(
            parse(&format!("{hex}.gzip\n"), "gzip"),
            Key::new(&format!("sha256:{hex}"), "gzip").ok()
        );
        assert_eq!(parse(&format!("{hex}.zstd\n"), "gzip"), None);
        for bad in [
            format!("{hex}.gzip"),
            format!("{hex}.gzip\nmore\n"),
            format!("{hex}.gz/ip\n"),
            format!("../{hex}.gzip\n"),
            format!("{}.gzip\n", &hex[1..]),
            String::new(),
        ] {
            assert_eq!(parse(&bad, "gzip"), None, "{bad:?}");
        }
    }
}
