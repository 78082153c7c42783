//! The record splitter and row validation behind [`RowReader`].
//!
//! Records are split in place in one read buffer: a record is a range of the
//! buffer and its fields are ranges of the record. A record cut by the end of
//! the buffer is moved to its front before the next read; the buffer grows
//! only as far as `max_row_bytes` plus one read, and the splitter never looks
//! further than `max_row_bytes` + 1 bytes into a record, so a longer record
//! is skipped to its next line ending (quotes ignored) the same way however
//! the input is read, keeping only its first `max_row_bytes` bytes.
//!
//! A record is copied once, into `record_text`, after its UTF-8 check (or when
//! a single-byte record is pure ASCII); its fields are slices of that. Only
//! fields with `""` escapes and non-ASCII single-byte text are copied again
//! (into `cooked` and `decoded`). Nothing is allocated per row once the
//! buffers have grown to the file's longest row.
use std::fmt::Write as _;
use std::io::Read;
use std::net::IpAddr;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};

use super::date::ZoneCache;
use super::encoding::Input;
use super::{
    shown, HeaderMode, ParseError, Record, Reject, RejectReason, ResolvedEncoding, Row, RowFormat,
    UnknownSubscription,
};

/// Size of one read, and the initial size of the read buffer.
pub(super) const READ_BUFFER: usize = 64 * 1024;
/// Field spans kept per record; a record with more fields is rejected anyway.
const MAX_SPANS: usize = 64;
/// At most this many characters of a field are quoted in a reject reason.
const SHOWN: usize = 100;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const FIELD_NAMES: [&str; 5] = [
    "e-mail",
    "purpose text",
    "date",
    "origin",
    "subscription id",
];

/// Where the splitter is inside the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a field's first non-blank byte.
    FieldStart,
    /// Inside an unquoted field (or after text that followed a closing quote).
    Unquoted,
    /// Inside a quoted field.
    Quoted,
    /// Just after a quote inside a quoted field: `""` or the closing quote.
    QuoteInQuoted,
    /// After a closing quote, before the separator.
    AfterClose,
}

/// A field of the current record, as a range of the record's bytes.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    quoted: bool,
    /// The range is the whole raw field, from its opening quote, and must be
    /// unquoted (it holds `""` escapes or text after the closing quote).
    cook: bool,
}

/// Where a field's text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The reader's `record_text` (the record, checked UTF-8).
    Record,
    /// The reader's `decoded` string.
    Decoded,
}

/// A field's text, trimmed.
#[derive(Debug, Clone, Copy)]
struct Field {
    source: Source,
    start: usize,
    end: usize,
    quoted: bool,
}

impl Field {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// The separator and row size limit of a reader.
struct Splitter {
    sep: u8,
    space: bool,
    max: usize,
}

impl Splitter {
    fn new(sep: u8, max: usize) -> Splitter {
        Splitter {
            sep,
            space: sep == b' ',
            max,
        }
    }
}

/// What splitting the bytes at hand gave.
enum Split {
    /// The record ends at `scan` (its line ending, or the end of the file).
    Ended,
    /// The bytes at hand end inside the record.
    More,
    /// The record is longer than `max_row_bytes`.
    TooLong,
}

/// The record being split.
struct Rec {
    /// Where the record starts in the read buffer.
    start: usize,
    /// Offset (from `start`) of the next byte to split.
    scan: usize,
    spans: Vec<Span>,
    fields: usize,
    state: State,
    field_start: usize,
    field_quoted: bool,
    /// Offset of the last quote seen in the current quoted field.
    close: usize,
    cook: bool,
    /// Line endings inside quoted fields.
    inner_lines: u64,
    blank: bool,
    too_long: bool,
    /// The row size limit was reached inside a quoted field.
    too_long_quoted: bool,
    unterminated: bool,
    line: u64,
}

impl Rec {
    fn new() -> Rec {
        Rec {
            start: 0,
            scan: 0,
            spans: Vec::new(),
            fields: 0,
            state: State::FieldStart,
            field_start: 0,
            field_quoted: false,
            close: 0,
            cook: false,
            inner_lines: 0,
            blank: true,
            too_long: false,
            too_long_quoted: false,
            unterminated: false,
            line: 0,
        }
    }

