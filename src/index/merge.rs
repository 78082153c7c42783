//! index::merge: the log-structured merging of one day's runs, on a
//! background thread, so that a file being archived never waits for a
//! merge: when [`FAN_IN`] runs of a level exist, all the runs of that level
//! are merged (k-way) into one run, written durably (temporary name, fsync,
//! rename, folder fsync) before its inputs are removed. It never drops a
//! record: a crash in between leaves records twice, which lookups report
//! once.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

use super::format::{encode, header, record_size, Run, Source, RUN_RECORD};
use super::lookup::runs_in;
use super::{io_at, IndexError};
use crate::claim;

/// This many runs of one level in a day are merged into one.
const FAN_IN: usize = 8;

pub(super) fn level_of(records: u64) -> u32 {
    // Eight times more records, one level up.
    (64 - records.max(1).leading_zeros()) / 3
}

/// The day folders waiting for a merge, and whether one is being merged.
#[derive(Default)]
struct Queue {
    days: BTreeSet<PathBuf>,
    busy: bool,
}

struct Merger {
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn merger() -> Option<&'static Merger> {
    static MERGER: OnceLock<Option<&'static Merger>> = OnceLock::new();
    *MERGER.get_or_init(|| {
        let merger: &'static Merger = Box::leak(Box::new(Merger {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("index-merge".into())
            .spawn(move || merger.run())
            .ok()
            .map(|_| merger)
    })
}

impl Merger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is a set of names: still whole after a panic elsewhere.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self) {
        loop {
            let dir = {
                let mut queue = self.lock();
                loop {
                    if let Some(dir) = queue.days.pop_first() {
                        queue.busy = true;
                        break dir;
                    }
                    queue = self
                        .changed
                        .wait(queue)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            if let Err(err) = compact(&dir) {
                tracing::warn!(%err, "index runs not merged (tried again at the next seal)");
            }
            self.lock().busy = false;
            self.changed.notify_all();
        }
    }
}

/// Asks for the runs of `dir` (a day of the index) to be merged, soon and
/// on the merge thread (here when that thread cannot start).
pub(super) fn merge_soon(dir: &Path) {
    match merger() {
        Some(merger) => {
            merger.lock().days.insert(dir.to_path_buf());
            merger.changed.notify_all();
        }
        None => {
            if let Err(err) = compact(dir) {
                tracing::warn!(%err, "index runs not merged (tried again at the next seal)");
            }
        }
    }
}

/// Returns once every merge asked for so far is done.
pub fn wait_for_merges() {
    let Some(merger) = merger() else { return };
    let mut queue = merger.lock();
    while queue.busy || !queue.days.is_empty() {
        queue = merger
            .changed
            .wait(queue)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}

/// Merges `sources` into a run at `path`, durably (temporary name, fsync,
/// rename, folder fsync).
fn write_run(
    path: &Path,
    occurrences: &[String],
    count: u64,
    mut sources: Vec<Source>,
) -> Result<(), IndexError> {
    let temporary = path.with_extension("run.partial");
    claim::fill_and_rename(&temporary, path, |file| {
        let buffer = (count as usize * RUN_RECORD).clamp(4 * 1024, 256 * 1024);
        let mut out = BufWriter::with_capacity(buffer, file);
        out.write_all(&header(occurrences, count, count))?;
        // A k-way merge on a heap of the sources' heads.
        let mut heads = std::collections::BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            source.advance()?;
            if let Some(head) = source.head {
                heads.push(std::cmp::Reverse((head, index)));
            }
        }
        let size = record_size(occurrences.len());
        while let Some(std::cmp::Reverse((entry, index))) = heads.pop() {
            out.write_all(&encode(entry, size)[..size])?;
            let source = &mut sources[index];
            source.advance()?;
            if let Some(head) = source.head {
                heads.push(std::cmp::Reverse((head, index)));
            }
        }
        out.flush()
    })
    .map_err(io_at(path))?;
    claim::sync_dir_of(path)?;
    Ok(())
}

/// Merges runs of a day while [`FAN_IN`] of one level exist. The merged run
/// is durable before its inputs are removed: a crash in between leaves
/// records twice, which lookups report once.
pub(super) fn compact(dir: &Path) -> Result<(), IndexError> {
    // Two processes (the daemon, an `import`) may merge one day at once:
    // without the lock both merge the same inputs and the slower one finds
    // them gone.
    let lock_path = dir.join(".compact.lock");
    let lock = File::create(&lock_path).map_err(io_at(&lock_path))?;
    lock_exclusively(&lock).map_err(io_at(&lock_path))?;
    remove_partials(dir);
    loop {
        let runs = runs_in(dir)?;
        let Some(level) = runs
            .iter()
            .map(|(level, _)| *level)
            .find(|&level| runs.iter().filter(|(l, _)| *l == level).count() >= FAN_IN)
        else {
            return Ok(());
        };
        let inputs: Vec<&PathBuf> = runs
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, path)| path)
            .collect();
        let mut occurrences = Vec::new();
        let mut sources = Vec::new();
        let mut count = 0;
        for path in &inputs {
            let (run, _) = Run::open(path)?;
            sources.extend(run.sources(occurrences.len() as u32)?);
            count += run.records;
            occurrences.extend(run.occurrences);
        }
        let name = format!(
            "{:02}-{}.run",
            level_of(count).max(level + 1),
            uuid::Uuid::new_v4()
        );
        write_run(&dir.join(name), &occurrences, count, sources)?;
        for path in inputs {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        claim::sync_dir_of(&dir.join("x"))?;
    }
}

/// Merged runs a merge left half-written when its process stopped: only a
/// merge writes `.partial` names in a day, and it holds the lock.
fn remove_partials(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .ends_with(".run.partial")
        {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Blocks until this process holds `file`'s exclusive advisory lock; the
/// kernel drops it when `file` is closed. (`File::lock` needs Rust 1.89.)
fn lock_exclusively(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock takes a descriptor that `file` owns for this call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
