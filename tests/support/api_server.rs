//! An honest, in-process consents-events API for tests and local trials.
//!
//! It does what the real API does with what consent-drop sends, and nothing
//! more: `POST /sessions` trades an API key and secret for a JWT-shaped access
//! token with an `exp`; `POST /consents/events?organization_id=…` checks the
//! bearer token, takes the body as it is or gunzipped (`Content-Encoding:
//! gzip`), validates the events (a JSON array of 1..=100, each with a
//! UUID `id`, the query's `organization_id`, an RFC 3339 `created_at`,
//! `user.organization_user_id`, `consents.purposes` and `metadata`), stores
//! each id once, and answers `{"imported": n}`. A request with any invalid or
//! refused event is answered as a whole (400 / 422) and stores nothing, like
//! the real API.
//!
//! Like an API v2 organization, it can hold a list of purposes
//! ([`ServerOptions::purposes`]): `GET /metadata/purposes` serves it in pages
//! (`$limit`, `$skip`, at most [`ServerOptions::purposes_page_limit`] a
//! page) and events with any other purpose id are refused (400). And it can
//! enforce a rate limit ([`ApiServer::set_rate_limit`]): a fixed window of N
//! requests, announced (or not) by `RateLimit` / `RateLimit-Policy` headers
//! on every answer, 429 with `Retry-After` beyond it.
//!
//! Faults are switched on by the test: 503s at a deterministic ratio, bursts
//! of 429 with `Retry-After`, slow answers, dropped connections, revoked
//! tokens, 403 for everything, changed credentials, requests held until
//! released. Events whose `user.organization_user_id` contains `+refuse`
//! are refused with 422.
//!
//! Included with `#[path = "support/api_server.rs"] mod api_server;` by the
//! integration tests and by `examples/test_server.rs`.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

/// How the server starts. `Default` gives key `test-key`, secret
/// `test-secret`, one-hour tokens, any organization, `127.0.0.1:0`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where to listen; `None` binds `127.0.0.1:0`.
    pub listen: Option<SocketAddr>,
    pub api_key: String,
    pub secret: String,
    /// Bearer tokens accepted as they are (for `token_file` / `token_env`).
    pub static_tokens: Vec<String>,
    /// Lifetime of the tokens `/sessions` issues, in seconds.
    pub token_lifetime_s: u64,
    /// When set, events POSTed for another organization get 403.
    pub organization_id: Option<String>,
    /// Seed of the pseudo-random 503s of [`ApiServer::set_fail_ratio`].
    pub seed: u64,
    /// Events whose `user.organization_user_id` contains this are refused (422).
    pub refuse_marker: String,
    /// The purposes of every organization (API v2): listed by
    /// `/metadata/purposes`, and events with another purpose are refused.
    /// `None`: any purpose is taken and the list is empty.
    pub purposes: Option<Vec<String>>,
    /// The most purposes one page of `/metadata/purposes` holds.
    pub purposes_page_limit: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: None,
            api_key: "test-key".into(),
            secret: "test-secret".into(),
            static_tokens: Vec::new(),
            token_lifetime_s: 3600,
            organization_id: None,
            seed: 0x5eed,
            refuse_marker: "+refuse".into(),
            purposes: None,
            purposes_page_limit: 100,
        }
    }
}

