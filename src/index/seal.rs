//! index::seal: makes one archived file's ids durable as a run in
//! `index/<day>/`, before the file moves to `archive/`. The work file the
//! recorder wrote is already the run (its sorted chunks are the run's
//! segments): sealing fills in its header, fsyncs it and renames it into the
//! day; the caller syncs the day's folder (through the group commit, with
//! the report's folder). When the work file is incomplete the ids are
//! recorded again from the file. It never removes another file's run, and
//! never waits for a merge (it asks for one, on the merge thread).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::format::{header, SINGLE_HEADER};
use super::merge::{level_of, merge_soon};
use super::record::{Recorder, CHUNK, WORK_RECORD};
use super::{disabled, io_at, root, work_path, IndexError, OCC_LEN};
use crate::claim;

/// Makes the index of one archived occurrence durable in `index/<day>/`,
/// all but the folder fsync: returns the run's path, whose folder the
/// caller syncs before the file moves (`None`: the index is off). `accepted`
/// is how many events the file has; when the work file does not hold
/// exactly that many, `rebuild` is called to record them again from the
/// file (after a crash mid-delivery). Idempotent: sealing twice leaves the
/// same run.
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
    if fs::metadata(&work).map_or(0, |meta| meta.len()) != expected {
        let mut recorder = Recorder::create(&work, true);
        rebuild(&mut recorder).map_err(io_at(&work))?;
        recorder.finish();
    }
    let dir = root(state).join(day);
    claim::create_dir_durably(&dir)?;
    let file = OpenOptions::new()
        .write(true)
        .open(&work)
        .map_err(io_at(&work))?;
    if file.metadata().map_err(io_at(&work))?.len() != expected {
        return Err(IndexError::Io {
            path: work,
            source: io::Error::other("the recorded ids do not match the file's events"),
        });
    }
    let head = header(&[occurrence_id.to_string()], accepted, CHUNK as u64);
    file.write_all_at(&head, 0).map_err(io_at(&work))?;
    file.sync_all().map_err(io_at(&work))?;
    let run = dir.join(format!("{:02}-{occurrence_id}.run", level_of(accepted)));
    claim::rename(&work, &run)?;
    merge_soon(&dir);
    Ok(Some(run))
}
