//! journal: the durable record of every import occurrence (SQLite, WAL).
//!
//! Owns what survives a crash: which file each occurrence is, its SHA-256,
//! its status, and how many batches the sink has acknowledged. Every write
//! is one transaction with `synchronous = FULL`, so what it says is on disk
//! before the caller goes on. It never records progress it was not given:
//! callers pass only acknowledged batches.

use std::path::{Path, PathBuf};
use std::time::Duration;

mod read;

use rusqlite::{params, Connection, OptionalExtension};

/// An event the receiver refused: its row's line and the receiver's message.
/// Recorded with the batch's acknowledgement; the sink reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: u64,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    pub path: PathBuf,
    #[source]
    pub source: rusqlite::Error,
}

/// Where an occurrence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// In `processing/`, not yet validated.
    Claimed,
    /// Validated; batches are being delivered.
    Delivering,
    /// Delivered and in `archive/`.
    Archived,
    /// Quarantined or unreadable, in `failed/`.
    Failed,
    /// Same content as an occurrence already imported; archived without sending.
    Duplicate,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Claimed => "claimed",
            Status::Delivering => "delivering",
            Status::Archived => "archived",
            Status::Failed => "failed",
            Status::Duplicate => "duplicate",
        }
    }

    fn from_str(text: &str) -> Status {
        match text {
            "delivering" => Status::Delivering,
            "archived" => Status::Archived,
            "failed" => Status::Failed,
            "duplicate" => Status::Duplicate,
            _ => Status::Claimed,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Archived | Status::Failed | Status::Duplicate)
    }
}

/// One row of the journal.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Occurrence {
    pub id: String,
    pub import: String,
    pub file_name: String,
    pub processing_path: PathBuf,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    #[serde(serialize_with = "status_name")]
    pub status: Status,
    pub claimed_at: String,
    pub finished_at: Option<String>,
    pub rows_accepted: Option<u64>,
    pub rows_rejected: Option<u64>,
    pub rows_refused: u64,
    pub batch_size: Option<u64>,
    pub batches_total: Option<u64>,
    pub batches_acked: u64,
    pub sink_cursor: Option<u64>,
    pub output_stem: Option<String>,
    pub outcome_path: Option<PathBuf>,
    pub reason: Option<String>,
}

fn status_name<S: serde::Serializer>(status: &Status, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

/// What the delivery pass needs to know, recorded before its first batch.
#[derive(Debug, Clone)]
pub struct Validated {
    pub rows_accepted: u64,
    pub rows_rejected: u64,
    pub batch_size: u64,
    pub batches_total: u64,
    pub output_stem: String,
}

pub struct Journal {
    conn: Connection,
    path: PathBuf,
}

impl JournalError {
    /// An error not raised by SQLite itself (the commit thread is gone, a
    /// group commit failed for everyone in it).
    pub fn other(message: &str) -> JournalError {
        JournalError {
            path: PathBuf::new(),
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(message.to_string()),
            ),
        }
    }

    /// The same failure, for each of the writes that shared it.
    fn shared(&self) -> JournalError {
        let source = match &self.source {
            rusqlite::Error::SqliteFailure(code, message) => {
                rusqlite::Error::SqliteFailure(*code, message.clone())
            }
            other => rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(other.to_string()),
            ),
        };
        JournalError {
            path: self.path.clone(),
            source,
        }
    }
}