/// A running server; it stops accepting connections when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    state: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// A server on a runtime of its own, for tests that are not async (they
/// start the binary and wait on it). Stops when dropped.
pub struct BackgroundApi {
    pub server: ApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl BackgroundApi {
    pub fn start(options: ServerOptions) -> BackgroundApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = runtime.block_on(ApiServer::start(options));
        BackgroundApi {
            server,
            _runtime: runtime,
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// While true, events requests wait before they are answered.
    hold: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    api_key: String,
    secret: String,
    token_lifetime_s: u64,
    organization_id: Option<String>,
    refuse_marker: String,
    /// Issued session tokens and their `exp` (unix seconds).
    issued: HashMap<String, u64>,
    /// Every token ever issued, revoked or not (to check logs against).
    all_issued: Vec<String>,
    static_tokens: HashSet<String>,
    /// Stored events, in arrival order, as compact JSON (a tenth of the
    /// memory of a `Value`, so a million events fit a benchmark), and their ids.
    events: Vec<Box<str>>,
    ids: HashSet<String>,
    duplicates: u64,
    requests: u64,
    unauthorized: u64,
    sessions_opened: u64,
    session_attempts: u64,
    queries: Vec<String>,
    user_agents: Vec<String>,
    /// The `Content-Encoding` of each events request, `""` when absent.
    content_encodings: Vec<String>,
    fail_ratio: f64,
    rng: u64,
    burst_429: u64,
    retry_after_s: u64,
    delay: Duration,
    drop_connections: u64,
    forbidden: bool,
    in_flight: u64,
    max_in_flight: u64,
    purposes: Option<Vec<String>>,
    purposes_page_limit: usize,
    /// `GET /metadata/purposes` requests, in order (raw query strings).
    purpose_queries: Vec<String>,
    /// The organizations named by the events of each accepted request.
    request_organizations: Vec<Vec<String>>,
    window: Option<Window>,
    /// A `RateLimit` header sent as it is on every event answer (a server's junk).
    raw_ratelimit: Option<String>,
    /// Requests answered 429 because the rate-limit window was exceeded.
    rate_limited: u64,
    /// The `metadata.source_file` of each event of every valid events
    /// request, accepted or refused, in arrival order.
    request_sources: Vec<Vec<String>>,
}

/// A fixed rate-limit window: `limit` requests per `length`, starting at
/// the first request after the previous window ended.
#[derive(Debug, Clone)]
struct Window {
    limit: u64,
    length: Duration,
    announce: bool,
    started: Option<Instant>,
    used: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// splitmix64: deterministic for a seed, good enough for fault injection.
    fn next_random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl ApiServer {
    pub async fn start(options: ServerOptions) -> ApiServer {
        let listen = options
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(err) => panic!("test server cannot listen on {listen}: {err}"),
        };
        ApiServer::start_on(listener, options).await
    }

    /// Serves on a listener the test bound itself (`options.listen` unused):
    /// a port held from before the server starts is never raced for.
    pub async fn start_on(listener: tokio::net::TcpListener, options: ServerOptions) -> ApiServer {
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(err) => panic!("test server has no address: {err}"),
        };
        let inner = Inner {
            api_key: options.api_key,
            secret: options.secret,
            token_lifetime_s: options.token_lifetime_s,
            organization_id: options.organization_id,
            refuse_marker: options.refuse_marker,
            purposes: options.purposes,
            purposes_page_limit: options.purposes_page_limit.max(1),
            static_tokens: options.static_tokens.into_iter().collect(),
            rng: options.seed,
            ..Inner::default()
        };
        let state = Arc::new(Shared {
            inner: Mutex::new(inner),
            hold: tokio::sync::watch::Sender::new(false),
        });
        let app = Router::new()
            .route("/sessions", post(open_session))
            .route("/consents/events", post(post_events))
            .route("/metadata/purposes", get(get_purposes))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("test server stopped: {err}");
            }
        });
        ApiServer { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stored events, each id once, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.state
            .lock()
            .events
            .iter()
            .filter_map(|event| serde_json::from_str(event).ok())
            .collect()
    }

    /// Stored events from the `start`-th on (what came since a first look).
    pub fn events_since(&self, start: usize) -> Vec<Value> {
        let state = self.state.lock();
        let events = state.events.get(start..).unwrap_or_default();
        events
            .iter()
            .filter_map(|event| serde_json::from_str(event).ok())
            .collect()
    }

    pub fn event_count(&self) -> usize {
        self.state.lock().events.len()
    }

    /// The ids stored.
    pub fn event_ids(&self) -> HashSet<String> {
        self.state.lock().ids.clone()
    }

    /// Events received again with an id already stored.
    pub fn duplicates(&self) -> u64 {
        self.state.lock().duplicates
    }

    /// POSTs to `/consents/events`, whatever their answer.
    pub fn requests(&self) -> u64 {
        self.state.lock().requests
    }

    /// Event POSTs answered 401 (unknown, revoked or expired token).
    pub fn unauthorized(&self) -> u64 {
        self.state.lock().unauthorized
    }

    /// Successful `POST /sessions`.
    pub fn sessions_opened(&self) -> u64 {
        self.state.lock().sessions_opened
    }

    /// All `POST /sessions`, refused ones too.
    pub fn session_attempts(&self) -> u64 {
        self.state.lock().session_attempts
    }

    pub fn last_query(&self) -> Option<String> {
        self.state.lock().queries.last().cloned()
    }

    /// Query strings of the event POSTs, in order (raw, not decoded).
    pub fn queries(&self) -> Vec<String> {
        self.state.lock().queries.clone()
    }

    /// `User-Agent` headers of the event POSTs, in order.
    pub fn user_agents(&self) -> Vec<String> {
        self.state.lock().user_agents.clone()
    }

    /// The `Content-Encoding` header of every events request, `""` when absent.
    pub fn content_encodings(&self) -> Vec<String> {
        self.state.lock().content_encodings.clone()
    }

    /// Every access token `/sessions` has issued, revoked ones too.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.lock().all_issued.clone()
    }

    /// The most event POSTs ever handled at the same time.
    /// Requests being answered now.
    pub fn in_flight(&self) -> u64 {
        self.state.lock().in_flight
    }

    pub fn max_in_flight(&self) -> u64 {
        self.state.lock().max_in_flight
    }

    /// Query strings of the `GET /metadata/purposes` requests, in order.
    pub fn purpose_queries(&self) -> Vec<String> {
        self.state.lock().purpose_queries.clone()
    }

    /// For each accepted event POST, the `organization_id` of its events.
    pub fn request_organizations(&self) -> Vec<Vec<String>> {
        self.state.lock().request_organizations.clone()
    }

    /// Event POSTs answered 429 because the rate-limit window was exceeded.
    pub fn rate_limited(&self) -> u64 {
        self.state.lock().rate_limited
    }

    /// At most `limit` event POSTs per `window` (a fixed window, from the
    /// first request after the last one ended); beyond, 429 with
    /// `Retry-After`. With `announce`, every answer carries `RateLimit:
    /// limit=N, remaining=R, reset=S` and `RateLimit-Policy: N;w=W`.
    /// Every event answer carries `RateLimit: {text}`, whatever it says.
    pub fn set_raw_ratelimit(&self, text: Option<&str>) {
        self.state.lock().raw_ratelimit = text.map(str::to_string);
    }

    pub fn set_rate_limit(&self, limit: u64, window: Duration, announce: bool) {
        self.state.lock().window = Some(Window {
            limit,
            length: window,
            announce,
            started: None,
            used: 0,
        });
    }

    /// Replaces the purposes of every organization.
    pub fn set_purposes(&self, purposes: Option<Vec<String>>) {
        self.state.lock().purposes = purposes;
    }

    /// Answers this share (0.0..=1.0) of event POSTs with 503.
    pub fn set_fail_ratio(&self, ratio: f64) {
        self.state.lock().fail_ratio = ratio;
    }

    /// The next `count` event POSTs get 429 with `Retry-After: retry_after_secs`.
    pub fn set_429_burst(&self, count: u64, retry_after_secs: u64) {
        let mut inner = self.state.lock();
        inner.burst_429 = count;
        inner.retry_after_s = retry_after_secs;
    }

    /// Every event POST waits this long before it is handled.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// The next `count` event POSTs lose their connection without an answer.
    pub fn drop_connections(&self, count: u64) {
        self.state.lock().drop_connections = count;
    }

    /// Every issued session token becomes unknown (401); static tokens stay.
    pub fn revoke_tokens(&self) {
        self.state.lock().issued.clear();
    }

    /// 403 for every session and event POST while set.
    pub fn set_forbidden(&self, forbidden: bool) {
        self.state.lock().forbidden = forbidden;
    }

    /// The key and secret `/sessions` accepts from now on.
    pub fn set_credentials(&self, key: &str, secret: &str) {
        let mut inner = self.state.lock();
        inner.api_key = key.to_string();
        inner.secret = secret.to_string();
    }

    /// Replaces the accepted static tokens.
    pub fn set_static_tokens(&self, tokens: &[&str]) {
        self.state.lock().static_tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Polls until `count` distinct events are stored; false on timeout.
    /// The source file of each event of every valid events request
    /// (accepted or refused), in arrival order.
    pub fn request_sources(&self) -> Vec<Vec<String>> {
        self.state.lock().request_sources.clone()
    }

    /// While `hold` is true, events requests are held (counted in
    /// [`ApiServer::in_flight`]) and answered once it is set false again.
    pub fn hold(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }

    pub async fn wait_for_events(&self, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.event_count() >= count).await
    }
}

