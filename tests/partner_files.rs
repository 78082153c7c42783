//! Files as partners really send them (tests/fixtures/partner/), end to end
//! through `import` and through `run`: the exact events and rejects.

#[path = "support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use harness::{wait_until, ConfigDoc, Site, LONG};

/// One import per kind of file.
const IMPORTS: &str = r#"
[[import]]
name = "forms"
pattern = "^form-export"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ","
encoding = "auto"
default_purpose = "email_global"
[import.subscriptions]
"12" = "newsletter_weekly"

[[import]]
name = "excel"
pattern = "^excel-"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = "tab"
encoding = "auto"
default_purpose = "email_global"
[import.subscriptions]
"12" = "newsletter_weekly"

[[import]]
name = "unicode"
pattern = "^unicode-"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = "tab"
encoding = "utf-16"
default_purpose = "email_global"
[import.subscriptions]
"12" = "newsletter_weekly"

[[import]]
name = "iso"
pattern = "^iso-"
date_format = "iso8601"
timezone = "Europe/Paris"
separator = ";"
default_purpose = "email_global"

[[import]]
name = "java"
pattern = "^java-"
date_format = "yyyy-MM-dd'T'HH:mm:ss"
separator = ","
default_purpose = "email_global"
"#;

/// An event as the test states it: line, e-mail, instant, purpose id, purpose text.
type Event = (u64, &'static str, &'static str, &'static str, &'static str);
/// A reject: line, a part of its reason, a part of its original line.
type Reject = (u64, &'static str, &'static str);

struct Case {
    file: &'static str,
    events: Vec<Event>,
    rejects: Vec<Reject>,
}

fn excel_case(file: &'static str, second: &'static str) -> Case {
    Case {
        file,
        events: vec![
            (
                2,
                "élodie@exemple.fr",
                "2026-11-05T09:23:45Z",
                "newsletter_weekly",
                "J’accepte la lettre — été",
            ),
            (
                4,
                second,
                "2026-11-05T09:24:00Z",
                "email_global",
                "Deux\nlignes",
            ),
        ],
        rejects: vec![(
            3,
            "e-mail \"bad-email\" is not a plausible address",
            "bad-email\tx\t05/11/2026 10:23:45\t203.0.113.8",
        )],
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            file: "form-export-multiline.csv",
            events: vec![
                (
                    2,
                    "jane@example.com",
                    "2026-11-03T09:23:45Z",
                    "newsletter_weekly",
                    "I agree to receive\nthe weekly newsletter",
                ),
                (
                    4,
                    "bob@example.com",
                    "2026-11-03T09:24:00Z",
                    "email_global",
                    "Yes:\n\n- offers\n- news",
                ),
                (
                    10,
                    "ann@example.com",
                    "2026-11-03T10:00:00Z",
                    "email_global",
                    "plain",
                ),
            ],
            rejects: vec![(
                8,
                "month 11 of 2026 has no day 31",
                "eve@example.com,\"two\r\nlines\",31/11/2026 10:00:00,203.0.113.9",
            )],
        },
        excel_case("excel-unicode-text.txt", "marc@exemple.fr"),
        excel_case("excel-big-endian.txt", "zoe@exemple.fr"),
        excel_case("unicode-no-mark.txt", "max@exemple.fr"),
        Case {
            file: "iso-instants.csv",
            events: vec![
                (
                    2,
                    "a@example.com",
                    "2026-11-05T10:23:45Z",
                    "email_global",
                    "news",
                ),
                (
                    3,
                    "b@example.com",
                    "2026-11-05T09:23:45Z",
                    "email_global",
                    "news",
                ),
                (
                    4,
                    "c@example.com",
                    "2026-11-05T09:23:45Z",
                    "email_global",
                    "news",
                ),
                (
                    5,
                    "d@example.com",
                    "2026-11-05T09:23:45Z",
                    "email_global",
                    "news",
                ),
            ],
            rejects: vec![(
                6,
                "does not match the date format \"iso8601\"",
                "e@example.com;news;05/11/2026 10:23:45;203.0.113.5",
            )],
        },
        Case {
            file: "java-pattern.csv",
            events: vec![(
                1,
                "a@example.com",
                "2026-11-05T10:23:45Z",
                "email_global",
                "news",
            )],
            rejects: vec![(
                2,
                "does not match the date format \"yyyy-MM-dd'T'HH:mm:ss\"",
                "b@example.com,news,2026-11-05 10:23:45,203.0.113.2",
            )],
        },
    ]
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/partner")
        .join(name)
}