    /// Starts a new record, keeping the allocation of `spans`.
    fn reset(&mut self, start: usize, line: u64) {
        let mut spans = std::mem::take(&mut self.spans);
        spans.clear();
        *self = Rec {
            start,
            line,
            spans,
            ..Rec::new()
        };
    }

    /// Ends the current field at `end` (the separator or line ending).
    fn end_field(&mut self, end: usize) {
        if self.spans.len() < MAX_SPANS {
            let span = if self.cook {
                Span {
                    start: self.field_start,
                    end,
                    quoted: true,
                    cook: true,
                }
            } else if self.field_quoted {
                Span {
                    start: self.field_start + 1,
                    end: self.close.max(self.field_start + 1),
                    quoted: true,
                    cook: false,
                }
            } else {
                Span {
                    start: self.field_start,
                    end,
                    quoted: false,
                    cook: false,
                }
            };
            self.spans.push(span);
        }
        self.fields += 1;
        self.field_quoted = false;
        self.cook = false;
        self.state = State::FieldStart;
    }

    /// Closes the last field at the record's end (line ending or end of file).
    fn end_record(&mut self, split: &Splitter) {
        match self.state {
            State::FieldStart => {
                // `a;b;` ends with an empty field; spaces at the end of a
                // space-separated record do not make one.
                if self.fields > 0 && !split.space {
                    self.field_start = self.scan;
                    self.end_field(self.scan);
                }
            }
            State::Quoted => {
                self.unterminated = true;
                self.end_field(self.scan);
            }
            _ => self.end_field(self.scan),
        }
    }

