//! index::record: the recorder that collects each event's id and line while
//! the delivery pass builds events, into the unsynced work file
//! `work/<occ>.ids` — or, for a small file, in memory until its seal (as
//! much a cache as the unsynced file: lost with the process, rebuilt from
//! the file). It never stops a delivery (a failed write only turns it off)
//! and never writes under `index/`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::format::{SHORT_RECORD, SINGLE_HEADER};
use super::{disabled, prefix, LINE_UNKNOWN};

/// Records of one chunk (512 KiB in memory), sorted before they are
/// written: a run's segment. A file of a million rows is 31 segments.
pub(super) const CHUNK: usize = 32 * 1024;
pub(super) const WORK_RECORD: usize = SHORT_RECORD;

/// Collects the `(id, line)` of every event of one file while it is built.
/// Cheap on purpose: an append to a vector, and every [`CHUNK`] rows one
/// sort and one buffered write, whose write-back to the disk starts at once
/// (so that sealing has little left to fsync). The work file is the file's
/// run in the making: a header that [`super::seal`] fills in, then the
/// sorted chunks. A failed write only disables it (the file's index is then
/// rebuilt at seal): the index never stops a delivery.
pub struct Recorder {
    /// Key in the high 64 bits, then line, then event number: one integer
    /// to sort.
    chunk: Vec<u128>,
    /// Events recorded so far.
    recorded: u32,
    /// The work file, created with the first full chunk.
    path: PathBuf,
    /// Recording (not a resumed delivery, the index on, no write failed).
    enabled: bool,
    out: Option<BufWriter<File>>,
    /// Bytes handed to the file so far, and how many of them were already
    /// sent to the disk.
    written: u64,
    started_back: u64,
}

impl Recorder {
    /// Starts the work file afresh. `complete` is false when the delivery
    /// resumes after a crash (earlier rows are not built again): nothing is
    /// recorded and seal rebuilds the index from the file.
    pub fn create(path: &Path, complete: bool) -> Recorder {
        let _ = fs::remove_file(path);
        take_in_memory(path);
        Recorder {
            chunk: Vec::new(),
            recorded: 0,
            path: path.to_path_buf(),
            enabled: complete && !disabled(),
            out: None,
            written: SINGLE_HEADER,
            started_back: 0,
        }
    }

    /// The work file, with the header's place (zeros: not a run yet).
    fn open(&mut self) {
        let created = File::create(&self.path).and_then(|file| {
            let mut out = BufWriter::with_capacity(64 * 1024, file);
            out.write_all(&[0u8; SINGLE_HEADER as usize])?;
            Ok(out)
        });
        match created {
            Ok(out) => self.out = Some(out),
            Err(_) => self.enabled = false,
        }
    }

    pub fn record(&mut self, id: &uuid::Uuid, line: u64) {
        if !self.enabled {
            return;
        }
        let line = u32::try_from(line).unwrap_or(LINE_UNKNOWN);
        self.chunk.push(
            u128::from(prefix(id)) << 64 | u128::from(line) << 32 | u128::from(self.recorded),
        );
        self.recorded = self.recorded.saturating_add(1);
        if self.chunk.len() == CHUNK {
            self.flush_chunk();
            self.start_write_back();
        }
    }

    fn flush_chunk(&mut self) {
        if !self.enabled {
            return;
        }
        self.chunk.sort_unstable();
        if self.out.is_none() {
            self.open();
        }
        let Some(out) = &mut self.out else { return };
        let mut record = [0u8; WORK_RECORD];
        let mut failed = false;
        for packed in self.chunk.drain(..) {
            record[..8].copy_from_slice(&((packed >> 64) as u64).to_le_bytes());
            record[8..12].copy_from_slice(&((packed >> 32) as u32).to_le_bytes());
            record[12..].copy_from_slice(&(packed as u32).to_le_bytes());
            failed = failed || out.write_all(&record).is_err();
            self.written += WORK_RECORD as u64;
        }
        if failed {
            self.out = None;
            self.enabled = false;
        }
    }

    /// Asks the kernel to start writing what was written so far, without
    /// waiting: the fsync at seal then finds most of it on the disk.
    fn start_write_back(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(out) = &mut self.out else { return };
        if out.flush().is_err() {
            self.out = None;
            self.enabled = false;
            return;
        }
        let (from, to) = (self.started_back, self.written);
        let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
            return;
        };
        // SAFETY: sync_file_range takes a descriptor the writer owns for
        // this call; it only starts write-back (a hint: errors are ignored,
        // the fsync at seal is what makes the run durable).
        unsafe {
            libc::sync_file_range(
                out.get_ref().as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started_back = to;
    }

    /// Writes what is left (the work file is closed, not synced); a small
    /// file's records, never written, are kept in memory for its seal.
    pub fn finish(mut self) {
        if self.enabled && self.out.is_none() && self.chunk.len() <= IN_MEMORY_EVENTS {
            self.chunk.sort_unstable();
            let mut kept = in_memory();
            let held: usize = kept.values().map(Vec::len).sum();
            if held + self.chunk.len() <= IN_MEMORY_TOTAL {
                kept.insert(self.path.clone(), std::mem::take(&mut self.chunk));
                return;
            }
        }
        self.flush_chunk();
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
    }
}

/// Files of at most this many events keep their records in memory.
pub(super) const IN_MEMORY_EVENTS: usize = 4096;
/// Records kept in memory at most, all files together (16 MiB).
const IN_MEMORY_TOTAL: usize = 1 << 20;

/// Small files' records between their delivery and their seal, by work
/// file path.
fn in_memory() -> MutexGuard<'static, HashMap<PathBuf, Vec<u128>>> {
    static KEPT: OnceLock<Mutex<HashMap<PathBuf, Vec<u128>>>> = OnceLock::new();
    KEPT.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sorted records a small file's recorder kept in memory (packed: key,
/// line, event number), taken away.
pub(super) fn take_in_memory(work: &Path) -> Option<Vec<u128>> {
    in_memory().remove(work)
}

/// Records the id and line of every accepted row of a file, read again
/// (the slow path of [`seal`], after a delivery resumed from a crash).
pub fn record_rows<R: Read>(
    mut rows: crate::parse::RowReader<'_, R>,
    import: &str,
    recorder: &mut Recorder,
) -> io::Result<()> {
    loop {
        match rows.next_record() {
            Ok(None) => return Ok(()),
            Ok(Some(crate::parse::Record::Row(row))) => {
                recorder.record(&crate::event::event_id(import, &row), row.line)
            }
            Ok(Some(crate::parse::Record::Reject(_))) => {}
            Err(crate::parse::ParseError::Io(err)) => return Err(err),
        }
    }
}
