//! trace: from an event id, or a contact's e-mail, back to the archived
//! proof (SPEC §5, `consent-drop trace`).
//!
//! A proof is shown with what an auditor needs to trust it: the occurrence
//! and import, the archived file with its SHA-256 computed now and compared
//! with the journal's (a difference means the archive was altered), the line
//! and the original line decoded as the import reads the file, the report,
//! when the batch was acknowledged, and the event rebuilt from the line.
//! Files are read with the same functions as an import
//! ([`crate::pipeline::open_rows`]), so every encoding an import reads is
//! read here the same way. By id, the [`crate::index`] says where to look;
//! by e-mail, every archived file is read. It never writes anything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::claim;
use crate::config::{Config, Import};
use crate::event::EventWriter;
use crate::index::{self, IndexError};
use crate::journal::{Journal, JournalError, Occurrence};
use crate::parse::{Record, ResolvedEncoding};
use crate::pipeline;

mod email;
mod seek;
pub mod show;

use email::{first_field_is, rejected_rows};
pub use email::{list_days, trace_email, EmailTrace};
use seek::seek_start;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> TraceError + '_ {
    move |source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What became of one row of a proof file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fate {
    /// Sent and acknowledged.
    Delivered,
    /// Sent, and refused by the receiver (a rejected row with its message).
    Refused,
    /// Rejected on import: never sent.
    Rejected,
    /// The file had the content of an earlier occurrence: not sent again.
    Duplicate,
}

/// One proof, as `trace` shows it (`--json`: one such object per proof).
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    pub event_id: Option<String>,
    pub fate: Fate,
    pub occurrence_id: String,
    pub import: String,
    pub organization_id: Option<String>,
    pub claimed_at: String,
    pub file: PathBuf,
    pub sha256_journal: Option<String>,
    pub sha256_now: String,
    pub sha256_matches: bool,
    pub line: u64,
    pub original_line: String,
    /// Why the row was rejected or refused.
    pub reason: Option<String>,
    pub report_file: PathBuf,
    pub report: Option<serde_json::Value>,
    /// The batch of the occurrence the event went in, from 0.
    pub batch: Option<u64>,
    pub acknowledged_at: Option<String>,
    /// The event as sent, rebuilt from the line with the import's config.
    pub event: Option<serde_json::Value>,
    /// Anything that keeps this proof from being complete.
    pub notes: Vec<String>,
}

/// What `trace EVENT_ID` found.
#[derive(Debug)]
pub enum Traced {
    Found(Vec<Proof>),
    /// The id was archived on a day that retention has since deleted.
    Pruned(index::Pruned),
    NeverImported,
}

/// Where an archived file lives in the journal and on disk.
struct Held<'c> {
    occurrence: Occurrence,
    file: PathBuf,
    import: Option<&'c Import>,
    print: claim::Fingerprint,
}

/// The organization the events of an occurrence's import go to: the
/// import's own, else the sink's.
fn organization(config: &Config, import: Option<&Import>) -> Option<String> {
    match import {
        Some(import) => import.organization().map(str::to_string),
        None => config.sink.organization_id().map(str::to_string),
    }
}

fn report_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(claim::fit_name(&name, ".report.json"))
}

fn rejects_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.with_file_name(claim::fit_name(&name, ".rejects.csv"))
}

/// The proofs behind one event id.
pub fn trace_event(
    config: &Config,
    journal: &Journal,
    id: &uuid::Uuid,
) -> Result<Traced, TraceError> {
    let hits = index::lookup(&config.state_dir, id)?;
    let mut proofs = Vec::new();
    for hit in hits {
        let Some(occurrence) = journal.get(&hit.occurrence_id)? else {
            continue;
        };
        let held = hold(config, occurrence)?;
        let wanted = Wanted::Id(*id, hit.line, hit.ordinal);
        let mut found = read_proofs(config, journal, &held, &wanted, true)?;
        let exact = found
            .first()
            .is_some_and(|proof| proof.event_id == Some(id.to_string()));
        if !exact {
            // Not where the index said, read from the start: the whole file.
            found = read_proofs(config, journal, &held, &wanted, false)?;
        }
        proofs.append(&mut found);
    }
    if !proofs.is_empty() {
        return Ok(Traced::Found(proofs));
    }
    Ok(match index::find_pruned(&config.state_dir, id)? {
        Some(pruned) => Traced::Pruned(pruned),
        None => Traced::NeverImported,
    })
}

