//! http: delivers batches to the consents-events API and acknowledges,
//! batch by batch and in order, only what the API answered 2xx.
//!
//! What it owns: `POST {base_url}/consents/events?organization_id=…` with a
//! bearer token (`session` opens and renews it), the reading of every
//! answer, and the waiting between attempts (`gate` holds the whole sink
//! back on 429 and pauses it on refused credentials). Several batches of one
//! delivery are in flight at once, within one `concurrency` limit for the
//! whole sink; their acks still come out strictly in `seq` order.
//!
//! The decision it embodies: nothing is ever dropped. 429, 5xx, timeouts and
//! broken connections are retried until they go through (or until shutdown);
//! a 400/422 batch is split in halves until the refused events are isolated,
//! each becoming a [`Refusal`] with the API's message; a refused credential
//! or a wrong URL pauses all submission until it is fixed, and refuses no
//! event for it.
//!
//! Never: acknowledge a batch the API did not answer 2xx in full; put the
//! secret or the token in a log line, an error or a `Debug` output; retry
//! without a delay; give up on a batch except on shutdown.

mod gate;
pub mod purposes;
mod ratelimit;
mod session;

use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use reqwest::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::gate::{Gate, Turn};
use self::session::{TokenError, TokenSource};
use super::{Ack, Batch, DeliveryTarget, Refusal, SinkError};
use crate::config::{Credentials, HttpSinkSettings, Import};
use crate::metrics::Metrics;

/// Longest API message kept in a refusal or a log line, in characters.
const MAX_MESSAGE_CHARS: usize = 500;
/// A `Retry-After` beyond this is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

const USER_AGENT: &str = concat!("consent-drop/", env!("CARGO_PKG_VERSION"));

/// The consents API as a destination. Clones share one HTTP client, one
/// concurrency limit, one session and one pause state.
#[derive(Clone)]
pub struct HttpSink {
    shared: Arc<Shared>,
}

struct Shared {
    settings: HttpSinkSettings,
    client: reqwest::Client,
    shutdown: CancellationToken,
    /// Requests in flight, all deliveries together.
    permits: Semaphore,
    gate: Gate,
    tokens: TokenSource,
    /// `api key k`, `token file …`, `token env …`: what the API may refuse.
    who: String,
    metrics: Metrics,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("HttpSink")
            .field("base_url", &shared.settings.base_url)
            .field("organization_id", &shared.settings.organization_id)
            .field("credentials", &shared.settings.credentials)
            .field("concurrency", &shared.settings.concurrency)
            .field("gate", &shared.gate)
            .finish()
    }
}

impl HttpSink {
    /// `shutdown` stops retries and waits (requests on the wire may complete).
    pub fn new(
        settings: HttpSinkSettings,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Result<HttpSink, SinkError> {
        let client = build_client(&settings)?;
        // A base_url that makes no URL is refused now, not at the first file.
        events_url(&settings.base_url, &settings.organization_id)?;
        let who = who(&settings.credentials);
        let gate = Gate::new(
            settings.base_url.clone(),
            who.clone(),
            settings.auth_retry,
            settings.max_requests_per_second,
        )
        .with_pause_gauge(metrics.submission_paused.clone());
        let tokens = TokenSource::new(settings.credentials.clone(), &settings.base_url);
        Ok(HttpSink {
            shared: Arc::new(Shared {
                permits: Semaphore::new(settings.concurrency.max(1)),
                settings,
                client,
                shutdown,
                gate,
                tokens,
                who,
                metrics,
            }),
        })
    }

    /// Starts the delivery of one occurrence, to the target's organization
    /// (or the sink's).
    pub fn open(&self, target: &DeliveryTarget) -> Result<HttpDelivery, SinkError> {
        let settings = &self.shared.settings;
        let organization = target
            .organization_id
            .clone()
            .unwrap_or_else(|| settings.organization_id.clone());
        let mut url = events_url(&settings.base_url, &organization)?;
        if target.disable_integrations {
            let query = format!("{}&$disable_integrations=true", url.query().unwrap_or(""));
            url.set_query(Some(&query));
        }
        Ok(HttpDelivery {
            shared: self.shared.clone(),
            target: Arc::new(Target {
                url,
                organization,
                import: target.import.clone(),
                occurrence: target.occurrence_id.clone(),
            }),
            cancel: self.shared.shutdown.child_token(),
            window: 2 * self.shared.settings.concurrency.max(1),
            pending: VecDeque::new(),
            ready: Vec::new(),
            interrupted: false,
        })
    }

    /// SIGHUP: read the secret or token again before the next request, and
    /// if submission is paused, try again now.
    pub fn credentials_changed(&self) {
        tracing::info!(
            base_url = %self.shared.settings.base_url,
            "reload: the credentials ({}) are read again before the next request",
            self.shared.who
        );
        self.shared.tokens.reload();
        self.shared.gate.credentials_changed();
    }

    /// Whether submission is paused on refused credentials or configuration.
    pub fn is_paused(&self) -> bool {
        self.shared.gate.is_paused()
    }

    /// Checks, in the background, that the organizations have the purpose
    /// ids the imports map, and logs a warning per missing one. Delivery
    /// does not wait for it.
    pub fn spawn_purpose_check(&self, imports: Vec<Arc<Import>>) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let check = purposes::check(
                &shared.client,
                &shared.settings.base_url,
                &shared.tokens,
                &shared.settings.organization_id,
                &imports,
            )
            .await;
            check.log_warnings();
            let missing = check.missing().count();
            tracing::info!(
                base_url = %shared.settings.base_url,
                missing,
                "purposes checked: {missing} mapped purpose id(s) missing"
            );
        });
    }
}

