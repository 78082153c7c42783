//! config: the one TOML file, read once into types that cannot be wrong.
//!
//! Raw structs mirror the file (`deny_unknown_fields`, a doc comment on every
//! key: that comment is the reference); [`load`] checks them and builds the
//! validated [`Config`] (compiled regexes, parsed zones and date formats,
//! resolved paths). Nothing downstream re-validates. This module never reads
//! secrets or tokens: it only records where they live.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::parse::{
    DateFormat, HeaderMode, InputEncoding, PurposeMap, RowFormat, Separator, UnknownSubscription,
    DEFAULT_MAX_ROW_BYTES,
};

/// A configuration problem: the file, the key, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// The embedded default: the `file` sink and folders under `./var/`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../config/local.toml");

// ---------------------------------------------------------------- raw file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    watch: RawWatch,
    state: RawState,
    #[serde(default)]
    sink: Option<RawSink>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default, rename = "import")]
    imports: Vec<RawImport>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    /// The drop folder. Only its top level is watched; subfolders are ignored.
    dir: PathBuf,
    /// A file must be closed and unchanged this long before it is read.
    #[serde(default = "default_settle_ms")]
    settle_ms: u64,
    /// Seconds between full rescans, for events the watcher missed.
    #[serde(default = "default_rescan_s")]
    rescan_s: u64,
    /// Glob patterns (`*`, `?`) of names that are never opened.
    #[serde(default = "default_ignore")]
    ignore: Vec<String>,
    /// How many files are processed at once.
    #[serde(default = "default_max_files_in_flight")]
    max_files_in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    /// The journal, processing/, archive/ and failed/ live here.
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    /// `http` (the consents API) or `file` (NDJSON files in `dir`).
    kind: String,
    /// file sink: the folder the NDJSON files are written to.
    dir: Option<PathBuf>,
    /// http sink: the API's base URL, e.g. `https://api.example.com/v1`.
    base_url: Option<String>,
    /// http sink: the organization the events belong to.
    organization_id: Option<String>,
    /// http sink: the private API key; the secret comes from `secret_file` or `secret_env`.
    api_key: Option<String>,
    /// http sink: a file holding the API secret.
    secret_file: Option<PathBuf>,
    /// http sink: an environment variable holding the API secret.
    secret_env: Option<String>,
    /// http sink: a file holding a ready bearer token, re-read when it changes.
    token_file: Option<PathBuf>,
    /// http sink: an environment variable holding a ready bearer token.
    token_env: Option<String>,
    /// Events per batch, at most 100.
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    /// http sink: requests in flight at once.
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    /// http sink: seconds before a request times out.
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
    /// http sink: allow `http://` (only for a loopback test server).
    #[serde(default)]
    allow_insecure_http: bool,
    /// http sink: an upper bound on requests per second, all files together.
    max_requests_per_second: Option<f64>,
    /// http sink: send request bodies gzip-compressed (`Content-Encoding: gzip`).
    #[serde(default)]
    gzip: bool,
    /// http sink: the first retry delay, in milliseconds (doubles up to `retry_max_ms`).
    #[serde(default = "default_retry_initial_ms")]
    retry_initial_ms: u64,
    /// http sink: the longest retry delay, in milliseconds.
    #[serde(default = "default_retry_max_ms")]
    retry_max_ms: u64,
    /// http sink: seconds between probes while credentials are refused.
    #[serde(default = "default_auth_retry_s")]
    auth_retry_s: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    /// `host:port` of the Prometheus endpoint (and `/healthz`).
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImport {
    /// A unique name; part of every event id.
    name: String,
    /// Regex matched against the file name without its extension.
    pattern: String,
    /// One of the standard formats, a `dd MM yyyy HH mm ss` pattern, or strftime (`%`).
    date_format: String,
    /// IANA zone the dates are written in.
    #[serde(default = "default_timezone")]
    timezone: String,
    /// `;` `,` tab or space, or `semicolon` `comma` `tab` `space`.
    #[serde(default = "default_separator")]
    separator: String,
    /// `utf-8`, `windows-1252`, `iso-8859-1` or `auto`.
    #[serde(default = "default_encoding")]
    encoding: String,
    /// The purpose id of rows with no subscription id.
    default_purpose: String,
    /// `auto`, `true` or `false`.
    #[serde(default)]
    header: Option<toml::Value>,
    /// Adds `$disable_integrations=true` to every request (back-fills).
    #[serde(default)]
    disable_integrations: bool,
    /// Above this share of rejected rows the file is quarantined whole.
    #[serde(default = "default_max_reject_ratio")]
    max_reject_ratio: f64,
    /// `reject`, `default` or `passthrough`.
    #[serde(default = "default_unknown_subscription")]
    unknown_subscription: String,
    /// Attach the original line to each event as a text/csv proof.
    #[serde(default)]
    attach_row_proof: bool,
    /// Longest accepted row, in bytes.
    #[serde(default = "default_max_row_bytes")]
    max_row_bytes: usize,
    /// Fixed keys copied into every event's `user.metadata`.
    #[serde(default)]
    user_metadata: BTreeMap<String, String>,
    /// Subscription id → purpose id.
    #[serde(default)]
    subscriptions: BTreeMap<String, String>,
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
    4
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
fn default_separator() -> String {
    ";".into()
}
fn default_encoding() -> String {
    "utf-8".into()
}
fn default_max_reject_ratio() -> f64 {
    0.5
}
fn default_unknown_subscription() -> String {
    "reject".into()
}
fn default_max_row_bytes() -> usize {
    DEFAULT_MAX_ROW_BYTES
}

// ---------------------------------------------------------- checked config

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (`<embedded default>` for the default).
    pub source: String,
    pub watch: WatchSettings,
    pub state_dir: PathBuf,
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSinkSettings {
    pub dir: PathBuf,
    pub batch_size: usize,
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
    pub attach_row_proof: bool,
    pub user_metadata: BTreeMap<String, String>,
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
    match file_name.rfind('.') {
        Some(0) | None => file_name,
        Some(dot) => &file_name[..dot],
    }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        file: source.clone(),
        key: "-".into(),
        message: format!("cannot read: {err}"),
    })?;
    // Relative paths are relative to the working directory, as on a command line.
    parse_config(&text, &source, Path::new(""))
}

