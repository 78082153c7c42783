//! index::tomb: retention's side of the index — a pruned day's runs replaced
//! by its tombstone `index/pruned/<day>.tomb` (sorted id prefixes and
//! occurrences, durable before the runs go), and the search of tombstones
//! so that `trace` can say "pruned" rather than "never imported".

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{u32_at, Run, Source};
use super::lookup::runs_in;
use super::{io_at, prefix, root, IndexError};
use crate::claim;

const TOMB_MAGIC: &[u8; 8] = b"CDTMB01\n";

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
        sources.extend(run.sources(0)?);
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
