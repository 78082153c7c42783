//! What every file's steps share: the state folders, the journal (reads
//! here, writes through group commit), the folder-fsync group, the sink and
//! the counters; and the stage's error type. Never holds a file's own state.
//!
//! The steps' reads go through a connection of their own ([`Context::reader`]):
//! the writer's connection is locked for a whole group transaction, fsync
//! included, and an async worker must not wait for that (WAL readers see
//! every committed write and never wait for the writer).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::claim::{ClaimError, StateDirs};
use crate::commit::{DirSync, JournalWriter};
use crate::journal::{Journal, JournalError};
pub use crate::metrics::Counters;
use crate::sink::{Sink, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    State(#[from] ClaimError),
    #[error("delivery failed: {0}")]
    Sink(#[from] SinkError),
    #[error("occurrence {0} is not in the journal")]
    UnknownOccurrence(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a worker thread stopped unexpectedly: {0}")]
    Worker(String),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

/// What every file's processing shares.
#[derive(Debug, Clone)]
pub struct Context {
    pub dirs: StateDirs,
    /// The connection group commit writes through (start-up writes, before
    /// any file runs, use it directly).
    pub journal: Arc<Mutex<Journal>>,
    /// A second connection, for the steps' reads while files are in flight.
    reader: Arc<Mutex<Journal>>,
    /// Journal writes, group-committed.
    pub writer: JournalWriter,
    /// Folder fsyncs after renames, grouped.
    pub dir_sync: DirSync,
    pub sink: Sink,
    pub batch_size: usize,
    pub shutdown: CancellationToken,
    pub counters: Arc<Counters>,
}

impl Context {
    /// Starts the group-commit threads of the journal and of folder fsyncs.
    pub fn new(
        dirs: StateDirs,
        journal: Journal,
        sink: Sink,
        batch_size: usize,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
    ) -> Result<Context, PipelineError> {
        let reader = match journal.path().parent() {
            Some(dir) => Journal::open(dir)?,
            None => Journal::open(&dirs.root)?,
        };
        let journal = Arc::new(Mutex::new(journal));
        let thread_error = |source| PipelineError::Io {
            path: dirs.root.clone(),
            source,
        };
        Ok(Context {
            reader: Arc::new(Mutex::new(reader)),
            writer: JournalWriter::start(journal.clone()).map_err(thread_error)?,
            dir_sync: DirSync::start().map_err(thread_error)?,
            dirs,
            journal,
            sink,
            batch_size,
            shutdown,
            counters,
        })
    }

    /// Runs `op` in the next group transaction; returns once committed.
    pub async fn record(
        &self,
        op: impl FnOnce(&mut Journal) -> Result<(), JournalError> + Send + 'static,
    ) -> Result<(), PipelineError> {
        Ok(self.writer.write(op).await?)
    }

    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    /// For reads while files are in flight: never waits for a group commit.
    pub fn reader(&self) -> MutexGuard<'_, Journal> {
        lock(&self.reader)
    }
}

fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    // A panic while holding the lock cannot leave SQLite half-written
    // (transactions roll back), so a poisoned lock is still usable.
    journal
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
