//! Why a quarantined file's rows fail: the likely cause, and the fix.
//!
//! When most of a file's rows are rejected, the cause is rarely the rows: it
//! is an import that does not describe the file. [`diagnose`] looks at the
//! start of the file's content (as dropped, decompressed) and says which of
//! three mismatches it sees, in this order: the encoding (UTF-16 bytes, or
//! UTF-8 read as a single-byte encoding, or the reverse), the separator the
//! rows really use, and the standard date format the dates really have. It is
//! pure (bytes and the import's format in, a sentence out), so it is tested
//! with plain strings; the pipeline and `check` only call it.
use std::fmt;

use super::date::{DateFormat, ISO8601, STANDARD_FORMATS};
use super::{Bom, InputEncoding, RowFormat, Separator};

/// How much of a file's start the diagnosis reads.
pub const DIAGNOSIS_BYTES: usize = 64 * 1024;
/// Lines of the file's start looked at.
const LINES: usize = 200;

/// The likely cause of a quarantine, with its fix; `Display` is a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnosis {
    /// UTF-16 bytes read with another encoding.
    Utf16 {
        bom: Option<Bom>,
        declared: InputEncoding,
    },
    /// Valid UTF-8 (with non-ASCII text) read as a single-byte encoding.
    Utf8AsSingleByte { declared: InputEncoding },
    /// Not UTF-8, but the import says UTF-8.
    NotUtf8,
    /// The rows use another separator.
    Separator {
        found: Separator,
        declared: Separator,
    },
    /// The dates have another format.
    DateFormat {
        found: Vec<&'static str>,
        declared: String,
    },
}

fn separator_name(separator: Separator) -> (&'static str, &'static str) {
    match separator {
        Separator::Semicolon => ("semicolons", "';'"),
        Separator::Comma => ("commas", "','"),
        Separator::Tab => ("tabs", "tab"),
        Separator::Space => ("spaces", "space"),
    }
}

fn separator_word(separator: Separator) -> &'static str {
    match separator {
        Separator::Semicolon => "semicolon",
        Separator::Comma => "comma",
        Separator::Tab => "tab",
        Separator::Space => "space",
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnosis::Utf16 { bom, declared } => {
                match bom {
                    Some(bom) => write!(f, "this file is UTF-16 (byte-order mark {})", bom.hex())?,
                    None => write!(
                        f,
                        "this file looks like UTF-16 without a byte-order mark (every other byte is 00)"
                    )?,
                }
                write!(
                    f,
                    ", the import says {}: set encoding = \"utf-16\" (or \"auto\")",
                    declared.config_name()
                )
            }
            Diagnosis::Utf8AsSingleByte { declared } => write!(
                f,
                "this file is UTF-8 (its accented letters read as mojibake such as \"Ã©\" for \"é\"), the import says {}: set encoding = \"utf-8\" (or \"auto\")",
                declared.config_name()
            ),
            Diagnosis::NotUtf8 => write!(
                f,
                "this file is not UTF-8 (probably Windows-1252: \"é\" is the single byte E9), the import says utf-8: set encoding = \"windows-1252\" (or \"auto\")"
            ),
            Diagnosis::Separator { found, declared } => write!(
                f,
                "the rows are separated by {}, the import says {}: set separator = \"{}\"",
                separator_name(*found).0,
                separator_name(*declared).1,
                separator_word(*found)
            ),
            Diagnosis::DateFormat { found, declared } => {
                write!(f, "the dates look like {}", found.join(" or "))?;
                write!(f, ", the import says {declared}")?;
                if let [one] = found.as_slice() {
                    write!(f, ": set date_format = \"{one}\"")?;
                }
                Ok(())
            }
        }
    }
}

