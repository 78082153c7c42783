//! Record splitting: the bytes of one record → its field spans.
//!
//! Owns the dialect of SPEC §1 at the byte level: the separator (with the
//! space separator a run of spaces is one separator), `"` quoting with `""`
//! for a quote, blanks before a field (so `  "a;b"` is quoted) and after a
//! closing quote, line breaks inside quotes, the line ending (LF, CR or CRLF)
//! that ends a record, and how far into a record the row size limit lets it
//! look. Lenient where partners' tools are: a quote inside an unquoted field
//! is a character, and text after a closing quote is kept.
//!
//! [`Rec::split`] works on the bytes at hand and resumes where it stopped
//! when more arrive, so a record splits the same however the input is cut
//! into reads ([`super::records`] does the reading). It never reads input,
//! never decodes text, never judges a field, and allocates nothing once the
//! span list has grown to the widest record.
//!
//! Why not `csv-core`: on the same 1M-row file this splitter is about 1.4×
//! faster (`examples/split_bench.rs`), and csv-core cannot express blanks
//! before a quote, runs of spaces or the row limit; `split_diff.rs` checks
//! both agree on the rest of the dialect.

use memchr::memchr3;

/// Field spans kept per record; a record with more fields is rejected anyway.
pub(super) const MAX_SPANS: usize = 64;

/// Where the splitter is inside the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) quoted: bool,
    /// The range is the whole raw field, from its opening quote, and must be
    /// unquoted with [`unquote`] (it holds `""` escapes, line breaks to
    /// rewrite, or text after the closing quote).
    pub(super) cook: bool,
}

/// The separator and row size limit of a reader.
#[derive(Debug, Clone, Copy)]
pub(super) struct Splitter {
    pub(super) sep: u8,
    pub(super) space: bool,
    /// The row size limit, `max_row_bytes` (at least 1).
    pub(super) max: usize,
}

impl Splitter {
    pub(super) fn new(sep: u8, max: usize) -> Splitter {
        Splitter {
            sep,
            space: sep == b' ',
            max: max.max(1),
        }
    }
}

/// What splitting the bytes at hand gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// The record ends at `scan` (its line ending, or the end of the file).
    Ended,
    /// The bytes at hand end inside the record.
    More,
    /// The record is longer than `max_row_bytes`.
    TooLong,
}

/// The record being split.
#[derive(Debug)]
pub(super) struct Rec {
    /// Where the record starts in the read buffer.
    pub(super) start: usize,
    /// Offset (from `start`) of the next byte to split.
    pub(super) scan: usize,
    /// The first [`MAX_SPANS`] fields.
    pub(super) spans: Vec<Span>,
    /// Fields in the record, all of them.
    pub(super) fields: usize,
    state: State,
    field_start: usize,
    field_quoted: bool,
    /// Offset of the last quote seen in the current quoted field.
    close: usize,
    cook: bool,
    /// Line endings inside quoted fields.
    pub(super) inner_lines: u64,
    /// Only blanks so far (a blank line is skipped).
    pub(super) blank: bool,
    pub(super) too_long: bool,
    /// The row size limit was reached inside a quoted field.
    pub(super) too_long_quoted: bool,
    /// The end of the file came inside a quoted field.
    pub(super) unterminated: bool,
    /// The line the record starts on.
    pub(super) line: u64,
}

