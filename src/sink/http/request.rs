//! One request to the API until every event in it is accepted or refused:
//! the retries and their back-off, 429 slow-downs, the pause on refused
//! credentials, one new session on a 401, and the bisection of a 400/422
//! request down to the refused events. A request holds the parts of one or
//! more slices ([`super::share`]); each refused event is mapped back to its
//! slice, so each file's ack holds exactly its own refused lines.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::answer::{post, Answer};
use super::body::{Json, Payload};
use super::gate::Turn;
use super::session::TokenError;
use super::share::{Origin, Part};
use super::{Destination, Shared};
use crate::config::{Credentials, HttpSinkSettings};
use crate::sink::{Refusal, SinkError};

/// What the API made of a group of events.
enum Outcome {
    Delivered,
    /// 400/422 (or 413): the message of the API.
    Refused(String),
}

/// The events of one request: the parts of slices, back to back.
pub(super) struct Request {
    parts: Vec<Part>,
    /// The request's index of each part's first event.
    starts: Vec<usize>,
    len: usize,
}

impl Request {
    pub fn new(parts: Vec<Part>) -> Request {
        let mut starts = Vec::with_capacity(parts.len());
        let mut len = 0;
        for part in &parts {
            starts.push(len);
            len += part.end - part.start;
        }
        Request { parts, starts, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The part that holds event `index`, and the event's index in its batch.
    fn locate(&self, index: usize) -> (usize, usize) {
        let part = self.starts.partition_point(|&start| start <= index) - 1;
        (part, self.parts[part].start + index - self.starts[part])
    }

    /// `[` + events `start..end` joined by `,` + `]`, as runs of the
    /// batches' own buffers.
    fn body(&self, start: usize, end: usize) -> Json {
        let mut json = Json::default();
        let mut index = start;
        while index < end {
            let (part, at) = self.locate(index);
            let part = &self.parts[part];
            let count = (part.end - at).min(end - index);
            json.push(&part.slice.batch, at, at + count);
            index += count;
        }
        json.finish()
    }

    /// `batch 3` for a whole batch alone, else what the request holds; and
    /// the import and occurrence of its first event, for the log fields.
    fn describe(&self, start: usize, end: usize) -> (String, &str, &str) {
        let (first, _) = self.locate(start);
        let slice = &self.parts[first].slice;
        let (import, occurrence) = (
            slice.origin.import.as_str(),
            slice.origin.occurrence.as_str(),
        );
        let whole = self.parts.len() == 1 && self.len == slice.batch.len();
        let mut text = if whole {
            format!("batch {}", slice.batch.seq)
        } else {
            let files = self
                .parts
                .iter()
                .enumerate()
                .filter(|(i, part)| {
                    *i == 0 || !Arc::ptr_eq(&part.slice.origin, &self.parts[i - 1].slice.origin)
                })
                .count();
            format!(
                "a request of {} events ({} slice(s) of {files} file(s), from batch {} of occurrence {occurrence})",
                self.len,
                self.parts.len(),
                slice.batch.seq
            )
        };
        if start != 0 || end != self.len {
            text.push_str(&format!(" (events {start}..{end})"));
        }
        (text, import, occurrence)
    }

    /// The API has answered every event: each slice hears of its part.
    fn delivered(self, refused: Vec<(usize, String)>) {
        let mut per_part: Vec<Vec<Refusal>> = self.parts.iter().map(|_| Vec::new()).collect();
        for (index, message) in refused {
            let (part, at) = self.locate(index);
            let line = self.parts[part].slice.batch.line(at);
            per_part[part].push(Refusal { line, message });
        }
        for (part, refused) in self.parts.iter().zip(per_part) {
            part.slice.part_delivered(refused);
        }
    }

    /// Shutdown, or every delivery in it stopped: no slice is acknowledged.
    fn interrupted(self) {
        for part in &self.parts {
            part.slice.fail(SinkError::Interrupted);
        }
    }

    /// Cancelled once every delivery with a part in this request has
    /// stopped (all of them at shutdown): nobody waits for it any more.
    fn abandoned(&self) -> CancellationToken {
        let mut origins: Vec<Arc<Origin>> = Vec::new();
        for part in &self.parts {
            if !origins
                .iter()
                .any(|known| Arc::ptr_eq(known, &part.slice.origin))
            {
                origins.push(part.slice.origin.clone());
            }
        }
        if let [origin] = origins.as_slice() {
            // One file's request (the common case): no watcher task.
            return origin.cancel.child_token();
        }
        let token = CancellationToken::new();
        let watch = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watch.cancelled() => {}
                () = async {
                    for origin in &origins {
                        origin.cancel.cancelled().await;
                    }
                } => watch.cancel(),
            }
        });
        token
    }
}