    /// Splits `data` (the record's bytes so far, from its start) from `scan`.
    fn split(&mut self, data: &[u8], split: &Splitter) -> Split {
        loop {
            if self.scan > split.max {
                self.too_long_quoted = self.state == State::Quoted;
                return Split::TooLong;
            }
            let Some(&b) = data.get(self.scan) else {
                return Split::More;
            };
            match self.state {
                State::FieldStart => {
                    if b == split.sep && !split.space {
                        self.blank = false;
                        self.field_start = self.scan;
                        self.end_field(self.scan);
                        self.scan += 1;
                    } else if b == b' ' || b == b'\t' {
                        self.scan += 1;
                    } else if b == b'\n' || b == b'\r' {
                        self.end_record(split);
                        return Split::Ended;
                    } else {
                        self.blank = false;
                        self.field_start = self.scan;
                        if b == b'"' {
                            self.field_quoted = true;
                            self.state = State::Quoted;
                            self.scan += 1;
                        } else {
                            self.state = State::Unquoted;
                        }
                    }
                }
                State::Unquoted => {
                    let i = find_any(data, self.scan, [split.sep, b'\r', b'\n']);
                    self.scan = i;
                    if i > split.max {
                        continue;
                    }
                    match data.get(i) {
                        Some(&b) if b == split.sep => {
                            self.end_field(i);
                            self.scan += 1;
                        }
                        Some(_) => {
                            self.end_record(split);
                            return Split::Ended;
                        }
                        None => {}
                    }
                }
                State::Quoted => {
                    let i = find_any(data, self.scan, [b'"', b'\r', b'\n']);
                    self.scan = i;
                    match data.get(i) {
                        Some(b'"') => {
                            self.close = i;
                            self.state = State::QuoteInQuoted;
                        }
                        Some(b'\r') => {
                            // Written `\n` in the field: it must be rewritten.
                            self.inner_lines += 1;
                            self.cook = true;
                        }
                        Some(_) => {
                            // An LF: one more line unless it ends a CRLF.
                            if i.checked_sub(1).and_then(|p| data.get(p)) != Some(&b'\r') {
                                self.inner_lines += 1;
                            }
                        }
                        None => continue,
                    }
                    self.scan += 1;
                }
                State::QuoteInQuoted if b == b'"' => {
                    // `""`: an escaped quote, the field goes on.
                    self.cook = true;
                    self.state = State::Quoted;
                    self.scan += 1;
                }
                // Otherwise that quote closed the field: the same as after blanks.
                State::QuoteInQuoted | State::AfterClose => {
                    if b == split.sep {
                        self.end_field(self.scan);
                        self.scan += 1;
                    } else if b == b'\n' || b == b'\r' {
                        self.end_record(split);
                        return Split::Ended;
                    } else if b == b' ' || b == b'\t' {
                        self.state = State::AfterClose;
                        self.scan += 1;
                    } else {
                        // Lenient: text right after a closing quote is kept.
                        self.cook = true;
                        self.state = State::Unquoted;
                    }
                }
            }
        }
    }
}

/// The first index from `from` of a byte among `stops` (or `data.len()`),
/// eight bytes at a time.
fn find_any(data: &[u8], from: usize, stops: [u8; 3]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let [a, b, c] = stops.map(|s| ONES * u64::from(s));
    let mut i = from;
    while let Some(chunk) = data.get(i..i + 8) {
        let word = u64::from_le_bytes(<[u8; 8]>::try_from(chunk).unwrap_or([0; 8]));
        if has_zero(word ^ a) | has_zero(word ^ b) | has_zero(word ^ c) != 0 {
            break;
        }
        i += 8;
    }
    while let Some(&byte) = data.get(i) {
        if stops.contains(&byte) {
            break;
        }
        i += 1;
    }
    i
}

/// The text of a raw quoted field (from its opening quote): `""` is a quote,
/// a line break (CRLF, CR or LF) is `\n`, blanks after the closing quote are
/// dropped, text after them is kept.
fn unquote(raw: &[u8], out: &mut Vec<u8>) {
    let mut bytes = raw.get(1..).unwrap_or_default().iter().peekable();
    while let Some(&b) = bytes.next() {
        if b == b'\r' {
            bytes.next_if_eq(&&b'\n');
            out.push(b'\n');
        } else if b != b'"' {
            out.push(b);
        } else if bytes.next_if_eq(&&b'"').is_some() {
            out.push(b'"');
        } else {
            break;
        }
    }
    while bytes.next_if(|&&b| b == b' ' || b == b'\t').is_some() {}
    out.extend(bytes);
}

/// Where a row's purpose id comes from.
enum PurposeSource<'f> {
    Config(&'f str),
    /// The reader's `purpose_id` buffer (passthrough).
    Buffer,
}

/// Where a row's origin comes from.
enum OriginSource {
    Field(Field),
    /// The reader's `origin` buffer (a canonical IP address).
    Buffer,
}

/// What `evaluate` decided about the current record, without borrowing it.
enum Verdict<'f> {
    Reject(RejectReason),
    Row {
        purpose: PurposeSource<'f>,
        text: Field,
        instant: DateTime<Utc>,
        origin: OriginSource,
    },
}

fn reject<'f>(reason: RejectReason) -> Option<Verdict<'f>> {
    Some(Verdict::Reject(reason))
}

/// A field's text, from the record's text or from `decoded`.
fn text_in<'a>(record_text: &'a str, decoded: &'a str, field: Field) -> &'a str {
    match field.source {
        Source::Record => record_text.get(field.start..field.end),
        Source::Decoded => decoded.get(field.start..field.end),
    }
    .unwrap_or_default()
}

/// `str::trim`, quicker when the text starts and ends with ASCII.
fn trim(text: &str) -> &str {
    let ascii = text.trim_ascii();
    let bytes = ascii.as_bytes();
    if bytes.first().is_some_and(|&b| b >= 0x80) || bytes.last().is_some_and(|&b| b >= 0x80) {
        ascii.trim()
    } else {
        ascii
    }
}

