//! The auditor's and operator's commands: `trace` (an event or a contact
//! back to the archived proof) and `retry` (quarantined files back into the
//! drop folder).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{load_config, stdout_error, CommandError, Exit};
use crate::journal::Journal;

// ------------------------------------------------------------------ trace

pub struct TraceOptions<'a> {
    pub config: Option<&'a Path>,
    pub event_id: Option<&'a str>,
    pub email: Option<&'a str>,
    pub json: bool,
}

/// The proof behind an event id, or every proof of one contact. Exit 1:
/// nothing found (never imported, or pruned); 3: an archived file was
/// altered.
pub fn trace(options: &TraceOptions<'_>, out: &mut dyn Write) -> Result<Exit, CommandError> {
    let config = load_config(options.config)?;
    if !config.state_dir.join(crate::journal::FILE_NAME).exists() {
        writeln!(
            out,
            "nothing imported yet ({} has no journal)",
            config.state_dir.display()
        )
        .map_err(stdout_error)?;
        return Ok(Exit::Rejected);
    }
    let journal = Journal::open(&config.state_dir)?;
    let proofs = match (options.event_id, options.email) {
        (Some(text), None) => match proofs_of_event(&config, &journal, text, out)? {
            Some(proofs) => proofs,
            None => return Ok(Exit::Rejected),
        },
        (None, Some(address)) => proofs_of_contact(&config, &journal, address, options, out)?,
        _ => {
            return Err(CommandError::Usage(
                "give an EVENT_ID or --email ADDRESS".to_string(),
            ))
        }
    };
    if options.json {
        crate::trace::show::json_lines(&proofs, out).map_err(stdout_error)?;
    } else {
        for proof in &proofs {
            crate::trace::show::text(proof, out).map_err(stdout_error)?;
        }
    }
    Ok(if proofs.iter().any(|proof| !proof.sha256_matches) {
        Exit::Failure
    } else if proofs.is_empty() {
        Exit::Rejected
    } else {
        Exit::Success
    })
}

/// The proofs of one event id; `None` (said on `out`) when it was pruned
/// or never imported.
fn proofs_of_event(
    config: &crate::config::Config,
    journal: &Journal,
    text: &str,
    out: &mut dyn Write,
) -> Result<Option<Vec<crate::trace::Proof>>, CommandError> {
    use crate::trace::{self, Traced};
    let id = uuid::Uuid::parse_str(text.trim())
        .map_err(|err| CommandError::Usage(format!("{text:?} is not an event id: {err}")))?;
    match trace::trace_event(config, journal, &id)? {
        Traced::Found(proofs) => Ok(Some(proofs)),
        Traced::Pruned(pruned) => {
            writeln!(
                out,
                "event {id}: PRUNED: it was archived on {} ({} occurrence(s): {}), a day deleted by [state] archive_days on {}",
                pruned.day,
                pruned.occurrences.len(),
                pruned.occurrences.join(", "),
                pruned.pruned_at
            )
            .map_err(stdout_error)?;
            Ok(None)
        }
        Traced::NeverImported => {
            writeln!(
                out,
                "event {id}: never imported (no archived proof has this id)"
            )
            .map_err(stdout_error)?;
            Ok(None)
        }
    }
}

/// Every proof of one contact, with how much was read (on stderr).
fn proofs_of_contact(
    config: &crate::config::Config,
    journal: &Journal,
    address: &str,
    options: &TraceOptions<'_>,
    out: &mut dyn Write,
) -> Result<Vec<crate::trace::Proof>, CommandError> {
    use crate::trace;
    let started = std::time::Instant::now();
    let found = trace::trace_email(config, journal, address)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "read {} archived file(s), {:.1} MB, in {:.2} s ({:.0} MB/s)",
        found.files_read,
        found.bytes_read as f64 / 1e6,
        seconds,
        found.bytes_read as f64 / 1e6 / seconds
    );
    if !options.json {
        writeln!(
            out,
            "{}: {} proof(s) in {} archived file(s) read",
            trace::normalise_email(address),
            found.proofs.len(),
            found.files_read
        )
        .map_err(stdout_error)?;
    }
    Ok(found.proofs)
}

// ------------------------------------------------------------------ retry

/// Puts the files of `failed/` that the current config now reads well back
/// into the drop folder. Exit 1 when some stay.
pub fn retry(
    config_path: Option<&Path>,
    files: &[PathBuf],
    all: bool,
    out: &mut dyn Write,
) -> Result<Exit, CommandError> {
    use crate::retry::{self, Outcome};
    let config = load_config(config_path)?;
    let chosen = match (all, files.is_empty()) {
        (true, true) => retry::failed_files(&config)?,
        (false, false) => files
            .iter()
            .map(|file| retry::resolve(&config, file))
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(CommandError::Usage(
                "give failed/NAME... or --all (not both)".to_string(),
            ))
        }
    };
    let mut exit = Exit::Success;
    for file in chosen {
        let shown = file
            .strip_prefix(&config.state_dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        match retry::retry_one(&config, &file)? {
            Outcome::Back { to, accepted, rejected } => writeln!(
                out,
                "{shown}: back in the drop folder as {} ({accepted} rows would import, {rejected} rejected): the daemon takes it as a new occurrence",
                to.display()
            ),
            Outcome::Stays(reason) => {
                exit = Exit::Rejected;
                writeln!(out, "{shown}: stays in failed/: {reason}")
            }
        }
        .map_err(stdout_error)?;
    }
    Ok(exit)
}