/// Delivers one request: the whole, or its halves until every refused
/// event is isolated; then answers each slice for its part. `permit` is
/// the concurrency slot of the first attempt.
pub(super) async fn deliver_request(
    shared: Arc<Shared>,
    destination: Arc<Destination>,
    request: Request,
    permit: OwnedSemaphorePermit,
) {
    let cancel = request.abandoned();
    // The watcher (of a request of several files) ends with the request.
    let _stop_watching = cancel.clone().drop_guard();
    let mut permit = Some(permit);
    let mut refused = Vec::new();
    let mut groups = vec![(0, request.len())];
    while let Some((start, end)) = groups.pop() {
        let group = Group {
            destination: &destination,
            request: &request,
            start,
            end,
        };
        match deliver_group(&shared, &group, &mut permit, &cancel).await {
            Err(_) => return request.interrupted(),
            Ok(Outcome::Delivered) => {}
            Ok(Outcome::Refused(message)) if end - start == 1 => {
                let (part, at) = request.locate(start);
                let slice = &request.parts[part].slice;
                let line = slice.batch.line(at);
                tracing::warn!(
                    import = %slice.origin.import,
                    occurrence = %slice.origin.occurrence,
                    seq = slice.batch.seq,
                    line,
                    "the API refused the event of line {line}: {message}"
                );
                refused.push((start, message));
            }
            Ok(Outcome::Refused(message)) => {
                let middle = start + (end - start) / 2;
                let (what, _, _) = request.describe(start, end);
                tracing::debug!(
                    "{what}: refused ({message}); splitting to isolate the refused events"
                );
                groups.push((middle, end));
                groups.push((start, middle));
            }
        }
    }
    request.delivered(refused);
}

/// Events `start..end` of a request, to one destination.
struct Group<'a> {
    destination: &'a Destination,
    request: &'a Request,
    start: usize,
    end: usize,
}

/// What to do after one attempt.
enum Step {
    Done(Outcome),
    /// A 401 with an API key: open a new session and retry once.
    RenewSession,
    /// Submission is paused (or was): the gate holds the next attempt.
    Paused,
    /// 5xx, timeout, broken connection: back off.
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 429: the whole sink waits.
    Throttled {
        reason: String,
        retry_after: Option<Duration>,
    },
}