/// The events of one source file in the outbox, as the test states them.
fn events_of(site: &Site, file: &str) -> Vec<(u64, String, String, String, String)> {
    site.outbox_events()
        .iter()
        .filter(|event| event["metadata"]["source_file"] == file)
        .map(|event| {
            let text = |value: &serde_json::Value| value.as_str().unwrap_or("?").to_string();
            (
                event["metadata"]["source_line"].as_u64().unwrap_or(0),
                text(&event["user"]["organization_user_id"]),
                text(&event["created_at"]),
                text(&event["consents"]["purposes"][0]["id"]),
                text(&event["metadata"]["consent_purpose_text"]),
            )
        })
        .collect()
}

/// The rows of the archived rejects file of one source file.
fn rejects_of(site: &Site, file: &str) -> Vec<(u64, String, String)> {
    let suffix = format!("{file}.rejects.csv");
    let Some(path) = site
        .files_under("archive")
        .into_iter()
        .find(|path| path.to_string_lossy().ends_with(&suffix))
    else {
        return Vec::new();
    };
    let mut reader = csv::Reader::from_path(&path).expect("rejects file");
    reader
        .records()
        .map(|record| {
            let record = record.expect("rejects record");
            (
                record[0].parse().expect("line number"),
                record[1].to_string(),
                record[2].to_string(),
            )
        })
        .collect()
}

fn assert_case(site: &Site, case: &Case) {
    let want: Vec<_> = case
        .events
        .iter()
        .map(|&(line, email, instant, purpose, text)| {
            (
                line,
                email.to_string(),
                instant.to_string(),
                purpose.to_string(),
                text.to_string(),
            )
        })
        .collect();
    assert_eq!(events_of(site, case.file), want, "{}", case.file);
    let rejects = rejects_of(site, case.file);
    assert_eq!(
        rejects.len(),
        case.rejects.len(),
        "{}: {rejects:?}",
        case.file
    );
    for ((line, reason, original), want) in rejects.iter().zip(&case.rejects) {
        assert_eq!(*line, want.0, "{}", case.file);
        assert!(reason.contains(want.1), "{}: {reason}", case.file);
        assert_eq!(
            original, want.2,
            "{}: the original line, readable",
            case.file
        );
    }
}

#[test]
fn each_partner_file_imports_with_its_exact_events_and_rejects() {
    for case in cases() {
        let site = Site::new(IMPORTS);
        let file = site.path(case.file);
        std::fs::copy(fixture(case.file), &file).expect("copy fixture");
        let output = site.import(&file);
        let want_exit = if case.rejects.is_empty() { 0 } else { 1 };
        assert_eq!(
            output.status.code(),
            Some(want_exit),
            "{}: {}",
            case.file,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_case(&site, &case);
    }
}

#[test]
fn the_daemon_reads_each_partner_file_the_same() {
    let site = Site::new(IMPORTS);
    let daemon = site.start();
    let cases = cases();
    for case in &cases {
        let bytes = std::fs::read(fixture(case.file)).expect("fixture");
        site.drop_file(case.file, &bytes);
    }
    assert!(
        wait_until(LONG, || site.reports("archive").len() == cases.len()),
        "every file archived; log:\n{}",
        site.log()
    );
    for case in &cases {
        assert_case(&site, case);
    }
    daemon.stop_cleanly();
}

#[test]
fn sample_writes_utf16_for_a_utf16_import_and_it_reads_back() {
    let site = Site::new(IMPORTS);
    let sample = site.path("unicode-sample.txt");
    site.command()
        .args(["sample", "--import", "unicode", "--rows", "12", "-o"])
        .arg(&sample)
        .arg("-c")
        .arg(&site.config)
        .assert()
        .code(0);
    let bytes = std::fs::read(&sample).expect("sample");
    assert!(bytes.starts_with(b"\xFF\xFEe\0m\0"), "UTF-16LE with a mark");
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .arg(&sample)
        .output()
        .expect("check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("12 accepted, 0 rejected"), "{stdout}");
}

#[test]
fn attach_row_proof_of_a_utf16_row_is_its_readable_text() {
    use base64::Engine;
    let doc = ConfigDoc::of(IMPORTS);
    assert_eq!(
        doc.get("import[2].name").and_then(toml::Value::as_str),
        Some("unicode")
    );
    let site = Site::new(&doc.set("import[2].attach_row_proof", true).text());
    let file = site.path("unicode-no-mark.txt");
    std::fs::copy(fixture("unicode-no-mark.txt"), &file).expect("copy");
    assert_eq!(site.import(&file).status.code(), Some(1));
    let events = site.outbox_events();
    let uri = events[0]["proofs"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let encoded = uri.rsplit(',').next().unwrap_or_default();
    let proof = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    assert_eq!(
        String::from_utf8(proof).expect("UTF-8"),
        "Élodie@Exemple.fr\tJ’accepte la lettre — été\t05/11/2026 10:23:45\t203.0.113.7\t12",
        "{}",
        events[0]
    );
}
