//! Encodings: what an import declares, what a file turns out to be, and the
//! streaming UTF-16 → UTF-8 decoder.
//!
//! Single-byte encodings are decoded field by field by the reader; UTF-16 is
//! turned into UTF-8 before the record splitter sees it (its line breaks,
//! quotes and separators are then ASCII bytes like any other), a read at a
//! time, so a UTF-16 file is never held whole. A byte sequence that is not
//! UTF-16 becomes the byte 0xFF, which UTF-8 never holds, so the row it is in
//! is rejected ("not valid UTF-16") and the rest of the file reads on.
use std::io::{self, Read};

use encoding_rs::{DecoderResult, UTF_16BE, UTF_16LE};

use super::Utf8Probe;

/// The encoding an import declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEncoding {
    Utf8,
    Windows1252,
    Iso8859_1,
    /// UTF-16, little-endian unless a byte-order mark says big-endian.
    Utf16,
    /// A UTF-16 or UTF-8 byte-order mark decides; else UTF-8 when the whole
    /// file is valid UTF-8, else Windows-1252.
    Auto,
}

/// A byte-order mark at the start of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bom {
    Utf8,
    Utf16Le,
    Utf16Be,
}

impl Bom {
    /// The mark at the start of `head`, if any.
    pub fn of(head: &[u8]) -> Option<Bom> {
        if head.starts_with(b"\xEF\xBB\xBF") {
            Some(Bom::Utf8)
        } else if head.starts_with(b"\xFF\xFE") {
            Some(Bom::Utf16Le)
        } else if head.starts_with(b"\xFE\xFF") {
            Some(Bom::Utf16Be)
        } else {
            None
        }
    }

    /// The mark's bytes, as an operator reads them in a hex dump.
    pub fn hex(self) -> &'static str {
        match self {
            Bom::Utf8 => "EF BB BF",
            Bom::Utf16Le => "FF FE",
            Bom::Utf16Be => "FE FF",
        }
    }
}

impl InputEncoding {
    pub fn from_config(text: &str) -> Option<InputEncoding> {
        match text.to_ascii_lowercase().as_str() {
            "utf-8" | "utf8" => Some(InputEncoding::Utf8),
            "windows-1252" | "cp1252" => Some(InputEncoding::Windows1252),
            "iso-8859-1" | "latin1" | "latin-1" => Some(InputEncoding::Iso8859_1),
            "utf-16" | "utf16" => Some(InputEncoding::Utf16),
            "auto" => Some(InputEncoding::Auto),
            _ => None,
        }
    }

    /// The word an operator writes in the config for this encoding.
    pub fn config_name(self) -> &'static str {
        match self {
            InputEncoding::Utf8 => "utf-8",
            InputEncoding::Windows1252 => "windows-1252",
            InputEncoding::Iso8859_1 => "iso-8859-1",
            InputEncoding::Utf16 => "utf-16",
            InputEncoding::Auto => "auto",
        }
    }

    /// `content_is_utf8` is whether the whole file is valid UTF-8 (a BOM
    /// allowed); `bom` the byte-order mark it starts with.
    pub fn resolve(self, content_is_utf8: bool, bom: Option<Bom>) -> ResolvedEncoding {
        match (self, bom) {
            (InputEncoding::Utf8, _) => ResolvedEncoding::Utf8,
            (InputEncoding::Windows1252, _) => ResolvedEncoding::Windows1252,
            (InputEncoding::Iso8859_1, _) => ResolvedEncoding::Iso8859_1,
            (InputEncoding::Utf16 | InputEncoding::Auto, Some(Bom::Utf16Be)) => {
                ResolvedEncoding::Utf16Be
            }
            (InputEncoding::Utf16, _) | (InputEncoding::Auto, Some(Bom::Utf16Le)) => {
                ResolvedEncoding::Utf16Le
            }
            (InputEncoding::Auto, Some(Bom::Utf8)) => ResolvedEncoding::Utf8,
            (InputEncoding::Auto, None) if content_is_utf8 => ResolvedEncoding::Utf8,
            (InputEncoding::Auto, None) => ResolvedEncoding::Windows1252,
        }
    }
}

