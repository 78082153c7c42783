//! Which files the daemon starts, and when: the occurrences waiting to be
//! resumed or retried (with their back-off), and the files in flight,
//! within `max_files_in_flight`. Pure: it is driven by the caller's clock
//! (tokio's, so that its tests run on paused time).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::pipeline::Work;

/// How long to wait before trying again a file whose processing failed on
/// our side (full disk, journal), doubling up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Schedule {
    cap: usize,
    /// Resumed and retried occurrences, with the moment each may start.
    queue: Vec<(Instant, Work)>,
    backoffs: HashMap<String, Duration>,
    in_flight: HashSet<String>,
}

impl Schedule {
    pub fn new(cap: usize) -> Schedule {
        Schedule {
            cap: cap.max(1),
            queue: Vec::new(),
            backoffs: HashMap::new(),
            in_flight: HashSet::new(),
        }
    }

    pub fn set_cap(&mut self, cap: usize) {
        self.cap = cap.max(1);
    }

    /// An occurrence to resume as soon as there is room.
    pub fn resume(&mut self, work: Work, now: Instant) {
        self.queue.push((now, work));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Occurrences waiting to be resumed or retried.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn free(&self) -> usize {
        self.cap.saturating_sub(self.in_flight.len())
    }

    /// Queued occurrences whose time has come, oldest first, as many as
    /// there is room for; they count as in flight from now on.
    pub fn take_due(&mut self, now: Instant) -> Vec<Work> {
        let mut due = Vec::new();
        let mut index = 0;
        let room = self.free();
        while index < self.queue.len() && due.len() < room {
            if self.queue[index].0 <= now {
                let (_, work) = self.queue.remove(index);
                if self.in_flight.insert(work.occurrence_id.clone()) {
                    due.push(work);
                }
            } else {
                index += 1;
            }
        }
        due
    }

    /// A newly claimed file starts (the caller checked [`Schedule::free`]).
    pub fn start(&mut self, occurrence_id: &str) -> bool {
        self.in_flight.insert(occurrence_id.to_string())
    }

    /// The file reached its outcome (or was interrupted): its slot is free.
    pub fn done(&mut self, occurrence_id: &str) {
        self.in_flight.remove(occurrence_id);
        self.backoffs.remove(occurrence_id);
    }

    /// Processing failed on our side: the file is tried again after its
    /// back-off, which doubles at each failure. Returns the wait.
    pub fn failed(&mut self, work: Work, now: Instant) -> Duration {
        self.in_flight.remove(&work.occurrence_id);
        let backoff = self
            .backoffs
            .entry(work.occurrence_id.clone())
            .or_insert(RETRY_FIRST);
        let wait = *backoff;
        *backoff = (*backoff * 2).min(RETRY_MAX);
        self.queue.push((now + wait, work));
        wait
    }

    /// When the next queued occurrence becomes due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.iter().map(|(at, _)| *at).min()
    }
}

/// When to tell systemd we are alive: the gap between two pings stays
/// within `every` (half the watchdog timeout) as long as ticks come every
/// `tick` or sooner.
#[derive(Debug)]
pub struct Watchdog {
    every: Duration,
    last: Instant,
}

