//! index: event id → (archive day, occurrence, line), so that `trace` finds
//! the proof of one event among millions without reading the archive.
//!
//! The decision, against the import benchmark (the index may cost the
//! import path at most 5%): ids are already computed once per row while
//! events are built, so the delivery pass hands each `(id, line)` to a
//! [`Recorder`], which keeps 16 bytes a row (id prefix, line, event
//! number), sorts them in chunks of 256k and appends the chunks to
//! `work/<occ>.ids` (unsynced: a cache, rebuilt from the file itself when
//! incomplete). When the file is archived, [`seal`] merges the chunks into
//! one sorted run `index/<day>/<level>-<name>.run`, written to a temporary
//! name, fsynced and renamed (durable like the rest); runs of one day are
//! merged, log-structured, when eight of a level exist, so a lookup reads
//! few runs (a binary search of each, a few `pread`s). The import pays one
//! append a row, a sort and one sequential write of 16 MB a million rows
//! (`scripts/bench-trace.sh` measures it against the index turned off).
//! A SQLite table was the other candidate, not taken: an insert a row into
//! a B-tree of 10 million random keys touches a random page each time,
//! where a sorted run is one sequential write.
//!
//! Only 8 bytes of the id are kept: a hit is a candidate, which `trace`
//! confirms by rebuilding the event from its line. Runs are per archive day
//! so that retention drops a day's entries with the day; a pruned day leaves
//! a tombstone, `index/pruned/<day>.tomb`, with the sorted prefixes and its
//! occurrences, so that `trace` can say "pruned" rather than "never
//! imported". This module never reads proof files itself and never writes
//! the journal.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::claim::{self, ClaimError};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("index {path}: not an index run (bad header)")]
    Corrupt { path: PathBuf },
    #[error(transparent)]
    State(#[from] ClaimError),
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> IndexError + '_ {
    move |source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Records of one chunk (3 MiB), sorted in memory before they are written:
/// a file of a million rows is four chunks, merged at [`seal`].
const CHUNK: usize = 256 * 1024;
/// A work record, and the record of a run of one occurrence: id prefix
/// (8 bytes LE), line (4 bytes LE) and the event's number among the file's
/// events, from 0 (4 bytes LE: it says which batch the event went in).
const SHORT_RECORD: usize = 16;
const WORK_RECORD: usize = SHORT_RECORD;
/// The record of a merged run: id prefix, occurrence number in the run,
/// line, event number.
const RUN_RECORD: usize = 20;

/// The record size of a run of this many occurrences.
fn record_size(occurrences: usize) -> usize {
    if occurrences == 1 {
        SHORT_RECORD
    } else {
        RUN_RECORD
    }
}
const MAGIC: &[u8; 8] = b"CDIDX03\n";
const TOMB_MAGIC: &[u8; 8] = b"CDTMB01\n";
/// Occurrence ids are hyphenated UUIDs.
const OCC_LEN: usize = 36;
/// This many runs of one level in a day are merged into one.
const FAN_IN: usize = 8;
/// A line number too large for the run: `trace` then finds the row by id.
pub const LINE_UNKNOWN: u32 = u32::MAX;

/// The first 8 bytes of an event id, as the index keys it.
pub fn prefix(id: &uuid::Uuid) -> u64 {
    let bytes = id.as_bytes();
    let mut head = [0u8; 8];
    head.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(head)
}

/// `index/` in the state folder.
pub fn root(state: &Path) -> PathBuf {
    state.join("index")
}

/// The work file of an occurrence in flight.
pub fn work_path(work_dir: &Path, occurrence_id: &str) -> PathBuf {
    work_dir.join(format!("{occurrence_id}.ids"))
}

/// Collects the `(id, line)` of every event of one file while it is built.
/// Cheap on purpose: an append to a vector, and every 64k rows one sort and
/// one buffered write. A failed write only disables it (the file's index is
/// then rebuilt at [`seal`]): the index never stops a delivery.
pub struct Recorder {
    /// Key in the high 64 bits, then line, then event number: one integer
    /// to sort.
    chunk: Vec<u128>,
    /// Events recorded so far.
    recorded: u32,
    out: Option<BufWriter<File>>,
}

impl Recorder {
    /// Starts the work file afresh. `complete` is false when the delivery
    /// resumes after a crash (earlier rows are not built again): nothing is
    /// recorded and [`seal`] rebuilds the index from the file.
    pub fn create(path: &Path, complete: bool) -> Recorder {
        let _ = fs::remove_file(path);
        let out = if complete && !disabled() {
            File::create(path).ok().map(BufWriter::new)
        } else {
            None
        };
        Recorder {
            chunk: Vec::with_capacity(if out.is_some() { CHUNK } else { 0 }),
            recorded: 0,
            out,
        }
    }

    pub fn record(&mut self, id: &uuid::Uuid, line: u64) {
        if self.out.is_none() {
            return;
        }
        let line = u32::try_from(line).unwrap_or(LINE_UNKNOWN);
        self.chunk.push(
            u128::from(prefix(id)) << 64 | u128::from(line) << 32 | u128::from(self.recorded),
        );
        self.recorded = self.recorded.saturating_add(1);
        if self.chunk.len() == CHUNK {
            self.flush_chunk();
        }
    }

    fn flush_chunk(&mut self) {
        self.chunk.sort_unstable();
        let Some(out) = &mut self.out else { return };
        let mut bytes = Vec::with_capacity(self.chunk.len() * WORK_RECORD);
        for packed in self.chunk.drain(..) {
            bytes.extend_from_slice(&((packed >> 64) as u64).to_le_bytes());
            bytes.extend_from_slice(&((packed >> 32) as u32).to_le_bytes());
            bytes.extend_from_slice(&(packed as u32).to_le_bytes());
        }
        if out.write_all(&bytes).is_err() {
            self.out = None;
        }
    }

    /// Writes what is left (the work file is closed, not synced).
    pub fn finish(mut self) {
        self.flush_chunk();
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
    }
}

/// `CONSENT_DROP_BENCH_NO_INDEX=1` turns the index off, only so that the
/// benchmark can measure what it costs (`scripts/bench-trace.sh`).
pub fn disabled() -> bool {
    std::env::var_os("CONSENT_DROP_BENCH_NO_INDEX").is_some_and(|v| v == "1")
}

/// Records the id and line of every accepted row of a file, read again
/// (the slow path of [`seal`], after a delivery resumed from a crash).
pub fn record_rows<R: Read>(
    mut rows: crate::parse::RowReader<'_, R>,
    import: &str,
    recorder: &mut Recorder,
) -> io::Result<()> {
    loop {
        match rows.next_record() {
            Ok(None) => return Ok(()),
            Ok(Some(crate::parse::Record::Row(row))) => {
                recorder.record(&crate::event::event_id(import, &row), row.line)
            }
            Ok(Some(crate::parse::Record::Reject(_))) => {}
            Err(crate::parse::ParseError::Io(err)) => return Err(err),
        }
    }
}

/// Makes the index of one archived occurrence durable in `index/<day>/`.
/// `accepted` is how many events the file has; when the work file does not
/// hold exactly that many, `rebuild` is called to record them again from
/// the file (after a crash mid-delivery). Idempotent: sealing twice leaves
/// the same run.
pub fn seal(
    state: &Path,
    work_dir: &Path,
    day: &str,
    occurrence_id: &str,
    accepted: u64,
    rebuild: impl FnOnce(&mut Recorder) -> io::Result<()>,
) -> Result<(), IndexError> {
    if disabled() || occurrence_id.len() != OCC_LEN {
        return Ok(());
    }
    let work = work_path(work_dir, occurrence_id);
    let recorded = fs::metadata(&work).map_or(0, |meta| meta.len());
    if recorded != accepted * WORK_RECORD as u64 {
        let mut recorder = Recorder::create(&work, true);
        rebuild(&mut recorder).map_err(io_at(&work))?;
        recorder.finish();
    }
    let dir = root(state).join(day);
    fs::create_dir_all(&dir).map_err(io_at(&dir))?;
    let chunks = work_chunks(&work)?;
    let count: u64 = chunks.iter().map(|chunk| chunk.left).sum();
    let name = format!("{:02}-{occurrence_id}.run", level_of(count));
    write_run(
        &dir.join(&name),
        &[occurrence_id.to_string()],
        count,
        chunks,
    )?;
    let _ = fs::remove_file(&work);
    compact(&dir)
}

fn level_of(records: u64) -> u32 {
    // Eight times more records, one level up.
    (64 - records.max(1).leading_zeros()) / 3
}

/// A sorted stream of run records: one chunk of a work file or one run.
struct Source {
    reader: BufReader<File>,
    left: u64,
    /// What the record's occurrence number becomes in the output.
    occ_base: u32,
    /// [`SHORT_RECORD`] (no occurrence number) or [`RUN_RECORD`].
    size: usize,
    head: Option<Entry>,
}

/// One record: (key, occurrence number, line, event number).
type Entry = (u64, u32, u32, u32);

impl Source {
    fn advance(&mut self) -> io::Result<()> {
        if self.left == 0 {
            self.head = None;
            return Ok(());
        }
        self.left -= 1;
        let mut record = [0u8; RUN_RECORD];
        self.reader.read_exact(&mut record[..self.size])?;
        let (key, occ, line, ordinal) = decode(&record, self.size);
        self.head = Some((key, occ + self.occ_base, line, ordinal));
        Ok(())
    }
}

/// A record of `size` bytes: (key, occurrence number, line).
fn decode(record: &[u8], size: usize) -> Entry {
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

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The sorted chunks of a work file, each a stream of its own.
fn work_chunks(work: &Path) -> Result<Vec<Source>, IndexError> {
    let records = fs::metadata(work).map_or(0, |meta| meta.len()) / WORK_RECORD as u64;
    let mut sources = Vec::new();
    let mut start = 0u64;
    while start < records {
        let left = (records - start).min(CHUNK as u64);
        let mut file = File::open(work).map_err(io_at(work))?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(start * WORK_RECORD as u64))
            .map_err(io_at(work))?;
        sources.push(Source {
            reader: BufReader::with_capacity(64 * 1024, file),
            left,
            occ_base: 0,
            size: WORK_RECORD,
            head: None,
        });
        start += left;
    }
    Ok(sources)
}

/// One run file's header: its occurrences and where its records start.
#[derive(Debug)]
pub struct Run {
    pub path: PathBuf,
    pub occurrences: Vec<String>,
    pub records: u64,
    data_start: u64,
}

impl Run {
    pub fn open(path: &Path) -> Result<(Run, File), IndexError> {
        let file = File::open(path).map_err(io_at(path))?;
        let mut head = [0u8; 20];
        file.read_exact_at(&mut head, 0).map_err(io_at(path))?;
        if &head[..8] != MAGIC {
            return Err(IndexError::Corrupt {
                path: path.to_path_buf(),
            });
        }
        let occs = u32_at(&head, 8) as usize;
        let records = u64_at(&head, 12);
        let mut names = vec![0u8; occs * OCC_LEN];
        file.read_exact_at(&mut names, 20).map_err(io_at(path))?;
        let occurrences = names
            .chunks(OCC_LEN)
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        let run = Run {
            path: path.to_path_buf(),
            occurrences,
            records,
            data_start: 20 + names.len() as u64,
        };
        Ok((run, file))
    }

    /// The records whose key is `key`: (occurrence, line, event number).
    fn find(&self, file: &File, key: u64) -> io::Result<Vec<(String, u32, u32)>> {
        let size = record_size(self.occurrences.len());
        let read = |index: u64| -> io::Result<Entry> {
            let mut record = [0u8; RUN_RECORD];
            file.read_exact_at(&mut record[..size], self.data_start + index * size as u64)?;
            Ok(decode(&record, size))
        };
        let (mut low, mut high) = (0u64, self.records);
        while low < high {
            let middle = low + (high - low) / 2;
            if read(middle)?.0 < key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        let mut hits = Vec::new();
        while low < self.records {
            let (found, occ, line, ordinal) = read(low)?;
            if found != key {
                break;
            }
            if let Some(name) = self.occurrences.get(occ as usize) {
                hits.push((name.clone(), line, ordinal));
            }
            low += 1;
        }
        Ok(hits)
    }

    fn source(&self, occ_base: u32) -> Result<Source, IndexError> {
        let mut file = File::open(&self.path).map_err(io_at(&self.path))?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(self.data_start))
            .map_err(io_at(&self.path))?;
        Ok(Source {
            reader: BufReader::with_capacity(256 * 1024, file),
            left: self.records,
            occ_base,
            size: record_size(self.occurrences.len()),
            head: None,
        })
    }
}

/// Merges `sources` into a run at `path`, durably (temporary name, fsync,
/// rename, folder fsync).
fn write_run(
    path: &Path,
    occurrences: &[String],
    count: u64,
    mut sources: Vec<Source>,
) -> Result<(), IndexError> {
    let temporary = path.with_extension("run.partial");
    let result = (|| -> io::Result<()> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&temporary)?);
        out.write_all(MAGIC)?;
        out.write_all(&(occurrences.len() as u32).to_le_bytes())?;
        out.write_all(&count.to_le_bytes())?;
        for occurrence in occurrences {
            let mut name = [b' '; OCC_LEN];
            let bytes = occurrence.as_bytes();
            let len = bytes.len().min(OCC_LEN);
            name[..len].copy_from_slice(&bytes[..len]);
            out.write_all(&name)?;
        }
        // A k-way merge on a heap of the sources' heads.
        let mut heads = std::collections::BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            source.advance()?;
            if let Some(head) = source.head {
                heads.push(std::cmp::Reverse((head, index)));
            }
        }
        let short = record_size(occurrences.len()) == SHORT_RECORD;
        let mut record = [0u8; RUN_RECORD];
        while let Some(std::cmp::Reverse(((key, occ, line, ordinal), index))) = heads.pop() {
            record[..8].copy_from_slice(&key.to_le_bytes());
            if short {
                record[8..12].copy_from_slice(&line.to_le_bytes());
                record[12..16].copy_from_slice(&ordinal.to_le_bytes());
                out.write_all(&record[..SHORT_RECORD])?;
            } else {
                record[8..12].copy_from_slice(&occ.to_le_bytes());
                record[12..16].copy_from_slice(&line.to_le_bytes());
                record[16..].copy_from_slice(&ordinal.to_le_bytes());
                out.write_all(&record)?;
            }
            let source = &mut sources[index];
            source.advance()?;
            if let Some(head) = source.head {
                heads.push(std::cmp::Reverse((head, index)));
            }
        }
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&temporary);
        return Err(io_at(path)(err));
    }
    claim::sync_dir_of(path)?;
    Ok(())
}

