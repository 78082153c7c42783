//! pipeline: takes one claimed file from `processing/` to its outcome.
//!
//! The order is the safety: fingerprint → duplicate check → a whole
//! validation pass (nothing is sent from a file that will be quarantined) →
//! delivery batch by batch, recording in the journal only what the sink
//! acknowledged → archive. A file leaves `processing/` only after its last
//! batch is acknowledged. Resuming an occurrence re-runs the same steps and
//! skips the batches the journal says are acknowledged. Errors of the proof
//! file end in `failed/`; errors of our own state (full disk, journal) leave
//! the file where it is, to be tried again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::claim::{self, ClaimError, Fingerprint, StateDirs};
use crate::config::Import;
use crate::event::EventWriter;
use crate::index;
use crate::journal::{Journal, JournalError, Occurrence, Status, Validated};
use crate::parse::{Record, ResolvedEncoding, RowReader};
use crate::sink::{Ack, Batch, DeliveryTarget, Refusal, Sink, SinkError};

/// How often acknowledged progress is committed to the journal. A crash
/// re-sends at most this much (the ids make that harmless).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    State(#[from] ClaimError),
    #[error("delivery failed: {0}")]
    Sink(#[from] SinkError),
    #[error("occurrence {0} is not in the journal")]
    UnknownOccurrence(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a worker thread stopped unexpectedly: {0}")]
    Worker(String),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

pub use crate::metrics::Counters;

/// What every file's processing shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub dirs: StateDirs,
    pub journal: Arc<Mutex<Journal>>,
    pub sink: Sink,
    pub batch_size: usize,
    pub shutdown: CancellationToken,
    pub counters: Arc<Counters>,
}

impl Context {
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back), so a poisoned lock is still usable.
        self.journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Delivered (maybe with rejected rows) and archived.
    Archived,
    /// Too many rejected rows: nothing sent, moved to `failed/`.
    Quarantined,
    /// Unreadable: moved to `failed/`.
    Failed,
    /// Same content already imported: archived, nothing sent.
    Duplicate,
    /// Shutdown came first: the file waits in `processing/`.
    Interrupted,
}

/// The `.report.json` beside every finished file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub occurrence_id: String,
    pub import: String,
    /// The organization the events went to (the import's, else the sink's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    pub file_name: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub status: Verdict,
    pub reason: Option<String>,
    pub duplicate_of: Option<String>,
    pub rows_accepted: u64,
    pub rows_rejected: u64,
    pub rows_refused: u64,
    pub rows_delivered: u64,
    pub batches: u64,
    pub claimed_at: String,
    pub finished_at: String,
    pub validate_ms: u64,
    pub deliver_ms: u64,
    pub file: Option<PathBuf>,
    pub rejects_file: Option<PathBuf>,
}

