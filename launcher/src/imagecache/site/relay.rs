//! The site cache child's progress, relayed to the holder (which still
//! has root's real uid) over a pipe in a fixed form: records of exactly 8
//! bytes, each a count (little-endian) of work done so far — bytes
//! downloaded, written or seen written by the conversion waited for, plus
//! one for each change of state (a phase whose count falls starts over:
//! another owner of the conversion waited for). Root reads nothing else
//! from the cache account's process: it takes a record only when its
//! count is above the last, and says in its own words that the conversion moves. When the
//! count stops rising, nothing is relayed and the plugin's set-up timeout
//! runs out as it would without the relay.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use crate::convert::ProgressSink;

/// The size of one record.
pub const RECORD: usize = 8;

/// The phase of a line without a count (a change of state: converting,
/// waiting for another process): one unit of work.
pub const LINE_PHASE: &str = "cache";

/// What the child has reported: the count, and the last count of each
/// phase (a phase counts from 0).
#[derive(Debug, Default)]
struct State {
    count: u64,
    phases: BTreeMap<String, u64>,
}

impl State {
    /// Takes a report; whether the count rose.
    fn take(&mut self, phase: &str, done: u64, total: u64) -> bool {
        let before = self.count;
        if phase == LINE_PHASE || (done == 0 && total == 0) {
            self.count = self.count.saturating_add(1);
        } else {
            let last = self.phases.entry(phase.to_owned()).or_insert(0);
            // A lower count is the phase starting over (another owner of
            // the conversion waited for): it counts from 0 again.
            let rise = if done < *last { done } else { done - *last };
            self.count = self.count.saturating_add(rise);
            *last = done;
        }
        self.count > before
    }
}

/// The child's end: a progress sink that writes a record whenever the
/// count rises. The pipe does not block: a record that does not fit is
/// dropped (the next one carries the count).
pub struct Relay {
    out: Mutex<(File, State)>,
}

impl Relay {
    /// The relay writing to `out` (the pipe's write end).
    pub fn new(out: OwnedFd) -> Relay {
        let _ = nix::fcntl::fcntl(
            &out,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        Relay {
            out: Mutex::new((File::from(out), State::default())),
        }
    }

    /// Reports `done` of `total` in `phase` (see [`ProgressSink`]).
    pub fn report(&self, phase: &str, done: u64, total: u64) {
        let Ok(mut g) = self.out.lock() else { return };
        let (file, state) = &mut *g;
        if state.take(phase, done, total) {
            let _ = file.write_all(&state.count.to_le_bytes());
        }
    }

    /// The relay as a progress sink.
    pub fn sink(self: &Arc<Self>) -> ProgressSink {
        let me = Arc::clone(self);
        ProgressSink(Arc::new(move |phase: &str, done, total, _line: &str| {
            me.report(phase, done, total);
        }))
    }
}

/// The holder's end: reads records from `input` until its end (the child
/// exited), calling `rose` with each count above the last. Any other
/// bytes end the reading: a short record at the end is dropped.
pub fn follow(input: OwnedFd, rose: &mut dyn FnMut(u64)) {
    let mut input = File::from(input);
    let mut last = 0u64;
    let mut buf = [0u8; RECORD];
    loop {
        match input.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
        let n = u64::from_le_bytes(buf);
        if n > last {
            last = n;
            rose(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_rises_with_bytes_per_phase_and_with_lines() {
        let mut s = State::default();
        assert!(s.take("download", 100, 1000));
        assert_eq!(s.count, 100);
        // The same report again: no progress.
        assert!(!s.take("download", 100, 1000));
        assert!(s.take("download", 300, 1000));
        assert_eq!(s.count, 300);
        // A new phase counts from 0.
        assert!(s.take("convert", 10, 0));
        assert_eq!(s.count, 310);
        // A line is one unit.
        assert!(s.take(LINE_PHASE, 0, 0));
        assert_eq!(s.count, 311);
    }

    /// The conversion waited for changes owner: the new one's work
    /// directory starts small, and its growth is progress at once, not
    /// only once it passes the old owner's bytes.
    #[test]
    fn a_lower_count_in_a_phase_is_a_restart() {
        let mut s = State::default();
        assert!(s.take("wait", 5000, 0));
        assert!(s.take("wait", 40, 0));
        assert_eq!(s.count, 5040);
        assert!(s.take("wait", 90, 0));
        assert_eq!(s.count, 5090);
        assert!(!s.take("wait", 90, 0));
        // Down to nothing: no rise yet, but the next bytes count.
        assert!(!s.take("wait", 0, 1));
        assert!(s.take("wait", 1, 0));
        assert_eq!(s.count, 5091);
    }

    #[test]
    fn the_holder_takes_rising_counts_only_and_stops_at_junk() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = File::from(w);
        for n in [5u64, 5, 3, 9] {
            w.write_all(&n.to_le_bytes()).unwrap();
        }
        w.write_all(b"abc").unwrap();
        drop(w);
        let mut got = Vec::new();
        follow(r, &mut |n| got.push(n));
        assert_eq!(got, [5, 9]);
    }

    #[test]
    fn the_child_writes_a_record_when_the_count_rises() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let relay = Arc::new(Relay::new(w));
        let sink = relay.sink();
        (sink.0)("download", 7, 10, "rich text the holder never reads");
        (sink.0)("download", 7, 10, "again");
        (sink.0)(LINE_PHASE, 0, 0, "waiting");
        drop(sink);
        drop(relay);
        let mut got = Vec::new();
        follow(r, &mut |n| got.push(n));
        assert_eq!(got, [7, 8]);
    }
}
