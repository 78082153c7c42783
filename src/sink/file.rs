//! The `file` sink: events as NDJSON, one file per import occurrence.
//!
//! An occurrence is written to `<dir>/<stem>.ndjson.partial` and renamed to
//! `<stem>.ndjson` when complete, so a consumer of the folder never reads a
//! half-written file. The acknowledgement is the fsync, without a timer:
//! batches are written as they come, each run the reader hands over with
//! one vectored write; once [`SYNC_BYTES`] more are written
//! and no fsync of this file is running, one starts (on a blocking thread)
//! and covers every batch written so far; the rest are synced when the
//! file's batches end, or at a checkpoint. A file's batches come from a
//! reader that waits for nothing but the disk, so no ack waits on a clock;
//! a small file costs one fsync, and a large one one per few MiB rather
//! than one every few batches (for 1M rows, 54 fdatasyncs rather than
//! 2,100, and 92 journal commits of its progress rather than 1,000). Each
//! ack carries the byte length synced. On resume the partial file is cut
//! back to the last recorded length, so nothing is ever written twice.
//! A file's events may be written while it is still being validated (the
//! same read does both); if it fails validation its delivery is abandoned
//! and the `.partial` file removed, never renamed.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::{Ack, Batch, DeliveryTarget, SinkError};
use crate::claim::{self, ClaimError};
use crate::commit::DirSync;
use crate::config::FileSinkSettings;

/// Written bytes that start an fsync while a file's batches still come: a
/// crash re-writes at most about this much of the file.
pub const SYNC_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct FileSink {
    settings: FileSinkSettings,
    /// The renames of finished outputs share folder fsyncs.
    dir_sync: DirSync,
}

impl FileSink {
    pub fn new(settings: FileSinkSettings) -> Result<FileSink, SinkError> {
        let dir_sync = DirSync::start()
            .map_err(|err| SinkError::Setup(format!("cannot start a thread: {err}")))?;
        Ok(FileSink { settings, dir_sync })
    }

    /// Opens (or reopens at `resume_cursor`) the NDJSON file of one occurrence.
    pub async fn open(
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
            self.sync_parent(&partial).await?;
        }
        let created = !partial.exists();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&partial)
            .map_err(io_at(&partial))?;
        if created {
            // The new name is durable before an ack counts bytes of the file
            // (one folder fsync shared by the files opened meanwhile).
            self.sync_parent(&partial).await?;
        }
        let written = resume_cursor.unwrap_or(0);
        // What was written after the last acknowledged fsync is cut away: those
        // batches are sent again, and must not appear twice.
        file.set_len(written).map_err(io_at(&partial))?;
        let mut file = file;
        file.seek(SeekFrom::Start(written))
            .map_err(io_at(&partial))?;
        Ok(FileDelivery {
            file: Arc::new(file),
            partial,
            complete,
            written,
            unsynced: Vec::new(),
            sync_started_at: written,
            syncing: None,
            dir_sync: self.dir_sync.clone(),
        })
    }
}

impl FileSink {
    /// Makes a rename or a new name in the sink's folder durable.
    async fn sync_parent(&self, path: &Path) -> Result<(), SinkError> {
        self.dir_sync.sync_dir_of(path).await.map_err(sink_error)
    }
}

fn sink_error(ClaimError::Io { path, source }: ClaimError) -> SinkError {
    SinkError::Io { path, source }
}

/// Batches (seq, length after it) covered by one fsync.
type Synced = Vec<(u64, u64)>;

#[derive(Debug)]
pub struct FileDelivery {
    file: Arc<File>,
    partial: PathBuf,
    complete: PathBuf,
    written: u64,
    /// Batches written since the running fsync started, with the length after each.
    unsynced: Synced,
    /// The length covered by the last fsync started.
    sync_started_at: u64,
    /// The fsync running now, and the batches it covers.
    syncing: Option<JoinHandle<std::io::Result<Synced>>>,
    dir_sync: DirSync,
}

