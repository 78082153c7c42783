//! pipeline: takes one claimed file from `processing/` to its outcome.
//!
//! The order is the safety, and it is written as explicit steps
//! ([`Step`]): fingerprint → duplicate check → a whole validation pass
//! (nothing is sent from a file that will be quarantined) → delivery batch
//! by batch, recording in the journal only what the sink acknowledged →
//! finish (report, move to `archive/` or `failed/`). A file leaves
//! `processing/` only after its last batch is acknowledged. Resuming an
//! occurrence re-runs the same steps and skips the batches the journal says
//! are acknowledged. To a sink that stages (the file sink), the validation
//! pass and the delivery are one read ([`stage`]): events wait in a file no
//! consumer reads, and nothing of them is recorded, until the file passes.
//! Errors of the proof file end in `failed/`; errors of
//! our own state (full disk, journal) leave the file where it is, to be
//! tried again.
//!
//! Every journal write and folder fsync goes through group commit
//! ([`crate::commit`]): a step waits until what it recorded is durable, and
//! the files in flight share the transactions and fsyncs.

mod context;
mod deliver;
mod finish;
mod produce;
mod rejects;
mod report;
mod stage;
mod validate;

pub use context::{Context, Counters, PipelineError};
pub use finish::settle_moved;
pub use report::{now_rfc3339, Report, Verdict, Work};
pub use validate::rejected_share;

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::claim::Fingerprint;
use crate::config::Import;
use crate::journal::{Occurrence, Status, Validated};
use crate::parse::{ResolvedEncoding, RowReader};
use crate::sink::{Coming, DeliveryTarget};
use crate::unpack;

use self::rejects::Counts;

/// The steps of a file's life, in order. Each either lets the file go on,
/// ends it (the finish step then writes the report and moves it), or stops
/// at shutdown with the file left in `processing/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fingerprint,
    DuplicateCheck,
    Validate,
    Deliver,
}

/// Plain files up to this size tell the sink they are coming from their
/// claim (or fingerprint) on: their validation takes milliseconds, so that
/// the events of many small files share requests; larger or compressed
/// ones (whose content may be far larger) from their validation's end.
const SMALL_FILE_BYTES: u64 = 1 << 20;

const STEPS: [Step; 4] = [
    Step::Fingerprint,
    Step::DuplicateCheck,
    Step::Validate,
    Step::Deliver,
];

enum Flow {
    Next,
    Finish(Ending),
    Interrupted,
}

/// How a file ends, as the finish step needs it.
struct Ending {
    verdict: Verdict,
    reason: Option<String>,
    /// The file was read and (partly) delivered: refused rows get their
    /// original lines from it.
    delivered: bool,
}

impl Ending {
    fn unread(verdict: Verdict, reason: String) -> Flow {
        Flow::Finish(Ending {
            verdict,
            reason: Some(reason),
            delivered: false,
        })
    }
}

/// One file on its way through the steps.
struct FileRun<'a> {
    ctx: &'a Context,
    work: &'a Work,
    occurrence: Occurrence,
    report: Report,
    fingerprint: Option<Fingerprint>,
    counts: Option<Counts>,
    /// Told to the sink once a small file is read: see [`Sink::coming`].
    coming: Option<Coming>,
    /// Read, validated and written to a sink that stages, not yet finished.
    staged: Option<Box<stage::Staged>>,
}

/// Runs one occurrence to its end (or to shutdown).
pub async fn process(ctx: &Context, work: &Work) -> Result<Report, PipelineError> {
    process_claimed(ctx, work, None, None).await
}

/// A small plain file of `size` bytes is being claimed for `work`: until the
/// guard is dropped (by [`process_claimed`], at its delivery), requests of its
/// destination that are not full wait for its events. None for other files.
pub fn coming(ctx: &Context, work: &Work, file_name: &str, size: u64) -> Option<Coming> {
    let plain = unpack::Packing::of(file_name) == unpack::Packing::Plain;
    let import = &work.import;
    (plain && size <= SMALL_FILE_BYTES).then(|| {
        ctx.sink
            .coming(import.organization(), import.disable_integrations)
    })
}

/// Starts reading the fingerprint of a small plain file just claimed (at
/// `path`, of `size` bytes), on a blocking thread, so that it is recorded
/// with the claim: see [`process_claimed`]. None for other files, whose
/// fingerprint step reads them.
pub fn start_fingerprint(
    work: &Work,
    path: &Path,
    file_name: &str,
    size: u64,
) -> Option<tokio::task::JoinHandle<io::Result<Fingerprint>>> {
    let plain = unpack::Packing::of(file_name) == unpack::Packing::Plain;
    if !plain || size > SMALL_FILE_BYTES {
        return None;
    }
    let (path, encoding, max) = (
        path.to_path_buf(),
        work.import.format.encoding,
        work.import.max_decompressed_bytes,
    );
    Some(tokio::task::spawn_blocking(move || {
        unpack::fingerprint(&path, encoding, max)
    }))
}

