//! unpack: what a dropped file holds, as a stream of bytes.
//!
//! A `….gz` drop is gzip (every member of it, as `gzip -d` reads it), a
//! `….zip` drop a zip archive of exactly one proof file (stored or deflated);
//! any other name is read as it is. The content is decompressed as it is
//! read, never unpacked to disk, and every pass over a file (fingerprint,
//! validation, delivery, a re-read) reads it through [`open`], so they all see
//! the same bytes. Memory is a read buffer and the inflater's window whatever
//! the archive says: the zip's own directory is read only once its end record
//! says it holds one member.
//!
//! A decompression bomb is refused as it is read: the content may not exceed
//! `max_decompressed_bytes`, nor 1000 times the size of the dropped file. A
//! corrupt or truncated archive, or a zip of several members, is an error
//! that names it; the pipeline fails such a file with that reason.
//!
//! Never writes anything, and never reads a file other than the one named.
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::{DeflateDecoder, MultiGzDecoder};

use crate::claim::{self, Fingerprint};
use crate::parse::{ContentProbe, Diagnosis, InputEncoding, RowFormat, DIAGNOSIS_BYTES};

/// Default `max_decompressed_bytes`: 16 GiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// A drop decompresses to at most this many times its own size.
pub const MAX_RATIO: u64 = 1000;

/// How a dropped file is packed, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Plain,
    Gzip,
    Zip,
}

impl Packing {
    /// `….gz` and `….zip` (any case); anything else is plain.
    pub fn of(file_name: &str) -> Packing {
        let lower = |suffix: &str| {
            file_name.len() > suffix.len()
                && file_name
                    .get(file_name.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        };
        if lower(".gz") {
            Packing::Gzip
        } else if lower(".zip") {
            Packing::Zip
        } else {
            Packing::Plain
        }
    }

    /// The name without its `.gz` / `.zip` (`x.csv.gz` → `x.csv`).
    pub fn strip(file_name: &str) -> &str {
        let cut = match Packing::of(file_name) {
            Packing::Plain => 0,
            Packing::Gzip => 3,
            Packing::Zip => 4,
        };
        file_name.get(..file_name.len() - cut).unwrap_or(file_name)
    }

    fn word(self) -> &'static str {
        match self {
            Packing::Plain => "file",
            Packing::Gzip => "gzip file",
            Packing::Zip => "zip archive",
        }
    }
}

/// Why a dropped file's content cannot be read; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(
        "decompressed, the {packing} is over {limit} bytes ({why}): a decompression bomb, or raise max_decompressed_bytes"
    )]
    Bomb {
        packing: &'static str,
        limit: u64,
        why: &'static str,
    },
    #[error("the {packing} is corrupt or truncated: {detail}")]
    Corrupt {
        packing: &'static str,
        detail: String,
    },
    #[error("the zip archive holds {members} members; a proof drop must hold exactly one file")]
    Members { members: u64 },
    #[error("the zip archive's only member {name:?} {why}")]
    Member { name: String, why: String },
}