/// Whether UTF-8 `bytes` may hold a control character (C0, DEL or C1).
fn may_contain_control(bytes: &[u8], allow_tab: bool) -> bool {
    let tab = if allow_tab { b'\t' } else { 0xFF };
    // No early exit, so these folds vectorise.
    let c0 = bytes.iter().fold(0u8, |seen, &b| {
        seen | (u8::from(b < 0x20) & u8::from(b != tab)) | u8::from(b == 0x7F)
    });
    let c2 = bytes
        .iter()
        .fold(0u8, |seen, &b| seen | u8::from(b == 0xC2));
    // C1 controls are C2 80..C2 9F; other C2 sequences (« ° ©) are common.
    c0 != 0
        || (c2 != 0
            && bytes
                .windows(2)
                .any(|pair| pair[0] == 0xC2 && (0x80..=0x9F).contains(&pair[1])))
}

/// The first control character of `text`, if any: a tab is allowed when it
/// is the separator, and a line break (only a quoted field can hold one, and
/// it is `\n` by then) always.
fn control_char(text: &str, allow_tab: bool) -> Option<u32> {
    text.chars()
        .find(|&c| c.is_control() && c != '\n' && !(allow_tab && c == '\t'))
        .map(u32::from)
}

/// Why a (lower-cased, trimmed) e-mail is not plausible.
fn email_problem(email: &str) -> Option<&'static str> {
    let bytes = email.as_bytes();
    let ats = bytes
        .iter()
        .fold(0usize, |n, &b| n + usize::from(b == b'@'));
    match ats {
        0 => return Some("it has no @"),
        1 => {}
        _ => return Some("it has more than one @"),
    }
    let at = bytes.iter().position(|&b| b == b'@').unwrap_or_default();
    if at == 0 {
        return Some("nothing before the @");
    }
    // Control characters are refused before: at or below a space is a blank.
    let odd = bytes
        .iter()
        .fold(0u8, |odd, &b| odd | u8::from(b <= b' ') | (b & 0x80));
    if odd != 0 && email.chars().any(char::is_whitespace) {
        return Some("it contains whitespace");
    }
    let domain = bytes.get(at + 1..).unwrap_or_default();
    let Some(last_dot) = domain.iter().rposition(|&b| b == b'.') else {
        return Some("the domain has no dot");
    };
    if domain.first() == Some(&b'.') || last_dot + 1 == domain.len() {
        return Some("the domain starts or ends with a dot");
    }
    if bytes.len() > 254 && email.chars().count() > 254 {
        return Some("it is longer than 254 characters");
    }
    None
}

/// Streams the records of one file.
///
/// Memory is bounded whatever the input: a read buffer of at most
/// `max_row_bytes` plus one read, and per-record buffers of about
/// `max_row_bytes` each.
pub struct RowReader<'f, R: Read> {
    input: Input<R>,
    format: &'f RowFormat,
    encoding: ResolvedEncoding,
    split: Splitter,
    /// Spaces in a date, rejoined with the space separator.
    date_spaces: usize,
    /// The subscriptions table, sorted by id (faster than hashing a few ids).
    subscriptions: Vec<(u64, &'f str)>,
    buf: Vec<u8>,
    /// Bytes of `buf` read from the input.
    end: usize,
    /// Where the next record starts in `buf`.
    pos: usize,
    started: bool,
    eof: bool,
    done: bool,
    /// Line endings consumed so far.
    line: u64,
    /// The last byte consumed was a CR.
    prev_cr: bool,
    /// The first non-blank record is still to come (header detection).
    first: bool,
    rec: Rec,
    /// The first `max_row_bytes` of a record that is too long.
    long_raw: Vec<u8>,
    /// The current record as text, once checked to be UTF-8.
    record_text: String,
    /// Unquoted text of fields with `""` escapes.
    cooked: Vec<u8>,
    /// Decoded text of fields not read in place from the record.
    decoded: String,
    fields: Vec<Field>,
    email: String,
    date: String,
    origin: String,
    purpose_id: String,
    zones: ZoneCache,
}

