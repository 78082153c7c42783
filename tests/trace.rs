//! `trace`: from an event id or an e-mail back to the archived proof, and
//! `[state] archive_days` retention.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use api_server::{BackgroundApi, ServerOptions};
use harness::{api_key_credentials, http_sink, proof_rows, wait_until, Site, IMPORT, LONG};
use serde_json::Value;

const WIN_IMPORT: &str = r#"
[[import]]
name = "win"
pattern = "^win-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
separator = ";"
encoding = "windows-1252"
default_purpose = "email_global"
"#;

const UTF16_IMPORT: &str = r#"
[[import]]
name = "u16"
pattern = "^u16-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
separator = "tab"
encoding = "utf-16"
default_purpose = "email_global"
"#;

const PARTNER_IMPORT: &str = r#"
[[import]]
name = "partner"
pattern = "^partner-.*$"
date_format = "yyyy-MM-dd HH:mm:ss"
separator = ","
default_purpose = "email_global"
"#;

/// `trace --json` of one id: the exit code, the proofs and the text.
fn trace(site: &Site, args: &[&str]) -> (i32, Vec<Value>, String) {
    let output = site
        .command()
        .arg("trace")
        .args(args)
        .arg("-c")
        .arg(&site.config)
        .output()
        .expect("trace");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let proofs = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), proofs, text)
}