impl From<UnpackError> for io::Error {
    fn from(err: UnpackError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// The content of a dropped file, decompressed as it is read.
pub struct Content {
    inner: Inner,
    packing: Packing,
    limit: u64,
    /// Which of the two limits `limit` is.
    limit_why: &'static str,
    produced: u64,
}

enum Inner {
    Plain(File),
    Gzip(Box<MultiGzDecoder<File>>),
    Zip(Box<ZipMember>),
}

/// The one member of a zip archive, checked against its CRC and size at its end.
struct ZipMember {
    data: ZipData,
    crc: flate2::Crc,
    expected_crc: u32,
    expected_size: u64,
}

enum ZipData {
    Stored(io::Take<BufReader<File>>),
    Deflated(DeflateDecoder<io::Take<BufReader<File>>>),
}

/// Opens a dropped file for reading its content.
pub fn open(path: &Path, max_decompressed_bytes: u64) -> io::Result<Content> {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let packing = Packing::of(&name);
    let file = claim::open_regular(path)?;
    let dropped = file.metadata()?.len();
    let by_ratio = dropped.saturating_mul(MAX_RATIO).max(MAX_RATIO);
    let (limit, limit_why) = if by_ratio < max_decompressed_bytes {
        (by_ratio, "1000 times the size of the file as dropped")
    } else {
        (max_decompressed_bytes, "max_decompressed_bytes")
    };
    let inner = match packing {
        Packing::Plain => Inner::Plain(file),
        Packing::Gzip => Inner::Gzip(Box::new(MultiGzDecoder::new(file))),
        Packing::Zip => Inner::Zip(Box::new(open_zip(file, dropped, limit, limit_why)?)),
    };
    Ok(Content {
        inner,
        packing,
        limit: if packing == Packing::Plain {
            u64::MAX
        } else {
            limit
        },
        limit_why,
        produced: 0,
    })
}

impl Content {
    /// A plain file, already open (and perhaps positioned): read as it is.
    pub fn plain(file: File) -> Content {
        Content {
            inner: Inner::Plain(file),
            packing: Packing::Plain,
            limit: u64::MAX,
            limit_why: "",
            produced: 0,
        }
    }

    fn corrupt(&self, err: &io::Error) -> io::Error {
        UnpackError::Corrupt {
            packing: self.packing.word(),
            detail: err.to_string(),
        }
        .into()
    }
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = match &mut self.inner {
            Inner::Plain(file) => return file.read(buf),
            Inner::Gzip(gzip) => gzip.read(buf),
            Inner::Zip(member) => member.read(buf),
        };
        let read = match read {
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
            Err(err) if err.get_ref().is_some_and(|e| e.is::<UnpackError>()) => return Err(err),
            Err(err) => return Err(self.corrupt(&err)),
        };
        self.produced += read as u64;
        if self.produced > self.limit {
            return Err(UnpackError::Bomb {
                packing: self.packing.word(),
                limit: self.limit,
                why: self.limit_why,
            }
            .into());
        }
        Ok(read)
    }
}

impl Read for ZipMember {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = match &mut self.data {
            ZipData::Stored(data) => data.read(buf)?,
            ZipData::Deflated(data) => data.read(buf)?,
        };
        self.crc.update(buf.get(..read).unwrap_or_default());
        if read == 0 && !buf.is_empty() {
            let size = u64::from(self.crc.amount());
            if size != self.expected_size || self.crc.sum() != self.expected_crc {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the member's content ({size} bytes, CRC {:08x}) is not what the archive says ({} bytes, CRC {:08x})",
                        self.crc.sum(),
                        self.expected_size,
                        self.expected_crc
                    ),
                ));
            }
        }
        Ok(read)
    }
}

