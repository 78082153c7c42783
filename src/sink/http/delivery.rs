//! One occurrence's batches in flight: each goes to the API on a task of
//! its own, within a window of about 2×`concurrency`, and their acks come
//! out strictly in `seq` order, whatever order the API answers in.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::request::deliver_batch;
use super::Shared;
use crate::sink::{Ack, Batch, SinkError};

/// The batches of one occurrence, in flight.
pub struct HttpDelivery {
    shared: Arc<Shared>,
    pub(super) target: Arc<Target>,
    /// Child of the sink's shutdown; cancelled when the delivery is dropped.
    cancel: CancellationToken,
    /// How many batches may be pending before `send` waits.
    window: usize,
    pending: VecDeque<Pending>,
    /// Final acks not handed out yet.
    ready: Vec<Ack>,
    interrupted: bool,
}

struct Pending {
    seq: u64,
    task: JoinHandle<Result<Ack, SinkError>>,
}

pub(super) struct Target {
    pub(super) url: reqwest::Url,
    pub(super) organization: String,
    pub(super) import: String,
    pub(super) occurrence: String,
}

impl fmt::Debug for HttpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDelivery")
            .field("url", &self.target.url.as_str())
            .field("import", &self.target.import)
            .field("occurrence", &self.target.occurrence)
            .field(
                "pending",
                &self.pending.iter().map(|p| p.seq).collect::<Vec<_>>(),
            )
            .field("ready", &self.ready.len())
            .field("interrupted", &self.interrupted)
            .finish()
    }
}

impl Drop for HttpDelivery {
    fn drop(&mut self) {
        // Whatever is still pending stops retrying.
        self.cancel.cancel();
    }
}

impl HttpDelivery {
    pub(super) fn new(shared: Arc<Shared>, target: Target) -> HttpDelivery {
        let window = 2 * shared.settings.concurrency.max(1);
        HttpDelivery {
            cancel: shared.shutdown.child_token(),
            shared,
            target: Arc::new(target),
            window,
            pending: VecDeque::new(),
            ready: Vec::new(),
            interrupted: false,
        }
    }

    /// Hands over the next batch and returns the acks that became final, in
    /// order. Waits while about 2×`concurrency` batches of this delivery are
    /// pending. On shutdown it takes nothing more and returns
    /// `Err(Interrupted)`; [`HttpDelivery::finish`] then returns the acks
    /// that are final.
    pub async fn send(&mut self, batch: Batch) -> Result<Vec<Ack>, SinkError> {
        self.collect_finished().await;
        if self.interrupted || self.cancel.is_cancelled() {
            self.interrupted = true;
            return Err(SinkError::Interrupted);
        }
        let seq = batch.seq;
        let task = if batch.is_empty() {
            tokio::spawn(async move {
                Ok(Ack {
                    seq,
                    cursor: 0,
                    refused: Vec::new(),
                })
            })
        } else {
            tokio::spawn(deliver_batch(
                self.shared.clone(),
                self.target.clone(),
                batch,
                self.cancel.clone(),
            ))
        };
        self.pending.push_back(Pending { seq, task });
        while self.pending.len() > self.window && !self.interrupted {
            self.await_front().await;
        }
        self.collect_finished().await;
        if self.interrupted {
            return Err(SinkError::Interrupted);
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// Waits for every batch handed over and returns the remaining acks. On
    /// shutdown: the acks that are final, and `Err(Interrupted)`.
    pub async fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        while !self.interrupted && !self.pending.is_empty() {
            self.await_front().await;
        }
        let acks = std::mem::take(&mut self.ready);
        if self.interrupted {
            self.cancel.cancel();
            self.pending.clear();
            (acks, Err(SinkError::Interrupted))
        } else {
            (acks, Ok(()))
        }
    }

    /// Moves the results of finished batches at the front into `ready`.
    async fn collect_finished(&mut self) {
        while !self.interrupted && self.pending.front().is_some_and(|p| p.task.is_finished()) {
            self.await_front().await;
        }
    }

    async fn await_front(&mut self) {
        let Some(front) = self.pending.pop_front() else {
            return;
        };
        match front.task.await {
            Ok(Ok(ack)) => self.ready.push(ack),
            Ok(Err(_)) => self.interrupted = true,
            Err(err) => {
                tracing::error!(
                    import = %self.target.import,
                    occurrence = %self.target.occurrence,
                    seq = front.seq,
                    "the delivery of batch {} stopped unexpectedly: {err}",
                    front.seq
                );
                self.interrupted = true;
            }
        }
        if self.interrupted {
            // Nothing after this batch can be acknowledged any more.
            self.cancel.cancel();
        }
    }
}
