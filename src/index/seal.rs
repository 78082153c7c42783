//! index::seal: makes one archived file's ids durable as a run in
//! `index/<day>/`, before the file moves to `archive/`. The work file the
//! recorder wrote is already the run (its sorted chunks are the run's
//! segments): sealing fills in its header, fsyncs it and renames it into the
//! day; the caller syncs the day's folder (through the group commit, with
//! the report's folder). When the work file is incomplete the ids are
//! recorded again from the file.
//!
//! Small files share the fsync, group-committed without a timer: their
//! seals go to one sealing thread, which takes every seal queued since its
//! last one; several of one day are merged into one run of all their
//! occurrences, written with one fsync. Their records come from memory (the
//! recorder keeps a small file's there, see [`super::record`]), or from
//! their work files. A large file is sealed in place on its own thread,
//! never rewritten. It never removes
//! another file's run, and never waits for a merge (it asks for one, on the
//! merge thread).

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use super::format::{decode, encode, header, record_size, Entry, SHORT_RECORD, SINGLE_HEADER};
use super::merge::{level_of, merge_soon};
use super::record::{take_in_memory, Recorder, CHUNK, IN_MEMORY_EVENTS, WORK_RECORD};
use super::{disabled, io_at, root, work_path, IndexError, OCC_LEN};
use crate::claim;
use crate::commit::Group;

/// Files of at most this many events share the sealing thread.
const SHARED_SEAL_EVENTS: u64 = IN_MEMORY_EVENTS as u64;

/// Makes the index of one archived occurrence durable in `index/<day>/`,
/// all but the folder fsync: returns the run's path, whose folder the
/// caller syncs before the file moves (`None`: the index is off). `accepted`
/// is how many events the file has; when the work file does not hold
/// exactly that many, `rebuild` is called to record them again from the
/// file (after a crash mid-delivery). Sealing twice is harmless: the second
/// run holds the same records, which lookups and merges report once.
pub fn seal(
    state: &Path,
    work_dir: &Path,
    day: &str,
    occurrence_id: &str,
    accepted: u64,
    rebuild: impl FnOnce(&mut Recorder) -> io::Result<()>,
) -> Result<Option<PathBuf>, IndexError> {
    if disabled() || occurrence_id.len() != OCC_LEN {
        return Ok(None);
    }
    let work = work_path(work_dir, occurrence_id);
    let expected = SINGLE_HEADER + accepted * WORK_RECORD as u64;
    let complete = |records: &Vec<u128>| records.len() as u64 == accepted;
    let mut records = take_in_memory(&work).filter(complete);
    if records.is_none() && fs::metadata(&work).map_or(0, |meta| meta.len()) != expected {
        let mut recorder = Recorder::create(&work, true);
        rebuild(&mut recorder).map_err(io_at(&work))?;
        recorder.finish();
        records = take_in_memory(&work).filter(complete);
    }
    let dir = root(state).join(day);
    claim::create_dir_durably(&dir)?;
    let job = Job {
        dir,
        work,
        occurrence_id: occurrence_id.to_string(),
        accepted,
        records,
        run: Arc::default(),
    };
    let run = job.run.clone();
    match sealer() {
        Some(sealer) if accepted <= SHARED_SEAL_EVENTS => sealer.submit_blocking(job)?,
        _ => *lock(&run) = Some(seal_alone(&job)?),
    }
    let sealed = lock(&run).take();
    Ok(sealed)
}

/// One seal handed to the sealing thread; it says where the run went.
struct Job {
    /// `index/<day>/`.
    dir: PathBuf,
    /// The complete work file.
    work: PathBuf,
    occurrence_id: String,
    accepted: u64,
    /// The sorted records, when the recorder kept them in memory.
    records: Option<Vec<u128>>,
    run: Arc<Mutex<Option<PathBuf>>>,
}

fn lock(run: &Mutex<Option<PathBuf>>) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
    // A path or nothing: whole after a panic elsewhere.
    run.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn sealer() -> Option<&'static Group<Job, IndexError>> {
    static SEALER: OnceLock<Option<Group<Job, IndexError>>> = OnceLock::new();
    SEALER
        .get_or_init(|| Group::start("index-seal", sealer_gone, seal_together).ok())
        .as_ref()
}

