//! The rows of a claimed file turned into batches of events, for delivery.
//! Parsing and building events cost about the same, so a large file uses
//! two threads (rows, then events); a small one does both on one thread,
//! since a thread costs more than its few batches. Given a [`Tally`], the
//! same read is also the validation pass (rows counted, rejects written):
//! see `stage`.

use std::io::Read;
use std::path::Path;

use chrono::Utc;

use super::open_rows;
use super::rejects::{Tally, ValidateError};
use crate::claim::Fingerprint;
use crate::config::Import;
use crate::event::EventWriter;
use crate::index;
use crate::parse::{ParseError, Record, Row, RowReader};
use crate::sink::Batch;

/// Files with at most this many batches to send are read on one thread.
const ONE_THREAD_BATCHES: u64 = 4;

/// Files of at most this size are read on one thread when the number of
/// their batches is not known yet (a pass that validates too).
const ONE_THREAD_BYTES: u64 = 64 << 10;

/// Batches that cross between threads together: one hand-over per batch
/// cost a thread wake-up per 100 rows on each of the two channels.
const BLOCK_BATCHES: usize = 8;

/// The batches of one block, in order, as they go to the delivery.
pub(super) type Run = Vec<Batch>;

/// What to read, and from where.
pub(super) struct Production<'a> {
    pub import: &'a Import,
    pub path: &'a Path,
    pub file_name: &'a str,
    pub fingerprint: &'a Fingerprint,
    pub batch_size: u64,
    pub skip_batches: u64,
    /// None when this read is the validation pass too.
    pub batches_total: Option<u64>,
}

/// Sends the batches; `ids` records each event's id and line for the index,
/// `tally` (if any) counts the rows and writes the rejected ones.
pub(super) fn produce(
    job: &Production<'_>,
    sender: tokio::sync::mpsc::Sender<Run>,
    ids: index::Recorder,
    tally: Option<&mut Tally<'_>>,
) -> Result<(), ValidateError> {
    let small = match job.batches_total {
        Some(total) => total.saturating_sub(job.skip_batches) <= ONE_THREAD_BATCHES,
        None => job.fingerprint.size <= ONE_THREAD_BYTES,
    };
    if small {
        produce_on_one_thread(job, sender, ids, tally)
    } else {
        produce_batches(job, sender, ids, tally)
    }
}

/// What the reader gave: a row, a rejected row (counted and written by the
/// tally, if any), or the end.
enum Next<'r> {
    Row(Row<'r>),
    Rejected,
    End,
}

fn next_row<'r, R: Read>(
    reader: &'r mut RowReader<'_, R>,
    tally: &mut Option<&mut Tally<'_>>,
) -> Result<Next<'r>, ValidateError> {
    match reader.next_record() {
        Err(ParseError::Io(source)) => Err(ValidateError::Proof(source)),
        Ok(None) => Ok(Next::End),
        Ok(Some(Record::Row(row))) => {
            if let Some(tally) = tally {
                tally.accept();
            }
            Ok(Next::Row(row))
        }
        Ok(Some(Record::Reject(reject))) => {
            if let Some(tally) = tally {
                tally.reject(&reject).map_err(ValidateError::State)?;
            }
            Ok(Next::Rejected)
        }
    }
}

fn produce_on_one_thread(
    job: &Production<'_>,
    sender: tokio::sync::mpsc::Sender<Run>,
    mut ids: index::Recorder,
    mut tally: Option<&mut Tally<'_>>,
) -> Result<(), ValidateError> {
    let (mut reader, _) =
        open_rows(job.import, job.path, job.fingerprint).map_err(ValidateError::Proof)?;
    let mut writer = EventWriter::new(job.import, job.file_name, &job.fingerprint.sha256);
    let skip_rows = job.skip_batches * job.batch_size;
    let mut accepted = 0u64;
    let mut batch = Batch::new(job.skip_batches);
    loop {
        let row = match next_row(&mut reader, &mut tally)? {
            Next::Row(row) => row,
            Next::Rejected => continue,
            Next::End => break,
        };
        accepted += 1;
        if accepted <= skip_rows {
            continue;
        }
        batch.push_with(row.line, |out| {
            ids.record(&writer.write(&row, out), row.line);
        });
        if batch.len() as u64 == job.batch_size {
            let next = Batch::new(batch.seq + 1);
            if sender
                .blocking_send(vec![std::mem::replace(&mut batch, next)])
                .is_err()
            {
                return Ok(()); // the delivery stopped (shutdown)
            }
        }
    }
    ids.finish();
    if !batch.is_empty() {
        let _ = sender.blocking_send(vec![batch]);
    }
    Ok(())
}