impl<'f, R: Read> RowReader<'f, R> {
    pub fn new(input: R, format: &'f RowFormat, encoding: ResolvedEncoding) -> Self {
        let sep = format.separator.byte();
        let max = format.max_row_bytes.max(1);
        let mut subscriptions: Vec<(u64, &'f str)> = format
            .purposes
            .subscriptions
            .iter()
            .map(|(&id, purpose)| (id, purpose.as_str()))
            .collect();
        subscriptions.sort_unstable();
        RowReader {
            input: encoding.input(input),
            format,
            encoding,
            split: Splitter::new(sep, max),
            date_spaces: if sep == b' ' {
                format.date_format.space_count()
            } else {
                0
            },
            subscriptions,
            buf: vec![0; READ_BUFFER],
            end: 0,
            pos: 0,
            started: false,
            eof: false,
            done: false,
            line: 0,
            prev_cr: false,
            first: true,
            rec: Rec::new(),
            long_raw: Vec::new(),
            record_text: String::new(),
            cooked: Vec::new(),
            decoded: String::new(),
            fields: Vec::new(),
            email: String::new(),
            date: String::new(),
            origin: String::new(),
            purpose_id: String::new(),
            zones: ZoneCache::new(),
        }
    }

    /// The next row or reject; `None` at the end of the file. Blank lines and
    /// a header are skipped.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ParseError> {
        let verdict = loop {
            if self.done {
                return Ok(None);
            }
            if !self.read_record()? {
                self.done = true;
                return Ok(None);
            }
            if self.rec.blank {
                continue;
            }
            if let Some(verdict) = self.evaluate() {
                break verdict;
            }
        };
        let line = self.rec.line;
        Ok(Some(match verdict {
            Verdict::Reject(reason) => Record::Reject(Reject {
                line,
                reason,
                raw: self.raw(),
            }),
            Verdict::Row {
                purpose,
                text,
                instant,
                origin,
            } => Record::Row(Row {
                line,
                email: &self.email,
                purpose_id: match purpose {
                    PurposeSource::Config(id) => id,
                    PurposeSource::Buffer => &self.purpose_id,
                },
                purpose_text: self.text(text),
                instant,
                origin: match origin {
                    OriginSource::Field(field) => self.text(field),
                    OriginSource::Buffer => &self.origin,
                },
                raw: self.raw(),
            }),
        }))
    }