/// The one encoding a given file is read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedEncoding {
    Utf8,
    Windows1252,
    Iso8859_1,
    Utf16Le,
    Utf16Be,
}

impl ResolvedEncoding {
    /// Any bytes of a record as text (invalid sequences become U+FFFD): for
    /// showing an original line, e.g. in a rejects file. A UTF-16 file's
    /// records are already UTF-8 when the reader hands them out.
    pub fn decode_lossy(self, raw: &[u8]) -> std::borrow::Cow<'_, str> {
        match self {
            ResolvedEncoding::Utf8 | ResolvedEncoding::Utf16Le | ResolvedEncoding::Utf16Be => {
                String::from_utf8_lossy(raw)
            }
            ResolvedEncoding::Windows1252 => encoding_rs::WINDOWS_1252.decode(raw).0,
            ResolvedEncoding::Iso8859_1 => raw.iter().map(|&byte| byte as char).collect(),
        }
    }

    /// Whether the records the splitter sees are UTF-8 (UTF-16 is decoded
    /// to UTF-8 before splitting).
    pub(super) fn splits_utf8(self) -> bool {
        matches!(
            self,
            ResolvedEncoding::Utf8 | ResolvedEncoding::Utf16Le | ResolvedEncoding::Utf16Be
        )
    }

    /// How the record's bytes reach the splitter.
    pub(super) fn input<R: Read>(self, input: R) -> Input<R> {
        match self {
            ResolvedEncoding::Utf16Le => Input::Utf16(Utf16Reader::new(input, false)),
            ResolvedEncoding::Utf16Be => Input::Utf16(Utf16Reader::new(input, true)),
            _ => Input::Bytes(input),
        }
    }
}

/// What the encoding-relevant probe of a whole file found.
#[derive(Debug, Clone, Default)]
pub struct ContentProbe {
    utf8: Utf8Probe,
    head: [u8; 3],
    head_len: usize,
}

impl ContentProbe {
    pub fn new() -> ContentProbe {
        ContentProbe::default()
    }

    /// Feeds the next chunk of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        let room = self.head.len() - self.head_len;
        let take = room.min(chunk.len());
        self.head[self.head_len..self.head_len + take].copy_from_slice(&chunk[..take]);
        self.head_len += take;
        self.utf8.feed(chunk);
    }

    /// Whether everything fed is valid UTF-8.
    pub fn is_utf8(&self) -> bool {
        self.utf8.finish()
    }

    /// The byte-order mark the file starts with.
    pub fn bom(&self) -> Option<Bom> {
        Bom::of(&self.head[..self.head_len])
    }
}

/// A file's bytes as the splitter reads them.
pub(super) enum Input<R> {
    Bytes(R),
    Utf16(Utf16Reader<R>),
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::Bytes(input) => input.read(buf),
            Input::Utf16(input) => input.read(buf),
        }
    }
}

/// Bytes read from the UTF-16 input per decoding step.
const UTF16_CHUNK: usize = 32 * 1024;
/// What a byte sequence that is not UTF-16 becomes: never a byte of UTF-8.
const NOT_UTF16: u8 = 0xFF;

/// UTF-16 in, UTF-8 out, a read at a time; a byte-order mark is dropped.
pub(super) struct Utf16Reader<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    raw: Vec<u8>,
    raw_start: usize,
    raw_end: usize,
    eof: bool,
    done: bool,
    out: Vec<u8>,
    out_start: usize,
}

impl<R: Read> Utf16Reader<R> {
    fn new(inner: R, big_endian: bool) -> Utf16Reader<R> {
        let encoding = if big_endian { UTF_16BE } else { UTF_16LE };
        Utf16Reader {
            inner,
            decoder: encoding.new_decoder_with_bom_removal(),
            raw: vec![0; UTF16_CHUNK],
            raw_start: 0,
            raw_end: 0,
            eof: false,
            done: false,
            out: Vec::new(),
            out_start: 0,
        }
    }