impl Rec {
    pub(super) fn new() -> Rec {
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
    pub(super) fn reset(&mut self, start: usize, line: u64) {
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
    pub(super) fn end_record(&mut self, split: &Splitter) {
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

    /// Splits `data` (the record's bytes so far, from its start, at most
    /// `max_row_bytes` + 1 of them) from `scan`.
    pub(super) fn split(&mut self, data: &[u8], split: &Splitter) -> Split {
        loop {
            if self.scan > split.max {
                self.too_long_quoted = self.state == State::Quoted;
                return Split::TooLong;
            }
            let Some(&byte) = data.get(self.scan) else {
                return Split::More;
            };
            let done = match self.state {
                State::FieldStart => self.at_field_start(byte, split),
                State::Unquoted => self.in_unquoted(data, split),
                State::Quoted => {
                    self.in_quoted(data);
                    None
                }
                State::QuoteInQuoted if byte == b'"' => {
                    // `""`: an escaped quote, the field goes on.
                    self.cook = true;
                    self.state = State::Quoted;
                    self.scan += 1;
                    None
                }
                // Otherwise that quote closed the field: the same as after blanks.
                State::QuoteInQuoted | State::AfterClose => self.after_close(byte, split),
            };
            if let Some(done) = done {
                return done;
            }
        }
    }

    /// Before a field: blanks are skipped, a quote opens a quoted field.
    fn at_field_start(&mut self, byte: u8, split: &Splitter) -> Option<Split> {
        if byte == split.sep && !split.space {
            self.blank = false;
            self.field_start = self.scan;
            self.end_field(self.scan);
            self.scan += 1;
        } else if is_blank(byte) {
            self.scan += 1;
        } else if byte == b'\n' || byte == b'\r' {
            self.end_record(split);
            return Some(Split::Ended);
        } else {
            self.blank = false;
            self.field_start = self.scan;
            if byte == b'"' {
                self.field_quoted = true;
                self.state = State::Quoted;
                self.scan += 1;
            } else {
                self.state = State::Unquoted;
            }
        }
        None
    }

    /// Inside an unquoted field: on to the separator or the line ending.
    fn in_unquoted(&mut self, data: &[u8], split: &Splitter) -> Option<Split> {
        let rest = data.get(self.scan..).unwrap_or_default();
        let Some(found) = memchr3(split.sep, b'\r', b'\n', rest) else {
            self.scan = data.len();
            return None;
        };
        self.scan += found;
        if self.scan > split.max {
            return None;
        }
        if rest.get(found) == Some(&split.sep) {
            self.end_field(self.scan);
            self.scan += 1;
            None
        } else {
            self.end_record(split);
            Some(Split::Ended)
        }
    }

    /// Inside a quoted field: on to the next quote, counting line breaks.
    fn in_quoted(&mut self, data: &[u8]) {
        let rest = data.get(self.scan..).unwrap_or_default();
        let Some(found) = memchr3(b'"', b'\r', b'\n', rest) else {
            self.scan = data.len();
            return;
        };
        let at = self.scan + found;
        match rest.get(found) {
            Some(b'"') => {
                self.close = at;
                self.state = State::QuoteInQuoted;
            }
            Some(b'\r') => {
                // Written `\n` in the field: it must be rewritten.
                self.inner_lines += 1;
                self.cook = true;
            }
            _ => {
                // An LF: one more line unless it ends a CRLF.
                if at.checked_sub(1).and_then(|p| data.get(p)) != Some(&b'\r') {
                    self.inner_lines += 1;
                }
            }
        }
        self.scan = at + 1;
    }

    /// After a closing quote: the separator, the line ending, blanks, or
    /// (lenient) more text that joins the field.
    fn after_close(&mut self, byte: u8, split: &Splitter) -> Option<Split> {
        if byte == split.sep {
            self.end_field(self.scan);
            self.scan += 1;
        } else if byte == b'\n' || byte == b'\r' {
            self.end_record(split);
            return Some(Split::Ended);
        } else if is_blank(byte) {
            self.state = State::AfterClose;
            self.scan += 1;
        } else {
            self.cook = true;
            self.state = State::Unquoted;
        }
        None
    }
}

/// A blank of the dialect: what is trimmed around fields and a blank line
/// holds (a space or a tab).
pub(super) fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

/// The text of a raw quoted field (from its opening quote): `""` is a quote,
/// a line break (CRLF, CR or LF) is `\n`, blanks after the closing quote are
/// dropped, text after them is kept.
pub(super) fn unquote(raw: &[u8], out: &mut Vec<u8>) {
    let mut rest = raw.get(1..).unwrap_or_default();
    // Runs between quotes and carriage returns are copied whole: a byte at a
    // time, this was a fortieth of an import's CPU on files that quote text.
    while let Some(at) = memchr::memchr2(b'"', b'\r', rest) {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + 1..];
        if rest[at] == b'\r' {
            out.push(b'\n');
            rest = after.strip_prefix(b"\n").unwrap_or(after);
        } else if let Some(after_pair) = after.strip_prefix(b"\"") {
            out.push(b'"');
            rest = after_pair;
        } else {
            let dropped = after.iter().take_while(|&&b| is_blank(b)).count();
            out.extend_from_slice(&after[dropped..]);
            return;
        }
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits one complete record (without its line ending) as the end of
    /// the file would end it; the fields' texts, unquoted.
    fn fields(record: &[u8], sep: u8) -> Vec<Vec<u8>> {
        let split = Splitter::new(sep, 1024);
        let mut rec = Rec::new();
        if rec.split(record, &split) == Split::More {
            rec.scan = record.len();
            rec.end_record(&split);
        }
        rec.spans
            .iter()
            .map(|span| {
                let raw = &record[span.start..span.end];
                if span.cook {
                    let mut out = Vec::new();
                    unquote(raw, &mut out);
                    out
                } else {
                    raw.to_vec()
                }
            })
            .collect()
    }

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

    /// The byte-at-a-time reading of a quoted field that `unquote` must
    /// agree with.
    fn unquote_bytewise(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
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
        out
    }

    proptest::proptest! {
        #[test]
        fn unquote_reads_runs_as_the_bytewise_reading_does(
            raw in proptest::collection::vec(
                proptest::sample::select(b"\"\r\n \tab;".to_vec()), 0..40)
        ) {
            let mut out = Vec::new();
            unquote(&raw, &mut out);
            proptest::prop_assert_eq!(out, unquote_bytewise(&raw));
        }
    }

    #[test]
    fn spans_of_plain_quoted_and_lenient_fields() {
        let got = fields(b"a;\"b;c\";  \"d\"\"e\" ;f\"g;\"h\"i;", b';');
        let want: [&[u8]; 6] = [b"a", b"b;c", b"d\"e", b"f\"g", b"hi", b""];
        assert_eq!(got, want);
        // Runs of spaces are one separator; trailing spaces make no field.
        let got = fields(b"a   \"b c\"  d  ", b' ');
        let want: [&[u8]; 3] = [b"a", b"b c", b"d"];
        assert_eq!(got, want);
    }

    #[test]
    fn a_record_ends_at_its_line_ending_unless_quoted() {
        let split = Splitter::new(b',', 1024);
        let mut rec = Rec::new();
        let data = b"a,\"b\r\nc\nd\",e\r\nnext";
        assert_eq!(rec.split(data, &split), Split::Ended);
        assert_eq!(&data[rec.scan..rec.scan + 2], b"\r\n");
        assert_eq!((rec.fields, rec.inner_lines), (3, 2));
        // Cut anywhere, the same record comes out.
        for cut in 0..data.len() {
            let mut part = Rec::new();
            if part.split(&data[..cut], &split) == Split::More {
                assert_eq!(part.split(data, &split), Split::Ended, "cut {cut}");
            }
            assert_eq!(
                (part.scan, &part.spans),
                (rec.scan, &rec.spans),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn the_limit_stops_the_look_ahead() {
        let split = Splitter::new(b';', 8);
        for data in [
            &b"aaaaaaaaaaaa\n"[..],
            b"\"aaaaaaaaaaa\n",
            b"a;b;c;d;e;f;g\n",
        ] {
            let mut rec = Rec::new();
            assert_eq!(rec.split(&data[..9], &split), Split::TooLong);
            assert_eq!(rec.too_long_quoted, data[0] == b'"');
        }
    }
}