/// [`process`], for a file just claimed: announced by [`coming`], and with
/// the `fingerprint` recorded in its claim's journal entry, if any (the
/// fingerprint step then does not read the file again).
pub async fn process_claimed(
    ctx: &Context,
    work: &Work,
    coming: Option<Coming>,
    fingerprint: Option<Fingerprint>,
) -> Result<Report, PipelineError> {
    let mut run = FileRun::load(ctx, work)?;
    run.coming = coming;
    // Only what the journal holds counts as recorded.
    run.fingerprint =
        fingerprint.filter(|print| run.occurrence.sha256.as_deref() == Some(print.sha256.as_str()));
    for step in STEPS {
        let flow = match step {
            Step::Fingerprint => run.fingerprint().await?,
            Step::DuplicateCheck => run.duplicate_check()?,
            Step::Validate => run.validate().await?,
            Step::Deliver => run.deliver().await?,
        };
        match flow {
            Flow::Next => {}
            Flow::Interrupted => return Ok(run.report),
            Flow::Finish(ending) => return run.end(ending).await,
        }
    }
    // Every step passed.
    let ending = Ending {
        verdict: Verdict::Archived,
        reason: None,
        delivered: true,
    };
    run.end(ending).await
}

impl<'a> FileRun<'a> {
    fn load(ctx: &'a Context, work: &'a Work) -> Result<FileRun<'a>, PipelineError> {
        let occurrence = ctx
            .reader()
            .get(&work.occurrence_id)?
            .ok_or_else(|| PipelineError::UnknownOccurrence(work.occurrence_id.clone()))?;
        let report = Report {
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
        Ok(FileRun {
            ctx,
            work,
            occurrence,
            report,
            fingerprint: None,
            counts: None,
            coming: None,
            staged: None,
        })
    }

    /// The finish step; events staged for a file that then failed
    /// validation are removed first.
    async fn end(mut self, ending: Ending) -> Result<Report, PipelineError> {
        if let Some(staged) = self.staged.take() {
            staged.abandon(&self.occurrence).await;
        }
        finish::finish(self, ending).await
    }

    fn coming_to_sink(&self) -> Coming {
        let import = &self.work.import;
        self.ctx
            .sink
            .coming(import.organization(), import.disable_integrations)
    }

    fn resuming(&self) -> bool {
        self.occurrence.status == Status::Delivering
    }

    /// SHA-256, size and encoding probe, in one read (or read and recorded
    /// with the claim already).
    async fn fingerprint(&mut self) -> Result<Flow, PipelineError> {
        let fingerprint = match self.fingerprint.take() {
            Some(recorded) => recorded,
            None => match self.read_fingerprint().await? {
                Ok(fingerprint) => fingerprint,
                Err(ending) => return Ok(ending),
            },
        };
        self.report.sha256 = Some(fingerprint.sha256.clone());
        self.report.size = Some(fingerprint.size);
        let plain = unpack::Packing::of(&self.occurrence.file_name) == unpack::Packing::Plain;
        if self.coming.is_none() && plain && fingerprint.size <= SMALL_FILE_BYTES {
            // Its validation is short: small requests may wait for it.
            self.coming = Some(self.coming_to_sink());
        }
        self.fingerprint = Some(fingerprint);
        Ok(Flow::Next)
    }

    /// Reads the fingerprint and records it; an unreadable file ends.
    async fn read_fingerprint(&mut self) -> Result<Result<Fingerprint, Flow>, PipelineError> {
        let path = self.occurrence.processing_path.clone();
        let (encoding, max) = (
            self.work.import.format.encoding,
            self.work.import.max_decompressed_bytes,
        );
        let fingerprint = match blocking(move || unpack::fingerprint(&path, encoding, max)).await? {
            Ok(fingerprint) => fingerprint,
            Err(err) => return Ok(Err(unreadable(&err))),
        };
        let (id, sha256, size) = (
            self.occurrence.id.clone(),
            fingerprint.sha256.clone(),
            fingerprint.size,
        );
        self.ctx
            .record(move |journal| journal.record_fingerprint(&id, &sha256, size))
            .await?;
        Ok(Ok(fingerprint))
    }

    /// Same content as a file already imported (or being imported): not sent again.
    fn duplicate_check(&mut self) -> Result<Flow, PipelineError> {
        let Some(sha256) = self.report.sha256.as_deref() else {
            return Ok(Flow::Next);
        };
        if self.occurrence.status != Status::Claimed {
            return Ok(Flow::Next);
        }
        let earlier = self
            .ctx
            .reader()
            .find_same_content(sha256, &self.occurrence.id)?;
        let Some(earlier) = earlier else {
            return Ok(Flow::Next);
        };
        self.report.duplicate_of = Some(earlier.clone());
        Ok(Ending::unread(
            Verdict::Duplicate,
            format!("same content (SHA-256) as occurrence {earlier}: not sent again"),
        ))
    }