/// Validates config text; relative paths are resolved against `base`.
pub fn parse_config(text: &str, source: &str, base: &Path) -> Result<Config, ConfigError> {
    let fail = |key: &str, message: String| ConfigError {
        file: source.to_string(),
        key: key.to_string(),
        message,
    };
    let raw: RawConfig = toml::from_str(text).map_err(|err| {
        let key = err
            .span()
            .map(|span| key_at(text, span.start))
            .unwrap_or_else(|| "-".into());
        fail(&key, err.message().to_string())
    })?;

    let resolve = |path: &Path| -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }
    };

    if raw.watch.settle_ms == 0 {
        return Err(fail("watch.settle_ms", "must be at least 1".into()));
    }
    if raw.watch.rescan_s == 0 {
        return Err(fail("watch.rescan_s", "must be at least 1".into()));
    }
    if raw.watch.max_files_in_flight == 0 {
        return Err(fail(
            "watch.max_files_in_flight",
            "must be at least 1".into(),
        ));
    }
    let ignore = raw
        .watch
        .ignore
        .iter()
        .map(|glob| glob_to_regex(glob).map_err(|msg| fail("watch.ignore", msg)))
        .collect::<Result<Vec<_>, _>>()?;
    let watch = WatchSettings {
        dir: resolve(&raw.watch.dir),
        settle: Duration::from_millis(raw.watch.settle_ms),
        rescan: Duration::from_secs(raw.watch.rescan_s),
        ignore,
        max_files_in_flight: raw.watch.max_files_in_flight,
    };
    let state_dir = resolve(&raw.state.dir);
    if state_dir.starts_with(&watch.dir) || watch.dir.starts_with(&state_dir) {
        return Err(fail(
            "state.dir",
            "must not be inside the drop folder, nor contain it".into(),
        ));
    }

    let sink = match raw.sink {
        None => return Err(fail("sink", "missing: add a [sink] table".into())),
        Some(sink) => check_sink(sink, &resolve, &fail)?,
    };

    if raw.imports.is_empty() {
        return Err(fail("import", "no [[import]] is defined".into()));
    }
    let mut imports: Vec<Arc<Import>> = Vec::new();
    for (index, raw_import) in raw.imports.into_iter().enumerate() {
        let import = check_import(raw_import, index, &fail)?;
        if imports.iter().any(|other| other.name == import.name) {
            return Err(fail(
                &format!("import[{index}].name"),
                format!("{:?} is used by two imports", import.name),
            ));
        }
        imports.push(Arc::new(import));
    }

    if let Some(metrics) = &raw.metrics {
        if metrics.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(fail(
                "metrics.listen",
                format!(
                    "{:?} is not host:port (e.g. 127.0.0.1:9187)",
                    metrics.listen
                ),
            ));
        }
    }

    Ok(Config {
        source: source.to_string(),
        watch,
        state_dir,
        sink,
        metrics_listen: raw.metrics.map(|metrics| metrics.listen),
        imports,
    })
}

