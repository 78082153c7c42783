//! daemon::systemd: what systemd is told (READY, STATUS, WATCHDOG,
//! STOPPING) and how often the watchdog wants a ping. Without
//! `NOTIFY_SOCKET` nothing is sent; nothing here decides what the loop does.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::pipeline::Counters;

/// The STATUS= line systemd shows.
pub(super) fn queue_status(waiting: usize, in_flight: usize, counters: &Counters) -> String {
    format!(
        "{waiting} waiting, {in_flight} in flight, {} archived, {} failed",
        counters.files_archived.load(Ordering::Relaxed),
        counters.files_failed.load(Ordering::Relaxed)
    )
}

pub(super) fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, states);
    }
}

/// Half the systemd watchdog interval, when one is set for this process
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` ours if set).
pub(super) fn watchdog_interval() -> Option<Duration> {
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        // Set for another process (we were started by a child of the service).
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}
