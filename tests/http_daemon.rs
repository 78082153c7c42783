//! The daemon delivering to the test consents API over loopback.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::time::Duration;

use api_server::{BackgroundApi, ServerOptions};
use harness::{
    api_key_credentials, http_sink, proof_rows, token_expired, wait_until, ConfigDoc, Site, IMPORT,
    LONG,
};

#[test]
fn kill_9_during_delivery_resends_only_unacknowledged_batches() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "concurrency = 4",
        ),
    );
    let rows = 100_000;
    api.server.set_delay(Duration::from_millis(5));
    let mut daemon = site.start();
    site.drop_file("pr-big.csv", proof_rows("k", rows).as_bytes());
    assert!(
        wait_until(LONG, || api.server.event_count() > rows / 4),
        "log:\n{}",
        site.log()
    );
    daemon.kill9();
    // Requests the daemon had in flight may still be stored after its death:
    // they count as delivered before the kill, not as re-sent.
    assert!(
        wait_until(LONG, || api.server.in_flight() == 0),
        "the server finishes the requests of the killed daemon"
    );
    let at_kill = api.server.event_count();
    let journal = site.journal();
    let acked_rows = journal[0]["batches_acked"].as_u64().expect("acked") as usize * 100;
    assert!(
        acked_rows > 0 && acked_rows <= at_kill,
        "journal records only delivered batches"
    );
    api.server.set_delay(Duration::ZERO);

    let daemon = site.start();
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), rows, "every event at the server");
    let resent = api.server.duplicates() as usize;
    assert!(
        resent <= at_kill - acked_rows,
        "only unacknowledged batches re-sent: {resent} duplicates, {} unrecorded at the kill",
        at_kill - acked_rows
    );
    eprintln!("kill -9: {at_kill} events at the server, {acked_rows} recorded, {resent} re-sent");
    daemon.stop_cleanly();
}

#[test]
fn an_api_in_trouble_gets_every_event_exactly_once() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "concurrency = 4",
        ),
    );
    api.server.set_fail_ratio(0.3);
    api.server.set_429_burst(5, 1);
    api.server.drop_connections(3);
    let daemon = site.start();
    site.drop_file("pr-chaos.csv", proof_rows("c", 5_000).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 5_000);
    assert!(site.files_under("failed").is_empty());
    daemon.stop_cleanly();
}

#[test]
fn refused_events_become_rejected_rows_and_the_rest_is_delivered() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "",
        ),
    );
    let mut content = proof_rows("r", 100);
    for i in [7, 50, 93] {
        content = content.replace(
            &format!("\nr{i}@example.com"),
            &format!("\nr{i}+refuse@example.com"),
        );
    }
    let daemon = site.start();
    site.drop_file("pr-refused.csv", content.as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 97);
    let report = &site.reports("archive")[0];
    assert_eq!(report["rows_refused"], 3);
    assert_eq!(report["rows_delivered"], 97);
    let rejects =
        std::fs::read_to_string(report["rejects_file"].as_str().expect("rejects")).expect("read");
    for line in [9, 52, 95] {
        assert!(
            rejects.contains(&format!("\n{line},\"refused by the API (422")),
            "line {line}: {rejects}"
        );
    }
    assert!(
        rejects.contains("organization_user_id is refused"),
        "the API's message is kept: {rejects}"
    );
    let mut reader = csv::Reader::from_reader(rejects.as_bytes());
    let originals: Vec<(String, String)> = reader
        .records()
        .map(|record| {
            let record = record.expect("rejects CSV");
            (record[0].to_string(), record[2].to_string())
        })
        .collect();
    for (line, row) in [("9", 7), ("52", 50), ("95", 93)] {
        assert!(
            originals.iter().any(|(l, original)| l == line
                && original.contains(&format!("r{row}+refuse@example.com"))),
            "line {line} keeps its original text: {originals:?}"
        );
    }
    daemon.stop_cleanly();
}

/// `rows` rows of a proof file whose contacts at `refused` (indexes) the API refuses.
fn with_refused(prefix: &str, rows: usize, refused: &[usize]) -> String {
    let mut content = proof_rows(prefix, rows);
    for i in refused {
        content = content.replace(
            &format!("\n{prefix}{i}@example.com"),
            &format!("\n{prefix}{i}+refuse@example.com"),
        );
    }
    content
}

/// `(line, original line)` of each row of a rejects file.
fn rejected_lines(report: &serde_json::Value) -> Vec<(u64, String)> {
    let path = report["rejects_file"].as_str().expect("a rejects file");
    let text = std::fs::read_to_string(path).expect("read rejects");
    csv::Reader::from_reader(text.as_bytes())
        .records()
        .map(|record| {
            let record = record.expect("rejects CSV");
            assert!(record[1].contains("refused by the API (422"), "{record:?}");
            (
                record[0].parse().expect("line number"),
                record[2].to_string(),
            )
        })
        .collect()
}