/// The delivery pass on two threads, since parsing and building events cost
/// about the same: this one reads rows into blocks of [`BLOCK_BATCHES`]
/// batches each, a scoped thread turns each block into batches of events,
/// in order.
fn produce_batches(
    job: &Production<'_>,
    sender: tokio::sync::mpsc::Sender<Run>,
    mut ids: index::Recorder,
    mut tally: Option<&mut Tally<'_>>,
) -> Result<(), ValidateError> {
    let (import, file_name, fingerprint) = (job.import, job.file_name, job.fingerprint);
    let (batch_size, skip_batches) = (job.batch_size, job.skip_batches);
    let (mut reader, _) = open_rows(import, job.path, fingerprint).map_err(ValidateError::Proof)?;
    let skip_rows = skip_batches * batch_size;
    let (blocks, received) = std::sync::mpsc::sync_channel::<RowBlock>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut writer = EventWriter::new(import, file_name, &fingerprint.sha256);
            let mut seq = skip_batches;
            for block in received {
                let mut run = Vec::with_capacity(BLOCK_BATCHES);
                let batches = block.rows.len().div_ceil(batch_size.max(1) as usize).max(1);
                let room = block.text.len() / batches * 3 + 512 * batch_size as usize;
                let mut rows = block.rows().peekable();
                while rows.peek().is_some() {
                    let mut batch = Batch::new(seq);
                    seq += 1;
                    batch.buf.reserve(room);
                    for row in rows.by_ref().take(batch_size as usize) {
                        batch.push_with(row.line, |out| {
                            ids.record(&writer.write(&row, out), row.line);
                        });
                    }
                    run.push(batch);
                }
                if sender.blocking_send(run).is_err() {
                    return; // the delivery stopped (shutdown)
                }
            }
            ids.finish();
        });
        // Owned here, so that the event thread sees the end when this returns.
        let blocks = blocks;
        let rows_per_block = batch_size.saturating_mul(BLOCK_BATCHES as u64);
        let mut accepted = 0u64;
        let mut block = RowBlock::default();
        loop {
            let row = match next_row(&mut reader, &mut tally)? {
                Next::Row(row) => row,
                Next::Rejected => continue,
                Next::End => break,
            };
            accepted += 1;
            if accepted <= skip_rows {
                continue;
            }
            block.push(&row, import.attach_row_proof);
            if block.rows.len() as u64 == rows_per_block
                && blocks.send(std::mem::take(&mut block)).is_err()
            {
                return Ok(()); // the delivery stopped (shutdown)
            }
        }
        if !block.rows.is_empty() {
            let _ = blocks.send(block);
        }
        Ok(())
    })
}

/// The rows of [`BLOCK_BATCHES`] batches, owned, to cross from the reader
/// thread to the event thread: the text of every field back to back.
#[derive(Debug, Default)]
struct RowBlock {
    text: String,
    raw: Vec<u8>,
    rows: Vec<BlockRow>,
}

#[derive(Debug)]
struct BlockRow {
    line: u64,
    instant: chrono::DateTime<Utc>,
    /// Where email, purpose id, purpose text and origin end in `text`.
    ends: [usize; 4],
    raw_end: usize,
}

impl RowBlock {
    /// Adds a row; its raw bytes only when the event attaches them.
    fn push(&mut self, row: &crate::parse::Row<'_>, with_raw: bool) {
        let mut ends = [0; 4];
        for (end, field) in
            ends.iter_mut()
                .zip([row.email, row.purpose_id, row.purpose_text, row.origin])
        {
            self.text.push_str(field);
            *end = self.text.len();
        }
        if with_raw {
            self.raw.extend_from_slice(row.raw);
        }
        self.rows.push(BlockRow {
            line: row.line,
            instant: row.instant,
            ends,
            raw_end: self.raw.len(),
        });
    }

    fn rows(&self) -> impl Iterator<Item = crate::parse::Row<'_>> {
        let mut text_start = 0;
        let mut raw_start = 0;
        self.rows.iter().map(move |row| {
            let [email, purpose_id, purpose_text, origin] = row.ends;
            let parsed = crate::parse::Row {
                line: row.line,
                email: &self.text[text_start..email],
                purpose_id: &self.text[email..purpose_id],
                purpose_text: &self.text[purpose_id..purpose_text],
                instant: row.instant,
                origin: &self.text[purpose_text..origin],
                raw: &self.raw[raw_start..row.raw_end],
            };
            text_start = origin;
            raw_start = row.raw_end;
            parsed
        })
    }
}
