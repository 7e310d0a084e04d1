//! Reading a blob while it downloads: the downloader appends to a file and
//! announces how many bytes it holds; a [`Follower`] reads the same file
//! up to that count and waits for more, so that a layer is decompressed
//! and indexed while it arrives (from the page cache, never from the
//! network twice). A download that starts over (a retry without a range)
//! or fails ends the follower with an error; the caller then indexes the
//! finished file instead.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Done,
    Failed,
    Restarted,
}

#[derive(Debug)]
struct Inner {
    len: u64,
    state: State,
}

/// What the downloader tells its followers.
#[derive(Debug)]
pub(crate) struct Feed {
    inner: Mutex<Inner>,
    grew: Condvar,
}

impl Feed {
    pub(crate) fn new() -> Arc<Feed> {
        Arc::new(Feed {
            inner: Mutex::new(Inner {
                len: 0,
                state: State::Running,
            }),
            grew: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The file now holds `len` bytes (fewer than before: it started over).
    pub(crate) fn grow(&self, len: u64) {
        let mut i = self.lock();
        if len < i.len && i.state == State::Running {
            i.state = State::Restarted;
        }
        i.len = i.len.max(len);
        self.grew.notify_all();
    }

    /// The download ended: complete and verified (`ok`), or not.
    pub(crate) fn end(&self, ok: bool) {
        let mut i = self.lock();
        if i.state == State::Running {
            i.state = if ok { State::Done } else { State::Failed };
        }
        self.grew.notify_all();
    }

    /// Whether the download started over (a follower's error then says
    /// nothing about the blob).
    pub(crate) fn restarted(&self) -> bool {
        self.lock().state == State::Restarted
    }
}

/// Reads a file as it grows (see the module's comment).
pub(crate) struct Follower {
    file: File,
    feed: Arc<Feed>,
    pos: u64,
}

impl Follower {
    pub(crate) fn new(file: File, feed: Arc<Feed>) -> Follower {
        Follower { file, feed, pos: 0 }
    }
}

impl Read for Follower {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut i = self.feed.lock();
        loop {
            match i.state {
                State::Failed => return Err(io::Error::other("the download failed")),
                State::Restarted => return Err(io::Error::other("the download started over")),
                State::Running | State::Done if i.len > self.pos => {
                    let want = (i.len - self.pos).min(buf.len() as u64) as usize;
                    drop(i);
                    let n = self.file.read_at(&mut buf[..want], self.pos)?;
                    self.pos += n as u64;
                    return Ok(n);
                }
                State::Done => return Ok(0),
                State::Running => {
                    i = self
                        .feed
                        .grew
                        .wait_timeout(i, Duration::from_millis(200))
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The follower reads what the writer announced, waits for the rest,
    /// and sees the end; a restart or a failure ends it with an error.
    #[test]
    fn follows_a_growing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut w = File::create(&path).unwrap();
        let feed = Feed::new();
        let reader = Follower::new(File::open(&path).unwrap(), feed.clone());
        let t = std::thread::spawn(move || {
            let mut r = reader;
            let mut v = Vec::new();
            r.read_to_end(&mut v).map(|_| v)
        });
        for chunk in [&b"abc"[..], b"defg", b"h"] {
            w.write_all(chunk).unwrap();
            let len = w.metadata().unwrap().len();
            feed.grow(len);
            std::thread::sleep(Duration::from_millis(30));
        }
        // Bytes written but not announced are not read.
        w.write_all(b"unannounced").unwrap();
        feed.end(true);
        assert_eq!(t.join().unwrap().unwrap(), b"abcdefgh");

        for (ok, restart, why) in [
            (false, false, "the download failed"),
            (true, true, "the download started over"),
        ] {
            let feed = Feed::new();
            feed.grow(5);
            if restart {
                feed.grow(2);
                assert!(feed.restarted());
            }
            feed.end(ok);
            let mut r = Follower::new(File::open(&path).unwrap(), feed);
            let e = r.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(e.to_string(), why);
        }
    }
}
