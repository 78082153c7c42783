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

[[import]]
name = "consentements"
pattern = "^pr-consentements-[0-9]+$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ";"
encoding = "auto"
default_purpose = "email_global"
[import.subscriptions]
"12" = "newsletter_weekly"
"#;

/// Imports that do not describe their files: every row fails the same way.
const MISMATCHED: &str = r#"
[[import]]
name = "wrong-separator"
pattern = "^mismatch-tabs"
date_format = "dd/MM/yyyy HH:mm:ss"
separator = ";"
default_purpose = "email_global"

[[import]]
name = "wrong-encoding"
pattern = "^mismatch-utf16"
date_format = "dd/MM/yyyy HH:mm:ss"
separator = "tab"
encoding = "utf-8"
default_purpose = "email_global"

[[import]]
name = "wrong-dates"
pattern = "^mismatch-dates"
date_format = "MM/dd/yyyy HH:mm:ss"
separator = ";"
default_purpose = "email_global"
"#;

/// Each mismatched fixture and the cause its quarantine must name.
const CAUSES: [(&str, &str); 3] = [
    (
        "mismatch-tabs.csv",
        "the rows are separated by tabs, the import says ';': set separator = \"tab\"",
    ),
    (
        "mismatch-utf16.txt",
        "this file is UTF-16 (byte-order mark FF FE), the import says utf-8: set encoding = \"utf-16\" (or \"auto\")",
    ),
    (
        "mismatch-dates.csv",
        "the dates look like dd/MM/yyyy HH:mm:ss, the import says MM/dd/yyyy HH:mm:ss: set date_format = \"dd/MM/yyyy HH:mm:ss\"",
    ),
];

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

/// The same rows, as dropped plain, gzip-compressed or zipped.
fn consentements_case(file: &'static str) -> Case {
    Case {
        file,
        events: vec![
            (
                2,
                "jane@example.com",
                "2026-11-05T09:23:45Z",
                "newsletter_weekly",
                "J'accepte la lettre d'information",
            ),
            (
                3,
                "bob@example.com",
                "2026-11-05T09:24:00Z",
                "email_global",
                "Oui;\nles offres",
            ),
        ],
        rejects: vec![(
            5,
            "e-mail \"bad\" is not a plausible address",
            "bad;x;05/11/2026 10:24:00;203.0.113.9",
        )],
    }
}

