//! commands::status: `status`: the journal's recent occurrences, as a table
//! or JSON. It only reads the journal.

use std::io::Write;
use std::path::Path;

use super::{load_config, stdout_error, CommandError, Exit};
use crate::config::Config;
use crate::journal::{Journal, Occurrence};

pub fn status(
    config_path: Option<&Path>,
    limit: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    let config = load_config(config_path)?;
    if !config.state_dir.join(crate::journal::FILE_NAME).exists() {
        if json {
            writeln!(out, "[]").map_err(stdout_error)?;
        } else {
            writeln!(
                out,
                "no import yet ({} has no journal)",
                config.state_dir.display()
            )
            .map_err(stdout_error)?;
        }
        return Ok(Exit::Success);
    }
    let journal = Journal::open(&config.state_dir)?;
    let recent = journal.recent(limit)?;
    if json {
        as_json(&config, &recent, out)?;
    } else {
        as_table(&config, &recent, out)?;
    }
    Ok(Exit::Success)
}

/// The organization of an occurrence: its import's, as configured now.
fn organization(config: &Config, import: &str) -> String {
    config
        .import_named(import)
        .and_then(|import| import.organization())
        .unwrap_or("-")
        .to_string()
}

/// The occurrences as one JSON array, each with its organization.
fn as_json(
    config: &Config,
    recent: &[Occurrence],
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut rows =
        serde_json::to_value(recent).map_err(|err| stdout_error(std::io::Error::other(err)))?;
    if let Some(rows) = rows.as_array_mut() {
        for row in rows.iter_mut() {
            let import = row.get("import").and_then(|v| v.as_str()).unwrap_or("");
            let org = organization(config, import);
            if let Some(object) = row.as_object_mut() {
                object.insert("organization_id".into(), org.into());
            }
        }
    }
    let text = serde_json::to_string_pretty(&rows)
        .map_err(|err| stdout_error(std::io::Error::other(err)))?;
    writeln!(out, "{text}").map_err(stdout_error)
}

/// The archive's size and oldest day, then one line an occurrence.
fn as_table(
    config: &Config,
    recent: &[Occurrence],
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let usage = crate::retention::archive_usage(&config.state_dir.join("archive"))?;
    writeln!(
        out,
        "archive: {} in {} file(s) over {} day(s), oldest day {}",
        crate::retention::human_bytes(usage.bytes),
        usage.files,
        usage.days,
        usage.oldest_day.as_deref().unwrap_or("-")
    )
    .map_err(stdout_error)?;
    writeln!(
        out,
        "{:<36}  {:<20}  {:<16}  {:<10}  {:>9}  {:>8}  {:>7}  {:<24}  file",
        "occurrence",
        "import",
        "organization",
        "status",
        "accepted",
        "rejected",
        "refused",
        "claimed at"
    )
    .map_err(stdout_error)?;
    for occurrence in recent {
        let count = |value: Option<u64>| value.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<36}  {:<20}  {:<16}  {:<10}  {:>9}  {:>8}  {:>7}  {:<24}  {}",
            occurrence.id,
            occurrence.import,
            organization(config, &occurrence.import),
            occurrence.status.as_str(),
            count(occurrence.rows_accepted),
            count(occurrence.rows_rejected),
            occurrence.rows_refused,
            occurrence.claimed_at,
            occurrence.file_name
        )
        .map_err(stdout_error)?;
    }
    Ok(())
}
