//! index::record: the recorder that collects each event's id and line while
//! the delivery pass builds events, into the unsynced work file
//! `work/<occ>.ids`. It never stops a delivery (a failed write only turns
//! it off) and never writes under `index/`.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

use super::format::SHORT_RECORD;
use super::{disabled, prefix, LINE_UNKNOWN};

/// Records of one chunk (3 MiB), sorted in memory before they are written:
/// a file of a million rows is four chunks, merged at [`seal`].
pub(super) const CHUNK: usize = 256 * 1024;
pub(super) const WORK_RECORD: usize = SHORT_RECORD;

/// Collects the `(id, line)` of every event of one file while it is built.
/// Cheap on purpose: an append to a vector, and every 64k rows one sort and
/// one buffered write. A failed write only disables it (the file's index is
/// then rebuilt at [`seal`]): the index never stops a delivery.
pub struct Recorder {
    /// Key in the high 64 bits, then line, then event number: one integer
    /// to sort.
    chunk: Vec<u128>,
    /// Events recorded so far.
    recorded: u32,
    out: Option<BufWriter<File>>,
}

impl Recorder {
    /// Starts the work file afresh. `complete` is false when the delivery
    /// resumes after a crash (earlier rows are not built again): nothing is
    /// recorded and [`seal`] rebuilds the index from the file.
    pub fn create(path: &Path, complete: bool) -> Recorder {
        let _ = fs::remove_file(path);
        let out = if complete && !disabled() {
            File::create(path).ok().map(BufWriter::new)
        } else {
            None
        };
        Recorder {
            chunk: Vec::with_capacity(if out.is_some() { CHUNK } else { 0 }),
            recorded: 0,
            out,
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
        }
    }

    fn flush_chunk(&mut self) {
        self.chunk.sort_unstable();
        let Some(out) = &mut self.out else { return };
        let mut bytes = Vec::with_capacity(self.chunk.len() * WORK_RECORD);
        for packed in self.chunk.drain(..) {
            bytes.extend_from_slice(&((packed >> 64) as u64).to_le_bytes());
            bytes.extend_from_slice(&((packed >> 32) as u32).to_le_bytes());
            bytes.extend_from_slice(&(packed as u32).to_le_bytes());
        }
        if out.write_all(&bytes).is_err() {
            self.out = None;
        }
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
