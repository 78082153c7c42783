//! config: the one TOML file, read once into types that cannot be wrong.
//!
//! Three steps, one module each: [`raw`] is the file's shape as serde reads
//! it (`deny_unknown_fields`, a doc comment on every key: that comment is the
//! reference; the sink an enum tagged by `kind`, word-valued keys as enums
//! via [`words`]); [`check`] is the single step that judges values and rules
//! spanning fields and builds the validated [`Config`] of [`settings`]
//! (compiled regexes, parsed zones and date formats, resolved paths). Nothing
//! downstream re-validates. Every refusal is a [`ConfigError`] naming the
//! file, the exact key path (`import[1].date_format`, as serde_path_to_error
//! tracks it) and the problem. This module never reads secrets or tokens: it
//! only records where they live.

mod check;
mod raw;
mod settings;
mod words;

use std::path::Path;

use serde::Deserialize;

pub use settings::{
    file_stem, Config, Credentials, FileSinkSettings, HttpSinkSettings, Import, ImportMatch,
    Secret, SecretSource, SinkSettings, WatchSettings,
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
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/local.toml");

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
    let raw: raw::RawConfig = read(text, source, true)?;
    check::Checker { source, base }.config(raw)
}

/// Deserializes `text` into `T`, naming the exact key path of any failure.
/// With `locate_sink`, a failure inside `[sink]` is located by reading it again.
fn read<T: for<'de> Deserialize<'de>>(
    text: &str,
    source: &str,
    locate_sink: bool,
) -> Result<T, ConfigError> {
    let result = serde_path_to_error::deserialize(toml::Deserializer::new(text));
    result.map_err(|err| {
        let path = err.path().to_string();
        let err = err.into_inner();
        let message = err.message().to_string();
        let key = match path.as_str() {
            // Nothing was being read: a syntax error, located by its line.
            "." if err.span().is_some() && !is_field_message(&message) => err
                .span()
                .map(|span| format!("line {}", line_of(text, span.start)))
                .unwrap_or_else(|| "-".into()),
            "." => key_with_field("", &message),
            // serde reads an internally tagged enum from a buffer, past the
            // path tracking: read the sink again alone to find its key.
            "sink" if locate_sink => {
                return sink_error(text, source).unwrap_or_else(|| fail(source, "sink", message))
            }
            _ => key_with_field(&path, &message),
        };
        fail(source, &key, message)
    })
}

fn fail(source: &str, key: &str, message: String) -> ConfigError {
    ConfigError {
        file: source.to_string(),
        key: key.to_string(),
        message,
    }
}

/// serde names a missing key in its message, not in the path (the key was
/// never entered): add it to the path. An unknown key is in the path already.
fn key_with_field(path: &str, message: &str) -> String {
    let field = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next());
    match (path, field) {
        ("", Some(field)) => field.to_string(),
        ("", None) => "-".to_string(),
        (path, Some(field)) if path != field && !path.ends_with(&format!(".{field}")) => {
            format!("{path}.{field}")
        }
        (path, _) => path.to_string(),
    }
}

fn is_field_message(message: &str) -> bool {
    message.starts_with("unknown field `") || message.starts_with("missing field `")
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The `[sink]` table alone, read as the struct its `kind` names.
#[derive(Deserialize)]
#[allow(dead_code)] // read only for its errors
struct SinkOnly<T> {
    sink: T,
}

/// Re-reads a sink that failed to deserialize, for the exact key of the failure.
fn sink_error(text: &str, source: &str) -> Option<ConfigError> {
    let mut document: toml::Table = toml::from_str(text).ok()?;
    let sink = document.get_mut("sink")?.as_table_mut()?;
    let kind = sink.remove("kind");
    let body = toml::to_string(&toml::Table::from_iter([(
        "sink".to_string(),
        toml::Value::Table(sink.clone()),
    )]))
    .ok()?;
    let result = match &kind {
        None => Some(fail(
            source,
            "sink.kind",
            "missing: \"http\" or \"file\"".into(),
        )),
        Some(toml::Value::String(kind)) if kind == "file" => {
            read::<SinkOnly<raw::RawFileSink>>(&body, source, false).err()
        }
        Some(toml::Value::String(kind)) if kind == "http" => {
            read::<SinkOnly<raw::RawHttpSink>>(&body, source, false).err()
        }
        Some(other) => Some(fail(
            source,
            "sink.kind",
            format!("{other} is not \"http\" or \"file\""),
        )),
    };
    result.map(|mut err| {
        if err.message.starts_with("unknown field `") {
            if let Some(kind) = kind.as_ref().and_then(toml::Value::as_str) {
                err.message = format!("{} (for kind = {kind:?})", err.message);
            }
        }
        err
    })
}

#[cfg(test)]
mod tests;
