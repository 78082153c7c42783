//! The one-read import, for a sink that stages ([`crate::sink::Sink::stages`]:
//! the file sink): the validation pass and the delivery are the same read,
//! so a file is parsed once, not twice. Its events go to the sink's
//! `.partial` file while the rows are counted; acks are held, not recorded.
//! Only once the counts pass `max_reject_ratio` is the delivery finished
//! and its validation and progress recorded, in one transaction; a file
//! that fails validation has its staged events removed, and nothing of it
//! was ever in a file a consumer reads. A crash before that record leaves
//! the occurrence claimed, so it starts over and the `.partial` file is
//! cut back to nothing: never an event twice, never one of a quarantined
//! file.

use std::io;
use std::sync::atomic::Ordering;

use super::deliver::{self, Progress, ReadPlan};
use super::rejects::{Counts, ValidateError};
use super::{Context, PipelineError, Work};
use crate::claim::Fingerprint;
use crate::journal::{Occurrence, Validated};
use crate::sink::{Delivery, DeliveryTarget};

/// A file read, validated and written to the sink, not yet finished.
pub(super) struct Staged {
    delivery: Delivery,
    progress: Progress,
    pub counts: Counts,
    batch_size: u64,
    output_stem: String,
    occurrence_id: String,
}

pub(super) enum Staging {
    Staged(Box<Staged>),
    /// The proof file cannot be read: it fails.
    Unreadable(io::Error),
    Interrupted,
}

/// Reads the whole file once: rows counted and rejects written, events
/// handed to the sink.
pub(super) async fn stage(
    ctx: &Context,
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    target: DeliveryTarget,
) -> Result<Staging, PipelineError> {
    let batch_size = ctx.batch_size as u64;
    let mut delivery = ctx.sink.open(&target, None).await?;
    let plan = ReadPlan {
        batch_size,
        skip: 0,
        batches_total: None,
        rejects_path: Some(ctx.dirs.rejects_work_path(&occurrence.id)),
    };
    let (producer, receiver) = deliver::spawn_producer(ctx, work, occurrence, fingerprint, plan);
    let mut progress = Progress::held(occurrence.id.clone());
    let sent = deliver::send_runs(ctx, &mut delivery, receiver, &mut progress, None).await;
    // The reader ends once the channel is gone (or at the file's end).
    let counted = producer.await;
    if sent? {
        return Ok(Staging::Interrupted);
    }
    let counts = match counted {
        Ok(Ok(Some(counts))) => counts,
        Ok(Ok(None)) => {
            return Err(PipelineError::Worker(
                "the reader of a file did not count its rows".into(),
            ))
        }
        Ok(Err(ValidateError::Proof(err))) => {
            abandon(delivery, occurrence).await;
            return Ok(Staging::Unreadable(err));
        }
        Ok(Err(ValidateError::State(err))) => return Err(err),
        Err(err) => return Err(PipelineError::Worker(err.to_string())),
    };
    Ok(Staging::Staged(Box::new(Staged {
        delivery,
        progress,
        counts,
        batch_size,
        output_stem: target.output_stem,
        occurrence_id: occurrence.id.clone(),
    })))
}

impl Staged {
    /// The file passed: its events are made durable and visible, then its
    /// validation and everything acknowledged are recorded together.
    /// Returns the batches delivered.
    pub async fn commit(mut self: Box<Self>, ctx: &Context) -> Result<u64, PipelineError> {
        let batches_total = self.counts.accepted.div_ceil(self.batch_size);
        ctx.counters
            .batches_planned
            .fetch_add(batches_total, Ordering::Relaxed);
        let (acks, result) = self.delivery.finish().await;
        result?;
        self.progress.absorb(ctx, acks).await?;
        let (acked, cursor, refused) = self.progress.release(ctx);
        if acked != batches_total {
            return Err(PipelineError::Worker(format!(
                "the sink acknowledged {acked} of the file's {batches_total} batches"
            )));
        }
        let id = self.occurrence_id;
        let validated = Validated {
            rows_accepted: self.counts.accepted,
            rows_rejected: self.counts.rejected,
            batch_size: self.batch_size,
            batches_total,
            output_stem: self.output_stem,
        };
        ctx.record(move |journal| {
            journal.record_validated(&id, &validated)?;
            journal.record_progress(&id, acked, cursor, &refused)
        })
        .await?;
        Ok(acked)
    }

    /// The file failed validation: what was staged is removed.
    pub async fn abandon(self: Box<Self>, occurrence: &Occurrence) {
        abandon(self.delivery, occurrence).await;
    }
}

/// A failure to remove staged events costs a stray `.partial` file in the
/// sink's folder, never an event: it is logged, not raised.
async fn abandon(delivery: Delivery, occurrence: &Occurrence) {
    if let Err(err) = delivery.abandon().await {
        tracing::warn!(
            occurrence = %occurrence.id,
            "cannot remove the events written while the file was validated: {err}"
        );
    }
}