fn hold(config: &Config, occurrence: Occurrence) -> Result<Held<'_>, TraceError> {
    let file = occurrence
        .outcome_path
        .clone()
        .unwrap_or_else(|| occurrence.processing_path.clone());
    let import = config
        .import_named(&occurrence.import)
        .map(|import| import.as_ref());
    // A .gz / .zip proof is read decompressed, as the pipeline read it.
    let print = match import {
        Some(import) => {
            crate::unpack::fingerprint(&file, import.format.encoding, import.max_decompressed_bytes)
        }
        None => claim::fingerprint(&file),
    };
    let print = match print {
        Ok(print) => print,
        // Shown as a proof that fails its check, not as an error.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => claim::Fingerprint {
            sha256: "(the archived file is missing)".to_string(),
            size: 0,
            is_utf8: true,
            bom: None,
        },
        Err(err) => return Err(io_at(&file)(err)),
    };
    Ok(Held {
        occurrence,
        file,
        import,
        print,
    })
}

/// Which rows of a file are wanted.
enum Wanted {
    /// The row of this event: its id, line (or [`index::LINE_UNKNOWN`]: find
    /// it by id) and number among the file's events.
    Id(uuid::Uuid, u32, u32),
    /// Every row of this normalised e-mail.
    Email(String),
}

/// The e-mail as an import stores it: trimmed and lower-cased.
pub fn normalise_email(address: &str) -> String {
    address
        .trim()
        .chars()
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads one held file for the wanted rows; counts rows read in `rows`.
fn read_proofs(
    config: &Config,
    journal: &Journal,
    held: &Held<'_>,
    wanted: &Wanted,
    seek: bool,
) -> Result<Vec<Proof>, TraceError> {
    let base = ProofBase::of(config, journal, held)?;
    let Some(import) = held.import else {
        let mut proof = base.proof(0, String::new());
        proof.notes.push(format!(
            "the current config has no import named {:?}: the file cannot be read",
            held.occurrence.import
        ));
        return Ok(vec![proof]);
    };
    if !held.file.exists() {
        let line = match wanted {
            Wanted::Id(_, line, _) => u64::from(*line),
            Wanted::Email(_) => 0,
        };
        let mut proof = base.proof(line, String::new());
        proof.notes.push(format!(
            "THE ARCHIVED FILE IS MISSING: {} was removed or moved by hand",
            held.file.display()
        ));
        return Ok(vec![proof]);
    }
    let mut proofs = scan_rows(journal, held, import, wanted, seek, &base)?;
    if let Wanted::Email(email) = wanted {
        proofs.extend(rejected_proofs(held, import, email, &base)?);
        proofs.sort_by_key(|proof| proof.line);
    }
    if !base.sha256_matches {
        for proof in &mut proofs {
            proof.notes.push(
                "THE ARCHIVED FILE WAS ALTERED: its SHA-256 is not the one the journal recorded"
                    .to_string(),
            );
        }
    }
    Ok(proofs)
}

/// What every proof of one held file shares: occurrence, file, report,
/// checksums and the receiver's refusals.
struct ProofBase {
    template: Proof,
    sha256_matches: bool,
    duplicate: bool,
    refusals: Vec<crate::sink::Refusal>,
}

impl ProofBase {
    fn of(config: &Config, journal: &Journal, held: &Held<'_>) -> Result<ProofBase, TraceError> {
        let occurrence = &held.occurrence;
        let sha256_matches = occurrence.sha256.as_deref() == Some(held.print.sha256.as_str());
        let report_file = report_path(&held.file);
        let report = std::fs::read(&report_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
        let duplicate = occurrence.status == crate::journal::Status::Duplicate;
        let template = Proof {
            event_id: None,
            fate: if duplicate {
                Fate::Duplicate
            } else {
                Fate::Delivered
            },
            occurrence_id: occurrence.id.clone(),
            import: occurrence.import.clone(),
            organization_id: organization(config, held.import),
            claimed_at: occurrence.claimed_at.clone(),
            file: held.file.clone(),
            sha256_journal: occurrence.sha256.clone(),
            sha256_now: held.print.sha256.clone(),
            sha256_matches,
            line: 0,
            original_line: String::new(),
            reason: None,
            report_file,
            report,
            batch: None,
            acknowledged_at: None,
            event: None,
            notes: Vec::new(),
        };
        Ok(ProofBase {
            template,
            sha256_matches,
            duplicate,
            refusals: journal.refusals(&occurrence.id)?,
        })
    }

    fn proof(&self, line: u64, original_line: String) -> Proof {
        Proof {
            line,
            original_line,
            ..self.template.clone()
        }
    }
}

/// A reader of the held file: from the wanted line's byte offset when
/// `seek` and the file allows it (no header then), else from the start.
/// Returns the reader, its encoding, the line before its first row, the
/// events before it, and whether it seeked.
type Opened<'f> = (
    crate::parse::RowReader<'f, crate::unpack::Content>,
    ResolvedEncoding,
    u64,
    u64,
    bool,
);

fn open_at<'f>(
    import: &'f Import,
    held: &Held<'_>,
    wanted: &Wanted,
    seek: bool,
    headerless: &'f crate::parse::RowFormat,
) -> Result<Opened<'f>, TraceError> {
    let start = match seek.then(|| seek_start(import, held, wanted)) {
        Some(start) => start.map_err(io_at(&held.file))?,
        None => None,
    };
    if let Some((offset, encoding, line, ordinal)) = start {
        // Straight to the line: a reader from its first byte, no header.
        let mut file = claim::open_regular(&held.file).map_err(io_at(&held.file))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
            .map_err(io_at(&held.file))?;
        let file = crate::unpack::Content::plain(file);
        let reader = crate::parse::RowReader::new(file, headerless, encoding);
        return Ok((reader, encoding, line - 1, u64::from(ordinal), true));
    }
    let (reader, encoding) =
        pipeline::open_rows(import, &held.file, &held.print).map_err(io_at(&held.file))?;
    Ok((reader, encoding, 0, 0, false))
}