    /// Capacity of the reader's buffers, to check that memory stays bounded.
    #[doc(hidden)]
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
            + self.long_raw.capacity()
            + self.record_text.capacity()
            + self.cooked.capacity()
            + self.rec.spans.capacity() * std::mem::size_of::<Span>()
            + self.decoded.capacity()
            + self.fields.capacity() * std::mem::size_of::<Field>()
            + self.email.capacity()
            + self.date.capacity()
            + self.origin.capacity()
            + self.purpose_id.capacity()
    }

    /// The current record's bytes, without its line ending.
    fn raw(&self) -> &[u8] {
        if self.rec.too_long {
            &self.long_raw
        } else {
            self.record()
        }
    }

    fn record(&self) -> &[u8] {
        let start = self.rec.start;
        self.buf
            .get(start..start + self.rec.scan)
            .unwrap_or_default()
    }

    fn text(&self, field: Field) -> &str {
        text_in(&self.record_text, &self.decoded, field)
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
            if self.encoding == ResolvedEncoding::Utf8
                && self
                    .buf
                    .get(..self.end)
                    .is_some_and(|b| b.starts_with(UTF8_BOM))
            {
                self.pos = UTF8_BOM.len();
            }
        }
        Ok(self.end > kept)
    }

    /// Splits the next record into `rec`; false at the end of the file.
    fn read_record(&mut self) -> Result<bool, ParseError> {
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
            let stop = data.iter().position(|&b| b == b'\n' || b == b'\r');
            let scanned = data.get(..stop.unwrap_or(data.len())).unwrap_or_default();
            blank = blank && scanned.iter().all(|&b| b == b' ' || b == b'\t');
            if let Some(stop) = stop {
                self.prev_cr = data.get(stop) == Some(&b'\r');
                self.pos += stop + 1;
                break;
            }
            self.pos = self.end;
            if !self.fill(self.end)? {
                self.pos = 0;
                break;
            }
            self.pos = 0;
        }
        self.rec.blank = blank;
        self.line += self.rec.inner_lines + 1;
        Ok(())
    }

    fn is_header(&mut self) -> bool {
        let Some(&first) = self.rec.spans.first() else {
            return false;
        };
        let record = self
            .buf
            .get(self.rec.start..self.rec.start + self.rec.scan)
            .unwrap_or_default();
        let mut field = record.get(first.start..first.end).unwrap_or_default();
        if first.cook {
            self.cooked.clear();
            unquote(field, &mut self.cooked);
            field = &self.cooked;
        }
        let field = field.trim_ascii();
        let field = field.strip_prefix(UTF8_BOM).unwrap_or(field);
        field.trim_ascii().eq_ignore_ascii_case(b"email")
    }

    /// Validates the record just split; `None` for a header.
    fn evaluate(&mut self) -> Option<Verdict<'f>> {
        let format: &'f RowFormat = self.format;
        if std::mem::take(&mut self.first) {
            match format.header {
                HeaderMode::Present => return None,
                HeaderMode::Auto if !self.rec.too_long && self.is_header() => return None,
                _ => {}
            }
        }
        if self.rec.too_long {
            let max = self.split.max;
            return reject(if self.rec.too_long_quoted {
                RejectReason::QuotedTooLong { max }
            } else {
                RejectReason::TooLong { max }
            });
        }
        if self.rec.unterminated {
            return reject(RejectReason::UnterminatedQuote);
        }
        let RowReader {
            buf,
            rec,
            encoding,
            split,
            date_spaces,
            subscriptions,
            record_text,
            cooked,
            decoded,
            fields,
            email: email_buf,
            date: date_buf,
            origin: origin_buf,
            purpose_id,
            zones,
            ..
        } = self;
        let record = buf.get(rec.start..rec.start + rec.scan).unwrap_or_default();
        // One copy of the record as text (UTF-8, or an ASCII record in a
        // single-byte encoding): its fields are then plain slices of it.
        record_text.clear();
        let in_place = if encoding.splits_utf8() {
            match std::str::from_utf8(record) {
                Ok(text) => record_text.push_str(text),
                Err(_) if *encoding == ResolvedEncoding::Utf8 => {
                    return reject(RejectReason::InvalidUtf8)
                }
                Err(_) => return reject(RejectReason::InvalidUtf16),
            }
            true
        } else if record.is_ascii() {
            record_text.push_str(std::str::from_utf8(record).unwrap_or_default());
            true
        } else {
            false
        };
        decode_fields(
            record,
            record_text,
            *encoding,
            in_place,
            &rec.spans,
            cooked,
            decoded,
            fields,
        );
        let (record_text, decoded): (&str, &str) = (record_text, decoded);
        let text_of = |field: Field| text_in(record_text, decoded, field);
        let field = |index: usize| {
            fields.get(index).copied().unwrap_or(Field {
                source: Source::Decoded,
                start: 0,
                end: 0,
                quoted: false,
            })
        };

        // With the space separator an unquoted date is several tokens.
        let count = rec.fields;
        let date_quoted = fields.get(2).is_none_or(|f| f.quoted);
        let extra = if *date_spaces > 0 && !date_quoted {
            let first = text_of(field(2));
            (format.date_format.spaces_in(first)).min(count.saturating_sub(3))
        } else {
            0
        };
        let found = count - extra;
        if !(4..=5).contains(&found) || count > fields.len() {
            return reject(RejectReason::FieldCount { found });
        }
        let allow_tab = split.sep == b'\t';
        if may_contain_control(record, allow_tab)
            || may_contain_control(decoded.as_bytes(), allow_tab)
        {
            for (index, &field) in fields.iter().enumerate() {
                if let Some(code) = control_char(text_of(field), allow_tab) {
                    let logical = if index < 2 {
                        index
                    } else if index <= 2 + extra {
                        2
                    } else {
                        index - extra
                    };
                    return reject(RejectReason::ControlCharacter {
                        field: FIELD_NAMES.get(logical).copied().unwrap_or("a field"),
                        code,
                    });
                }
            }
        }

        let email = field(0);
        let text = field(1);
        let origin = field(3 + extra);
        let subscription = (found == 5).then(|| field(4 + extra));
        let date = if extra > 0 {
            date_buf.clear();
            for index in 2..=2 + extra {
                if !date_buf.is_empty() {
                    date_buf.push(' ');
                }
                date_buf.push_str(text_of(field(index)));
            }
            date_buf.as_str()
        } else {
            text_of(field(2))
        };
        for (empty, name) in [
            (email.is_empty(), FIELD_NAMES[0]),
            (text.is_empty(), FIELD_NAMES[1]),
            (date.is_empty(), FIELD_NAMES[2]),
            (origin.is_empty(), FIELD_NAMES[3]),
        ] {
            if empty {
                return reject(RejectReason::EmptyField { field: name });
            }
        }

        // E-mail: lower-cased, then checked.
        let email_text = text_of(email);
        email_buf.clear();
        if email_text.is_ascii() {
            email_buf.push_str(email_text);
            email_buf.make_ascii_lowercase();
        } else {
            for c in email_text.chars() {
                email_buf.extend(c.to_lowercase());
            }
        }
        if let Some(why) = email_problem(email_buf) {
            return reject(RejectReason::InvalidEmail {
                email: shown(email_buf, SHOWN),
                why,
            });
        }

        let instant = match format
            .date_format
            .parse_cached(date, format.timezone, zones)
        {
            Ok(instant) => instant,
            Err(err) => return reject(RejectReason::InvalidDate(err)),
        };

        let purposes = &format.purposes;
        let sub_text = subscription.map(text_of).unwrap_or_default();
        let purpose = if sub_text.is_empty() {
            PurposeSource::Config(purposes.default_purpose.as_str())
        } else {
            let digits = sub_text.trim_start_matches('0');
            if !sub_text.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 18 {
                return reject(RejectReason::InvalidSubscription {
                    value: shown(sub_text, SHOWN),
                });
            }
            let id = digits
                .bytes()
                .fold(0u64, |n, b| n * 10 + u64::from(b - b'0'));
            match subscriptions.binary_search_by_key(&id, |&(key, _)| key) {
                Ok(found) => PurposeSource::Config(
                    subscriptions.get(found).map_or("", |&(_, purpose)| purpose),
                ),
                Err(_) => match purposes.unknown {
                    UnknownSubscription::Reject => {
                        return reject(RejectReason::UnknownSubscription { id })
                    }
                    UnknownSubscription::Default => {
                        PurposeSource::Config(purposes.default_purpose.as_str())
                    }
                    UnknownSubscription::Passthrough => {
                        purpose_id.clear();
                        let _ = write!(purpose_id, "{id}");
                        PurposeSource::Buffer
                    }
                },
            }
        };

        let origin_text = text_of(origin);
        let origin = if !origin_text.bytes().any(|b| b == b':') {
            // Rust's IPv4 syntax (four decimal octets, no leading zeros) is
            // already canonical: nothing to rewrite.
            OriginSource::Field(origin)
        } else if let Ok(ip) = origin_text.parse::<IpAddr>() {
            origin_buf.clear();
            let _ = write!(origin_buf, "{ip}");
            OriginSource::Buffer
        } else {
            OriginSource::Field(origin)
        };

        Some(Verdict::Row {
            purpose,
            text,
            instant,
            origin,
        })
    }
}