/// For `consent-drop check --online`: lists the purposes of every import's
/// organization and compares them with the ids the imports map.
pub async fn check_purposes(
    settings: &HttpSinkSettings,
    imports: &[Arc<Import>],
) -> Result<purposes::PurposeCheck, SinkError> {
    let client = build_client(settings)?;
    let tokens = TokenSource::new(settings.credentials.clone(), &settings.base_url);
    Ok(purposes::check(
        &client,
        &settings.base_url,
        &tokens,
        &settings.organization_id,
        imports,
    )
    .await)
}

/// For `consent-drop check --online`: with an API key, opens a session and
/// says until when its token is valid; with a ready token, reads it and sends
/// nothing. The secret and the token are never part of the answer.
pub async fn check_credentials(settings: &HttpSinkSettings) -> Result<String, SinkError> {
    let as_setup = |err: TokenError| match err {
        TokenError::Fault { problem, fix } => SinkError::Setup(format!("{problem}. Fix: {fix}")),
        TokenError::Transient(reason) => {
            SinkError::Setup(format!("cannot open a session: {reason}"))
        }
        TokenError::Throttled(_) => SinkError::Setup(format!(
            "{}/sessions answered 429 Too Many Requests: try again later",
            settings.base_url
        )),
    };
    match &settings.credentials {
        Credentials::ApiKey { key, secret } => {
            let client = build_client(settings)?;
            let secret = session::read_secret(secret).await.map_err(as_setup)?;
            let url = format!("{}/sessions", settings.base_url);
            let session = session::open_session(&client, &url, key, &secret)
                .await
                .map_err(as_setup)?;
            Ok(format!(
                "session opened at {} for api key {key}{}",
                settings.base_url,
                session::describe_exp(session.exp)
            ))
        }
        Credentials::TokenFile(path) => {
            let text = tokio::fs::read_to_string(path).await.map_err(|err| {
                SinkError::Setup(format!(
                    "cannot read the token file {}: {err}",
                    path.display()
                ))
            })?;
            describe_ready_token(text.trim(), &format!("the token file {}", path.display()))
        }
        Credentials::TokenEnv(var) => {
            let text = std::env::var(var).map_err(|_| {
                SinkError::Setup(format!("the environment variable {var} is not set"))
            })?;
            describe_ready_token(text.trim(), &format!("the environment variable {var}"))
        }
    }
}

fn describe_ready_token(token: &str, place: &str) -> Result<String, SinkError> {
    if token.is_empty() {
        return Err(SinkError::Setup(format!("{place} holds no token")));
    }
    let exp = session::jwt_exp(token);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match exp {
        Some(exp) if exp <= now => Err(SinkError::Setup(match session::exp_rfc3339(exp) {
            Some(at) => format!("the token in {place} has expired (at {at})"),
            // An exp before chrono's range (a crafted token).
            None => format!("the token in {place} has expired (exp {exp})"),
        })),
        Some(_) => Ok(format!(
            "a ready token is read from {place}{}; nothing was sent to the API",
            session::describe_exp(exp)
        )),
        None => Ok(format!(
            "a ready token is read from {place} (not a JWT: its expiry is unknown); nothing was sent to the API"
        )),
    }
}

fn who(credentials: &Credentials) -> String {
    match credentials {
        Credentials::ApiKey { key, .. } => format!("api key {key}"),
        Credentials::TokenFile(path) => format!("the token in {}", path.display()),
        Credentials::TokenEnv(var) => format!("the token in ${var}"),
    }
}

fn build_client(settings: &HttpSinkSettings) -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(!settings.allow_insecure_http)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .map_err(|err| SinkError::Setup(format!("cannot build the HTTP client: {err}")))
}

