//! metrics: Prometheus counters and a `/healthz` endpoint, off by default.
//!
//! One process-wide registry ([`global`]) holds what only its owner can
//! count: the HTTP sink's requests, retries and their latency, the drop
//! folder's gauges, the main loop's heartbeat. What the pipeline already
//! counts ([`Counters`]: files, rows, acknowledged batches, refused events)
//! is read from the daemon's `Arc<Counters>` when rendering, never counted
//! a second time here.
//!
//! With `[metrics] listen = "127.0.0.1:9187"`, [`bind`] and [`serve`] answer
//! `GET /metrics` (text format 0.0.4) and `GET /healthz` (200 `ok` while
//! the main loop ticks, 503 before its first tick or when it has not ticked
//! for [`STALE_AFTER`]) with a minimal HTTP/1.1 responder: one request a
//! connection, a bounded request head, a read deadline, then close.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Counters;

/// `/healthz` answers 503 when the main loop has not ticked for this long.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Upper bounds (seconds) of the request-latency histogram's buckets.
pub const REQUEST_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// The longest request head (request line + headers) read.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A client has this long to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with the fixed buckets [`REQUEST_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative: `buckets[i]` counts observations in
    /// `(REQUEST_BUCKETS[i-1], REQUEST_BUCKETS[i]]`; above the last: only in `count`.
    buckets: [AtomicU64; REQUEST_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(index) = REQUEST_BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The process-wide registry. Counters are public so that their owners
/// count with `metrics::global().batches_sent.inc()`.
#[derive(Debug)]
pub struct Metrics {
    /// Ready files taken from the drop folder's candidates (claimed, left
    /// for matching no import, or vanished). The daemon counts it.
    pub files_seen: Counter,
    /// Requests carrying events sent to the API, every attempt included
    /// (retries, halves of a bisected batch). The HTTP sink counts it.
    pub batches_sent: Counter,
    /// Attempts that repeat an earlier one after a 5xx, 429, timeout or
    /// connection error. The HTTP sink counts it.
    pub batches_retried: Counter,
    /// The latency of every API request; see [`Metrics::observe_request`].
    pub request_duration: Histogram,
    /// Files in the drop folder not claimed yet, plus claimed files queued
    /// for a retry or a resume. The daemon sets it.
    pub files_waiting: Gauge,
    /// Files being processed. The daemon sets it.
    pub files_in_flight: Gauge,
    /// When the registry was made; ticks are measured from it.
    epoch: Instant,
    /// Milliseconds after `epoch` of the main loop's last tick, plus one (0: never).
    last_tick: AtomicU64,
}

/// The registry. The first call creates it.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// Records the latency of one API request (any answer, or a failure).
pub fn observe_request(duration: Duration) {
    global().observe_request(duration);
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            files_seen: Counter::default(),
            batches_sent: Counter::default(),
            batches_retried: Counter::default(),
            request_duration: Histogram::default(),
            files_waiting: Gauge::default(),
            files_in_flight: Gauge::default(),
            epoch: Instant::now(),
            last_tick: AtomicU64::new(0),
        }
    }

    pub fn observe_request(&self, duration: Duration) {
        self.request_duration.observe(duration);
    }

    /// The main loop calls this on every tick: `/healthz` depends on it.
    pub fn tick(&self) {
        let millis = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_tick.store(millis + 1, Ordering::Relaxed);
    }

    /// How long ago the main loop last ticked; None before its first tick.
    pub fn since_last_tick(&self) -> Option<Duration> {
        match self.last_tick.load(Ordering::Relaxed) {
            0 => None,
            stamp => {
                let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                Some(Duration::from_millis(now.saturating_sub(stamp - 1)))
            }
        }
    }

    /// True while the main loop ticks.
    pub fn healthy(&self) -> bool {
        self.since_last_tick().is_some_and(|age| age < STALE_AFTER)
    }

    /// Everything, in the Prometheus text format; `counters` are the
    /// pipeline's (the daemon's `Arc<Counters>`).
    pub fn render(&self, counters: &Counters) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let counters_rows: [(&str, &str, u64); 12] = [
            (
                "files_seen_total",
                "Ready files taken from the drop folder.",
                self.files_seen.get(),
            ),
            (
                "files_claimed_total",
                "Files moved into processing/.",
                load(&counters.files_claimed),
            ),
            (
                "files_archived_total",
                "Files delivered and archived.",
                load(&counters.files_archived),
            ),
            (
                "files_failed_total",
                "Files moved to failed/ (quarantined or unreadable).",
                load(&counters.files_failed),
            ),
            (
                "files_duplicate_total",
                "Files archived without sending: same content already imported.",
                load(&counters.files_duplicate),
            ),
            (
                "rows_accepted_total",
                "Valid rows of archived files.",
                load(&counters.rows_accepted),
            ),
            (
                "rows_rejected_total",
                "Rows rejected by validation.",
                load(&counters.rows_rejected),
            ),
            (
                "events_delivered_total",
                "Events acknowledged by the sink, in archived files.",
                load(&counters.events_delivered),
            ),
            (
                "events_refused_total",
                "Events the API refused (400/422) in acknowledged batches.",
                load(&counters.rows_refused),
            ),
            (
                "batches_acked_total",
                "Batches acknowledged by the sink (2xx, or fsync for the file sink).",
                load(&counters.batches_acked),
            ),
            (
                "batches_sent_total",
                "Requests carrying events sent to the API, retries included.",
                self.batches_sent.get(),
            ),
            (
                "batches_retried_total",
                "Requests repeated after a 5xx, 429, timeout or connection error.",
                self.batches_retried.get(),
            ),
        ];
        for (name, help, value) in counters_rows {
            metric(
                &mut out,
                name,
                "counter",
                help,
                &[(String::new(), value.to_string())],
            );
        }
        metric(
            &mut out,
            "files_waiting",
            "gauge",
            "Files waiting: in the drop folder not claimed yet, or queued for a retry.",
            &[(String::new(), self.files_waiting.get().to_string())],
        );
        metric(
            &mut out,
            "files_in_flight",
            "gauge",
            "Files being processed.",
            &[(String::new(), self.files_in_flight.get().to_string())],
        );
        self.render_histogram(&mut out);
        let age = self.since_last_tick().map_or(-1.0, |age| age.as_secs_f64());
        metric(
            &mut out,
            "main_loop_tick_age_seconds",
            "gauge",
            "Seconds since the main loop last ticked (-1 before its first tick).",
            &[(String::new(), format_float(age))],
        );
        metric(
            &mut out,
            "build_info",
            "gauge",
            "The running version.",
            &[(
                format!(
                    "{{version=\"{}\"}}",
                    escape_label(env!("CARGO_PKG_VERSION"))
                ),
                "1".to_string(),
            )],
        );
        out
    }

    fn render_histogram(&self, out: &mut String) {
        let histogram = &self.request_duration;
        let mut samples = Vec::with_capacity(REQUEST_BUCKETS.len() + 3);
        let mut cumulative = 0;
        for (bound, bucket) in REQUEST_BUCKETS.iter().zip(&histogram.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            samples.push((
                format!("_bucket{{le=\"{}\"}}", format_float(*bound)),
                cumulative.to_string(),
            ));
        }
        // Read count last: it is never below the buckets' sum, as observe()
        // adds to the bucket first.
        let count = histogram.count().max(cumulative);
        samples.push(("_bucket{le=\"+Inf\"}".to_string(), count.to_string()));
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        samples.push(("_sum".to_string(), format_float(sum)));
        samples.push(("_count".to_string(), count.to_string()));
        metric(
            out,
            "request_duration_seconds",
            "histogram",
            "Latency of the API requests, whatever their answer.",
            &samples,
        );
    }
}