/// The wanted rows of the held file, each rebuilt into its event.
fn scan_rows(
    journal: &Journal,
    held: &Held<'_>,
    import: &Import,
    wanted: &Wanted,
    seek: bool,
    base: &ProofBase,
) -> Result<Vec<Proof>, TraceError> {
    let occurrence = &held.occurrence;
    let source_sha = occurrence.sha256.as_deref().unwrap_or(&held.print.sha256);
    let mut writer = EventWriter::new(import, &occurrence.file_name, source_sha);
    let mut headerless = import.format.clone();
    headerless.header = crate::parse::HeaderMode::Absent;
    let (mut reader, encoding, line_base, mut ordinal, seeked) =
        open_at(import, held, wanted, seek, &headerless)?;
    let batch_size = occurrence.batch_size.unwrap_or(1).max(1);
    let mut proofs = Vec::new();
    let mut event = Vec::new();
    loop {
        let row = match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Reject(_))) if seeked => break,
            Ok(Some(Record::Reject(_))) => continue,
            Ok(Some(Record::Row(row))) => row,
            Err(crate::parse::ParseError::Io(err)) => return Err(io_at(&held.file)(err)),
        };
        // Read from a line's offset, the reader counts from there.
        let row = crate::parse::Row {
            line: row.line + line_base,
            ..row
        };
        ordinal += 1;
        let chosen = match wanted {
            Wanted::Id(..) if seeked => true,
            Wanted::Id(_, line, _) if *line != index::LINE_UNKNOWN => u64::from(*line) == row.line,
            Wanted::Id(id, ..) => crate::event::event_id(&import.name, &row) == *id,
            Wanted::Email(email) => row.email == email,
        };
        if !chosen {
            continue;
        }
        event.clear();
        let id = writer.write(&row, &mut event);
        let mut proof = base.proof(row.line, encoding.decode_lossy(row.raw).into_owned());
        proof.event_id = Some(id.to_string());
        proof.event = serde_json::from_slice(&event).ok();
        if let Wanted::Id(wanted_id, ..) = wanted {
            if id != *wanted_id {
                proof.notes.push(format!(
                    "the import's current config builds event {id} from this line, not {wanted_id}: the import was changed since"
                ));
            }
        }
        settle_fate(
            journal,
            occurrence,
            base,
            &mut proof,
            (ordinal - 1) / batch_size,
        )?;
        proofs.push(proof);
        if matches!(wanted, Wanted::Id(..)) {
            break;
        }
    }
    Ok(proofs)
}

/// A sent row's fate: refused (with the receiver's message) or delivered
/// in batch `seq`, acknowledged when the journal says.
fn settle_fate(
    journal: &Journal,
    occurrence: &Occurrence,
    base: &ProofBase,
    proof: &mut Proof,
    seq: u64,
) -> Result<(), TraceError> {
    if let Some(refusal) = base.refusals.iter().find(|r| r.line == proof.line) {
        proof.fate = Fate::Refused;
        proof.reason = Some(refusal.message.clone());
    }
    if !base.duplicate {
        proof.batch = Some(seq);
        proof.acknowledged_at = journal
            .acknowledged_at(&occurrence.id, seq)?
            .or_else(|| occurrence.finished_at.clone());
    }
    Ok(())
}

/// The contact's rows rejected on import, from the file's rejects (those
/// the receiver refused are already proofs of their own).
fn rejected_proofs(
    held: &Held<'_>,
    import: &Import,
    email: &str,
    base: &ProofBase,
) -> Result<Vec<Proof>, TraceError> {
    let refused: HashSet<u64> = base.refusals.iter().map(|refusal| refusal.line).collect();
    let mut proofs = Vec::new();
    for (line, reason, original) in rejected_rows(&rejects_path(&held.file))? {
        if refused.contains(&line) || !first_field_is(&original, import, email) {
            continue;
        }
        let mut proof = base.proof(line, original);
        proof.fate = Fate::Rejected;
        proof.reason = Some(reason);
        proofs.push(proof);
    }
    Ok(proofs)
}