/// One claimed file.
#[derive(Debug, Clone)]
pub struct Work {
    pub occurrence_id: String,
    pub import: Arc<Import>,
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Runs one occurrence to its end (or to shutdown).
pub async fn process(ctx: &Context, work: &Work) -> Result<Report, PipelineError> {
    let occurrence = ctx
        .journal()
        .get(&work.occurrence_id)?
        .ok_or_else(|| PipelineError::UnknownOccurrence(work.occurrence_id.clone()))?;
    let mut report = Report {
        occurrence_id: occurrence.id.clone(),
        import: work.import.name.clone(),
        organization_id: work.import.organization().map(str::to_string),
        file_name: occurrence.file_name.clone(),
        sha256: None,
        size: None,
        status: Verdict::Interrupted,
        reason: None,
        duplicate_of: None,
        rows_accepted: 0,
        rows_rejected: 0,
        rows_refused: 0,
        rows_delivered: 0,
        batches: 0,
        claimed_at: occurrence.claimed_at.clone(),
        finished_at: String::new(),
        validate_ms: 0,
        deliver_ms: 0,
        file: None,
        rejects_file: None,
    };
    let path = occurrence.processing_path.clone();

    let fingerprint = {
        let path = path.clone();
        match blocking(move || claim::fingerprint(&path)).await? {
            Ok(fingerprint) => fingerprint,
            Err(err) => {
                report.status = Verdict::Failed;
                report.reason = Some(format!("cannot read the file: {err}"));
                return finish(ctx, &occurrence, report, None, None).await;
            }
        }
    };
    report.sha256 = Some(fingerprint.sha256.clone());
    report.size = Some(fingerprint.size);
    ctx.journal()
        .record_fingerprint(&occurrence.id, &fingerprint.sha256, fingerprint.size)?;

    if occurrence.status == Status::Claimed {
        let earlier = ctx
            .journal()
            .find_same_content(&fingerprint.sha256, &occurrence.id)?;
        if let Some(earlier) = earlier {
            report.status = Verdict::Duplicate;
            report.reason = Some(format!(
                "same content (SHA-256) as occurrence {earlier}: not sent again"
            ));
            report.duplicate_of = Some(earlier);
            return finish(ctx, &occurrence, report, None, None).await;
        }
    }

    // Validation pass: every row, before anything is sent.
    let started = Instant::now();
    let rejects_path = ctx.dirs.rejects_work_path(&occurrence.id);
    let counts = {
        let import = work.import.clone();
        let path = path.clone();
        let rejects_path = rejects_path.clone();
        let fingerprint = fingerprint.clone();
        blocking(move || validate(&import, &path, &fingerprint, &rejects_path)).await?
    };
    report.validate_ms = started.elapsed().as_millis() as u64;
    let counts = match counts {
        Ok(counts) => counts,
        Err(ValidateError::Proof(err)) => {
            report.status = Verdict::Failed;
            report.reason = Some(format!("cannot read the file: {err}"));
            return finish(ctx, &occurrence, report, None, None).await;
        }
        Err(ValidateError::State(err)) => return Err(err),
    };
    report.rows_accepted = counts.accepted;
    report.rows_rejected = counts.rejected;
    ctx.counters
        .rows_rejected
        .fetch_add(counts.rejected, Ordering::Relaxed);
    let rejects = (counts.rejected > 0).then_some(rejects_path.as_path());

    let total = counts.accepted + counts.rejected;
    let ratio = rejected_share(counts.accepted, counts.rejected);
    if ratio > work.import.max_reject_ratio {
        report.status = Verdict::Quarantined;
        report.reason = Some(format!(
            "{} of {} rows rejected ({:.0}%, above max_reject_ratio {}): probably a wrong date format, separator or encoding; nothing was sent",
            counts.rejected,
            total,
            ratio * 100.0,
            work.import.max_reject_ratio
        ));
        return finish(ctx, &occurrence, report, rejects, None).await;
    }

    // Delivery pass.
    let resuming = occurrence.status == Status::Delivering;
    let batch_size = match occurrence.batch_size {
        Some(size) if resuming && size > 0 => size,
        _ => ctx.batch_size as u64,
    };
    let output_stem = match &occurrence.output_stem {
        Some(stem) if resuming => stem.clone(),
        _ => output_stem(&occurrence, &work.import.name),
    };
    let batches_total = counts.accepted.div_ceil(batch_size);
    if !resuming {
        ctx.journal().record_validated(
            &occurrence.id,
            &Validated {
                rows_accepted: counts.accepted,
                rows_rejected: counts.rejected,
                batch_size,
                batches_total,
                output_stem: output_stem.clone(),
            },
        )?;
    }
    // Where the sink left off, when resuming.
    let (skip, cursor) = if resuming {
        (occurrence.batches_acked, occurrence.sink_cursor)
    } else {
        (0, None)
    };
    ctx.counters
        .batches_planned
        .fetch_add(batches_total.saturating_sub(skip), Ordering::Relaxed);
    let started = Instant::now();
    let delivered = deliver(
        ctx,
        work,
        &occurrence,
        &fingerprint,
        DeliveryPlan {
            batch_size,
            skip,
            cursor,
            target: DeliveryTarget {
                occurrence_id: occurrence.id.clone(),
                import: work.import.name.clone(),
                disable_integrations: work.import.disable_integrations,
                organization_id: work.import.organization().map(str::to_string),
                output_stem,
            },
        },
    )
    .await?;
    report.deliver_ms = started.elapsed().as_millis() as u64;
    if delivered < batches_total {
        if ctx.shutdown.is_cancelled() {
            return Ok(report);
        }
        // Nobody may write to a claimed file; someone did, so its content is
        // no longer what was validated and hashed.
        report.status = Verdict::Failed;
        report.reason = Some(format!(
            "the file changed while it was being read (truncated or rewritten in processing/): {delivered} of {batches_total} batches found and delivered; the rest is lost from this copy, drop the original again"
        ));
        report.batches = delivered;
        return finish(
            ctx,
            &occurrence,
            report,
            rejects,
            Some((work, &fingerprint)),
        )
        .await;
    }
    report.batches = batches_total;
    report.status = Verdict::Archived;
    finish(
        ctx,
        &occurrence,
        report,
        rejects,
        Some((work, &fingerprint)),
    )
    .await
}

/// The share of a file's rows that were rejected, compared with an import's
/// `max_reject_ratio` (above it, the file is quarantined). 0 for no rows.
pub fn rejected_share(accepted: u64, rejected: u64) -> f64 {
    let total = accepted + rejected;
    if total == 0 {
        0.0
    } else {
        rejected as f64 / total as f64
    }
}

/// A proof file's rows, and the encoding they are read in. Every pass over
/// a file (validation, delivery, a re-read) must decode it the same way, or
/// line numbers and rows would not match between them.
pub fn open_rows<'i>(
    import: &'i Import,
    path: &Path,
    fingerprint: &Fingerprint,
) -> io::Result<(RowReader<'i, File>, ResolvedEncoding)> {
    let file = claim::open_regular(path)?;
    let encoding = import
        .format
        .encoding
        .resolve(fingerprint.is_utf8, fingerprint.bom);
    Ok((RowReader::new(file, &import.format, encoding), encoding))
}