/// Sends a group of events until the API accepts or refuses them; the
/// first attempt takes `permit` when there is one.
async fn deliver_group(
    shared: &Shared,
    group: &Group<'_>,
    permit: &mut Option<OwnedSemaphorePermit>,
    cancel: &CancellationToken,
) -> Result<Outcome, SinkError> {
    let body = Payload::new(
        group.request.body(group.start, group.end),
        shared.settings.gzip,
    );
    let (what, import, occurrence) = group.request.describe(group.start, group.end);
    let mut failures: u32 = 0;
    let mut auth_retried = false;
    loop {
        let slot = permit.take();
        match attempt(shared, group.destination, &body, slot, auth_retried, cancel).await? {
            Step::Done(outcome) => return Ok(outcome),
            Step::RenewSession => {
                auth_retried = true;
                tracing::warn!(
                    import,
                    occurrence,
                    "{what}: the API answered 401; opening a new session and retrying once"
                );
            }
            Step::Paused => auth_retried = false,
            Step::Failed {
                reason,
                retry_after,
            } => {
                failures = failures.saturating_add(1);
                let delay = match retry_after {
                    Some(after) => {
                        shared.gate.slow_down(tokio::time::Instant::now() + after);
                        after
                    }
                    None => backoff(&shared.settings, failures),
                };
                shared.metrics.batches_retried.inc();
                log_retry((&what, import, occurrence), failures, &reason, delay);
                tokio::select! {
                    _ = cancel.cancelled() => return Err(SinkError::Interrupted),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Step::Throttled {
                reason,
                retry_after,
            } => {
                failures = failures.saturating_add(1);
                let delay = retry_after.unwrap_or_else(|| backoff(&shared.settings, failures));
                // The gate makes every request of the sink wait, this one too.
                shared.gate.slow_down(tokio::time::Instant::now() + delay);
                shared.metrics.batches_retried.inc();
                log_retry((&what, import, occurrence), failures, &reason, delay);
            }
        }
    }
}

fn log_retry(
    (what, import, occurrence): (&str, &str, &str),
    attempt: u32,
    reason: &str,
    delay: Duration,
) {
    tracing::warn!(
        import,
        occurrence,
        attempt,
        "{what}: {reason}; attempt {attempt} failed, retrying in {} ms",
        delay.as_millis()
    );
}

/// One request: a permit, a turn at the gate, a token, the POST, its answer.
async fn attempt(
    shared: &Shared,
    destination: &Destination,
    body: &Payload,
    permit: Option<OwnedSemaphorePermit>,
    auth_retried: bool,
    cancel: &CancellationToken,
) -> Result<Step, SinkError> {
    let _permit = match permit {
        Some(permit) => permit,
        None => slot(shared, cancel).await?,
    };
    let turn = shared.gate.turn(cancel).await?;
    let bearer = tokio::select! {
        _ = cancel.cancelled() => return Err(SinkError::Interrupted),
        bearer = shared.tokens.bearer(&shared.client) => bearer,
    };
    let bearer = match bearer {
        Ok(bearer) => bearer,
        Err(TokenError::Fault { problem, fix }) => return Ok(pause(shared, turn, &problem, &fix)),
        Err(TokenError::Transient(reason)) => {
            return Ok(Step::Failed {
                reason: format!("no session: {reason}"),
                retry_after: None,
            })
        }
        Err(TokenError::Throttled(retry_after)) => {
            return Ok(Step::Throttled {
                reason: "POST /sessions answered 429 Too Many Requests".into(),
                retry_after,
            })
        }
    };
    // From here on the request is on the wire: it completes (within the
    // client's timeout) even if shutdown comes meanwhile.
    let answer = post(
        shared,
        destination,
        body,
        bearer.token.expose(),
        turn.ticket(),
    )
    .await;
    Ok(match answer {
        Answer::Delivered => {
            turn.accepted();
            Step::Done(Outcome::Delivered)
        }
        Answer::Refused(message) => {
            turn.accepted();
            Step::Done(Outcome::Refused(message))
        }
        Answer::Throttled(retry_after) => Step::Throttled {
            reason: "429 Too Many Requests".into(),
            retry_after,
        },
        Answer::Failed {
            reason,
            retry_after,
        } => Step::Failed {
            reason,
            retry_after,
        },
        Answer::Unauthorized(message)
            if shared.tokens.is_api_key() && !auth_retried && !turn.is_probe() =>
        {
            tracing::debug!("401 ({message}): the session token is dropped");
            shared.tokens.invalidate(bearer.generation).await;
            Step::RenewSession
        }
        Answer::Unauthorized(message) => {
            let (problem, fix) = unauthorized_fault(&shared.settings, &message);
            pause(shared, turn, &problem, &fix)
        }
        Answer::Fault { problem, fix } => pause(shared, turn, &problem, &fix),
    })
}

/// A concurrency slot of the sink, for one attempt.
async fn slot(
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<OwnedSemaphorePermit, SinkError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(SinkError::Interrupted),
        permit = shared.permits.clone().acquire_owned() => {
            permit.map_err(|_| SinkError::Interrupted)
        }
    }
}

/// Refused credentials or configuration: the gate pauses submission (or
/// keeps it paused) and, unless the refusal is stale, the credentials are
/// read again before the next request.
fn pause(shared: &Shared, turn: Turn<'_>, problem: &str, fix: &str) -> Step {
    if turn.refused(problem, fix) {
        shared.tokens.reload();
    }
    Step::Paused
}

fn unauthorized_fault(settings: &HttpSinkSettings, message: &str) -> (String, String) {
    match &settings.credentials {
        Credentials::ApiKey { key, .. } => (
            format!(
                "the API refuses the token of a fresh session of api key {key} (401: {message})"
            ),
            format!("check that api key {key} may use the consents API at this base_url"),
        ),
        Credentials::TokenFile(path) => (
            format!(
                "the API refuses the token in {} (401: {message})",
                path.display()
            ),
            format!("put a valid, unexpired access token in {}", path.display()),
        ),
        Credentials::TokenEnv(var) => (
            format!("the API refuses the token in ${var} (401: {message})"),
            format!("set {var} to a valid access token and restart"),
        ),
    }
}

/// The delay after the `failures`-th failure in a row: `retry_initial`
/// doubling up to `retry_max`, jittered down by up to half.
fn backoff(settings: &HttpSinkSettings, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    let base = settings
        .retry_initial
        .saturating_mul(1u32 << doublings)
        .min(settings.retry_max);
    base.mul_f64(0.5 + 0.5 * jitter())
}

/// A number in [0, 1) from the random bits of a v4 UUID.
fn jitter() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() & ((1u128 << 53) - 1);
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::*;
    use crate::sink::Batch;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_max_with_jitter() {
        let settings = settings();
        for _ in 0..100 {
            let first = backoff(&settings, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&settings, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&settings, 1000);
            assert!(late >= Duration::from_millis(2500) && late <= Duration::from_secs(5));
        }
    }

    fn batch(seq: u64, ids: &[(u64, u64)]) -> Batch {
        let mut batch = Batch::new(seq);
        for &(line, id) in ids {
            batch.push_with(line, |buf| {
                buf.extend_from_slice(format!("{{\"id\":{id}}}").as_bytes())
            });
        }
        batch
    }

    fn origin(name: &str) -> Arc<Origin> {
        Arc::new(Origin {
            import: "news".into(),
            occurrence: name.into(),
            cancel: CancellationToken::new(),
        })
    }

    #[test]
    fn the_body_is_a_json_array_of_the_events_of_every_part() {
        let (a, _) = Part::alone(origin("a"), batch(0, &[(2, 1), (3, 2), (4, 3)]), 1, 3);
        let (b, _) = Part::alone(origin("b"), batch(0, &[(2, 4), (3, 5)]), 0, 2);
        let request = Request::new(vec![a, b]);
        assert_eq!(request.len(), 4);
        assert_eq!(
            request.body(0, 4).to_vec(),
            br#"[{"id":2},{"id":3},{"id":4},{"id":5}]"#
        );
        assert_eq!(request.body(1, 3).to_vec(), br#"[{"id":3},{"id":4}]"#);
        assert_eq!(request.body(3, 4).to_vec(), br#"[{"id":5}]"#);
        assert_eq!(request.body(0, 1).to_vec(), br#"[{"id":2}]"#);
    }

    #[test]
    fn each_refused_event_goes_to_its_own_slice_with_its_line() {
        let (a, mut of_a) = Part::alone(origin("a"), batch(0, &[(2, 1), (3, 2), (4, 3)]), 0, 3);
        let (b, mut of_b) = Part::alone(origin("b"), batch(0, &[(7, 4), (8, 5)]), 0, 2);
        let request = Request::new(vec![a, b]);
        // Events 1 and 4 of the request: line 3 of a, line 8 of b.
        request.delivered(vec![(4, "bad b".into()), (1, "bad a".into())]);
        let a = of_a.try_recv().expect("answered").expect("acked");
        let b = of_b.try_recv().expect("answered").expect("acked");
        assert_eq!(
            a.refused,
            [Refusal {
                line: 3,
                message: "bad a".into()
            }]
        );
        assert_eq!(
            b.refused,
            [Refusal {
                line: 8,
                message: "bad b".into()
            }]
        );
    }

    #[tokio::test]
    async fn a_request_is_abandoned_once_every_file_in_it_stopped() {
        let (a, b) = (origin("a"), origin("b"));
        let (one, _) = Part::alone(a.clone(), batch(0, &[(2, 1)]), 0, 1);
        let alone = Request::new(vec![one]).abandoned();
        // The request ending does not stop its file.
        alone.cancel();
        assert!(!a.cancel.is_cancelled());
        let alone =
            Request::new(vec![Part::alone(a.clone(), batch(1, &[(3, 2)]), 0, 1).0]).abandoned();
        let (of_a, _) = Part::alone(a.clone(), batch(2, &[(4, 3)]), 0, 1);
        let (of_b, _) = Part::alone(b.clone(), batch(0, &[(2, 4)]), 0, 1);
        let shared = Request::new(vec![of_a, of_b]).abandoned();
        a.cancel.cancel();
        assert!(alone.is_cancelled());
        tokio::task::yield_now().await;
        assert!(!shared.is_cancelled(), "b still waits for its part");
        b.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), shared.cancelled())
            .await
            .expect("abandoned once both stopped");
    }
}
