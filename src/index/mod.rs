//! index: event id → (archive day, occurrence, line), so that `trace` finds
//! the proof of one event among millions without reading the archive.
//!
//! The decision, against the import benchmark (the index may cost the
//! import path at most 5%): ids are already computed once per row while
//! events are built, so the delivery pass hands each `(id, line)` to a
//! [`Recorder`], which keeps 16 bytes a row (id prefix, line, event
//! number), sorts them in chunks of 128k and appends the chunks to
//! `work/<occ>.ids` (unsynced: a cache, rebuilt from the file itself when
//! incomplete), starting their write-back at once. That work file is the
//! file's run, sorted by segments: when the file is archived, [`seal`]
//! writes its header, fsyncs it and renames it to
//! `index/<day>/<level>-<occurrence>.run`, and its folder is synced with the
//! report's in the same group commit, before the file moves. Small files
//! share that fsync: the seals queued meanwhile are merged into one run of
//! all their occurrences, written and fsynced once ([`seal`]). Runs of one
//! day are merged, log-structured, when eight of a level exist, on a
//! background thread (a file never waits for a merge), so a lookup reads
//! few runs (a binary search of each segment, a few `pread`s). The import
//! pays one append a row, a sort a chunk, one sequential write of 16 MB a
//! million rows and one fsync a file, shared by small files
//! (`scripts/bench-trace.sh` measures it
//! against the index turned off). A SQLite table was the other candidate,
//! not taken: an insert a row into a B-tree of 10 million random keys
//! touches a random page each time, where a sorted run is one sequential
//! write.
//!
//! Only 8 bytes of the id are kept: a hit is a candidate, which `trace`
//! confirms by rebuilding the event from its line. Runs are per archive day
//! so that retention drops a day's entries with the day; a pruned day leaves
//! a tombstone, `index/pruned/<day>.tomb`, with the sorted prefixes and its
//! occurrences, so that `trace` can say "pruned" rather than "never
//! imported". This module never reads proof files itself and never writes
//! the journal.
//!
//! Parts: [`record`] (the recorder while events are built), [`seal`] (one
//! file's run made durable), [`merge`] (merging a day's runs), [`lookup`]
//! (where an id is), [`tomb`] (pruned days), [`format`] (a run's bytes).

mod format;
mod lookup;
mod merge;
mod record;
mod seal;
mod tomb;

use std::io;
use std::path::{Path, PathBuf};

use crate::claim::ClaimError;

pub use format::Run;
pub use lookup::{days, is_day, lookup, Hit};
pub use merge::wait_for_merges;
pub use record::{record_rows, Recorder};
pub use seal::seal;
pub use tomb::{find_pruned, prune_day, Pruned};

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

/// Occurrence ids are hyphenated UUIDs.
const OCC_LEN: usize = 36;
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

/// Forgets the records of an occurrence that will not be sealed (it was
/// not archived): those a small file's recorder kept in memory, and its
/// work file (a quarantined file's events were recorded as they were
/// built, in the read that validated it).
pub fn discard(work_dir: &Path, occurrence_id: &str) {
    let work = work_path(work_dir, occurrence_id);
    record::take_in_memory(&work);
    let _ = std::fs::remove_file(&work);
}

/// `CONSENT_DROP_BENCH_NO_INDEX=1` turns the index off, only so that the
/// benchmark can measure what it costs (`scripts/bench-trace.sh`).
pub fn disabled() -> bool {
    std::env::var_os("CONSENT_DROP_BENCH_NO_INDEX").is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::lookup::runs_in;
    use super::record::CHUNK;
    use super::*;
    use std::fs;

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
        wait_for_merges();
        let runs = runs_in(&root(state).join("2026-11-02")).expect("runs");
        assert!(runs.len() < 9, "nine small runs were merged: {runs:?}");
        for n in [0u64, 1, CHUNK as u64 - 1, CHUNK as u64, CHUNK as u64 + 499] {
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

    #[test]
    fn a_run_of_the_first_format_is_still_read_and_merged() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        let day = root(state).join("2026-10-01");
        fs::create_dir_all(&day).expect("day");
        // CDIDX03: magic, occurrences, records, names, one sorted segment.
        let mut keys: Vec<(u64, u32)> =
            (0..50u32).map(|n| (prefix(&id(u64::from(n))), n)).collect();
        keys.sort();
        let mut bytes = b"CDIDX03\n".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&50u64.to_le_bytes());
        bytes.extend_from_slice(occ(7).as_bytes());
        for (key, n) in keys {
            bytes.extend_from_slice(&key.to_le_bytes());
            bytes.extend_from_slice(&(n + 2).to_le_bytes());
            bytes.extend_from_slice(&n.to_le_bytes());
        }
        fs::write(day.join("02-old.run"), bytes).expect("run");
        let hits = lookup(state, &id(33)).expect("lookup");
        assert_eq!(hits.len(), 1);
        assert_eq!(
            (hits[0].occurrence_id.as_str(), hits[0].line),
            (occ(7).as_str(), 35)
        );
        // Merged with runs of the current format, its records stay found.
        for file in 0..8u32 {
            let ids: Vec<u64> = (0..50)
                .map(|n| 10_000 + u64::from(file) * 100 + n)
                .collect();
            seal_ids(state, "2026-10-01", &occ(20 + file), &ids);
        }
        wait_for_merges();
        assert!(!day.join("02-old.run").exists(), "the old run was merged");
        assert_eq!(lookup(state, &id(33)).expect("lookup")[0].line, 35);
        assert_eq!(
            lookup(state, &id(10_712)).expect("lookup")[0].occurrence_id,
            occ(27)
        );
    }
}
