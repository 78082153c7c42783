//! Reading records: a file's bytes, a read at a time → one split record at a time.
//!
//! Owns the read buffer, line numbers, the byte-order mark of a UTF-8 file,
//! and what happens to a record longer than the row size limit. Records are
//! split in place ([`super::split`]): a record is a range of the buffer and
//! its fields are ranges of the record. A record cut by the end of the
//! buffer is moved to its front before the next read; the buffer grows only
//! as far as `max_row_bytes` plus one read, and the splitter never looks
//! further than `max_row_bytes` + 1 bytes into a record, so a longer record
//! is skipped to its next line ending (quotes ignored: a stray quote must
//! not swallow the file) the same way however the input is read, keeping
//! only its first `max_row_bytes` bytes.
//!
//! It never decodes or judges a record, and holds one record at a time.
use std::io::Read;

use super::encoding::Input;
use super::split::{is_blank, Rec, Span, Split, Splitter};
use super::ParseError;

/// Size of one read, and the initial size of the read buffer.
pub(super) const READ_BUFFER: usize = 64 * 1024;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The records of one file, in order.
pub(super) struct Records<R: Read> {
    input: Input<R>,
    split: Splitter,
    /// The file is read as UTF-8: a byte-order mark at its start is skipped.
    skip_utf8_bom: bool,
    buf: Vec<u8>,
    /// Bytes of `buf` read from the input.
    end: usize,
    /// Where the next record starts in `buf`.
    pos: usize,
    started: bool,
    eof: bool,
    /// Line endings consumed so far.
    line: u64,
    /// The last byte consumed was a CR.
    prev_cr: bool,
    /// The record read last was ended by the end of the input, not by a line ending.
    ended_by_eof: bool,
    rec: Rec,
    /// The first `max_row_bytes` of a record that is too long.
    long_raw: Vec<u8>,
}

impl<R: Read> Records<R> {
    pub(super) fn new(input: Input<R>, split: Splitter, skip_utf8_bom: bool) -> Records<R> {
        Records {
            input,
            split,
            skip_utf8_bom,
            buf: vec![0; READ_BUFFER],
            end: 0,
            pos: 0,
            started: false,
            eof: false,
            line: 0,
            prev_cr: false,
            ended_by_eof: false,
            rec: Rec::new(),
            long_raw: Vec::new(),
        }
    }

    /// The record read last: where it starts, its fields, how it ended.
    pub(super) fn rec(&self) -> &Rec {
        &self.rec
    }

    pub(super) fn splitter(&self) -> &Splitter {
        &self.split
    }

    /// The bytes of the record read last, without its line ending; the
    /// spans of [`Records::spans`] are ranges of it.
    pub(super) fn record(&self) -> &[u8] {
        let start = self.rec.start;
        self.buf
            .get(start..start + self.rec.scan)
            .unwrap_or_default()
    }

    pub(super) fn spans(&self) -> &[Span] {
        &self.rec.spans
    }

    /// The record as a report quotes it: its first `max_row_bytes` bytes.
    pub(super) fn raw(&self) -> &[u8] {
        if self.rec.too_long {
            &self.long_raw
        } else {
            self.record()
        }
    }

    /// Line endings consumed so far, and whether the record read last was
    /// ended by the end of the input rather than by a line ending.
    pub(super) fn position(&self) -> (u64, bool) {
        (self.line, self.ended_by_eof)
    }

    /// Numbers the lines that follow after `lines`.
    pub(super) fn set_lines(&mut self, lines: u64) {
        self.line = lines;
    }

