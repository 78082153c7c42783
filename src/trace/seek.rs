//! Straight to an event's line: the byte offset where a physical line
//! starts, counted as the reader counts line endings, for the files that
//! can be read from there. Reads only; never writes.

use std::path::Path;

use super::*;

/// Where the wanted event's line starts, when the file can be read from
/// there: a single-byte or UTF-8 file as dropped (not compressed), a line
/// the index knows. Returns (byte offset, encoding, line, event number).
/// Line endings are counted as the reader counts them (LF, CRLF, CR); a
/// record that starts there is confirmed by its id, else the caller reads
/// the file from the start.
pub(super) fn seek_start(
    import: &Import,
    held: &Held<'_>,
    wanted: &Wanted,
) -> std::io::Result<Option<(u64, ResolvedEncoding, u64, u32)>> {
    let Wanted::Id(_, line, ordinal) = wanted else {
        return Ok(None);
    };
    let encoding = crate::pipeline::resolved_encoding(import, &held.print);
    let plain = matches!(
        encoding,
        ResolvedEncoding::Utf8 | ResolvedEncoding::Windows1252 | ResolvedEncoding::Iso8859_1
    );
    let name = held.occurrence.file_name.to_ascii_lowercase();
    let compressed = name.ends_with(".gz") || name.ends_with(".zip");
    if !plain || compressed || *line <= 1 || *line == index::LINE_UNKNOWN {
        return Ok(None);
    }
    let line = u64::from(*line);
    Ok(line_offset(&held.file, line)?.map(|offset| (offset, encoding, line, *ordinal)))
}

/// The byte offset where physical line `wanted` (from 1) starts. A line
/// ends with LF, CRLF, or a CR not followed by LF.
fn line_offset(path: &Path, wanted: u64) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let mut file = claim::open_regular(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut line = 1u64;
    let mut base = 0u64;
    // A CR at the very end of the previous read: its line ends there unless
    // this read starts with LF.
    let mut pending_cr = false;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => return Ok(None),
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let chunk = &buffer[..read];
        if pending_cr && chunk[0] != b'\n' {
            line += 1;
            if line == wanted {
                return Ok(Some(base));
            }
        }
        pending_cr = false;
        let mut at = 0;
        while let Some(found) = memchr::memchr2(b'\n', b'\r', &chunk[at..]) {
            let index = at + found;
            at = index + 1;
            if chunk[index] == b'\r' {
                match chunk.get(at) {
                    Some(b'\n') => continue, // CRLF: the LF ends the line
                    Some(_) => {}
                    None => {
                        pending_cr = true;
                        continue;
                    }
                }
            }
            line += 1;
            if line == wanted {
                return Ok(Some(base + at as u64));
            }
        }
        base += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::line_offset;

    #[test]
    fn lines_are_found_after_lf_crlf_and_lone_cr() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("f.csv");
        std::fs::write(&path, b"a\nbb\r\nccc\rdddd\n\ne").expect("write");
        let offsets: Vec<Option<u64>> = (2..=7)
            .map(|n| line_offset(&path, n).expect("read"))
            .collect();
        assert_eq!(
            offsets,
            vec![Some(2), Some(6), Some(10), Some(15), Some(16), None]
        );
    }
}
