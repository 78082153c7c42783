//! The consents API as it runs: organizations in the body and per import,
//! rate limits announced in headers, purposes checked before the first drop.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use api_server::{BackgroundApi, ServerOptions};
use harness::{
    api_key_credentials, http_sink, proof_rows, wait_until, ConfigDoc, Site, IMPORT, LONG,
};

/// A second import, `backfill`, for files `bf-*`, that names its own organization.
const SECOND_ORG_IMPORT: &str = r#"
[[import]]
name = "backfill"
pattern = "^bf-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
default_purpose = "email_global"
organization_id = "org-2"
[import.subscriptions]
"12" = "newsletter_weekly"
"#;

#[test]
fn every_event_names_its_organization_and_two_organizations_never_share_a_request() {
    let api = BackgroundApi::start(ServerOptions::default());
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        &format!("{IMPORT}{SECOND_ORG_IMPORT}"),
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "concurrency = 4\nbatch_size = 30",
        ),
    );
    let daemon = site.start();
    for n in 0..4 {
        site.drop_file(
            &format!("pr-news-{n}.csv"),
            proof_rows(&format!("n{n}-"), 70).as_bytes(),
        );
        site.drop_file(
            &format!("bf-old-{n}.csv"),
            proof_rows(&format!("b{n}-"), 70).as_bytes(),
        );
    }
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 8),
        "log:\n{}",
        site.log()
    );
    let events = api.server.events();
    assert_eq!(events.len(), 8 * 70, "every event at the server");
    for event in &events {
        let expected = match event["metadata"]["import"].as_str() {
            Some("news") => "org-1",
            Some("backfill") => "org-2",
            other => panic!("unexpected import {other:?}"),
        };
        assert_eq!(event["organization_id"], expected, "{event}");
    }
    // The server refuses a request whose events name another organization
    // than its query (400): none was refused, and none mixed them.
    let requests = api.server.request_organizations();
    assert!(!requests.is_empty());
    for orgs in &requests {
        assert!(orgs.windows(2).all(|w| w[0] == w[1]), "{orgs:?}");
    }
    for query in api.server.queries() {
        assert!(
            query.contains("organization_id=org-1") || query.contains("organization_id=org-2"),
            "{query}"
        );
    }
    for report in site.reports("archive") {
        assert_eq!(report["rows_refused"], 0, "{report}");
        let expected = if report["import"] == "backfill" {
            "org-2"
        } else {
            "org-1"
        };
        assert_eq!(report["organization_id"], expected, "{report}");
    }
    let status = site
        .command()
        .args(["status", "-c"])
        .arg(&site.config)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("organization") && text.contains("org-2"),
        "{text}"
    );
    let listed = site.status(20);
    assert!(
        listed.iter().any(|o| o["organization_id"] == "org-2")
            && listed.iter().any(|o| o["organization_id"] == "org-1"),
        "{listed:?}"
    );
    daemon.stop_cleanly();
}

/// One file of `requests` × 100 rows through the daemon, at a server that
/// allows 20 requests per 2 s, announced in headers or not. Returns the
/// server's 429s and the delivery's duration.
fn deliver_under_a_rate_limit(requests: usize, announce: bool) -> (u64, Duration) {
    let api = BackgroundApi::start(ServerOptions::default());
    api.server
        .set_rate_limit(20, Duration::from_secs(2), announce);
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "concurrency = 4\nbatch_size = 100",
        ),
    );
    let rows = requests * 100;
    let daemon = site.start();
    let started = std::time::Instant::now();
    site.drop_file("pr-paced.csv", proof_rows("r", rows).as_bytes());
    // 20 requests per 2 s, and as much again for the retries of 429s.
    let enough = Duration::from_secs(60 + requests as u64 / 4);
    assert!(
        wait_until(enough, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    let took = started.elapsed();
    assert_eq!(api.server.event_count(), rows, "every event delivered");
    let report = &site.reports("archive")[0];
    assert_eq!(report["rows_delivered"], rows as u64, "{report}");
    let limited = api.server.rate_limited();
    eprintln!(
        "{requests} requests at 20 per 2 s, headers {}: {} requests in all, {limited} answered 429, {took:?}",
        if announce { "on" } else { "off" },
        api.server.requests()
    );
    daemon.stop_cleanly();
    (limited, took)
}

/// How many requests the rate-limit tests make: a few windows by default,
/// `CONSENT_DROP_RATE_REQUESTS=1000` for the full case (`.ci/run`).
fn rate_requests() -> usize {
    harness::env_number("CONSENT_DROP_RATE_REQUESTS", 60) as usize
}

#[test]
fn announced_rate_limits_are_kept_without_a_single_429() {
    let (limited, _) = deliver_under_a_rate_limit(rate_requests(), true);
    assert_eq!(limited, 0, "the pacing works before the fallback does");
}

#[test]
fn without_the_headers_the_429_fallback_still_delivers_everything() {
    let (limited, _) = deliver_under_a_rate_limit(rate_requests(), false);
    assert!(limited > 0, "the server did refuse requests over its limit");
}

/// A test API whose organizations have `purposes`, two to a page.
fn api_with_purposes(purposes: &[&str]) -> BackgroundApi {
    BackgroundApi::start(ServerOptions {
        purposes: Some(purposes.iter().map(|p| p.to_string()).collect()),
        purposes_page_limit: 2,
        ..ServerOptions::default()
    })
}

fn http_site(api: &BackgroundApi, imports: &str) -> (Site, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        imports,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "",
        ),
    );
    (site, root)
}

