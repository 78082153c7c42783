//! [`RowReader`]: the parts of `parse` put together, one record at a time.
//!
//! [`super::records`] reads and splits the next record (with
//! [`super::split`]), [`super::decode`] turns its fields into text, and
//! [`super::rules`] makes them a row or a reject; a header and blank lines
//! are skipped here. A [`Record`] borrows from these parts until the next
//! call, so nothing is copied per row beyond what each part keeps in its own
//! reused buffers.
//!
//! It owns no rule and no byte of the format itself: only the order in
//! which the parts run.
use std::io::Read;

use super::decode::Decoded;
use super::records::Records;
use super::rules::{is_header_field, Accepted, Origin, Purpose, Rules};
use super::split::{unquote, Splitter};
use super::{
    HeaderMode, ParseError, Record, Reject, RejectReason, ResolvedEncoding, Row, RowFormat,
};

/// Streams the records of one file.
///
/// Memory is bounded whatever the input: a read buffer of at most
/// `max_row_bytes` plus one read, and per-record buffers of about
/// `max_row_bytes` each.
pub struct RowReader<'f, R: Read> {
    format: &'f RowFormat,
    encoding: ResolvedEncoding,
    records: Records<R>,
    decoded: Decoded,
    rules: Rules<'f>,
    /// The first non-blank record is still to come (header detection).
    first: bool,
    done: bool,
}

impl<'f, R: Read> RowReader<'f, R> {
    pub fn new(input: R, format: &'f RowFormat, encoding: ResolvedEncoding) -> Self {
        let split = Splitter::new(format.separator.byte(), format.max_row_bytes);
        RowReader {
            format,
            encoding,
            records: Records::new(
                encoding.input(input),
                split,
                encoding == ResolvedEncoding::Utf8,
            ),
            decoded: Decoded::new(),
            rules: Rules::new(format),
            first: true,
            done: false,
        }
    }

    /// Reads the rest of a file from a record boundary: no header and no
    /// byte-order mark there, and the lines numbered after `lines_before`.
    /// The boundary is the caller's to prove, with [`RowReader::position`]
    /// of a reader of what comes before it.
    pub fn continuing(
        input: R,
        format: &'f RowFormat,
        encoding: ResolvedEncoding,
        lines_before: u64,
    ) -> Self {
        let split = Splitter::new(format.separator.byte(), format.max_row_bytes);
        let mut records = Records::new(encoding.input(input), split, false);
        records.set_lines(lines_before);
        RowReader {
            format,
            encoding,
            records,
            decoded: Decoded::new(),
            rules: Rules::new(format),
            first: false,
            done: false,
        }
    }

    /// Line endings read so far, and whether the record read last was ended
    /// by the end of the input (a quote or an over-long record still open
    /// there) rather than by a line ending.
    pub fn position(&self) -> (u64, bool) {
        self.records.position()
    }

    /// The next row or reject; `None` at the end of the file. Blank lines and
    /// a header are skipped.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ParseError> {
        let verdict = loop {
            if self.done {
                return Ok(None);
            }
            if !self.records.next()? {
                self.done = true;
                return Ok(None);
            }
            if self.records.rec().blank {
                continue;
            }
            if let Some(verdict) = self.evaluate() {
                break verdict;
            }
        };
        let line = self.records.rec().line;
        let raw = self.records.raw();
        Ok(Some(match verdict {
            Err(reason) => Record::Reject(Reject { line, reason, raw }),
            Ok(Accepted {
                purpose,
                text,
                instant,
                origin,
            }) => Record::Row(Row {
                line,
                email: self.rules.email(),
                purpose_id: match purpose {
                    Purpose::Config(id) => id,
                    Purpose::Passthrough => self.rules.purpose_id(),
                },
                purpose_text: self.decoded.text(text),
                instant,
                origin: match origin {
                    Origin::Field(index) => self.decoded.text(index),
                    Origin::Canonical => self.rules.origin(),
                },
                raw,
            }),
        }))
    }

    /// Capacity of the reader's buffers, to check that memory stays bounded.
    #[doc(hidden)]
    pub fn buffered_capacity(&self) -> usize {
        self.records.capacity() + self.decoded.capacity() + self.rules.capacity()
    }

    /// The record just split as a row or a reject; `None` for a header.
    fn evaluate(&mut self) -> Option<Result<Accepted<'f>, RejectReason>> {
        let rec = self.records.rec();
        if std::mem::take(&mut self.first) {
            match self.format.header {
                HeaderMode::Present => return None,
                HeaderMode::Auto if !rec.too_long && self.is_header() => return None,
                _ => {}
            }
        }
        let rec = self.records.rec();
        if rec.too_long {
            let max = self.records.splitter().max;
            return Some(Err(if rec.too_long_quoted {
                RejectReason::QuotedTooLong { max }
            } else {
                RejectReason::TooLong { max }
            }));
        }
        if rec.unterminated {
            return Some(Err(RejectReason::UnterminatedQuote));
        }
        let decoded = self.decoded.decode(
            self.records.record(),
            self.records.spans(),
            rec.fields,
            self.encoding,
        );
        Some(decoded.and_then(|()| self.rules.check(&self.decoded)))
    }

    /// Whether the record just split is a header (its bytes, before decoding).
    fn is_header(&self) -> bool {
        let Some(first) = self.records.spans().first() else {
            return false;
        };
        let field = self
            .records
            .record()
            .get(first.start..first.end)
            .unwrap_or_default();
        if first.cook {
            // Once a file, at most.
            let mut unquoted = Vec::new();
            unquote(field, &mut unquoted);
            return is_header_field(&unquoted);
        }
        is_header_field(field)
    }
}
