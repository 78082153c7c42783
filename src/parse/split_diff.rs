//! The record splitter against `csv-core` (the `csv` crate's core), on the
//! dialect of SPEC §1, however the input is cut into reads.
//!
//! Where the two agree by design they must give the same fields: `;` `,`
//! tab or space separators, `"` quoting with `""`, quoted fields over
//! several lines, LF, CRLF and CR line endings, a last record without one,
//! empty lines skipped. Fields are compared trimmed (the reader trims every
//! field), and csv-core's quoted line breaks as `\n` (the dialect writes each
//! as `\n`; csv-core keeps the bytes). Where the dialect differs on purpose,
//! a test below says so:
//! - blanks before an opening quote: the field is still quoted here;
//!   csv-core reads the quote as text;
//! - the space separator: a run of spaces is one separator here, and a line
//!   of blanks is a blank line (skipped); csv-core makes empty fields;
//! - blanks after a closing quote are dropped here, kept by csv-core;
//! - a quote left open: here the record is marked unterminated (rejected),
//!   csv-core gives the text to the end of the file as the field;
//! - the row size limit: here a record longer than `max_row_bytes` is cut
//!   at its next line ending, quotes ignored; csv-core has no limit.
use proptest::prelude::*;

use super::encoding::Input;
use super::records::Records;
use super::split::{unquote, Splitter};

type Fields = Vec<Vec<u8>>;

/// A reader returning reads of the given sizes, in turn.
struct Chunks<'a> {
    data: &'a [u8],
    cuts: &'a [usize],
    at: usize,
}

