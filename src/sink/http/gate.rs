//! gate: when a request to the API may start, for the whole sink at once.
//!
//! Four things hold requests back, shared by every delivery: a 429's
//! `Retry-After` ("not before" this instant), the optional
//! `max_requests_per_second` pacing, the API's own `RateLimit` headers
//! (the requests left in its window are spread evenly until the window
//! ends, keeping a reserve, so that a 429 stays the exception), and a
//! *pause* when the API refuses the
//! credentials or the configuration (401 after a fresh session, 403, other
//! 4xx such as 404). While paused, one request at a time is let through
//! every `auth_retry` as a probe (at once after SIGHUP); the first probe the
//! API accepts ends the pause. The pause is announced by one error line, not
//! one per request.
//!
//! The window's budget counts every request started since the answer it
//! was read from (each request holds a ticket), so concurrent requests
//! share it: an answer in flight never lets two requests spend the same
//! remaining slot.
//!
//! Never: let a paused sink hammer the API, forget a waiting request (every
//! change of the pause wakes the waiters), or trust a header that does not
//! parse (it is ignored, with one warning).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use prometheus_client::metrics::gauge::Gauge;

use super::ratelimit::RateLimit;
use crate::sink::SinkError;

/// How often a long pause is recalled in the log.
const REMINDER_EVERY: Duration = Duration::from_secs(15 * 60);

pub(super) struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
    auth_retry: Duration,
    interval: Option<Duration>,
    base_url: String,
    /// `api key k`, `token file /etc/…`: who the API refuses, for the log.
    who: String,
    /// A malformed `RateLimit` header was logged already.
    warned_malformed: AtomicBool,
    /// 1 while paused (`consent_drop_submission_paused`).
    pause_gauge: Option<Gauge>,
}

#[derive(Default)]
struct GateState {
    not_before: Option<Instant>,
    next_start: Option<Instant>,
    pause: Option<Pause>,
    /// Pauses started so far: tells a stale refusal from a new one.
    pauses: u64,
    /// Requests let through so far; each turn's ticket is the count before it.
    started: u64,
    /// What the API's `RateLimit` headers said last.
    budget: Option<Budget>,
    /// The earliest start of the next request paced by the budget.
    next_paced: Option<Instant>,
}

/// The API's rate-limit window, as the newest answer described it.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Requests left when that answer was made…
    remaining: u64,
    /// …not counting requests with this ticket or later.
    counted_from: u64,
    /// The ticket of the answer it comes from (older answers are ignored).
    ticket: u64,
    /// Requests kept in hand until the window ends.
    reserve: u64,
    resets_at: Instant,
    /// To assume the next window when this one ends (until an answer says).
    limit: Option<u64>,
    window: Option<Duration>,
}

/// Requests kept unused in each window: a twentieth of the limit, so that
/// requests that reach the API in another order or a moment late never hit 0.
fn reserve_for(limit: u64) -> u64 {
    limit / 20
}

struct Pause {
    since: Instant,
    next_probe: Instant,
    probing: bool,
    /// The operator asked for a retry (SIGHUP): say if it still fails.
    announce: bool,
    last_reminder: Instant,
}

/// Permission to send one request. A probe must be settled with
/// [`Turn::accepted`] or [`Turn::refused`]; dropped unsettled (the API could
/// not be reached), the next probe comes after `auth_retry`.
pub(super) struct Turn<'g> {
    gate: &'g Gate,
    probe: bool,
    pauses_seen: u64,
    ticket: u64,
    settled: bool,
}

enum Decision {
    Go {
        probe: bool,
        pauses_seen: u64,
        ticket: u64,
        at: Option<Instant>,
    },
    Wait(Option<Instant>),
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

impl Gate {
    pub fn new(
        base_url: String,
        who: String,
        auth_retry: Duration,
        max_requests_per_second: Option<f64>,
    ) -> Gate {
        let interval = max_requests_per_second
            .filter(|rate| *rate > 0.0 && rate.is_finite())
            .map(|rate| Duration::from_secs_f64((1.0 / rate).min(3600.0)));
        Gate {
            state: Mutex::new(GateState::default()),
            changed: Notify::new(),
            auth_retry,
            interval,
            base_url,
            who,
            warned_malformed: AtomicBool::new(false),
            pause_gauge: None,
        }
    }

