//! config::check: the one step from the raw file to a validated [`Config`].
//!
//! Everything serde cannot say lives here: ranges, rules that span fields
//! (exactly one credential, a state folder apart from the drop folder, unique
//! import names), and compiling regexes, zones and date formats. Every refusal
//! names the exact key path (`import[1].timezone`). This module never reads
//! files or the environment: paths are only resolved, secrets only located.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::raw::{RawConfig, RawFileSink, RawHttpSink, RawImport, RawSink, RawWatch};
use super::settings::{
    Config, Credentials, FileSinkSettings, HttpSinkSettings, Import, SecretSource, SinkSettings,
    WatchSettings,
};
use super::ConfigError;
use crate::parse::{DateFormat, PurposeMap, RowFormat};

/// Builds refusals for one file; resolves relative paths against `base`.
pub(super) struct Checker<'a> {
    pub source: &'a str,
    pub base: &'a Path,
}

impl Checker<'_> {
    fn fail(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.source.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    pub fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let watch = self.watch(&raw.watch)?;
        let state_dir = self.resolve(&raw.state.dir);
        if state_dir.starts_with(&watch.dir) || watch.dir.starts_with(&state_dir) {
            return Err(self.fail(
                "state.dir",
                "must not be inside the drop folder, nor contain it",
            ));
        }
        if raw.state.archive_days == Some(0) {
            return Err(self.fail(
                "state.archive_days",
                "must be at least 1 (leave it out to keep the archive forever)",
            ));
        }
        let sink = match raw.sink {
            None => return Err(self.fail("sink", "missing: add a [sink] table")),
            Some(RawSink::File(file)) => self.file_sink(file)?,
            Some(RawSink::Http(http)) => self.http_sink(*http)?,
        };
        if raw.imports.is_empty() {
            return Err(self.fail("import", "no [[import]] is defined"));
        }
        let mut imports: Vec<Arc<Import>> = Vec::new();
        for (index, raw_import) in raw.imports.into_iter().enumerate() {
            let mut import = self.import(raw_import, index)?;
            import.effective_organization = import
                .organization_id
                .clone()
                .or_else(|| sink.organization_id().map(str::to_string));
            if imports.iter().any(|other| other.name == import.name) {
                return Err(self.fail(
                    &format!("import[{index}].name"),
                    format!("{:?} is used by two imports", import.name),
                ));
            }
            imports.push(Arc::new(import));
        }
        if let Some(metrics) = &raw.metrics {
            if metrics.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(self.fail(
                    "metrics.listen",
                    format!(
                        "{:?} is not host:port (e.g. 127.0.0.1:9187)",
                        metrics.listen
                    ),
                ));
            }
        }
        Ok(Config {
            source: self.source.to_string(),
            watch,
            state_dir,
            archive_days: raw.state.archive_days,
            sink,
            metrics_listen: raw.metrics.map(|metrics| metrics.listen),
            imports,
        })
    }

    fn watch(&self, raw: &RawWatch) -> Result<WatchSettings, ConfigError> {
        for (key, value) in [
            ("watch.settle_ms", raw.settle_ms),
            ("watch.rescan_s", raw.rescan_s),
            ("watch.max_files_in_flight", raw.max_files_in_flight as u64),
        ] {
            if value == 0 {
                return Err(self.fail(key, "must be at least 1"));
            }
        }
        let ignore = raw
            .ignore
            .iter()
            .enumerate()
            .map(|(index, glob)| {
                glob_to_regex(glob).map_err(|msg| self.fail(&format!("watch.ignore[{index}]"), msg))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WatchSettings {
            dir: self.resolve(&raw.dir),
            settle: Duration::from_millis(raw.settle_ms),
            rescan: Duration::from_secs(raw.rescan_s),
            ignore,
            max_files_in_flight: raw.max_files_in_flight,
        })
    }

    fn batch_size(&self, batch_size: usize) -> Result<usize, ConfigError> {
        if batch_size == 0 || batch_size > 100 {
            return Err(self.fail(
                "sink.batch_size",
                format!("{batch_size} is not between 1 and 100 (the API's limit)"),
            ));
        }
        Ok(batch_size)
    }

    fn file_sink(&self, raw: RawFileSink) -> Result<SinkSettings, ConfigError> {
        if raw
            .organization_id
            .as_ref()
            .is_some_and(|org| org.trim().is_empty())
        {
            return Err(self.fail("sink.organization_id", "is empty"));
        }
        Ok(SinkSettings::File(FileSinkSettings {
            dir: self.resolve(&raw.dir),
            batch_size: self.batch_size(raw.batch_size)?,
            organization_id: raw.organization_id,
        }))
    }

    fn http_sink(&self, raw: RawHttpSink) -> Result<SinkSettings, ConfigError> {
        let batch_size = self.batch_size(raw.batch_size)?;
        let credentials = self.credentials(&raw)?;
        let base_url = raw.base_url.trim_end_matches('/').to_string();
        let scheme_ok = base_url.starts_with("https://")
            || (raw.allow_insecure_http && base_url.starts_with("http://"));
        if !scheme_ok {
            return Err(self.fail(
                "sink.base_url",
                format!("{base_url:?} must start with https:// (http:// only with allow_insecure_http = true)"),
            ));
        }
        if raw.organization_id.trim().is_empty() {
            return Err(self.fail("sink.organization_id", "is empty"));
        }
        if raw.concurrency == 0 || raw.concurrency > 64 {
            return Err(self.fail(
                "sink.concurrency",
                format!("{} is not between 1 and 64", raw.concurrency),
            ));
        }
        if raw.timeout_s == 0 {
            return Err(self.fail("sink.timeout_s", "must be at least 1"));
        }
        if let Some(rate) = raw.max_requests_per_second {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(self.fail("sink.max_requests_per_second", "must be a positive number"));
            }
        }
        if raw.retry_initial_ms == 0 || raw.retry_max_ms < raw.retry_initial_ms {
            return Err(self.fail(
                "sink.retry_max_ms",
                "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
            ));
        }
        if raw.auth_retry_s == 0 {
            return Err(self.fail("sink.auth_retry_s", "must be at least 1"));
        }
        Ok(SinkSettings::Http(HttpSinkSettings {
            base_url,
            organization_id: raw.organization_id,
            credentials,
            batch_size,
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

    /// Exactly one of `api_key` (with one secret source), `token_file`, `token_env`.
    fn credentials(&self, raw: &RawHttpSink) -> Result<Credentials, ConfigError> {
        let ways: Vec<&str> = [
            ("api_key", raw.api_key.is_some()),
            ("token_file", raw.token_file.is_some()),
            ("token_env", raw.token_env.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| *key)
        .collect();
        if let [first, others @ ..] = ways.as_slice() {
            if !others.is_empty() {
                let others: Vec<String> = others.iter().map(|key| format!("sink.{key}")).collect();
                return Err(self.fail(
                    &format!("sink.{first}"),
                    format!(
                        "conflicts with {}: configure exactly one of api_key, token_file, token_env",
                        others.join(" and ")
                    ),
                ));
            }
        }
        if let Some(key) = &raw.api_key {
            let secret = match (&raw.secret_file, &raw.secret_env) {
                (Some(file), None) => SecretSource::File(self.resolve(file)),
                (None, Some(var)) => SecretSource::Env(var.clone()),
                (Some(_), Some(_)) => {
                    return Err(self.fail(
                        "sink.secret_file",
                        "conflicts with sink.secret_env: set only one",
                    ))
                }
                (None, None) => {
                    return Err(self.fail(
                        "sink.secret_file",
                        "missing: api_key needs secret_file or secret_env",
                    ))
                }
            };
            if key.trim().is_empty() {
                return Err(self.fail("sink.api_key", "is empty"));
            }
            return Ok(Credentials::ApiKey {
                key: key.clone(),
                secret,
            });
        }
        if ways.is_empty() {
            return Err(self.fail(
                "sink.api_key",
                "missing: set api_key with secret_file or secret_env, or a ready token in token_file or token_env",
            ));
        }
        for (key, set) in [
            ("sink.secret_file", raw.secret_file.is_some()),
            ("sink.secret_env", raw.secret_env.is_some()),
        ] {
            if set {
                return Err(self.fail(key, "only applies with api_key"));
            }
        }
        match (&raw.token_file, &raw.token_env) {
            (Some(file), _) => Ok(Credentials::TokenFile(self.resolve(file))),
            (None, Some(var)) => Ok(Credentials::TokenEnv(var.clone())),
            (None, None) => Err(self.fail("sink.token_env", "missing")),
        }
    }

    fn import(&self, raw: RawImport, index: usize) -> Result<Import, ConfigError> {
        let name = raw.name.trim().to_string();
        let fail = |field: &str, message: String| {
            let message = if name.is_empty() {
                message
            } else {
                format!("{message} (import {name:?})")
            };
            self.fail(&format!("import[{index}].{field}"), message)
        };
        if name.is_empty() {
            return Err(fail("name", "is empty".into()));
        }
        if name.chars().any(|c| c.is_control() || c == '/') {
            return Err(fail(
                "name",
                "must not contain control characters or '/'".into(),
            ));
        }
        let pattern = Regex::new(&raw.pattern)
            .map_err(|err| fail("pattern", format!("not a valid regex: {err}")))?;
        let date_format =
            DateFormat::new(&raw.date_format).map_err(|msg| fail("date_format", msg))?;
        let timezone: chrono_tz::Tz = raw.timezone.parse().map_err(|_| {
            fail(
                "timezone",
                format!(
                    "{:?} is not an IANA time zone (e.g. Europe/Paris)",
                    raw.timezone
                ),
            )
        })?;
        if raw.default_purpose.trim().is_empty() {
            return Err(fail("default_purpose", "is empty".into()));
        }
        limits(&raw, &fail)?;
        let subscriptions = subscriptions(&raw.subscriptions, &fail)?;
        if raw
            .organization_id
            .as_ref()
            .is_some_and(|org| org.trim().is_empty())
        {
            return Err(fail("organization_id", "is empty".into()));
        }
        Ok(Import {
            name: name.clone(),
            pattern,
            format: RowFormat {
                date_format,
                timezone,
                separator: raw.separator,
                encoding: raw.encoding,
                header: raw.header,
                max_row_bytes: raw.max_row_bytes,
                purposes: PurposeMap {
                    default_purpose: raw.default_purpose,
                    subscriptions,
                    unknown: raw.unknown_subscription,
                },
            },
            disable_integrations: raw.disable_integrations,
            max_reject_ratio: raw.max_reject_ratio,
            max_decompressed_bytes: raw.max_decompressed_bytes,
            attach_row_proof: raw.attach_row_proof,
            user_metadata: raw.user_metadata,
            organization_id: raw.organization_id,
            effective_organization: None,
        })
    }
}

/// The numeric bounds of one `[[import]]`.
fn limits(raw: &RawImport, fail: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
    if !(0.0..=1.0).contains(&raw.max_reject_ratio) {
        return Err(fail(
            "max_reject_ratio",
            format!("{} is not between 0 and 1", raw.max_reject_ratio),
        ));
    }
    if raw.max_row_bytes < 64 || raw.max_row_bytes > 16 * 1024 * 1024 {
        return Err(fail(
            "max_row_bytes",
            format!("{} is not between 64 and 16777216", raw.max_row_bytes),
        ));
    }
    if raw.max_decompressed_bytes == 0 {
        return Err(fail("max_decompressed_bytes", "must be at least 1".into()));
    }
    Ok(())
}

/// `[import.subscriptions]`: numeric subscription ids to non-empty purpose ids.
fn subscriptions(
    table: &BTreeMap<String, String>,
    fail: &dyn Fn(&str, String) -> ConfigError,
) -> Result<HashMap<u64, String>, ConfigError> {
    let mut subscriptions = HashMap::new();
    for (id, purpose) in table {
        let key = format!("subscriptions.{id}");
        let number: u64 = id
            .trim()
            .parse()
            .map_err(|_| fail(&key, "a subscription id must be a number".into()))?;
        if purpose.trim().is_empty() {
            return Err(fail(&key, "the purpose id is empty".into()));
        }
        subscriptions.insert(number, purpose.clone());
    }
    Ok(subscriptions)
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
