//! index::merge: the k-way merge that writes a run durably (temporary name,
//! fsync, rename, folder fsync) and the log-structured merging of one day's
//! runs when [`FAN_IN`] of a level exist. A merged run is durable before its
//! inputs are removed; it never drops a record.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::format::{record_size, Run, Source, MAGIC, RUN_RECORD, SHORT_RECORD};
use super::lookup::runs_in;
use super::{io_at, IndexError, OCC_LEN};
use crate::claim;

/// This many runs of one level in a day are merged into one.
const FAN_IN: usize = 8;

pub(super) fn level_of(records: u64) -> u32 {
    // Eight times more records, one level up.
    (64 - records.max(1).leading_zeros()) / 3
}

/// Merges `sources` into a run at `path`, durably (temporary name, fsync,
/// rename, folder fsync).
pub(super) fn write_run(
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

/// Merges runs of a day while [`FAN_IN`] of one level exist. The merged run
/// is durable before its inputs are removed: a crash in between leaves
/// records twice, which lookups report once.
pub(super) fn compact(dir: &Path) -> Result<(), IndexError> {
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