    fn target(&self, output_stem: String) -> DeliveryTarget {
        let import = &self.work.import;
        DeliveryTarget {
            occurrence_id: self.occurrence.id.clone(),
            import: import.name.clone(),
            disable_integrations: import.disable_integrations,
            organization_id: import.organization().map(str::to_string),
            output_stem,
        }
    }

    /// The batches of a staged file made durable and visible.
    async fn commit_staged(&mut self, staged: Box<stage::Staged>) -> Result<Flow, PipelineError> {
        let started = Instant::now();
        self.report.batches = staged.commit(self.ctx).await?;
        self.report.deliver_ms = started.elapsed().as_millis() as u64;
        Ok(Flow::Next)
    }

    /// Every batch after those already acknowledged, recording each ack.
    async fn deliver(&mut self) -> Result<Flow, PipelineError> {
        if let Some(staged) = self.staged.take() {
            return self.commit_staged(staged).await;
        }
        let (Some(fingerprint), Some(counts)) = (self.fingerprint.clone(), self.counts) else {
            return Ok(Flow::Next);
        };
        let resuming = self.resuming();
        let occurrence = &self.occurrence;
        let batch_size = match occurrence.batch_size {
            Some(size) if resuming && size > 0 => size,
            _ => self.ctx.batch_size as u64,
        };
        let output_stem = match &occurrence.output_stem {
            Some(stem) if resuming => stem.clone(),
            _ => output_stem(occurrence, &self.work.import.name),
        };
        let batches_total = counts.accepted.div_ceil(batch_size);
        let target = self.target(output_stem.clone());
        // From here on (or from the fingerprint on, for a small file) other
        // files' small requests wait for this one's events.
        let coming = self.coming.take().unwrap_or_else(|| self.coming_to_sink());
        if !resuming {
            let id = occurrence.id.clone();
            let validated = Validated {
                rows_accepted: counts.accepted,
                rows_rejected: counts.rejected,
                batch_size,
                batches_total,
                output_stem: output_stem.clone(),
            };
            self.ctx
                .record(move |journal| journal.record_validated(&id, &validated))
                .await?;
        }
        // Where the sink left off, when resuming.
        let (skip, cursor) = if resuming {
            (occurrence.batches_acked, occurrence.sink_cursor)
        } else {
            (0, None)
        };
        self.ctx
            .counters
            .batches_planned
            .fetch_add(batches_total.saturating_sub(skip), Ordering::Relaxed);
        let started = Instant::now();
        let plan = deliver::DeliveryPlan {
            batch_size,
            skip,
            cursor,
            batches_total,
            target,
            coming,
        };
        let delivered =
            deliver::deliver(self.ctx, self.work, &self.occurrence, &fingerprint, plan).await?;
        self.report.deliver_ms = started.elapsed().as_millis() as u64;
        self.report.batches = delivered;
        if delivered >= batches_total {
            return Ok(Flow::Next);
        }
        if self.ctx.shutdown.is_cancelled() {
            return Ok(Flow::Interrupted);
        }
        // Nobody may write to a claimed file; someone did, so its content is
        // no longer what was validated and hashed.
        Ok(Flow::Finish(Ending {
            verdict: Verdict::Failed,
            reason: Some(format!(
                "the file changed while it was being read (truncated or rewritten in processing/): {delivered} of {batches_total} batches found and delivered; the rest is lost from this copy, drop the original again"
            )),
            delivered: true,
        }))
    }
}

fn unreadable(err: &io::Error) -> Flow {
    Ending::unread(Verdict::Failed, format!("cannot read the file: {err}"))
}

/// A proof file's rows, and the encoding they are read in. Every pass over
/// a file (validation, delivery, a re-read) must decode it the same way, or
/// line numbers and rows would not match between them.
pub fn open_rows<'i>(
    import: &'i Import,
    path: &Path,
    fingerprint: &Fingerprint,
) -> io::Result<(RowReader<'i, unpack::Content>, ResolvedEncoding)> {
    let file = unpack::open(path, import.max_decompressed_bytes)?;
    let encoding = resolved_encoding(import, fingerprint);
    Ok((RowReader::new(file, &import.format, encoding), encoding))
}

/// The encoding every pass over a file reads it in: the import's, with
/// `auto` settled by the file's fingerprint.
pub fn resolved_encoding(import: &Import, fingerprint: &Fingerprint) -> ResolvedEncoding {
    import
        .format
        .encoding
        .resolve(fingerprint.is_utf8, fingerprint.bom)
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

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PipelineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| PipelineError::Worker(err.to_string()))
}
