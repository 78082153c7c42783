//! backlog: how long the oldest file has been waiting, for the
//! `consent_drop_oldest_waiting_file_age_seconds` gauge (and the alert on
//! a file waiting over an hour).
//!
//! A file waits from its last write (its mtime, which the claim's rename
//! keeps) until it leaves `processing/`: in the drop folder (settling,
//! matching no import or two, or the daemon busy) or in `processing/`
//! (delivery paused, the API down). Each refresh reads both folders once,
//! on a blocking thread, at the rescan interval; a refresh still running
//! makes the next one a no-op.
//!
//! Never: open, move or hold a proof file (it only reads the folders'
//! metadata), or block the daemon's loop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::WatchSettings;

/// Sets the gauge from the drop folder and `processing/`.
#[derive(Debug, Clone)]
pub struct BacklogGauge {
    gauge: Gauge<f64, std::sync::atomic::AtomicU64>,
    busy: Arc<AtomicBool>,
}

impl BacklogGauge {
    pub fn new(gauge: Gauge<f64, std::sync::atomic::AtomicU64>) -> BacklogGauge {
        BacklogGauge {
            gauge,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Reads the folders again in the background and sets the gauge.
    pub fn refresh(&self, watch: &WatchSettings, processing: &Path) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let watch = watch.clone();
        let processing: PathBuf = processing.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            let oldest = [
                oldest_mtime(&watch.dir, &|name| watch.is_ignored(name)),
                oldest_mtime(&processing, &|_| false),
            ]
            .into_iter()
            .flatten()
            .min();
            this.gauge.set(age_seconds(oldest, now));
            this.busy.store(false, Ordering::Release);
        });
    }
}

/// Seconds from `oldest` to `now` (0 when nothing waits, or from the future).
fn age_seconds(oldest: Option<SystemTime>, now: SystemTime) -> f64 {
    oldest
        .and_then(|at| now.duration_since(at).ok())
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The oldest mtime of the regular files directly in `dir` that are not
/// `ignored`; None when there is none (or the folder cannot be read).
fn oldest_mtime(dir: &Path, ignored: &dyn Fn(&str) -> bool) -> Option<SystemTime> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter(|entry| !ignored(&entry.file_name().to_string_lossy()))
        .filter_map(|entry| {
            // DirEntry::metadata does not follow a symbolic link.
            let metadata = entry.metadata().ok()?;
            metadata
                .file_type()
                .is_file()
                .then(|| metadata.modified().ok())
                .flatten()
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_regular_file_counts_and_ignored_names_do_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let old = dir.path().join("old.csv");
        let new = dir.path().join("new.csv");
        let hidden = dir.path().join(".partial");
        for path in [&old, &new, &hidden] {
            std::fs::write(path, b"x").expect("write");
        }
        std::fs::create_dir(dir.path().join("sub")).expect("dir");
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let day_ago = SystemTime::now() - Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(hour_ago))
            .expect("mtime");
        std::fs::File::options()
            .write(true)
            .open(&hidden)
            .and_then(|f| f.set_modified(day_ago))
            .expect("mtime");
        let oldest = oldest_mtime(dir.path(), &|name| name.starts_with('.'));
        let age = age_seconds(oldest, SystemTime::now());
        assert!((3599.0..3700.0).contains(&age), "{age}");
        assert_eq!(oldest_mtime(&dir.path().join("none"), &|_| false), None);
        assert_eq!(age_seconds(None, SystemTime::now()), 0.0);
        let future = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(age_seconds(Some(future), SystemTime::now()), 0.0);
    }
}