fn check_sink(
    raw: RawSink,
    resolve: &dyn Fn(&Path) -> PathBuf,
    fail: &dyn Fn(&str, String) -> ConfigError,
) -> Result<SinkSettings, ConfigError> {
    if raw.batch_size == 0 || raw.batch_size > 100 {
        return Err(fail(
            "sink.batch_size",
            format!(
                "{} is not between 1 and 100 (the API's limit)",
                raw.batch_size
            ),
        ));
    }
    let http_only: [(&str, bool); 9] = [
        ("base_url", raw.base_url.is_some()),
        ("organization_id", raw.organization_id.is_some()),
        ("api_key", raw.api_key.is_some()),
        ("secret_file", raw.secret_file.is_some()),
        ("secret_env", raw.secret_env.is_some()),
        ("token_file", raw.token_file.is_some()),
        ("token_env", raw.token_env.is_some()),
        (
            "max_requests_per_second",
            raw.max_requests_per_second.is_some(),
        ),
        ("gzip", raw.gzip),
    ];
    match raw.kind.as_str() {
        "file" => {
            if let Some((key, _)) = http_only.iter().find(|(_, set)| *set) {
                return Err(fail(
                    &format!("sink.{key}"),
                    "only applies to kind = \"http\"".into(),
                ));
            }
            let dir = raw
                .dir
                .ok_or_else(|| fail("sink.dir", "missing: the file sink needs a folder".into()))?;
            Ok(SinkSettings::File(FileSinkSettings {
                dir: resolve(&dir),
                batch_size: raw.batch_size,
            }))
        }
        "http" => {
            if raw.dir.is_some() {
                return Err(fail("sink.dir", "only applies to kind = \"file\"".into()));
            }
            let credentials = check_credentials(&raw, resolve, fail)?;
            let base_url = raw
                .base_url
                .ok_or_else(|| fail("sink.base_url", "missing".into()))?;
            let base_url = base_url.trim_end_matches('/').to_string();
            let scheme_ok = base_url.starts_with("https://")
                || (raw.allow_insecure_http && base_url.starts_with("http://"));
            if !scheme_ok {
                return Err(fail(
                    "sink.base_url",
                    format!("{base_url:?} must start with https:// (http:// only with allow_insecure_http = true)"),
                ));
            }
            let organization_id = raw
                .organization_id
                .filter(|org| !org.trim().is_empty())
                .ok_or_else(|| fail("sink.organization_id", "missing".into()))?;
            if raw.concurrency == 0 || raw.concurrency > 64 {
                return Err(fail(
                    "sink.concurrency",
                    format!("{} is not between 1 and 64", raw.concurrency),
                ));
            }
            if raw.timeout_s == 0 {
                return Err(fail("sink.timeout_s", "must be at least 1".into()));
            }
            if let Some(rate) = raw.max_requests_per_second {
                if !(rate > 0.0 && rate.is_finite()) {
                    return Err(fail(
                        "sink.max_requests_per_second",
                        "must be a positive number".into(),
                    ));
                }
            }
            if raw.retry_initial_ms == 0 || raw.retry_max_ms < raw.retry_initial_ms {
                return Err(fail(
                    "sink.retry_max_ms",
                    "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms"
                        .into(),
                ));
            }
            if raw.auth_retry_s == 0 {
                return Err(fail("sink.auth_retry_s", "must be at least 1".into()));
            }
            Ok(SinkSettings::Http(HttpSinkSettings {
                base_url,
                organization_id,
                credentials,
                batch_size: raw.batch_size,
                concurrency: raw.concurrency,
                timeout: Duration::from_secs(raw.timeout_s),
                allow_insecure_http: raw.allow_insecure_http,
                max_requests_per_second: raw.max_requests_per_second,
                gzip: raw.gzip,
                retry_initial: Duration::from_millis(raw.retry_initial_ms),
                retry_max: Duration::from_millis(raw.retry_max_ms),
                auth_retry: Duration::from_secs(raw.auth_retry_s),
            }))
        }
        other => Err(fail(
            "sink.kind",
            format!("{other:?} is not \"http\" or \"file\""),
        )),
    }
}