/// Polls `condition` every 10 ms; false if it is still false after `timeout`.
pub async fn wait_until(timeout: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    answer(
        status,
        json!({ "code": status.as_u16(), "message": message.into() }),
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn open_session(State(state): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut inner = state.lock();
    inner.session_attempts += 1;
    if inner.forbidden {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {err}")),
    };
    if request.get("type").and_then(Value::as_str) != Some("api-key") {
        return error(StatusCode::BAD_REQUEST, "type must be \"api-key\"");
    }
    let key = request.get("key").and_then(Value::as_str);
    let secret = request.get("secret").and_then(Value::as_str);
    if key != Some(inner.api_key.as_str()) || secret != Some(inner.secret.as_str()) {
        return error(StatusCode::BAD_REQUEST, "invalid key or secret");
    }
    let exp = unix_now() + inner.token_lifetime_s;
    let signature = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let token = format!(
        "{}.{}.{}",
        b64(&json!({ "alg": "HS256", "typ": "JWT" })),
        b64(&json!({ "sub": inner.api_key, "exp": exp, "iat": unix_now() })),
        signature
    );
    inner.issued.insert(token.clone(), exp);
    inner.all_issued.push(token.clone());
    inner.sessions_opened += 1;
    answer(StatusCode::OK, json!({ "access_token": token }))
}

/// Counts an event POST in flight for as long as it lives (even if the
/// client goes away and the handler is dropped).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(state: &Arc<Shared>) -> InFlight {
        let mut inner = state.lock();
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

/// A response whose body fails before its first byte: hyper aborts the
/// connection instead of sending an answer.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "test server drops this connection",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// The window's verdict on one more request: `Err` is the 429 answer;
/// `Ok` holds the headers every answer carries (none when not announced).
fn count_in_window(inner: &mut Inner) -> Result<Vec<(&'static str, String)>, Box<Response>> {
    let Some(window) = &mut inner.window else {
        return Ok(Vec::new());
    };
    let now = Instant::now();
    let started = match window.started {
        Some(started) if now < started + window.length => started,
        _ => {
            window.started = Some(now);
            window.used = 0;
            now
        }
    };
    window.used += 1;
    let left = (started + window.length).saturating_duration_since(now);
    // Whole seconds, rounded up: the client never believes it ends earlier.
    let reset = left.as_millis().div_ceil(1000).max(1);
    let remaining = window.limit.saturating_sub(window.used);
    let headers = if window.announce {
        vec![
            (
                "ratelimit",
                format!(
                    "limit={}, remaining={remaining}, reset={reset}",
                    window.limit
                ),
            ),
            (
                "ratelimit-policy",
                format!("{};w={}", window.limit, window.length.as_secs().max(1)),
            ),
        ]
    } else {
        Vec::new()
    };
    if window.used <= window.limit {
        return Ok(headers);
    }
    inner.rate_limited += 1;
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
    with_headers(&mut response, &headers);
    if let Ok(value) = reset.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Err(Box::new(response))
}

fn with_headers(response: &mut Response, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
}

/// Whether the request's bearer token is one the server issued or knows.
fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    let token = header_text(headers, header::AUTHORIZATION)
        .strip_prefix("Bearer ")
        .unwrap_or("");
    inner.static_tokens.contains(token)
        || inner.issued.get(token).is_some_and(|exp| unix_now() < *exp)
}

/// `GET /metadata/purposes?organization_id=…&$limit=…&$skip=…`, paginated.
async fn get_purposes(
    State(state): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let mut inner = state.lock();
    inner.purpose_queries.push(query.clone());
    if inner.forbidden {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    if !authorized(&inner, &headers) {
        inner.unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "invalid or expired access token");
    }
    let params = form_pairs(&query);
    if params.get("organization_id").is_none_or(String::is_empty) {
        return error(StatusCode::BAD_REQUEST, "organization_id is required");
    }
    let number = |key: &str, default: usize| -> Result<usize, String> {
        match params.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("{key} must be a number, not {text:?}")),
        }
    };
    let (limit, skip) = match (number("$limit", 10), number("$skip", 0)) {
        (Ok(limit), Ok(skip)) => (limit.min(inner.purposes_page_limit), skip),
        (Err(message), _) | (_, Err(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let all = inner.purposes.clone().unwrap_or_default();
    let data: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|id| json!({ "id": id, "description": { "en": format!("purpose {id}") } }))
        .collect();
    answer(
        StatusCode::OK,
        json!({ "total": all.len(), "limit": limit, "skip": skip, "data": data }),
    )
}

async fn post_events(
    State(state): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let window = count_in_window(&mut state.lock());
    match window {
        Err(too_many) => *too_many,
        Ok(rate_headers) => {
            let mut response = handle_events(&state, query, headers, body).await;
            with_headers(&mut response, &rate_headers);
            let raw = state.lock().raw_ratelimit.clone();
            if let Some(raw) = raw {
                with_headers(&mut response, &[("ratelimit", raw)]);
            }
            response
        }
    }
}

async fn handle_events(
    state: &Arc<Shared>,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    if let Some(dropped) = arrive(state, &query, &headers).await {
        return dropped;
    }
    let accepted = match admit(&mut state.lock(), &query, &headers) {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    // Decoding and validating take most of a request's time: outside the
    // lock, so concurrent requests use every core, as a real API would.
    let body = match decode(&headers, body) {
        Ok(body) => body,
        Err((status, message)) => return error(status, message),
    };
    let events = match validate(&body, &accepted.org, accepted.purposes.as_ref()) {
        Ok(events) => events,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    store(state, &accepted, &events)
}

/// Counts the request and what it was sent with, then holds it while the
/// test holds the server and for the configured delay. `Some`: the
/// connection is to be dropped instead of answered.
async fn arrive(state: &Arc<Shared>, query: &str, headers: &HeaderMap) -> Option<Response> {
    let mut hold = state.hold.subscribe();
    while *hold.borrow_and_update() {
        if hold.changed().await.is_err() {
            break;
        }
    }
    let delay = {
        let mut inner = state.lock();
        inner.requests += 1;
        inner.queries.push(query.to_string());
        let agent = header_text(headers, header::USER_AGENT).to_string();
        inner.user_agents.push(agent);
        let encoding = header_text(headers, header::CONTENT_ENCODING).to_string();
        inner.content_encodings.push(encoding);
        if inner.drop_connections > 0 {
            inner.drop_connections -= 1;
            return Some(dropped_connection());
        }
        inner.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    None
}

/// What a request the server admitted needs once the lock is released.
struct Admitted {
    org: String,
    purposes: Option<HashSet<String>>,
    refuse_marker: String,
}

/// The answers that need no body: credentials, injected faults, the
/// organization and the content type.
fn admit(inner: &mut Inner, query: &str, headers: &HeaderMap) -> Result<Admitted, Box<Response>> {
    if inner.forbidden {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this key may not write consent events",
        )));
    }
    if !authorized(inner, headers) {
        inner.unauthorized += 1;
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "invalid or expired access token",
        )));
    }
    if let Some(response) = injected_fault(inner) {
        return Err(Box::new(response));
    }
    let params: HashMap<String, String> = form_pairs(query);
    let Some(org) = params.get("organization_id").filter(|org| !org.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "organization_id is required",
        )));
    };
    if let Some(expected) = &inner.organization_id {
        if org != expected {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                format!("organization {org:?} is not accessible with this token"),
            )));
        }
    }
    let content_type = header_text(headers, header::CONTENT_TYPE);
    if !content_type.starts_with("application/json") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        )));
    }
    Ok(Admitted {
        org: org.clone(),
        purposes: inner
            .purposes
            .as_ref()
            .map(|list| list.iter().cloned().collect()),
        refuse_marker: inner.refuse_marker.clone(),
    })
}
/// A burst of 429s or a random 503, when the test asked for them.
fn injected_fault(inner: &mut Inner) -> Option<Response> {
    if inner.burst_429 > 0 {
        inner.burst_429 -= 1;
        let retry_after = inner.retry_after_s.to_string();
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        if let Ok(value) = retry_after.parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Some(response);
    }
    if inner.fail_ratio > 0.0 && inner.next_random() < inner.fail_ratio {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
        ));
    }
    None
}

