//! Whether a whole file is valid UTF-8, fed chunk by chunk (for `encoding = "auto"`).

/// Checks UTF-8 validity of a byte stream split into arbitrary chunks.
#[derive(Debug, Clone)]
pub struct Utf8Probe {
    valid: bool,
    /// The start of a multi-byte sequence cut by the end of the last chunk.
    pending: [u8; 4],
    pending_len: usize,
}

/// The length of the sequence a lead byte starts (0 if it cannot lead one).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

impl Utf8Probe {
    pub fn new() -> Utf8Probe {
        Utf8Probe {
            valid: true,
            pending: [0; 4],
            pending_len: 0,
        }
    }

    /// Feeds the next chunk; chunks may split a multi-byte sequence.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !self.valid {
            return;
        }
        let mut rest = chunk;
        if self.pending_len > 0 {
            let need = sequence_len(self.pending[0]);
            while self.pending_len < need {
                let Some((&b, tail)) = rest.split_first() else {
                    return;
                };
                if let Some(slot) = self.pending.get_mut(self.pending_len) {
                    *slot = b;
                }
                self.pending_len += 1;
                rest = tail;
            }
            let complete = self.pending.get(..self.pending_len).unwrap_or(&[]);
            if std::str::from_utf8(complete).is_err() {
                self.valid = false;
                return;
            }
            self.pending_len = 0;
        }
        // encoding_rs checks with SIMD (AVX2), quicker than the standard library.
        let tail = rest
            .get(encoding_rs::Encoding::utf8_valid_up_to(rest)..)
            .unwrap_or(&[]);
        if tail.is_empty() {
            return;
        }
        match std::str::from_utf8(tail) {
            // A valid but incomplete sequence at the end of the chunk.
            Err(err) if err.error_len().is_none() && tail.len() <= 3 => {
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
            }
            _ => self.valid = false,
        }
    }

    /// True when everything fed is valid UTF-8 (a leading BOM is valid UTF-8).
    pub fn finish(&self) -> bool {
        self.valid && self.pending_len == 0
    }
}

/// The same as [`Utf8Probe::new`]: nothing fed yet, which is valid.
impl Default for Utf8Probe {
    fn default() -> Utf8Probe {
        Utf8Probe::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(chunks: &[&[u8]]) -> bool {
        let mut probe = Utf8Probe::new();
        for chunk in chunks {
            probe.feed(chunk);
        }
        probe.finish()
    }

    #[test]
    fn multi_byte_sequences_split_anywhere_are_valid() {
        let text = "a;J'accepte — été ’ 😀 €\n".as_bytes();
        for cut1 in 0..=text.len() {
            for cut2 in cut1..=text.len() {
                assert!(
                    probe(&[&text[..cut1], &text[cut1..cut2], &text[cut2..]]),
                    "cuts {cut1} {cut2}"
                );
            }
        }
        // One byte at a time.
        let singles: Vec<&[u8]> = text.chunks(1).collect();
        assert!(probe(&singles));
    }

    #[test]
    fn invalid_bytes_are_detected() {
        assert!(!probe(&[b"caf\xe9 au lait"])); // windows-1252 é
        assert!(!probe(&[b"abc", b"\x80"])); // lone continuation byte
        assert!(!probe(&[b"\xc3", b"("])); // broken sequence across chunks
        assert!(!probe(&[b"\xe2\x80", b"x"]));
        assert!(!probe(&[b"\xed\xa0\x80"])); // surrogate
        assert!(!probe(&[b"\xc0\xaf"])); // overlong
        assert!(!probe(&[b"ok\xe2\x80"])); // truncated at the end of the file
        assert!(!probe(&[b"ok", b"\xf0\x9f", b"\x98"]));
        // Once invalid, always invalid.
        assert!(!probe(&[b"\xff", b"fine"]));
    }

    #[test]
    fn bom_and_empty_input_are_valid() {
        assert!(probe(&[b"\xef\xbb\xbfemail;purpose\n"]));
        assert!(probe(&[b"\xef", b"\xbb", b"\xbf", b"email"]));
        assert!(probe(&[]));
        assert!(probe(&[b"", b""]));
    }

    #[test]
    fn default_is_new() {
        assert!(Utf8Probe::default().finish());
        let mut probe = Utf8Probe::default();
        probe.feed(b"caf\xe9");
        assert!(!probe.finish());
    }
}
