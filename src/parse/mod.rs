//! parse: turns the bytes of one proof file into validated rows or rejects.
//!
//! Owns the file format of SPEC §1: decoding, line splitting, quoting, the
//! date formats and zones, and every row validation rule. It is pure: it reads
//! from any `Read`, never opens files, never looks at the clock, and never
//! keeps more than one row (at most `max_row_bytes`) in memory.

pub mod date;
mod decode;
mod diagnose;
mod encoding;
mod iso8601;
mod reader;
mod records;
mod rules;
pub mod sample;
mod split;
#[cfg(test)]
mod split_diff;
mod utf8;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

pub use date::{DateError, DateFormat};
pub use diagnose::{diagnose, Diagnosis, DIAGNOSIS_BYTES};
pub use encoding::{Bom, ContentProbe, InputEncoding, ResolvedEncoding};
pub use reader::RowReader;
pub use utf8::Utf8Probe;

/// The field separator of an import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    Semicolon,
    Comma,
    Tab,
    Space,
}

impl Separator {
    /// Accepts `;` `,` `\t` (a real tab) ` ` and the words `semicolon`, `comma`, `tab`, `space`.
    pub fn from_config(text: &str) -> Option<Separator> {
        match text {
            ";" | "semicolon" => Some(Separator::Semicolon),
            "," | "comma" => Some(Separator::Comma),
            "\t" | "tab" => Some(Separator::Tab),
            " " | "space" => Some(Separator::Space),
            _ => None,
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Separator::Semicolon => b';',
            Separator::Comma => b',',
            Separator::Tab => b'\t',
            Separator::Space => b' ',
        }
    }
}

/// Whether the first row is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderMode {
    /// A first row whose first field is `email` (any case) is skipped.
    Auto,
    /// The first row is always skipped.
    Present,
    /// No header: the first row is data.
    Absent,
}

/// What a subscription id missing from the table means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSubscription {
    Reject,
    Default,
    Passthrough,
}

/// How subscription ids become purpose ids.
#[derive(Debug, Clone)]
pub struct PurposeMap {
    pub default_purpose: String,
    pub subscriptions: HashMap<u64, String>,
    pub unknown: UnknownSubscription,
}

/// Everything needed to read the files of one import.
#[derive(Debug, Clone)]
pub struct RowFormat {
    pub date_format: DateFormat,
    pub timezone: chrono_tz::Tz,
    pub separator: Separator,
    pub encoding: InputEncoding,
    pub header: HeaderMode,
    pub max_row_bytes: usize,
    pub purposes: PurposeMap,
}

/// Default row size limit.
pub const DEFAULT_MAX_ROW_BYTES: usize = 64 * 1024;

/// One validated row. Borrowed from the reader: valid until the next call.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    pub line: u64,
    pub email: &'a str,
    pub purpose_id: &'a str,
    pub purpose_text: &'a str,
    pub instant: DateTime<Utc>,
    pub origin: &'a str,
    pub raw: &'a [u8],
}

/// One rejected row.
#[derive(Debug, Clone)]
pub struct Reject<'a> {
    pub line: u64,
    pub reason: RejectReason,
    pub raw: &'a [u8],
}