/// The zip's member count from its end-of-central-directory record (or the
/// zip64 one), read from the last 64 KiB + 22 bytes: how many members a
/// directory holds is known before the directory is read.
fn zip_members(file: &mut File, dropped: u64) -> io::Result<Option<u64>> {
    const EOCD: &[u8; 4] = b"PK\x05\x06";
    let tail_len = dropped.min(65_535 + 22);
    file.seek(SeekFrom::Start(dropped - tail_len))?;
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    file.read_exact(&mut tail)?;
    let Some(at) = tail
        .windows(4)
        .rposition(|window| window == EOCD)
        .filter(|&at| at + 22 <= tail.len())
    else {
        return Ok(None);
    };
    let u16_at = |at: usize| {
        tail.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let total = u16_at(at + 10).unwrap_or(0);
    if total != 0xFFFF {
        return Ok(Some(u64::from(total)));
    }
    // Zip64: the locator just before the record says where the zip64 record is.
    let Some(locator) = at.checked_sub(20).and_then(|l| tail.get(l..l + 20)) else {
        return Ok(None);
    };
    if !locator.starts_with(b"PK\x06\x07") {
        return Ok(None);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&locator[8..16]);
    let mut record = [0u8; 40];
    file.seek(SeekFrom::Start(u64::from_le_bytes(offset)))?;
    file.read_exact(&mut record)?;
    if !record.starts_with(b"PK\x06\x06") {
        return Ok(None);
    }
    let mut total = [0u8; 8];
    total.copy_from_slice(&record[32..40]);
    Ok(Some(u64::from_le_bytes(total)))
}

/// Checks that the archive holds one readable file and positions a reader
/// on its data.
fn open_zip(mut file: File, dropped: u64, limit: u64, why: &'static str) -> io::Result<ZipMember> {
    let corrupt = |detail: String| UnpackError::Corrupt {
        packing: Packing::Zip.word(),
        detail,
    };
    match zip_members(&mut file, dropped)? {
        None => return Err(corrupt("no end-of-central-directory record".into()).into()),
        Some(1) => {}
        Some(members) => return Err(UnpackError::Members { members }.into()),
    }
    file.seek(SeekFrom::Start(0))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|err| corrupt(err.to_string()))?;
    if archive.len() != 1 {
        return Err(UnpackError::Members {
            members: archive.len() as u64,
        }
        .into());
    }
    let (start, compressed, size, crc, method) = {
        let member = archive
            .by_index_raw(0)
            .map_err(|err| corrupt(err.to_string()))?;
        let fail = |why: String| UnpackError::Member {
            name: member.name().to_string(),
            why,
        };
        if !member.is_file() {
            return Err(fail("is not a file".into()).into());
        }
        if member.encrypted() {
            return Err(fail("is encrypted".into()).into());
        }
        if member.size() > limit {
            return Err(UnpackError::Bomb {
                packing: Packing::Zip.word(),
                limit,
                why,
            }
            .into());
        }
        let start = member
            .data_start()
            .ok_or_else(|| corrupt("the member's data cannot be found".into()))?;
        (
            start,
            member.compressed_size(),
            member.size(),
            member.crc32(),
            member.compression(),
        )
    };
    let mut file = archive.into_inner();
    file.seek(SeekFrom::Start(start))?;
    let raw = BufReader::new(file).take(compressed);
    let data = match method {
        zip::CompressionMethod::Stored => ZipData::Stored(raw),
        // DEFLATE, whether or not the zip crate has an inflater of its own.
        deflate if deflate == zip::CompressionMethod::DEFLATE => {
            ZipData::Deflated(DeflateDecoder::new(raw))
        }
        other => {
            return Err(UnpackError::Member {
                name: "of the archive".into(),
                why: format!("is compressed with {other}, which is not supported (use deflate)"),
            }
            .into())
        }
    };
    Ok(ZipMember {
        data,
        crc: flate2::Crc::new(),
        expected_crc: crc,
        expected_size: size,
    })
}

/// A file's SHA-256 (of the bytes as dropped, which is what archive/ keeps)
/// and the encoding clues of its content. For a compressed drop the content
/// is read through: with `encoding = "auto"` whole (whether it is valid
/// UTF-8 decides), which also finds a bomb or a corrupt archive before any
/// row is read; otherwise only its first bytes (a byte-order mark).
pub fn fingerprint(
    path: &Path,
    encoding: InputEncoding,
    max_decompressed_bytes: u64,
) -> io::Result<Fingerprint> {
    let mut fingerprint = claim::fingerprint(path)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    if Packing::of(&name) == Packing::Plain {
        return Ok(fingerprint);
    }
    let mut content = open(path, max_decompressed_bytes)?;
    let mut probe = ContentProbe::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut seen = 0usize;
    loop {
        let read = match content.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        probe.feed(buffer.get(..read).unwrap_or_default());
        seen += read;
        if encoding != InputEncoding::Auto && seen >= 4 {
            break;
        }
    }
    fingerprint.is_utf8 = probe.is_utf8();
    fingerprint.bom = probe.bom();
    Ok(fingerprint)
}

/// Why most rows of a file fail, from the start of its content (see
/// [`crate::parse::diagnose`]); `None` when no cause is clear or the file
/// cannot be read again.
pub fn diagnose(path: &Path, format: &RowFormat, max_decompressed_bytes: u64) -> Option<Diagnosis> {
    let head = head(path, max_decompressed_bytes, DIAGNOSIS_BYTES).ok()?;
    crate::parse::diagnose(&head, format)
}