/// Refuses the whole request (422) when an event's user holds the refuse
/// marker; else keeps each event not seen before and answers 200.
fn store(state: &Arc<Shared>, admitted: &Admitted, events: &[Value]) -> Response {
    let sources = events
        .iter()
        .map(|event| {
            let source = event
                .pointer("/metadata/source_file")
                .and_then(Value::as_str);
            source.unwrap_or_default().to_string()
        })
        .collect();
    state.lock().request_sources.push(sources);
    let refused: Vec<String> = events
        .iter()
        .enumerate()
        .filter(|(_, event)| {
            event
                .pointer("/user/organization_user_id")
                .and_then(Value::as_str)
                .is_some_and(|user| user.contains(&admitted.refuse_marker))
        })
        .map(|(index, event)| {
            format!(
                "events[{index}] (id {}): organization_user_id is refused",
                event.get("id").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    if !refused.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, refused.join("; "));
    }
    let count = events.len();
    let stored: Vec<(String, Box<str>)> = events
        .iter()
        .map(|event| {
            let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
            (id.to_string(), event.to_string().into_boxed_str())
        })
        .collect();
    let mut inner = state.lock();
    inner
        .request_organizations
        .push(events.iter().map(|_| admitted.org.clone()).collect());
    for (id, event) in stored {
        if inner.ids.insert(id) {
            inner.events.push(event);
        } else {
            inner.duplicates += 1;
        }
    }
    answer(StatusCode::OK, json!({ "imported": count }))
}
/// A header's text; `""` when absent or not visible ASCII.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// The body as JSON bytes: as sent, or gunzipped for `Content-Encoding: gzip`.
fn decode(headers: &HeaderMap, body: Bytes) -> Result<Bytes, (StatusCode, String)> {
    let encoding = header_text(headers, header::CONTENT_ENCODING)
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            use std::io::Read;
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(body.as_ref())
                .read_to_end(&mut json)
                .map_err(|err| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("body is not valid gzip: {err}"),
                    )
                })?;
            Ok(Bytes::from(json))
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported (gzip or none)"),
        )),
    }
}

