//! share: the requests of one destination (an organization, with or
//! without `$disable_integrations`), filled with the batches of every
//! delivery that goes there, so that the events of many small files share
//! a request.
//!
//! Each delivery hands its batches over as [`Slice`]s, in its own `seq`
//! order, into one queue. A request takes slices from the front up to
//! `batch_size` events; a slice may be split over two requests, and is
//! acknowledged once every part of it is answered, with exactly its own
//! refused events. So a file's batch `k` still holds its rows `k ×
//! batch_size ..`, and the journal's per-file progress means what it meant.
//!
//! When a request goes, without a timer: when a concurrency slot is free,
//! and the queue holds a full request, or nothing of this destination is
//! producing: no delivery waits for its next batch from its reader, and no
//! file announced as coming (from its claim, see `Sink::coming`) has yet
//! to open its delivery. Each of them, after steps that never wait on the
//! sink (reading, journal commits, fsyncs), hands over a full batch (the
//! queue then holds a full request) or its last one, or stops counting. A
//! delivery waiting for acks, finished or dropped holds nothing back; a
//! file alone goes out at once.
//!
//! Never: acknowledge a slice before every part of it is answered; answer a
//! slice twice; put the slice of a stopped delivery into a request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::body::Events;
use crate::sink::{Ack, Batch, Refusal, SinkError};

/// The answer for one slice: its ack, or why there is none.
pub(super) type SliceAnswer = Result<Ack, SinkError>;

/// Hands a request (its parts, and the concurrency slot it may use for its
/// first attempt) to whoever sends it.
pub(super) type Post = Arc<dyn Fn(Vec<Part>, OwnedSemaphorePermit) + Send + Sync>;

/// Whose batches these are: named in logs, and stopped with its delivery.
#[derive(Debug)]
pub(super) struct Origin {
    pub import: String,
    pub occurrence: String,
    /// Cancelled when the delivery stops (dropped, interrupted, shutdown).
    pub cancel: CancellationToken,
}

/// One batch of one delivery, from the queue to its ack.
pub(super) struct Slice {
    pub origin: Arc<Origin>,
    pub batch: Events,
    state: Mutex<SliceState>,
}

struct SliceState {
    /// Parts in requests not answered yet.
    open_parts: usize,
    /// Every event of the batch is in a request.
    all_taken: bool,
    refused: Vec<Refusal>,
    answer: Option<oneshot::Sender<SliceAnswer>>,
}

impl Slice {
    fn new(origin: Arc<Origin>, batch: Batch) -> (Arc<Slice>, oneshot::Receiver<SliceAnswer>) {
        let (sender, receiver) = oneshot::channel();
        let slice = Arc::new(Slice {
            origin,
            batch: Events::new(batch),
            state: Mutex::new(SliceState {
                open_parts: 0,
                all_taken: false,
                refused: Vec::new(),
                answer: Some(sender),
            }),
        });
        (slice, receiver)
    }

    fn state(&self) -> MutexGuard<'_, SliceState> {
        // Nothing panics while holding it; a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A part of this slice was answered 2xx, but for `refused`: once every
    /// part is, the slice is acknowledged.
    pub fn part_delivered(&self, refused: Vec<Refusal>) {
        let mut state = self.state();
        state.open_parts = state.open_parts.saturating_sub(1);
        state.refused.extend(refused);
        if state.open_parts > 0 || !state.all_taken {
            return;
        }
        if let Some(answer) = state.answer.take() {
            let mut refused = std::mem::take(&mut state.refused);
            refused.sort_by_key(|refusal| refusal.line);
            // The delivery may be gone; then nobody waits for the ack.
            let _ = answer.send(Ok(Ack {
                seq: self.batch.seq,
                cursor: 0,
                refused,
            }));
        }
    }

    /// The slice will not be acknowledged (shutdown, or its delivery stopped).
    pub fn fail(&self, err: SinkError) {
        if let Some(answer) = self.state().answer.take() {
            let _ = answer.send(Err(err));
        }
    }

    fn abandoned(&self) -> bool {
        self.origin.cancel.is_cancelled()
    }
}

/// Events `start..end` of one slice's batch, in one request.
pub(super) struct Part {
    pub slice: Arc<Slice>,
    pub start: usize,
    pub end: usize,
}

#[cfg(test)]
impl Part {
    /// The only part of a new slice, as a request holds it.
    pub(super) fn alone(
        origin: Arc<Origin>,
        batch: Batch,
        start: usize,
        end: usize,
    ) -> (Part, oneshot::Receiver<SliceAnswer>) {
        let (slice, answer) = Slice::new(origin, batch);
        {
            let mut state = slice.state();
            state.open_parts = 1;
            state.all_taken = true;
        }
        (Part { slice, start, end }, answer)
    }
}

struct Waiting {
    slice: Arc<Slice>,
    /// Events of the slice already in requests.
    taken: usize,
}

/// What waits for a request, and who may still add to it.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Events waiting, not in a request yet.
    events: usize,
    /// Deliveries waiting for their next batch from their reader.
    producing: usize,
    /// Deliveries open.
    open: usize,
    /// The submitter task runs.
    running: bool,
    /// Shutdown: nothing more is taken.
    closed: bool,
}

impl Queue {
    /// Whether a request should go as soon as a slot is free.
    fn ready(&self, batch_size: usize) -> bool {
        self.events >= batch_size || (self.events > 0 && self.producing == 0)
    }

