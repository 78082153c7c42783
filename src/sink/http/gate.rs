//! gate: when a request to the API may start, for the whole sink at once.
//!
//! Three things hold requests back, shared by every delivery: a 429's
//! `Retry-After` ("not before" this instant), the optional
//! `max_requests_per_second` pacing, and a *pause* when the API refuses the
//! credentials or the configuration (401 after a fresh session, 403, other
//! 4xx such as 404). While paused, one request at a time is let through
//! every `auth_retry` as a probe (at once after SIGHUP); the first probe the
//! API accepts ends the pause. The pause is announced by one error line, not
//! one per request.
//!
//! Never: let a paused sink hammer the API, or forget a waiting request (every
//! change of the pause wakes the waiters).

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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
}

#[derive(Default)]
struct GateState {
    not_before: Option<Instant>,
    next_start: Option<Instant>,
    pause: Option<Pause>,
    /// Pauses started so far: tells a stale refusal from a new one.
    pauses: u64,
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
    settled: bool,
}

enum Decision {
    Go {
        probe: bool,
        pauses_seen: u64,
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
        }
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
                    at,
                } => {
                    let turn = Turn {
                        gate: self,
                        probe,
                        pauses_seen,
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
                return Decision::Go {
                    probe: true,
                    pauses_seen,
                    at: None,
                };
            }
            return Decision::Wait((!pause.probing).then_some(pause.next_probe));
        }
        if let Some(at) = state.not_before.filter(|at| *at > now) {
            return Decision::Wait(Some(at));
        }
        let at = match self.interval {
            None => None,
            Some(interval) => {
                let slot = state.next_start.map_or(now, |next| next.max(now));
                state.next_start = Some(slot + interval);
                (slot > now).then_some(slot)
            }
        };
        Decision::Go {
            probe: false,
            pauses_seen,
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

impl Turn<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The API took the credentials (it answered 2xx, or judged the events).
    pub fn accepted(mut self) {
        self.settled = true;
        if !self.probe {
            return;
        }
        let mut state = self.gate.lock();
        if let Some(pause) = state.pause.take() {
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
        let gate = Gate::new(
            "https://api.test".into(),
            "api key k".into(),
            AUTH_RETRY,
            None,
        );
        let cancel = CancellationToken::new();
        let first = gate.turn(&cancel).await.expect("open");
        let second = gate.turn(&cancel).await.expect("open");
        assert!(first.refused("403", "fix it"));
        assert!(gate.is_paused());
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
}