    /// Shows the pause in `gauge` (1 while paused, 0 otherwise).
    pub fn with_pause_gauge(mut self, gauge: Gauge) -> Gate {
        gauge.set(0);
        self.pause_gauge = Some(gauge);
        self
    }

    fn show_pause(&self, paused: bool) {
        if let Some(gauge) = &self.pause_gauge {
            gauge.set(i64::from(paused));
        }
    }

    /// The `RateLimit` headers of the answer to the request of `ticket`
    /// (`Ok(None)`: the answer had none). A malformed header is logged once
    /// and ignored.
    pub fn observe(&self, ticket: u64, rate: Result<Option<RateLimit>, String>) {
        let rate = match rate {
            Ok(Some(rate)) => rate,
            Ok(None) => return,
            Err(problem) => {
                if !self.warned_malformed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        base_url = %self.base_url,
                        "the API sent a rate-limit header that does not parse, ignored (this is said once): {problem}"
                    );
                }
                return;
            }
        };
        let now = Instant::now();
        let mut state = self.lock();
        if state.budget.is_some_and(|budget| budget.ticket > ticket) {
            // An older answer, overtaken by a newer one.
            return;
        }
        let limit = rate.limit.unwrap_or(rate.remaining).max(rate.remaining);
        let mut resets_at = now + rate.reset;
        if let Some(old) = state.budget {
            // Still the same window (nothing came back): servers round
            // `reset` up to whole seconds, so the earliest end announced is
            // the truest.
            if now < old.resets_at && rate.remaining <= old.remaining {
                resets_at = resets_at.min(old.resets_at);
            }
        }
        state.budget = Some(Budget {
            remaining: rate.remaining,
            counted_from: ticket + 1,
            ticket,
            reserve: reserve_for(limit),
            resets_at,
            limit: rate.limit,
            window: rate.window,
        });
        drop(state);
        self.changed.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.lock().pause.is_some()
    }

    /// Waits until a request may start (or `cancel` fires).
    pub async fn turn(&self, cancel: &CancellationToken) -> Result<Turn<'_>, SinkError> {
        loop {
            if cancel.is_cancelled() {
                return Err(SinkError::Interrupted);
            }
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let decision = self.decide(Instant::now());
            let wait = match decision {
                Decision::Go {
                    probe,
                    pauses_seen,
                    ticket,
                    at,
                } => {
                    let turn = Turn {
                        gate: self,
                        probe,
                        pauses_seen,
                        ticket,
                        settled: false,
                    };
                    if let Some(at) = at {
                        tokio::select! {
                            _ = cancel.cancelled() => return Err(SinkError::Interrupted),
                            _ = tokio::time::sleep_until(at) => {}
                        }
                    }
                    return Ok(turn);
                }
                Decision::Wait(until) => until,
            };
            let sleep = async {
                match wait {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(SinkError::Interrupted),
                _ = &mut notified => {}
                _ = sleep => {}
            }
        }
    }

    fn decide(&self, now: Instant) -> Decision {
        let mut state = self.lock();
        let pauses_seen = state.pauses;
        if let Some(pause) = &mut state.pause {
            if !pause.probing && now >= pause.next_probe {
                pause.probing = true;
                let ticket = state.started;
                state.started += 1;
                return Decision::Go {
                    probe: true,
                    pauses_seen,
                    ticket,
                    at: None,
                };
            }
            return Decision::Wait((!pause.probing).then_some(pause.next_probe));
        }
        if let Some(at) = state.not_before.filter(|at| *at > now) {
            return Decision::Wait(Some(at));
        }
        let paced = match budget_slot(&mut state, now) {
            Ok(paced) => paced,
            Err(until) => return Decision::Wait(Some(until)),
        };
        let at = match self.interval {
            None => paced,
            Some(interval) => {
                let slot = state.next_start.map_or(now, |next| next.max(now));
                let slot = paced.map_or(slot, |paced| paced.max(slot));
                state.next_start = Some(slot + interval);
                (slot > now).then_some(slot)
            }
        };
        let ticket = state.started;
        state.started += 1;
        Decision::Go {
            probe: false,
            pauses_seen,
            ticket,
            at,
        }
    }

    /// A 429: no request of the sink starts before `until`.
    pub fn slow_down(&self, until: Instant) {
        let mut state = self.lock();
        if state.not_before.is_none_or(|at| at < until) {
            state.not_before = Some(until);
        }
    }

    /// SIGHUP: probe at once if paused.
    pub fn credentials_changed(&self) {
        let mut state = self.lock();
        if let Some(pause) = &mut state.pause {
            pause.next_probe = Instant::now();
            pause.announce = true;
        }
        drop(state);
        self.changed.notify_waiters();
    }
}