/// `check --online`: its exit code and its output.
fn check_online(site: &Site) -> (i32, String) {
    let output = site
        .command()
        .args(["check", "--online", "-c"])
        .arg(&site.config)
        .output()
        .expect("check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn check_online_reads_every_page_of_purposes_and_names_what_is_missing() {
    // Five purposes, two to a page: the mapped ones are on pages 2 and 3.
    let api = api_with_purposes(&["a", "b", "email_global", "c", "newsletter_weekly"]);
    let (site, _root) = http_site(&api, IMPORT);
    let (code, text) = check_online(&site);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("default_purpose \"email_global\": present")
            && text.contains("subscriptions.\"12\" \"newsletter_weekly\": present"),
        "{text}"
    );
    assert!(text.contains("which has 5"), "{text}");
    let skips: Vec<String> = api
        .server
        .purpose_queries()
        .iter()
        .map(|q| {
            q.split('&')
                .find(|p| p.starts_with("%24skip=") || p.starts_with("$skip="))
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(skips.len(), 3, "every page fetched: {skips:?}");
    assert!(api
        .server
        .purpose_queries()
        .iter()
        .all(|q| q.contains("organization_id=org-1")));

    // A missing default purpose.
    let missing_default = ConfigDoc::of(IMPORT)
        .change("import[0].default_purpose", "email_everything")
        .text();
    let (site, _root) = http_site(&api, &missing_default);
    let (code, text) = check_online(&site);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("default_purpose \"email_everything\": MISSING from organization org-1"),
        "{text}"
    );
    assert!(text.contains("\"newsletter_weekly\": present"), "{text}");

    // A missing subscription mapping, and passthrough said to be unverifiable.
    let missing_subscription = ConfigDoc::of(IMPORT)
        .change("import[0].subscriptions.12", "newsletter_daily")
        .set("import[0].unknown_subscription", "passthrough")
        .text();
    let (site, _root) = http_site(&api, &missing_subscription);
    let (code, text) = check_online(&site);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("subscriptions.\"12\" \"newsletter_daily\": MISSING"),
        "{text}"
    );
    assert!(text.contains("\"email_global\": present"), "{text}");
    assert!(
        text.contains("passthrough") && text.contains("unverifiable"),
        "{text}"
    );
}

#[test]
fn the_daemon_warns_of_missing_purposes_at_start_and_on_sighup() {
    let api = api_with_purposes(&["email_global", "x", "y"]);
    let (site, _root) = http_site(&api, IMPORT);
    let daemon = site.start();
    assert!(
        wait_until(LONG, || site.log().contains("\"newsletter_weekly\"")
            && site.log().contains("is missing from organization org-1")),
        "log:\n{}",
        site.log()
    );
    assert!(
        !site.log().contains("\"email_global\" (default_purpose"),
        "{}",
        site.log()
    );
    // It runs all the same: events of the present purpose go through, the
    // others are refused by the API and land in the rejects.
    site.drop_file("pr-mixed.csv", proof_rows("m", 30).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    let report = &site.reports("archive")[0];
    assert_eq!(report["rows_refused"], 10, "{report}");
    assert_eq!(api.server.event_count(), 20);

    ConfigDoc::read(&site.config)
        .change("import[0].default_purpose", "email_other")
        .write(&site.config);
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || site.log().contains(
            "purpose \"email_other\" (default_purpose of import \"news\") is missing"
        )),
        "log:\n{}",
        site.log()
    );
    daemon.stop_cleanly();
}

#[test]
fn a_malformed_rate_limit_header_is_ignored_with_one_warning() {
    let api = BackgroundApi::start(ServerOptions::default());
    api.server
        .set_raw_ratelimit(Some("limit=lots, remaining=?, reset=soon"));
    let root = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(root.path(), "test-secret"),
            "batch_size = 10",
        ),
    );
    let daemon = site.start();
    site.drop_file("pr-junk-headers.csv", proof_rows("j", 200).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(api.server.event_count(), 200);
    assert!(api.server.requests() >= 20);
    daemon.stop_cleanly();
    let log = site.log();
    let warnings = log
        .lines()
        .filter(|line| line.contains("rate-limit header that does not parse"))
        .count();
    assert_eq!(warnings, 1, "one warning for 20 answers:\n{log}");
    assert!(log.contains("limit=lots"), "the warning quotes it:\n{log}");
}
