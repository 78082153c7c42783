//! parse: turns the bytes of one proof file into validated rows or rejects.
//!
//! Owns the file format of SPEC §1: decoding, line splitting, quoting, the
//! date formats and zones, and every row validation rule. It is pure: it reads
//! from any `Read`, never opens files, never looks at the clock, and never
//! keeps more than one row (at most `max_row_bytes`) in memory.

pub mod date;
pub mod sample;

use std::collections::HashMap;
use std::io::Read;

use chrono::{DateTime, Utc};

pub use date::{DateError, DateFormat};

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

/// The encoding an import declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEncoding {
    Utf8,
    Windows1252,
    Iso8859_1,
    /// UTF-8 when the whole file is valid UTF-8, else Windows-1252.
    Auto,
}

impl InputEncoding {
    pub fn from_config(text: &str) -> Option<InputEncoding> {
        match text.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(InputEncoding::Utf8),
            "windows-1252" | "cp1252" => Some(InputEncoding::Windows1252),
            "iso-8859-1" | "latin1" | "latin-1" => Some(InputEncoding::Iso8859_1),
            "auto" => Some(InputEncoding::Auto),
            _ => None,
        }
    }

    /// `content_is_utf8` is whether the whole file is valid UTF-8 (a BOM allowed).
    pub fn resolve(self, content_is_utf8: bool) -> ResolvedEncoding {
        match self {
            InputEncoding::Utf8 => ResolvedEncoding::Utf8,
            InputEncoding::Windows1252 => ResolvedEncoding::Windows1252,
            InputEncoding::Iso8859_1 => ResolvedEncoding::Iso8859_1,
            InputEncoding::Auto if content_is_utf8 => ResolvedEncoding::Utf8,
            InputEncoding::Auto => ResolvedEncoding::Windows1252,
        }
    }
}

/// The one encoding a given file is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedEncoding {
    Utf8,
    Windows1252,
    Iso8859_1,
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
    #[error("placeholder")]
    Placeholder,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
}

/// Streams the records of one file.
pub struct RowReader<'f, R: Read> {
    _format: &'f RowFormat,
    _input: R,
}

impl<'f, R: Read> RowReader<'f, R> {
    pub fn new(input: R, format: &'f RowFormat, encoding: ResolvedEncoding) -> Self {
        let _ = encoding;
        RowReader {
            _format: format,
            _input: input,
        }
    }

    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, ParseError> {
        todo!()
    }
}
