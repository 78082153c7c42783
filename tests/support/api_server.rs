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
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

#[path = "api_server/body.rs"]
mod body;
#[path = "api_server/handlers.rs"]
mod handlers;
use handlers::{get_purposes, open_session, post_events};

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