fn cases() -> Vec<Case> {
    vec![
        consentements_case("pr-consentements-11.csv.gz"),
        consentements_case("pr-consentements-12.zip"),
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

/// The events of a file without what names the file itself.
fn content_of_events(site: &Site) -> Vec<serde_json::Value> {
    let mut events = site.outbox_events();
    for event in &mut events {
        let metadata = event["metadata"].as_object_mut().expect("metadata");
        metadata.remove("source_file");
        metadata.remove("source_sha256");
    }
    events
}

#[test]
fn a_gzip_drop_gives_exactly_the_events_of_the_file_and_keeps_its_bytes() {
    use sha2::Digest;
    let plain = Site::new(IMPORTS);
    let file = plain.path("pr-consentements-11.csv");
    std::fs::copy(fixture("pr-consentements-11.csv"), &file).expect("copy");
    assert_eq!(plain.import(&file).status.code(), Some(1));
    let packed = Site::new(IMPORTS);
    let file = packed.path("pr-consentements-11.csv.gz");
    std::fs::copy(fixture("pr-consentements-11.csv.gz"), &file).expect("copy");
    assert_eq!(packed.import(&file).status.code(), Some(1));
    let events = content_of_events(&packed);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events,
        content_of_events(&plain),
        "the same events, ids included"
    );
    // The archive keeps the file as dropped, and the events name its SHA-256.
    let dropped = std::fs::read(fixture("pr-consentements-11.csv.gz")).expect("fixture");
    let reports = packed.reports("archive");
    let archived = std::fs::read(reports[0]["file"].as_str().expect("path")).expect("archived");
    assert_eq!(archived, dropped);
    let hex: String = sha2::Sha256::digest(&dropped)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(reports[0]["sha256"], hex.as_str());
    for event in packed.outbox_events() {
        assert_eq!(event["metadata"]["source_sha256"], hex.as_str());
        assert_eq!(
            event["metadata"]["source_file"],
            "pr-consentements-11.csv.gz"
        );
    }
    // Dropped again, compressed or not the same bytes are a duplicate.
    let output = packed.import(&file);
    assert!(String::from_utf8_lossy(&output.stdout).contains("Duplicate"));
}

#[test]
fn check_names_the_cause_of_each_kind_of_mismatch() {
    let site = Site::new(MISMATCHED);
    for (name, cause) in CAUSES {
        let file = site.path(name);
        std::fs::copy(fixture(name), &file).expect("copy");
        let output = site
            .command()
            .args(["check", "-c"])
            .arg(&site.config)
            .arg(&file)
            .output()
            .expect("check");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("would be QUARANTINED"), "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("likely cause: {cause}")),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn a_quarantine_report_and_the_daemon_log_name_the_cause() {
    let site = Site::new(MISMATCHED);
    let file = site.path(CAUSES[0].0);
    std::fs::copy(fixture(CAUSES[0].0), &file).expect("copy");
    assert_eq!(site.import(&file).status.code(), Some(1));
    let reports = site.reports("failed");
    let reason = reports[0]["reason"].as_str().unwrap_or_default();
    // Its header is not one either: read with ';' its first field is not "email".
    assert!(reason.starts_with("6 of 6 rows rejected"), "{reason}");
    assert!(reason.contains(CAUSES[0].1), "{reason}");

    let site = Site::new(MISMATCHED);
    let daemon = site.start();
    for (name, _) in CAUSES {
        let bytes = std::fs::read(fixture(name)).expect("fixture");
        site.drop_file(name, &bytes);
    }
    // The log line follows the report: wait for the lines themselves.
    let logged = |name: &str| {
        site.log()
            .lines()
            .any(|line| line.contains(name) && line.contains("failed/"))
    };
    assert!(
        wait_until(LONG, || CAUSES.iter().all(|(name, _)| logged(name))),
        "every file quarantined and logged; log:\n{}",
        site.log()
    );
    let log = site.log();
    for (name, cause) in CAUSES {
        let line = log
            .lines()
            .find(|line| line.contains(name) && line.contains("failed/"))
            .unwrap_or_else(|| panic!("no log line for {name}:\n{log}"));
        assert!(
            line.contains(&cause.replace('"', "\\\"")) || line.contains(cause),
            "{line}"
        );
    }
    daemon.stop_cleanly();
}

#[test]
fn attach_row_proof_holds_each_rows_own_text_in_a_large_file() {
    use base64::Engine;
    let doc = ConfigDoc::of(IMPORTS);
    let site = Site::new(&doc.set("import[0].attach_row_proof", true).text());
    // Far more rows than the few batches a small file's single thread reads.
    let file = site.path("form-export-proofs.csv");
    site.command()
        .args(["sample", "--import", "forms", "--rows", "1500", "-o"])
        .arg(&file)
        .arg("-c")
        .arg(&site.config)
        .assert()
        .code(0);
    let text = std::fs::read_to_string(&file).expect("sample");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(site.import(&file).status.code(), Some(0));
    let events = site.outbox_events();
    assert_eq!(events.len(), 1500);
    for event in &events {
        let line = event["metadata"]["source_line"].as_u64().expect("line") as usize;
        let uri = event["proofs"][0].as_str().unwrap_or_default();
        let proof = base64::engine::general_purpose::STANDARD
            .decode(uri.rsplit(',').next().unwrap_or_default())
            .expect("base64");
        assert_eq!(
            String::from_utf8(proof).expect("UTF-8"),
            lines[line - 1],
            "line {line}"
        );
    }
}