impl std::io::Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cut = self.cuts.get(self.at % self.cuts.len().max(1)).copied();
        self.at += 1;
        let n = cut.unwrap_or(1).max(1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Our records (blank lines skipped), each field unquoted and trimmed, with
/// whether it was left unterminated or too long.
fn ours(input: &[u8], sep: u8, max: usize, cuts: &[usize]) -> Vec<(Fields, bool, bool)> {
    let reader = Chunks {
        data: input,
        cuts,
        at: 0,
    };
    let mut records = Records::new(Input::Bytes(reader), Splitter::new(sep, max), false);
    let mut out = Vec::new();
    while records.next().unwrap() {
        let rec = records.rec();
        if rec.blank {
            continue;
        }
        let record = records.record();
        let fields = records
            .spans()
            .iter()
            .map(|span| {
                let raw = &record[span.start..span.end];
                let mut text = Vec::new();
                if span.cook {
                    unquote(raw, &mut text);
                } else {
                    text.extend_from_slice(raw);
                }
                text.trim_ascii().to_vec()
            })
            .collect();
        out.push((fields, rec.unterminated, rec.too_long));
    }
    out
}

/// csv-core's records, fed in reads of the given sizes; quoted line breaks
/// as `\n`, fields trimmed.
fn csv_core(input: &[u8], sep: u8, cuts: &[usize]) -> Vec<Fields> {
    use csv_core::ReadRecordResult::*;
    let mut reader = csv_core::ReaderBuilder::new().delimiter(sep).build();
    let (mut output, mut ends) = (vec![0u8; 1 << 16], vec![0usize; 1024]);
    let (mut outlen, mut endlen, mut pos, mut turn) = (0, 0, 0usize, 0);
    let mut records = Vec::new();
    loop {
        let cut = cuts.get(turn % cuts.len().max(1)).copied().unwrap_or(1);
        turn += 1;
        let chunk = &input[pos..pos.saturating_add(cut.max(1)).min(input.len())];
        let (result, nin, nout, nend) =
            reader.read_record(chunk, &mut output[outlen..], &mut ends[endlen..]);
        pos += nin;
        outlen += nout;
        endlen += nend;
        match result {
            InputEmpty => {}
            OutputFull | OutputEndsFull => panic!("test buffers too small"),
            Record => {
                let mut start = 0;
                let mut fields = Vec::new();
                for &end in &ends[..endlen] {
                    let text = String::from_utf8_lossy(&output[start..end])
                        .replace("\r\n", "\n")
                        .replace('\r', "\n");
                    fields.push(text.as_bytes().trim_ascii().to_vec());
                    start = end;
                }
                records.push(fields);
                (outlen, endlen) = (0, 0);
            }
            End => return records,
        }
    }
}

/// Both splitters, whole and cut into reads; ours must not have rejected.
fn both(input: &[u8], sep: u8, cuts: &[usize]) -> (Vec<Fields>, Vec<Fields>) {
    let whole = ours(input, sep, 1 << 20, &[usize::MAX]);
    assert_eq!(
        whole,
        ours(input, sep, 1 << 20, cuts),
        "ours, cut into reads"
    );
    let theirs = csv_core(input, sep, &[usize::MAX]);
    assert_eq!(
        theirs,
        csv_core(input, sep, cuts),
        "csv-core, cut into reads"
    );
    let whole = whole
        .into_iter()
        .map(|(fields, unterminated, too_long)| {
            assert!(!unterminated && !too_long);
            fields
        })
        .collect();
    (whole, theirs)
}

/// One field of the shared dialect, written for separator `sep`.
fn field(sep: u8) -> impl Strategy<Value = String> {
    let space = sep == b' ';
    let unquoted = if space {
        // No blanks (a run of spaces is one separator), never empty.
        "[a-z0-9@.'-][a-z0-9@.\"'-]{0,8}"
    } else {
        // Blanks around (trimmed), never a quote first.
        "([ ]{0,2}[a-z0-9@.'-][a-z0-9@. \"'-]{0,8})?"
    };
    let quoted = "[a-z;, \t\"]{0,6}((\r\n|\r|\n)[a-z;, \t\"]{0,6}){0,2}"
        .prop_map(|text| format!("\"{}\"", text.replace('"', "\"\"")));
    let sep = char::from(sep);
    prop_oneof![
        unquoted.prop_map(move |text| text.replace([sep, '\t'], "x")),
        quoted,
    ]
}

/// A file of records in the shared dialect.
fn file() -> impl Strategy<Value = (u8, String)> {
    prop::sample::select(vec![b';', b',', b'\t', b' ']).prop_flat_map(|sep| {
        let record = (
            prop::collection::vec(field(sep), 1..7),
            prop::sample::select(vec!["\n", "\r\n", "\r", "\n\n", "\r\n\r\n"]),
        );
        prop::collection::vec(record, 1..12).prop_flat_map(move |records| {
            any::<bool>().prop_map(move |last_ending| {
                let mut text = String::new();
                let last = records.len() - 1;
                for (i, (fields, ending)) in records.iter().enumerate() {
                    text.push_str(&fields.join(&char::from(sep).to_string()));
                    if i < last || last_ending {
                        text.push_str(ending);
                    }
                }
                (sep, text)
            })
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_splitter_agrees_with_csv_core_on_the_shared_dialect(
        (sep, text) in file(),
        cuts in prop::collection::vec(1usize..24, 1..40),
    ) {
        let (ours, theirs) = both(text.as_bytes(), sep, &cuts);
        prop_assert_eq!(ours, theirs, "{:?}", text);
    }
}

fn texts(records: &[Fields]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|fields| {
            fields
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        })
        .collect()
}

#[test]
fn differences_blanks_before_an_opening_quote() {
    let (ours, theirs) = both(b"a;  \"b;c\";d\n", b';', &[3]);
    assert_eq!(texts(&ours), [["a", "b;c", "d"]]);
    assert_eq!(texts(&theirs), [["a", "\"b", "c\"", "d"]]);
}

#[test]
fn differences_the_space_separator() {
    let (ours, theirs) = both(b"a  b \"c d\"   e \n   \nf\n", b' ', &[2]);
    assert_eq!(texts(&ours), [vec!["a", "b", "c d", "e"], vec!["f"]]);
    assert_eq!(
        texts(&theirs),
        [
            vec!["a", "", "b", "c d", "", "", "e", ""],
            vec!["", "", "", ""],
            vec!["f"]
        ]
    );
}

#[test]
fn differences_blanks_after_a_closing_quote() {
    let (ours, theirs) = both(b"\"a\"  b;c\n", b';', &[1]);
    assert_eq!(texts(&ours), [["ab", "c"]]);
    assert_eq!(texts(&theirs), [["a  b", "c"]]);
}

#[test]
fn differences_a_quote_left_open() {
    let input = b"a;\"b\nc;d\n";
    let got = ours(input, b';', 1024, &[2]);
    assert_eq!(got.len(), 1);
    assert!(got[0].1, "marked unterminated");
    assert_eq!(texts(&csv_core(input, b';', &[2])), [["a", "b\nc;d"]]);
}

#[test]
fn differences_the_row_size_limit() {
    let input = b"aaaaaaaaaaaaaaaa;\"x\nyyyy;zzzzzzzz\";b\nok;1\n";
    let got = ours(input, b';', 8, &[3]);
    // The long record ends at its first line ending, quotes ignored.
    assert_eq!(got.len(), 3);
    assert!(got[0].2, "too long");
    assert_eq!(got[2].0, [b"ok".to_vec(), b"1".to_vec()]);
    assert_eq!(csv_core(input, b';', &[3]).len(), 2);
}