/// The runs of one day's folder, with their levels.
fn runs_in(dir: &Path) -> Result<Vec<(u32, PathBuf)>, IndexError> {
    let mut runs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(runs),
        Err(err) => return Err(io_at(dir)(err)),
    };
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stem) = name.strip_suffix(".run") {
            let level = stem.split('-').next().and_then(|l| l.parse().ok());
            runs.push((level.unwrap_or(0), entry.path()));
        }
    }
    runs.sort();
    Ok(runs)
}

/// Merges runs of a day while [`FAN_IN`] of one level exist. The merged run
/// is durable before its inputs are removed: a crash in between leaves
/// records twice, which lookups report once.
fn compact(dir: &Path) -> Result<(), IndexError> {
    // Files finishing together seal into one day at once: without the lock
    // two of them merge the same inputs and the slower one finds them gone.
    let lock_path = dir.join(".compact.lock");
    let lock = File::create(&lock_path).map_err(io_at(&lock_path))?;
    lock_exclusively(&lock).map_err(io_at(&lock_path))?;
    loop {
        let runs = runs_in(dir)?;
        let Some(level) = runs
            .iter()
            .map(|(level, _)| *level)
            .find(|&level| runs.iter().filter(|(l, _)| *l == level).count() >= FAN_IN)
        else {
            return Ok(());
        };
        let inputs: Vec<&PathBuf> = runs
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, path)| path)
            .collect();
        let mut occurrences = Vec::new();
        let mut sources = Vec::new();
        let mut count = 0;
        for path in &inputs {
            let (run, _) = Run::open(path)?;
            sources.push(run.source(occurrences.len() as u32)?);
            count += run.records;
            occurrences.extend(run.occurrences);
        }
        let name = format!(
            "{:02}-{}.run",
            level_of(count).max(level + 1),
            uuid::Uuid::new_v4()
        );
        write_run(&dir.join(name), &occurrences, count, sources)?;
        for path in inputs {
            fs::remove_file(path).map_err(io_at(path))?;
        }
        claim::sync_dir_of(&dir.join("x"))?;
    }
}

