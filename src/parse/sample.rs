//! Sample proof files in an import's exact format.
//!
//! `write_sample` shows an operator (or a partner) what a file for one import
//! must look like: its separator, date format and zone, header, quoting and
//! encoding. Every row it writes is accepted by [`RowReader`](super::RowReader).
use std::io::{self, Write};

use chrono::{DateTime, Utc};

use super::{HeaderMode, InputEncoding, RowFormat};

/// Purpose texts with accents, an em dash, a typographic apostrophe, the
/// separators and a quote.
const PURPOSE_TEXTS: [&str; 4] = [
    "J'accepte de recevoir la lettre d'information — été",
    "I agree to receive the weekly newsletter; offers, \"partners\" and news",
    "J’accepte les offres des partenaires (Noël, Pâques)",
    "Ich stimme dem Empfang des Newsletters zu – Größe",
];

/// 2026-01-15T08:00:00Z, the first sample date.
const FIRST_INSTANT: i64 = 1_768_464_000;
/// Seconds between two sample dates (a little over an hour).
const STEP: i64 = 3_607;

/// Writes a sample proof file of `rows` rows in `format`, header included
/// unless the import says `header = false`.
pub fn write_sample(format: &RowFormat, rows: usize, out: &mut dyn Write) -> io::Result<()> {
    let sep = char::from(format.separator.byte());
    let mut keys: Vec<u64> = format.purposes.subscriptions.keys().copied().collect();
    keys.sort_unstable();
    let mut line = String::new();
    let mut bytes = Vec::new();
    if format.encoding == InputEncoding::Utf16 {
        // Excel's "Unicode Text": little-endian with a byte-order mark.
        out.write_all(b"\xFF\xFE")?;
    }
    if format.header != HeaderMode::Absent {
        let header = ["email", "purpose", "date", "origin", "subscription_id"];
        write_line(&mut line, &header.map(Some), sep);
        encode(&line, format.encoding, &mut bytes);
        out.write_all(&bytes)?;
    }
    for i in 0..rows {
        let n = i as u64;
        let email = format!("contact{i}@example.com");
        let text = PURPOSE_TEXTS
            .get(i % PURPOSE_TEXTS.len())
            .copied()
            .unwrap_or_default();
        let instant =
            DateTime::<Utc>::from_timestamp(FIRST_INSTANT + STEP * n as i64, 0).unwrap_or_default();
        let date = format.date_format.format(instant, format.timezone);
        let origin = if i % 5 == 4 {
            format!("2001:db8::{:x}", n + 1)
        } else {
            format!("203.0.113.{}", n % 254 + 1)
        };
        let cycle = i % (keys.len() + 2);
        let subscription = match keys.get(cycle) {
            Some(key) => Some(key.to_string()),
            None if cycle == keys.len() => Some(String::new()),
            None => None,
        };
        write_line(
            &mut line,
            &[
                Some(email.as_str()),
                Some(text),
                Some(date.as_str()),
                Some(origin.as_str()),
                subscription.as_deref(),
            ],
            sep,
        );
        encode(&line, format.encoding, &mut bytes);
        out.write_all(&bytes)?;
    }
    out.flush()
}

/// One record: the fields present, quoted where needed, and a line ending.
fn write_line(line: &mut String, fields: &[Option<&str>], sep: char) {
    line.clear();
    for (index, field) in fields.iter().enumerate() {
        let Some(field) = field else { continue };
        if index > 0 {
            line.push(sep);
        }
        let needs_quotes =
            field.contains(sep) || field.contains('"') || (field.is_empty() && sep == ' ');
        if needs_quotes {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(field);
        }
    }
    line.push('\n');
}