    /// Slices of stopped deliveries leave the queue, answered.
    fn purge_abandoned(&mut self) {
        let mut events = self.events;
        self.waiting.retain(|waiting| {
            if !waiting.slice.abandoned() {
                return true;
            }
            events -= waiting.slice.batch.len() - waiting.taken;
            waiting.slice.fail(SinkError::Interrupted);
            false
        });
        self.events = events;
    }

    /// The next request's parts, up to `batch_size` events from the front;
    /// none when no request should go now.
    fn take(&mut self, batch_size: usize) -> Vec<Part> {
        self.purge_abandoned();
        let mut parts = Vec::new();
        if !self.ready(batch_size) {
            return parts;
        }
        let mut room = batch_size.max(1);
        while room > 0 {
            let Some(front) = self.waiting.front_mut() else {
                break;
            };
            let len = front.slice.batch.len();
            let count = (len - front.taken).min(room);
            let part = Part {
                slice: front.slice.clone(),
                start: front.taken,
                end: front.taken + count,
            };
            front.taken += count;
            room -= count;
            self.events -= count;
            let whole = front.taken == len;
            {
                let mut state = part.slice.state();
                state.open_parts += 1;
                state.all_taken = whole;
            }
            parts.push(part);
            if whole {
                self.waiting.pop_front();
            }
        }
        parts
    }

    /// Shutdown: every waiting slice is answered `Interrupted`.
    fn close(&mut self) {
        self.closed = true;
        self.running = false;
        self.events = 0;
        for waiting in self.waiting.drain(..) {
            waiting.slice.fail(SinkError::Interrupted);
        }
    }
}

/// The queue and the submitter of one destination.
pub(super) struct Share {
    queue: Mutex<Queue>,
    /// Wakes the submitter: something was added, or someone stopped producing.
    wake: Notify,
    batch_size: usize,
    /// The sink's concurrency slots, shared by every destination.
    permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Where the requests go (for `Debug`).
    pub url: String,
    post: Post,
}

impl Share {
    pub fn new(
        batch_size: usize,
        permits: Arc<Semaphore>,
        shutdown: CancellationToken,
        url: String,
        post: Post,
    ) -> Arc<Share> {
        Arc::new(Share {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            batch_size: batch_size.max(1),
            permits,
            shutdown,
            url,
            post,
        })
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A delivery opens.
    pub fn join(&self) {
        self.queue().open += 1;
    }

    /// A delivery is dropped (`producing`: while it was producing).
    pub fn leave(&self, producing: bool) {
        {
            let mut queue = self.queue();
            queue.open = queue.open.saturating_sub(1);
            if producing {
                queue.producing = queue.producing.saturating_sub(1);
            }
        }
        self.wake.notify_one();
    }

    /// A delivery waits for its next batch: what waits may wait for it.
    pub fn start_producing(&self) {
        self.queue().producing += 1;
    }

    /// A delivery has no more batch coming now (it waits for acks or is done).
    pub fn stop_producing(&self) {
        {
            let mut queue = self.queue();
            queue.producing = queue.producing.saturating_sub(1);
        }
        self.wake.notify_one();
    }

    /// Queues `batch` (not empty) of `origin`; `producing`: the delivery was
    /// producing, and no longer is. The answer comes on the receiver.
    pub fn enqueue(
        self: &Arc<Self>,
        origin: &Arc<Origin>,
        batch: Batch,
        producing: bool,
    ) -> oneshot::Receiver<SliceAnswer> {
        let (slice, answer) = Slice::new(origin.clone(), batch);
        let start = {
            let mut queue = self.queue();
            if producing {
                queue.producing = queue.producing.saturating_sub(1);
            }
            if queue.closed || slice.abandoned() || self.shutdown.is_cancelled() {
                slice.fail(SinkError::Interrupted);
                return answer;
            }
            queue.events += slice.batch.len();
            queue.waiting.push_back(Waiting { slice, taken: 0 });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(submit(self.clone()));
        }
        self.wake.notify_one();
        answer
    }

    /// Until a request should go: false at shutdown, or when nothing waits
    /// and no delivery is open (the submitter then ends).
    async fn wait_until_ready(&self) -> bool {
        loop {
            {
                let mut queue = self.queue();
                if queue.closed {
                    return false;
                }
                queue.purge_abandoned();
                if queue.ready(self.batch_size) {
                    return true;
                }
                if queue.waiting.is_empty() && queue.open == 0 {
                    queue.running = false;
                    return false;
                }
            }
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => {
                    self.queue().close();
                    return false;
                }
                () = self.wake.notified() => {}
            }
        }
    }
}

/// The submitter of one destination: takes a slot, then the next request's
/// parts, and posts them; ends at shutdown or when nobody needs it.
async fn submit(share: Arc<Share>) {
    while share.wait_until_ready().await {
        let permit = tokio::select! {
            biased;
            () = share.shutdown.cancelled() => None,
            permit = share.permits.clone().acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else {
            share.queue().close();
            return;
        };
        // More may have come while waiting for the slot: it goes too.
        let parts = share.queue().take(share.batch_size);
        if !parts.is_empty() {
            (share.post)(parts, permit);
        }
    }
}

#[cfg(test)]
mod tests;
