//! The journal's reads: occurrences, refused events and when a batch was
//! acknowledged. Never writes: every write is in `journal/mod.rs`, in one
//! transaction with `synchronous = FULL`.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension};

use super::{Journal, JournalError, Occurrence, Refusal, Status, COLUMNS};

impl Journal {
    pub fn get(&self, id: &str) -> Result<Option<Occurrence>, JournalError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM occurrences WHERE id = ?1"),
                params![id],
                read_occurrence,
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// Occurrences not yet archived or failed, oldest first.
    pub fn unfinished(&self) -> Result<Vec<Occurrence>, JournalError> {
        self.select(
            "WHERE status IN ('claimed', 'delivering') ORDER BY claimed_at",
            params![],
        )
    }

    pub fn recent(&self, limit: usize) -> Result<Vec<Occurrence>, JournalError> {
        self.select(
            "ORDER BY claimed_at DESC, rowid DESC LIMIT ?1",
            params![limit as i64],
        )
    }

    pub fn refusals(&self, id: &str) -> Result<Vec<Refusal>, JournalError> {
        self.query(
            "SELECT line, message FROM refusals WHERE occurrence_id = ?1 ORDER BY line",
            params![id],
            |row| {
                Ok(Refusal {
                    line: row.get::<_, i64>(0)? as u64,
                    message: row.get(1)?,
                })
            },
        )
    }

    /// When batch `seq` (from 0) of an occurrence was known acknowledged:
    /// the first recorded progress that covered it.
    pub fn acknowledged_at(&self, id: &str, seq: u64) -> Result<Option<String>, JournalError> {
        self.conn
            .query_row(
                "SELECT at FROM acks WHERE occurrence_id = ?1 AND batches_acked > ?2
                 ORDER BY batches_acked LIMIT 1",
                params![id, seq as i64],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    pub(super) fn select(
        &self,
        tail: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Occurrence>, JournalError> {
        self.query(
            &format!("SELECT {COLUMNS} FROM occurrences {tail}"),
            params,
            read_occurrence,
        )
    }

    pub(super) fn query<T>(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
        read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, JournalError> {
        let mut statement = self.conn.prepare(sql).map_err(|e| self.fail(e))?;
        let rows = statement
            .query_map(params, read)
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.fail(e))
    }
}

fn read_occurrence(row: &rusqlite::Row<'_>) -> rusqlite::Result<Occurrence> {
    let count = |index: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(index)?.map(|value| value as u64))
    };
    Ok(Occurrence {
        id: row.get(0)?,
        import: row.get(1)?,
        file_name: row.get(2)?,
        processing_path: PathBuf::from(row.get::<_, String>(3)?),
        sha256: row.get(4)?,
        size: count(5)?,
        status: Status::from_str(&row.get::<_, String>(6)?),
        claimed_at: row.get(7)?,
        finished_at: row.get(8)?,
        rows_accepted: count(9)?,
        rows_rejected: count(10)?,
        rows_refused: count(11)?.unwrap_or(0),
        batch_size: count(12)?,
        batches_total: count(13)?,
        batches_acked: count(14)?.unwrap_or(0),
        sink_cursor: count(15)?,
        output_stem: row.get(16)?,
        outcome_path: row.get::<_, Option<String>>(17)?.map(PathBuf::from),
        reason: row.get(18)?,
    })
}