/// The text of the `wanted` rows of a proof file, as the rejects file shows it.
fn original_lines(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    wanted: &HashSet<u64>,
) -> io::Result<HashMap<u64, String>> {
    let (mut reader, encoding) = open_rows(import, path, fingerprint)?;
    let mut found = HashMap::with_capacity(wanted.len());
    while found.len() < wanted.len() {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(row))) if wanted.contains(&row.line) => {
                found.insert(row.line, encoding.decode_lossy(row.raw).into_owned());
            }
            Ok(Some(_)) => {}
            Err(crate::parse::ParseError::Io(err)) => return Err(err),
        }
    }
    Ok(found)
}

struct DeliveryPlan {
    batch_size: u64,
    skip: u64,
    cursor: Option<u64>,
    target: DeliveryTarget,
}

/// Sends every batch after `plan.skip`; returns how many batches are
/// acknowledged in all (less than the total only on shutdown).
async fn deliver(
    ctx: &Context,
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    plan: DeliveryPlan,
) -> Result<u64, PipelineError> {
    let mut delivery = ctx.sink.open(&plan.target, plan.cursor).await?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Batch>(4);
    let producer = {
        let import = work.import.clone();
        let path = occurrence.processing_path.clone();
        let file_name = occurrence.file_name.clone();
        let fingerprint = fingerprint.clone();
        let batch_size = plan.batch_size;
        let skip = plan.skip;
        let ids =
            index::Recorder::create(&index::work_path(&ctx.dirs.work, &occurrence.id), skip == 0);
        tokio::task::spawn_blocking(move || {
            produce_batches(
                &import,
                &path,
                &file_name,
                &fingerprint,
                (batch_size, skip),
                sender,
                ids,
            )
        })
    };

    let mut progress = Progress {
        occurrence_id: occurrence.id.clone(),
        acked: plan.skip,
        cursor: plan.cursor.unwrap_or(0),
        refused: Vec::new(),
        unrecorded: false,
        last_record: Instant::now(),
    };
    let mut interrupted = false;
    loop {
        let batch = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => { interrupted = true; break; }
            batch = receiver.recv() => batch,
        };
        let Some(batch) = batch else { break };
        match delivery.send(batch).await {
            Ok(acks) => progress.absorb(ctx, acks)?,
            Err(SinkError::Interrupted) => {
                interrupted = true;
                break;
            }
            Err(err) => return Err(err.into()),
        }
    }
    drop(receiver);
    let (acks, result) = if interrupted {
        delivery.checkpoint().await
    } else {
        delivery.finish().await
    };
    progress.absorb(ctx, acks)?;
    progress.record(ctx)?;
    match result {
        Ok(()) | Err(SinkError::Interrupted) => {}
        Err(err) => return Err(err.into()),
    }
    match producer.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) if interrupted => tracing::debug!(%err, "reader stopped by shutdown"),
        Ok(Err(err)) => return Err(err),
        Err(err) => return Err(PipelineError::Worker(err.to_string())),
    }
    Ok(progress.acked)
}