impl FileDelivery {
    /// Writes the batch; returns the acks of an fsync that ended meanwhile,
    /// and starts the next one if none is running and enough was written.
    pub async fn send(&mut self, batch: Batch) -> Result<Vec<Ack>, SinkError> {
        self.send_run(vec![batch]).await
    }

    /// Writes the batches (in order) with one vectored write, then as
    /// [`FileDelivery::send`]: the page cache's cost per write call fell by
    /// a third on this sink's 0.5 GB for 1M rows when a call carried eight
    /// batches rather than one.
    pub async fn send_run(&mut self, run: Vec<Batch>) -> Result<Vec<Ack>, SinkError> {
        let mut slices: Vec<IoSlice<'_>> = run.iter().map(|b| IoSlice::new(b.ndjson())).collect();
        write_all_vectored(&self.file, &mut slices).map_err(io_at(&self.partial))?;
        for batch in &run {
            self.written += batch.ndjson().len() as u64;
            self.unsynced.push((batch.seq, self.written));
        }
        let mut acks = Vec::new();
        if self.syncing.as_ref().is_some_and(JoinHandle::is_finished) {
            acks = self.wait_sync().await?;
        }
        if self.syncing.is_none() && self.written - self.sync_started_at >= SYNC_BYTES {
            self.start_sync();
        }
        Ok(acks)
    }

    pub async fn finish(&mut self) -> (Vec<Ack>, Result<(), SinkError>) {
        let acks = match self.sync_all().await {
            Ok(acks) => acks,
            Err(err) => return (Vec::new(), Err(err)),
        };
        // Every event is at least its newline: something was accepted
        // exactly when the file is not empty.
        let result = if self.written > 0 {
            match std::fs::rename(&self.partial, &self.complete) {
                Ok(()) => self.dir_sync.sync_dir_of(&self.complete).await.map_err(
                    |crate::claim::ClaimError::Io { path, source }| SinkError::Io { path, source },
                ),
                Err(err) => Err(io_at(&self.complete)(err)),
            }
        } else {
            // Nothing accepted: no empty output file.
            std::fs::remove_file(&self.partial).map_err(io_at(&self.partial))
        };
        (acks, result)
    }

    /// Forgets the occurrence: its `.partial` file is removed (written
    /// while the file was being validated, it failed validation).
    pub async fn abandon(mut self) -> Result<(), SinkError> {
        // A running fsync's result no longer matters, only that it ended.
        let _ = self.wait_sync().await;
        std::fs::remove_file(&self.partial).map_err(io_at(&self.partial))?;
        self.dir_sync
            .sync_dir_of(&self.partial)
            .await
            .map_err(sink_error)
    }

    /// Makes everything written durable and acknowledges it.
    pub async fn checkpoint(&mut self) -> Result<Vec<Ack>, SinkError> {
        self.sync_all().await
    }

    fn start_sync(&mut self) {
        if self.unsynced.is_empty() {
            return;
        }
        let covered = std::mem::take(&mut self.unsynced);
        self.sync_started_at = self.written;
        let file = self.file.clone();
        self.syncing = Some(tokio::task::spawn_blocking(move || {
            // The ack is this fdatasync; a test build may skip it to prove that tests/powercut.rs notices.
            if crate::fault::active("file-sink-fdatasync") {
                return Ok(covered);
            }
            file.sync_data().map(|()| covered)
        }));
    }

    async fn wait_sync(&mut self) -> Result<Vec<Ack>, SinkError> {
        let Some(task) = self.syncing.take() else {
            return Ok(Vec::new());
        };
        let covered = match task.await {
            Ok(result) => result.map_err(io_at(&self.partial))?,
            Err(err) => {
                return Err(io_at(&self.partial)(std::io::Error::other(format!(
                    "the fsync thread stopped: {err}"
                ))))
            }
        };
        Ok(covered
            .into_iter()
            .map(|(seq, cursor)| Ack {
                seq,
                cursor,
                refused: Vec::new(),
            })
            .collect())
    }