    /// Decodes the next step into `out`.
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.out_start = 0;
        if self.raw_start == self.raw_end && !self.eof {
            self.raw_start = 0;
            self.raw_end = loop {
                match self.inner.read(&mut self.raw) {
                    Ok(read) => break read,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => return Err(err),
                }
            };
            self.eof = self.raw_end == 0;
        }
        let src = self
            .raw
            .get(self.raw_start..self.raw_end)
            .unwrap_or_default();
        let room = self
            .decoder
            .max_utf8_buffer_length_without_replacement(src.len())
            .unwrap_or(3 * src.len() + 16);
        self.out.resize(room.max(4), 0);
        let (result, read, written) =
            self.decoder
                .decode_to_utf8_without_replacement(src, &mut self.out, self.eof);
        self.raw_start += read;
        self.out.truncate(written);
        match result {
            DecoderResult::Malformed(..) => self.out.push(NOT_UTF16),
            DecoderResult::InputEmpty if self.eof => self.done = true,
            DecoderResult::InputEmpty | DecoderResult::OutputFull => {}
        }
        Ok(())
    }
}

impl<R: Read> Read for Utf16Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let pending = self.out.get(self.out_start..).unwrap_or_default();
            if !pending.is_empty() || buf.is_empty() {
                let n = pending.len().min(buf.len());
                buf[..n].copy_from_slice(&pending[..n]);
                self.out_start += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(text: &str, big_endian: bool, bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if bom {
            out.extend_from_slice(if big_endian { b"\xFE\xFF" } else { b"\xFF\xFE" });
        }
        for unit in text.encode_utf16() {
            out.extend_from_slice(&if big_endian {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            });
        }
        out
    }

    fn decode(bytes: &[u8], big_endian: bool) -> Vec<u8> {
        let mut out = Vec::new();
        Utf16Reader::new(bytes, big_endian)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn both_byte_orders_decode_with_or_without_a_mark() {
        let text = "email\tpurpose\r\njane@example.com\tJ’accepte — été 😀\r\n";
        for big_endian in [false, true] {
            for bom in [false, true] {
                assert_eq!(
                    decode(&utf16(text, big_endian, bom), big_endian),
                    text.as_bytes(),
                    "big endian {big_endian}, bom {bom}"
                );
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf16_become_a_byte_utf8_never_holds() {
        let mut odd = utf16("a;b\n", false, true);
        odd.push(b'x');
        assert_eq!(decode(&odd, false), b"a;b\n\xFF");
        // An unpaired surrogate in the middle.
        let mut lone = utf16("a", false, false);
        lone.extend_from_slice(&0xD800u16.to_le_bytes());
        lone.extend_from_slice(&utf16("b\n", false, false));
        assert_eq!(decode(&lone, false), b"a\xFFb\n");
    }

    #[test]
    fn resolve_follows_the_mark_then_the_content() {
        use InputEncoding::*;
        use ResolvedEncoding as R;
        for (declared, utf8, bom, want) in [
            (Auto, false, Some(Bom::Utf16Le), R::Utf16Le),
            (Auto, false, Some(Bom::Utf16Be), R::Utf16Be),
            (Auto, true, Some(Bom::Utf8), R::Utf8),
            (Auto, true, None, R::Utf8),
            (Auto, false, None, R::Windows1252),
            (Utf16, false, None, R::Utf16Le),
            (Utf16, false, Some(Bom::Utf16Be), R::Utf16Be),
            (Utf8, false, Some(Bom::Utf16Le), R::Utf8),
            (Windows1252, true, None, R::Windows1252),
        ] {
            assert_eq!(declared.resolve(utf8, bom), want, "{declared:?} {bom:?}");
        }
        assert_eq!(InputEncoding::from_config("UTF-16"), Some(Utf16));
        for encoding in [Utf8, Windows1252, Iso8859_1, Utf16, Auto] {
            assert_eq!(
                InputEncoding::from_config(encoding.config_name()),
                Some(encoding)
            );
        }
    }

    #[test]
    fn the_probe_sees_the_mark_across_chunks() {
        let mut probe = ContentProbe::new();
        for byte in [0xFFu8, 0xFE, b'a', 0] {
            probe.feed(&[byte]);
        }
        assert_eq!(probe.bom(), Some(Bom::Utf16Le));
        assert!(!probe.is_utf8());
        let mut probe = ContentProbe::new();
        probe.feed(b"\xEF\xBB");
        probe.feed(b"\xBFemail");
        assert_eq!(probe.bom(), Some(Bom::Utf8));
        assert!(probe.is_utf8());
    }
}