/// Acknowledged progress not yet committed, committed at most every
/// [`PROGRESS_INTERVAL`]: never beyond what the sink acknowledged.
struct Progress {
    occurrence_id: String,
    acked: u64,
    cursor: u64,
    refused: Vec<Refusal>,
    unrecorded: bool,
    last_record: Instant,
}

impl Progress {
    fn absorb(&mut self, ctx: &Context, acks: Vec<Ack>) -> Result<(), PipelineError> {
        for ack in acks {
            if ack.seq != self.acked {
                tracing::error!(
                    occurrence = %self.occurrence_id,
                    expected = self.acked,
                    got = ack.seq,
                    "the sink acknowledged batches out of order; progress not recorded past this point"
                );
                continue;
            }
            self.acked += 1;
            self.cursor = ack.cursor;
            ctx.counters.batches_acked.fetch_add(1, Ordering::Relaxed);
            ctx.counters
                .rows_refused
                .fetch_add(ack.refused.len() as u64, Ordering::Relaxed);
            self.refused.extend(ack.refused);
            self.unrecorded = true;
        }
        if self.unrecorded && self.last_record.elapsed() >= PROGRESS_INTERVAL {
            self.record(ctx)?;
        }
        Ok(())
    }

    fn record(&mut self, ctx: &Context) -> Result<(), PipelineError> {
        if !self.unrecorded {
            return Ok(());
        }
        ctx.journal().record_progress(
            &self.occurrence_id,
            self.acked,
            self.cursor,
            &self.refused,
        )?;
        self.refused.clear();
        self.unrecorded = false;
        self.last_record = Instant::now();
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Counts {
    accepted: u64,
    rejected: u64,
}

enum ValidateError {
    /// The proof file cannot be read: the file fails.
    Proof(io::Error),
    /// Our own state cannot be written: the file waits.
    State(PipelineError),
}

fn validate(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    rejects_path: &Path,
) -> Result<Counts, ValidateError> {
    let (mut reader, encoding) =
        open_rows(import, path, fingerprint).map_err(ValidateError::Proof)?;
    let mut rejects = RejectsWriter::create(rejects_path).map_err(ValidateError::State)?;
    let mut counts = Counts {
        accepted: 0,
        rejected: 0,
    };
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(_))) => counts.accepted += 1,
            Ok(Some(Record::Reject(reject))) => {
                counts.rejected += 1;
                let raw = encoding.decode_lossy(reject.raw);
                rejects
                    .write(reject.line, &reject.reason.to_string(), &raw)
                    .map_err(ValidateError::State)?;
            }
            Err(crate::parse::ParseError::Io(err)) => return Err(ValidateError::Proof(err)),
        }
    }
    rejects.finish().map_err(ValidateError::State)?;
    Ok(counts)
}

/// `line,reason,original_line`, UTF-8 CSV.
struct RejectsWriter {
    writer: csv::Writer<BufWriter<File>>,
    path: PathBuf,
}

