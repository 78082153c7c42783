//! index::format: the bytes of a run file — its header (magic, occurrences,
//! record count, segment length) and its records (16 bytes for a run of one
//! occurrence, 20 for a merged one) — and the sorted streams that read them
//! back. It decides nothing about when runs are written, merged or searched.
//!
//! A run's records are sorted by key within segments of `segment` records:
//! a run sealed from a file is the recorder's sorted chunks as they were
//! written (no second pass over the ids on the import path); a merged run
//! is one segment. Runs of the first format (`CDIDX03`) are one segment.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{io_at, IndexError, OCC_LEN};

/// A work record, and the record of a run of one occurrence: id prefix
/// (8 bytes LE), line (4 bytes LE) and the event's number among the file's
/// events, from 0 (4 bytes LE: it says which batch the event went in).
pub(super) const SHORT_RECORD: usize = 16;
/// The record of a merged run: id prefix, occurrence number in the run,
/// line, event number.
pub(super) const RUN_RECORD: usize = 20;

/// The record size of a run of this many occurrences.
pub(super) fn record_size(occurrences: usize) -> usize {
    if occurrences == 1 {
        SHORT_RECORD
    } else {
        RUN_RECORD
    }
}
/// Magic, occurrence count (u32), record count (u64), names: one segment.
const MAGIC_ONE_SEGMENT: &[u8; 8] = b"CDIDX03\n";
/// Magic, occurrence count (u32), record count (u64), segment length (u64),
/// names.
pub(super) const MAGIC: &[u8; 8] = b"CDIDX04\n";

/// The header of a run of `count` records in segments of `segment`.
pub(super) fn header(occurrences: &[String], count: u64, segment: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(28 + occurrences.len() * OCC_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(occurrences.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&count.to_le_bytes());
    bytes.extend_from_slice(&segment.max(1).to_le_bytes());
    for occurrence in occurrences {
        let mut name = [b' '; OCC_LEN];
        let raw = occurrence.as_bytes();
        let len = raw.len().min(OCC_LEN);
        name[..len].copy_from_slice(&raw[..len]);
        bytes.extend_from_slice(&name);
    }
    bytes
}

/// The header length of a run of one occurrence: where a sealed work
/// file's records start.
pub(super) const SINGLE_HEADER: u64 = 28 + OCC_LEN as u64;

/// A sorted stream of run records: one segment of one run, read with
/// `pread` through a small buffer of its own (the segments of a run share
/// one descriptor).
pub(super) struct Source {
    file: Arc<File>,
    /// The next byte to read into the buffer.
    at: u64,
    buffer: Vec<u8>,
    used: usize,
    pub(super) left: u64,
    /// What the record's occurrence number becomes in the output.
    pub(super) occ_base: u32,
    /// [`SHORT_RECORD`] (no occurrence number) or [`RUN_RECORD`].
    pub(super) size: usize,
    pub(super) head: Option<Entry>,
}

/// One record: (key, occurrence number, line, event number).
pub(super) type Entry = (u64, u32, u32, u32);

/// Records a source reads at once.
const SOURCE_BUFFER_RECORDS: u64 = 1024;

impl Source {
    pub(super) fn advance(&mut self) -> io::Result<()> {
        if self.left == 0 {
            self.head = None;
            return Ok(());
        }
        if self.used == self.buffer.len() {
            let records = self.left.min(SOURCE_BUFFER_RECORDS) as usize;
            self.buffer.resize(records * self.size, 0);
            self.file.read_exact_at(&mut self.buffer, self.at)?;
            self.at += self.buffer.len() as u64;
            self.used = 0;
        }
        self.left -= 1;
        let record = &self.buffer[self.used..self.used + self.size];
        self.used += self.size;
        let (key, occ, line, ordinal) = decode(record, self.size);
        self.head = Some((key, occ + self.occ_base, line, ordinal));
        Ok(())
    }
}

/// `entry` as a record of `size` bytes ([`SHORT_RECORD`] leaves out the
/// occurrence number): the inverse of [`decode`].
pub(super) fn encode(entry: Entry, size: usize) -> [u8; RUN_RECORD] {
    let (key, occ, line, ordinal) = entry;
    let mut record = [0u8; RUN_RECORD];
    record[..8].copy_from_slice(&key.to_le_bytes());
    if size == SHORT_RECORD {
        record[8..12].copy_from_slice(&line.to_le_bytes());
        record[12..16].copy_from_slice(&ordinal.to_le_bytes());
    } else {
        record[8..12].copy_from_slice(&occ.to_le_bytes());
        record[12..16].copy_from_slice(&line.to_le_bytes());
        record[16..].copy_from_slice(&ordinal.to_le_bytes());
    }
    record
}

/// A record of `size` bytes: (key, occurrence number, line).
pub(super) fn decode(record: &[u8], size: usize) -> Entry {
    if size == SHORT_RECORD {
        (u64_at(record, 0), 0, u32_at(record, 8), u32_at(record, 12))
    } else {
        (
            u64_at(record, 0),
            u32_at(record, 8),
            u32_at(record, 12),
            u32_at(record, 16),
        )
    }
}

pub(super) fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

pub(super) fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// One run file's header: its occurrences and where its records start.
#[derive(Debug)]
pub struct Run {
    pub path: PathBuf,
    pub occurrences: Vec<String>,
    pub records: u64,
    /// Records are sorted within each segment of this many.
    pub(super) segment: u64,
    pub(super) data_start: u64,
}

impl Run {
    pub fn open(path: &Path) -> Result<(Run, File), IndexError> {
        let file = File::open(path).map_err(io_at(path))?;
        let mut head = [0u8; 28];
        file.read_exact_at(&mut head[..20], 0)
            .map_err(io_at(path))?;
        let occs = u32_at(&head, 8) as usize;
        let records = u64_at(&head, 12);
        let (segment, names_at) = if &head[..8] == MAGIC {
            file.read_exact_at(&mut head[20..], 20)
                .map_err(io_at(path))?;
            (u64_at(&head, 20).max(1), 28)
        } else if &head[..8] == MAGIC_ONE_SEGMENT {
            (records.max(1), 20)
        } else {
            return Err(IndexError::Corrupt {
                path: path.to_path_buf(),
            });
        };
        let mut names = vec![0u8; occs * OCC_LEN];
        file.read_exact_at(&mut names, names_at)
            .map_err(io_at(path))?;
        let occurrences = names
            .chunks(OCC_LEN)
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        let run = Run {
            path: path.to_path_buf(),
            occurrences,
            records,
            segment,
            data_start: names_at + names.len() as u64,
        };
        Ok((run, file))
    }

    /// The sorted segments: (first record, records).
    pub(super) fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.records)
            .step_by(usize::try_from(self.segment).unwrap_or(usize::MAX))
            .map(|start| (start, (self.records - start).min(self.segment)))
    }

    /// One sorted stream a segment, occurrence numbers offset by `occ_base`.
    pub(super) fn sources(&self, occ_base: u32) -> Result<Vec<Source>, IndexError> {
        let size = record_size(self.occurrences.len());
        let file = Arc::new(File::open(&self.path).map_err(io_at(&self.path))?);
        Ok(self
            .segments()
            .map(|(start, left)| Source {
                file: file.clone(),
                at: self.data_start + start * size as u64,
                buffer: Vec::new(),
                used: 0,
                left,
                occ_base,
                size,
                head: None,
            })
            .collect())
    }
}