/// One metric family: `samples` are (suffix and labels, value).
fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP consent_drop_{name} {help}");
    let _ = writeln!(out, "# TYPE consent_drop_{name} {kind}");
    for (suffix, value) in samples {
        let _ = writeln!(out, "consent_drop_{name}{suffix} {value}");
    }
}

fn format_float(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.1}")
    } else {
        format!("{value}")
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `[metrics] listen` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen = {listen:?}: cannot listen there")]
pub struct ListenError {
    pub listen: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds `[metrics] listen`; a failure names the key.
pub async fn bind(listen: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| ListenError {
            listen: listen.to_string(),
            source,
        })
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let counters = counters.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &counters)).await;
                drop(permit);
            });
        }
    })
}

/// A response: status line, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: String,
    /// HEAD: headers only.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
    }
}

/// Reads one request head, answers, closes.
async fn answer(mut stream: TcpStream, counters: &Counters) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => Err(Response::text(
            431,
            "Request Header Fields Too Large",
            "request too large",
        )),
        Ok(Err(HeadError::Closed)) | Err(_) => return,
    };
    let response = match head {
        Ok(head) => respond(&head, counters),
        Err(response) => response,
    };
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

enum HeadError {
    TooLarge,
    Closed,
}

/// The bytes up to the blank line that ends the head, or a 400 if the
/// connection closes on a request line alone.
async fn read_head(stream: &mut TcpStream) -> Result<Result<Vec<u8>, Response>, HeadError> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .map_err(|_| HeadError::Closed)?;
        if read == 0 {
            if buffer.is_empty() {
                return Err(HeadError::Closed);
            }
            // Closed after a partial head: answer what we can.
            return Ok(Ok(buffer));
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = head_end(&buffer) {
            buffer.truncate(end);
            return Ok(Ok(buffer));
        }
        if buffer.len() > MAX_REQUEST_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn head_end(buffer: &[u8]) -> Option<usize> {
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buffer.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to one request head (the bytes before the blank line).
pub fn respond(head: &[u8], counters: &Counters) -> Response {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Response::text(400, "Bad Request", "bad request");
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "bad request");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Response::text(400, "Bad Request", "bad request");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::text(405, "Method Not Allowed", "method not allowed"),
    };
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let mut response = match path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: global().render(counters),
            head_only: false,
        },
        "/healthz" => match global().since_last_tick() {
            Some(age) if age < STALE_AFTER => Response::text(200, "OK", "ok"),
            Some(age) => Response::text(
                503,
                "Service Unavailable",
                &format!("the main loop has not ticked for {}s", age.as_secs()),
            ),
            None => Response::text(503, "Service Unavailable", "starting"),
        },
        _ => Response::text(404, "Not Found", "not found: try /metrics or /healthz"),
    };
    response.head_only = head_only;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> Counters {
        let counters = Counters::default();
        counters.files_archived.store(2, Ordering::Relaxed);
        counters.rows_accepted.store(7, Ordering::Relaxed);
        counters.rows_rejected.store(1, Ordering::Relaxed);
        counters
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let metrics = Metrics::new();
        metrics.batches_sent.add(3);
        metrics.files_waiting.set(4);
        let text = metrics.render(&counters());
        for name in [
            "files_seen_total",
            "files_claimed_total",
            "files_archived_total",
            "files_failed_total",
            "files_duplicate_total",
            "rows_accepted_total",
            "rows_rejected_total",
            "batches_sent_total",
            "batches_retried_total",
            "events_refused_total",
            "request_duration_seconds",
            "files_waiting",
            "files_in_flight",
            "build_info",
        ] {
            assert!(
                text.contains(&format!("# HELP consent_drop_{name} ")),
                "{name}"
            );
            assert!(
                text.contains(&format!("# TYPE consent_drop_{name} ")),
                "{name}"
            );
        }
        assert!(text.contains("\nconsent_drop_files_archived_total 2\n"));
        assert!(text.contains("\nconsent_drop_rows_accepted_total 7\n"));
        assert!(text.contains("\nconsent_drop_rows_rejected_total 1\n"));
        assert!(text.contains("\nconsent_drop_batches_sent_total 3\n"));
        assert!(text.contains("\nconsent_drop_files_waiting 4\n"));
        assert!(text.contains(&format!(
            "consent_drop_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or(("", ""));
            assert!(name.starts_with("consent_drop_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::new();
        metrics.observe_request(Duration::from_millis(3));
        metrics.observe_request(Duration::from_millis(40));
        metrics.observe_request(Duration::from_secs(2));
        metrics.observe_request(Duration::from_secs(60));
        let text = metrics.render(&Counters::default());
        assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"2.5\"} 3\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"30.0\"} 3\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_count 4\n"));
        assert!(text.contains("consent_drop_request_duration_seconds_sum 62.043\n"));
    }

    #[test]
    fn health_follows_the_ticks() {
        let metrics = Metrics::new();
        assert!(!metrics.healthy());
        assert!(metrics.since_last_tick().is_none());
        metrics.tick();
        assert!(metrics.healthy());
        assert!(metrics
            .since_last_tick()
            .is_some_and(|age| age < Duration::from_secs(1)));
    }

    #[test]
    fn requests_are_routed_and_garbage_is_refused() {
        let counters = counters();
        let get = |head: &[u8]| respond(head, &counters);
        let metrics = get(b"GET /metrics HTTP/1.1\r\nHost: x");
        assert_eq!(metrics.status, 200);
        assert!(metrics.body.contains("consent_drop_files_archived_total 2"));
        assert_eq!(get(b"GET /metrics?x=1 HTTP/1.0").status, 200);
        assert_eq!(get(b"GET /nope HTTP/1.1").status, 404);
        assert_eq!(get(b"POST /metrics HTTP/1.1").status, 405);
        let head = get(b"HEAD /metrics HTTP/1.1");
        assert!(head.head_only);
        let bytes = head.to_bytes();
        assert!(bytes.ends_with(b"\r\n\r\n"));
        for garbage in [
            &b""[..],
            b"\xff\xfe\x00",
            b"GET",
            b"GET /metrics",
            b"GET metrics HTTP/1.1",
            b"GET /metrics SPDY/3",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
        ] {
            assert_eq!(
                get(garbage).status,
                400,
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn the_listener_answers_and_survives_garbage() {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = serve(listener, Arc::new(counters()), shutdown.clone());
        async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(request).await.unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).into_owned()
        }
        let too_large = vec![b'a'; MAX_REQUEST_BYTES * 2];
        assert!(exchange(address, &too_large)
            .await
            .starts_with("HTTP/1.1 431 "));
        assert!(exchange(address, b"\x00\x01\x02\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400 "));
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("consent_drop_rows_accepted_total 7\n"));
        let length: usize = answer
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap();
        let body = answer.split_once("\r\n\r\n").map(|(_, body)| body).unwrap();
        assert_eq!(body.len(), length);
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_busy_address_names_the_key() {
        let taken = bind("127.0.0.1:0").await.unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = bind(&address).await.unwrap_err();
        assert!(err.to_string().starts_with("metrics.listen = "), "{err}");
    }
}