#[test]
fn a_shared_request_refused_for_two_files_puts_each_refusal_in_its_own_rejects() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "concurrency = 1",
        ),
    );
    // The only request slot is taken by a first file, held at the API,
    // while the two files come: their events then go in one request.
    api.server.hold(true);
    let daemon = site.start();
    site.drop_file("pr-first.csv", proof_rows("first", 1).as_bytes());
    assert!(
        wait_until(LONG, || api.server.in_flight() == 1),
        "log:\n{}",
        site.log()
    );
    site.drop_file("pr-a.csv", with_refused("a", 20, &[3, 10]).as_bytes());
    site.drop_file("pr-b.csv", with_refused("b", 20, &[7]).as_bytes());
    assert!(
        wait_until(LONG, || site
            .status(10)
            .iter()
            .filter(|o| o["status"] == "delivering" && o["file_name"] != "pr-first.csv")
            .count()
            == 2),
        "log:\n{}",
        site.log()
    );
    api.server.hold(false);
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 3),
        "log:\n{}",
        site.log()
    );
    daemon.stop_cleanly();

    let shared = api.server.request_sources().into_iter().any(|sources| {
        sources.iter().any(|s| s == "pr-a.csv") && sources.iter().any(|s| s == "pr-b.csv")
    });
    assert!(
        shared,
        "a request held events of both files: {:?}",
        api.server.request_sources()
    );
    assert_eq!(api.server.event_count(), 1 + 40 - 3);
    assert_eq!(api.server.duplicates(), 0);
    let reports = site.reports("archive");
    // Rows are lines 2..: row i is line i + 2.
    for (file, prefix, lines) in [("pr-a.csv", "a", vec![5, 12]), ("pr-b.csv", "b", vec![9])] {
        let report = reports
            .iter()
            .find(|r| r["file_name"] == file)
            .unwrap_or_else(|| panic!("no report for {file}: {reports:?}"));
        assert_eq!(report["rows_refused"], lines.len() as u64, "{report}");
        assert_eq!(
            report["rows_delivered"],
            20 - lines.len() as u64,
            "{report}"
        );
        let rejected = rejected_lines(report);
        let numbers: Vec<u64> = rejected.iter().map(|(line, _)| *line).collect();
        assert_eq!(numbers, lines, "{file}: exactly its own refused lines");
        for (line, original) in &rejected {
            let row = line - 2;
            assert!(
                original.starts_with(&format!("{prefix}{row}+refuse@example.com;")),
                "{file} line {line}: {original}"
            );
        }
    }
}

#[test]
fn wrong_secret_waits_then_sighup_with_the_fixed_secret_delivers() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let wrong = "wrong-secret-4f1a9";
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), wrong),
            "",
        ),
    );
    let daemon = site.start();
    site.drop_file("pr-auth.csv", proof_rows("a", 50).as_bytes());
    assert!(
        wait_until(LONG, || site.log().contains("test-key")),
        "one error naming the key; log:\n{}",
        site.log()
    );
    assert!(
        wait_until(LONG, || api.server.session_attempts() >= 2),
        "probed again"
    );
    assert_eq!(api.server.event_count(), 0, "nothing delivered before");
    assert!(site.files_under("failed").is_empty());
    assert_eq!(
        site.files_under("processing").len(),
        1,
        "the file waits in processing/"
    );

    std::fs::write(root.path().join("secret"), "test-secret").expect("fix secret");
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 50, "everything after");
    assert!(site.files_under("failed").is_empty());
    let check = site
        .command()
        .args(["check", "--online", "-c"])
        .arg(&site.config)
        .output()
        .expect("check");
    let printed = format!(
        "{}{}{}",
        site.log(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("session opened"),
        "{printed}"
    );
    assert!(
        !printed.contains(wrong) && !printed.contains("test-secret"),
        "the secret is never printed"
    );
    for token in api.server.issued_tokens() {
        assert!(!printed.contains(&token), "a token was printed");
    }
}

#[test]
fn short_lived_tokens_are_renewed_and_nothing_is_lost() {
    let api = BackgroundApi::start(ServerOptions {
        token_lifetime_s: 2,
        ..ServerOptions::default()
    });
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "",
        ),
    );
    let daemon = site.start();
    site.drop_file("pr-t1.csv", proof_rows("t", 300).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    // The token's lifetime passes.
    assert!(wait_until(LONG, || api
        .server
        .issued_tokens()
        .iter()
        .all(|token| token_expired(token))));
    site.drop_file("pr-t2.csv", proof_rows("u", 300).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 2),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 600);
    assert_eq!(api.server.duplicates(), 0);
    assert!(
        api.server.sessions_opened() >= 2,
        "a new session for the second file"
    );
    daemon.stop_cleanly();
}

#[test]
fn a_ready_token_is_used_and_never_logged() {
    let token = "static-token-9d3c2b1a";
    let api = BackgroundApi::start(ServerOptions {
        static_tokens: vec![token.into()],
        ..ServerOptions::default()
    });
    let site = Site::with_sink(
        IMPORT,
        &http_sink(&api.server.base_url(), "token_env = \"CD_TEST_TOKEN\"", ""),
    );
    ConfigDoc::read(&site.config)
        .set("import[0].disable_integrations", true)
        .write(&site.config);
    let daemon = site.start_with_env(&[("CD_TEST_TOKEN", token), ("RUST_LOG", "debug")]);
    site.drop_file("pr-token.csv", proof_rows("s", 20).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 20);
    let queries: HashSet<String> = api.server.queries().into_iter().collect();
    assert!(queries.iter().all(|q| q.contains("organization_id=org-1") && q.contains("disable_integrations=true")), "{queries:?}");
    assert!(api
        .server
        .user_agents()
        .iter()
        .all(|ua| ua.starts_with("consent-drop/")));
    daemon.stop_cleanly();
    assert!(
        !site.log().contains(token),
        "the token never appears in the log"
    );
}