/// Blocks until this process holds `file`'s exclusive advisory lock; the
/// kernel drops it when `file` is closed. (`File::lock` needs Rust 1.89.)
fn lock_exclusively(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock takes a descriptor that `file` owns for this call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Where an id may be: its archive day, occurrence and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub day: String,
    pub occurrence_id: String,
    /// [`LINE_UNKNOWN`] when the line did not fit.
    pub line: u32,
    /// The event's number among its file's events, from 0.
    pub ordinal: u32,
}

/// Every place the index holds `id`, newest day first.
pub fn lookup(state: &Path, id: &uuid::Uuid) -> Result<Vec<Hit>, IndexError> {
    let key = prefix(id);
    let mut hits = Vec::new();
    for day in days(state)?.into_iter().rev() {
        for (_, path) in runs_in(&root(state).join(&day))? {
            let (run, file) = match Run::open(&path) {
                Ok(opened) => opened,
                // Removed by a merge since the listing: its records are in
                // the merged run, which the next listing shows.
                Err(IndexError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    continue
                }
                Err(err) => return Err(err),
            };
            for (occurrence_id, line, ordinal) in run.find(&file, key).map_err(io_at(&path))? {
                let hit = Hit {
                    day: day.clone(),
                    occurrence_id,
                    line,
                    ordinal,
                };
                if !hits.contains(&hit) {
                    hits.push(hit);
                }
            }
        }
    }
    Ok(hits)
}

