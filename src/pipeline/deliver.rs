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
use super::rejects::{Counts, Tally, ValidateError};
use super::{resolved_encoding, Context, PipelineError, Work};
use crate::claim::Fingerprint;
use crate::index;
use crate::journal::{JournalError, Occurrence};
use crate::sink::{Ack, Coming, Delivery, DeliveryTarget, Refusal, SinkError};

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
    let reading = ReadPlan {
        batch_size: plan.batch_size,
        skip: plan.skip,
        batches_total: Some(plan.batches_total),
        rejects_path: None,
    };
    let (producer, receiver) = spawn_producer(ctx, work, occurrence, fingerprint, reading);
    let mut progress = Progress::new(occurrence.id.clone(), plan.skip, plan.cursor);
    let interrupted = send_runs(
        ctx,
        &mut delivery,
        receiver,
        &mut progress,
        Some(plan.coming),
    )
    .await?;
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
        Ok(Ok(_)) => {}
        Ok(Err(err)) => {
            let err = err.into_pipeline(&occurrence.processing_path);
            if !interrupted {
                return Err(err);
            }
            tracing::debug!(%err, "reader stopped by shutdown");
        }
        Err(err) => return Err(PipelineError::Worker(err.to_string())),
    }
    Ok(progress.acked)
}

/// What the reader thread reads, and whether it validates as it goes.
pub(super) struct ReadPlan {
    pub batch_size: u64,
    pub skip: u64,
    /// None when the read is the validation pass too.
    pub batches_total: Option<u64>,
    /// Where the rejects go when the read is the validation pass too.
    pub rejects_path: Option<std::path::PathBuf>,
}

/// The reader (and event) threads of a delivery: runs of batches come on
/// the channel; the task ends with the counts, when it validated.
pub(super) fn spawn_producer(
    ctx: &Context,
    work: &Work,
    occurrence: &Occurrence,
    fingerprint: &Fingerprint,
    plan: ReadPlan,
) -> (
    JoinHandle<Result<Option<Counts>, ValidateError>>,
    tokio::sync::mpsc::Receiver<Run>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Run>(2);
    let import = work.import.clone();
    let path = occurrence.processing_path.clone();
    let file_name = occurrence.file_name.clone();
    let fingerprint = fingerprint.clone();
    let ids = index::Recorder::create(
        &index::work_path(&ctx.dirs.work, &occurrence.id),
        plan.skip == 0,
    );
    let producer = tokio::task::spawn_blocking(move || {
        let job = Production {
            import: &import,
            path: &path,
            file_name: &file_name,
            fingerprint: &fingerprint,
            batch_size: plan.batch_size,
            skip_batches: plan.skip,
            batches_total: plan.batches_total,
        };
        let Some(rejects_path) = &plan.rejects_path else {
            return produce::produce(&job, sender, ids, None).map(|()| None);
        };
        let mut tally = Tally::new(rejects_path, resolved_encoding(&import, &fingerprint));
        produce::produce(&job, sender, ids, Some(&mut tally))?;
        tally.finish().map(Some).map_err(ValidateError::State)
    });
    (producer, receiver)
}

/// Hands every run of batches to the sink, and their acks to `progress`,
/// until the reader ends; true if shutdown interrupted it.
pub(super) async fn send_runs(
    ctx: &Context,
    delivery: &mut Delivery,
    mut receiver: tokio::sync::mpsc::Receiver<Run>,
    progress: &mut Progress,
    mut coming: Option<Coming>,
) -> Result<bool, PipelineError> {
    loop {
        // Other files' events may wait for these batches to fill a request.
        delivery.producing();
        drop(coming.take());
        let run = tokio::select! {
            biased;
            () = ctx.shutdown.cancelled() => return Ok(true),
            run = receiver.recv() => run,
        };
        let Some(run) = run else {
            return Ok(false);
        };
        let mut run = run.into_iter();
        while run.len() > 0 {
            match delivery.send_from(&mut run).await {
                Ok(acks) => progress.absorb(ctx, acks).await?,
                Err(SinkError::Interrupted) => return Ok(true),
                Err(err) => return Err(err.into()),
            }
        }
    }
}

/// Acknowledged progress, and the record of it being committed.
pub(super) struct Progress {
    occurrence_id: String,
    acked: u64,
    cursor: u64,
    /// Refused events acknowledged but not yet in a record.
    refused: Vec<Refusal>,
    unrecorded: bool,
    committing: Option<JoinHandle<Result<(), JournalError>>>,
    /// False while the file is not validated yet: acks are only counted,
    /// recorded later with its validation ([`Progress::held`]).
    recording: bool,
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
            recording: true,
        }
    }

    /// Progress of a delivery that is the validation pass too: nothing is
    /// recorded before the file is known to pass.
    pub fn held(occurrence_id: String) -> Progress {
        Progress {
            recording: false,
            ..Progress::new(occurrence_id, 0, None)
        }
    }

    pub async fn absorb(&mut self, ctx: &Context, acks: Vec<Ack>) -> Result<(), PipelineError> {
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
            if self.recording {
                ctx.counters.batches_acked.fetch_add(1, Ordering::Relaxed);
                ctx.counters
                    .rows_refused
                    .fetch_add(ack.refused.len() as u64, Ordering::Relaxed);
            }
            self.refused.extend(ack.refused);
            self.unrecorded = true;
        }
        if !self.recording {
            return Ok(());
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

    /// What a held progress has acknowledged, to be recorded with the
    /// file's validation (and counted only now: a file that fails delivers
    /// nothing); from here on it records as usual.
    pub fn release(&mut self, ctx: &Context) -> (u64, u64, Vec<Refusal>) {
        ctx.counters
            .batches_acked
            .fetch_add(self.acked, Ordering::Relaxed);
        ctx.counters
            .rows_refused
            .fetch_add(self.refused.len() as u64, Ordering::Relaxed);
        self.recording = true;
        self.unrecorded = false;
        (self.acked, self.cursor, std::mem::take(&mut self.refused))
    }

    /// Everything acknowledged is committed when this returns.
    async fn record_all(&mut self, ctx: &Context) -> Result<(), PipelineError> {
        self.wait_commit().await?;
        self.start_commit(ctx);
        self.wait_commit().await
    }
}
