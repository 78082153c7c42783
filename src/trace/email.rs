//! `trace --email`: every archived file read for one contact's rows (and
//! the rejects beside them), and the listing of the archive's days and
//! files that it and retention walk. Reads only; never writes.

use std::path::{Path, PathBuf};

use super::*;

/// `(line, reason, original_line)` of a `.rejects.csv`; none when absent.
pub(super) fn rejected_rows(path: &Path) -> Result<Vec<(u64, String, String)>, TraceError> {
    let mut reader = match csv::Reader::from_path(path) {
        Ok(reader) => reader,
        Err(_) if !path.exists() => return Ok(Vec::new()),
        Err(err) => return Err(io_at(path)(std::io::Error::other(err))),
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|err| io_at(path)(std::io::Error::other(err)))?;
        let line = record.get(0).and_then(|l| l.parse().ok()).unwrap_or(0);
        rows.push((
            line,
            record.get(1).unwrap_or("").to_string(),
            record.get(2).unwrap_or("").to_string(),
        ));
    }
    Ok(rows)
}

/// Whether a rejected line's first field is this e-mail.
pub(super) fn first_field_is(original: &str, import: &Import, email: &str) -> bool {
    let separator = char::from(import.format.separator.byte());
    let first = original.split(separator).next().unwrap_or("");
    normalise_email(first.trim().trim_matches('"')) == email
}

/// What `trace --email` found, and how much it read.
#[derive(Debug, Default)]
pub struct EmailTrace {
    pub proofs: Vec<Proof>,
    pub files_read: u64,
    pub bytes_read: u64,
}

/// Every proof of one contact across `archive/`, newest occurrence first.
pub fn trace_email(
    config: &Config,
    journal: &Journal,
    address: &str,
) -> Result<EmailTrace, TraceError> {
    let email = normalise_email(address);
    let mut found = EmailTrace::default();
    let archive = config.state_dir.join("archive");
    for day in list_days(&archive)? {
        for file in archived_files(&archive.join(&day))? {
            let Some(occurrence_id) = report_occurrence(&report_path(&file)) else {
                continue;
            };
            let Some(occurrence) = journal.get(&occurrence_id)? else {
                continue;
            };
            let held = hold(
                config,
                Occurrence {
                    outcome_path: Some(file.clone()),
                    ..occurrence
                },
            )?;
            found.files_read += 1;
            found.bytes_read += held.print.size;
            found.proofs.extend(read_proofs(
                config,
                journal,
                &held,
                &Wanted::Email(email.clone()),
                false,
            )?);
        }
    }
    // Newest occurrence first; a file's rows in order.
    found
        .proofs
        .sort_by(|a, b| b.claimed_at.cmp(&a.claimed_at).then(a.line.cmp(&b.line)));
    Ok(found)
}

/// The day folders of `archive/`, newest first.
pub fn list_days(archive: &Path) -> Result<Vec<String>, TraceError> {
    let mut days = Vec::new();
    let entries = match std::fs::read_dir(archive) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(days),
        Err(err) => return Err(io_at(archive)(err)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if index::is_day(&name) && entry.path().is_dir() {
            days.push(name);
        }
    }
    days.sort_unstable_by(|a, b| b.cmp(a));
    Ok(days)
}

/// The proof files of one archive day (not their reports or rejects).
fn archived_files(dir: &Path) -> Result<Vec<PathBuf>, TraceError> {
    claim::proof_files_in(dir).map_err(io_at(dir))
}

fn report_occurrence(report: &Path) -> Option<String> {
    let bytes = std::fs::read(report).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("occurrence_id")?.as_str().map(str::to_string)
}