/// The days the index holds, oldest first (`YYYY-MM-DD` sorts as dates).
pub fn days(state: &Path) -> Result<Vec<String>, IndexError> {
    let dir = root(state);
    let mut days = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(days),
        Err(err) => return Err(io_at(&dir)(err)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_day(&name) {
            days.push(name);
        }
    }
    days.sort();
    Ok(days)
}

pub fn is_day(name: &str) -> bool {
    chrono::NaiveDate::parse_from_str(name, "%Y-%m-%d").is_ok() && name.len() == 10
}

/// What a tombstone says about a pruned day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub day: String,
    pub pruned_at: String,
    pub occurrences: Vec<String>,
}

fn tomb_path(state: &Path, day: &str) -> PathBuf {
    root(state).join("pruned").join(format!("{day}.tomb"))
}

/// Replaces a day's runs by its tombstone (the sorted id prefixes and the
/// occurrences), durably, then removes the runs. Returns how many entries
/// the day had. The prefixes are merged from the runs as a stream: memory
/// does not grow with the day.
pub fn prune_day(state: &Path, day: &str, pruned_at: &str) -> Result<u64, IndexError> {
    let dir = root(state).join(day);
    let mut occurrences = Vec::new();
    let mut sources = Vec::new();
    for (_, path) in runs_in(&dir)? {
        let (run, _) = Run::open(&path)?;
        sources.push(run.source(0)?);
        occurrences.extend(run.occurrences);
    }
    let tomb = tomb_path(state, day);
    if let Some(parent) = tomb.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    // Pruned again after a crash that followed the tombstone: the runs are
    // gone, the tombstone already says what the day held.
    let mut written = 0;
    if !sources.is_empty() || !tomb.exists() {
        written = write_tomb(&tomb, pruned_at, &occurrences, sources)?;
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_at(&dir))?;
        claim::sync_dir_of(&dir)?;
    }
    Ok(written)
}

