//! index::lookup: where an id is — a binary search of every run of every
//! day, newest day first — and which days the index holds. It only reads:
//! it never writes, merges or removes a run.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::format::{decode, record_size, Entry, Run, RUN_RECORD};
use super::{io_at, prefix, root, IndexError};
use std::os::unix::fs::FileExt;

/// Where an id may be: its archive day, occurrence and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub day: String,
    pub occurrence_id: String,
    /// [`LINE_UNKNOWN`] when the line did not fit.
    pub line: u32,
    /// The event's number among its file's events, from 0.
    pub ordinal: u32,
}

/// Every place the index holds `id`, newest day first.
pub fn lookup(state: &Path, id: &uuid::Uuid) -> Result<Vec<Hit>, IndexError> {
    let key = prefix(id);
    let mut hits = Vec::new();
    for day in days(state)?.into_iter().rev() {
        // A run removed by a merge since the listing has its records in the
        // merged run: the day is read again from a fresh listing.
        while !find_in_day(state, &day, key, &mut hits)? {}
    }
    Ok(hits)
}

/// Adds the day's hits of `key` to `hits`; false when a listed run was
/// gone by the time it was opened.
fn find_in_day(state: &Path, day: &str, key: u64, hits: &mut Vec<Hit>) -> Result<bool, IndexError> {
    for (_, path) in runs_in(&root(state).join(day))? {
        let (run, file) = match Run::open(&path) {
            Ok(opened) => opened,
            Err(IndexError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(false)
            }
            Err(err) => return Err(err),
        };
        for (occurrence_id, line, ordinal) in run.find(&file, key).map_err(io_at(&path))? {
            let hit = Hit {
                day: day.to_string(),
                occurrence_id,
                line,
                ordinal,
            };
            if !hits.contains(&hit) {
                hits.push(hit);
            }
        }
    }
    Ok(true)
}

/// The days the index holds, oldest first (`YYYY-MM-DD` sorts as dates).
pub fn days(state: &Path) -> Result<Vec<String>, IndexError> {
    let dir = root(state);
    let mut days = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(days),
        Err(err) => return Err(io_at(&dir)(err)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_day(&name) {
            days.push(name);
        }
    }
    days.sort();
    Ok(days)
}

pub fn is_day(name: &str) -> bool {
    chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d").is_ok() && name.len() == 10
}

/// The runs of one day's folder, with their levels.
pub(super) fn runs_in(dir: &Path) -> Result<Vec<(u32, PathBuf)>, IndexError> {
    let mut runs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(runs),
        Err(err) => return Err(io_at(dir)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".run") {
            let level = stem.split('-').next().and_then(|l| l.parse().ok());
            runs.push((level.unwrap_or(0), entry.path()));
        }
    }
    runs.sort();
    Ok(runs)
}

impl Run {
    /// The records whose key is `key`: (occurrence, line, event number); a
    /// binary search of each sorted segment.
    pub(super) fn find(&self, file: &File, key: u64) -> io::Result<Vec<(String, u32, u32)>> {
        let size = record_size(self.occurrences.len());
        let read = |index: u64| -> io::Result<Entry> {
            let mut record = [0u8; RUN_RECORD];
            file.read_exact_at(&mut record[..size], self.data_start + index * size as u64)?;
            Ok(decode(&record, size))
        };
        let mut hits = Vec::new();
        for (start, len) in self.segments() {
            let end = start + len;
            let (mut low, mut high) = (start, end);
            while low < high {
                let middle = low + (high - low) / 2;
                if read(middle)?.0 < key {
                    low = middle + 1;
                } else {
                    high = middle;
                }
            }
            while low < end {
                let (found, occ, line, ordinal) = read(low)?;
                if found != key {
                    break;
                }
                if let Some(name) = self.occurrences.get(occ as usize) {
                    hits.push((name.clone(), line, ordinal));
                }
                low += 1;
            }
        }
        Ok(hits)
    }
}
