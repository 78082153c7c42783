//! Decoding: a split record's bytes and field spans → the fields' text.
//!
//! Owns the text of a record in the file's encoding: UTF-8 is checked and
//! copied once, into `record_text`, and its fields are slices of that; a
//! single-byte record that is pure ASCII is the same; other single-byte text
//! (windows-1252, ISO-8859-1) is decoded field by field through a table, and
//! fields with `""` escapes or line breaks are unquoted ([`unquote`]) first.
//! UTF-16 never reaches here as UTF-16: [`super::encoding`] turns it into
//! UTF-8 before splitting, so its records are checked like UTF-8 ones (a byte
//! that was not UTF-16 fails the check). Fields are trimmed.
//!
//! It never judges a field's content (that is [`super::rules`]) and never
//! allocates per record once its buffers have grown to the longest one.
use std::sync::OnceLock;

use super::rules::{may_contain_control, Fields};
use super::split::{unquote, Span};
use super::{RejectReason, ResolvedEncoding};

/// Where a field's text is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// `record_text` (the record, checked UTF-8).
    Record,
    /// `decoded`.
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

/// The decoded fields of the current record.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    /// The current record as text, once checked to be UTF-8.
    record_text: String,
    /// Unquoted bytes of fields that need it.
    cooked: Vec<u8>,
    /// Decoded text of fields not read in place from the record.
    decoded: String,
    fields: Vec<Field>,
    /// Fields in the record, including those past the spans kept.
    count: usize,
}

impl Decoded {
    pub(super) fn new() -> Decoded {
        Decoded::default()
    }

    /// Decodes `record`, whose fields are `spans` (of `count` in all).
    pub(super) fn decode(
        &mut self,
        record: &[u8],
        spans: &[Span],
        count: usize,
        encoding: ResolvedEncoding,
    ) -> Result<(), RejectReason> {
        self.count = count;
        // One copy of the record as text (UTF-8, or an ASCII record in a
        // single-byte encoding): its fields are then plain slices of it.
        self.record_text.clear();
        let in_place = if encoding.splits_utf8() {
            match as_utf8(record) {
                Some(text) => self.record_text.push_str(text),
                None if encoding == ResolvedEncoding::Utf8 => {
                    return Err(RejectReason::InvalidUtf8)
                }
                None => return Err(RejectReason::InvalidUtf16),
            }
            true
        } else if record.is_ascii() {
            self.record_text
                .push_str(std::str::from_utf8(record).unwrap_or_default());
            true
        } else {
            false
        };
        self.decode_fields(record, encoding, in_place, spans);
        Ok(())
    }

    /// The trimmed text of field `index` (empty past the fields kept).
    pub(super) fn text(&self, index: usize) -> &str {
        self.fields
            .get(index)
            .map_or("", |&field| self.text_of(field))
    }

    /// Bytes held by the buffers, to check that memory stays bounded.
    pub(super) fn capacity(&self) -> usize {
        self.record_text.capacity()
            + self.cooked.capacity()
            + self.decoded.capacity()
            + self.fields.capacity() * std::mem::size_of::<Field>()
    }

    fn text_of(&self, field: Field) -> &str {
        text_in(&self.record_text, &self.decoded, field)
    }

    /// Turns a record's spans into trimmed fields: in place for UTF-8, else
    /// decoded (and unquoted where needed) into `decoded`.
    fn decode_fields(
        &mut self,
        record: &[u8],
        encoding: ResolvedEncoding,
        in_place: bool,
        spans: &[Span],
    ) {
        self.fields.clear();
        self.cooked.clear();
        let mut out = std::mem::take(&mut self.decoded).into_bytes();
        out.clear();
        for span in spans {
            if in_place && !span.cook {
                self.fields.push(Field {
                    source: Source::Record,
                    start: span.start,
                    end: span.end,
                    quoted: span.quoted,
                });
                continue;
            }
            let mut bytes = record.get(span.start..span.end).unwrap_or_default();
            if span.cook {
                let from = self.cooked.len();
                unquote(bytes, &mut self.cooked);
                bytes = self.cooked.get(from..).unwrap_or_default();
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
            self.fields.push(Field {
                source: Source::Decoded,
                start: from,
                end: out.len(),
                quoted: span.quoted,
            });
        }
        // Always valid: UTF-8 checked before, or produced from the tables.
        self.decoded = String::from_utf8(out).unwrap_or_else(|err| {
            let mut bytes = err.into_bytes();
            bytes.clear();
            String::from_utf8(bytes).unwrap_or_default()
        });
        let Decoded {
            record_text,
            decoded,
            fields,
            ..
        } = self;
        for field in fields.iter_mut() {
            let text = text_in(record_text, decoded, *field);
            let trimmed = trim(text);
            field.start += trimmed.as_ptr() as usize - text.as_ptr() as usize;
            field.end = field.start + trimmed.len();
        }
    }
}

impl Fields for Decoded {
    fn count(&self) -> usize {
        self.count
    }

    fn field(&self, index: usize) -> Option<(&str, bool)> {
        let field = *self.fields.get(index)?;
        Some((self.text_of(field), field.quoted))
    }

    /// Every field is in the record's text or in `decoded`: one pass each.
    fn may_hold_control(&self, allow_tab: bool) -> bool {
        may_contain_control(self.record_text.as_bytes(), allow_tab)
            || may_contain_control(self.decoded.as_bytes(), allow_tab)
    }
}

/// `bytes` as text when they are UTF-8: encoding_rs checks a record with
/// SIMD (AVX2 from 64 bytes), in about half the time `std::str::from_utf8`
/// took on records with accents, which was a twentieth of an import's CPU.
fn as_utf8(bytes: &[u8]) -> Option<&str> {
    match encoding_rs::UTF_8.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(std::borrow::Cow::Borrowed(text)) => Some(text),
        _ => None,
    }
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

    fn span(start: usize, end: usize, quoted: bool, cook: bool) -> Span {
        Span {
            start,
            end,
            quoted,
            cook,
        }
    }

    #[test]
    fn fields_are_trimmed_slices_or_decoded_text() {
        let record = b" a ;\"b\"\"c\" ;\xe9t\xe9";
        let spans = [
            span(0, 3, false, false),
            span(4, 11, true, true),
            span(12, 15, false, false),
        ];
        let mut decoded = Decoded::new();
        decoded
            .decode(record, &spans, 3, ResolvedEncoding::Windows1252)
            .unwrap();
        assert_eq!(
            (0..3).map(|i| decoded.text(i)).collect::<Vec<_>>(),
            ["a", "b\"c", "été"]
        );
        assert_eq!(decoded.field(1), Some(("b\"c", true)));
        assert_eq!(decoded.text(3), "");
        assert_eq!(
            decoded.decode(record, &spans, 3, ResolvedEncoding::Utf8),
            Err(RejectReason::InvalidUtf8)
        );
        assert_eq!(
            decoded.decode(record, &spans, 3, ResolvedEncoding::Utf16Le),
            Err(RejectReason::InvalidUtf16)
        );
    }

    #[test]
    fn single_byte_tables_differ_where_the_encodings_do() {
        let mut out = Vec::new();
        decode_single_byte(b"l\x92\xe9 \x80", true, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "l’é €");
        let mut out = Vec::new();
        decode_single_byte(b"l\x92\xe9", false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "l\u{92}é");
    }
}