fn write_tomb(
    tomb: &Path,
    pruned_at: &str,
    occurrences: &[String],
    mut sources: Vec<Source>,
) -> Result<u64, IndexError> {
    let temporary = tomb.with_extension("tomb.partial");
    let result = (|| -> io::Result<u64> {
        let mut out = BufWriter::with_capacity(256 * 1024, File::create(&temporary)?);
        out.write_all(TOMB_MAGIC)?;
        let header = format!("{pruned_at}\n{}\n", occurrences.join(","));
        out.write_all(&(header.len() as u32).to_le_bytes())?;
        out.write_all(header.as_bytes())?;
        let mut heads = std::collections::BinaryHeap::new();
        for (index, source) in sources.iter_mut().enumerate() {
            source.advance()?;
            if let Some((key, ..)) = source.head {
                heads.push(std::cmp::Reverse((key, index)));
            }
        }
        let mut last = None;
        let mut written = 0;
        while let Some(std::cmp::Reverse((key, index))) = heads.pop() {
            if last != Some(key) {
                out.write_all(&key.to_le_bytes())?;
                written += 1;
                last = Some(key);
            }
            let source = &mut sources[index];
            source.advance()?;
            if let Some((key, ..)) = source.head {
                heads.push(std::cmp::Reverse((key, index)));
            }
        }
        let file = out.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        fs::rename(&temporary, tomb)?;
        Ok(written)
    })();
    match result {
        Ok(written) => {
            claim::sync_dir_of(tomb)?;
            Ok(written)
        }
        Err(err) => {
            let _ = fs::remove_file(&temporary);
            Err(io_at(tomb)(err))
        }
    }
}

