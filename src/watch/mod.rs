//! watch: finds the files of the drop folder that are ready to be claimed.
//!
//! Watcher events are hints, not truth: every decision is made from the
//! file's own state at the time. A file is ready once it was closed after
//! writing and its size and mtime held still for `settle`, or as soon as it
//! arrived by rename (complete as it appears, SPEC §4); a file found by a
//! scan with no event seen settles by size and mtime and by a check that no
//! process holds it open for writing. Only the top level of the folder is
//! watched (`events.rs`: the watcher, its events as [`Hint`]s). This module
//! never opens a proof file and never moves one: it only names candidates.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod events;

pub use events::{start, Hint};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
struct Candidate {
    size: u64,
    mtime: (i64, i64),
    still_since: Instant,
    writer: Writer,
    /// Its place in [`Readiness::rounds`] (a name seen again after it was
    /// forgotten gets a new one; the old place is skipped).
    turn: u64,
}

/// How many candidates one call of [`Readiness::ready`] looks at: a stat
/// each (and a path resolution for scanned files), so that a backlog of
/// 100,000 files is looked through over many ticks, never in one that
/// would stall the loop and its watchdog pings.
const LOOKS_PER_CALL: usize = 2048;

/// What one look at a candidate found.
enum Look {
    Gone,
    Waiting,
    Ready,
}

/// What the events told about a file's writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// No write or close seen since the file appeared (or since lost events).
    Unknown,
    /// A write was seen and no close after it.
    Writing,
    /// Closed after writing since the last write: ready once it held still
    /// for `settle`.
    Done,
    /// Renamed into the folder, and not seen to change since: complete as
    /// it appears (SPEC §4), so ready at its first look.
    Arrived,
}

/// The size of a candidate not looked at yet.
const UNSEEN: u64 = u64::MAX;

/// Decides which files are ready. Pure but for `stat` (and `/proc` for the
/// open-for-writing check), so it is driven by the caller's clock.
#[derive(Debug)]
pub struct Readiness {
    dir: PathBuf,
    settle: Duration,
    candidates: HashMap<String, Candidate>,
    /// The candidates in the order they are looked at, round after round.
    rounds: VecDeque<(String, u64)>,
    next_turn: u64,
    /// Names already handed out or left in place on purpose, with the state
    /// they had: reconsidered only if they change.
    parked: HashMap<String, (u64, (i64, i64))>,
    ignored: HashSet<String>,
}

impl Readiness {
    pub fn new(dir: &Path, settle: Duration) -> Readiness {
        Readiness {
            dir: dir.to_path_buf(),
            settle,
            candidates: HashMap::new(),
            rounds: VecDeque::new(),
            next_turn: 0,
            parked: HashMap::new(),
            ignored: HashSet::new(),
        }
    }

    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    pub fn waiting(&self) -> usize {
        self.candidates.len()
    }

    pub fn observe(&mut self, hint: Hint, now: Instant) {
        let (name, writer) = match hint {
            Hint::Created(name) => (name, Some(Writer::Unknown)),
            Hint::Touched(name) => (name, None),
            Hint::Written(name) => (name, Some(Writer::Writing)),
            Hint::Closed(name) => (name, Some(Writer::Done)),
            Hint::Arrived(name) => (name, Some(Writer::Arrived)),
            Hint::Rescan => return,
        };
        self.parked.remove(&name);
        let candidate = self.candidate(name, now);
        if let Some(writer) = writer {
            candidate.writer = writer;
        }
        if writer == Some(Writer::Arrived) {
            // Its next look is its first as this file.
            candidate.size = UNSEEN;
        }
        candidate.still_since = now;
    }