/// The likely cause of a file's rows failing, from the start of its content.
pub fn diagnose(head: &[u8], format: &RowFormat) -> Option<Diagnosis> {
    if let Some(found) = encoding_mismatch(head, format.encoding) {
        return Some(found);
    }
    let text = as_text(head, format.encoding);
    let lines = sample_lines(&text);
    let declared = format.separator;
    let separator = if fits(&lines, declared) {
        declared
    } else {
        let found = [Separator::Semicolon, Separator::Comma, Separator::Tab]
            .into_iter()
            .find(|&candidate| candidate != declared && fits(&lines, candidate))?;
        return Some(Diagnosis::Separator { found, declared });
    };
    date_mismatch(&lines, separator, &format.date_format)
}

fn is_utf16(encoding: InputEncoding) -> bool {
    matches!(encoding, InputEncoding::Utf16 | InputEncoding::Auto)
}

fn encoding_mismatch(head: &[u8], declared: InputEncoding) -> Option<Diagnosis> {
    let bom = Bom::of(head);
    if matches!(bom, Some(Bom::Utf16Le | Bom::Utf16Be)) && !is_utf16(declared) {
        return Some(Diagnosis::Utf16 { bom, declared });
    }
    if bom.is_none() && declared != InputEncoding::Utf16 && looks_like_utf16(head) {
        return Some(Diagnosis::Utf16 {
            bom: None,
            declared,
        });
    }
    let utf8 = valid_utf8_prefix(head);
    match declared {
        InputEncoding::Windows1252 | InputEncoding::Iso8859_1 if utf8 && !head.is_ascii() => {
            Some(Diagnosis::Utf8AsSingleByte { declared })
        }
        InputEncoding::Utf8 if !utf8 => Some(Diagnosis::NotUtf8),
        _ => None,
    }
}

/// Text with every other byte 00 (ASCII in UTF-16, either byte order).
fn looks_like_utf16(head: &[u8]) -> bool {
    let pairs = head.len() / 2;
    if pairs < 8 {
        return false;
    }
    let zeros = |odd: usize| {
        head.iter()
            .skip(odd)
            .step_by(2)
            .filter(|&&b| b == 0)
            .count()
    };
    let (even, odd) = (zeros(0), zeros(1));
    even.max(odd) * 10 >= pairs * 8 && even.min(odd) * 10 < pairs
}

/// Valid UTF-8, allowing a sequence cut by the end of the head.
fn valid_utf8_prefix(head: &[u8]) -> bool {
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(err) => err.error_len().is_none() && head.len() - err.valid_up_to() < 4,
    }
}

/// The head as text, as the import would read it (lossy: for counting).
fn as_text(head: &[u8], declared: InputEncoding) -> String {
    match (declared, Bom::of(head)) {
        (InputEncoding::Utf16 | InputEncoding::Auto, Some(Bom::Utf16Be)) => encoding_rs::UTF_16BE
            .decode_with_bom_removal(head)
            .0
            .into_owned(),
        (InputEncoding::Utf16, _) | (InputEncoding::Auto, Some(Bom::Utf16Le)) => {
            encoding_rs::UTF_16LE
                .decode_with_bom_removal(head)
                .0
                .into_owned()
        }
        _ => {
            let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(head)
                .0
                .into_owned()
        }
    }
}

/// Non-blank lines of the head, after a header; the last one is dropped when
/// the head ends inside it.
fn sample_lines(text: &str) -> Vec<&str> {
    let complete = match text.rfind(['\n', '\r']) {
        Some(end) => &text[..end],
        None => text,
    };
    let mut lines: Vec<&str> = complete
        .split(['\n', '\r'])
        .filter(|line| !line.trim().is_empty())
        .take(LINES + 1)
        .collect();
    let header = lines
        .first()
        .is_some_and(|line| line.trim_start().to_ascii_lowercase().starts_with("email"));
    if header {
        lines.remove(0);
    }
    lines
}

/// The fields of a line, quotes respected (a line of a record that spans
/// lines is counted as it comes: the diagnosis only needs most lines).
fn split_line(line: &str, separator: Separator) -> Vec<String> {
    let sep = char::from(separator.byte());
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted || field.trim().is_empty() => quoted = !quoted,
            c if c == sep && !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    fields.push(field.trim().to_string());
    if separator == Separator::Space {
        fields.retain(|field| !field.is_empty());
    }
    fields
}

