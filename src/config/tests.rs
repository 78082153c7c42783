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

const SECOND_IMPORT: &str = r#"
[[import]]
name = "other"
pattern = "consent"
date_format = "yyyy-MM-dd HH:mm:ss"
default_purpose = "p"
"#;

#[test]
fn an_error_in_the_second_import_names_its_index() {
    // A wrong type: found by serde, located by serde_path_to_error.
    let text = format!(
        "{MINIMAL}{}",
        SECOND_IMPORT.replace("\"yyyy-MM-dd HH:mm:ss\"", "7")
    );
    let err = parse(&text).expect_err("integer date format");
    assert_eq!(err.key, "import[1].date_format", "{err}");
    assert_eq!(err.file, "test.toml");
    assert!(err.message.contains("invalid type"), "{err}");
    // A wrong value: found by the checking step, same path.
    let text = format!(
        "{MINIMAL}{}",
        SECOND_IMPORT.replace("yyyy-MM-dd HH:mm:ss", "every tuesday")
    );
    let err = parse(&text).expect_err("bad date format");
    assert_eq!(err.key, "import[1].date_format", "{err}");
    assert!(err.message.contains("\"other\""), "names the import: {err}");
    // An unknown key in the second import.
    let text = format!("{MINIMAL}{}", SECOND_IMPORT.replace("pattern", "patern"));
    let err = parse(&text).expect_err("unknown key");
    assert_eq!(err.key, "import[1].patern", "{err}");
}

#[test]
fn a_key_of_the_other_sink_kind_is_refused_with_its_path() {
    let text = MINIMAL.replace(
        "dir = \"out\"",
        "dir = \"out\"\nbase_url = \"https://a.test\"",
    );
    let err = parse(&text).expect_err("http-only key under file");
    assert_eq!(err.key, "sink.base_url", "{err}");
    assert!(err.message.contains("kind = \"file\""), "{err}");
    assert!(
        err.to_string().starts_with("test.toml: sink.base_url: "),
        "{err}"
    );
    // And a file-only key under kind = "http".
    let text = MINIMAL.replace(
        "kind = \"file\"",
        "kind = \"http\"\nbase_url = \"https://a.test\"\norganization_id = \"o\"\ntoken_env = \"T\"",
    );
    let err = parse(&text).expect_err("file-only key under http");
    assert_eq!(err.key, "sink.dir", "{err}");
    // A wrong type inside the sink keeps its exact key.
    let text = MINIMAL.replace("dir = \"out\"", "dir = \"out\"\nbatch_size = \"many\"");
    assert_eq!(parse(&text).expect_err("type").key, "sink.batch_size");
}

#[test]
fn an_unknown_or_missing_kind_is_named() {
    let err = parse(&MINIMAL.replace("kind = \"file\"", "kind = \"ftp\"")).expect_err("ftp");
    assert_eq!(err.key, "sink.kind", "{err}");
    assert!(
        err.message.contains("ftp") && err.message.contains("http"),
        "{err}"
    );
    let err = parse(&MINIMAL.replace("kind = \"file\"", "")).expect_err("no kind");
    assert_eq!(err.key, "sink.kind", "{err}");
}

#[test]
fn a_wrong_word_lists_the_accepted_words() {
    let with = |line: &str| MINIMAL.replace("default_purpose", &format!("{line}\ndefault_purpose"));
    let err = parse(&with("separator = \"pipe\"")).expect_err("separator");
    assert_eq!(err.key, "import[0].separator", "{err}");
    for word in ["semicolon", "comma", "tab", "space"] {
        assert!(err.message.contains(word), "{err}");
    }
    let err = parse(&with("encoding = \"ebcdic\"")).expect_err("encoding");
    assert_eq!(err.key, "import[0].encoding", "{err}");
    assert!(err.message.contains("\"ebcdic\""), "{err}");
    for word in ["utf-8", "windows-1252", "iso-8859-1", "auto"] {
        assert!(err.message.contains(word), "{err}");
    }
    let err = parse(&with("unknown_subscription = \"drop\"")).expect_err("unknown");
    assert_eq!(err.key, "import[0].unknown_subscription", "{err}");
    assert!(
        err.message.contains("reject, default, passthrough"),
        "{err}"
    );
    let err = parse(&with("header = \"maybe\"")).expect_err("header");
    assert_eq!(err.key, "import[0].header", "{err}");
    assert!(err.message.contains("auto, true, false"), "{err}");
    let err = parse(&with("header = 1")).expect_err("header type");
    assert!(err.message.contains("auto, true, false"), "{err}");
}