    fn candidate(&mut self, name: String, now: Instant) -> &mut Candidate {
        match self.candidates.entry(name) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let turn = self.next_turn;
                self.next_turn += 1;
                self.rounds.push_back((entry.key().clone(), turn));
                entry.insert(Candidate {
                    size: UNSEEN,
                    mtime: (0, 0),
                    still_since: now,
                    writer: Writer::Unknown,
                    turn,
                })
            }
        }
    }

    /// Lists the folder: files no event told us about become candidates.
    /// After lost events (`full`), what we believed about writers is dropped.
    pub fn scan(&mut self, now: Instant, full: bool) -> Result<(), WatchError> {
        let names = list_names(&self.dir)?;
        self.merge_listing(names, now, full);
        Ok(())
    }

    /// The second half of [`Readiness::scan`], for a listing made elsewhere
    /// (the daemon lists on a blocking thread: 100,000 names take a while).
    pub fn merge_listing(&mut self, names: Vec<std::ffi::OsString>, now: Instant, full: bool) {
        if full {
            for candidate in self.candidates.values_mut() {
                if candidate.writer == Writer::Writing {
                    candidate.writer = Writer::Unknown;
                }
            }
        }
        for name in names {
            let name = match name.into_string() {
                Ok(name) => name,
                Err(raw) => {
                    let shown = raw.to_string_lossy().into_owned();
                    if self.ignored.insert(shown.clone()) {
                        tracing::error!(file = %shown, "the file name is not valid UTF-8: never opened; rename it to import it");
                    }
                    continue;
                }
            };
            if self.candidates.contains_key(&name) {
                continue;
            }
            if let Some(&(size, mtime)) = self.parked.get(&name) {
                match fs::symlink_metadata(self.dir.join(&name)) {
                    Ok(meta) if meta.size() == size && mtime_of(&meta) == mtime => continue,
                    _ => {
                        self.parked.remove(&name);
                    }
                }
            }
            self.candidate(name, now);
        }
        // Tests wait for these lines to know that the daemon had its chances.
        tracing::debug!(full, "drop folder scanned");
    }

    /// Names that are ready now, among the next [`LOOKS_PER_CALL`]
    /// candidates in turn. `skip` says a name is never to be opened
    /// (ignored patterns); those are dropped and remembered.
    pub fn ready(&mut self, now: Instant, skip: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut ready = Vec::new();
        // One walk of /proc for all the files that need it, not one each.
        let mut writing: Option<HashSet<std::ffi::OsString>> = None;
        let mut looks = self.candidates.len().min(LOOKS_PER_CALL);
        while looks > 0 {
            let Some((name, turn)) = self.rounds.pop_front() else {
                break;
            };
            let Some(candidate) = self.candidates.get_mut(&name) else {
                continue; // taken or gone since: its place lapses
            };
            if candidate.turn != turn {
                continue;
            }
            looks -= 1;
            match self.look_or_drop(&name, now, skip, &mut writing) {
                Look::Gone => {}
                Look::Ready => {
                    ready.push(name.clone());
                    self.rounds.push_back((name, turn));
                }
                Look::Waiting => self.rounds.push_back((name, turn)),
            }
        }
        ready.sort();
        ready
    }

    /// One candidate's state now.
    fn look(
        &mut self,
        name: &str,
        now: Instant,
        skip: &dyn Fn(&str) -> bool,
        writing: &mut Option<HashSet<std::ffi::OsString>>,
    ) -> Look {
        if skip(name) {
            if self.ignored.insert(name.to_string()) {
                tracing::debug!(file = %name, "ignored name: never opened");
            }
            return Look::Gone;
        }
        let path = self.dir.join(name);
        let Ok(meta) = fs::symlink_metadata(&path) else {
            return Look::Gone;
        };
        if !meta.file_type().is_file() {
            if self.ignored.insert(name.to_string()) {
                tracing::warn!(file = %name, "not a regular file (link, folder, FIFO, socket or device): never opened");
            }
            return Look::Gone;
        }
        let Some(candidate) = self.candidates.get_mut(name) else {
            return Look::Gone;
        };
        let mtime = mtime_of(&meta);
        if meta.size() != candidate.size || mtime != candidate.mtime {
            let first_look = candidate.size == UNSEEN;
            candidate.size = meta.size();
            candidate.mtime = mtime;
            candidate.still_since = now;
            if !(first_look && candidate.writer == Writer::Arrived) {
                if candidate.writer == Writer::Arrived {
                    // Changed since it arrived: it settles like a closed file.
                    candidate.writer = Writer::Done;
                }
                return Look::Waiting;
            }
        } else if candidate.writer != Writer::Arrived
            && now.duration_since(candidate.still_since) < self.settle
        {
            return Look::Waiting;
        }
        // With no close seen, an empty file is someone's upload that has
        // not written yet; a file with content and no writer in sight is
        // complete (found by a scan, or created whole by a link).
        let complete = match candidate.writer {
            Writer::Done | Writer::Arrived => true,
            Writer::Writing => false,
            Writer::Unknown => {
                // A regular file (not a link) directly in the folder: its
                // name is the name the open descriptors point to.
                meta.size() > 0
                    && !writing
                        .get_or_insert_with(|| files_open_for_writing(&self.dir))
                        .contains(std::ffi::OsStr::new(name))
            }
        };
        if complete {
            Look::Ready
        } else {
            Look::Waiting
        }
    }

    /// Whether the candidate `name` is ready now, looked at alone: an
    /// arrival is taken as its event comes, not at the next tick (a
    /// tick's wait would be a timer on the path of every renamed file).
    pub fn ready_now(&mut self, name: &str, now: Instant, skip: &dyn Fn(&str) -> bool) -> bool {
        self.candidates.contains_key(name)
            && matches!(self.look_or_drop(name, now, skip, &mut None), Look::Ready)
    }

    /// [`Readiness::look`], a candidate found gone dropped.
    fn look_or_drop(
        &mut self,
        name: &str,
        now: Instant,
        skip: &dyn Fn(&str) -> bool,
        writing: &mut Option<HashSet<std::ffi::OsString>>,
    ) -> Look {
        let look = self.look(name, now, skip, writing);
        if matches!(look, Look::Gone) {
            self.candidates.remove(name);
        }
        look
    }

    /// The caller took the name (claimed it, or decided to leave it): forget
    /// it until the file changes.
    pub fn park(&mut self, name: &str) {
        if let Some(candidate) = self.candidates.remove(name) {
            self.parked
                .insert(name.to_string(), (candidate.size, candidate.mtime));
        }
    }

    /// The config changed: names left in place are considered again at the
    /// next scan.
    pub fn reconsider_parked(&mut self) {
        self.parked.clear();
    }

    /// The caller took the name away (claimed): forget it entirely.
    pub fn forget(&mut self, name: &str) {
        self.candidates.remove(name);
        self.parked.remove(name);
    }
}

