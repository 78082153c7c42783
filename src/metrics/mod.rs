//! metrics: the Prometheus families and the main loop's heartbeat, on
//! prometheus-client; [`server`] serves them with `/healthz`.
//!
//! The text is OpenMetrics (prometheus-client's own format): a counter
//! family `consent_drop_files_seen` has the sample
//! `consent_drop_files_seen_total`, buckets read `le="30.0"`, and the text
//! ends with `# EOF`. Prometheus reads it by its `Content-Type`.
//!
//! A [`Metrics`] handle is made once per run and passed in, like the
//! journal: the daemon ticks the heartbeat and sets the drop folder's gauges,
//! the HTTP sink counts its requests, retries and their latency. What the
//! pipeline already counts ([`Counters`]: files, rows, acknowledged batches,
//! refused events) is read from the shared `Arc<Counters>` at each scrape by
//! a collector, never counted a second time. Clones share every value.
//!
//! This module depends on no other module of the crate (so that anything may
//! count into it without an import circle) and never does I/O: serving is
//! [`server`]'s.

pub mod server;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use server::{bind, serve, ListenError};

/// `/healthz` answers 503 when the main loop has not ticked for this long.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// Upper bounds (seconds) of the request-latency histogram's buckets.
pub const REQUEST_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every family's name starts with this and `_`.
const PREFIX: &str = "consent_drop";

/// What the pipeline counts, shared by every file, for progress bars and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub files_claimed: AtomicU64,
    pub files_archived: AtomicU64,
    pub files_failed: AtomicU64,
    pub files_duplicate: AtomicU64,
    pub rows_accepted: AtomicU64,
    pub rows_rejected: AtomicU64,
    pub rows_refused: AtomicU64,
    pub batches_acked: AtomicU64,
    /// Batches to deliver, known once each file is validated.
    pub batches_planned: AtomicU64,
    pub events_delivered: AtomicU64,
}

/// The families and the heartbeat; cheap to clone, clones share everything.
#[derive(Debug, Clone)]
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
    /// Seconds since the last write of the oldest file waiting in the drop
    /// folder or in `processing/` (0: none). The daemon sets it.
    pub oldest_waiting_file_age: Gauge<f64, AtomicU64>,
    /// 1 while the API refuses the credentials or the configuration and
    /// submission is paused. The HTTP sink's gate sets it.
    pub submission_paused: Gauge,
    heartbeat: Arc<Heartbeat>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    /// A handle on counters of its own (for runs nobody scrapes).
    fn default() -> Self {
        Metrics::new(Arc::new(Counters::default()))
    }
}

impl Metrics {
    /// `counters` are the pipeline's, read at each scrape.
    pub fn new(counters: Arc<Counters>) -> Metrics {
        Metrics::with_stale_after(counters, STALE_AFTER)
    }

