//! index::record: the recorder that collects each event's id and line while
//! the delivery pass builds events, into the unsynced work file
//! `work/<occ>.ids`. It never stops a delivery (a failed write only turns
//! it off) and never writes under `index/`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

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
        let mut out = if complete && !disabled() {
            File::create(path)
                .ok()
                .map(|file| BufWriter::with_capacity(64 * 1024, file))
        } else {
            None
        };
        // The header's place, written at seal (zeros: not a run yet).
        if let Some(writer) = &mut out {
            if writer.write_all(&[0u8; SINGLE_HEADER as usize]).is_err() {
                out = None;
            }
        }
        Recorder {
            chunk: Vec::new(),
            recorded: 0,
            out,
            written: SINGLE_HEADER,
            started_back: 0,
        }
    }

    pub fn record(&mut self, id: &uuid::Uuid, line: u64) {
        if self.out.is_none() {
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
        self.chunk.sort_unstable();
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
        }
    }

    /// Asks the kernel to start writing what was written so far, without
    /// waiting: the fsync at seal then finds most of it on the disk.
    fn start_write_back(&mut self) {
        use std::os::fd::AsRawFd;
        let Some(out) = &mut self.out else { return };
        if out.flush().is_err() {
            self.out = None;
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

    /// Writes what is left (the work file is closed, not synced).
    pub fn finish(mut self) {
        self.flush_chunk();
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
    }
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
