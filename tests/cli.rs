//! The commands, run as the real binary on real folders.

#[path = "support/harness.rs"]
mod harness;

use harness::{proof_rows, ConfigDoc, Site, IMPORT};

#[test]
fn check_accepts_a_good_config_and_counts_a_file_without_sending() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-consentements-1.csv");
    std::fs::write(
        &file,
        proof_rows("a", 5) + "bad-email;x;01/01/2020 00:00:00;1.2.3.4;\n",
    )
    .expect("write");
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .arg(&file)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "rows rejected → exit 1\n{stdout}"
    );
    assert!(stdout.contains("5 accepted, 1 rejected"), "{stdout}");
    assert!(stdout.contains("line 7"), "reject names its line: {stdout}");
    assert!(
        stdout.contains("\"organization_user_id\": \"a0@example.com\""),
        "{stdout}"
    );
    assert!(!site.outbox.exists(), "check sends nothing");
    assert!(file.exists(), "check moves nothing");
}

#[test]
fn check_names_the_bad_key_and_exits_2() {
    let site = Site::new(
        &ConfigDoc::of(IMPORT)
            .change("import[0].timezone", "Europe/Atlantis")
            .text(),
    );
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("timezone"), "{stderr}");
    assert!(stderr.contains("consent-drop.toml"), "{stderr}");
}

#[test]
fn unknown_config_key_is_refused() {
    let site = Site::new(
        &ConfigDoc::of(IMPORT)
            .rename("import[0].default_purpose", "default_purpse")
            .text(),
    );
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("default_purpse"));
}

#[test]
fn import_delivers_to_the_file_sink_and_archives_a_copy() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-consentements-2.csv");
    std::fs::write(&file, proof_rows("b", 250)).expect("write");
    let output = site.import(&file);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let events = site.outbox_events();
    assert_eq!(events.len(), 250);
    assert_eq!(events[0]["user"]["organization_user_id"], "b0@example.com");
    assert_eq!(
        events[0]["consents"]["purposes"][0]["id"],
        "newsletter_weekly"
    );
    assert_eq!(events[1]["consents"]["purposes"][0]["id"], "email_global");
    assert_eq!(
        events[0]["created_at"], "2020-06-01T19:28:00Z",
        "Paris summer time is UTC+2"
    );
    assert_eq!(events[0]["metadata"]["source_line"], 2);
    assert!(file.exists(), "the operator's file is left in place");
    let reports = site.reports("archive");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["status"], "archived");
    assert_eq!(reports[0]["rows_delivered"], 250);
    assert!(site.files_under("processing").is_empty());
}

#[test]
fn import_of_the_same_content_twice_sends_it_once() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-same.csv");
    std::fs::write(&file, proof_rows("c", 10)).expect("write");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).contains("Duplicate"));
    assert_eq!(site.outbox_events().len(), 10);
}

#[test]
fn import_with_rejects_exits_1_and_writes_the_rejects_file() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-rejects.csv");
    let content = proof_rows("d", 4) + "d9@example.com;x;31/02/2020 10:00:00;1.2.3.4;\n";
    std::fs::write(&file, content).expect("write");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(1));
    let rejects: Vec<_> = site
        .files_under("archive")
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".rejects.csv"))
        .collect();
    assert_eq!(rejects.len(), 1);
    let text = std::fs::read_to_string(&rejects[0]).expect("rejects");
    assert!(text.starts_with("line,reason,original_line"), "{text}");
    assert!(text.contains("\n6,"), "line number of the bad row: {text}");
    assert!(text.contains("31/02/2020"), "{text}");
}

#[test]
fn a_file_with_mostly_bad_rows_is_quarantined_and_nothing_sent() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-wrong-format.csv");
    // ISO dates where the import expects dd/MM/yyyy: every row rejected.
    let content = proof_rows("e", 10)
        .replace("/06/2020", "")
        .replace(";0", ";2020-06-0");
    std::fs::write(&file, content).expect("write");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(1));
    assert!(site.outbox_events().is_empty());
    let reports = site.reports("failed");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["status"], "quarantined");
    assert!(reports[0]["reason"]
        .as_str()
        .unwrap_or("")
        .contains("max_reject_ratio"));
}

