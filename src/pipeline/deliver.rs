//! The delivery pass of one file: batches from the reader threads to the
//! sink, acknowledgements from the sink to the journal.
//!
//! Progress is recorded without a timer: as soon as the sink acknowledges
//! something and no record of this file is being committed, a record of
//! everything acknowledged so far joins the journal's next group commit.
//! While it commits, delivery goes on; what is acknowledged meanwhile goes
//! into the next record. The journal never holds more than the sink
//! acknowledged, and a crash re-sends at most what was not yet committed.

use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;

use super::produce::{self, Production, Run};
use super::{Context, PipelineError, Work};
use crate::claim::Fingerprint;
use crate::index;
use crate::journal::{JournalError, Occurrence};
use crate::sink::{Ack, Coming, DeliveryTarget, Refusal, SinkError};

pub(super) struct DeliveryPlan {
    pub batch_size: u64,
    pub skip: u64,
    pub cursor: Option<u64>,
    pub batches_total: u64,
    pub target: DeliveryTarget,
    /// Announced to the sink before the validated counts were recorded;
    /// dropped once the delivery is open and producing.
    pub coming: Coming,
}

/// Sends every batch after `plan.skip`; returns how many batches are
/// acknowledged in all (less than the total only on shutdown, or if the
/// file changed under us).
pub(super) async fn deliver(
    ctx: &Context,
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    plan: DeliveryPlan,
) -> Result<u64, PipelineError> {
    let mut delivery = ctx.sink.open(&plan.target, plan.cursor).await?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Run>(2);
    let producer = {
        let import = work.import.clone();
        let path = occurrence.processing_path.clone();
        let file_name = occurrence.file_name.clone();
        let fingerprint = fingerprint.clone();
        let (batch_size, skip_batches, batches_total) =
            (plan.batch_size, plan.skip, plan.batches_total);
        let ids = index::Recorder::create(
            &index::work_path(&ctx.dirs.work, &occurrence.id),
            skip_batches == 0,
        );
        tokio::task::spawn_blocking(move || {
            let job = Production {
                import: &import,
                path: &path,
                file_name: &file_name,
                fingerprint: &fingerprint,
                batch_size,
                skip_batches,
                batches_total,
            };
            produce::produce(&job, sender, ids)
        })
    };

    let mut progress = Progress::new(occurrence.id.clone(), plan.skip, plan.cursor);
    let mut interrupted = false;
    let mut coming = Some(plan.coming);
    'runs: loop {
        // Other files' events may wait for these batches to fill a request.
        delivery.producing();
        drop(coming.take());
        let run = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => { interrupted = true; break; }
            run = receiver.recv() => run,
        };
        let Some(run) = run else { break };
        for batch in run {
            match delivery.send(batch).await {
                Ok(acks) => progress.absorb(ctx, acks).await?,
                Err(SinkError::Interrupted) => {
                    interrupted = true;
                    break 'runs;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
    drop(receiver);
    let (acks, result) = if interrupted {
        delivery.checkpoint().await
    } else {
        delivery.finish().await
    };
    progress.absorb(ctx, acks).await?;
    progress.record_all(ctx).await?;
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

/// Acknowledged progress, and the record of it being committed.
struct Progress {
    occurrence_id: String,
    acked: u64,
    cursor: u64,
    /// Refused events acknowledged but not yet in a record.
    refused: Vec<Refusal>,
    unrecorded: bool,
    committing: Option<JoinHandle<Result<(), JournalError>>>,
}

impl Progress {
    fn new(occurrence_id: String, acked: u64, cursor: Option<u64>) -> Progress {
        Progress {
            occurrence_id,
            acked,
            cursor: cursor.unwrap_or(0),
            refused: Vec::new(),
            unrecorded: false,
            committing: None,
        }
    }

    async fn absorb(&mut self, ctx: &Context, acks: Vec<Ack>) -> Result<(), PipelineError> {
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
        if self
            .committing
            .as_ref()
            .is_some_and(JoinHandle::is_finished)
        {
            self.wait_commit().await?;
        }
        if self.committing.is_none() {
            self.start_commit(ctx);
        }
        Ok(())
    }

    /// Hands a record of everything acknowledged so far to the journal's
    /// next group commit (if there is anything new).
    fn start_commit(&mut self, ctx: &Context) {
        if !self.unrecorded {
            return;
        }
        let id = self.occurrence_id.clone();
        let (acked, cursor) = (self.acked, self.cursor);
        let refused = std::mem::take(&mut self.refused);
        self.unrecorded = false;
        let writer = ctx.writer.clone();
        self.committing = Some(tokio::spawn(async move {
            writer
                .write(move |journal| journal.record_progress(&id, acked, cursor, &refused))
                .await
        }));
    }

    async fn wait_commit(&mut self) -> Result<(), PipelineError> {
        let Some(task) = self.committing.take() else {
            return Ok(());
        };
        match task.await {
            Ok(result) => Ok(result?),
            Err(err) => Err(PipelineError::Worker(err.to_string())),
        }
    }

    /// Everything acknowledged is committed when this returns.
    async fn record_all(&mut self, ctx: &Context) -> Result<(), PipelineError> {
        self.wait_commit().await?;
        self.start_commit(ctx);
        self.wait_commit().await
    }
}
