//! retention: `[state] archive_days`, the deletion of old archive days.
//!
//! Which days go is decided by a pure function of the day names, today and
//! the setting ([`days_to_prune`]), so it is tested without a clock. A day
//! goes whole: its proof files, reports, rejects and its index entries; the
//! index keeps a tombstone first (so `trace` can still say "pruned"), then
//! the index day and the archive day are removed. A crash in between is
//! finished by the next pass. It only ever deletes inside `archive/` and
//! `index/`, folders named as days: never `failed/`, never `processing/`.
//! The daemon runs it at start and once a day; without `archive_days`
//! nothing is ever deleted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use tokio_util::sync::CancellationToken;

use crate::index::{self, IndexError};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> RetentionError + '_ {
    move |source| RetentionError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The days (`YYYY-MM-DD`) older than `archive_days` before `today`:
/// with 30, on 2026-12-31 the oldest kept day is 2026-12-01.
pub fn days_to_prune(days: &[String], today: NaiveDate, archive_days: u32) -> Vec<String> {
    let mut old: Vec<String> = days
        .iter()
        .filter(|day| {
            NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .is_ok_and(|date| (today - date).num_days() > i64::from(archive_days))
        })
        .cloned()
        .collect();
    old.sort();
    old.dedup();
    old
}

/// What one pass deleted for one day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedDay {
    pub day: String,
    pub files: u64,
    pub bytes: u64,
    pub index_entries: u64,
}

/// Deletes the archive days older than `archive_days` before `today`.
pub fn prune(
    state: &Path,
    archive_days: u32,
    today: NaiveDate,
    now: &str,
) -> Result<Vec<PrunedDay>, RetentionError> {
    let archive = state.join("archive");
    let mut days = archive_day_names(&archive)?;
    days.extend(index::days(state)?);
    let mut pruned = Vec::new();
    for day in days_to_prune(&days, today, archive_days) {
        let dir = archive.join(&day);
        let usage = usage_of_day(&dir)?;
        let index_entries = index::prune_day(state, &day, now)?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
            crate::claim::sync_dir_of(&dir).map_err(IndexError::from)?;
        }
        pruned.push(PrunedDay {
            day,
            files: usage.0,
            bytes: usage.1,
            index_entries,
        });
    }
    Ok(pruned)
}

fn archive_day_names(archive: &Path) -> Result<Vec<String>, RetentionError> {
    let mut days = Vec::new();
    let entries = match std::fs::read_dir(archive) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(days),
        Err(err) => return Err(io_at(archive)(err)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if index::is_day(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            days.push(name);
        }
    }
    days.sort();
    Ok(days)
}

/// (files, bytes) of one day's folder.
fn usage_of_day(dir: &Path) -> Result<(u64, u64), RetentionError> {
    let mut files = 0;
    let mut bytes = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(err) => return Err(io_at(dir)(err)),
    };
    for entry in entries.flatten() {
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

/// The archive at a glance, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
    pub days: u64,
    pub oldest_day: Option<String>,
}