impl RejectsWriter {
    fn create(path: &Path) -> Result<RejectsWriter, PipelineError> {
        let file = File::create(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut writer = RejectsWriter {
            writer: csv::Writer::from_writer(BufWriter::new(file)),
            path: path.to_path_buf(),
        };
        writer.record(&["line", "reason", "original_line"])?;
        Ok(writer)
    }

    fn open_append(path: &Path) -> Result<RejectsWriter, PipelineError> {
        let exists = path.exists();
        if !exists {
            return RejectsWriter::create(path);
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| PipelineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RejectsWriter {
            writer: csv::Writer::from_writer(BufWriter::new(file)),
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, line: u64, reason: &str, raw: &str) -> Result<(), PipelineError> {
        self.record(&[&line.to_string(), reason, raw])
    }

    fn record(&mut self, fields: &[&str]) -> Result<(), PipelineError> {
        self.writer
            .write_record(fields)
            .map_err(|err| self.error(io::Error::other(err)))
    }

    fn finish(self) -> Result<(), PipelineError> {
        let path = self.path.clone();
        let fail = |source| PipelineError::Io {
            path: path.clone(),
            source,
        };
        let buffered = self
            .writer
            .into_inner()
            .map_err(|err| fail(io::Error::other(err.to_string())))?;
        let file = buffered
            .into_inner()
            .map_err(|err| fail(io::Error::other(err.to_string())))?;
        file.sync_all().map_err(fail)
    }

    fn error(&self, source: io::Error) -> PipelineError {
        PipelineError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The delivery pass on two threads, since parsing and building events cost
/// about the same: this one reads rows into blocks of one batch each, a
/// scoped thread turns each block into a batch of events, in order.
fn produce_batches(
    import: &Import,
    path: &Path,
    file_name: &str,
    fingerprint: &Fingerprint,
    (batch_size, skip_batches): (u64, u64),
    sender: tokio::sync::mpsc::Sender<Batch>,
    mut ids: index::Recorder,
) -> Result<(), PipelineError> {
    let io_error = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (mut reader, _) = open_rows(import, path, fingerprint).map_err(io_error)?;
    let skip_rows = skip_batches * batch_size;
    let (blocks, received) = std::sync::mpsc::sync_channel::<RowBlock>(4);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut writer = EventWriter::new(import, file_name, &fingerprint.sha256);
            for (seq, block) in (skip_batches..).zip(received) {
                let mut batch = Batch::new(seq);
                batch
                    .buf
                    .reserve(block.text.len() * 3 + 512 * block.rows.len());
                for row in block.rows() {
                    batch.push_with(row.line, |out| {
                        ids.record(&writer.write(&row, out), row.line);
                    });
                }
                if sender.blocking_send(batch).is_err() {
                    return; // the delivery stopped (shutdown)
                }
            }
            ids.finish();
        });
        // Owned here, so that the event thread sees the end when this returns.
        let blocks = blocks;
        let mut accepted = 0u64;
        let mut block = RowBlock::default();
        loop {
            let row = match reader.next_record() {
                Err(crate::parse::ParseError::Io(source)) => return Err(io_error(source)),
                Ok(None) => break,
                Ok(Some(Record::Row(row))) => row,
                Ok(Some(Record::Reject(_))) => continue,
            };
            accepted += 1;
            if accepted <= skip_rows {
                continue;
            }
            block.push(&row);
            if block.rows.len() as u64 == batch_size
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

/// The rows of one batch, owned, to cross from the reader thread to the
/// event thread: the text of every field back to back.
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
    fn push(&mut self, row: &crate::parse::Row<'_>) {
        let mut ends = [0; 4];
        for (end, field) in
            ends.iter_mut()
                .zip([row.email, row.purpose_id, row.purpose_text, row.origin])
        {
            self.text.push_str(field);
            *end = self.text.len();
        }
        self.raw.extend_from_slice(row.raw);
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

/// `20261123T145500.123Z_<import>_<occurrence>`: sorts by claim time.
fn output_stem(occurrence: &Occurrence, import: &str) -> String {
    let compact: String = occurrence
        .claimed_at
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{compact}_{import}_{}", occurrence.id)
}

/// Writes the report (and rejects), moves the file to `archive/` or
/// `failed/`, and records the outcome. With `source` (the file was read and
/// delivered), rows the receiver refused get their original line in the
/// rejects file, read again from the claimed file: the journal keeps only
/// their line numbers.
async fn finish(
    ctx: &Context,
    occurrence: &Occurrence,
    mut report: Report,
    validation_rejects: Option<&Path>,
    source: Option<(&Work, &Fingerprint)>,
) -> Result<Report, PipelineError> {
    let present = occurrence.processing_path.exists();
    if !present {
        report.status = Verdict::Failed;
        report.reason = Some(
            "the file disappeared from processing/ before it could be moved (removed by hand?)"
                .to_string(),
        );
    }
    let refusals = ctx.journal().refusals(&occurrence.id)?;
    let original_lines = match source {
        Some((work, fingerprint)) if present && !refusals.is_empty() => {
            let refused: HashSet<u64> = refusals.iter().map(|refusal| refusal.line).collect();
            let import = work.import.clone();
            let path = occurrence.processing_path.clone();
            let fingerprint = fingerprint.clone();
            let read =
                blocking(move || original_lines(&import, &path, &fingerprint, &refused)).await?;
            read.unwrap_or_else(|err| {
                tracing::warn!(
                    occurrence = %occurrence.id,
                    "cannot read the refused rows' original lines again: {err}; the rejects file names their line numbers only"
                );
                HashMap::new()
            })
        }
        _ => HashMap::new(),
    };
    report.rows_refused = refusals.len() as u64;
    report.rows_delivered = if report.status == Verdict::Archived {
        report.rows_accepted.saturating_sub(report.rows_refused)
    } else {
        0
    };
    report.finished_at = now_rfc3339();
    let dir = match report.status {
        Verdict::Archived | Verdict::Duplicate => ctx
            .dirs
            .archive
            .join(Utc::now().format("%Y-%m-%d").to_string()),
        _ => ctx.dirs.failed.clone(),
    };
    claim::create_dir_durably(&dir)?;
    let placement = claim::choose_placement(&dir, &occurrence.file_name, &occurrence.id);

    // Rejects: those of validation, then those the receiver refused.
    let scratch = ctx.dirs.rejects_work_path(&occurrence.id);
    let has_rejects = validation_rejects.is_some() || !refusals.is_empty();
    if has_rejects {
        // After validation's rejects, or a fresh file (header included).
        let mut writer = match validation_rejects {
            Some(_) => RejectsWriter::open_append(&scratch)?,
            None => RejectsWriter::create(&scratch)?,
        };
        for refusal in &refusals {
            let original = original_lines.get(&refusal.line).map_or("", String::as_str);
            writer.write(refusal.line, &refusal.message, original)?;
        }
        writer.finish()?;
        claim::move_durably(&scratch, &placement.rejects)?;
        report.rejects_file = Some(placement.rejects.clone());
    } else {
        let _ = std::fs::remove_file(&scratch);
    }
    report.file = present.then(|| placement.file.clone());
    let json = serde_json::to_vec_pretty(&report).map_err(|err| PipelineError::Io {
        path: placement.report.clone(),
        source: io::Error::other(err),
    })?;
    claim::write_durably(&placement.report, &json)?;

    if let (Some((work, print)), Verdict::Archived, true) = (source, report.status, present) {
        let day = dir.file_name().map(|d| d.to_string_lossy().into_owned());
        let path = &occurrence.processing_path;
        index::seal(
            &ctx.dirs.root,
            &ctx.dirs.work,
            &day.unwrap_or_default(),
            &occurrence.id,
            report.rows_accepted,
            |ids| {
                index::record_rows(
                    open_rows(&work.import, path, print)?.0,
                    &work.import.name,
                    ids,
                )
            },
        )?;
    }
    if present {
        ctx.journal()
            .record_outcome_path(&occurrence.id, &placement.file)?;
        claim::move_durably(&occurrence.processing_path, &placement.file)?;
    }
    let status = match report.status {
        Verdict::Archived => Status::Archived,
        Verdict::Duplicate => Status::Duplicate,
        _ => Status::Failed,
    };
    ctx.journal().record_outcome(
        &occurrence.id,
        status,
        report.reason.as_deref(),
        &report.finished_at,
    )?;
    let counter = match status {
        Status::Archived => &ctx.counters.files_archived,
        Status::Duplicate => &ctx.counters.files_duplicate,
        _ => &ctx.counters.files_failed,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if status == Status::Archived {
        ctx.counters
            .rows_accepted
            .fetch_add(report.rows_accepted, Ordering::Relaxed);
        ctx.counters
            .events_delivered
            .fetch_add(report.rows_delivered, Ordering::Relaxed);
    }
    Ok(report)
}

/// Finishes an occurrence whose file already reached its outcome folder
/// before a crash (the journal recorded where it was going).
pub fn settle_moved(ctx: &Context, occurrence: &Occurrence) -> Result<bool, JournalError> {
    let Some(outcome) = &occurrence.outcome_path else {
        return Ok(false);
    };
    if occurrence.processing_path.exists() || !outcome.exists() {
        return Ok(false);
    }
    let in_failed = outcome.starts_with(&ctx.dirs.failed);
    let status = if in_failed {
        Status::Failed
    } else if occurrence.batches_total.is_some() {
        Status::Archived
    } else {
        Status::Duplicate
    };
    ctx.journal().record_outcome(
        &occurrence.id,
        status,
        occurrence.reason.as_deref(),
        &now_rfc3339(),
    )?;
    Ok(true)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| PipelineError::Worker(err.to_string()))
}