/// To the file sink a file's events are written while it is validated:
/// when it then fails, nothing of it may stay in the outbox (neither a
/// complete file nor the `.partial` one), nor its index records.
#[test]
fn a_file_quarantined_after_its_good_rows_were_written_leaves_the_outbox_empty() {
    // One read on one thread (a small file) and on two (reader, events).
    for rows in [30, 2_000] {
        let site = Site::new(IMPORT);
        let file = site.path("pr-mostly-bad.csv");
        let content: String = proof_rows("m", rows)
            .lines()
            .enumerate()
            .map(|(index, line)| {
                // Three rows in five (after the header) have no `@`.
                let bad = index > 0 && (index - 1) % 5 < 3;
                let line = if bad {
                    line.replacen('@', "-at-", 1)
                } else {
                    line.to_string()
                };
                line + "\n"
            })
            .collect();
        std::fs::write(&file, content).expect("write");
        let output = site.import(&file);
        assert_eq!(output.status.code(), Some(1), "{rows} rows");
        let reports = site.reports("failed");
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0]["status"], "quarantined");
        assert_eq!(reports[0]["rows_accepted"], rows as u64 * 2 / 5);
        assert_eq!(reports[0]["rows_rejected"], rows as u64 * 3 / 5);
        let outbox: Vec<_> = std::fs::read_dir(&site.outbox)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name())
            .collect();
        assert!(outbox.is_empty(), "{rows} rows: outbox holds {outbox:?}");
        let index_work: Vec<_> = site
            .files_under("work")
            .into_iter()
            .filter(|path| path.to_string_lossy().ends_with(".ids"))
            .collect();
        assert!(index_work.is_empty(), "{index_work:?}");
        let rejects: Vec<_> = site
            .files_under("failed")
            .into_iter()
            .filter(|path| path.to_string_lossy().ends_with(".rejects.csv"))
            .collect();
        assert_eq!(rejects.len(), 1);
        let text = std::fs::read_to_string(&rejects[0]).expect("rejects");
        assert_eq!(
            text.lines().count(),
            1 + rows * 3 / 5,
            "header and each rejected row"
        );
    }
}

#[test]
fn sample_writes_a_file_that_check_accepts() {
    let site = Site::new(IMPORT);
    let sample = site.path("pr-sample.csv");
    site.command()
        .args(["sample", "--import", "news", "--rows", "20", "-o"])
        .arg(&sample)
        .arg("-c")
        .arg(&site.config)
        .assert()
        .code(0);
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .arg(&sample)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("20 accepted, 0 rejected"), "{stdout}");
}

#[test]
fn status_lists_recent_occurrences_as_json() {
    let site = Site::new(IMPORT);
    let file = site.path("pr-status.csv");
    std::fs::write(&file, proof_rows("f", 3)).expect("write");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let output = site
        .command()
        .args(["status", "--json", "-c"])
        .arg(&site.config)
        .output()
        .expect("run");
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(list[0]["status"], "archived");
    assert_eq!(list[0]["rows_accepted"], 3);
    assert_eq!(list[0]["file_name"], "pr-status.csv");
}

#[test]
fn a_file_matching_no_import_is_a_usage_error() {
    let site = Site::new(IMPORT);
    let file = site.path("other.csv");
    std::fs::write(&file, proof_rows("g", 1)).expect("write");
    let output = site
        .command()
        .args(["import", "-c"])
        .arg(&site.config)
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn every_event_names_the_sha256_of_the_archived_file_and_its_line() {
    use sha2::Digest;
    let site = Site::new(IMPORT);
    let file = site.path("pr-audit.csv");
    std::fs::write(&file, proof_rows("audit", 120)).expect("write");
    let output = site.import(&file);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let reports = site.reports("archive");
    let archived = reports[0]["file"].as_str().expect("archived path");
    let archived_bytes = std::fs::read(archived).expect("archived file");
    let digest = sha2::Sha256::digest(&archived_bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let lines: Vec<&str> = std::str::from_utf8(&archived_bytes)
        .expect("utf-8")
        .lines()
        .collect();
    let events = site.outbox_events();
    assert_eq!(events.len(), 120);
    for event in &events {
        assert_eq!(event["metadata"]["source_sha256"], hex.as_str());
        assert_eq!(event["metadata"]["source_file"], "pr-audit.csv");
        let line = event["metadata"]["source_line"].as_u64().expect("line") as usize;
        let email = event["user"]["organization_user_id"]
            .as_str()
            .expect("email");
        assert!(
            lines[line - 1].starts_with(email),
            "line {line} of the archived file is the proof"
        );
    }
}

#[test]
fn check_names_the_imports_a_waiting_file_matches_twice() {
    let second = "\n[[import]]\nname = \"all-proofs\"\npattern = \"proofs\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\ndefault_purpose = \"p\"\n";
    let site = Site::new(&format!("{IMPORT}{second}"));
    std::fs::write(site.drop.join("pr-proofs-1.csv"), proof_rows("a", 1)).expect("write");
    let output = site
        .command()
        .args(["check", "-c"])
        .arg(&site.config)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("pr-proofs-1.csv") && stdout.contains("news, all-proofs"),
        "{stdout}"
    );
}