/// The names in the drop folder (blocking: one `getdents` walk).
pub fn list_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, WatchError> {
    let entries = fs::read_dir(dir).map_err(|source| WatchError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(entries.flatten().map(|entry| entry.file_name()).collect())
}

fn mtime_of(meta: &fs::Metadata) -> (i64, i64) {
    (meta.mtime(), meta.mtime_nsec())
}

/// The files in `dir` that a process we may inspect holds open for
/// writing, in one walk of `/proc` (Linux). Processes we may not inspect
/// are not counted: the close-after-write event covers those.
fn files_open_for_writing(dir: &Path) -> HashSet<std::ffi::OsString> {
    let mut found = HashSet::new();
    let Ok(dir) = fs::canonicalize(dir) else {
        return found;
    };
    let Ok(processes) = fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.flatten() {
        let pid = process.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(name) = target
                .file_name()
                .filter(|_| target.parent() == Some(dir.as_path()))
            else {
                continue;
            };
            if found.contains(name) {
                continue;
            }
            let info = process.path().join("fdinfo").join(fd.file_name());
            let Ok(text) = fs::read_to_string(info) else {
                continue;
            };
            let flags = text
                .lines()
                .find_map(|line| line.strip_prefix("flags:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok());
            if let Some(flags) = flags {
                let mode = flags & libc::O_ACCMODE as u32;
                if mode == libc::O_WRONLY as u32 || mode == libc::O_RDWR as u32 {
                    found.insert(name.to_os_string());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SETTLE: Duration = Duration::from_millis(100);

    /// A drop folder holding `files` (name, content), watched from now.
    fn folder_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Readiness, Instant) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write");
        }
        let readiness = Readiness::new(dir.path(), SETTLE);
        (dir, readiness, Instant::now())
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn a_closed_file_is_ready_after_settle_and_not_before() {
        let (_dir, mut readiness, start) = folder_with(&[("a.csv", "x")]);
        readiness.observe(Hint::Written("a.csv".into()), start);
        readiness.observe(Hint::Closed("a.csv".into()), start);
        assert!(readiness.ready(start, &never).is_empty(), "first stat");
        assert!(
            readiness.ready(start + SETTLE / 2, &never).is_empty(),
            "too soon"
        );
        assert_eq!(readiness.ready(start + SETTLE * 2, &never), vec!["a.csv"]);
    }

    #[test]
    fn a_file_written_but_not_closed_is_never_ready() {
        let (_dir, mut readiness, start) = folder_with(&[("a.csv", "x")]);
        readiness.observe(Hint::Written("a.csv".into()), start);
        readiness.ready(start, &never);
        assert!(readiness.ready(start + SETTLE * 100, &never).is_empty());
    }

    #[test]
    fn a_scanned_file_held_open_for_writing_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.csv");
        let mut writer = std::fs::File::create(&path).expect("create");
        writer.write_all(b"x").expect("write");
        let mut readiness = Readiness::new(dir.path(), SETTLE);
        let start = Instant::now();
        readiness.scan(start, false).expect("scan");
        readiness.ready(start, &never);
        assert!(
            readiness.ready(start + SETTLE * 2, &never).is_empty(),
            "still open"
        );
        drop(writer);
        assert_eq!(readiness.ready(start + SETTLE * 3, &never), vec!["a.csv"]);
    }

    #[test]
    fn a_file_created_whole_by_a_link_or_changed_in_attributes_is_ready() {
        let (_dir, mut readiness, start) = folder_with(&[("linked.csv", "x"), ("chmod.csv", "x")]);
        readiness.observe(Hint::Created("linked.csv".into()), start);
        readiness.observe(Hint::Created("chmod.csv".into()), start);
        readiness.observe(Hint::Written("chmod.csv".into()), start);
        readiness.observe(Hint::Closed("chmod.csv".into()), start);
        readiness.observe(Hint::Touched("chmod.csv".into()), start);
        readiness.ready(start, &never);
        assert_eq!(
            readiness.ready(start + SETTLE * 2, &never),
            vec!["chmod.csv", "linked.csv"]
        );
    }

    #[test]
    fn an_empty_file_just_created_waits_for_its_writer() {
        let (_dir, mut readiness, start) = folder_with(&[("a.csv", "")]);
        readiness.observe(Hint::Created("a.csv".into()), start);
        readiness.ready(start, &never);
        assert!(readiness.ready(start + SETTLE * 10, &never).is_empty());
        readiness.observe(Hint::Closed("a.csv".into()), start + SETTLE * 10);
        assert_eq!(readiness.ready(start + SETTLE * 20, &never), vec!["a.csv"]);
    }

    #[test]
    fn a_large_backlog_is_looked_through_a_slice_at_a_time_and_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = LOOKS_PER_CALL * 2 + 100;
        for n in 0..files {
            std::fs::write(dir.path().join(format!("{n:05}.csv")), "x").expect("write");
        }
        let mut readiness = Readiness::new(dir.path(), SETTLE);
        let start = Instant::now();
        readiness.scan(start, false).expect("scan");
        let mut found = HashSet::new();
        let mut calls = 0;
        while found.len() < files && calls < 100 {
            let ready = readiness.ready(start + SETTLE * (calls + 1), &never);
            assert!(ready.len() <= LOOKS_PER_CALL, "{} in one call", ready.len());
            for name in ready {
                readiness.park(&name);
                assert!(found.insert(name), "handed out twice");
            }
            calls += 1;
        }
        assert_eq!(found.len(), files, "after {calls} calls");
        // Each file is stat'd once to learn its state and once to see it
        // still: two rounds of slices, not one pass per file.
        assert!(calls <= 6, "{calls} calls");
    }

    #[test]
    fn a_file_renamed_in_is_ready_at_its_first_look() {
        let (_dir, mut readiness, start) = folder_with(&[("a.csv", "x")]);
        readiness.observe(Hint::Arrived("a.csv".into()), start);
        assert_eq!(readiness.ready(start, &never), vec!["a.csv"]);
    }

    #[test]
    fn an_arrival_is_ready_now_and_a_closed_file_only_once_settled() {
        let (dir, mut readiness, start) = folder_with(&[("moved.csv", "x"), ("closed.csv", "x")]);
        readiness.observe(Hint::Arrived("moved.csv".into()), start);
        readiness.observe(Hint::Closed("closed.csv".into()), start);
        assert!(readiness.ready_now("moved.csv", start, &never));
        assert!(!readiness.ready_now("closed.csv", start, &never));
        assert!(!readiness.ready_now("closed.csv", start + SETTLE / 2, &never));
        assert!(readiness.ready_now("closed.csv", start + SETTLE * 2, &never));
        assert!(!readiness.ready_now("unknown.csv", start, &never));
        std::fs::remove_file(dir.path().join("moved.csv")).expect("remove");
        assert!(!readiness.ready_now("moved.csv", start, &never), "gone");
        assert_eq!(readiness.waiting(), 1);
    }

    #[test]
    fn growth_restarts_the_settle_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.csv");
        std::fs::write(&path, "x").expect("write");
        let mut readiness = Readiness::new(dir.path(), SETTLE);
        let start = Instant::now();
        readiness.observe(Hint::Arrived("a.csv".into()), start);
        readiness.ready(start, &never);
        std::fs::write(&path, "xy").expect("grow");
        assert!(
            readiness.ready(start + SETTLE * 2, &never).is_empty(),
            "changed"
        );
        assert_eq!(readiness.ready(start + SETTLE * 4, &never), vec!["a.csv"]);
    }

    #[test]
    fn links_fifos_and_ignored_names_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.csv.part"), "x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link.csv")).expect("link");
        let mut readiness = Readiness::new(dir.path(), SETTLE);
        let start = Instant::now();
        readiness.scan(start, false).expect("scan");
        let skip = |name: &str| name.ends_with(".part");
        readiness.ready(start, &skip);
        assert!(readiness.ready(start + SETTLE * 2, &skip).is_empty());
        assert_eq!(readiness.waiting(), 0);
    }
}