impl Watchdog {
    pub fn new(every: Duration, now: Instant) -> Watchdog {
        Watchdog { every, last: now }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether to ping at this tick: the next tick could come too late.
    pub fn due(&mut self, now: Instant, tick: Duration) -> bool {
        if now.saturating_duration_since(self.last) + tick > self.every {
            self.last = now;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn work(id: &str) -> Work {
        let config = crate::config::parse_config(
            "[watch]\ndir = \"/tmp/d\"\n[state]\ndir = \"/tmp/s\"\n[sink]\nkind = \"file\"\ndir = \"/tmp/o\"\n[[import]]\nname = \"news\"\npattern = \"^pr-\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\ndefault_purpose = \"p\"\n",
            "test",
            std::path::Path::new("/"),
        )
        .expect("config");
        Work {
            occurrence_id: id.to_string(),
            import: Arc::clone(config.import_named("news").expect("import")),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_file_waits_its_backoff_which_doubles_up_to_the_max() {
        let mut schedule = Schedule::new(4);
        let now = Instant::now();
        assert!(schedule.start("a"));
        assert_eq!(schedule.failed(work("a"), now), RETRY_FIRST);
        assert!(
            schedule.take_due(Instant::now()).is_empty(),
            "not before its back-off"
        );
        tokio::time::advance(RETRY_FIRST - Duration::from_millis(1)).await;
        assert!(schedule.take_due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        let due = schedule.take_due(Instant::now());
        assert_eq!(due.len(), 1, "due once its back-off has passed");
        let mut waits = Vec::new();
        for _ in 0..7 {
            waits.push(schedule.failed(work("a"), Instant::now()).as_secs());
            tokio::time::advance(RETRY_MAX).await;
            assert_eq!(schedule.take_due(Instant::now()).len(), 1);
        }
        assert_eq!(waits, vec![4, 8, 16, 32, 60, 60, 60]);
        schedule.done("a");
        assert_eq!(
            schedule.failed(work("a"), Instant::now()),
            RETRY_FIRST,
            "a file that got through starts again from the first back-off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn files_start_within_the_cap_and_a_free_slot_is_used_at_once() {
        let mut schedule = Schedule::new(2);
        let now = Instant::now();
        for id in ["a", "b", "c"] {
            schedule.resume(work(id), now);
        }
        let first: Vec<_> = schedule
            .take_due(now)
            .into_iter()
            .map(|w| w.occurrence_id)
            .collect();
        assert_eq!(first, vec!["a", "b"], "oldest first, up to the cap");
        assert_eq!(schedule.free(), 0);
        assert!(schedule.take_due(now).is_empty());
        schedule.done("a");
        // No time passes: the freed slot is taken at once, not at a tick.
        let next: Vec<_> = schedule
            .take_due(now)
            .into_iter()
            .map(|w| w.occurrence_id)
            .collect();
        assert_eq!(next, vec!["c"]);
        assert_eq!(schedule.next_due(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_wake_up_is_the_earliest_retry() {
        let mut schedule = Schedule::new(4);
        let now = Instant::now();
        schedule.start("a");
        schedule.start("b");
        schedule.failed(work("a"), now + Duration::from_secs(1));
        schedule.failed(work("b"), now);
        assert_eq!(schedule.next_due(), Some(now + RETRY_FIRST));
        assert_eq!(schedule.queued(), 2);
        assert_eq!(schedule.in_flight(), 0);
    }

    /// Ticks as the daemon's loop makes them (a tokio interval); the pings
    /// they carry are never further apart than half the watchdog timeout.
    async fn ping_gaps(every: Duration, tick: Duration) -> Vec<Duration> {
        let mut watchdog = Watchdog::new(every, Instant::now());
        let mut interval = tokio::time::interval(tick);
        let start = Instant::now();
        let mut pings = vec![start];
        while start.elapsed() < Duration::from_secs(3) {
            interval.tick().await;
            let now = Instant::now();
            if watchdog.due(now, tick) {
                pings.push(now);
            }
        }
        pings.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_within_its_interval_whatever_the_tick() {
        let every = Duration::from_millis(100);
        for tick_ms in [1, 7, 20, 33, 50, 99, 100] {
            let tick = Duration::from_millis(tick_ms);
            let gaps = ping_gaps(every, tick).await;
            assert!(gaps.len() > 10, "tick {tick:?}: {} pings", gaps.len());
            assert!(
                gaps.iter().all(|gap| *gap <= every),
                "tick {tick:?}: gaps {gaps:?}"
            );
            // Not a ping at every tick when ticks are frequent.
            if tick_ms <= 20 {
                assert!(
                    gaps.iter().all(|gap| *gap >= every / 2),
                    "tick {tick:?}: gaps {gaps:?}"
                );
            }
        }
    }
}