/// When the next request may start by the API's rate-limit window: `Ok`
/// (at once, or at the instant given: the requests left are spread evenly
/// over the time until the window ends), or `Err` (nothing is left but the
/// reserve: wait until the window ends).
fn budget_slot(state: &mut GateState, now: Instant) -> Result<Option<Instant>, Instant> {
    let started = state.started;
    let Some(budget) = &mut state.budget else {
        return Ok(None);
    };
    if now >= budget.resets_at {
        match (budget.limit, budget.window) {
            (Some(limit), Some(window)) if !window.is_zero() => {
                // The next window, assumed full until an answer tells.
                while budget.resets_at <= now {
                    budget.resets_at += window;
                }
                budget.remaining = limit;
                budget.counted_from = started;
            }
            _ => {
                // Nothing known about the next window: unpaced until an answer tells.
                state.budget = None;
                state.next_paced = None;
                return Ok(None);
            }
        }
    }
    let spent = started.saturating_sub(budget.counted_from);
    let usable = budget
        .remaining
        .saturating_sub(spent)
        .saturating_sub(budget.reserve);
    let slot = state.next_paced.map_or(now, |next| next.max(now));
    if usable == 0 || slot >= budget.resets_at {
        return Err(budget.resets_at);
    }
    let spacing = (budget.resets_at - slot) / u32::try_from(usable).unwrap_or(u32::MAX);
    state.next_paced = Some(slot + spacing);
    Ok((slot > now).then_some(slot))
}