/// Up to `max` bytes from the start of a dropped file's content.
pub fn head(path: &Path, max_decompressed_bytes: u64, max: usize) -> io::Result<Vec<u8>> {
    let content = open(path, max_decompressed_bytes)?;
    let mut head = Vec::with_capacity(max.min(1024 * 1024));
    content.take(max as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zip_of(members: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, data) in members {
            let options = zip::write::SimpleFileOptions::default().compression_method(method);
            writer.start_file(*name, options).unwrap();
            writer.write_all(data).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    fn read_all(path: &Path, max: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        open(path, max)?.read_to_end(&mut out)?;
        Ok(out)
    }

    const TEXT: &[u8] = b"email;purpose;date;origin\na@example.com;news;03/06/2020 23:28:55;ip\n";

    #[test]
    fn names_say_how_a_drop_is_packed() {
        assert_eq!(Packing::of("x.csv.gz"), Packing::Gzip);
        assert_eq!(Packing::of("X.CSV.GZ"), Packing::Gzip);
        assert_eq!(Packing::of("x.zip"), Packing::Zip);
        assert_eq!(Packing::of("x.csv"), Packing::Plain);
        assert_eq!(Packing::of(".gz"), Packing::Plain);
        assert_eq!(Packing::of("x.tgz"), Packing::Plain);
        assert_eq!(
            Packing::strip("pr-consentements-11.csv.gz"),
            "pr-consentements-11.csv"
        );
        assert_eq!(Packing::strip("pr-11.ZIP"), "pr-11");
        assert_eq!(Packing::strip("pr-11.csv"), "pr-11.csv");
    }

    #[test]
    fn gzip_and_zip_read_as_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let gz = dir.path().join("a.csv.gz");
        // Two gzip members one after the other, as `cat a.gz b.gz` makes.
        let mut two = gzip(&TEXT[..10]);
        two.extend_from_slice(&gzip(&TEXT[10..]));
        std::fs::write(&gz, &two).unwrap();
        assert_eq!(read_all(&gz, DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap(), TEXT);
        for method in [
            zip::CompressionMethod::Stored,
            zip::CompressionMethod::Deflated,
        ] {
            let path = dir.path().join("a.zip");
            std::fs::write(&path, zip_of(&[("a.csv", TEXT)], method)).unwrap();
            assert_eq!(
                read_all(&path, DEFAULT_MAX_DECOMPRESSED_BYTES).unwrap(),
                TEXT
            );
        }
        let plain = dir.path().join("a.csv");
        std::fs::write(&plain, TEXT).unwrap();
        assert_eq!(
            read_all(&plain, 1).unwrap(),
            TEXT,
            "plain files have no limit"
        );
    }

    #[test]
    fn bad_archives_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let message = |name: &str, bytes: &[u8], max: u64| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            match read_all(&path, max) {
                Ok(read) => format!("read whole: {} bytes", read.len()),
                Err(err) => err.to_string(),
            }
        };
        let whole = gzip(TEXT);
        let text = message("t.csv.gz", &whole[..whole.len() - 12], u64::MAX);
        assert!(
            text.starts_with("the gzip file is corrupt or truncated"),
            "{text}"
        );
        let text = message("n.csv.gz", b"not gzip at all", u64::MAX);
        assert!(
            text.starts_with("the gzip file is corrupt or truncated"),
            "{text}"
        );
        let text = message("b.csv.gz", &gzip(&vec![b'0'; 100_000]), 1_000);
        assert!(
            text.contains("over 1000 bytes (max_decompressed_bytes)"),
            "{text}"
        );
        // Zeros compress about 1030 to 1 at best: over the ratio, just.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(&vec![0u8; 10 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        let text = message("r.csv.gz", &bomb, u64::MAX);
        assert!(
            text.contains("1000 times the size of the file as dropped"),
            "{text}"
        );
        let two = zip_of(
            &[("a.csv", TEXT), ("b.csv", TEXT)],
            zip::CompressionMethod::Deflated,
        );
        let text = message("two.zip", &two, u64::MAX);
        assert_eq!(
            text,
            "the zip archive holds 2 members; a proof drop must hold exactly one file"
        );
        let text = message("z.zip", b"PK\x03\x04 truncated", u64::MAX);
        assert!(
            text.starts_with("the zip archive is corrupt or truncated"),
            "{text}"
        );
        let mut flipped = zip_of(&[("a.csv", TEXT)], zip::CompressionMethod::Stored);
        let at = flipped.windows(5).position(|w| w == b"email").unwrap();
        flipped[at] = b'E';
        let text = message("crc.zip", &flipped, u64::MAX);
        assert!(text.contains("is not what the archive says"), "{text}");
        let big = zip_of(
            &[("a.csv", &vec![b'x'; 50_000])],
            zip::CompressionMethod::Deflated,
        );
        let text = message("big.zip", &big, 10_000);
        assert!(text.contains("over 10000 bytes"), "{text}");
    }

    fn records(input: impl Read) -> Vec<String> {
        use crate::parse::{
            DateFormat, HeaderMode, PurposeMap, Record, ResolvedEncoding, RowFormat, RowReader,
            Separator, UnknownSubscription,
        };
        let format = RowFormat {
            date_format: DateFormat::new("dd/MM/yyyy HH:mm:ss").unwrap(),
            timezone: chrono_tz::UTC,
            separator: Separator::Semicolon,
            encoding: InputEncoding::Utf8,
            header: HeaderMode::Auto,
            max_row_bytes: 200,
            purposes: PurposeMap {
                default_purpose: "p".into(),
                subscriptions: Default::default(),
                unknown: UnknownSubscription::Reject,
            },
        };
        let mut reader = RowReader::new(input, &format, ResolvedEncoding::Utf8);
        let mut out = Vec::new();
        while let Some(record) = reader.next_record().unwrap() {
            out.push(match record {
                Record::Row(row) => format!("{row:?}"),
                Record::Reject(reject) => format!("{reject:?}"),
            });
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A gzip of a file (in one member or two) reads as exactly the
        /// file: the same bytes, so the same rows and rejects, line for line.
        #[test]
        fn a_gzip_of_a_file_reads_as_the_file(
            lines in proptest::collection::vec(
                "[a-c]{1,3}@x\\.fr;\"?[a-z; \n]{0,8}\"?;0[1-9]/06/2020 1[0-9]:00:00;ip", 0..60),
            cut in 0usize..4000,
        ) {
            let text = lines.join("\r\n").into_bytes();
            let cut = cut.min(text.len());
            let mut packed = gzip(&text[..cut]);
            packed.extend_from_slice(&gzip(&text[cut..]));
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.csv.gz");
            std::fs::write(&path, &packed).unwrap();
            proptest::prop_assert_eq!(read_all(&path, u64::MAX).unwrap(), text.clone());
            let unpacked = records(open(&path, u64::MAX).unwrap());
            proptest::prop_assert_eq!(unpacked, records(text.as_slice()));
        }
    }

    #[test]
    fn the_fingerprint_hashes_the_drop_and_probes_the_content() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt.gz");
        let mut utf16 = b"\xFF\xFE".to_vec();
        utf16.extend("email\tx\n".encode_utf16().flat_map(u16::to_le_bytes));
        let dropped = gzip(&utf16);
        std::fs::write(&path, &dropped).unwrap();
        for encoding in [InputEncoding::Auto, InputEncoding::Utf8] {
            let print = fingerprint(&path, encoding, u64::MAX).unwrap();
            let hex: String = sha2::Sha256::digest(&dropped)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(print.sha256, hex);
            assert_eq!(print.size, dropped.len() as u64);
            assert_eq!(print.bom, Some(crate::parse::Bom::Utf16Le));
            assert!(!print.is_utf8);
        }
        assert_eq!(head(&path, u64::MAX, 4).unwrap(), &utf16[..4]);
    }
}