/// Most lines have 4 or 5 fields with this separator.
fn fits(lines: &[&str], separator: Separator) -> bool {
    if lines.is_empty() {
        return true;
    }
    let good = lines
        .iter()
        .filter(|line| (4..=5).contains(&split_line(line, separator).len()))
        .count();
    good * 10 >= lines.len() * 8
}

fn date_mismatch(lines: &[&str], separator: Separator, declared: &DateFormat) -> Option<Diagnosis> {
    if separator == Separator::Space {
        return None;
    }
    let dates: Vec<String> = lines
        .iter()
        .filter_map(|line| split_line(line, separator).into_iter().nth(2))
        .filter(|date| !date.is_empty())
        .collect();
    if dates.is_empty() {
        return None;
    }
    let share = |format: &DateFormat| {
        let good = dates
            .iter()
            .filter(|date| format.parse(date, chrono_tz::UTC).is_ok())
            .count();
        good as f64 / dates.len() as f64
    };
    if share(declared) >= 0.5 {
        return None;
    }
    let found: Vec<&'static str> = STANDARD_FORMATS
        .iter()
        .copied()
        .chain([ISO8601])
        .filter(|&pattern| pattern != declared.pattern())
        .filter(|pattern| DateFormat::new(pattern).is_ok_and(|format| share(&format) >= 0.9))
        .collect();
    if found.is_empty() {
        return None;
    }
    Some(Diagnosis::DateFormat {
        found,
        declared: declared.pattern().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{HeaderMode, PurposeMap, UnknownSubscription, DEFAULT_MAX_ROW_BYTES};
    use super::*;

    fn format(separator: Separator, encoding: InputEncoding, date: &str) -> RowFormat {
        RowFormat {
            date_format: DateFormat::new(date).unwrap(),
            timezone: chrono_tz::Europe::Paris,
            separator,
            encoding,
            header: HeaderMode::Auto,
            max_row_bytes: DEFAULT_MAX_ROW_BYTES,
            purposes: PurposeMap {
                default_purpose: "email_global".into(),
                subscriptions: HashMap::new(),
                unknown: UnknownSubscription::Reject,
            },
        }
    }

    const DMY: &str = "dd/MM/yyyy HH:mm:ss";
    const MDY: &str = "MM/dd/yyyy HH:mm:ss";

    fn rows(sep: &str, dates: &[&str]) -> String {
        let mut text = format!("email{sep}purpose{sep}date{sep}origin\r\n");
        for (i, date) in dates.iter().enumerate() {
            text.push_str(&format!(
                "c{i}@example.com{sep}\"J’accepte{sep} la lettre\"{sep}{date}{sep}203.0.113.{i}\r\n"
            ));
        }
        text
    }

    fn said(head: &[u8], format: &RowFormat) -> String {
        diagnose(head, format)
            .map(|d| d.to_string())
            .unwrap_or_default()
    }

    const DATES: [&str; 3] = [
        "25/11/2026 10:00:00",
        "03/11/2026 11:00:00",
        "30/10/2026 09:15:00",
    ];

    #[test]
    fn the_separator_really_used() {
        let semicolon = format(Separator::Semicolon, InputEncoding::Utf8, DMY);
        assert_eq!(
            said(rows("\t", &DATES).as_bytes(), &semicolon),
            "the rows are separated by tabs, the import says ';': set separator = \"tab\""
        );
        let tab = format(Separator::Tab, InputEncoding::Utf8, DMY);
        assert_eq!(
            said(rows(",", &DATES).as_bytes(), &tab),
            "the rows are separated by commas, the import says tab: set separator = \"comma\""
        );
        // Right separator and dates: nothing to say.
        assert_eq!(diagnose(rows(";", &DATES).as_bytes(), &semicolon), None);
    }

    #[test]
    fn utf16_read_as_something_else() {
        let text = rows("\t", &DATES);
        let mut le = b"\xFF\xFE".to_vec();
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let utf8 = format(Separator::Tab, InputEncoding::Utf8, DMY);
        assert_eq!(
            said(&le, &utf8),
            "this file is UTF-16 (byte-order mark FF FE), the import says utf-8: set encoding = \"utf-16\" (or \"auto\")"
        );
        let mut be = b"\xFE\xFF".to_vec();
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        let cp1252 = format(Separator::Tab, InputEncoding::Windows1252, DMY);
        assert!(said(&be, &cp1252).starts_with(
            "this file is UTF-16 (byte-order mark FE FF), the import says windows-1252"
        ));
        let bare: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert!(
            said(&bare, &utf8).starts_with("this file looks like UTF-16 without a byte-order mark")
        );
        // Read as UTF-16, it is fine.
        let utf16 = format(Separator::Tab, InputEncoding::Utf16, DMY);
        assert_eq!(diagnose(&le, &utf16), None);
        assert_eq!(diagnose(&bare, &utf16), None);
        let auto = format(Separator::Tab, InputEncoding::Auto, DMY);
        assert_eq!(diagnose(&be, &auto), None);
        // UTF-16 with the wrong separator: the separator is named.
        let semicolon = format(Separator::Semicolon, InputEncoding::Utf16, DMY);
        assert!(said(&le, &semicolon).starts_with("the rows are separated by tabs"));
    }

    #[test]
    fn mojibake_either_way() {
        let text = rows(";", &DATES);
        let latin1 = format(Separator::Semicolon, InputEncoding::Iso8859_1, DMY);
        assert_eq!(
            said(text.as_bytes(), &latin1),
            "this file is UTF-8 (its accented letters read as mojibake such as \"Ã©\" for \"é\"), the import says iso-8859-1: set encoding = \"utf-8\" (or \"auto\")"
        );
        let (cp1252, _, _) = encoding_rs::WINDOWS_1252.encode(&text);
        let utf8 = format(Separator::Semicolon, InputEncoding::Utf8, DMY);
        assert!(said(&cp1252, &utf8).starts_with("this file is not UTF-8 (probably Windows-1252"));
        // Plain ASCII is the same in all three: nothing to say.
        let ascii = rows(";", &DATES).replace('’', "'");
        assert_eq!(diagnose(ascii.as_bytes(), &latin1), None);
        // A multi-byte character cut by the end of the head is still UTF-8.
        let cut = &text.as_bytes()[..text.find('’').unwrap() + 1];
        assert_eq!(diagnose(cut, &utf8), None);
    }

    #[test]
    fn the_date_format_the_dates_have() {
        let mdy = format(Separator::Semicolon, InputEncoding::Utf8, MDY);
        assert_eq!(
            said(rows(";", &DATES).as_bytes(), &mdy),
            "the dates look like dd/MM/yyyy HH:mm:ss, the import says MM/dd/yyyy HH:mm:ss: set date_format = \"dd/MM/yyyy HH:mm:ss\""
        );
        let iso = ["2026-11-05T10:23:45Z", "2026-11-05 10:23:45+01:00"];
        let dmy = format(Separator::Semicolon, InputEncoding::Utf8, DMY);
        assert_eq!(
            said(rows(";", &iso).as_bytes(), &dmy),
            "the dates look like iso8601, the import says dd/MM/yyyy HH:mm:ss: set date_format = \"iso8601\""
        );
        // Days up to 12 fit both orders: both are named, none chosen.
        let ambiguous = ["05/11/2026 10:00:00", "03/12/2026 11:00:00"];
        let ymd = format(
            Separator::Semicolon,
            InputEncoding::Utf8,
            "yyyy-MM-dd HH:mm:ss",
        );
        assert_eq!(
            said(rows(";", &ambiguous).as_bytes(), &ymd),
            "the dates look like dd/MM/yyyy HH:mm:ss or MM/dd/yyyy HH:mm:ss, the import says yyyy-MM-dd HH:mm:ss"
        );
        // Dates in no standard format: nothing to say.
        let odd = ["5 Nov 2026", "6 Nov 2026"];
        assert_eq!(diagnose(rows(";", &odd).as_bytes(), &dmy), None);
    }
}
