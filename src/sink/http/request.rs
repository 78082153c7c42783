//! One batch to the API until every event is accepted or refused: the
//! retries and their back-off, 429 slow-downs, the pause on refused
//! credentials, one new session on a 401, and the bisection of a 400/422
//! batch down to the refused events.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use tokio_util::sync::CancellationToken;

use super::answer::{post, Answer};
use super::delivery::Target;
use super::gate::Turn;
use super::session::TokenError;
use super::Shared;
use crate::config::{Credentials, HttpSinkSettings};
use crate::sink::{Ack, Batch, Refusal, SinkError};

/// What the API made of a group of events.
enum Outcome {
    Delivered,
    /// 400/422 (or 413): the message of the API.
    Refused(String),
}

/// Delivers one batch: the whole, or its halves until every refused event
/// is isolated.
pub(super) async fn deliver_batch(
    shared: Arc<Shared>,
    target: Arc<Target>,
    batch: Batch,
    cancel: CancellationToken,
) -> Result<Ack, SinkError> {
    let mut refused = Vec::new();
    let mut groups = vec![(0, batch.len())];
    while let Some((start, end)) = groups.pop() {
        match deliver_group(&shared, &target, &batch, start, end, &cancel).await? {
            Outcome::Delivered => {}
            Outcome::Refused(message) if end - start == 1 => {
                let line = batch.events[start].line;
                tracing::warn!(
                    import = %target.import,
                    occurrence = %target.occurrence,
                    seq = batch.seq,
                    line,
                    "the API refused the event of line {line}: {message}"
                );
                refused.push(Refusal { line, message });
            }
            Outcome::Refused(message) => {
                let middle = start + (end - start) / 2;
                tracing::debug!(
                    seq = batch.seq,
                    "batch {}: events {start}..{end} refused ({message}); splitting to isolate the refused ones",
                    batch.seq
                );
                groups.push((middle, end));
                groups.push((start, middle));
            }
        }
    }
    Ok(Ack {
        seq: batch.seq,
        cursor: 0,
        refused,
    })
}

/// `[` + events `start..end` joined by `,` + `]`.
fn request_body(batch: &Batch, start: usize, end: usize) -> Vec<u8> {
    let size: usize = (start..end).map(|i| batch.event(i).len() + 1).sum();
    let mut body = Vec::with_capacity(size + 2);
    body.push(b'[');
    for index in start..end {
        if index > start {
            body.push(b',');
        }
        body.extend_from_slice(batch.event(index));
    }
    body.push(b']');
    body
}

/// A request body as it goes on the wire.
pub(super) struct Payload {
    /// Shared, so that every attempt sends it without a copy.
    pub(super) bytes: Bytes,
    pub(super) gzipped: bool,
}

/// The JSON body, gzip-compressed when the config asks for it. The fastest
/// level: JSON events still shrink several-fold, and the CPU is better spent
/// reading the next rows.
fn payload(json: Vec<u8>, gzip: bool) -> Payload {
    if !gzip {
        return Payload {
            bytes: json.into(),
            gzipped: false,
        };
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    match encoder.write_all(&json).and_then(|()| encoder.finish()) {
        Ok(bytes) => Payload {
            bytes: bytes.into(),
            gzipped: true,
        },
        // Compressing into memory does not fail; if it ever did, the plain
        // body is still a correct request.
        Err(_) => Payload {
            bytes: json.into(),
            gzipped: false,
        },
    }
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

/// Sends events `start..end` until the API accepts or refuses them.
async fn deliver_group(
    shared: &Shared,
    target: &Target,
    batch: &Batch,
    start: usize,
    end: usize,
    cancel: &CancellationToken,
) -> Result<Outcome, SinkError> {
    let body = payload(request_body(batch, start, end), shared.settings.gzip);
    let part = if start == 0 && end == batch.len() {
        String::new()
    } else {
        format!(" (events {start}..{end})")
    };
    let mut failures: u32 = 0;
    let mut auth_retried = false;
    loop {
        match attempt(shared, target, &body, auth_retried, cancel).await? {
            Step::Done(outcome) => return Ok(outcome),
            Step::RenewSession => {
                auth_retried = true;
                tracing::warn!(
                    import = %target.import,
                    occurrence = %target.occurrence,
                    seq = batch.seq,
                    "batch {}{part}: the API answered 401; opening a new session and retrying once",
                    batch.seq
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
                log_retry(target, batch.seq, &part, failures, &reason, delay);
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
                log_retry(target, batch.seq, &part, failures, &reason, delay);
            }
        }
    }
}

fn log_retry(target: &Target, seq: u64, part: &str, attempt: u32, reason: &str, delay: Duration) {
    tracing::warn!(
        import = %target.import,
        occurrence = %target.occurrence,
        seq,
        attempt,
        "batch {seq}{part}: {reason}; attempt {attempt} failed, retrying in {} ms",
        delay.as_millis()
    );
}

/// One request: a permit, a turn at the gate, a token, the POST, its answer.
async fn attempt(
    shared: &Shared,
    target: &Target,
    body: &Payload,
    auth_retried: bool,
    cancel: &CancellationToken,
) -> Result<Step, SinkError> {
    let _permit = tokio::select! {
        _ = cancel.cancelled() => return Err(SinkError::Interrupted),
        permit = shared.permits.acquire() => permit.map_err(|_| SinkError::Interrupted)?,
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
    let answer = post(shared, target, body, bearer.token.expose(), turn.ticket()).await;
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
    use super::*;
    use crate::config::SecretSource;
    use std::path::PathBuf;
    use std::time::Duration;

    fn settings() -> HttpSinkSettings {
        HttpSinkSettings {
            base_url: "https://api.test/v1".into(),
            organization_id: "my org/é".into(),
            credentials: Credentials::ApiKey {
                key: "k".into(),
                secret: SecretSource::File(PathBuf::from("/nonexistent")),
            },
            batch_size: 100,
            concurrency: 4,
            timeout: Duration::from_secs(30),
            allow_insecure_http: false,
            max_requests_per_second: None,
            gzip: false,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            auth_retry: Duration::from_secs(60),
        }
    }

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

    #[test]
    fn the_body_is_a_json_array_of_the_events() {
        let mut batch = Batch::new(0);
        for (line, id) in [(2, 1), (3, 2), (4, 3)] {
            batch.push_with(line, |buf| {
                buf.extend_from_slice(format!("{{\"id\":{id}}}").as_bytes())
            });
        }
        assert_eq!(
            request_body(&batch, 0, 3),
            br#"[{"id":1},{"id":2},{"id":3}]"#
        );
        assert_eq!(request_body(&batch, 1, 2), br#"[{"id":2}]"#);
    }

    #[test]
    fn gzip_bodies_decompress_to_the_same_json() {
        use std::io::Read;
        let json = br#"[{"id":1},{"id":2}]"#.repeat(50);
        let plain = payload(json.clone(), false);
        assert!(!plain.gzipped);
        assert_eq!(plain.bytes, json);
        let gzipped = payload(json.clone(), true);
        assert!(gzipped.gzipped);
        assert!(
            gzipped.bytes.len() < json.len() / 4,
            "{}",
            gzipped.bytes.len()
        );
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gzipped.bytes[..])
            .read_to_end(&mut decoded)
            .expect("valid gzip");
        assert_eq!(decoded, json);
    }
}