    /// Bytes held by the buffers, to check that memory stays bounded.
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
            + self.long_raw.capacity()
            + self.rec.spans.capacity() * std::mem::size_of::<Span>()
    }

    /// Splits the next record; false at the end of the file.
    pub(super) fn next(&mut self) -> Result<bool, ParseError> {
        // Skip the LF of a CRLF whose CR ended the last record.
        loop {
            if self.pos >= self.end {
                self.pos = 0;
                if !self.fill(self.end)? {
                    return Ok(false);
                }
                continue;
            }
            if self.prev_cr && self.buf.get(self.pos) == Some(&b'\n') {
                self.pos += 1;
                self.prev_cr = false;
                continue;
            }
            break;
        }
        self.rec.reset(self.pos, self.line + 1);
        self.ended_by_eof = false;
        loop {
            // The splitter never sees past `max_row_bytes` + 1 bytes, so where
            // a too-long record ends never depends on how much was read.
            let limit = self.end.min(self.rec.start + self.split.max + 1);
            let data = self.buf.get(self.rec.start..limit).unwrap_or_default();
            match self.rec.split(data, &self.split) {
                Split::Ended => {
                    let terminator = self.rec.start + self.rec.scan;
                    self.pos = terminator + 1;
                    self.prev_cr = self.buf.get(terminator) == Some(&b'\r');
                    self.line += self.rec.inner_lines + 1;
                    return Ok(true);
                }
                Split::More => {
                    let start = self.rec.start;
                    self.rec.start = 0;
                    if !self.fill(start)? {
                        // The end of the file ends the record.
                        self.ended_by_eof = true;
                        self.rec.scan = self.end;
                        self.pos = self.end;
                        self.rec.end_record(&self.split);
                        self.line += self.rec.inner_lines;
                        return Ok(true);
                    }
                }
                Split::TooLong => return self.skip_long_record().map(|()| true),
            }
        }
    }

    /// Reads more input after `end`, keeping `buf[keep..end]` (moved to the
    /// front). False at the end of the file.
    fn fill(&mut self, keep: usize) -> Result<bool, ParseError> {
        let kept = self.end.saturating_sub(keep);
        if kept > 0 {
            self.buf.copy_within(keep..self.end, 0);
        }
        self.end = kept;
        if self.eof {
            return Ok(false);
        }
        if self.end == self.buf.len() {
            // A record longer than the buffer but within max_row_bytes.
            let limit = self.split.max + 1 + READ_BUFFER;
            let grown = (self.buf.len() * 2).min(limit).max(self.end + 1);
            self.buf.resize(grown, 0);
        }
        loop {
            let Some(room) = self.buf.get_mut(self.end..) else {
                return Ok(false);
            };
            match self.input.read(room) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(k) => {
                    self.end += k;
                    // The first read gathers enough bytes to recognise a BOM.
                    if self.started || self.end >= UTF8_BOM.len() {
                        break;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err.into()),
            }
        }
        if !self.started {
            self.started = true;
            let head = self.buf.get(..self.end).unwrap_or_default();
            if self.skip_utf8_bom && head.starts_with(UTF8_BOM) {
                self.pos = UTF8_BOM.len();
            }
        }
        Ok(self.end > kept)
    }

    /// Keeps the first `max_row_bytes` of a too-long record and skips to its
    /// line ending, quotes ignored: a stray quote must not swallow the file.
    fn skip_long_record(&mut self) -> Result<(), ParseError> {
        let start = self.rec.start;
        self.long_raw.clear();
        self.long_raw.extend_from_slice(
            self.buf
                .get(start..start + self.split.max)
                .unwrap_or_default(),
        );
        let mut blank = self.rec.blank;
        self.rec.too_long = true;
        // The first `max_row_bytes` + 1 bytes were split already (line endings
        // in quotes counted); an LF after a CR counted there is part of it.
        self.pos = start + self.rec.scan;
        let mut after_cr = self.pos > start && self.buf.get(self.pos - 1) == Some(&b'\r');
        loop {
            if after_cr && self.pos < self.end {
                after_cr = false;
                if self.buf.get(self.pos) == Some(&b'\n') {
                    self.pos += 1;
                    continue;
                }
            }
            let data = self.buf.get(self.pos..self.end).unwrap_or_default();
            let stop = memchr::memchr2(b'\n', b'\r', data);
            let scanned = data.get(..stop.unwrap_or(data.len())).unwrap_or_default();
            blank = blank && scanned.iter().all(|&b| is_blank(b));
            if let Some(stop) = stop {
                self.prev_cr = data.get(stop) == Some(&b'\r');
                self.pos += stop + 1;
                break;
            }
            self.pos = self.end;
            if !self.fill(self.end)? {
                self.pos = 0;
                self.ended_by_eof = true;
                break;
            }
            self.pos = 0;
        }
        self.rec.blank = blank;
        self.line += self.rec.inner_lines + 1;
        Ok(())
    }
}