    /// As [`Metrics::new`], with `/healthz` failing after `stale_after` without a tick.
    pub fn with_stale_after(counters: Arc<Counters>, stale_after: Duration) -> Metrics {
        let heartbeat = Arc::new(Heartbeat {
            epoch: Instant::now(),
            last_tick: AtomicU64::new(0),
            stale_after,
        });
        let mut registry = Registry::with_prefix(PREFIX);
        let files_seen = Counter::default();
        registry.register(
            "files_seen",
            "Ready files taken from the drop folder",
            files_seen.clone(),
        );
        registry.register_collector(Box::new(PipelineCounts(counters)));
        let batches_sent = Counter::default();
        registry.register(
            "batches_sent",
            "Requests carrying events sent to the API, retries included",
            batches_sent.clone(),
        );
        let batches_retried = Counter::default();
        registry.register(
            "batches_retried",
            "Requests repeated after a 5xx, 429, timeout or connection error",
            batches_retried.clone(),
        );
        let files_waiting = Gauge::default();
        registry.register(
            "files_waiting",
            "Files waiting: in the drop folder not claimed yet, or queued for a retry",
            files_waiting.clone(),
        );
        let files_in_flight = Gauge::default();
        registry.register(
            "files_in_flight",
            "Files being processed",
            files_in_flight.clone(),
        );
        let oldest_waiting_file_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_waiting_file_age_seconds",
            "Seconds since the last write of the oldest file waiting in the drop folder or processing/ (0: none)",
            oldest_waiting_file_age.clone(),
        );
        let submission_paused = Gauge::default();
        registry.register(
            "submission_paused",
            "1 while the API refuses the credentials or the configuration and submission is paused",
            submission_paused.clone(),
        );
        let request_duration = Histogram::new(REQUEST_BUCKETS);
        registry.register(
            "request_duration_seconds",
            "Latency of the API requests, whatever their answer",
            request_duration.clone(),
        );
        registry.register_collector(Box::new(heartbeat.clone()));
        let build_info = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build_info
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The running version", build_info);
        Metrics {
            files_seen,
            batches_sent,
            batches_retried,
            request_duration,
            files_waiting,
            files_in_flight,
            oldest_waiting_file_age,
            submission_paused,
            heartbeat,
            registry: Arc::new(registry),
        }
    }

    /// Records the latency of one API request (any answer, or a failure).
    pub fn observe_request(&self, duration: Duration) {
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// The main loop calls this on every tick: `/healthz` depends on it.
    pub fn tick(&self) {
        self.heartbeat.tick();
    }

    /// How long ago the main loop last ticked; None before its first tick.
    pub fn since_last_tick(&self) -> Option<Duration> {
        self.heartbeat.since_last_tick()
    }

    /// The health `/healthz` reports.
    pub fn health(&self) -> Health {
        match self.since_last_tick() {
            None => Health::Starting,
            Some(age) if age < self.heartbeat.stale_after => Health::Ticking,
            Some(age) => Health::Stalled(age),
        }
    }

    /// True while the main loop ticks.
    pub fn healthy(&self) -> bool {
        self.health() == Health::Ticking
    }

    /// Every family, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail; the collectors here never do either.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What `/healthz` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Before the main loop's first tick.
    Starting,
    Ticking,
    /// No tick for this long.
    Stalled(Duration),
}

/// The main loop's last tick, on tokio's clock (paused in tests).
#[derive(Debug)]
struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last tick, plus one (0: never).
    last_tick: AtomicU64,
    stale_after: Duration,
}

impl Heartbeat {
    fn now_millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn tick(&self) {
        self.last_tick
            .store(self.now_millis() + 1, Ordering::Relaxed);
    }

    fn since_last_tick(&self) -> Option<Duration> {
        match self.last_tick.load(Ordering::Relaxed) {
            0 => None,
            stamp => Some(Duration::from_millis(
                self.now_millis().saturating_sub(stamp - 1),
            )),
        }
    }
}

impl Collector for Heartbeat {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let age = self.since_last_tick().map_or(-1.0, |age| age.as_secs_f64());
        let gauge = ConstGauge::new(age);
        let metric = encoder.encode_descriptor(
            "main_loop_tick_age_seconds",
            "Seconds since the main loop last ticked (-1 before its first tick).",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The pipeline's [`Counters`], read at each scrape.
#[derive(Debug)]
struct PipelineCounts(Arc<Counters>);

impl Collector for PipelineCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = &self.0;
        let families: [(&str, &str, &AtomicU64); 9] = [
            (
                "files_claimed",
                "Files moved into processing/.",
                &counters.files_claimed,
            ),
            (
                "files_archived",
                "Files delivered and archived.",
                &counters.files_archived,
            ),
            (
                "files_failed",
                "Files moved to failed/ (quarantined or unreadable).",
                &counters.files_failed,
            ),
            (
                "files_duplicate",
                "Files archived without sending: same content already imported.",
                &counters.files_duplicate,
            ),
            (
                "rows_accepted",
                "Valid rows of archived files.",
                &counters.rows_accepted,
            ),
            (
                "rows_rejected",
                "Rows rejected by validation.",
                &counters.rows_rejected,
            ),
            (
                "events_delivered",
                "Events acknowledged by the sink, in archived files.",
                &counters.events_delivered,
            ),
            (
                "events_refused",
                "Events the API refused (400/422) in acknowledged batches.",
                &counters.rows_refused,
            ),
            (
                "batches_acked",
                "Batches acknowledged by the sink (2xx, or fsync for the file sink).",
                &counters.batches_acked,
            ),
        ];
        for (name, help, value) in families {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