#[test]
fn word_values_and_their_aliases_are_read_into_enums() {
    let import = |line: &str| {
        let text = MINIMAL.replace("default_purpose", &format!("{line}\ndefault_purpose"));
        let config = parse(&text).expect("valid");
        Arc::clone(&config.imports[0])
    };
    for (word, separator) in [
        ("\";\"", Separator::Semicolon),
        ("\"semicolon\"", Separator::Semicolon),
        ("\",\"", Separator::Comma),
        ("\"comma\"", Separator::Comma),
        ("\"\\t\"", Separator::Tab),
        ("\"tab\"", Separator::Tab),
        ("\" \"", Separator::Space),
        ("\"space\"", Separator::Space),
    ] {
        let line = format!("separator = {word}");
        assert_eq!(import(&line).format.separator, separator, "{line}");
    }
    for (word, encoding) in [
        ("UTF-8", InputEncoding::Utf8),
        ("cp1252", InputEncoding::Windows1252),
        ("latin1", InputEncoding::Iso8859_1),
        ("auto", InputEncoding::Auto),
        ("utf-16", InputEncoding::Utf16),
    ] {
        let line = format!("encoding = {word:?}");
        assert_eq!(import(&line).format.encoding, encoding, "{line}");
    }
    for (value, header) in [
        ("true", HeaderMode::Present),
        ("\"false\"", HeaderMode::Absent),
        ("\"auto\"", HeaderMode::Auto),
    ] {
        let line = format!("header = {value}");
        assert_eq!(import(&line).format.header, header, "{line}");
    }
    let unknown = import("unknown_subscription = \"passthrough\"");
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
    let err = parse(&MINIMAL.replace("[state]\ndir = \"state\"", "")).expect_err("state");
    assert_eq!(err.key, "state", "{err}");
    let err =
        parse(&MINIMAL.replace("default_purpose = \"email_global\"", "")).expect_err("purpose");
    assert_eq!(err.key, "import[0].default_purpose", "{err}");
}

#[test]
fn an_import_organization_overrides_the_sinks() {
    let http = MINIMAL.replace(
        "kind = \"file\"\ndir = \"out\"",
        "kind = \"http\"\nbase_url = \"https://api.test\"\norganization_id = \"org-a\"\ntoken_env = \"T\"",
    );
    let two = format!(
        "{http}\n[[import]]\nname = \"other\"\npattern = \"^o-.*$\"\n\
         date_format = \"dd/MM/yyyy HH:mm:ss\"\ndefault_purpose = \"p\"\norganization_id = \"org-b\"\n"
    );
    let config = parse(&two).expect("valid");
    assert_eq!(config.imports[0].organization_id, None);
    assert_eq!(config.imports[0].organization(), Some("org-a"));
    assert_eq!(config.imports[1].organization(), Some("org-b"));
    // The file sink: an organization only where one is named.
    let config = parse(MINIMAL).expect("valid");
    assert_eq!(config.imports[0].organization(), None);
    let named = MINIMAL.replace(
        "dir = \"out\"",
        "dir = \"out\"\norganization_id = \"org-f\"",
    );
    let config = parse(&named).expect("valid");
    assert_eq!(config.imports[0].organization(), Some("org-f"));
    let empty = MINIMAL.replace(
        "default_purpose",
        "organization_id = \" \"\ndefault_purpose",
    );
    assert!(parse(&empty)
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