/// The pruned day that held `id`, if a tombstone says so: a binary search
/// of each tombstone's prefixes, a few reads each.
pub fn find_pruned(state: &Path, id: &uuid::Uuid) -> Result<Option<Pruned>, IndexError> {
    let key = prefix(id);
    let dir = root(state).join("pruned");
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(None);
    };
    let mut tombs: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tomb"))
        .collect();
    tombs.sort();
    for path in tombs.into_iter().rev() {
        if let Some(pruned) = search_tomb(&path, key).map_err(io_at(&path))? {
            return Ok(Some(pruned));
        }
    }
    Ok(None)
}

fn search_tomb(path: &Path, key: u64) -> io::Result<Option<Pruned>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut head = [0u8; 12];
    file.read_exact_at(&mut head, 0)?;
    let corrupt = || io::Error::new(io::ErrorKind::InvalidData, "not a tombstone");
    if &head[..8] != TOMB_MAGIC {
        return Err(corrupt());
    }
    let header_len = u64::from(u32_at(&head, 8));
    let start = 12 + header_len;
    let count = size.checked_sub(start).ok_or_else(corrupt)? / 8;
    let read = |index: u64| -> io::Result<u64> {
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, start + index * 8)?;
        Ok(u64::from_le_bytes(word))
    };
    let (mut low, mut high) = (0u64, count);
    while low < high {
        let middle = low + (high - low) / 2;
        if read(middle)? < key {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    if low >= count || read(low)? != key {
        return Ok(None);
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 12)?;
    let header = String::from_utf8_lossy(&header);
    let mut lines = header.lines();
    let pruned_at = lines.next().unwrap_or("").to_string();
    let occurrences = lines
        .next()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let day = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(Pruned {
        day,
        pruned_at,
        occurrences,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occ(n: u32) -> String {
        format!("00000000-0000-4000-8000-{n:012}")
    }

    fn id(n: u64) -> uuid::Uuid {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &n.to_le_bytes())
    }

    fn seal_ids(state: &Path, day: &str, occurrence: &str, ids: &[u64]) {
        let work = state.join("work");
        fs::create_dir_all(&work).expect("work");
        let mut recorder = Recorder::create(&work_path(&work, occurrence), true);
        for (line, n) in ids.iter().enumerate() {
            recorder.record(&id(*n), line as u64 + 1);
        }
        recorder.finish();
        seal(state, &work, day, occurrence, ids.len() as u64, |_| {
            panic!("complete work file")
        })
        .expect("seal");
    }

    #[test]
    fn every_recorded_id_is_found_at_its_line_across_chunks_and_merges() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        // One file larger than a chunk, then nine small ones: a merge.
        let big: Vec<u64> = (0..(CHUNK as u64 + 500)).collect();
        seal_ids(state, "2026-11-01", &occ(1), &big);
        for file in 0..9u32 {
            let ids: Vec<u64> = (0..20)
                .map(|n| 1_000_000 + u64::from(file) * 100 + n)
                .collect();
            seal_ids(state, "2026-11-02", &occ(10 + file), &ids);
        }
        let runs = runs_in(&root(state).join("2026-11-02")).expect("runs");
        assert!(runs.len() < 9, "nine small runs were merged: {runs:?}");
        for n in [0u64, 1, 65_535, 65_536, CHUNK as u64 + 499] {
            let hits = lookup(state, &id(n)).expect("lookup");
            assert_eq!(
                hits,
                vec![Hit {
                    day: "2026-11-01".into(),
                    occurrence_id: occ(1),
                    line: n as u32 + 1,
                    ordinal: n as u32,
                }]
            );
        }
        let hits = lookup(state, &id(1_000_000 + 805)).expect("lookup");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].occurrence_id, occ(18));
        assert_eq!(hits[0].line, 6);
        assert!(lookup(state, &id(7_777_777)).expect("lookup").is_empty());
    }

    #[test]
    fn regression_files_sealing_one_day_at_once_never_lose_a_merge_input() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        // Enough files at once that several reach a merge together.
        std::thread::scope(|scope| {
            for thread in 0..8u32 {
                scope.spawn(move || {
                    for file in 0..8u32 {
                        let n = thread * 8 + file;
                        let ids: Vec<u64> = (0..5).map(|i| u64::from(n) * 10 + i).collect();
                        seal_ids(state, "2026-11-04", &occ(100 + n), &ids);
                    }
                });
            }
        });
        for n in 0..64u64 {
            let hits = lookup(state, &id(n * 10 + 4)).expect("lookup");
            assert_eq!(hits.len(), 1, "id of file {n}: {hits:?}");
            assert_eq!(hits[0].occurrence_id, occ(100 + n as u32));
        }
    }

    #[test]
    fn an_incomplete_work_file_is_rebuilt_and_sealing_twice_is_harmless() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        let work = state.join("work");
        fs::create_dir_all(&work).expect("work");
        let occurrence = occ(3);
        // A resumed delivery records nothing.
        Recorder::create(&work_path(&work, &occurrence), false).finish();
        for _ in 0..2 {
            seal(state, &work, "2026-11-03", &occurrence, 3, |recorder| {
                for n in 0..3u64 {
                    recorder.record(&id(n), n + 10);
                }
                Ok(())
            })
            .expect("seal");
        }
        assert_eq!(lookup(state, &id(2)).expect("lookup")[0].line, 12);
        assert_eq!(lookup(state, &id(2)).expect("lookup").len(), 1);
    }

    #[test]
    fn a_pruned_day_answers_from_its_tombstone() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        seal_ids(state, "2026-01-01", &occ(1), &[1, 2, 3]);
        seal_ids(state, "2026-01-02", &occ(2), &[4]);
        assert_eq!(
            prune_day(state, "2026-01-01", "2026-03-01T00:00:00Z").expect("prune"),
            3
        );
        assert!(lookup(state, &id(2)).expect("lookup").is_empty());
        let pruned = find_pruned(state, &id(2)).expect("tomb").expect("pruned");
        assert_eq!(pruned.day, "2026-01-01");
        assert_eq!(pruned.occurrences, vec![occ(1)]);
        assert_eq!(pruned.pruned_at, "2026-03-01T00:00:00Z");
        assert!(find_pruned(state, &id(4)).expect("tomb").is_none());
        assert_eq!(lookup(state, &id(4)).expect("lookup").len(), 1);
        assert_eq!(days(state).expect("days"), vec!["2026-01-02".to_string()]);
    }
}
