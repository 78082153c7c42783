//! A file's outcome as written beside it (`.report.json`), and the claimed
//! file a task works on. Plain data: never touches the file system.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::config::Import;

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Delivered (maybe with rejected rows) and archived.
    Archived,
    /// Too many rejected rows: nothing sent, moved to `failed/`.
    Quarantined,
    /// Unreadable: moved to `failed/`.
    Failed,
    /// Same content already imported: archived, nothing sent.
    Duplicate,
    /// Shutdown came first: the file waits in `processing/`.
    Interrupted,
}

/// The `.report.json` beside every finished file.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub occurrence_id: String,
    pub import: String,
    /// The organization the events went to (the import's, else the sink's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization_id: Option<String>,
    pub file_name: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub status: Verdict,
    pub reason: Option<String>,
    pub duplicate_of: Option<String>,
    pub rows_accepted: u64,
    pub rows_rejected: u64,
    pub rows_refused: u64,
    pub rows_delivered: u64,
    pub batches: u64,
    pub claimed_at: String,
    pub finished_at: String,
    pub validate_ms: u64,
    pub deliver_ms: u64,
    pub file: Option<PathBuf>,
    pub rejects_file: Option<PathBuf>,
}

/// One claimed file.
#[derive(Debug, Clone)]
pub struct Work {
    pub occurrence_id: String,
    pub import: Arc<Import>,
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}
