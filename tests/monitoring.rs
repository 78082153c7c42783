//! The alert rules and the dashboard under monitoring/: every metric they
//! use is one a running daemon really exports, and promtool accepts them.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use harness::{wait_until, Site, IMPORT, LONG};

const RULES: &str = "monitoring/consent-drop.rules.yml";
const RULE_TESTS: &str = "monitoring/consent-drop.rules.test.yml";
const DASHBOARD: &str = "monitoring/consent-drop.dashboard.json";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{}: {err}", full.display()))
}

/// The `consent_drop_…` names a text uses (rules, queries: anything).
fn metric_names_used(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("consent_drop_") {
        let start = at + found;
        let starts_a_word = start == 0 || !is_name_byte(bytes[start - 1]);
        let end = start
            + text[start..]
                .bytes()
                .take_while(|b| is_name_byte(*b))
                .count();
        if starts_a_word {
            names.insert(text[start..end].to_string());
        }
        at = end;
    }
    names
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':'
}

/// The sample names of a scrape (`name{labels} value` or `name value`).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The names `text` uses that `exported` lacks.
fn unknown_names(text: &str, exported: &BTreeSet<String>) -> Vec<String> {
    metric_names_used(text)
        .into_iter()
        .filter(|name| !exported.contains(name))
        .collect()
}

/// A daemon with its metrics listener on a port the system picks; its
/// /metrics text once `ready` holds for it.
fn scrape_a_running_daemon() -> String {
    scrape_when(&Site::new(IMPORT), |text| {
        text.contains("consent_drop_build_info")
    })
}

fn scrape_when(site: &Site, ready: impl Fn(&str) -> bool) -> String {
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .expect("config");
    writeln!(config, "\n[metrics]\nlisten = \"127.0.0.1:0\"").expect("append [metrics]");
    drop(config);
    let daemon = site.start();
    let mut port = None;
    assert!(
        wait_until(LONG, || {
            port = metrics_port(&site.log());
            port.is_some()
        }),
        "no metrics listener; log:\n{}",
        site.log()
    );
    let port = port.unwrap_or(0);
    let mut text = String::new();
    assert!(
        wait_until(LONG, || {
            text = get_metrics(port).unwrap_or_default();
            ready(&text)
        }),
        "not the metrics awaited from port {port}:\n{text}"
    );
    daemon.stop_cleanly();
    text
}

fn metrics_port(log: &str) -> Option<u16> {
    let line = log
        .lines()
        .find(|line| line.contains("metrics on /metrics and /healthz"))?;
    let (_, after) = line.split_once("127.0.0.1:")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn get_metrics(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[test]
fn every_metric_of_the_rules_and_the_dashboard_is_exported_and_a_typo_is_caught() {
    let scrape = scrape_a_running_daemon();
    let exported = exported_names(&scrape);
    assert!(
        exported.contains("consent_drop_files_failed_total")
            && exported.contains("consent_drop_oldest_waiting_file_age_seconds")
            && exported.contains("consent_drop_request_duration_seconds_bucket"),
        "{exported:?}"
    );
    for path in [RULES, RULE_TESTS, DASHBOARD] {
        let text = read(path);
        let used = metric_names_used(&text);
        assert!(used.len() >= 3, "{path} uses {used:?}");
        assert_eq!(
            unknown_names(&text, &exported),
            Vec::<String>::new(),
            "{path} uses metrics the daemon does not export"
        );
    }
    // The check does catch a name that is not exported.
    let typo = read(RULES).replace(
        "consent_drop_files_failed_total",
        "consent_drop_files_faild_total",
    );
    assert_eq!(
        unknown_names(&typo, &exported),
        vec!["consent_drop_files_faild_total".to_string()]
    );
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn the_oldest_waiting_file_gauge_follows_a_file_left_in_the_drop_folder() {
    let site = Site::new(IMPORT);
    // Matches no import: it waits in the drop folder for an operator.
    let stuck = site.drop.join("unknown-partner.csv");
    std::fs::write(&stuck, "a@b.co;x;01/01/2020 00:00:00;1.2.3.4\n").expect("write");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stuck)
        .and_then(|file| file.set_modified(two_hours_ago))
        .expect("mtime");
    let text = scrape_when(&site, |text| {
        sample(text, "consent_drop_oldest_waiting_file_age_seconds").is_some_and(|age| age > 7000.0)
    });
    let age = sample(&text, "consent_drop_oldest_waiting_file_age_seconds").unwrap_or(0.0);
    assert!((7000.0..7300.0).contains(&age), "{age}");
    assert_eq!(sample(&text, "consent_drop_submission_paused"), Some(0.0));
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_in_every_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{panel}"
            );
        }
    }
}

/// promtool (Debian's `prometheus` package) checks the rules and runs
/// their unit tests. `.ci/run` installs it and sets CONSENT_DROP_REQUIRE_PROMTOOL=1;
/// elsewhere the test says it is skipped.
#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let required = std::env::var_os("CONSENT_DROP_REQUIRE_PROMTOOL").is_some();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(root)
            .output()
    };
    match run(&["check", "rules", RULES]) {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check rules:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(err) if !required => {
            eprintln!("promtool not found ({err}): skipped (apt-get install prometheus)");
            return;
        }
        Err(err) => panic!("promtool: {err}"),
    }
    let output = run(&["test", "rules", RULE_TESTS]).expect("promtool");
    assert!(
        output.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn names_are_read_as_whole_words() {
    let used = metric_names_used(
        "rate(consent_drop_a_total[5m]) / xconsent_drop_b + consent_drop_c{x=\"y\"} job=\"consent-drop\"",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        vec!["consent_drop_a_total", "consent_drop_c"]
    );
    let exported = exported_names(
        "# TYPE x gauge\nconsent_drop_a_total 1\nconsent_drop_h_bucket{le=\"1\"} 0\n",
    );
    assert!(
        exported.contains("consent_drop_a_total") && exported.contains("consent_drop_h_bucket")
    );
}