impl Turn<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// This request's place in the order of starts (for [`Gate::observe`]).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// The API took the credentials (it answered 2xx, or judged the events).
    pub fn accepted(mut self) {
        self.settled = true;
        if !self.probe {
            return;
        }
        let mut state = self.gate.lock();
        if let Some(pause) = state.pause.take() {
            self.gate.show_pause(false);
            tracing::info!(
                base_url = %self.gate.base_url,
                "the API accepts {} again: submission resumes after a pause of {} s",
                self.gate.who,
                pause.since.elapsed().as_secs()
            );
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }

    /// The API refused the credentials or the configuration: pause the sink
    /// (logged once), or keep it paused. False when the refusal is stale (the
    /// request started before the pause, which already says it).
    pub fn refused(mut self, problem: &str, fix: &str) -> bool {
        self.settled = true;
        let gate = self.gate;
        let now = Instant::now();
        let mut state = gate.lock();
        let stale = self.pauses_seen < state.pauses;
        match &mut state.pause {
            Some(pause) => {
                if !self.probe {
                    // Sent before the pause began: the pause already says it.
                    return false;
                }
                pause.probing = false;
                pause.next_probe = now + gate.auth_retry;
                if pause.announce {
                    pause.announce = false;
                    pause.last_reminder = now;
                    tracing::error!(
                        base_url = %gate.base_url,
                        "submission to {} is still paused after the reload: {problem}. Fix: {fix}",
                        gate.base_url
                    );
                } else if now.duration_since(pause.last_reminder) >= REMINDER_EVERY {
                    pause.last_reminder = now;
                    tracing::warn!(
                        base_url = %gate.base_url,
                        "submission to {} has been paused for {} min: {problem}. Fix: {fix}",
                        gate.base_url,
                        pause.since.elapsed().as_secs() / 60
                    );
                } else {
                    tracing::debug!(base_url = %gate.base_url, "probe refused: {problem}");
                }
            }
            None if stale => {
                // Sent before a pause that has ended since: just try again.
                return false;
            }
            None => {
                gate.show_pause(true);
                state.pauses += 1;
                state.pause = Some(Pause {
                    since: now,
                    next_probe: now + gate.auth_retry,
                    probing: false,
                    announce: false,
                    last_reminder: now,
                });
                tracing::error!(
                    base_url = %gate.base_url,
                    "submission to {} paused ({}): {problem}. Fix: {fix}; then reload (SIGHUP). \
                     Until then the API is tried again every {} s; nothing is dropped",
                    gate.base_url,
                    gate.who,
                    gate.auth_retry.as_secs_f64()
                );
            }
        }
        drop(state);
        gate.changed.notify_waiters();
        true
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.settled || !self.probe {
            return;
        }
        let mut state = self.gate.lock();
        if let Some(pause) = &mut state.pause {
            pause.probing = false;
            pause.next_probe = Instant::now() + self.gate.auth_retry;
        }
        drop(state);
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    //! On paused time: tokio's clock moves only when every task waits, so
    //! the elapsed times below are exact, never the machine's load.
    use super::*;

    const AUTH_RETRY: Duration = Duration::from_millis(300);

    #[tokio::test(start_paused = true)]
    async fn a_pause_lets_one_probe_through_every_auth_retry() {
        let paused = Gauge::default();
        let gate = Gate::new(
            "https://api.test".into(),
            "api key k".into(),
            AUTH_RETRY,
            None,
        )
        .with_pause_gauge(paused.clone());
        let cancel = CancellationToken::new();
        let first = gate.turn(&cancel).await.expect("open");
        let second = gate.turn(&cancel).await.expect("open");
        assert_eq!(paused.get(), 0);
        assert!(first.refused("403", "fix it"));
        assert!(gate.is_paused());
        assert_eq!(paused.get(), 1, "the gauge shows the pause");
        // Sent before the pause: its refusal is not news.
        assert!(!second.refused("403", "fix it"));
        let start = Instant::now();
        let probe = gate.turn(&cancel).await.expect("probe");
        assert!(probe.is_probe());
        assert!(start.elapsed() >= AUTH_RETRY);
        assert!(probe.refused("403", "fix it"));
        gate.credentials_changed();
        let start = Instant::now();
        let probe = gate.turn(&cancel).await.expect("probe after reload");
        assert!(start.elapsed() < AUTH_RETRY / 2);
        probe.accepted();
        assert!(!gate.is_paused());
        assert_eq!(paused.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsettled_probe_lets_the_next_one_through_later() {
        let gate = Gate::new("u".into(), "w".into(), AUTH_RETRY, None);
        let cancel = CancellationToken::new();
        gate.turn(&cancel)
            .await
            .expect("open")
            .refused("404", "fix");
        let probe = gate.turn(&cancel).await.expect("probe");
        drop(probe);
        let start = Instant::now();
        let probe = gate.turn(&cancel).await.expect("next probe");
        assert!(probe.is_probe());
        assert!(start.elapsed() >= AUTH_RETRY / 2);
        cancel.cancel();
        assert!(matches!(
            gate.turn(&cancel).await,
            Err(SinkError::Interrupted)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn not_before_and_pacing_hold_requests_back() {
        let gate = Gate::new("u".into(), "w".into(), AUTH_RETRY, Some(10.0));
        let cancel = CancellationToken::new();
        let start = Instant::now();
        for _ in 0..3 {
            drop(gate.turn(&cancel).await.expect("paced"));
        }
        assert!(start.elapsed() >= Duration::from_millis(200));
        let start = Instant::now();
        gate.slow_down(start + Duration::from_millis(300));
        drop(gate.turn(&cancel).await.expect("after 429"));
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    fn rate(limit: u64, remaining: u64, reset_ms: u64, window_s: Option<u64>) -> RateLimit {
        RateLimit {
            limit: Some(limit),
            remaining,
            reset: Duration::from_millis(reset_ms),
            window: window_s.map(Duration::from_secs),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_remaining_budget_is_spread_until_the_reset_and_a_reserve_kept() {
        let gate = Gate::new("u".into(), "w".into(), AUTH_RETRY, None);
        let cancel = CancellationToken::new();
        let first = gate.turn(&cancel).await.expect("unpaced before any header");
        let start = Instant::now();
        // 10 left of 20 for 2 s: 9 may go (one is the reserve), spread out.
        gate.observe(first.ticket(), Ok(Some(rate(20, 10, 2000, None))));
        let mut starts = Vec::new();
        for _ in 0..10 {
            drop(gate.turn(&cancel).await.expect("turn"));
            starts.push(start.elapsed());
        }
        let before_reset = starts
            .iter()
            .filter(|at| **at < Duration::from_secs(2))
            .count();
        assert_eq!(before_reset, 9, "{starts:?}");
        // Evenly: the 9 are about 2 s / 9 apart, not a burst.
        assert!(starts[4] >= Duration::from_millis(800), "{starts:?}");
        // No policy window: past the reset, nothing is known and nothing paced.
        assert!(starts[9] >= Duration::from_secs(2), "{starts:?}");
        let at = Instant::now();
        drop(gate.turn(&cancel).await.expect("unpaced"));
        assert_eq!(at.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_answer_does_not_overwrite_a_newer_one_and_junk_is_ignored() {
        let gate = Gate::new("u".into(), "w".into(), AUTH_RETRY, None);
        let cancel = CancellationToken::new();
        let old = gate.turn(&cancel).await.expect("turn");
        let new = gate.turn(&cancel).await.expect("turn");
        gate.observe(new.ticket(), Ok(Some(rate(100, 0, 5000, None))));
        gate.observe(old.ticket(), Ok(Some(rate(100, 99, 5000, None))));
        let start = Instant::now();
        drop(gate.turn(&cancel).await.expect("after the reset"));
        assert!(start.elapsed() >= Duration::from_secs(5));
        // A malformed header: ignored (and said once), pacing unchanged.
        gate.observe(9, Err("RateLimit \"x\": bad".into()));
        gate.observe(10, Err("RateLimit \"y\": bad".into()));
        assert!(gate.warned_malformed.load(Ordering::Relaxed));
        let at = Instant::now();
        drop(gate.turn(&cancel).await.expect("unpaced"));
        assert_eq!(at.elapsed(), Duration::ZERO);
    }

    /// A fixed-window API, as the test server runs it: `limit` requests per
    /// `window` from the first request after the last window ended; its
    /// answers carry the headers. Returns (requests refused with 429, time).
    async fn deliver_against_a_window(
        requests: u64,
        concurrency: u64,
        limit: u64,
        window: Duration,
        latency: Duration,
    ) -> (u64, Duration) {
        use std::sync::Arc;
        struct Api {
            started: Option<Instant>,
            used: u64,
            refused: u64,
            next: u64,
        }
        let gate = Arc::new(Gate::new("u".into(), "w".into(), AUTH_RETRY, None));
        let api = Arc::new(Mutex::new(Api {
            started: None,
            used: 0,
            refused: 0,
            next: 0,
        }));
        let begin = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (gate, api) = (gate.clone(), api.clone());
            workers.push(tokio::spawn(async move {
                let cancel = CancellationToken::new();
                loop {
                    {
                        let mut api = api.lock().expect("lock");
                        if api.next == requests {
                            return;
                        }
                        api.next += 1;
                    }
                    let turn = gate.turn(&cancel).await.expect("turn");
                    tokio::time::sleep(latency / 2).await;
                    let answer = {
                        let mut api = api.lock().expect("lock");
                        let now = Instant::now();
                        let started = match api.started {
                            Some(at) if now < at + window => at,
                            _ => {
                                api.started = Some(now);
                                api.used = 0;
                                now
                            }
                        };
                        api.used += 1;
                        if api.used > limit {
                            api.refused += 1;
                        }
                        let left = (started + window) - now;
                        let reset = Duration::from_secs(left.as_millis().div_ceil(1000) as u64);
                        RateLimit {
                            limit: Some(limit),
                            remaining: limit.saturating_sub(api.used),
                            reset,
                            window: Some(window),
                        }
                    };
                    tokio::time::sleep(latency / 2).await;
                    gate.observe(turn.ticket(), Ok(Some(answer)));
                    turn.accepted();
                }
            }));
        }
        for worker in workers {
            worker.await.expect("worker");
        }
        let refused = api.lock().expect("lock").refused;
        (refused, begin.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_thousand_requests_at_20_per_2_s_meet_no_429() {
        for (concurrency, latency_ms) in [(4, 30), (8, 5), (1, 50), (16, 400)] {
            let (refused, took) = deliver_against_a_window(
                1000,
                concurrency,
                20,
                Duration::from_secs(2),
                Duration::from_millis(latency_ms),
            )
            .await;
            eprintln!("concurrency {concurrency}, latency {latency_ms} ms: 1000 requests in {took:?} (paused time), {refused} refused");
            assert_eq!(
                refused, 0,
                "concurrency {concurrency}, latency {latency_ms} ms"
            );
            // 1,000 requests at 20 per 2 s need 100 s; the reserve costs 5%,
            // answers still in flight at a window's end a little more.
            assert!(
                took >= Duration::from_secs(99) && took <= Duration::from_secs(125),
                "concurrency {concurrency}: {took:?}"
            );
        }
    }
}