/// Physical line `n` (from 1) of a file, without its line ending.
fn line_of(bytes: &[u8], n: u64) -> Vec<u8> {
    let line = bytes
        .split(|&b| b == b'\n')
        .nth(n as usize - 1)
        .expect("line exists");
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

fn import_ok(site: &Site, file: &Path) {
    let output = site.import(file);
    assert!(
        output.status.code().is_some_and(|code| code <= 1),
        "import: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Line `n` (from 1) of a UTF-16LE file (after its byte-order mark), as
/// its bytes, without its line ending.
fn utf16_line_of(bytes: &[u8], n: u64) -> Vec<u8> {
    let body = bytes.strip_prefix(b"\xFF\xFE").unwrap_or(bytes);
    let units: Vec<[u8; 2]> = body.chunks(2).map(|pair| [pair[0], pair[1]]).collect();
    let line = units
        .split(|unit| *unit == [b'\n', 0])
        .nth(n as usize - 1)
        .expect("line exists");
    let line = line.strip_suffix(&[[b'\r', 0]]).unwrap_or(line);
    line.iter().flatten().copied().collect()
}

fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Every event traces back to its archived file and line; the original
/// line, put back in the file's encoding, is the archived line byte for byte.
fn assert_every_event_traces(
    site: &Site,
    events: &[Value],
    encode: &dyn Fn(&str, &str) -> Vec<u8>,
) {
    assert!(!events.is_empty());
    for event in events {
        let id = event["id"].as_str().expect("id");
        let (code, proofs, text) = trace(site, &["--json", id]);
        assert_eq!(code, 0, "{text}");
        assert_eq!(proofs.len(), 1, "{text}");
        let proof = &proofs[0];
        let line = event["metadata"]["source_line"].as_u64().expect("line");
        assert_eq!(proof["line"].as_u64(), Some(line));
        assert_eq!(proof["event_id"].as_str(), Some(id));
        assert_eq!(proof["sha256_matches"], Value::Bool(true));
        assert_eq!(proof["sha256_now"], event["metadata"]["source_sha256"]);
        let file = PathBuf::from(proof["file"].as_str().expect("file"));
        assert!(file.starts_with(site.state.join("archive")), "{file:?}");
        assert_eq!(
            file.file_name().and_then(|n| n.to_str()),
            event["metadata"]["source_file"].as_str()
        );
        let archived = std::fs::read(&file).expect("archived file");
        let original = proof["original_line"].as_str().expect("original");
        let archived_line = if proof["import"] == "u16" {
            utf16_line_of(&archived, line)
        } else {
            line_of(&archived, line)
        };
        assert_eq!(
            encode(proof["import"].as_str().unwrap_or_default(), original),
            archived_line,
            "line {line} of {file:?}"
        );
        // The event rebuilt from the line is the event that was sent.
        assert_eq!(&proof["event"], event, "{text}");
        assert!(proof["acknowledged_at"].is_string(), "{proof}");
    }
}

fn encode(import: &str, text: &str) -> Vec<u8> {
    if import == "win" {
        encoding_rs::WINDOWS_1252.encode(text).0.into_owned()
    } else if import == "u16" {
        utf16le(text)
    } else {
        text.as_bytes().to_vec()
    }
}

#[test]
fn every_event_of_file_sink_imports_traces_to_its_line_in_utf8_windows_1252_and_utf16() {
    let site = Site::new(&format!("{IMPORT}{WIN_IMPORT}{UTF16_IMPORT}"));
    let mut utf8 = proof_rows("a", 30);
    utf8.push_str("zoé@example.com;Je veux la lettre – été;01/02/2021 10:00:00;198.51.100.7;\n");
    let utf8_file = site.path("pr-utf8.csv");
    std::fs::write(&utf8_file, utf8).expect("write");
    import_ok(&site, &utf8_file);
    let mut win: Vec<u8> = b"email;purpose;date;origin\r\n".to_vec();
    for i in 0..20 {
        win.extend_from_slice(
            format!("w{i}@example.com;J'accepte la lettre d'information ").as_bytes(),
        );
        win.extend_from_slice(b"\xe9t\xe9 \x80;03/04/2022 11:12:13;192.0.2.1\r\n");
    }
    let win_file = site.path("win-1252.csv");
    std::fs::write(&win_file, &win).expect("write");
    import_ok(&site, &win_file);
    let mut u16_text = String::from("email\tpurpose\tdate\torigin\r\n");
    for i in 0..15 {
        u16_text.push_str(&format!(
            "u{i}@example.com\tJ'accepte l'été – ✓\t05/06/2023 07:08:09\t2001:db8::{i}\r\n"
        ));
    }
    let mut u16_bytes = b"\xFF\xFE".to_vec();
    u16_bytes.extend(utf16le(&u16_text));
    let u16_file = site.path("u16-export.txt");
    std::fs::write(&u16_file, &u16_bytes).expect("write");
    import_ok(&site, &u16_file);
    let events = site.outbox_events();
    assert_eq!(events.len(), 66);
    assert_every_event_traces(&site, &events, &encode);
}

#[test]
fn every_event_delivered_to_the_api_traces_to_its_line() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "batch_size = 7",
        ),
    );
    let daemon = site.start();
    let mut rows = proof_rows("api", 40);
    rows.push_str("no+refuse@example.com;J'accepte;01/06/2020 21:28:00;203.0.113.1;\n");
    site.drop_file("pr-api.csv", rows.as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "{}",
        site.log()
    );
    daemon.stop_cleanly();
    let events = api.server.events();
    assert_eq!(events.len(), 40);
    assert_every_event_traces(&site, &events, &encode);
    // Line 11: the 10th row, after the header.
    let tenth = events
        .iter()
        .find(|event| event["metadata"]["source_line"] == 11)
        .expect("line 11");
    let (_, proofs, _) = trace(&site, &["--json", tenth["id"].as_str().expect("id")]);
    assert_eq!(proofs[0]["organization_id"], "org-1");
    assert_eq!(
        proofs[0]["batch"], 1,
        "the 10th event is in the 2nd batch of 7"
    );

    // The row the API refused: found by its contact, marked, with the reason.
    let (code, proofs, text) = trace(&site, &["--json", "--email", "NO+refuse@example.com"]);
    assert_eq!((code, proofs.len()), (0, 1), "{text}");
    assert_eq!(proofs[0]["fate"], "refused", "{text}");
    assert_eq!(proofs[0]["line"], 42);
    assert!(proofs[0]["reason"].is_string(), "{text}");
    let refused_id = proofs[0]["event_id"].as_str().expect("id").to_string();
    let (code, proofs, text) = trace(&site, &["--json", &refused_id]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(proofs[0]["fate"], "refused", "{text}");
}

#[test]
fn a_tampered_archived_file_is_shouted_with_exit_3_and_unknown_ids_exit_1() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-t.csv");
    std::fs::write(&file, proof_rows("t", 5)).expect("write");
    import_ok(&site, &file);
    let events = site.outbox_events();
    let id = events[2]["id"].as_str().expect("id");
    assert_eq!(trace(&site, &[id]).0, 0);

    let (code, _, text) = trace(&site, &["00000000-0000-5000-8000-000000000001"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("never imported"), "{text}");
    assert_eq!(trace(&site, &["not-an-id"]).0, 2);

    let archived = site
        .files_under("archive")
        .into_iter()
        .find(|path| path.extension().and_then(|e| e.to_str()) == Some("csv"))
        .expect("archived file");
    let mut bytes = std::fs::read(&archived).expect("read");
    bytes.extend_from_slice(b"x@example.com;forged;01/01/2020 00:00:00;1.2.3.4\n");
    std::fs::write(&archived, bytes).expect("tamper");
    let (code, _, text) = trace(&site, &[id]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("MISMATCH"), "{text}");
    let (code, proofs, _) = trace(&site, &["--json", id]);
    assert_eq!(code, 3);
    assert_eq!(proofs[0]["sha256_matches"], Value::Bool(false));

    std::fs::remove_file(&archived).expect("remove");
    let (code, _, text) = trace(&site, &[id]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("MISSING"), "{text}");
}

#[test]
fn trace_email_finds_every_proof_of_a_contact_newest_first_with_the_rejected_one_marked() {
    let site = Site::new(&format!("{IMPORT}{PARTNER_IMPORT}"));
    let files = [
        (
            "pr-1.csv",
            "email;purpose;date;origin\nJane@Example.com;first;01/06/2020 10:00:00;203.0.113.1\nother@example.com;x;01/06/2020 10:00:00;203.0.113.2\n",
        ),
        (
            "pr-2.csv",
            "other@example.com;x;02/06/2020 10:00:00;203.0.113.2\njane@example.com;second;02/06/2020 10:00:00;203.0.113.1\n jane@example.com ;bad date;2020-06-02;203.0.113.1\nb@example.com;x;02/06/2020 10:00:00;203.0.113.2\nc@example.com;x;02/06/2020 10:00:00;203.0.113.2\n",
        ),
        (
            "partner-1.csv",
            "jane@example.com,third,2020-06-03 10:00:00,203.0.113.1\n",
        ),
    ];
    for (name, content) in files {
        let path = site.path(name);
        std::fs::write(&path, content).expect("write");
        import_ok(&site, &path);
    }
    let (code, proofs, text) = trace(&site, &["--json", "--email", "  JANE@example.COM "]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("read 3 archived file(s)"), "{text}");
    let summary: Vec<(String, String, u64)> = proofs
        .iter()
        .map(|proof| {
            let file = proof["file"].as_str().expect("file");
            (
                file.rsplit('/').next().unwrap_or_default().to_string(),
                proof["fate"].as_str().expect("fate").to_string(),
                proof["line"].as_u64().expect("line"),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("partner-1.csv".to_string(), "delivered".to_string(), 1),
            ("pr-2.csv".to_string(), "delivered".to_string(), 2),
            ("pr-2.csv".to_string(), "rejected".to_string(), 3),
            ("pr-1.csv".to_string(), "delivered".to_string(), 2),
        ]
    );
    assert!(proofs[2]["reason"]
        .as_str()
        .expect("reason")
        .contains("date"));
    assert_eq!(proofs[0]["import"], "partner");
    assert_eq!(
        proofs[1]["original_line"],
        "jane@example.com;second;02/06/2020 10:00:00;203.0.113.1"
    );
    let (code, proofs, _) = trace(&site, &["--json", "--email", "nobody@example.com"]);
    assert_eq!((code, proofs.len()), (1, 0));
}

#[test]
fn retention_deletes_old_archive_days_with_their_index_and_trace_says_pruned() {
    let site = Site::new(IMPORT);
    let config = std::fs::read_to_string(&site.config).expect("config");
    std::fs::write(
        &site.config,
        config.replacen("[state]\n", "[state]\narchive_days = 30\n", 1),
    )
    .expect("config");
    let old = site.path("pr-old.csv");
    std::fs::write(&old, proof_rows("old", 5)).expect("write");
    import_ok(&site, &old);
    let old_ids: Vec<String> = site
        .outbox_events()
        .iter()
        .map(|event| event["id"].as_str().expect("id").to_string())
        .collect();
    // Back-date that import's archive day and index day to 2020-01-01.
    let today = std::fs::read_dir(site.state.join("archive"))
        .expect("archive")
        .flatten()
        .next()
        .expect("a day")
        .file_name();
    for folder in ["archive", "index"] {
        std::fs::rename(
            site.state.join(folder).join(&today),
            site.state.join(folder).join("2020-01-01"),
        )
        .expect("back-date");
    }
    let recent = site.path("pr-recent.csv");
    std::fs::write(&recent, proof_rows("recent", 3)).expect("write");
    import_ok(&site, &recent);
    std::fs::write(site.state.join("failed").join("pr-kept.csv"), "x").expect("failed file");

    let daemon = site.start();
    assert!(
        wait_until(LONG, || site.log().contains("archive day deleted")),
        "{}",
        site.log()
    );
    daemon.stop_cleanly();
    assert!(!site.state.join("archive/2020-01-01").exists());
    assert!(!site.state.join("index/2020-01-01").exists());
    assert!(site.state.join("archive").join(&today).exists());
    assert!(site.state.join("failed/pr-kept.csv").exists());
    for id in &old_ids {
        let (code, _, text) = trace(&site, &[id]);
        assert_eq!(code, 1, "{text}");
        assert!(
            text.contains("PRUNED") && text.contains("2020-01-01"),
            "{text}"
        );
    }
    let recent_id = site.outbox_events().last().expect("event")["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(trace(&site, &[&recent_id]).0, 0);
    let status = site
        .command()
        .args(["status", "-c"])
        .arg(&site.config)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("oldest day {}", today.to_string_lossy())),
        "{text}"
    );
}