/// Turns a record's spans into trimmed fields: in place for UTF-8, else
/// decoded (and unquoted where needed) into `decoded`.
#[allow(clippy::too_many_arguments)]
fn decode_fields(
    record: &[u8],
    record_text: &str,
    encoding: ResolvedEncoding,
    in_place: bool,
    spans: &[Span],
    cooked: &mut Vec<u8>,
    decoded: &mut String,
    fields: &mut Vec<Field>,
) {
    fields.clear();
    cooked.clear();
    let mut out = std::mem::take(decoded).into_bytes();
    out.clear();
    for span in spans {
        if in_place && !span.cook {
            fields.push(Field {
                source: Source::Record,
                start: span.start,
                end: span.end,
                quoted: span.quoted,
            });
            continue;
        }
        let mut bytes = record.get(span.start..span.end).unwrap_or_default();
        if span.cook {
            let from = cooked.len();
            unquote(bytes, cooked);
            bytes = cooked.get(from..).unwrap_or_default();
        }
        let from = out.len();
        match encoding {
            // Quotes removed from valid UTF-8 leave valid UTF-8.
            ResolvedEncoding::Utf8 | ResolvedEncoding::Utf16Le | ResolvedEncoding::Utf16Be => {
                out.extend_from_slice(bytes)
            }
            ResolvedEncoding::Windows1252 => decode_single_byte(bytes, true, &mut out),
            ResolvedEncoding::Iso8859_1 => decode_single_byte(bytes, false, &mut out),
        }
        fields.push(Field {
            source: Source::Decoded,
            start: from,
            end: out.len(),
            quoted: span.quoted,
        });
    }
    // Always valid: UTF-8 checked before, or produced from the tables.
    *decoded = String::from_utf8(out).unwrap_or_else(|err| {
        let mut bytes = err.into_bytes();
        bytes.clear();
        String::from_utf8(bytes).unwrap_or_default()
    });
    for field in fields.iter_mut() {
        let text = text_in(record_text, decoded, *field);
        let trimmed = trim(text);
        field.start += trimmed.as_ptr() as usize - text.as_ptr() as usize;
        field.end = field.start + trimmed.len();
    }
}