fn sealer_gone() -> IndexError {
    IndexError::Io {
        path: PathBuf::from("index"),
        source: io::Error::other("the index's sealing thread stopped"),
    }
}

/// The sealing thread's flush: the seals of each day, one run a day.
fn seal_together(jobs: Vec<Job>) -> Vec<Result<(), IndexError>> {
    let mut days: BTreeMap<&Path, Vec<&Job>> = BTreeMap::new();
    for job in &jobs {
        days.entry(job.dir.as_path()).or_default().push(job);
    }
    let mut failed: Vec<(&str, String)> = Vec::new();
    for (dir, day) in days {
        let sealed = match day.as_slice() {
            [job] => seal_alone(job),
            _ => seal_several(dir, &day),
        };
        match sealed {
            Ok(run) => day
                .iter()
                .for_each(|job| *lock(&job.run) = Some(run.clone())),
            Err(err) => {
                let message = err.to_string();
                failed.extend(
                    day.iter()
                        .map(|job| (job.occurrence_id.as_str(), message.clone())),
                );
            }
        }
    }
    jobs.iter()
        .map(
            |job| match failed.iter().find(|(id, _)| *id == job.occurrence_id) {
                None => Ok(()),
                Some((_, message)) => Err(IndexError::Io {
                    path: job.work.clone(),
                    source: io::Error::other(message.clone()),
                }),
            },
        )
        .collect()
}

/// The work file becomes the run: header, fsync, rename into the day (or
/// the records kept in memory are written as the run).
fn seal_alone(job: &Job) -> Result<PathBuf, IndexError> {
    let run = job.dir.join(format!(
        "{:02}-{}.run",
        level_of(job.accepted),
        job.occurrence_id
    ));
    if let Some(records) = &job.records {
        let entries = records.iter().map(|&packed| unpack(packed, 0)).collect();
        write_sorted(job, &run, std::slice::from_ref(&job.occurrence_id), entries)?;
        merge_soon(&job.dir);
        return Ok(run);
    }
    let work = &job.work;
    let expected = SINGLE_HEADER + job.accepted * WORK_RECORD as u64;
    let file = OpenOptions::new()
        .write(true)
        .open(work)
        .map_err(io_at(work))?;
    if file.metadata().map_err(io_at(work))?.len() != expected {
        return Err(IndexError::Io {
            path: work.clone(),
            source: io::Error::other("the recorded ids do not match the file's events"),
        });
    }
    let head = header(
        std::slice::from_ref(&job.occurrence_id),
        job.accepted,
        CHUNK as u64,
    );
    file.write_all_at(&head, 0).map_err(io_at(work))?;
    file.sync_all().map_err(io_at(work))?;
    claim::rename(work, &run)?;
    merge_soon(&job.dir);
    Ok(run)
}

/// Several small files of one day in one run (written beside the work
/// files, fsynced, renamed into the day); their work files, if any, removed.
fn seal_several(dir: &Path, jobs: &[&Job]) -> Result<PathBuf, IndexError> {
    let mut occurrences = Vec::with_capacity(jobs.len());
    let mut entries = Vec::new();
    for (number, job) in jobs.iter().enumerate() {
        let number = number as u32;
        match &job.records {
            Some(records) => entries.extend(records.iter().map(|&packed| unpack(packed, number))),
            None => {
                let bytes = fs::read(&job.work).map_err(io_at(&job.work))?;
                let expected = SINGLE_HEADER + job.accepted * WORK_RECORD as u64;
                if bytes.len() as u64 != expected {
                    return Err(IndexError::Io {
                        path: job.work.clone(),
                        source: io::Error::other("the recorded ids do not match the file's events"),
                    });
                }
                let records = bytes.get(SINGLE_HEADER as usize..).unwrap_or_default();
                entries.extend(records.chunks_exact(WORK_RECORD).map(|record| {
                    let (key, _, line, ordinal) = decode(record, SHORT_RECORD);
                    (key, number, line, ordinal)
                }));
            }
        }
        occurrences.push(job.occurrence_id.clone());
    }
    entries.sort_unstable();
    let name = format!(
        "{:02}-{}.run",
        level_of(entries.len() as u64),
        uuid::Uuid::new_v4()
    );
    let run = dir.join(&name);
    let Some(first) = jobs.first() else {
        return Ok(run);
    };
    write_sorted(first, &run, &occurrences, entries)?;
    for job in jobs.iter().filter(|job| job.records.is_none()) {
        // Left behind only by a crash: a stale work file is replaced when
        // its occurrence is delivered again, and never read otherwise.
        let _ = fs::remove_file(&job.work);
    }
    merge_soon(dir);
    Ok(run)
}

