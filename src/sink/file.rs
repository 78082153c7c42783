//! The `file` sink: events as NDJSON, one file per import occurrence.
//!
//! An occurrence is written to `<dir>/<stem>.ndjson.partial` and renamed to
//! `<stem>.ndjson` when complete, so a consumer of the folder never reads a
//! half-written file. The acknowledgement is the fsync: batches are grouped
//! into one fsync at most every [`SYNC_INTERVAL`], and each ack carries the
//! byte length synced so far. On resume the partial file is cut back to the
//! last recorded length, so nothing is ever written twice.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Ack, Batch, DeliveryTarget, SinkError};
use crate::claim::{self, ClaimError};
use crate::config::FileSinkSettings;

/// How long written batches may wait for their fsync.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct FileSink {
    settings: FileSinkSettings,
}

impl FileSink {
    pub fn new(settings: FileSinkSettings) -> FileSink {
        FileSink { settings }
    }

    /// Opens (or reopens at `resume_cursor`) the NDJSON file of one occurrence.
    pub fn open(
        &self,
        target: &DeliveryTarget,
        resume_cursor: Option<u64>,
    ) -> Result<FileDelivery, SinkError> {
        let dir = &self.settings.dir;
        claim::create_dir_durably(dir).map_err(sink_error)?;
        let partial = dir.join(format!("{}.ndjson.partial", target.output_stem));
        let complete = dir.join(format!("{}.ndjson", target.output_stem));
        // A crash between the final rename and the journal's record of it
        // leaves the complete file: take it back and resume as usual.
        if resume_cursor.is_some() && complete.exists() && !partial.exists() {
            std::fs::rename(&complete, &partial).map_err(io_at(&partial))?;
            // Durable before the file grows: a cut must not bring back a "complete" file that is not.
            sync_parent(&partial)?;
        }
        let created = !partial.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&partial)
            .map_err(io_at(&partial))?;
        if created {
            // The new name is durable before an ack counts bytes of the file.
            sync_parent(&partial)?;
        }
        let written = resume_cursor.unwrap_or(0);
        // What was written after the last acknowledged fsync is cut away: those
        // batches are sent again, and must not appear twice.
        file.set_len(written).map_err(io_at(&partial))?;
        let mut file = file;
        file.seek(SeekFrom::Start(written))
            .map_err(io_at(&partial))?;
        Ok(FileDelivery {
            file,
            partial,
            complete,
            written,
            unsynced: Vec::new(),
            last_sync: Instant::now(),
        })
    }
}

#[derive(Debug)]
pub struct FileDelivery {
    file: File,
    partial: PathBuf,
    complete: PathBuf,
    written: u64,
    /// Batches written since the last fsync, with the length after each.
    unsynced: Vec<(u64, u64)>,
    last_sync: Instant,
}

impl FileDelivery {
    pub fn send(&mut self, batch: Batch) -> Result<Vec<Ack>, SinkError> {
        let lines = batch.ndjson();
        self.file.write_all(lines).map_err(io_at(&self.partial))?;
        self.written += lines.len() as u64;
        self.unsynced.push((batch.seq, self.written));
        if self.last_sync.elapsed() >= SYNC_INTERVAL {
            return self.sync();
        }
        Ok(Vec::new())
    }

    pub fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        let acks = match self.sync() {
            Ok(acks) => acks,
            Err(err) => return (Vec::new(), Err(err)),
        };
        // Every event is at least its newline: something was accepted
        // exactly when the file is not empty.
        let result = if self.written > 0 {
            std::fs::rename(&self.partial, &self.complete)
                .map_err(io_at(&self.complete))
                .and_then(|()| sync_parent(&self.complete))
        } else {
            // Nothing accepted: no empty output file.
            std::fs::remove_file(&self.partial).map_err(io_at(&self.partial))
        };
        (acks, result)
    }

    /// Makes everything written durable and acknowledges it.
    pub fn checkpoint(&mut self) -> Result<Vec<Ack>, SinkError> {
        self.sync()
    }

    fn sync(&mut self) -> Result<Vec<Ack>, SinkError> {
        if self.unsynced.is_empty() {
            return Ok(Vec::new());
        }
        // The ack is this fdatasync; a test build may skip it to prove that tests/powercut.rs notices.
        if !crate::fault::active("file-sink-fdatasync") {
            self.file.sync_data().map_err(io_at(&self.partial))?;
        }
        self.last_sync = Instant::now();
        Ok(self
            .unsynced
            .drain(..)
            .map(|(seq, cursor)| Ack {
                seq,
                cursor,
                refused: Vec::new(),
            })
            .collect())
    }
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a rename durable.
fn sync_parent(path: &Path) -> Result<(), SinkError> {
    claim::sync_dir_of(path).map_err(sink_error)
}

fn sink_error(ClaimError::Io { path, source }: ClaimError) -> SinkError {
    SinkError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64, events: &[&str]) -> Batch {
        let mut batch = Batch::new(seq);
        for (index, event) in events.iter().enumerate() {
            batch.push_with(index as u64 + 1, |out| {
                out.extend_from_slice(event.as_bytes())
            });
        }
        batch
    }

    fn target() -> DeliveryTarget {
        DeliveryTarget {
            occurrence_id: "occ".into(),
            import: "news".into(),
            disable_integrations: false,
            organization_id: None,
            output_stem: "20260101T000000Z_news_occ".into(),
        }
    }

    #[test]
    fn batches_become_ndjson_and_the_file_is_renamed_when_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::new(FileSinkSettings {
            organization_id: None,
            dir: dir.path().to_path_buf(),
            batch_size: 2,
        });
        let mut delivery = sink.open(&target(), None).expect("open");
        let mut acks = delivery
            .send(batch(0, &["{\"a\":1}", "{\"a\":2}"]))
            .expect("send");
        acks.extend(delivery.send(batch(1, &["{\"a\":3}"])).expect("send"));
        let (more, result) = delivery.finish();
        result.expect("finish");
        acks.extend(more);
        assert_eq!(acks.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![0, 1]);
        let text = std::fs::read_to_string(dir.path().join("20260101T000000Z_news_occ.ndjson"))
            .expect("complete file");
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n");
        assert_eq!(acks[1].cursor, text.len() as u64);
        assert!(!dir
            .path()
            .join("20260101T000000Z_news_occ.ndjson.partial")
            .exists());
    }

    #[test]
    fn resume_cuts_what_came_after_the_last_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::new(FileSinkSettings {
            organization_id: None,
            dir: dir.path().to_path_buf(),
            batch_size: 1,
        });
        let mut first = sink.open(&target(), None).expect("open");
        first.send(batch(0, &["{\"a\":1}"])).expect("send");
        let acks = first.sync().expect("sync");
        let cursor = acks[0].cursor;
        first
            .send(batch(1, &["{\"a\":2}"]))
            .expect("send, never acked");
        drop(first);

        let mut again = sink.open(&target(), Some(cursor)).expect("reopen");
        again.send(batch(1, &["{\"a\":2}"])).expect("send");
        let (_, result) = again.finish();
        result.expect("finish");
        let text = std::fs::read_to_string(dir.path().join("20260101T000000Z_news_occ.ndjson"))
            .expect("complete file");
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[test]
    fn no_accepted_rows_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = FileSink::new(FileSinkSettings {
            organization_id: None,
            dir: dir.path().to_path_buf(),
            batch_size: 1,
        });
        let mut delivery = sink.open(&target(), None).expect("open");
        let (acks, result) = delivery.finish();
        result.expect("finish");
        assert!(acks.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