/// UTF-8 of each byte of a single-byte encoding: the bytes and their count.
type Utf8Table = [([u8; 3], u8); 256];

fn utf8_table(cp1252: bool) -> &'static Utf8Table {
    fn build(decode: impl Fn(u8) -> char) -> Utf8Table {
        let mut table = [([0u8; 3], 1u8); 256];
        for (byte, slot) in (0u8..=255).zip(table.iter_mut()) {
            let mut utf8 = [0u8; 4];
            let encoded = decode(byte).encode_utf8(&mut utf8).len();
            // Every char of these tables is in the BMP: at most three bytes.
            slot.0.copy_from_slice(utf8.get(..3).unwrap_or(&[0; 3]));
            slot.1 = u8::try_from(encoded.min(3)).unwrap_or(3);
        }
        table
    }
    static CP1252: OnceLock<Utf8Table> = OnceLock::new();
    static LATIN1: OnceLock<Utf8Table> = OnceLock::new();
    if cp1252 {
        CP1252.get_or_init(|| {
            build(|byte| {
                let bytes = [byte];
                let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&bytes);
                text.chars().next().unwrap_or('\u{FFFD}')
            })
        })
    } else {
        LATIN1.get_or_init(|| build(char::from))
    }
}

/// Appends the UTF-8 of `bytes` read in windows-1252 or ISO-8859-1.
fn decode_single_byte(mut bytes: &[u8], cp1252: bool, out: &mut Vec<u8>) {
    let table = utf8_table(cp1252);
    while !bytes.is_empty() {
        // ASCII runs are copied as they are.
        let run = bytes.iter().position(|&b| b >= 0x80).unwrap_or(bytes.len());
        let (ascii, rest) = bytes.split_at(run);
        out.extend_from_slice(ascii);
        let Some((&b, rest)) = rest.split_first() else {
            break;
        };
        let ([first, second, third], len) = table[usize::from(b)];
        out.push(first);
        if len > 1 {
            out.push(second);
        }
        if len > 2 {
            out.push(third);
        }
        bytes = rest;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquote_follows_the_splitter() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"\"a\"\"b\"", b"a\"b"),
            (b"\"a\"  ", b"a"),
            (b"\"a\" x\"y", b"ax\"y"),
            (b"\"\"\"\"", b"\""),
            (b"\"a;b\"c", b"a;bc"),
        ];
        for (raw, want) in cases {
            let mut out = Vec::new();
            unquote(raw, &mut out);
            assert_eq!(out, want, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn email_rules() {
        assert_eq!(email_problem("jane@example.com"), None);
        assert_eq!(email_problem("élodie@exemple.fr"), None);
        assert_eq!(
            email_problem("jane\u{a0}doe@example.com"),
            Some("it contains whitespace")
        );
        assert_eq!(email_problem("a@b.c"), None);
    }
}
