//! The validation pass and the rejects file: every row read once before
//! anything is sent, the rejected ones written with their line and reason;
//! and the original lines of rows the receiver refused, read again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{open_rows, resolved_encoding, PipelineError};
use crate::claim::{self, Fingerprint};
use crate::config::Import;
use crate::parse::{Record, Reject, ResolvedEncoding, RowReader};
use crate::unpack;

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

impl ValidateError {
    /// For a pass that only delivers (the file was validated before): a
    /// read error leaves the file to be tried again, as our own errors do.
    pub fn into_pipeline(self, path: &Path) -> PipelineError {
        match self {
            ValidateError::Proof(source) => PipelineError::Io {
                path: path.to_path_buf(),
                source,
            },
            ValidateError::State(err) => err,
        }
    }
}

/// Plain files from this size are validated in two halves at once, one a
/// core: the pass was a fifth of a large import's time, with a core idle.
const HALVES_FROM_BYTES: u64 = 16 << 20;

/// Counts the rows; rejected ones go to `rejects_path` (created only when
/// there is one: most files have none, and an empty file costs an fsync).
pub(super) fn validate(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    rejects_path: &Path,
) -> Result<Counts, ValidateError> {
    validate_from(import, path, fingerprint, rejects_path, HALVES_FROM_BYTES)
}

fn validate_from(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    rejects_path: &Path,
    halves_from_bytes: u64,
) -> Result<Counts, ValidateError> {
    if fingerprint.size >= halves_from_bytes {
        if let Some(counts) = validate_in_halves(import, path, fingerprint, rejects_path)? {
            return Ok(counts);
        }
    }
    let (reader, encoding) = open_rows(import, path, fingerprint).map_err(ValidateError::Proof)?;
    count_rows(reader, encoding, rejects_path).map(|(counts, _)| counts)
}

/// The rows of `reader` counted, the rejected ones written to `rejects_path`;
/// with where the reader stopped ([`RowReader::position`]).
fn count_rows<R: Read>(
    mut reader: RowReader<'_, R>,
    encoding: ResolvedEncoding,
    rejects_path: &Path,
) -> Result<(Counts, (u64, bool)), ValidateError> {
    let mut tally = Tally::new(rejects_path, encoding);
    loop {
        match reader.next_record() {
            Ok(None) => break,
            Ok(Some(Record::Row(_))) => tally.accept(),
            Ok(Some(Record::Reject(reject))) => {
                tally.reject(&reject).map_err(ValidateError::State)?;
            }
            Err(crate::parse::ParseError::Io(err)) => return Err(ValidateError::Proof(err)),
        }
    }
    let counts = tally.finish().map_err(ValidateError::State)?;
    Ok((counts, reader.position()))
}

/// A pass's count of rows, and its rejects file, written as rejected rows
/// come (created only when there is one: most files have none, and an
/// empty file costs an fsync).
pub(super) struct Tally<'p> {
    counts: Counts,
    rejects: Option<RejectsWriter>,
    rejects_path: &'p Path,
    encoding: ResolvedEncoding,
}

