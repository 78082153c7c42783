//! config::settings: the validated configuration everything downstream reads.
//!
//! These types cannot hold a wrong value: [`super::check`] is the only place
//! that builds them, from the raw file. Lookups on a built config (which
//! import a file name belongs to, `check`'s warnings) live here too. Nothing
//! here reads the file, the environment or a secret's value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use crate::parse::RowFormat;

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`<embedded default>` for the default).
    pub source: String,
    pub watch: WatchSettings,
    pub state_dir: PathBuf,
    /// `[state] archive_days`: how many days `archive/` keeps; `None`: forever.
    pub archive_days: Option<u32>,
    pub sink: SinkSettings,
    pub metrics_listen: Option<String>,
    pub imports: Vec<Arc<Import>>,
}

#[derive(Debug, Clone)]
pub struct WatchSettings {
    pub dir: PathBuf,
    pub settle: Duration,
    pub rescan: Duration,
    pub ignore: Vec<Regex>,
    pub max_files_in_flight: usize,
}

impl WatchSettings {
    pub fn is_ignored(&self, name: &str) -> bool {
        self.ignore.iter().any(|glob| glob.is_match(name))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkSettings {
    File(FileSinkSettings),
    Http(HttpSinkSettings),
}

impl SinkSettings {
    pub fn batch_size(&self) -> usize {
        match self {
            SinkSettings::File(file) => file.batch_size,
            SinkSettings::Http(http) => http.batch_size,
        }
    }

    /// `[sink] organization_id` (always set for the http sink).
    pub fn organization_id(&self) -> Option<&str> {
        match self {
            SinkSettings::File(file) => file.organization_id.as_deref(),
            SinkSettings::Http(http) => Some(&http.organization_id),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkSettings {
    pub dir: PathBuf,
    pub batch_size: usize,
    /// Written into the events when set.
    pub organization_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpSinkSettings {
    /// Without a trailing slash.
    pub base_url: String,
    pub organization_id: String,
    pub credentials: Credentials,
    pub batch_size: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub allow_insecure_http: bool,
    pub max_requests_per_second: Option<f64>,
    pub gzip: bool,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub auth_retry: Duration,
}

/// Where the bearer token comes from. Never the secret itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    ApiKey { key: String, secret: SecretSource },
    TokenFile(PathBuf),
    TokenEnv(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// A secret read at run time; `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// One `[[import]]`: which files it takes and how they are read and mapped.
#[derive(Debug, Clone)]
pub struct Import {
    pub name: String,
    pub pattern: Regex,
    pub format: RowFormat,
    pub disable_integrations: bool,
    pub max_reject_ratio: f64,
    /// Most bytes a `.gz` / `.zip` drop may decompress to.
    pub max_decompressed_bytes: u64,
    pub attach_row_proof: bool,
    pub user_metadata: BTreeMap<String, String>,
    /// `organization_id` as the import names it (overrides the sink's).
    pub organization_id: Option<String>,
    /// Its own organization, else the sink's: see [`Import::organization`].
    pub(super) effective_organization: Option<String>,
}

impl Import {
    /// The organization this import's events belong to: its own
    /// `organization_id`, else the sink's. None only with a file sink that
    /// names no organization. Events of different organizations never share
    /// a request.
    pub fn organization(&self) -> Option<&str> {
        self.effective_organization.as_deref()
    }
}

/// Which import a file name belongs to.
#[derive(Debug)]
pub enum ImportMatch<'c> {
    One(&'c Arc<Import>),
    None,
    /// Two or more patterns match: never guessed at.
    Ambiguous(Vec<&'c str>),
}

impl Config {
    /// Matches a file name (with its extension) against the import patterns,
    /// which see the name without its extension.
    pub fn import_for(&self, file_name: &str) -> ImportMatch<'_> {
        let stem = file_stem(file_name);
        let matching: Vec<&Arc<Import>> = self
            .imports
            .iter()
            .filter(|import| import.pattern.is_match(stem))
            .collect();
        match matching.as_slice() {
            [] => ImportMatch::None,
            [one] => ImportMatch::One(one),
            many => ImportMatch::Ambiguous(many.iter().map(|i| i.name.as_str()).collect()),
        }
    }

    pub fn import_named(&self, name: &str) -> Option<&Arc<Import>> {
        self.imports.iter().find(|import| import.name == name)
    }

    /// Non-fatal remarks for `check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if matches!(self.sink, SinkSettings::Http(_)) {
            for import in &self.imports {
                if import.attach_row_proof {
                    warnings.push(format!(
                        "import {:?}: attach_row_proof sends text/csv proofs, which the consents API refuses (it takes PDF, PNG, JPG, GIF, DOCX, DOC and MSG only)",
                        import.name
                    ));
                }
            }
        }
        warnings
    }
}

/// The name without its last extension (`a.b.csv` → `a.b`); a leading dot is not an extension.
pub fn file_stem(file_name: &str) -> &str {
    // A compressed drop is matched by the name of what it holds.
    let file_name = crate::unpack::Packing::strip(file_name);
    match file_name.rfind('.') {
        Some(0) | None => file_name,
        Some(dot) => &file_name[..dot],
    }
}
