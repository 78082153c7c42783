//! The validation pass and the rejects file: every row read once before
//! anything is sent, the rejected ones written with their line and reason;
//! and the original lines of rows the receiver refused, read again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use super::{open_rows, PipelineError};
use crate::claim::Fingerprint;
use crate::config::Import;
use crate::parse::Record;

#[derive(Debug, Clone, Copy)]
pub(super) struct Counts {
    pub accepted: u64,
    pub rejected: u64,
}

pub(super) enum ValidateError {
    /// The proof file cannot be read: the file fails.
    Proof(io::Error),
    /// Our own state cannot be written: the file waits.
    State(PipelineError),
}

/// Counts the rows; rejected ones go to `rejects_path` (created only when
/// there is one: most files have none, and an empty file costs an fsync).
pub(super) fn validate(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    rejects_path: &Path,
) -> Result<Counts, ValidateError> {
    let (mut reader, encoding) =
        open_rows(import, path, fingerprint).map_err(ValidateError::Proof)?;
    let mut rejects: Option<RejectsWriter> = None;
    let mut counts = Counts {
        accepted: 0,
        rejected: 0,
    };
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(_))) => counts.accepted += 1,
            Ok(Some(Record::Reject(reject))) => {
                counts.rejected += 1;
                let raw = encoding.decode_lossy(reject.raw);
                let writer = match &mut rejects {
                    Some(writer) => writer,
                    None => rejects
                        .insert(RejectsWriter::create(rejects_path).map_err(ValidateError::State)?),
                };
                writer
                    .write(reject.line, &reject.reason.to_string(), &raw)
                    .map_err(ValidateError::State)?;
            }
            Err(crate::parse::ParseError::Io(err)) => return Err(ValidateError::Proof(err)),
        }
    }
    match rejects {
        Some(writer) => writer.finish().map_err(ValidateError::State)?,
        None => {
            // A scratch file left by an earlier attempt is not this one's.
            let _ = std::fs::remove_file(rejects_path);
        }
    }
    Ok(counts)
}

/// The text of the `wanted` rows of a proof file, as the rejects file shows it.
pub(super) fn original_lines(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    wanted: &HashSet<u64>,
) -> io::Result<HashMap<u64, String>> {
    let (mut reader, encoding) = open_rows(import, path, fingerprint)?;
    let mut found = HashMap::with_capacity(wanted.len());
    while found.len() < wanted.len() {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(row))) if wanted.contains(&row.line) => {
                found.insert(row.line, encoding.decode_lossy(row.raw).into_owned());
            }
            Ok(Some(_)) => {}
            Err(crate::parse::ParseError::Io(err)) => return Err(err),
        }
    }
    Ok(found)
}

/// `line,reason,original_line`, UTF-8 CSV.
pub(super) struct RejectsWriter {
    writer: csv::Writer<BufWriter<File>>,
    path: PathBuf,
}

impl RejectsWriter {
    pub fn create(path: &Path) -> Result<RejectsWriter, PipelineError> {
        let file = File::create(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut writer = RejectsWriter {
            writer: csv::Writer::from_writer(BufWriter::new(file)),
            path: path.to_path_buf(),
        };
        writer.record(&["line", "reason", "original_line"])?;
        Ok(writer)
    }

    pub fn open_append(path: &Path) -> Result<RejectsWriter, PipelineError> {
        let exists = path.exists();
        if !exists {
            return RejectsWriter::create(path);
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| PipelineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(RejectsWriter {
            writer: csv::Writer::from_writer(BufWriter::new(file)),
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, line: u64, reason: &str, raw: &str) -> Result<(), PipelineError> {
        self.record(&[&line.to_string(), reason, raw])
    }

    fn record(&mut self, fields: &[&str]) -> Result<(), PipelineError> {
        self.writer
            .write_record(fields)
            .map_err(|err| self.error(io::Error::other(err)))
    }

    /// Flushes and fsyncs.
    pub fn finish(self) -> Result<(), PipelineError> {
        let path = self.path.clone();
        let fail = |source| PipelineError::Io {
            path: path.clone(),
            source,
        };
        let buffered = self
            .writer
            .into_inner()
            .map_err(|err| fail(io::Error::other(err.to_string())))?;
        let file = buffered
            .into_inner()
            .map_err(|err| fail(io::Error::other(err.to_string())))?;
        file.sync_all().map_err(fail)
    }

    fn error(&self, source: io::Error) -> PipelineError {
        PipelineError::Io {
            path: self.path.clone(),
            source,
        }
    }
}