#[derive(Debug)]
pub enum Record<'a> {
    Row(Row<'a>),
    Reject(Reject<'a>),
}

/// Why a row was rejected; `Display` is the human reason in reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("line is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("record is longer than {max} bytes: a quoted field opened here is not closed within the row size limit")]
    QuotedTooLong { max: usize },
    #[error("a quoted field is not closed before the end of the file")]
    UnterminatedQuote,
    #[error("not valid UTF-8")]
    InvalidUtf8,
    #[error("not valid UTF-16 (a lone byte at the end of the file, or an unpaired surrogate)")]
    InvalidUtf16,
    #[error("expected 4 or 5 fields, found {found}")]
    FieldCount { found: usize },
    #[error("{field} contains the control character U+{code:04X}")]
    ControlCharacter { field: &'static str, code: u32 },
    #[error("{field} is empty")]
    EmptyField { field: &'static str },
    #[error("e-mail {email:?} is not a plausible address: {why}")]
    InvalidEmail { email: String, why: &'static str },
    #[error("invalid date: {0}")]
    InvalidDate(#[from] DateError),
    #[error("subscription id {value:?} is not a number of at most 18 digits")]
    InvalidSubscription { value: String },
    #[error("subscription id {id} is not in the import's subscriptions table")]
    UnknownSubscription { id: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits `input` into records and field spans, nothing decoded or judged,
/// and counts both (blank lines skipped): the record splitter alone, for
/// `examples/split_bench.rs`.
#[doc(hidden)]
pub fn split_only<R: std::io::Read>(
    input: R,
    separator: Separator,
    max_row_bytes: usize,
) -> Result<(u64, u64), ParseError> {
    let split = split::Splitter::new(separator.byte(), max_row_bytes);
    let mut records = records::Records::new(encoding::Input::Bytes(input), split, true);
    let (mut rows, mut fields) = (0u64, 0u64);
    while records.next()? {
        let rec = records.rec();
        if !rec.blank {
            rows += 1;
            fields += rec.fields as u64;
        }
    }
    Ok((rows, fields))
}

/// `text` cut after `max` characters (marked by an ellipsis), for quoting
/// refused input in a message.
fn shown(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::records::READ_BUFFER;
    use super::*;
    use proptest::prelude::*;

    /// Every separator, for the tests that try each.
    const SEPARATORS: [Separator; 4] = [
        Separator::Semicolon,
        Separator::Comma,
        Separator::Tab,
        Separator::Space,
    ];

    fn purposes(unknown: UnknownSubscription) -> PurposeMap {
        PurposeMap {
            default_purpose: "email_global".into(),
            subscriptions: HashMap::from([
                (12, "newsletter_weekly".to_string()),
                (77, "offers".to_string()),
            ]),
            unknown,
        }
    }

    fn format_with(separator: Separator, date: &str, tz: chrono_tz::Tz) -> RowFormat {
        RowFormat {
            date_format: DateFormat::new(date).unwrap(),
            timezone: tz,
            separator,
            encoding: InputEncoding::Utf8,
            header: HeaderMode::Auto,
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            purposes: purposes(UnknownSubscription::Reject),
        }
    }

    fn format(separator: Separator) -> RowFormat {
        format_with(separator, "dd/MM/yyyy HH:mm:ss", chrono_tz::UTC)
    }

    /// An owned copy of a record, for assertions.
    #[derive(Debug, Clone, PartialEq)]
    enum Got {
        Row {
            line: u64,
            email: String,
            purpose_id: String,
            text: String,
            instant: String,
            origin: String,
            raw: Vec<u8>,
        },
        Reject {
            line: u64,
            reason: RejectReason,
            raw: Vec<u8>,
        },
    }

    impl Got {
        fn line(&self) -> u64 {
            match self {
                Got::Row { line, .. } | Got::Reject { line, .. } => *line,
            }
        }
        fn text(&self) -> &str {
            match self {
                Got::Row { text, .. } => text,
                Got::Reject { reason, .. } => panic!("expected a row, got {reason}"),
            }
        }
        fn reason(&self) -> RejectReason {
            match self {
                Got::Reject { reason, .. } => reason.clone(),
                Got::Row { line, .. } => panic!("expected a reject, got the row of line {line}"),
            }
        }
    }

    fn collect<R: Read>(mut reader: RowReader<'_, R>) -> Vec<Got> {
        let mut out = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            out.push(match record {
                Record::Row(row) => Got::Row {
                    line: row.line,
                    email: row.email.to_string(),
                    purpose_id: row.purpose_id.to_string(),
                    text: row.purpose_text.to_string(),
                    instant: row.instant.to_rfc3339(),
                    origin: row.origin.to_string(),
                    raw: row.raw.to_vec(),
                },
                Record::Reject(reject) => Got::Reject {
                    line: reject.line,
                    reason: reject.reason,
                    raw: reject.raw.to_vec(),
                },
            });
        }
        out
    }

    fn read_as(format: &RowFormat, encoding: ResolvedEncoding, input: &[u8]) -> Vec<Got> {
        let whole = collect(RowReader::new(input, format, encoding));
        // The same bytes read one at a time give the same records.
        let trickled = collect(RowReader::new(OneByte(input), format, encoding));
        assert_eq!(whole, trickled, "reading byte by byte differs");
        whole
    }

    fn read(format: &RowFormat, input: &str) -> Vec<Got> {
        read_as(format, ResolvedEncoding::Utf8, input.as_bytes())
    }

    fn row(
        line: u64,
        email: &str,
        purpose_id: &str,
        text: &str,
        instant: &str,
        origin: &str,
    ) -> (u64, String, String, String, String, String) {
        (
            line,
            email.into(),
            purpose_id.into(),
            text.into(),
            instant.into(),
            origin.into(),
        )
    }

    fn rows(got: &[Got]) -> Vec<(u64, String, String, String, String, String)> {
        got.iter()
            .map(|g| match g {
                Got::Row {
                    line,
                    email,
                    purpose_id,
                    text,
                    instant,
                    origin,
                    ..
                } => (
                    *line,
                    email.clone(),
                    purpose_id.clone(),
                    text.clone(),
                    instant.clone(),
                    origin.clone(),
                ),
                Got::Reject { line, reason, .. } => panic!("line {line} rejected: {reason}"),
            })
            .collect()
    }

    /// A reader that returns one byte per call (and an interruption first).
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            if buf.is_empty() {
                return Ok(0);
            }
            buf[0] = first;
            self.0 = rest;
            Ok(1)
        }
    }

    /// A reader that returns reads of the given sizes, in turn.
    struct Chunks<'a> {
        data: &'a [u8],
        cuts: &'a [usize],
        at: usize,
    }

    impl Read for Chunks<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let cut = self
                .cuts
                .get(self.at % self.cuts.len().max(1))
                .copied()
                .unwrap_or(1);
            self.at += 1;
            let n = cut.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    const JANE: &str = "2020-06-03T23:28:55+00:00";

    #[test]
    fn every_separator_splits_a_row() {
        for (separator, sep) in [
            (Separator::Semicolon, ";"),
            (Separator::Comma, ","),
            (Separator::Tab, "\t"),
        ] {
            let text = format!(
                "jane@example.com{sep}I agree to the newsletter{sep}03/06/2020 23:28:55{sep}203.0.113.7{sep}12\n"
            );
            assert_eq!(
                rows(&read(&format(separator), &text)),
                [row(
                    1,
                    "jane@example.com",
                    "newsletter_weekly",
                    "I agree to the newsletter",
                    JANE,
                    "203.0.113.7"
                )],
                "{separator:?}"
            );
        }
    }

    #[test]
    fn space_separator_rejoins_a_date_containing_a_space() {
        let format = format(Separator::Space);
        let got = read(
            &format,
            "jane@example.com \"I agree to the newsletter\" 03/06/2020 23:28:55 203.0.113.7 12\n\
             bob@example.com   news    03/06/2020   23:28:55  203.0.113.8  \n\
             eve@example.com news \"03/06/2020 23:28:55\" 203.0.113.9 \"\"\n\
             \x20 ann@example.com news 03/06/2020 23:28:55 203.0.113.10 77 \n",
        );
        assert_eq!(
            rows(&got),
            [
                row(
                    1,
                    "jane@example.com",
                    "newsletter_weekly",
                    "I agree to the newsletter",
                    JANE,
                    "203.0.113.7"
                ),
                row(
                    2,
                    "bob@example.com",
                    "email_global",
                    "news",
                    JANE,
                    "203.0.113.8"
                ),
                row(
                    3,
                    "eve@example.com",
                    "email_global",
                    "news",
                    JANE,
                    "203.0.113.9"
                ),
                row(4, "ann@example.com", "offers", "news", JANE, "203.0.113.10"),
            ]
        );
        // An unquoted purpose text with spaces makes too many fields.
        let got = read(
            &format,
            "jane@example.com I agree 03/06/2020 23:28:55 203.0.113.7 12\n",
        );
        assert_eq!(got[0].reason(), RejectReason::FieldCount { found: 6 });
        // A strftime date with three spaces.
        let format = format_with(Separator::Space, "%d %b %Y %H:%M:%S", chrono_tz::UTC);
        let got = read(
            &format,
            "jane@example.com news 03 Jun 2020 23:28:55 203.0.113.7\n",
        );
        assert_eq!(rows(&got)[0].4, JANE);
    }

    #[test]
    fn quoted_fields_work_with_every_separator() {
        for separator in SEPARATORS {
            let sep = char::from(separator.byte());
            let purpose = format!("Yes{sep} I \"agree\"{sep} really");
            let quoted = format!("\"{}\"", purpose.replace('"', "\"\""));
            let text = format!(
                "\"Jane@Example.com\"{sep}{quoted}{sep}\"03/06/2020 23:28:55\"{sep}\"203.0.113.7\"{sep}\"12\"\r\n"
            );
            let got = read(&format(separator), &text);
            assert_eq!(
                rows(&got),
                [row(
                    1,
                    "jane@example.com",
                    "newsletter_weekly",
                    &purpose,
                    JANE,
                    "203.0.113.7"
                )],
                "{separator:?}"
            );
        }
    }

    #[test]
    fn quoting_is_lenient_around_quotes() {
        let got = read(
            &format(Separator::Semicolon),
            "o\"brien@example.com;He said \"yes\";03/06/2020 23:28:55;203.0.113.7\n\
             jane@example.com;  \"spaced\"  ;03/06/2020 23:28:55;203.0.113.7\n",
        );
        // A quote inside an unquoted field is a character, not the start of quoting.
        assert_eq!(got[0].text(), "He said \"yes\"");
        assert_eq!(got[1].text(), "spaced");
    }

    #[test]
    fn each_encoding_keeps_accented_purpose_texts() {
        let purpose = "J’accepte la lettre d’information « été » — 20 °C, 5 €";
        let line = |text: &[u8]| {
            let mut bytes = b"jane@example.com;".to_vec();
            bytes.extend_from_slice(text);
            bytes.extend_from_slice(b";03/06/2020 23:28:55;203.0.113.7\n");
            bytes
        };
        let format = format(Separator::Semicolon);
        let got = read_as(&format, ResolvedEncoding::Utf8, &line(purpose.as_bytes()));
        assert_eq!(got[0].text(), purpose);
        let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(purpose);
        assert!(cp1252.contains(&0x92) && cp1252.contains(&0x97) && cp1252.contains(&0xE9));
        let got = read_as(&format, ResolvedEncoding::Windows1252, &line(&cp1252));
        assert_eq!(got[0].text(), purpose);
        let got = read_as(
            &format,
            ResolvedEncoding::Iso8859_1,
            &line(b"Recevoir l'\xe9t\xe9 \xe0 No\xebl"),
        );
        assert_eq!(got[0].text(), "Recevoir l'été à Noël");
        // ISO-8859-1 has no typographic apostrophe: 0x92 is a C1 control there.
        let got = read_as(
            &format,
            ResolvedEncoding::Iso8859_1,
            &line(b"l\x92\xe9t\xe9"),
        );
        assert_eq!(
            got[0].reason(),
            RejectReason::ControlCharacter {
                field: "purpose text",
                code: 0x92
            }
        );
    }

    #[test]
    fn invalid_utf8_rejects_the_row_only() {
        let got = read_as(
            &format(Separator::Semicolon),
            ResolvedEncoding::Utf8,
            b"jane@example.com;caf\xe9;03/06/2020 23:28:55;203.0.113.7\n\
              bob@example.com;caf\xc3;\xa9;03/06/2020 23:28:55;203.0.113.7\n\
              ann@example.com;caf\xc3\xa9;03/06/2020 23:28:55;203.0.113.7\n",
        );
        assert_eq!(got[0].reason(), RejectReason::InvalidUtf8);
        assert_eq!(got[0].reason().to_string(), "not valid UTF-8");
        assert_eq!(got[1].reason(), RejectReason::InvalidUtf8);
        assert_eq!(got[2].text(), "café");
        assert_eq!(got[2].line(), 3);
    }

    #[test]
    fn a_byte_order_mark_is_skipped() {
        let mut format = format(Separator::Semicolon);
        format.header = HeaderMode::Absent;
        let got = read(
            &format,
            "\u{FEFF}jane@example.com;news;03/06/2020 23:28:55;203.0.113.7\n",
        );
        assert_eq!(rows(&got)[0].1, "jane@example.com");
        format.header = HeaderMode::Auto;
        let got = read(
            &format,
            "\u{FEFF}Email;purpose;date;origin;subscription\njane@example.com;news;03/06/2020 23:28:55;203.0.113.7\n",
        );
        assert_eq!(rows(&got)[0].0, 2);
    }

    #[test]
    fn line_endings_and_blank_lines_keep_line_numbers() {
        let r = |email: &str| format!("{email};news;03/06/2020 23:28:55;203.0.113.7");
        let text = format!(
            "\n{}\r\n\r\n   \r{}\r{}\n \t \n\n{}\r\n\r{}",
            r("a@example.com"),
            r("b@example.com"),
            r("c@example.com"),
            r("d@example.com"),
            r("e@example.com"),
        );
        let got = read(&format(Separator::Semicolon), &text);
        let lines: Vec<(u64, String)> = rows(&got).into_iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            lines,
            [
                (2, "a@example.com".to_string()),
                (5, "b@example.com".to_string()),
                (6, "c@example.com".to_string()),
                (9, "d@example.com".to_string()),
                (11, "e@example.com".to_string()),
            ]
        );
        // raw is the record without its line ending.
        let Got::Row { raw, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(raw, r("a@example.com").as_bytes());
    }

    #[test]
    fn a_quoted_field_may_span_lines() {
        let got = read(
            &format(Separator::Semicolon),
            "a@example.com;\"I agree;\r\nto the\rnews\nletter\";03/06/2020 23:28:55;203.0.113.7\n\
             b@example.com;news;03/06/2020 23:28:55;203.0.113.7\n",
        );
        // The record starts on line 1 and spans lines 1-4; its line breaks
        // (CRLF, CR, LF) are kept, each as `\n`.
        assert_eq!(got[0].line(), 1);
        assert_eq!(got[0].text(), "I agree;\nto the\nnews\nletter");
        let Got::Row { raw, .. } = &got[0] else {
            panic!()
        };
        assert!(raw.starts_with(b"a@example.com;\"I agree;\r\nto"));
        assert!(raw.ends_with(b"letter\";03/06/2020 23:28:55;203.0.113.7"));
        assert_eq!(got[1].line(), 5);
        assert_eq!(got[1].text(), "news");
    }

    #[test]
    fn a_multi_line_record_is_rejected_whole_and_the_next_line_is_right() {
        let got = read(
            &format(Separator::Semicolon),
            "a@example.com;\"one\ntwo\";31/02/2020 23:28:55;ip\r\n\
             b@example.com;\"three\r\n\r\nfour\u{7}\";03/06/2020 23:28:55;ip\n\
             c@example.com;\"five\n\";03/06/2020 23:28:55;\"203.0.113.7\"\n",
        );
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0].reason(), RejectReason::InvalidDate(_)));
        assert_eq!(got[0].line(), 1);
        let Got::Reject { raw, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(raw, b"a@example.com;\"one\ntwo\";31/02/2020 23:28:55;ip");
        // Other control characters still reject the row.
        assert_eq!(
            got[1].reason(),
            RejectReason::ControlCharacter {
                field: "purpose text",
                code: 7
            }
        );
        assert_eq!(got[1].line(), 3);
        // Line breaks at the ends of a field are trimmed, as blanks are.
        assert_eq!(got[2].line(), 6);
        assert_eq!(got[2].text(), "five");
    }

    #[test]
    fn a_multi_line_purpose_text_keeps_its_inner_blank_lines() {
        let got = read(
            &format(Separator::Comma),
            "email,purpose,date,origin\r\n\
             jane@example.com,\"Yes, I agree:\r\n\r\n  - to the \"\"news\"\"\r\n\",03/06/2020 23:28:55,203.0.113.7\r\n",
        );
        assert_eq!(got[0].line(), 2);
        assert_eq!(got[0].text(), "Yes, I agree:\n\n  - to the \"news\"");
    }

    #[test]
    fn header_auto_present_and_absent() {
        let body = "jane@example.com;news;03/06/2020 23:28:55;203.0.113.7\n";
        let with_header = format!("\n EMAIL ;purpose;date;origin\n{body}");
        let without = format!("\n{body}");
        let mut format = format(Separator::Semicolon);
        for (mode, text, want) in [
            (HeaderMode::Auto, &with_header, vec![(3, true)]),
            (HeaderMode::Auto, &without, vec![(2, true)]),
            (HeaderMode::Present, &with_header, vec![(3, true)]),
            (HeaderMode::Present, &without, vec![]),
            (
                HeaderMode::Absent,
                &with_header,
                vec![(2, false), (3, true)],
            ),
            (HeaderMode::Absent, &without, vec![(2, true)]),
        ] {
            format.header = mode;
            let got: Vec<(u64, bool)> = read(&format, text)
                .iter()
                .map(|g| (g.line(), matches!(g, Got::Row { .. })))
                .collect();
            assert_eq!(got, want, "{mode:?} {text:?}");
        }
        // Only the first non-blank record can be a header.
        format.header = HeaderMode::Auto;
        let got = read(&format, &format!("{body}email;purpose;date;origin\n"));
        assert_eq!(got.len(), 2);
        assert!(matches!(got[1].reason(), RejectReason::InvalidEmail { .. }));
    }

    #[test]
    fn four_and_five_fields_mix() {
        let got = read(
            &format(Separator::Semicolon),
            "a@example.com;news;03/06/2020 23:28:55;203.0.113.7\n\
             b@example.com;news;03/06/2020 23:28:55;203.0.113.7;\n\
             c@example.com;news;03/06/2020 23:28:55;203.0.113.7;12\n\
             d@example.com;news;03/06/2020 23:28:55;203.0.113.7; 012 \n",
        );
        let purposes: Vec<String> = rows(&got).into_iter().map(|r| r.2).collect();
        assert_eq!(
            purposes,
            [
                "email_global",
                "email_global",
                "newsletter_weekly",
                "newsletter_weekly"
            ]
        );
    }

    #[test]
    fn unknown_subscriptions_reject_default_or_pass_through() {
        let text = "a@example.com;news;03/06/2020 23:28:55;203.0.113.7;0099\n\
                    b@example.com;news;03/06/2020 23:28:55;203.0.113.7;77\n";
        let mut format = format(Separator::Semicolon);
        let got = read(&format, text);
        assert_eq!(
            got[0].reason(),
            RejectReason::UnknownSubscription { id: 99 }
        );
        assert_eq!(
            got[0].reason().to_string(),
            "subscription id 99 is not in the import's subscriptions table"
        );
        format.purposes.unknown = UnknownSubscription::Default;
        let got = read(&format, text);
        assert_eq!(rows(&got)[0].2, "email_global");
        assert_eq!(rows(&got)[1].2, "offers");
        format.purposes.unknown = UnknownSubscription::Passthrough;
        let got = read(&format, text);
        assert_eq!(rows(&got)[0].2, "99");
        assert_eq!(rows(&got)[1].2, "offers");
    }

    #[test]
    fn origins_that_are_ip_addresses_are_canonical() {
        let text = [
            "2001:DB8:0:0:0:0:0:1",
            " 203.0.113.7 ",
            "2001:0db8:0000:0000:0000:ff00:0042:8329",
            "::FFFF:192.0.2.1",
            "device-42 (kiosk)",
            "fe80::1%eth0",
            "010.1.1.1",
        ]
        .map(|origin| format!("a@example.com;news;03/06/2020 23:28:55;{origin}\n"))
        .concat();
        let origins: Vec<String> = rows(&read(&format(Separator::Semicolon), &text))
            .into_iter()
            .map(|r| r.5)
            .collect();
        assert_eq!(
            origins,
            [
                "2001:db8::1",
                "203.0.113.7",
                "2001:db8::ff00:42:8329",
                "::ffff:192.0.2.1",
                "device-42 (kiosk)",
                "fe80::1%eth0",
                "010.1.1.1",
            ]
        );
    }

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        let got = read(
            &format(Separator::Semicolon),
            "  Jane.Doe+News@Example.COM ;news;03/06/2020 23:28:55;203.0.113.7\n\
             ÉLODIE@Exemple.FR;news;03/06/2020 23:28:55;203.0.113.7\n",
        );
        assert_eq!(rows(&got)[0].1, "jane.doe+news@example.com");
        assert_eq!(rows(&got)[1].1, "élodie@exemple.fr");
    }

    #[test]
    fn each_validation_rule_rejects_with_its_line() {
        let long_local = "x".repeat(250);
        let cases: Vec<(String, RejectReason)> = vec![
            (
                ";news;03/06/2020 23:28:55;ip".into(),
                RejectReason::EmptyField { field: "e-mail" },
            ),
            (
                "a@example.com; ;03/06/2020 23:28:55;ip".into(),
                RejectReason::EmptyField {
                    field: "purpose text",
                },
            ),
            (
                "a@example.com;news;;ip".into(),
                RejectReason::EmptyField { field: "date" },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;\"\"".into(),
                RejectReason::EmptyField { field: "origin" },
            ),
            (
                "jane.example.com;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "jane.example.com".into(),
                    why: "it has no @",
                },
            ),
            (
                "a@b@example.com;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "a@b@example.com".into(),
                    why: "it has more than one @",
                },
            ),
            (
                "@example.com;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "@example.com".into(),
                    why: "nothing before the @",
                },
            ),
            (
                "jane@localhost;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "jane@localhost".into(),
                    why: "the domain has no dot",
                },
            ),
            (
                "jane@example.com.;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "jane@example.com.".into(),
                    why: "the domain starts or ends with a dot",
                },
            ),
            (
                "jane@.example.com;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "jane@.example.com".into(),
                    why: "the domain starts or ends with a dot",
                },
            ),
            (
                "jane doe@example.com;news;03/06/2020 23:28:55;ip".into(),
                RejectReason::InvalidEmail {
                    email: "jane doe@example.com".into(),
                    why: "it contains whitespace",
                },
            ),
            (
                format!("{long_local}@example.com;news;03/06/2020 23:28:55;ip"),
                RejectReason::InvalidEmail {
                    email: format!("{}…", &long_local[..100]),
                    why: "it is longer than 254 characters",
                },
            ),
            (
                "a@example.com;news;31/02/2020 23:28:55;ip".into(),
                RejectReason::InvalidDate(DateError::NoSuchDay {
                    text: "31/02/2020 23:28:55".into(),
                    year: 2020,
                    month: 2,
                    day: 31,
                }),
            ),
            (
                "a@example.com;news;2020-06-03 23:28:55;ip".into(),
                RejectReason::InvalidDate(DateError::Mismatch {
                    text: "2020-06-03 23:28:55".into(),
                    pattern: "dd/MM/yyyy HH:mm:ss".into(),
                }),
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;ip;12a".into(),
                RejectReason::InvalidSubscription {
                    value: "12a".into(),
                },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;ip;-12".into(),
                RejectReason::InvalidSubscription {
                    value: "-12".into(),
                },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;ip;1234567890123456789".into(),
                RejectReason::InvalidSubscription {
                    value: "1234567890123456789".into(),
                },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;ip;99".into(),
                RejectReason::UnknownSubscription { id: 99 },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55".into(),
                RejectReason::FieldCount { found: 3 },
            ),
            (
                "a@example.com;news;03/06/2020 23:28:55;ip;12;x".into(),
                RejectReason::FieldCount { found: 6 },
            ),
            (
                "a@example.com;ne\u{7}ws;03/06/2020 23:28:55;ip".into(),
                RejectReason::ControlCharacter {
                    field: "purpose text",
                    code: 7,
                },
            ),
            (
                "a@example.com\t;news;03/06/2020 23:28:55;i\tp".into(),
                RejectReason::ControlCharacter {
                    field: "origin",
                    code: 9,
                },
            ),
            (
                "a@example.com;ne\u{85}ws;03/06/2020 23:28:55;ip".into(),
                RejectReason::ControlCharacter {
                    field: "purpose text",
                    code: 0x85,
                },
            ),
            (
                format!("a@example.com;{};03/06/2020 23:28:55;ip", "n".repeat(300)),
                RejectReason::TooLong { max: 300 },
            ),
        ];
        let mut text = String::new();
        for (index, (line, _)) in cases.iter().enumerate() {
            text.push_str(line);
            text.push_str(if index % 2 == 0 { "\n" } else { "\r\n\n" });
        }
        text.push_str("a@example.com;\"never closed;03/06/2020 23:28:55;ip\n");
        let mut format = format(Separator::Semicolon);
        format.max_row_bytes = 300;
        let got = read(&format, &text);
        assert_eq!(got.len(), cases.len() + 1);
        let mut line = 1;
        for (index, ((_, want), got)) in cases.iter().zip(&got).enumerate() {
            assert!(matches!(got, Got::Reject { .. }), "case {index}: {got:?}");
            assert_eq!(&got.reason(), want, "case {index}");
            assert_eq!(got.line(), line, "case {index}");
            line += if index % 2 == 0 { 1 } else { 2 };
        }
        let last = got.last().unwrap();
        assert_eq!(last.reason(), RejectReason::UnterminatedQuote);
        assert_eq!(last.line(), line);
    }

    #[test]
    fn reject_reasons_read_well() {
        let cases = [
            (
                RejectReason::TooLong { max: 1024 },
                "line is longer than 1024 bytes",
            ),
            (
                RejectReason::FieldCount { found: 3 },
                "expected 4 or 5 fields, found 3",
            ),
            (
                RejectReason::EmptyField { field: "origin" },
                "origin is empty",
            ),
            (
                RejectReason::InvalidEmail {
                    email: "jane@localhost".into(),
                    why: "the domain has no dot",
                },
                "e-mail \"jane@localhost\" is not a plausible address: the domain has no dot",
            ),
            (
                RejectReason::ControlCharacter {
                    field: "purpose text",
                    code: 10,
                },
                "purpose text contains the control character U+000A",
            ),
            (
                RejectReason::InvalidSubscription {
                    value: "12a".into(),
                },
                "subscription id \"12a\" is not a number of at most 18 digits",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
        let date = DateFormat::new("yyyy-MM-dd HH:mm:ss")
            .unwrap()
            .parse("2026-03-29 02:30:00", chrono_tz::Europe::Paris)
            .unwrap_err();
        assert_eq!(
            RejectReason::InvalidDate(date).to_string(),
            "invalid date: \"2026-03-29 02:30:00\" does not exist in Europe/Paris (daylight-saving gap)"
        );
    }

    #[test]
    fn dates_use_the_import_zone() {
        let format = format_with(
            Separator::Semicolon,
            "yyyy-MM-dd HH:mm:ss",
            chrono_tz::Europe::Paris,
        );
        let got = read(
            &format,
            "a@example.com;news;2026-03-29 02:30:00;ip\n\
             b@example.com;news;2026-10-25 02:30:00;ip\n\
             c@example.com;news;2026-07-01 12:00:00;ip\n",
        );
        assert!(matches!(
            got[0].reason(),
            RejectReason::InvalidDate(DateError::Gap { .. })
        ));
        assert_eq!(rows(&got[1..])[0].4, "2026-10-25T00:30:00+00:00");
        assert_eq!(rows(&got[1..])[1].4, "2026-07-01T10:00:00+00:00");
    }

    #[test]
    fn records_across_read_buffer_boundaries() {
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!(
                "c{i}@example.com;\"Quoted; purpose {i}\";03/06/2020 23:28:55;203.0.113.{};12\r\n",
                i % 250
            ));
        }
        let format = format(Separator::Semicolon);
        let got = collect(RowReader::new(
            text.as_bytes(),
            &format,
            ResolvedEncoding::Utf8,
        ));
        assert!(text.len() > 3 * READ_BUFFER);
        assert_eq!(got.len(), 5000);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.line(), i as u64 + 1);
            assert_eq!(g.text(), format!("Quoted; purpose {i}"));
        }
    }

    /// A long input generated on the fly: `len` bytes of `byte`, then a tail.
    struct Endless {
        left: usize,
        byte: u8,
        tail: &'static [u8],
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left > 0 {
                let n = self.left.min(buf.len());
                buf[..n].fill(self.byte);
                self.left -= n;
                return Ok(n);
            }
            let n = self.tail.len().min(buf.len());
            buf[..n].copy_from_slice(&self.tail[..n]);
            self.tail = &self.tail[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_long_line_without_newline_is_one_reject_in_bounded_memory() {
        let mut format = format(Separator::Semicolon);
        format.max_row_bytes = 1024;
        let bound = READ_BUFFER + 16 * 1024;
        for byte in [b'x', b'"', b';', b' '] {
            let input = Endless {
                left: 5 * 1024 * 1024,
                byte,
                tail: b"\na@example.com;news;03/06/2020 23:28:55;ip\n",
            };
            let mut reader = RowReader::new(input, &format, ResolvedEncoding::Utf8);
            let mut got = Vec::new();
            while let Some(record) = reader.next_record().unwrap() {
                assert!(reader_capacity_ok(&record));
                got.push(match record {
                    Record::Row(row) => (row.line, None),
                    Record::Reject(reject) => {
                        assert_eq!(reject.raw.len(), 1024);
                        (reject.line, Some(reject.reason))
                    }
                });
            }
            assert!(
                reader.buffered_capacity() < bound,
                "{byte}: {}",
                reader.buffered_capacity()
            );
            if byte == b' ' {
                // A blank line is skipped, however long.
                assert_eq!(got, [(2, None)]);
            } else if byte == b'"' {
                // The quote the line opens is never closed: said so.
                assert_eq!(
                    got,
                    [
                        (1, Some(RejectReason::QuotedTooLong { max: 1024 })),
                        (2, None)
                    ]
                );
            } else {
                assert_eq!(
                    got,
                    [(1, Some(RejectReason::TooLong { max: 1024 })), (2, None)],
                    "{byte}"
                );
            }
        }
        // Without any newline at all.
        let input = Endless {
            left: 5 * 1024 * 1024,
            byte: b'x',
            tail: b"",
        };
        let mut reader = RowReader::new(input, &format, ResolvedEncoding::Utf8);
        let mut count = 0;
        while reader.next_record().unwrap().is_some() {
            count += 1;
        }
        assert_eq!(count, 1);
        assert!(reader.buffered_capacity() < bound);
    }

    #[test]
    fn a_row_longer_than_the_read_buffer_is_read_when_the_limit_allows() {
        let mut format = format(Separator::Semicolon);
        format.max_row_bytes = 3 * READ_BUFFER;
        let purpose = "long purpose ".repeat(READ_BUFFER / 6);
        let line = format!("a@example.com;{} ;03/06/2020 23:28:55;ip", purpose);
        let text = format!(
            "{line}\n{line}\r\n{}x\nb@example.com;news;03/06/2020 23:28:55;ip",
            "y".repeat(3 * READ_BUFFER)
        );
        let mut reader = RowReader::new(text.as_bytes(), &format, ResolvedEncoding::Utf8);
        let mut got = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            got.push(match record {
                Record::Row(row) => {
                    assert!(row.raw.len() == line.len() || row.email == "b@example.com");
                    (row.line, row.purpose_text.len())
                }
                Record::Reject(reject) => {
                    assert_eq!(
                        reject.reason,
                        RejectReason::TooLong {
                            max: 3 * READ_BUFFER
                        }
                    );
                    (reject.line, 0)
                }
            });
        }
        let len = purpose.trim().len();
        assert_eq!(got, [(1, len), (2, len), (3, 0), (4, 4)]);
        // The read buffer grows to the limit plus one read; a few record-sized buffers.
        assert!(reader.buffered_capacity() < 6 * format.max_row_bytes + 2 * READ_BUFFER);
    }

    /// Found by the hostile fuzzer: a too-long line that opens a quote. Read
    /// whole, the quote swallowed the next line; read byte by byte, it did not.
    #[test]
    fn a_too_long_line_with_an_open_quote_reads_the_same_in_chunks() {
        let mut format = format(Separator::Semicolon);
        format.max_row_bytes = 64;
        let body = "ok@example.com;texte;01/02/2020 10:00:00;203.0.113.9\n";
        for open in [
            format!("\"{}\n", "a".repeat(100)),
            format!("\"{}\r\n", "a".repeat(100)),
            // A quoted CRLF across the limit: the CR at byte 64, the LF after.
            format!("\"{}\r\nstill quoted\"\n", "a".repeat(63)),
            format!("\"{}\nstill quoted\"\n", "a".repeat(63)),
        ] {
            let text = format!("email;purpose;date;origin\n{open}{body}");
            let got = read(&format, &text);
            let lines = open.matches('\n').count() as u64;
            assert_eq!(got.len(), 2, "{open:?}: {got:?}");
            assert_eq!(got[0].reason(), RejectReason::QuotedTooLong { max: 64 });
            assert_eq!(got[0].line(), 2);
            let last = got.last().unwrap();
            assert_eq!(last.text(), "texte", "{open:?}");
            assert_eq!(last.line(), 2 + lines, "{open:?}");
        }
    }

    fn reader_capacity_ok(record: &Record<'_>) -> bool {
        match record {
            Record::Row(row) => row.raw.len() <= 1024,
            Record::Reject(reject) => reject.raw.len() <= 1024,
        }
    }

    // ---- properties ----

    #[derive(Debug, Clone)]
    struct GenRow {
        email: String,
        text: String,
        seconds: i64,
        origin: u8,
        subscription: u8,
        quote_date: bool,
        ending: u8,
    }

    fn gen_row() -> impl Strategy<Value = GenRow> {
        (
            "[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,15}",
            "[a-z0-9-]{1,12}\\.[a-z]{2,6}",
            "[A-Za-zéàÇ’—0-9][A-Za-zéàÇ’—0-9;,\" \t'.()]{0,40}[A-Za-zé’!?.]",
            0i64..4_102_444_800,
            any::<u8>(),
            0u8..4,
            any::<bool>(),
            0u8..3,
        )
            .prop_map(
                |(local, domain, text, seconds, origin, subscription, quote_date, ending)| GenRow {
                    email: format!("{local}@{domain}"),
                    text,
                    seconds,
                    origin,
                    subscription,
                    quote_date,
                    ending,
                },
            )
    }

    fn field(out: &mut String, value: &str, sep: char, force: bool) {
        if force || value.contains(sep) || value.contains('"') {
            out.push('"');
            out.push_str(&value.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(value);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn generated_valid_rows_are_read_back(
            rows in prop::collection::vec(gen_row(), 1..20),
            sep_index in 0usize..4,
            paris in any::<bool>(),
            pattern_index in 0usize..8,
        ) {
            let separator = SEPARATORS[sep_index];
            let sep = char::from(separator.byte());
            let tz = if paris { chrono_tz::Europe::Paris } else { chrono_tz::UTC };
            let pattern = date::STANDARD_FORMATS[pattern_index];
            let format = format_with(separator, pattern, tz);
            let mut text = String::new();
            let mut want = Vec::new();
            for (i, gen) in rows.iter().enumerate() {
                let instant = DateTime::from_timestamp(gen.seconds, 0).unwrap();
                let local = instant.with_timezone(&tz).naive_local();
                // An ambiguous local time reads back as the earlier instant.
                let expected = match chrono::TimeZone::from_local_datetime(&tz, &local) {
                    chrono::LocalResult::Ambiguous(a, b) => a.with_timezone(&Utc).min(b.with_timezone(&Utc)),
                    _ => instant,
                };
                let date = format.date_format.format(instant, tz);
                // A purpose text containing a tab is only valid with the tab separator.
                let purpose = if separator == Separator::Tab { gen.text.clone() } else { gen.text.replace('\t', " ") };
                field(&mut text, &gen.email.to_uppercase(), sep, false);
                text.push(sep);
                field(&mut text, &purpose, sep, false);
                text.push(sep);
                field(&mut text, &date, sep, gen.quote_date && separator == Separator::Space);
                text.push(sep);
                text.push_str(&format!("198.51.100.{}", gen.origin));
                let purpose_id = match gen.subscription {
                    0 => "email_global",
                    1 => { text.push(sep); text.push_str("\"\""); "email_global" }
                    2 => { text.push(sep); text.push_str("12"); "newsletter_weekly" }
                    _ => { text.push(sep); text.push_str("077"); "offers" }
                };
                text.push_str(["\n", "\r\n", "\r"][usize::from(gen.ending)]);
                want.push((
                    i as u64 + 1,
                    gen.email.to_lowercase(),
                    purpose_id.to_string(),
                    purpose,
                    expected.to_rfc3339(),
                    format!("198.51.100.{}", gen.origin),
                ));
            }
            let got = read(&format, &text);
            prop_assert_eq!(self::rows(&got), want);
        }

        #[test]
        fn multi_line_records_read_the_same_however_split(
            texts in prop::collection::vec("[a-z ;\"]{0,6}((\r\n|\r|\n)[a-z ;\"]{0,6}){0,3}[a-z]", 1..12),
            cuts in prop::collection::vec(1usize..40, 1..50),
            separator in 0usize..3,
        ) {
            let separator = SEPARATORS[separator];
            let sep = char::from(separator.byte());
            let mut input = String::new();
            let mut want = Vec::new();
            let mut line = 1u64;
            for (i, text) in texts.iter().enumerate() {
                input.push_str(&format!("r{i}@example.com{sep}"));
                field(&mut input, text, sep, true);
                input.push_str(&format!("{sep}03/06/2020 23:28:55{sep}203.0.113.7\r\n"));
                let normalised = text.replace("\r\n", "\n").replace('\r', "\n");
                want.push((line, normalised.trim().to_string()));
                line += 1 + normalised.matches('\n').count() as u64;
            }
            let format = format(separator);
            let got: Vec<(u64, String)> = read(&format, &input)
                .iter()
                .map(|g| (g.line(), g.text().to_string()))
                .collect();
            prop_assert_eq!(&got, &want);
            let chunked = collect(RowReader::new(Chunks { data: input.as_bytes(), cuts: &cuts, at: 0 }, &format, ResolvedEncoding::Utf8));
            let chunked: Vec<(u64, String)> = chunked.iter().map(|g| (g.line(), g.text().to_string())).collect();
            prop_assert_eq!(chunked, want);
        }

        #[test]
        fn utf16_gives_the_rows_of_the_same_text_in_utf8_however_split(
            rows in prop::collection::vec(gen_row(), 1..12),
            multi_line in "[a-z]{1,5}(\r\n|\n)[a-zé’😀]{1,5}",
            cuts in prop::collection::vec(1usize..50, 1..50),
            big_endian in any::<bool>(),
            bom in any::<bool>(),
        ) {
            let format = format(Separator::Tab);
            let mut text = String::from("email\tpurpose\tdate\torigin\r\n");
            for (i, gen) in rows.iter().enumerate() {
                let purpose = if i == 0 { format!("\"{multi_line}\"") } else { gen.text.replace(['\t', '"'], " ") };
                text.push_str(&format!("{}\t{purpose}\t03/06/2020 23:28:55\t198.51.100.{}\r\n", gen.email, gen.origin));
            }
            let mut bytes = Vec::new();
            if bom || big_endian {
                bytes.extend_from_slice(if big_endian { b"\xFE\xFF" } else { b"\xFF\xFE" });
            }
            for unit in text.encode_utf16() {
                bytes.extend_from_slice(&if big_endian { unit.to_be_bytes() } else { unit.to_le_bytes() });
            }
            let encoding = InputEncoding::Utf16.resolve(false, Bom::of(&bytes));
            let want = read(&format, &text);
            prop_assert_eq!(want.len(), rows.len());
            let got = collect(RowReader::new(Chunks { data: &bytes, cuts: &cuts, at: 0 }, &format, encoding));
            prop_assert_eq!(&got, &want);
            let auto = InputEncoding::Auto.resolve(false, Bom::of(&bytes));
            if bom || big_endian {
                prop_assert_eq!(auto, encoding);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_raw_stays_bounded(
            bytes in prop::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(vec![b'a', b'@', b'.', b';', b',', b' ', b'\t', b'"', b'\n', b'\r', b'1', b'/', b':', 0xC3, 0xA9]),
                ],
                0..3000,
            ),
            sep_index in 0usize..4,
            encoding_index in 0usize..5,
            max_row_bytes in 1usize..300,
        ) {
            let mut format = format(SEPARATORS[sep_index]);
            format.max_row_bytes = max_row_bytes;
            let encoding = [ResolvedEncoding::Utf8, ResolvedEncoding::Windows1252, ResolvedEncoding::Iso8859_1, ResolvedEncoding::Utf16Le, ResolvedEncoding::Utf16Be][encoding_index];
            let endings = bytes.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64;
            let mut reader = RowReader::new(bytes.as_slice(), &format, encoding);
            let mut last_line = 0;
            while let Some(record) = reader.next_record().unwrap() {
                let (line, raw) = match record {
                    Record::Row(row) => (row.line, row.raw),
                    Record::Reject(reject) => (reject.line, reject.raw),
                };
                prop_assert!(raw.len() <= max_row_bytes);
                prop_assert!(line > last_line && line <= endings + 1);
                last_line = line;
            }
            prop_assert!(reader.next_record().unwrap().is_none());
        }
    }
}
