//! The consents API as it runs: organizations in the body and per import,
//! rate limits announced in headers, purposes checked before the first drop.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use api_server::{BackgroundApi, ServerOptions};
use harness::{api_key_credentials, http_sink, proof_rows, wait_until, Site, IMPORT, LONG};

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