pub fn archive_usage(archive: &Path) -> Result<Usage, RetentionError> {
    let days = archive_day_names(archive)?;
    let mut usage = Usage {
        days: days.len() as u64,
        oldest_day: days.first().cloned(),
        ..Usage::default()
    };
    for day in &days {
        let (files, bytes) = usage_of_day(&archive.join(day))?;
        usage.files += files;
        usage.bytes += bytes;
    }
    Ok(usage)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// One pass now, logged.
fn pass(state: &Path, archive_days: u32) {
    let now = chrono::Utc::now();
    let stamp = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match prune(state, archive_days, now.date_naive(), &stamp) {
        Ok(days) => {
            for day in days {
                tracing::info!(
                    day = %day.day,
                    files = day.files,
                    bytes = day.bytes,
                    index_entries = day.index_entries,
                    archive_days,
                    "archive day deleted (older than [state] archive_days)"
                );
            }
        }
        Err(err) => tracing::error!(%err, "archive retention failed; tried again in a day"),
    }
}

/// The daemon's handle on its retention: a changed `archive_days` (the
/// config reloaded) takes effect at once.
#[derive(Debug)]
pub struct Retention {
    setting: tokio::sync::watch::Sender<Option<u32>>,
}

impl Retention {
    /// The setting of a reloaded config; a pass runs now if it changed.
    pub fn set(&self, archive_days: Option<u32>) {
        self.setting.send_if_modified(|current| {
            let changed = *current != archive_days;
            *current = archive_days;
            changed
        });
    }
}

/// The daemon's retention: a pass at start, then one a day, and one when
/// the setting changes, until shutdown. Nothing at all while there is no
/// `archive_days`.
pub fn spawn(state: PathBuf, archive_days: Option<u32>, shutdown: CancellationToken) -> Retention {
    let (setting, mut changes) = tokio::sync::watch::channel(archive_days);
    tokio::spawn(async move {
        let mut days = *changes.borrow_and_update();
        let mut next = tokio::time::Instant::now();
        loop {
            // At start, a day after the last pass, and when the setting changed.
            if let Some(archive_days) = days {
                let state = state.clone();
                let _ = tokio::task::spawn_blocking(move || pass(&state, archive_days)).await;
                next = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next), if days.is_some() => {}
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    days = *changes.borrow_and_update();
                }
            }
        }
    });
    Retention { setting }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("date")
    }

    #[test]
    fn only_days_older_than_the_setting_are_chosen() {
        let days: Vec<String> = [
            "2026-11-30",
            "2026-12-01",
            "2026-12-31",
            "2025-01-01",
            "junk",
        ]
        .iter()
        .map(|d| d.to_string())
        .collect();
        assert_eq!(
            days_to_prune(&days, date("2026-12-31"), 30),
            vec!["2025-01-01".to_string(), "2026-11-30".to_string()]
        );
        assert!(days_to_prune(&days, date("2026-12-31"), 10_000).is_empty());
    }

    #[test]
    fn a_pass_deletes_old_days_with_their_index_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        for day in ["2026-01-01", "2026-06-01"] {
            let folder = state.join("archive").join(day);
            std::fs::create_dir_all(&folder).expect("day");
            std::fs::write(folder.join("pr-a.csv"), "x;y\n").expect("file");
            std::fs::write(folder.join("pr-a.csv.report.json"), "{}").expect("report");
        }
        for folder in ["failed", "processing"] {
            std::fs::create_dir_all(state.join(folder)).expect("folder");
            std::fs::write(state.join(folder).join("pr-old.csv"), "x").expect("file");
        }
        let pruned = prune(state, 30, date("2026-06-15"), "2026-06-15T00:00:00Z").expect("prune");
        assert_eq!(pruned.len(), 1);
        assert_eq!(pruned[0].day, "2026-01-01");
        assert_eq!(pruned[0].files, 2);
        assert!(!state.join("archive/2026-01-01").exists());
        assert!(state.join("archive/2026-06-01/pr-a.csv").exists());
        assert!(state.join("failed/pr-old.csv").exists());
        assert!(state.join("processing/pr-old.csv").exists());
        let usage = archive_usage(&state.join("archive")).expect("usage");
        assert_eq!(usage.oldest_day.as_deref(), Some("2026-06-01"));
        assert_eq!(usage.files, 2);
    }

    #[tokio::test]
    async fn a_reloaded_archive_days_takes_effect_at_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path().to_path_buf();
        let old = state.join("archive").join("2020-01-01");
        std::fs::create_dir_all(&old).expect("day");
        std::fs::write(old.join("pr-a.csv"), "x;y\n").expect("file");
        let shutdown = CancellationToken::new();
        let retention = spawn(state.clone(), None, shutdown.clone());
        // Without archive_days nothing goes; the same setting again is no change.
        retention.set(None);
        tokio::task::yield_now().await;
        assert!(old.exists(), "kept without archive_days");
        retention.set(Some(30));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while old.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !old.exists(),
            "the day older than the reloaded setting was deleted"
        );
        shutdown.cancel();
    }
}