/// One write of a group transaction.
pub type GroupOp = Box<dyn FnOnce(&mut Journal) -> Result<(), JournalError> + Send>;

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS occurrences (
    id TEXT PRIMARY KEY,
    import TEXT NOT NULL,
    file_name TEXT NOT NULL,
    processing_path TEXT NOT NULL,
    sha256 TEXT,
    size INTEGER,
    status TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    finished_at TEXT,
    rows_accepted INTEGER,
    rows_rejected INTEGER,
    rows_refused INTEGER NOT NULL DEFAULT 0,
    batch_size INTEGER,
    batches_total INTEGER,
    batches_acked INTEGER NOT NULL DEFAULT 0,
    sink_cursor INTEGER,
    output_stem TEXT,
    outcome_path TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS occurrences_by_sha256 ON occurrences(sha256);
CREATE INDEX IF NOT EXISTS occurrences_by_status ON occurrences(status);
CREATE TABLE IF NOT EXISTS refusals (
    occurrence_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS refusals_by_occurrence ON refusals(occurrence_id);
CREATE TABLE IF NOT EXISTS acks (
    occurrence_id TEXT NOT NULL,
    batches_acked INTEGER NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS acks_by_occurrence ON acks(occurrence_id, batches_acked);
";

const COLUMNS: &str = "id, import, file_name, processing_path, sha256, size, status, claimed_at, \
     finished_at, rows_accepted, rows_rejected, rows_refused, batch_size, batches_total, \
     batches_acked, sink_cursor, output_stem, outcome_path, reason";

/// The journal's file in the state folder.
pub const FILE_NAME: &str = "journal.sqlite";

impl Journal {
    /// Opens (or creates) [`FILE_NAME`] in the state folder.
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        let path = state_dir.join(FILE_NAME);
        let fail = |source| JournalError {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        conn.execute_batch(SCHEMA).map_err(fail)?;
        Ok(Journal { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Group commit: every op in one transaction, each inside its own
    /// savepoint, so that a failing op is undone alone and the others still
    /// commit. One result per op, in order; a failed commit fails them all.
    pub fn in_one_transaction(&mut self, ops: Vec<GroupOp>) -> Vec<Result<(), JournalError>> {
        let count = ops.len();
        if let Err(err) = self.run_cached("BEGIN IMMEDIATE") {
            let err = self.fail(err);
            return (0..count).map(|_| Err(err.shared())).collect();
        }
        let mut results = Vec::with_capacity(count);
        for op in ops {
            if let Err(err) = self.run_cached("SAVEPOINT op") {
                results.push(Err(self.fail(err)));
                continue;
            }
            let result = op(self);
            let ended = match result {
                Ok(()) => self.run_cached("RELEASE op"),
                Err(_) => self
                    .run_cached("ROLLBACK TO op")
                    .and_then(|()| self.run_cached("RELEASE op")),
            };
            match ended {
                Ok(()) => results.push(result),
                Err(err) => results.push(Err(self.fail(err))),
            }
        }
        if let Err(err) = self.run_cached("COMMIT") {
            let err = self.fail(err);
            let _ = self.conn.execute_batch("ROLLBACK");
            return (0..count).map(|_| Err(err.shared())).collect();
        }
        results
    }

    /// One statement through the statement cache: a group commit runs the
    /// same few statements thousands of times a file, and parsing them each
    /// time cost about a tenth of its CPU.
    fn run_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    fn fail(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    pub fn record_claim(
        &self,
        id: &str,
        import: &str,
        file_name: &str,
        processing_path: &Path,
        claimed_at: &str,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO occurrences (id, import, file_name, processing_path, status, claimed_at)
                 VALUES (?1, ?2, ?3, ?4, 'claimed', ?5)",
                params![id, import, file_name, processing_path.to_string_lossy(), claimed_at],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn record_fingerprint(
        &self,
        id: &str,
        sha256: &str,
        size: u64,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE occurrences SET sha256 = ?2, size = ?3 WHERE id = ?1",
                params![id, sha256, size as i64],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Another occurrence with this content that was, or is being,
    /// delivered, and was claimed before `except_id` (of two files with the
    /// same content in flight at once, the first claimed is delivered).
    pub fn find_same_content(
        &self,
        sha256: &str,
        except_id: &str,
    ) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row(
                "SELECT id FROM occurrences WHERE sha256 = ?1 AND id != ?2
                 AND status IN ('archived', 'delivering', 'claimed')
                 AND NOT EXISTS (SELECT 1 FROM occurrences AS own WHERE own.id = ?2
                     AND (own.claimed_at, own.rowid) < (occurrences.claimed_at, occurrences.rowid))
                 ORDER BY claimed_at LIMIT 1",
                params![sha256, except_id],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    pub fn record_validated(&self, id: &str, validated: &Validated) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE occurrences SET status = 'delivering', rows_accepted = ?2, rows_rejected = ?3,
                 batch_size = ?4, batches_total = ?5, output_stem = ?6 WHERE id = ?1",
                params![
                    id,
                    validated.rows_accepted as i64,
                    validated.rows_rejected as i64,
                    validated.batch_size as i64,
                    validated.batches_total as i64,
                    validated.output_stem
                ],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Records that the first `batches_acked` batches are acknowledged, with
    /// the events the receiver refused among them, in one transaction.
    pub fn record_progress(
        &mut self,
        id: &str,
        batches_acked: u64,
        sink_cursor: u64,
        refusals: &[Refusal],
    ) -> Result<(), JournalError> {
        // A savepoint: its own transaction alone, nested in a group commit.
        self.run_cached("SAVEPOINT progress")
            .map_err(|e| self.fail(e))?;
        let result = (|| {
            for refusal in refusals {
                self.conn
                    .prepare_cached(
                        "INSERT INTO refusals (occurrence_id, line, message) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, refusal.line as i64, refusal.message])?;
            }
            self.conn
                .prepare_cached(
                    "UPDATE occurrences SET batches_acked = ?2, sink_cursor = ?3,
                     rows_refused = rows_refused + ?4 WHERE id = ?1",
                )?
                .execute(params![
                    id,
                    batches_acked as i64,
                    sink_cursor as i64,
                    refusals.len() as i64
                ])?;
            // When batches were acknowledged, for `trace`.
            self.conn
                .prepare_cached(
                    "INSERT INTO acks (occurrence_id, batches_acked, at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    id,
                    batches_acked as i64,
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ])?;
            self.run_cached("RELEASE progress")
        })();
        if result.is_err() {
            let _ = self
                .run_cached("ROLLBACK TO progress")
                .and_then(|()| self.run_cached("RELEASE progress"));
        }
        result.map_err(|e| self.fail(e))
    }

    /// Where the file is about to go, recorded before it moves, so that a
    /// crash during the move is resolved at start-up.
    pub fn record_outcome_path(&self, id: &str, outcome_path: &Path) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE occurrences SET outcome_path = ?2 WHERE id = ?1",
                params![id, outcome_path.to_string_lossy()],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    pub fn record_outcome(
        &self,
        id: &str,
        status: Status,
        reason: Option<&str>,
        finished_at: &str,
    ) -> Result<(), JournalError> {
        self.conn
            .execute(
                "UPDATE occurrences SET status = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, status.as_str(), reason, finished_at],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_occurrence_goes_from_claim_to_archive_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut journal = Journal::open(dir.path()).expect("open");
            journal
                .record_claim(
                    "o1",
                    "news",
                    "a.csv",
                    Path::new("/p/o1--a.csv"),
                    "2026-01-01T00:00:00Z",
                )
                .expect("claim");
            journal
                .record_fingerprint("o1", "abc", 10)
                .expect("fingerprint");
            journal
                .record_validated(
                    "o1",
                    &Validated {
                        rows_accepted: 250,
                        rows_rejected: 1,
                        batch_size: 100,
                        batches_total: 3,
                        output_stem: "stem".into(),
                    },
                )
                .expect("validated");
            let refused = vec![Refusal {
                line: 7,
                message: "bad".into(),
            }];
            journal
                .record_progress("o1", 2, 4096, &refused)
                .expect("progress");
            assert_eq!(journal.unfinished().expect("unfinished").len(), 1);
        }
        let journal = Journal::open(dir.path()).expect("reopen");
        let occurrence = journal.get("o1").expect("get").expect("present");
        assert_eq!(occurrence.status, Status::Delivering);
        assert_eq!(occurrence.batches_acked, 2);
        assert_eq!(occurrence.sink_cursor, Some(4096));
        assert_eq!(occurrence.rows_refused, 1);
        assert_eq!(journal.refusals("o1").expect("refusals")[0].line, 7);
        assert_eq!(
            journal.find_same_content("abc", "o2").expect("dup"),
            Some("o1".into())
        );
        assert_eq!(journal.find_same_content("abc", "o1").expect("self"), None);
        journal
            .record_outcome("o1", Status::Archived, None, "2026-01-01T00:00:01Z")
            .expect("outcome");
        assert!(journal.unfinished().expect("unfinished").is_empty());
        assert_eq!(
            journal.recent(10).expect("recent")[0].status,
            Status::Archived
        );
    }

    #[test]
    fn failed_content_is_not_a_duplicate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        journal
            .record_claim(
                "o1",
                "news",
                "a.csv",
                Path::new("/p/a"),
                "2026-01-01T00:00:00Z",
            )
            .expect("claim");
        journal
            .record_fingerprint("o1", "abc", 10)
            .expect("fingerprint");
        journal
            .record_outcome(
                "o1",
                Status::Failed,
                Some("quarantined"),
                "2026-01-01T00:00:01Z",
            )
            .expect("outcome");
        assert_eq!(journal.find_same_content("abc", "o2").expect("dup"), None);
    }
}
