//! The validate step of one file: its counts, from the validation pass or,
//! to a sink that stages, from the one read that also delivers; and the
//! verdict on them (too many rejects quarantine the file, with the likely
//! cause). It never records a verdict itself: the finish step does.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::rejects::{self, Counts, ValidateError};
use super::{
    blocking, output_stem, stage, unreadable, Ending, FileRun, Flow, PipelineError, Verdict,
};
use crate::claim::Fingerprint;
use crate::unpack;

impl FileRun<'_> {
    /// Every row, before anything is sent; too many rejects quarantine the file.
    pub(super) async fn validate(&mut self) -> Result<Flow, PipelineError> {
        let Some(fingerprint) = self.fingerprint.clone() else {
            return Ok(Flow::Next);
        };
        let started = Instant::now();
        let counts = if self.ctx.sink.stages() && !self.resuming() {
            self.stage(&fingerprint).await?
        } else {
            self.validation_pass(fingerprint).await?
        };
        self.report.validate_ms = started.elapsed().as_millis() as u64;
        let counts = match counts {
            Ok(counts) => counts,
            Err(flow) => return Ok(flow),
        };
        self.report.rows_accepted = counts.accepted;
        self.report.rows_rejected = counts.rejected;
        self.counts = Some(counts);
        self.ctx
            .counters
            .rows_rejected
            .fetch_add(counts.rejected, Ordering::Relaxed);
        let ratio = rejected_share(counts.accepted, counts.rejected);
        if ratio > self.work.import.max_reject_ratio {
            // A staged delivery is abandoned at the end (`FileRun::end`).
            return self.quarantine(counts, ratio).await;
        }
        Ok(Flow::Next)
    }

    /// The validation pass alone: rows counted, rejects written.
    async fn validation_pass(
        &mut self,
        fingerprint: Fingerprint,
    ) -> Result<Result<Counts, Flow>, PipelineError> {
        let import = self.work.import.clone();
        let path = self.occurrence.processing_path.clone();
        let rejects_path = self.ctx.dirs.rejects_work_path(&self.occurrence.id);
        let counts =
            blocking(move || rejects::validate(&import, &path, &fingerprint, &rejects_path))
                .await?;
        match counts {
            Ok(counts) => Ok(Ok(counts)),
            Err(ValidateError::Proof(err)) => Ok(Err(unreadable(&err))),
            Err(ValidateError::State(err)) => Err(err),
        }
    }

    /// The validation pass and the delivery in one read, for a sink that
    /// stages (see [`stage`]): the staged delivery waits for the verdict.
    async fn stage(
        &mut self,
        fingerprint: &Fingerprint,
    ) -> Result<Result<Counts, Flow>, PipelineError> {
        let target = self.target(output_stem(&self.occurrence, &self.work.import.name));
        let staging = stage::stage(self.ctx, self.work, &self.occurrence, fingerprint, target);
        match staging.await? {
            stage::Staging::Staged(staged) => {
                let counts = staged.counts;
                self.staged = Some(staged);
                Ok(Ok(counts))
            }
            stage::Staging::Unreadable(err) => Ok(Err(unreadable(&err))),
            stage::Staging::Interrupted => Ok(Err(Flow::Interrupted)),
        }
    }

    /// Too many rows rejected: the file fails whole, with the likely cause.
    async fn quarantine(&mut self, counts: Counts, ratio: f64) -> Result<Flow, PipelineError> {
        let cause = {
            let path = self.occurrence.processing_path.clone();
            let import = self.work.import.clone();
            blocking(move || unpack::diagnose(&path, &import.format, import.max_decompressed_bytes))
                .await?
        };
        let cause = cause.map_or_else(
            || "probably a wrong date format, separator or encoding".to_string(),
            |cause| cause.to_string(),
        );
        let max = self.work.import.max_reject_ratio;
        Ok(Ending::unread(
            Verdict::Quarantined,
            format!(
                "{} of {} rows rejected ({:.0}%, above max_reject_ratio {max}): {cause}; nothing was sent",
                counts.rejected,
                counts.accepted + counts.rejected,
                ratio * 100.0,
            ),
        ))
    }
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
