//! config's tests: loading, defaults, and the exact key of every refusal.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::parse::{HeaderMode, InputEncoding, Separator, UnknownSubscription};

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

/// A config as TOML values (MINIMAL to start with), changed by key path
/// (`sink.gzip`, `import[1].date_format`). Changing inside a table that is
/// not there, or removing a key that is not set, panics: a text replacement
/// would silently do nothing once the base text changes.
#[derive(Debug, Clone)]
struct Doc(toml::Table);

/// A TOML table of `pairs`.
fn table<const N: usize>(pairs: [(&str, toml::Value); N]) -> toml::Value {
    toml::Value::Table(
        pairs
            .into_iter()
            .map(|(key, value)| (key.to_string(), value))
            .collect(),
    )
}

impl Doc {
    fn minimal() -> Doc {
        Doc(toml::from_str(MINIMAL).expect("MINIMAL is TOML"))
    }

    /// MINIMAL with an http sink (a token from `$T`) instead of the file sink.
    fn http(base_url: &str, organization: &str) -> Doc {
        Doc::minimal().set(
            "sink",
            table([
                ("kind", "http".into()),
                ("base_url", base_url.into()),
                ("organization_id", organization.into()),
                ("token_env", "T".into()),
            ]),
        )
    }

    /// Adds an `[[import]]` after the others.
    fn push_import(mut self, import: toml::Value) -> Doc {
        let imports = self
            .0
            .get_mut("import")
            .and_then(toml::Value::as_array_mut)
            .expect("[[import]] list");
        imports.push(import);
        self
    }

    fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Doc {
        let (parent, last) = self.parent(key);
        parent.insert(last.to_string(), value.into());
        self
    }

    fn remove(mut self, key: &str) -> Doc {
        let (parent, last) = self.parent(key);
        assert!(parent.remove(last).is_some(), "{key} is not set");
        self
    }

    fn rename(mut self, key: &str, to: &str) -> Doc {
        let (parent, last) = self.parent(key);
        let value = parent.remove(last).expect("the key to rename is set");
        parent.insert(to.to_string(), value);
        self
    }

    fn parse(&self) -> Result<Config, ConfigError> {
        parse(&toml::to_string(&self.0).expect("TOML"))
    }

    /// The table holding the last part of `key`, and that part.
    fn parent<'k>(&mut self, key: &'k str) -> (&mut toml::Table, &'k str) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.0;
        for part in parts {
            let (name, index) = match part.split_once('[') {
                Some((name, index)) => (name, index.trim_end_matches(']').parse::<usize>().ok()),
                None => (part, None),
            };
            let mut value = table
                .get_mut(name)
                .unwrap_or_else(|| panic!("no {name} in {key}"));
            if let Some(index) = index {
                value = value
                    .as_array_mut()
                    .and_then(|list| list.get_mut(index))
                    .unwrap_or_else(|| panic!("no {part} in {key}"));
            }
            table = value
                .as_table_mut()
                .unwrap_or_else(|| panic!("{part} in {key} is not a table"));
        }
        (table, last)
    }
}

/// A second import, `other`, for files named `*consent*`.
fn other_import() -> toml::Value {
    table([
        ("name", "other".into()),
        ("pattern", "consent".into()),
        ("date_format", "yyyy-MM-dd HH:mm:ss".into()),
        ("default_purpose", "p".into()),
    ])
}

/// `other_import()` with `key` set to `value`.
fn other_import_with(key: &str, value: impl Into<toml::Value>) -> toml::Value {
    let mut import = other_import();
    if let Some(table) = import.as_table_mut() {
        table.insert(key.to_string(), value.into());
    }
    import
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
    let err = Doc::minimal()
        .set("watch.settle_msec", 3)
        .parse()
        .expect_err("unknown key");
    assert!(err.to_string().contains("settle_msec"), "{err}");
    assert!(err.to_string().contains("test.toml"), "{err}");
}

#[test]
fn batch_size_over_api_limit_is_refused() {
    let err = Doc::minimal()
        .set("sink.batch_size", 101)
        .parse()
        .expect_err("too big");
    assert_eq!(err.key, "sink.batch_size");
}

#[test]
fn bad_timezone_and_separator_name_their_key() {
    let tz = Doc::minimal().set("import[0].timezone", "Mars/Olympus");
    assert!(tz.parse().expect_err("tz").key.ends_with(".timezone"));
    let sep = Doc::minimal().set("import[0].separator", "|");
    assert!(sep.parse().expect_err("sep").key.ends_with(".separator"));
}

