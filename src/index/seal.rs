//! index::seal: makes one archived file's ids durable as a sorted run in
//! `index/<day>/`, before the file moves to `archive/` — the work file's
//! sorted chunks merged into one run, or the ids recorded again from the
//! file when the work file is incomplete. It never removes another file's run.

use std::fs::{self, File};
use std::io::{self, BufReader};
use std::path::Path;

use super::format::Source;
use super::merge::{compact, level_of, write_run};
use super::record::{Recorder, CHUNK, WORK_RECORD};
use super::{disabled, io_at, root, work_path, IndexError, OCC_LEN};

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