/// A record packed by the recorder (key, line, event number), as an entry
/// of occurrence `number`.
fn unpack(packed: u128, number: u32) -> Entry {
    (
        (packed >> 64) as u64,
        number,
        (packed >> 32) as u32,
        packed as u32,
    )
}

/// `entries`, sorted, as one run at `run`: written beside `job`'s work
/// file, fsynced, renamed into the day (the caller syncs the day's folder).
fn write_sorted(
    job: &Job,
    run: &Path,
    occurrences: &[String],
    entries: Vec<Entry>,
) -> Result<(), IndexError> {
    let temporary = job.work.with_extension("sealing");
    let count = entries.len() as u64;
    claim::fill_and_rename(&temporary, run, |file| {
        let mut out = BufWriter::with_capacity(64 * 1024, file);
        out.write_all(&header(occurrences, count, count))?;
        let size = record_size(occurrences.len());
        for entry in entries {
            out.write_all(&encode(entry, size)[..size])?;
        }
        out.flush()
    })
    .map_err(io_at(run))
}

#[cfg(test)]
mod tests {
    use super::super::format::Run;
    use super::super::lookup::{lookup, runs_in};
    use super::*;

    fn id(n: u64) -> uuid::Uuid {
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &n.to_le_bytes())
    }

    #[test]
    fn seals_queued_together_share_one_run_and_every_id_is_found() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = dir.path();
        let work_dir = state.join("work");
        fs::create_dir_all(&work_dir).expect("work");
        let day = root(state).join("2026-11-05");
        fs::create_dir_all(&day).expect("day");
        let jobs: Vec<Job> = (0..3u64)
            .map(|file| {
                let occurrence_id = format!("00000000-0000-4000-8000-{file:012}");
                let work = work_path(&work_dir, &occurrence_id);
                let mut recorder = Recorder::create(&work, true);
                for row in 0..20 {
                    recorder.record(&id(file * 100 + row), row + 2);
                }
                recorder.finish();
                if file != 1 {
                    // As a larger file's recorder leaves them.
                    write_work_file(&work, take_in_memory(&work).expect("kept in memory"));
                }
                Job {
                    dir: day.clone(),
                    // One file's records in memory, the others' in their work files.
                    records: (file == 1).then(|| take_in_memory(&work)).flatten(),
                    work,
                    occurrence_id,
                    accepted: 20,
                    run: Arc::default(),
                }
            })
            .collect();
        let results = seal_together(jobs.iter().map(copy_job).collect());
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let runs = runs_in(&day).expect("runs");
        assert_eq!(runs.len(), 1, "one run for the three files: {runs:?}");
        let (run, _) = Run::open(&runs[0].1).expect("open");
        assert_eq!(run.occurrences.len(), 3);
        assert!(
            jobs.iter().all(|job| !job.work.exists()),
            "work files removed"
        );
        for file in 0..3u64 {
            let hits = lookup(state, &id(file * 100 + 7)).expect("lookup");
            assert_eq!(hits.len(), 1, "{hits:?}");
            assert_eq!(hits[0].occurrence_id, jobs[file as usize].occurrence_id);
            assert_eq!((hits[0].line, hits[0].ordinal), (9, 7));
        }
    }

    /// The same seal, answered through its own slot.
    fn copy_job(job: &Job) -> Job {
        Job {
            dir: job.dir.clone(),
            work: job.work.clone(),
            occurrence_id: job.occurrence_id.clone(),
            accepted: job.accepted,
            records: job.records.clone(),
            run: job.run.clone(),
        }
    }

    fn write_work_file(work: &Path, records: Vec<u128>) {
        let mut bytes = vec![0u8; SINGLE_HEADER as usize];
        for packed in records {
            bytes.extend_from_slice(&((packed >> 64) as u64).to_le_bytes());
            bytes.extend_from_slice(&((packed >> 32) as u32).to_le_bytes());
            bytes.extend_from_slice(&(packed as u32).to_le_bytes());
        }
        fs::write(work, bytes).expect("work file");
    }
}