impl<'p> Tally<'p> {
    pub fn new(rejects_path: &'p Path, encoding: ResolvedEncoding) -> Tally<'p> {
        Tally {
            counts: Counts {
                accepted: 0,
                rejected: 0,
            },
            rejects: None,
            rejects_path,
            encoding,
        }
    }

    pub fn accept(&mut self) {
        self.counts.accepted += 1;
    }

    pub fn reject(&mut self, reject: &Reject<'_>) -> Result<(), PipelineError> {
        self.counts.rejected += 1;
        let raw = self.encoding.decode_lossy(reject.raw);
        let writer = match &mut self.rejects {
            Some(writer) => writer,
            None => self
                .rejects
                .insert(RejectsWriter::create(self.rejects_path)?),
        };
        writer.write(reject.line, &reject.reason.to_string(), &raw)
    }

    /// The counts, with the rejects file fsynced.
    pub fn finish(self) -> Result<Counts, PipelineError> {
        match self.rejects {
            Some(writer) => writer.finish()?,
            None => {
                // A scratch file left by an earlier attempt is not this one's.
                let _ = std::fs::remove_file(self.rejects_path);
            }
        }
        Ok(self.counts)
    }
}

/// A plain file read as two halves on two threads: the head up to the line
/// ending nearest after the middle, the tail from there. That is a record
/// boundary exactly when the head's reader ends on that line ending, not
/// inside a quoted field or an over-long record: the tail's rows are then
/// the file's rows, its lines shifted by the head's. Otherwise `None`, and
/// the file is read whole as if nothing had been tried.
fn validate_in_halves(
    import: &Import,
    path: &Path,
    fingerprint: &Fingerprint,
    rejects_path: &Path,
) -> Result<Option<Counts>, ValidateError> {
    let encoding = resolved_encoding(import, fingerprint);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let bytes_as_read = matches!(
        encoding,
        ResolvedEncoding::Utf8 | ResolvedEncoding::Windows1252 | ResolvedEncoding::Iso8859_1
    );
    if !bytes_as_read || unpack::Packing::of(&name) != unpack::Packing::Plain {
        return Ok(None);
    }
    let Some(seam) = seam_after(path, fingerprint.size / 2).map_err(ValidateError::Proof)? else {
        return Ok(None);
    };
    let tail_rejects = rejects_path.with_extension("tail.csv");
    let format = &import.format;
    let (head, tail) = std::thread::scope(|scope| {
        let tail = scope.spawn(|| {
            let mut file = claim::open_regular(path).map_err(ValidateError::Proof)?;
            file.seek(SeekFrom::Start(seam))
                .map_err(ValidateError::Proof)?;
            let reader = RowReader::continuing(file, format, encoding, 0);
            count_rows(reader, encoding, &tail_rejects)
        });
        let head = claim::open_regular(path)
            .map_err(ValidateError::Proof)
            .and_then(|file| {
                let reader = RowReader::new(file.take(seam), format, encoding);
                count_rows(reader, encoding, rejects_path)
            });
        (head, tail.join())
    });
    let tail = tail.map_err(|_| {
        ValidateError::State(PipelineError::Worker(
            "the thread validating a file's second half stopped".into(),
        ))
    })?;
    let (head, (head_lines, head_open)) = head?;
    let (tail, _) = tail?;
    if head_open {
        let _ = std::fs::remove_file(&tail_rejects);
        return Ok(None);
    }
    if tail.rejected > 0 {
        append_shifted(&tail_rejects, rejects_path, head_lines).map_err(ValidateError::State)?;
    }
    Ok(Some(Counts {
        accepted: head.accepted + tail.accepted,
        rejected: head.rejected + tail.rejected,
    }))
}

/// The offset just after the first line ending at or after `from`, if one
/// comes before the end of the file within a read or so.
fn seam_after(path: &Path, from: u64) -> io::Result<Option<u64>> {
    let mut file = claim::open_regular(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut near = Vec::with_capacity(1 << 20);
    file.take(1 << 20).read_to_end(&mut near)?;
    Ok(memchr::memchr(b'\n', &near).map(|at| from + at as u64 + 1))
}

/// Appends the rejects of a file's tail to the head's, their lines shifted
/// by the head's; the tail's scratch file is removed.
fn append_shifted(tail: &Path, rejects_path: &Path, lines: u64) -> Result<(), PipelineError> {
    let io_error = |source| PipelineError::Io {
        path: tail.to_path_buf(),
        source,
    };
    let mut reader = csv::Reader::from_path(tail).map_err(|err| io_error(io::Error::other(err)))?;
    let mut writer = RejectsWriter::open_append(rejects_path)?;
    for record in reader.records() {
        let record = record.map_err(|err| io_error(io::Error::other(err)))?;
        let line = record
            .get(0)
            .and_then(|line| line.parse::<u64>().ok())
            .ok_or_else(|| io_error(io::Error::other("a line number is missing")))?;
        let field = |index| record.get(index).unwrap_or_default();
        writer.write(lines + line, field(1), field(2))?;
    }
    writer.finish()?;
    std::fs::remove_file(tail).map_err(io_error)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn import() -> Import {
        let text =
            "[watch]\ndir = \"d\"\n[state]\ndir = \"s\"\n[sink]\nkind = \"file\"\ndir = \"o\"\n\
             [[import]]\nname = \"news\"\npattern = \".*\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\n\
             separator = \";\"\nmax_row_bytes = 64\ndefault_purpose = \"email_global\"\n";
        let config = crate::config::parse_config(text, "t.toml", Path::new("")).expect("config");
        (*config.imports[0]).clone()
    }

    /// A folder holding `content` as a proof file, with its fingerprint and
    /// where its rejects go.
    fn proof_file(content: &[u8]) -> (tempfile::TempDir, PathBuf, Fingerprint, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("proofs.csv");
        std::fs::write(&path, content).expect("write");
        let fingerprint =
            unpack::fingerprint(&path, import().format.encoding, u64::MAX).expect("fingerprint");
        let rejects = dir.path().join("occ.rejects.csv");
        (dir, path, fingerprint, rejects)
    }

    /// Counts and the rejects file's bytes, from validating `content` with
    /// halves from `halves_from_bytes` on.
    fn validated(content: &[u8], halves_from_bytes: u64) -> (u64, u64, Vec<u8>) {
        let (_dir, path, fingerprint, rejects) = proof_file(content);
        let counts =
            match validate_from(&import(), &path, &fingerprint, &rejects, halves_from_bytes) {
                Ok(counts) => counts,
                Err(_) => panic!("validation failed"),
            };
        assert!(!rejects.with_extension("tail.csv").exists());
        let text = std::fs::read(&rejects).unwrap_or_default();
        (counts.accepted, counts.rejected, text)
    }

    fn halves_used(content: &[u8]) -> bool {
        let (_dir, path, fingerprint, rejects) = proof_file(content);
        matches!(
            validate_in_halves(&import(), &path, &fingerprint, &rejects),
            Ok(Some(_))
        )
    }

    const GOOD: &str = "a@example.org;yes;2026-01-01 10:00:00;203.0.113.1\n";
    const BAD: &str = "not-an-email;yes;2026-01-01 10:00:00;203.0.113.1\n";

    #[test]
    fn halves_count_and_number_rejects_as_the_whole_file_does() {
        let content: String = (0..40)
            .map(|row| if row % 7 == 3 { BAD } else { GOOD })
            .collect();
        assert!(halves_used(content.as_bytes()));
        let whole = validated(content.as_bytes(), u64::MAX);
        assert_eq!(validated(content.as_bytes(), 0), whole);
        assert_eq!((whole.0, whole.1), (34, 6));
        // The tail's rejects keep the file's own line numbers.
        let text = String::from_utf8(whole.2).expect("utf-8");
        assert!(text.contains("\n39,"), "{text}");
    }

    #[test]
    fn a_middle_inside_a_quoted_field_reads_the_file_whole() {
        let mut content = GOOD.repeat(3);
        content.push_str("a@example.org;\"yes\n");
        content.push_str(&"and more\n".repeat(6));
        content.push_str("\";2026-01-01 10:00:00;203.0.113.1\n");
        content.push_str(&GOOD.repeat(2));
        assert!(!halves_used(content.as_bytes()));
        assert_eq!(
            validated(content.as_bytes(), 0),
            validated(content.as_bytes(), u64::MAX)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn halves_read_any_file_as_the_whole_does(
            pieces in proptest::collection::vec(0usize..9, 1..60)
        ) {
            let content: String = pieces
                .iter()
                .map(|piece| match piece {
                    0 | 1 => GOOD,
                    2 => BAD,
                    3 => "b@example.org;\"multi\nline\";2026-01-01 10:00:00;203.0.113.1\n",
                    4 => "c@example.org;yes;2026-01-01 10:00:00;203.0.113.1\r\n",
                    5 => "d@example.org;yes;2026-01-01 10:00:00;203.0.113.1\r",
                    6 => "\n",
                    7 => "e@example.org;\"a stray quote;2026-01-01 10:00:00;203.0.113.1\n",
                    _ => "f@example.org;far too long a text for the limit of sixty-four bytes;2026-01-01 10:00:00;1.1.1.1\n",
                })
                .collect();
            prop_assert_eq!(
                validated(content.as_bytes(), 0),
                validated(content.as_bytes(), u64::MAX)
            );
        }
    }
}