#[test]
fn http_sink_needs_exactly_one_credential() {
    let http = |extra: &[(&str, &str)]| {
        let mut doc = Doc::http("https://api.test/v1/", "org").remove("sink.token_env");
        for (key, value) in extra {
            doc = doc.set(&format!("sink.{key}"), *value);
        }
        doc.parse()
    };
    let err = http(&[]).expect_err("none");
    assert_eq!(err.key, "sink.api_key");
    let err = http(&[("token_file", "t"), ("token_env", "T")]).expect_err("two");
    assert!(err.message.contains("token_env"), "{err}");
    let err = http(&[("api_key", "k")]).expect_err("no secret");
    assert_eq!(err.key, "sink.secret_file");
    let config = http(&[("api_key", "k"), ("secret_env", "S")]).expect("valid");
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
    let plain = Doc::http("http://127.0.0.1:1", "o");
    assert_eq!(plain.parse().expect_err("http").key, "sink.base_url");
    let allowed = plain.set("sink.allow_insecure_http", true);
    assert!(allowed.parse().is_ok());
}

#[test]
fn gzip_is_off_unless_asked_and_only_for_http() {
    let http = Doc::http("https://api.test", "o");
    let gzip_of = |doc: &Doc| match doc.parse().expect("valid").sink {
        SinkSettings::Http(http) => http.gzip,
        other => panic!("not http: {other:?}"),
    };
    assert!(!gzip_of(&http));
    assert!(gzip_of(&http.set("sink.gzip", true)));
    let file = Doc::minimal().set("sink.gzip", true);
    assert_eq!(file.parse().expect_err("file sink").key, "sink.gzip");
}