fn events_url(base_url: &str, organization_id: &str) -> Result<reqwest::Url, SinkError> {
    let text = format!(
        "{}/consents/events?organization_id={}",
        base_url.trim_end_matches('/'),
        percent_encode(organization_id)
    );
    reqwest::Url::parse(&text)
        .map_err(|err| SinkError::Setup(format!("base_url {base_url:?} is not a valid URL: {err}")))
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ------------------------------------------------------------------ delivery

/// The batches of one occurrence, in flight.
pub struct HttpDelivery {
    shared: Arc<Shared>,
    target: Arc<Target>,
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

struct Target {
    url: reqwest::Url,
    organization: String,
    import: String,
    occurrence: String,
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

/// What the API made of a group of events.
enum Outcome {
    Delivered,
    /// 400/422 (or 413): the message of the API.
    Refused(String),
}

/// Delivers one batch: the whole, or its halves until every refused event
/// is isolated.
async fn deliver_batch(
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
struct Payload {
    /// Shared, so that every attempt sends it without a copy.
    bytes: Bytes,
    gzipped: bool,
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

/// The API's answer, classified.
enum Answer {
    Delivered,
    Refused(String),
    Throttled(Option<Duration>),
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    Unauthorized(String),
    Fault {
        problem: String,
        fix: String,
    },
}

async fn post(
    shared: &Shared,
    target: &Target,
    body: &Payload,
    token: &str,
    ticket: u64,
) -> Answer {
    let started = std::time::Instant::now();
    shared.metrics.batches_sent.inc();
    let answer = post_once(shared, target, body, token, ticket).await;
    shared.metrics.observe_request(started.elapsed());
    answer
}

async fn post_once(
    shared: &Shared,
    target: &Target,
    body: &Payload,
    token: &str,
    ticket: u64,
) -> Answer {
    let mut request = shared
        .client
        .post(target.url.clone())
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json");
    if body.gzipped {
        request = request.header(CONTENT_ENCODING, "gzip");
    }
    let sent = request.body(body.bytes.clone()).send().await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Answer::Failed {
                reason: describe_error(&err),
                retry_after: None,
            }
        }
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    shared.gate.observe(ticket, rate_limit(response.headers()));
    if status.is_success() {
        // A 2xx counts only once its answer has arrived whole.
        return match response.bytes().await {
            Ok(_) => Answer::Delivered,
            Err(err) => Answer::Failed {
                reason: format!(
                    "{status}, but the answer was cut off: {}",
                    describe_error(&err)
                ),
                retry_after: None,
            },
        };
    }
    let text = response.text().await.unwrap_or_default();
    let message = api_message(&session::scrub(&text, &[token]));
    classify(shared, target, status, retry_after, message)
}

fn classify(
    shared: &Shared,
    target: &Target,
    status: StatusCode,
    retry_after: Option<Duration>,
    message: String,
) -> Answer {
    match status.as_u16() {
        429 => Answer::Throttled(retry_after),
        400 | 413 | 422 => Answer::Refused(format!("refused by the API ({status}): {message}")),
        401 => Answer::Unauthorized(message),
        403 => Answer::Fault {
            problem: format!("the API forbids it to {} (403: {message})", shared.who),
            fix: format!(
                "check that {} may write consent events for organization {:?}",
                shared.who, target.organization
            ),
        },
        408 | 500..=599 => Answer::Failed {
            reason: format!("{status}: {message}"),
            retry_after,
        },
        _ => Answer::Fault {
            problem: format!(
                "POST {}/consents/events answered {status}: {message}",
                shared.settings.base_url
            ),
            fix: "check base_url (the consents API's base URL, e.g. https://api.example.com/v1) and organization_id".into(),
        },
    }
}

/// The API's answer text for a message: trimmed, on one line, at most
/// [`MAX_MESSAGE_CHARS`] characters.
pub(crate) fn api_message(text: &str) -> String {
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.is_empty() {
        return "no message".into();
    }
    match flat.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// A reqwest error with its causes, e.g. `cannot connect: … Connection refused`.
pub(crate) fn describe_error(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "no answer in time".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else if err.is_body() || err.is_decode() {
        "the answer broke off".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
            last = cause_text;
        }
        source = cause.source();
    }
    text
}

/// The `RateLimit` / `RateLimit-Policy` headers of an answer.
fn rate_limit(headers: &HeaderMap) -> Result<Option<ratelimit::RateLimit>, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .map_err(|_| format!("{name}: not visible ASCII")),
        }
    };
    let now_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ratelimit::parse(text("ratelimit")?, text("ratelimit-policy")?, now_unix)
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // Whole seconds included: up to the cap, they are exact in an f64.
    let delay = if let Some(seconds) = value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
    {
        Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
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
    fn the_url_encodes_the_organization_and_keeps_the_dollar() {
        let sink =
            HttpSink::new(settings(), CancellationToken::new(), Metrics::default()).expect("sink");
        let target = DeliveryTarget {
            occurrence_id: "o".into(),
            import: "i".into(),
            disable_integrations: true,
            organization_id: None,
            output_stem: "s".into(),
        };
        let delivery = sink.open(&target).expect("delivery");
        assert_eq!(
            delivery.target.url.as_str(),
            "https://api.test/v1/consents/events?organization_id=my%20org%2F%C3%A9&$disable_integrations=true"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, later.parse().expect("header"));
        let delay = retry_after(&headers).expect("date");
        assert!(
            delay > Duration::from_secs(115) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
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
    fn api_messages_are_flat_and_bounded() {
        assert_eq!(api_message("  \n"), "no message");
        assert_eq!(api_message(" bad\nrow "), "bad row");
        let long = "é".repeat(800);
        let message = api_message(&long);
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
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

    #[test]
    fn debug_shows_no_secret() {
        let sink =
            HttpSink::new(settings(), CancellationToken::new(), Metrics::default()).expect("sink");
        let text = format!("{sink:?}");
        assert!(text.contains("api.test"), "{text}");
    }
}
