//! The finish step: report, rejects, the move to `archive/` or `failed/`,
//! the outcome in the journal — each made durable before the next, with
//! the folder fsyncs and journal commits shared between files.
//!
//! Order: rejects and report written and fsynced, renamed into the outcome
//! folder, that folder synced and, at the same time, the destination
//! recorded → file moved out of `processing/`, both folders synced →
//! outcome recorded. A crash at any point leaves either the file in
//! `processing/` (resumed, its report written again) or a recorded
//! destination holding the file, beside its durable report, that start-up
//! settles ([`settle_moved`]). The destination is read only once the file
//! has left `processing/`, so it may be committed while the report's
//! folder is synced: the move waits for both.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use chrono::Utc;

use super::rejects::{self, RejectsWriter};
use super::{
    blocking, now_rfc3339, open_rows, Context, Ending, FileRun, PipelineError, Report, Verdict,
    Work,
};
use crate::claim::{self, Fingerprint, Placement};
use crate::index;
use crate::journal::{JournalError, Occurrence, Status};
use crate::sink::Refusal;

/// Writes the report (and rejects), moves the file to `archive/` or
/// `failed/`, and records the outcome. Rows the receiver refused get their
/// original line in the rejects file, read again from the claimed file (the
/// journal keeps only their line numbers).
pub(super) async fn finish(run: FileRun<'_>, ending: Ending) -> Result<Report, PipelineError> {
    let FileRun {
        ctx,
        work,
        occurrence,
        mut report,
        fingerprint,
        counts,
        coming,
        staged: _,
    } = run;
    // Whatever comes from here on is not events.
    drop(coming);
    report.status = ending.verdict;
    report.reason = ending.reason;
    let present = occurrence.processing_path.exists();
    if !present {
        report.status = Verdict::Failed;
        report.reason = Some(
            "the file disappeared from processing/ before it could be moved (removed by hand?)"
                .to_string(),
        );
    }
    let refusals = ctx.reader().refusals(&occurrence.id)?;
    let original_lines = match &fingerprint {
        Some(print) if ending.delivered && present && !refusals.is_empty() => {
            refused_lines(work, &occurrence, print, &refusals).await?
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
    let papers = Papers {
        dir: outcome_dir(ctx, report.status),
        scratch: ctx.dirs.rejects_work_path(&occurrence.id),
        validation_rejects: counts.is_some_and(|counts| counts.rejected > 0),
        refusals,
        original_lines,
        file_name: occurrence.file_name.clone(),
        occurrence_id: occurrence.id.clone(),
        present,
    };
    // The index run is sealed while the report is written (each fsync on
    // its own thread), and both folders are synced in one group commit.
    let (day, status, accepted) = (day_of(&papers.dir), report.status, report.rows_accepted);
    let index_run = async {
        match (&fingerprint, status, present) {
            (Some(print), Verdict::Archived, true) => {
                seal_index(ctx, work, &occurrence, print, &day, accepted).await
            }
            _ => {
                index::discard(&ctx.dirs.work, &occurrence.id);
                Ok(None)
            }
        }
    };
    let papers_written = blocking(move || papers.write(report));
    let (written, index_run) = tokio::join!(papers_written, index_run);
    let (placement, report) = written??;
    let index_run = index_run?;
    // The report, rejects and index run are in their folders before the
    // file moves.
    let papers_synced = async {
        match &index_run {
            Some(run) => ctx.dir_sync.sync_dirs_of(&[&placement.report, run]).await,
            None => ctx.dir_sync.sync_dir_of(&placement.report).await,
        }
    };
    if present {
        move_to_outcome(ctx, &occurrence, &placement, papers_synced).await?;
    } else {
        papers_synced.await?;
    }
    record_outcome(ctx, &occurrence, &report).await?;
    Ok(report)
}

/// The original lines of the rows the API refused, read again from the
/// claimed file (a failure costs the rejects file its lines, not the file).
async fn refused_lines(
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    refusals: &[Refusal],
) -> Result<HashMap<u64, String>, PipelineError> {
    let refused: HashSet<u64> = refusals.iter().map(|refusal| refusal.line).collect();
    let import = work.import.clone();
    let path = occurrence.processing_path.clone();
    let fingerprint = fingerprint.clone();
    let read =
        blocking(move || rejects::original_lines(&import, &path, &fingerprint, &refused)).await?;
    Ok(read.unwrap_or_else(|err| {
        tracing::warn!(
            occurrence = %occurrence.id,
            "cannot read the refused rows' original lines again: {err}; the rejects file names their line numbers only"
        );
        HashMap::new()
    }))
}

/// The destination is committed before the file moves, so that a crash
/// mid-move is settled at start (committed while `papers_synced` makes the
/// report durable: the move waits for both); both folders are synced after.
async fn move_to_outcome(
    ctx: &Context,
    occurrence: &Occurrence,
    placement: &Placement,
    papers_synced: impl std::future::Future<Output = Result<(), claim::ClaimError>>,
) -> Result<(), PipelineError> {
    let (id, destination) = (occurrence.id.clone(), placement.file.clone());
    let recorded = ctx.record(move |journal| journal.record_outcome_path(&id, &destination));
    let (synced, recorded) = tokio::join!(papers_synced, recorded);
    synced?;
    recorded?;
    claim::rename(&occurrence.processing_path, &placement.file)?;
    ctx.dir_sync
        .sync_dirs_of(&[&placement.file, &occurrence.processing_path])
        .await?;
    Ok(())
}

/// `archive/<today>/` for an archived or duplicate file, else `failed/`.
fn outcome_dir(ctx: &Context, status: Verdict) -> PathBuf {
    match status {
        Verdict::Archived | Verdict::Duplicate => ctx
            .dirs
            .archive
            .join(Utc::now().format("%Y-%m-%d").to_string()),
        _ => ctx.dirs.failed.clone(),
    }
}

/// The archive day of an outcome folder (`archive/YYYY-MM-DD`).
fn day_of(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|day| day.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One archived file's index run, durable but for its folder's fsync,
/// which the caller shares with the report's before the file moves.
async fn seal_index(
    ctx: &Context,
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    day: &str,
    accepted: u64,
) -> Result<Option<PathBuf>, PipelineError> {
    let (root, work_dir, day, id) = (
        ctx.dirs.root.clone(),
        ctx.dirs.work.clone(),
        day.to_string(),
        occurrence.id.clone(),
    );
    let (import, path, print) = (
        work.import.clone(),
        occurrence.processing_path.clone(),
        fingerprint.clone(),
    );
    let run = blocking(move || {
        index::seal(&root, &work_dir, &day, &id, accepted, |ids| {
            index::record_rows(open_rows(&import, &path, &print)?.0, &import.name, ids)
        })
    })
    .await??;
    Ok(run)
}

async fn record_outcome(
    ctx: &Context,
    occurrence: &Occurrence,
    report: &Report,
) -> Result<(), PipelineError> {
    let status = match report.status {
        Verdict::Archived => Status::Archived,
        Verdict::Duplicate => Status::Duplicate,
        _ => Status::Failed,
    };
    let (id, reason, finished_at) = (
        occurrence.id.clone(),
        report.reason.clone(),
        report.finished_at.clone(),
    );
    ctx.record(move |journal| journal.record_outcome(&id, status, reason.as_deref(), &finished_at))
        .await?;
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
    Ok(())
}

/// What the finish step writes beside the file, on a blocking thread.
struct Papers {
    dir: PathBuf,
    scratch: PathBuf,
    validation_rejects: bool,
    refusals: Vec<Refusal>,
    original_lines: HashMap<u64, String>,
    file_name: String,
    occurrence_id: String,
    present: bool,
}

impl Papers {
    /// Rejects then report, each fsynced and renamed into the outcome
    /// folder (the caller syncs the folder).
    fn write(self, mut report: Report) -> Result<(Placement, Report), PipelineError> {
        // A new day's folder is durable (its parent synced) before files move in.
        claim::create_dir_durably(&self.dir)?;
        let place = claim::choose_placement(&self.dir, &self.file_name, &self.occurrence_id);
        // Rejects: those of validation, then those the receiver refused.
        if self.validation_rejects || !self.refusals.is_empty() {
            // After validation's rejects, or a fresh file (header included).
            let mut writer = if self.validation_rejects {
                RejectsWriter::open_append(&self.scratch)?
            } else {
                RejectsWriter::create(&self.scratch)?
            };
            for refusal in &self.refusals {
                let original = self
                    .original_lines
                    .get(&refusal.line)
                    .map_or("", String::as_str);
                writer.write(refusal.line, &refusal.message, original)?;
            }
            writer.finish()?;
            claim::rename(&self.scratch, &place.rejects)?;
            report.rejects_file = Some(place.rejects.clone());
        } else {
            // A scratch file of an earlier attempt, if any, is not this one's.
            let _ = std::fs::remove_file(&self.scratch);
        }
        report.file = self.present.then(|| place.file.clone());
        let json = serde_json::to_vec_pretty(&report).map_err(|err| PipelineError::Io {
            path: place.report.clone(),
            source: io::Error::other(err),
        })?;
        claim::write_synced(&place.report, &json)?;
        Ok((place, report))
    }
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