/// Encodes a line in the import's encoding (auto writes UTF-8).
fn encode(line: &str, encoding: InputEncoding, out: &mut Vec<u8>) {
    out.clear();
    match encoding {
        InputEncoding::Utf8 | InputEncoding::Auto => out.extend_from_slice(line.as_bytes()),
        InputEncoding::Windows1252 => {
            let writable = fallback(line, |c| {
                let mut utf8 = [0u8; 4];
                let (_, _, unmappable) = encoding_rs::WINDOWS_1252.encode(c.encode_utf8(&mut utf8));
                !unmappable
            });
            let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(&writable);
            out.extend_from_slice(&bytes);
        }
        InputEncoding::Iso8859_1 => {
            for c in fallback(line, |c| u32::from(c) <= 0xFF).chars() {
                out.push(u8::try_from(u32::from(c)).unwrap_or(b'?'));
            }
        }
        InputEncoding::Utf16 => {
            for unit in line.encode_utf16() {
                out.extend_from_slice(&unit.to_le_bytes());
            }
        }
    }
}

/// Replaces characters the encoding cannot write with close ASCII ones.
fn fallback(line: &str, writable: impl Fn(char) -> bool) -> String {
    line.chars()
        .map(|c| {
            if writable(c) {
                c
            } else {
                match c {
                    '—' | '–' => '-',
                    '’' | '‘' => '\'',
                    '“' | '”' => '"',
                    _ => '?',
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{
        DateFormat, PurposeMap, Record, RowReader, Separator, UnknownSubscription,
        DEFAULT_MAX_ROW_BYTES,
    };
    use super::*;

    fn format(
        separator: Separator,
        encoding: InputEncoding,
        header: HeaderMode,
        date: &str,
    ) -> RowFormat {
        RowFormat {
            date_format: DateFormat::new(date).unwrap(),
            timezone: chrono_tz::Europe::Paris,
            separator,
            encoding,
            header,
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            purposes: PurposeMap {
                default_purpose: "email_global".into(),
                subscriptions: HashMap::from([
                    (12, "newsletter_weekly".to_string()),
                    (7, "offers".to_string()),
                ]),
                unknown: UnknownSubscription::Reject,
            },
        }
    }

    fn read_back(format: &RowFormat, bytes: &[u8]) -> Vec<(String, String, String)> {
        let resolved = format.encoding.resolve(
            std::str::from_utf8(bytes).is_ok(),
            super::super::Bom::of(bytes),
        );
        let mut reader = RowReader::new(bytes, format, resolved);
        let mut rows = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            match record {
                Record::Row(row) => rows.push((
                    row.email.to_string(),
                    row.purpose_text.to_string(),
                    row.purpose_id.to_string(),
                )),
                Record::Reject(reject) => panic!(
                    "sample line {} rejected: {} ({:?})",
                    reject.line,
                    reject.reason,
                    String::from_utf8_lossy(reject.raw)
                ),
            }
        }
        rows
    }

    #[test]
    fn every_sample_row_is_accepted_for_every_separator_encoding_and_header() {
        let separators = [
            Separator::Semicolon,
            Separator::Comma,
            Separator::Tab,
            Separator::Space,
        ];
        let encodings = [
            InputEncoding::Utf8,
            InputEncoding::Auto,
            InputEncoding::Windows1252,
            InputEncoding::Iso8859_1,
            InputEncoding::Utf16,
        ];
        let headers = [HeaderMode::Auto, HeaderMode::Present, HeaderMode::Absent];
        let dates = [
            "dd/MM/yyyy HH:mm:ss",
            "MMddyyyy HH:mm:ss",
            "yyyy.MM.dd_HH-mm-ss",
            "%d %b %Y %H:%M:%S",
        ];
        for separator in separators {
            for encoding in encodings {
                for header in headers {
                    for date in dates {
                        let format = format(separator, encoding, header, date);
                        let mut bytes = Vec::new();
                        write_sample(&format, 40, &mut bytes).unwrap();
                        let rows = read_back(&format, &bytes);
                        assert_eq!(
                            rows.len(),
                            40,
                            "{separator:?} {encoding:?} {header:?} {date}"
                        );
                        assert_eq!(rows[0].0, "contact0@example.com");
                    }
                }
            }
        }
    }

    #[test]
    fn sample_keeps_accents_in_each_encoding() {
        let utf8 = format(
            Separator::Semicolon,
            InputEncoding::Utf8,
            HeaderMode::Auto,
            "dd/MM/yyyy HH:mm:ss",
        );
        let mut bytes = Vec::new();
        write_sample(&utf8, 4, &mut bytes).unwrap();
        let rows = read_back(&utf8, &bytes);
        assert_eq!(rows[0].1, PURPOSE_TEXTS[0]);
        assert_eq!(rows[1].1, PURPOSE_TEXTS[1]);
        assert_eq!(rows[2].1, PURPOSE_TEXTS[2]);

        let cp1252 = format(
            Separator::Semicolon,
            InputEncoding::Windows1252,
            HeaderMode::Auto,
            "dd/MM/yyyy HH:mm:ss",
        );
        let mut bytes = Vec::new();
        write_sample(&cp1252, 4, &mut bytes).unwrap();
        assert!(
            std::str::from_utf8(&bytes).is_err(),
            "windows-1252 bytes expected"
        );
        assert!(bytes.contains(&0x97), "em dash as 0x97");
        let rows = read_back(&cp1252, &bytes);
        assert_eq!(rows[0].1, PURPOSE_TEXTS[0]);
        assert_eq!(rows[2].1, PURPOSE_TEXTS[2]);

        let latin1 = format(
            Separator::Semicolon,
            InputEncoding::Iso8859_1,
            HeaderMode::Auto,
            "dd/MM/yyyy HH:mm:ss",
        );
        let mut bytes = Vec::new();
        write_sample(&latin1, 4, &mut bytes).unwrap();
        let rows = read_back(&latin1, &bytes);
        assert_eq!(
            rows[0].1,
            "J'accepte de recevoir la lettre d'information - été"
        );

        let utf16 = format(
            Separator::Tab,
            InputEncoding::Utf16,
            HeaderMode::Auto,
            "dd/MM/yyyy HH:mm:ss",
        );
        let mut bytes = Vec::new();
        write_sample(&utf16, 4, &mut bytes).unwrap();
        assert!(
            bytes.starts_with(b"\xFF\xFEe\0m\0a\0"),
            "UTF-16LE with a mark"
        );
        let rows = read_back(&utf16, &bytes);
        assert_eq!(rows[0].1, PURPOSE_TEXTS[0]);
        assert_eq!(rows[2].1, PURPOSE_TEXTS[2]);
        // `auto` recognises it by its mark.
        let auto = RowFormat {
            encoding: InputEncoding::Auto,
            ..utf16
        };
        assert_eq!(read_back(&auto, &bytes), rows);
    }

    #[test]
    fn sample_cycles_subscriptions_empty_and_omitted() {
        let format = format(
            Separator::Semicolon,
            InputEncoding::Utf8,
            HeaderMode::Absent,
            "dd/MM/yyyy HH:mm:ss",
        );
        let mut bytes = Vec::new();
        write_sample(&format, 8, &mut bytes).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8);
        assert!(lines[0].ends_with(";7"), "{}", lines[0]);
        assert!(lines[1].ends_with(";12"), "{}", lines[1]);
        assert!(lines[2].ends_with(';'), "{}", lines[2]);
        assert_eq!(lines[3].matches(';').count(), 3, "{}", lines[3]);
        assert!(text.contains("2001:db8::5"));
        assert!(text.contains("203.0.113.1;"));
        let purposes: Vec<String> = read_back(&format, &bytes)
            .into_iter()
            .map(|r| r.2)
            .collect();
        assert_eq!(
            purposes[..4],
            [
                "offers",
                "newsletter_weekly",
                "email_global",
                "email_global"
            ]
        );
    }
}