/// `a=b&c=d` with percent-decoding (`+` is a space).
fn form_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The API's schema: a JSON array of 1..=100 events of organization `org`
/// (and, for an API v2 organization, of its `purposes`).
fn validate(
    body: &[u8],
    org: &str,
    purposes: Option<&HashSet<String>>,
) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("body is not JSON: {err}"))?;
    let Value::Array(events) = value else {
        return Err("body must be a JSON array of events".into());
    };
    if events.is_empty() || events.len() > 100 {
        return Err(format!(
            "a request carries 1 to 100 events, not {}",
            events.len()
        ));
    }
    for (index, event) in events.iter().enumerate() {
        validate_event(event, org, purposes)
            .map_err(|problem| format!("events[{index}]{problem}"))?;
    }
    Ok(events)
}

fn validate_event(
    event: &Value,
    org: &str,
    known_purposes: Option<&HashSet<String>>,
) -> Result<(), String> {
    let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
    let id = text("/id").ok_or(".id: missing or not a string")?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(format!(".id: {id:?} is not a UUID"));
    }
    match text("/organization_id") {
        None => return Err(".organization_id: missing or not a string".into()),
        Some(own) if own != org => {
            return Err(format!(
                ".organization_id: {own:?} is not the organization of the request ({org:?})"
            ))
        }
        Some(_) => {}
    }
    let created = text("/created_at").ok_or(".created_at: missing or not a string")?;
    if chrono::DateTime::parse_from_rfc3339(created).is_err() {
        return Err(format!(".created_at: {created:?} is not an RFC 3339 date"));
    }
    match text("/user/organization_user_id") {
        Some(user) if !user.trim().is_empty() => {}
        _ => return Err(".user.organization_user_id: missing or empty".into()),
    }
    if let Some(metadata) = event.pointer("/user/metadata") {
        if !metadata.is_object() {
            return Err(".user.metadata: must be an object".into());
        }
    }
    let purposes = event
        .pointer("/consents/purposes")
        .and_then(Value::as_array)
        .ok_or(".consents.purposes: missing or not an array")?;
    if purposes.is_empty() {
        return Err(".consents.purposes: is empty".into());
    }
    for (index, purpose) in purposes.iter().enumerate() {
        let Some(purpose_id) = purpose
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        else {
            return Err(format!(".consents.purposes[{index}].id: missing or empty"));
        };
        if known_purposes.is_some_and(|known| !known.contains(purpose_id)) {
            return Err(format!(
                ".consents.purposes[{index}].id: {purpose_id:?} is not a purpose of organization {org:?}"
            ));
        }
        if purpose.get("enabled").and_then(Value::as_bool).is_none() {
            return Err(format!(
                ".consents.purposes[{index}].enabled: missing or not a boolean"
            ));
        }
    }
    if !event.get("metadata").is_some_and(Value::is_object) {
        return Err(".metadata: missing or not an object".into());
    }
    Ok(())
}
