//! One occurrence's batches in flight: each is handed to its destination's
//! queue ([`super::share`]), where it may share a request with the batches
//! of other files, within a window of about 2×`concurrency` batches; their
//! acks come out strictly in `seq` order, whatever order the API answers in.
//!
//! A delivery tells its queue when it waits for its next batch from its
//! reader ([`HttpDelivery::producing`]): partial requests wait for it then,
//! and only then.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::share::{Origin, Share, SliceAnswer};
use crate::sink::{Ack, Batch, SinkError};

/// The batches of one occurrence, in flight.
pub struct HttpDelivery {
    share: Arc<Share>,
    /// Its cancel token is a child of the sink's shutdown, cancelled when
    /// the delivery is dropped or interrupted.
    origin: Arc<Origin>,
    /// How many batches may be pending before `send` waits.
    window: usize,
    pending: VecDeque<Pending>,
    /// Final acks not handed out yet.
    ready: Vec<Ack>,
    interrupted: bool,
    /// Counted as producing by the queue.
    producing: bool,
}

struct Pending {
    seq: u64,
    answer: oneshot::Receiver<SliceAnswer>,
}

impl fmt::Debug for HttpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpDelivery")
            .field("url", &self.share.url)
            .field("import", &self.origin.import)
            .field("occurrence", &self.origin.occurrence)
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
        // Whatever is still queued leaves the queue; requests whose every
        // delivery stopped stop retrying.
        self.origin.cancel.cancel();
        self.share.leave(self.producing);
    }
}

impl HttpDelivery {
    pub(super) fn new(share: Arc<Share>, origin: Origin, window: usize) -> HttpDelivery {
        share.join();
        HttpDelivery {
            share,
            origin: Arc::new(origin),
            window,
            pending: VecDeque::new(),
            ready: Vec::new(),
            interrupted: false,
            producing: false,
        }
    }

    /// Where the requests of this delivery go.
    pub fn url(&self) -> &str {
        &self.share.url
    }

    /// The delivery waits for its next batch from its reader: a partial
    /// request of its destination waits for that batch (it is soon there).
    pub fn producing(&mut self) {
        if !self.producing && !self.interrupted {
            self.producing = true;
            self.share.start_producing();
        }
    }

    fn stop_producing(&mut self) {
        if std::mem::take(&mut self.producing) {
            self.share.stop_producing();
        }
    }

    /// Hands over the next batch and returns the acks that became final, in
    /// order. Waits while about 2×`concurrency` batches of this delivery are
    /// pending. On shutdown it takes nothing more and returns
    /// `Err(Interrupted)`; [`HttpDelivery::finish`] then returns the acks
    /// that are final.
    pub async fn send(&mut self, batch: Batch) -> Result<Vec<Ack>, SinkError> {
        self.collect_finished();
        if self.interrupted || self.origin.cancel.is_cancelled() {
            self.interrupted = true;
            self.stop_producing();
            return Err(SinkError::Interrupted);
        }
        let seq = batch.seq;
        let answer = if batch.is_empty() {
            self.stop_producing();
            let (sender, answer) = oneshot::channel();
            let _ = sender.send(Ok(Ack {
                seq,
                cursor: 0,
                refused: Vec::new(),
            }));
            answer
        } else {
            let producing = std::mem::take(&mut self.producing);
            self.share.enqueue(&self.origin, batch, producing)
        };
        self.pending.push_back(Pending { seq, answer });
        while self.pending.len() > self.window && !self.interrupted {
            self.await_front().await;
        }
        self.collect_finished();
        if self.interrupted {
            return Err(SinkError::Interrupted);
        }
        Ok(std::mem::take(&mut self.ready))
    }

    /// Waits for every batch handed over and returns the remaining acks. On
    /// shutdown: the acks that are final, and `Err(Interrupted)`.
    pub async fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        self.stop_producing();
        while !self.interrupted && !self.pending.is_empty() {
            self.await_front().await;
        }
        let acks = std::mem::take(&mut self.ready);
        if self.interrupted {
            self.origin.cancel.cancel();
            self.pending.clear();
            (acks, Err(SinkError::Interrupted))
        } else {
            (acks, Ok(()))
        }
    }

    /// Moves the answers already there at the front into `ready`.
    fn collect_finished(&mut self) {
        while !self.interrupted {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            let answer = match front.answer.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(answer) => Some(answer),
                Err(oneshot::error::TryRecvError::Closed) => None,
            };
            let seq = front.seq;
            self.pending.pop_front();
            self.take_answer(seq, answer);
        }
    }

    async fn await_front(&mut self) {
        let Some(front) = self.pending.pop_front() else {
            return;
        };
        let answer = front.answer.await.ok();
        self.take_answer(front.seq, answer);
    }

    /// `None`: the batch's answer was lost (its request stopped unexpectedly).
    fn take_answer(&mut self, seq: u64, answer: Option<SliceAnswer>) {
        match answer {
            Some(Ok(ack)) => self.ready.push(ack),
            Some(Err(_)) => self.interrupted = true,
            None => {
                tracing::error!(
                    import = %self.origin.import,
                    occurrence = %self.origin.occurrence,
                    seq,
                    "the delivery of batch {seq} stopped unexpectedly"
                );
                self.interrupted = true;
            }
        }
        if self.interrupted {
            // Nothing after this batch can be acknowledged any more.
            self.stop_producing();
            self.origin.cancel.cancel();
        }
    }
}