#[test]
fn import_matching_uses_stem_and_reports_ambiguity() {
    let config = Doc::minimal()
        .push_import(other_import())
        .parse()
        .expect("valid");
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

#[test]
fn an_error_in_the_second_import_names_its_index() {
    // A wrong type: found by serde, located by serde_path_to_error.
    let two = |import: toml::Value| Doc::minimal().push_import(import).parse();
    let err = two(other_import_with("date_format", 7)).expect_err("integer date format");
    assert_eq!(err.key, "import[1].date_format", "{err}");
    assert_eq!(err.file, "test.toml");
    assert!(err.message.contains("invalid type"), "{err}");
    // A wrong value: found by the checking step, same path.
    let err = two(other_import_with("date_format", "every tuesday")).expect_err("bad date format");
    assert_eq!(err.key, "import[1].date_format", "{err}");
    assert!(err.message.contains("\"other\""), "names the import: {err}");
    // An unknown key in the second import.
    let err = Doc::minimal()
        .push_import(other_import())
        .rename("import[1].pattern", "patern")
        .parse()
        .expect_err("unknown key");
    assert_eq!(err.key, "import[1].patern", "{err}");
}

#[test]
fn a_key_of_the_other_sink_kind_is_refused_with_its_path() {
    let err = Doc::minimal()
        .set("sink.base_url", "https://a.test")
        .parse()
        .expect_err("http-only key under file");
    assert_eq!(err.key, "sink.base_url", "{err}");
    assert!(err.message.contains("kind = \"file\""), "{err}");
    assert!(
        err.to_string().starts_with("test.toml: sink.base_url: "),
        "{err}"
    );
    // And a file-only key under kind = "http".
    let err = Doc::http("https://a.test", "o")
        .set("sink.dir", "out")
        .parse()
        .expect_err("file-only key under http");
    assert_eq!(err.key, "sink.dir", "{err}");
    // A wrong type inside the sink keeps its exact key.
    let many = Doc::minimal().set("sink.batch_size", "many");
    assert_eq!(many.parse().expect_err("type").key, "sink.batch_size");
}

#[test]
fn an_unknown_or_missing_kind_is_named() {
    let err = Doc::minimal()
        .set("sink.kind", "ftp")
        .parse()
        .expect_err("ftp");
    assert_eq!(err.key, "sink.kind", "{err}");
    assert!(
        err.message.contains("ftp") && err.message.contains("http"),
        "{err}"
    );
    let err = Doc::minimal()
        .remove("sink.kind")
        .parse()
        .expect_err("no kind");
    assert_eq!(err.key, "sink.kind", "{err}");
}

#[test]
fn a_wrong_word_lists_the_accepted_words() {
    let with = |key: &str, value: toml::Value| {
        Doc::minimal()
            .set(&format!("import[0].{key}"), value)
            .parse()
    };
    let err = with("separator", "pipe".into()).expect_err("separator");
    assert_eq!(err.key, "import[0].separator", "{err}");
    for word in ["semicolon", "comma", "tab", "space"] {
        assert!(err.message.contains(word), "{err}");
    }
    let err = with("encoding", "ebcdic".into()).expect_err("encoding");
    assert_eq!(err.key, "import[0].encoding", "{err}");
    assert!(err.message.contains("\"ebcdic\""), "{err}");
    for word in ["utf-8", "windows-1252", "iso-8859-1", "auto"] {
        assert!(err.message.contains(word), "{err}");
    }
    let err = with("unknown_subscription", "drop".into()).expect_err("unknown");
    assert_eq!(err.key, "import[0].unknown_subscription", "{err}");
    assert!(
        err.message.contains("reject, default, passthrough"),
        "{err}"
    );
    let err = with("header", "maybe".into()).expect_err("header");
    assert_eq!(err.key, "import[0].header", "{err}");
    assert!(err.message.contains("auto, true, false"), "{err}");
    let err = with("header", 1.into()).expect_err("header type");
    assert!(err.message.contains("auto, true, false"), "{err}");
}

#[test]
fn word_values_and_their_aliases_are_read_into_enums() {
    let import = |key: &str, value: toml::Value| {
        let config = Doc::minimal()
            .set(&format!("import[0].{key}"), value)
            .parse()
            .expect("valid");
        Arc::clone(&config.imports[0])
    };
    for (word, separator) in [
        (";", Separator::Semicolon),
        ("semicolon", Separator::Semicolon),
        (",", Separator::Comma),
        ("comma", Separator::Comma),
        ("\t", Separator::Tab),
        ("tab", Separator::Tab),
        (" ", Separator::Space),
        ("space", Separator::Space),
    ] {
        let found = import("separator", word.into()).format.separator;
        assert_eq!(found, separator, "{word:?}");
    }
    for (word, encoding) in [
        ("UTF-8", InputEncoding::Utf8),
        ("cp1252", InputEncoding::Windows1252),
        ("latin1", InputEncoding::Iso8859_1),
        ("auto", InputEncoding::Auto),
        ("utf-16", InputEncoding::Utf16),
    ] {
        let found = import("encoding", word.into()).format.encoding;
        assert_eq!(found, encoding, "{word:?}");
    }
    for (value, header) in [
        (toml::Value::Boolean(true), HeaderMode::Present),
        ("false".into(), HeaderMode::Absent),
        ("auto".into(), HeaderMode::Auto),
    ] {
        let found = import("header", value.clone()).format.header;
        assert_eq!(found, header, "{value}");
    }
    let unknown = import("unknown_subscription", "passthrough".into());
    assert_eq!(
        unknown.format.purposes.unknown,
        UnknownSubscription::Passthrough
    );
}

#[test]
fn a_syntax_error_names_its_line() {
    let err = parse("[watch]\ndir = \"d\"\n[state\n").expect_err("syntax");
    assert_eq!(err.key, "line 3", "{err}");
}

#[test]
fn a_missing_table_or_key_is_named() {
    let err = Doc::minimal().remove("state").parse().expect_err("state");
    assert_eq!(err.key, "state", "{err}");
    let err = Doc::minimal()
        .remove("import[0].default_purpose")
        .parse()
        .expect_err("purpose");
    assert_eq!(err.key, "import[0].default_purpose", "{err}");
}

#[test]
fn an_import_organization_overrides_the_sinks() {
    let mut other = other_import_with("organization_id", "org-b");
    if let Some(other) = other.as_table_mut() {
        other.insert("pattern".into(), "^o-.*$".into());
    }
    let config = Doc::http("https://api.test", "org-a")
        .push_import(other)
        .parse()
        .expect("valid");
    assert_eq!(config.imports[0].organization_id, None);
    assert_eq!(config.imports[0].organization(), Some("org-a"));
    assert_eq!(config.imports[1].organization(), Some("org-b"));
    // The file sink: an organization only where one is named.
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(config.imports[0].organization(), None);
    let config = Doc::minimal()
        .set("sink.organization_id", "org-f")
        .parse()
        .expect("valid");
    assert_eq!(config.imports[0].organization(), Some("org-f"));
    let empty = Doc::minimal().set("import[0].organization_id", " ");
    assert!(empty
        .parse()
        .expect_err("empty")
        .key
        .ends_with(".organization_id"));
}

#[test]
fn archive_days_is_kept_forever_unless_given_and_never_zero() {
    assert_eq!(parse(MINIMAL).expect("valid").archive_days, None);
    let with = MINIMAL.replace("dir = \"state\"", "dir = \"state\"\narchive_days = 30");
    assert_eq!(parse(&with).expect("valid").archive_days, Some(30));
    let zero = MINIMAL.replace("dir = \"state\"", "dir = \"state\"\narchive_days = 0");
    let err = parse(&zero).expect_err("0 deletes everything");
    assert!(err.to_string().contains("state.archive_days"), "{err}");
}