fn check_credentials(
    raw: &RawSink,
    resolve: &dyn Fn(&Path) -> PathBuf,
    fail: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Credentials, ConfigError> {
    let ways: Vec<&str> = [
        ("api_key", raw.api_key.is_some()),
        ("token_file", raw.token_file.is_some()),
        ("token_env", raw.token_env.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| *key)
    .collect();
    match ways.as_slice() {
        [] => Err(fail(
            "sink.api_key",
            "missing: set api_key with secret_file or secret_env, or a ready token in token_file or token_env".into(),
        )),
        [_] => {
            if let Some(key) = &raw.api_key {
                let secret = match (&raw.secret_file, &raw.secret_env) {
                    (Some(file), None) => SecretSource::File(resolve(file)),
                    (None, Some(var)) => SecretSource::Env(var.clone()),
                    (Some(_), Some(_)) => {
                        return Err(fail(
                            "sink.secret_file",
                            "conflicts with sink.secret_env: set only one".into(),
                        ))
                    }
                    (None, None) => {
                        return Err(fail(
                            "sink.secret_file",
                            "missing: api_key needs secret_file or secret_env".into(),
                        ))
                    }
                };
                if key.trim().is_empty() {
                    return Err(fail("sink.api_key", "is empty".into()));
                }
                return Ok(Credentials::ApiKey {
                    key: key.clone(),
                    secret,
                });
            }
            for (key, set) in [
                ("secret_file", raw.secret_file.is_some()),
                ("secret_env", raw.secret_env.is_some()),
            ] {
                if set {
                    return Err(fail(
                        &format!("sink.{key}"),
                        "only applies with api_key".into(),
                    ));
                }
            }
            if let Some(file) = &raw.token_file {
                return Ok(Credentials::TokenFile(resolve(file)));
            }
            match &raw.token_env {
                Some(var) => Ok(Credentials::TokenEnv(var.clone())),
                None => Err(fail("sink.token_env", "missing".into())),
            }
        }
        many => Err(fail(
            &format!("sink.{}", many[0]),
            format!(
                "conflicts with {}: configure exactly one of api_key, token_file, token_env",
                many[1..]
                    .iter()
                    .map(|key| format!("sink.{key}"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

fn check_import(
    raw: RawImport,
    index: usize,
    fail: &dyn Fn(&str, String) -> ConfigError,
) -> Result<Import, ConfigError> {
    let key = |field: &str| format!("import[{index}].{field}");
    let name = raw.name.trim().to_string();
    if name.is_empty() {
        return Err(fail(&key("name"), "is empty".into()));
    }
    if name.chars().any(|c| c.is_control() || c == '/') {
        return Err(fail(
            &key("name"),
            "must not contain control characters or '/'".into(),
        ));
    }
    let key = |field: &str| format!("import[{index}] ({name}).{field}");
    let pattern = Regex::new(&raw.pattern)
        .map_err(|err| fail(&key("pattern"), format!("not a valid regex: {err}")))?;
    let date_format =
        DateFormat::new(&raw.date_format).map_err(|msg| fail(&key("date_format"), msg))?;
    let timezone: chrono_tz::Tz = raw.timezone.parse().map_err(|_| {
        fail(
            &key("timezone"),
            format!(
                "{:?} is not an IANA time zone (e.g. Europe/Paris)",
                raw.timezone
            ),
        )
    })?;
    let separator = Separator::from_config(&raw.separator).ok_or_else(|| {
        fail(
            &key("separator"),
            format!(
                "{:?} is not one of ';' ',' tab ' ' or semicolon, comma, tab, space",
                raw.separator
            ),
        )
    })?;
    let encoding = InputEncoding::from_config(&raw.encoding).ok_or_else(|| {
        fail(
            &key("encoding"),
            format!(
                "{:?} is not utf-8, windows-1252, iso-8859-1 or auto",
                raw.encoding
            ),
        )
    })?;
    let header = match &raw.header {
        None => HeaderMode::Auto,
        Some(toml::Value::Boolean(true)) => HeaderMode::Present,
        Some(toml::Value::Boolean(false)) => HeaderMode::Absent,
        Some(toml::Value::String(text)) => match text.as_str() {
            "auto" => HeaderMode::Auto,
            "true" => HeaderMode::Present,
            "false" => HeaderMode::Absent,
            _ => {
                return Err(fail(
                    &key("header"),
                    format!("{text:?} is not auto, true or false"),
                ))
            }
        },
        Some(other) => {
            return Err(fail(
                &key("header"),
                format!("{other} is not auto, true or false"),
            ))
        }
    };
    let unknown = match raw.unknown_subscription.as_str() {
        "reject" => UnknownSubscription::Reject,
        "default" => UnknownSubscription::Default,
        "passthrough" => UnknownSubscription::Passthrough,
        other => {
            return Err(fail(
                &key("unknown_subscription"),
                format!("{other:?} is not reject, default or passthrough"),
            ))
        }
    };
    if raw.default_purpose.trim().is_empty() {
        return Err(fail(&key("default_purpose"), "is empty".into()));
    }
    if !(0.0..=1.0).contains(&raw.max_reject_ratio) {
        return Err(fail(
            &key("max_reject_ratio"),
            format!("{} is not between 0 and 1", raw.max_reject_ratio),
        ));
    }
    if raw.max_row_bytes < 64 || raw.max_row_bytes > 16 * 1024 * 1024 {
        return Err(fail(
            &key("max_row_bytes"),
            format!("{} is not between 64 and 16777216", raw.max_row_bytes),
        ));
    }
    let mut subscriptions = HashMap::new();
    for (id, purpose) in &raw.subscriptions {
        let number: u64 = id.trim().parse().map_err(|_| {
            fail(
                &key(&format!("subscriptions.{id}")),
                "a subscription id must be a number".into(),
            )
        })?;
        if purpose.trim().is_empty() {
            return Err(fail(
                &key(&format!("subscriptions.{id}")),
                "the purpose id is empty".into(),
            ));
        }
        subscriptions.insert(number, purpose.clone());
    }
    Ok(Import {
        name: name.clone(),
        pattern,
        format: RowFormat {
            date_format,
            timezone,
            separator,
            encoding,
            header,
            max_row_bytes: raw.max_row_bytes,
            purposes: PurposeMap {
                default_purpose: raw.default_purpose,
                subscriptions,
                unknown,
            },
        },
        disable_integrations: raw.disable_integrations,
        max_reject_ratio: raw.max_reject_ratio,
        attach_row_proof: raw.attach_row_proof,
        user_metadata: raw.user_metadata,
    })
}

/// `*` and `?` globs, matched against the whole name.
fn glob_to_regex(glob: &str) -> Result<Regex, String> {
    let mut pattern = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => pattern.push_str(".*"),
            '?' => pattern.push('.'),
            other => pattern.push_str(&regex::escape(&other.to_string())),
        }
    }
    pattern.push('$');
    Regex::new(&pattern).map_err(|err| format!("{glob:?} is not a valid pattern: {err}"))
}

/// Best effort: the dotted key around a byte offset of a TOML parse error.
fn key_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let line = text[line_start..line_end].trim();
    let table = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').to_string());
    let key = line
        .split('=')
        .next()
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    match (table, key) {
        (Some(table), Some(key)) => format!("{table}.{key}"),
        (None, Some(key)) => key.to_string(),
        (Some(table), None) => table,
        (None, None) => format!("line {}", before.lines().count().max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[watch]
dir = "drop"
[state]
dir = "state"
[sink]
kind = "file"
dir = "out"
[[import]]
name = "news"
pattern = "^pr-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
default_purpose = "email_global"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_config(text, "test.toml", Path::new("/etc/cd"))
    }

    #[test]
    fn minimal_config_loads_with_defaults_and_resolved_paths() {
        let config = parse(MINIMAL).expect("valid");
        assert_eq!(config.watch.dir, PathBuf::from("/etc/cd/drop"));
        assert_eq!(config.watch.settle, Duration::from_millis(2000));
        assert!(config.watch.is_ignored(".hidden.csv"));
        assert!(config.watch.is_ignored("a.csv.filepart"));
        assert!(!config.watch.is_ignored("a.csv"));
        assert_eq!(config.sink.batch_size(), 100);
        let import = &config.imports[0];
        assert_eq!(import.format.separator, Separator::Semicolon);
        assert_eq!(import.format.header, HeaderMode::Auto);
        assert_eq!(import.max_reject_ratio, 0.5);
    }

    #[test]
    fn unknown_key_is_named() {
        let text = MINIMAL
            .replace("settle_ms", "x")
            .replace("[watch]", "[watch]\nsettle_msec = 3");
        let err = parse(&text).expect_err("unknown key");
        assert!(err.to_string().contains("settle_msec"), "{err}");
        assert!(err.to_string().contains("test.toml"), "{err}");
    }

    #[test]
    fn batch_size_over_api_limit_is_refused() {
        let text = MINIMAL.replace("dir = \"out\"", "dir = \"out\"\nbatch_size = 101");
        let err = parse(&text).expect_err("too big");
        assert_eq!(err.key, "sink.batch_size");
    }

    #[test]
    fn bad_timezone_and_separator_name_their_key() {
        let text = MINIMAL.replace(
            "default_purpose",
            "timezone = \"Mars/Olympus\"\ndefault_purpose",
        );
        assert!(parse(&text).expect_err("tz").key.ends_with(".timezone"));
        let text = MINIMAL.replace("default_purpose", "separator = \"|\"\ndefault_purpose");
        assert!(parse(&text).expect_err("sep").key.ends_with(".separator"));
    }

    #[test]
    fn http_sink_needs_exactly_one_credential() {
        let http = |extra: &str| {
            MINIMAL.replace(
                "kind = \"file\"\ndir = \"out\"",
                &format!("kind = \"http\"\nbase_url = \"https://api.test/v1/\"\norganization_id = \"org\"\n{extra}"),
            )
        };
        let err = parse(&http("")).expect_err("none");
        assert_eq!(err.key, "sink.api_key");
        let err = parse(&http("token_file = \"t\"\ntoken_env = \"T\"")).expect_err("two");
        assert!(err.message.contains("token_env"), "{err}");
        let err = parse(&http("api_key = \"k\"")).expect_err("no secret");
        assert_eq!(err.key, "sink.secret_file");
        let config = parse(&http("api_key = \"k\"\nsecret_env = \"S\"")).expect("valid");
        match config.sink {
            SinkSettings::Http(http) => {
                assert_eq!(http.base_url, "https://api.test/v1");
                assert_eq!(
                    http.credentials,
                    Credentials::ApiKey {
                        key: "k".into(),
                        secret: SecretSource::Env("S".into())
                    }
                );
            }
            other => panic!("not http: {other:?}"),
        }
    }

    #[test]
    fn plain_http_needs_allow_insecure_http() {
        let text = MINIMAL.replace(
            "kind = \"file\"\ndir = \"out\"",
            "kind = \"http\"\nbase_url = \"http://127.0.0.1:1\"\norganization_id = \"o\"\ntoken_env = \"T\"",
        );
        assert_eq!(parse(&text).expect_err("http").key, "sink.base_url");
        let text = text.replace("token_env", "allow_insecure_http = true\ntoken_env");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn gzip_is_off_unless_asked_and_only_for_http() {
        let http = MINIMAL.replace(
            "kind = \"file\"\ndir = \"out\"",
            "kind = \"http\"\nbase_url = \"https://api.test\"\norganization_id = \"o\"\ntoken_env = \"T\"",
        );
        let gzip_of = |text: &str| match parse(text).expect("valid").sink {
            SinkSettings::Http(http) => http.gzip,
            other => panic!("not http: {other:?}"),
        };
        assert!(!gzip_of(&http));
        assert!(gzip_of(
            &http.replace("token_env", "gzip = true\ntoken_env")
        ));
        let file = MINIMAL.replace("dir = \"out\"", "dir = \"out\"\ngzip = true");
        assert_eq!(parse(&file).expect_err("file sink").key, "sink.gzip");
    }

    #[test]
    fn import_matching_uses_stem_and_reports_ambiguity() {
        let text = format!(
            "{MINIMAL}\n[[import]]\nname = \"other\"\npattern = \"consent\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\ndefault_purpose = \"p\"\n"
        );
        let config = parse(&text).expect("valid");
        assert!(matches!(config.import_for("pr-1.csv"), ImportMatch::One(i) if i.name == "news"));
        assert!(matches!(config.import_for("x.csv"), ImportMatch::None));
        match config.import_for("pr-consent.csv") {
            ImportMatch::Ambiguous(names) => assert_eq!(names, vec!["news", "other"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_never_shows_in_debug() {
        let secret = Secret::new("hunter2".into());
        assert_eq!(format!("{secret:?} {secret}"), "**** ****");
    }

    #[test]
    fn embedded_default_is_valid() {
        parse_config(EMBEDDED_DEFAULT, "<embedded>", Path::new(".")).expect("valid default");
    }
}
