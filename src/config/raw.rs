//! config::raw: the file's shape, as serde reads it.
//!
//! Every struct refuses unknown keys (`deny_unknown_fields`), and the doc
//! comment on each field is the reference for that key. The sink is an enum
//! tagged by `kind`, so a key of the other kind is an unknown key. Word-valued
//! keys are read straight into their enums (see [`super::words`]). This module
//! only describes the shape and the defaults: rules that span fields, ranges
//! and anything compiled (regexes, zones, date formats) belong to
//! [`super::check`]; nothing here may judge a value.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::words;
use crate::parse::{
    HeaderMode, InputEncoding, Separator, UnknownSubscription, DEFAULT_MAX_ROW_BYTES,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// The drop folder and how it is watched.
    pub watch: RawWatch,
    /// Where the journal and the processing/, archive/, failed/ folders live.
    pub state: RawState,
    /// Where events go: `kind = "http"` or `kind = "file"`.
    #[serde(default)]
    pub sink: Option<RawSink>,
    /// The optional Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<RawMetrics>,
    /// One `[[import]]` per kind of file.
    #[serde(default, rename = "import")]
    pub imports: Vec<RawImport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatch {
    /// The drop folder. Only its top level is watched; subfolders are ignored.
    pub dir: PathBuf,
    /// A file must be closed and unchanged this long before it is read (one
    /// renamed into the folder is complete as it appears, and read at once).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Seconds between full rescans, for events the watcher missed.
    #[serde(default = "default_rescan_s")]
    pub rescan_s: u64,
    /// Glob patterns (`*`, `?`) of names that are never opened.
    #[serde(default = "default_ignore")]
    pub ignore: Vec<String>,
    /// At most how many files are processed at once (a cap; small files
    /// share journal commits and fsyncs, so many in flight cost little).
    #[serde(default = "default_max_files_in_flight")]
    pub max_files_in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// The journal, processing/, archive/ and failed/ live here.
    pub dir: PathBuf,
    /// Archive days older than this many days are deleted (files, reports,
    /// rejects, index entries). Absent: the archive is kept forever.
    pub archive_days: Option<u32>,
}

/// `[sink]`, one table whose `kind` says which keys it may hold.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(super) enum RawSink {
    /// `kind = "file"`: NDJSON files in `dir`.
    File(RawFileSink),
    /// `kind = "http"`: the consents API.
    Http(Box<RawHttpSink>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSink {
    /// The folder the NDJSON files are written to.
    pub dir: PathBuf,
    /// Events per file batch, at most 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Written into every event when set (optional for the file sink).
    pub organization_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpSink {
    /// The API's base URL, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    /// The organization the events belong to (an import may name another).
    pub organization_id: String,
    /// The private API key; the secret comes from `secret_file` or `secret_env`.
    pub api_key: Option<String>,
    /// A file holding the API secret.
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the API secret.
    pub secret_env: Option<String>,
    /// A file holding a ready bearer token, re-read when it changes.
    pub token_file: Option<PathBuf>,
    /// An environment variable holding a ready bearer token.
    pub token_env: Option<String>,
    /// Events per batch, at most 100.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Seconds before a request times out.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
    /// Allow `http://` (only for a loopback test server).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// An upper bound on requests per second, all files together.
    pub max_requests_per_second: Option<f64>,
    /// Send request bodies gzip-compressed (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// The first retry delay, in milliseconds (doubles up to `retry_max_ms`).
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// The longest retry delay, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Seconds between probes while credentials are refused.
    #[serde(default = "default_auth_retry_s")]
    pub auth_retry_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    /// `host:port` of the Prometheus endpoint (and `/healthz`).
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImport {
    /// A unique name; part of every event id.
    pub name: String,
    /// Regex matched against the file name without its extension.
    pub pattern: String,
    /// One of the standard formats, a `dd MM yyyy HH mm ss` pattern, or strftime (`%`).
    pub date_format: String,
    /// IANA zone the dates are written in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// `;` `,` tab or space, or `semicolon` `comma` `tab` `space`.
    #[serde(default = "default_separator", deserialize_with = "words::separator")]
    pub separator: Separator,
    /// `utf-8`, `windows-1252`, `iso-8859-1` or `auto` (any case; also `utf8`,
    /// `cp1252`, `latin1`, `latin-1`).
    #[serde(default = "default_encoding", deserialize_with = "words::encoding")]
    pub encoding: InputEncoding,
    /// The purpose id of rows with no subscription id.
    pub default_purpose: String,
    /// `auto` (skip a first row starting with `email`), `true` or `false`
    /// (as booleans or as words).
    #[serde(default = "default_header", deserialize_with = "words::header")]
    pub header: HeaderMode,
    /// Adds `$disable_integrations=true` to every request (back-fills).
    #[serde(default)]
    pub disable_integrations: bool,
    /// Above this share of rejected rows the file is quarantined whole.
    #[serde(default = "default_max_reject_ratio")]
    pub max_reject_ratio: f64,
    /// `reject`, `default` or `passthrough`.
    #[serde(
        default = "default_unknown_subscription",
        deserialize_with = "words::unknown_subscription"
    )]
    pub unknown_subscription: UnknownSubscription,
    /// Attach the original line to each event as a text/csv proof.
    #[serde(default)]
    pub attach_row_proof: bool,
    /// Longest accepted row, in bytes.
    #[serde(default = "default_max_row_bytes")]
    pub max_row_bytes: usize,
    /// Most bytes a `.gz` or `.zip` drop may decompress to (it is also held
    /// to 1000 times its own size): above, it is a decompression bomb.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: u64,
    /// Fixed keys copied into every event's `user.metadata`.
    #[serde(default)]
    pub user_metadata: BTreeMap<String, String>,
    /// Subscription id → purpose id.
    #[serde(default)]
    pub subscriptions: BTreeMap<String, String>,
    /// The organization this import's events go to, overriding `[sink] organization_id`.
    pub organization_id: Option<String>,
}

fn default_settle_ms() -> u64 {
    2000
}
fn default_rescan_s() -> u64 {
    60
}
fn default_ignore() -> Vec<String> {
    vec![
        ".*".into(),
        "*.part".into(),
        "*.filepart".into(),
        "*.tmp".into(),
    ]
}
fn default_max_files_in_flight() -> usize {
    64
}
fn default_batch_size() -> usize {
    100
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout_s() -> u64 {
    30
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    60_000
}
fn default_auth_retry_s() -> u64 {
    60
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_separator() -> Separator {
    Separator::Semicolon
}
fn default_encoding() -> InputEncoding {
    InputEncoding::Utf8
}
fn default_header() -> HeaderMode {
    HeaderMode::Auto
}
fn default_max_reject_ratio() -> f64 {
    0.5
}
fn default_unknown_subscription() -> UnknownSubscription {
    UnknownSubscription::Reject
}
fn default_max_row_bytes() -> usize {
    DEFAULT_MAX_ROW_BYTES
}
fn default_max_decompressed_bytes() -> u64 {
    crate::unpack::DEFAULT_MAX_DECOMPRESSED_BYTES
}