    /// Waits for the running fsync, then syncs what came after it.
    async fn sync_all(&mut self) -> Result<Vec<Ack>, SinkError> {
        let mut acks = self.wait_sync().await?;
        self.start_sync();
        acks.extend(self.wait_sync().await?);
        Ok(acks)
    }
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored(mut file: &File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => IoSlice::advance_slices(&mut slices, written),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
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

    fn sink_in(dir: &Path, batch_size: usize) -> FileSink {
        FileSink::new(FileSinkSettings {
            organization_id: None,
            dir: dir.to_path_buf(),
            batch_size,
        })
        .expect("sink")
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

    #[tokio::test]
    async fn batches_become_ndjson_and_the_file_is_renamed_when_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = sink_in(dir.path(), 2);
        let mut delivery = sink.open(&target(), None).await.expect("open");
        let mut acks = delivery
            .send(batch(0, &["{\"a\":1}", "{\"a\":2}"]))
            .await
            .expect("send");
        acks.extend(delivery.send(batch(1, &["{\"a\":3}"])).await.expect("send"));
        let (more, result) = delivery.finish().await;
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

    #[tokio::test]
    async fn a_run_is_written_whole_and_acked_batch_by_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = sink_in(dir.path(), 2);
        let mut delivery = sink.open(&target(), None).await.expect("open");
        let run = vec![
            batch(0, &["{\"a\":1}", "{\"a\":2}"]),
            batch(1, &["{\"a\":3}"]),
            batch(2, &["{\"a\":4}", "{\"a\":5}"]),
        ];
        let mut acks = delivery.send_run(run).await.expect("send");
        acks.extend(delivery.send(batch(3, &["{\"a\":6}"])).await.expect("send"));
        let (more, result) = delivery.finish().await;
        result.expect("finish");
        acks.extend(more);
        let text = std::fs::read_to_string(dir.path().join("20260101T000000Z_news_occ.ndjson"))
            .expect("complete file");
        assert_eq!(
            text,
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":4}\n{\"a\":5}\n{\"a\":6}\n"
        );
        let acked: Vec<(u64, u64)> = acks.iter().map(|a| (a.seq, a.cursor)).collect();
        // Each batch's cursor is the length up to its own last line.
        assert_eq!(acked, vec![(0, 16), (1, 24), (2, 40), (3, 48)]);
    }

    #[tokio::test]
    async fn resume_cuts_what_came_after_the_last_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = sink_in(dir.path(), 1);
        let mut first = sink.open(&target(), None).await.expect("open");
        first.send(batch(0, &["{\"a\":1}"])).await.expect("send");
        let acks = first.checkpoint().await.expect("sync");
        let cursor = acks[0].cursor;
        first
            .send(batch(1, &["{\"a\":2}"]))
            .await
            .expect("send, never acked");
        drop(first);

        let mut again = sink.open(&target(), Some(cursor)).await.expect("reopen");
        again.send(batch(1, &["{\"a\":2}"])).await.expect("send");
        let (_, result) = again.finish().await;
        result.expect("finish");
        let text = std::fs::read_to_string(dir.path().join("20260101T000000Z_news_occ.ndjson"))
            .expect("complete file");
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }

    #[tokio::test]
    async fn an_abandoned_delivery_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = sink_in(dir.path(), 1);
        let mut delivery = sink.open(&target(), None).await.expect("open");
        delivery.send(batch(0, &["{\"a\":1}"])).await.expect("send");
        delivery.start_sync();
        delivery.abandon().await.expect("abandon");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[tokio::test]
    async fn no_accepted_rows_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = sink_in(dir.path(), 1);
        let mut delivery = sink.open(&target(), None).await.expect("open");
        let (acks, result) = delivery.finish().await;
        result.expect("finish");
        assert!(acks.is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
