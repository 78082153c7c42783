//! `consent-drop run` against real folders: readiness, claims, crashes.

#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use harness::{proof_rows, wait_until, ConfigDoc, Site, IMPORT, LONG};

fn ids(events: &[serde_json::Value]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("").to_string())
        .collect()
}

const TWO_IMPORTS: &str = r#"
[[import]]
name = "news"
pattern = "^pr-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
default_purpose = "email_global"
[import.subscriptions]
"12" = "newsletter_weekly"

[[import]]
name = "shop"
pattern = "^shop_"
date_format = "yyyy-MM-dd HH:mm:ss"
separator = ","
default_purpose = "shop_offers"
"#;

#[test]
fn files_for_several_imports_are_delivered_and_archived() {
    let site = Site::new(TWO_IMPORTS);
    let daemon = site.start();
    site.drop_file("pr-a.csv", proof_rows("a", 120).as_bytes());
    site.drop_file("pr-b.csv", proof_rows("b", 30).as_bytes());
    site.drop_file(
        "shop_1.csv",
        b"email,purpose,date,origin\nx@shop.com,offers,2021-01-02 03:04:05,2001:DB8::1\ny@shop.com,offers,2021-01-02 03:04:06,10.0.0.1\n",
    );
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 3),
        "three reports expected; log:\n{}",
        site.log()
    );
    let events = site.outbox_events();
    assert_eq!(events.len(), 152);
    assert_eq!(ids(&events).len(), 152, "every id once");
    let shop: Vec<_> = events
        .iter()
        .filter(|e| e["metadata"]["import"] == "shop")
        .collect();
    assert_eq!(shop.len(), 2);
    assert_eq!(shop[0]["consents"]["purposes"][0]["id"], "shop_offers");
    assert_eq!(shop[0]["metadata"]["consent_origin"], "2001:db8::1");
    assert_eq!(shop[0]["created_at"], "2021-01-02T03:04:05Z");
    for report in site.reports("archive") {
        assert_eq!(report["status"], "archived");
        assert_eq!(report["rows_rejected"], 0);
    }
    assert!(
        std::fs::read_dir(&site.drop)
            .expect("drop")
            .next()
            .is_none(),
        "drop folder emptied"
    );
    daemon.stop_cleanly();
}

#[test]
fn a_slow_writer_is_read_once_and_complete() {
    let site = Site::new(IMPORT);
    let daemon = site.start();
    let content = proof_rows("slow", 60);
    let (first, second) = content.split_at(content.len() / 2);
    let path = site.drop.join("pr-slow.csv");
    let mut writer = std::fs::File::create(&path).expect("create");
    writer.write_all(first.as_bytes()).expect("first half");
    writer.flush().expect("flush");
    // An SFTP client paused on a slow link: the file stays open, unchanged,
    // for longer than settle_ms (two scans are a second apart).
    assert!(site.wait_for_scans(2), "log:\n{}", site.log());
    assert!(
        path.exists(),
        "an open file is never claimed; log:\n{}",
        site.log()
    );
    writer.write_all(second.as_bytes()).expect("second half");
    drop(writer);
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    let events = site.outbox_events();
    assert_eq!(events.len(), 60, "the whole file, once");
    daemon.stop_cleanly();
}

#[test]
fn kill_9_mid_file_then_restart_delivers_everything_exactly_once() {
    let site = Site::new(IMPORT);
    let rows = 300_000;
    let mut daemon = site.start();
    site.drop_file("pr-big.csv", proof_rows("k", rows).as_bytes());
    // The file sink is written in the read that validates: its events are
    // in the `.partial` file, not acknowledged, until the file passed.
    let partial_bytes = || {
        std::fs::read_dir(&site.outbox)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".ndjson.partial")
            })
            .filter_map(|entry| entry.metadata().ok())
            .map(|meta| meta.len())
            .sum::<u64>()
    };
    assert!(
        wait_until(LONG, || partial_bytes() > 0),
        "delivery started; log:\n{}",
        site.log()
    );
    daemon.kill9();
    assert!(site.reports("archive").is_empty(), "killed before the end");
    assert!(partial_bytes() > 0, "events were staged before the kill");
    assert!(site.outbox_events().is_empty(), "none in a complete file");
    let journal = site.journal();
    assert_eq!(journal[0]["status"], "claimed", "not validated yet");
    assert_eq!(journal[0]["batches_acked"].as_u64().unwrap_or(0), 0);

    let daemon = site.start();
    // The report is written just before the file leaves processing/.
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1
            && site.files_under("processing").is_empty()),
        "processing/: {:?}; log:\n{}",
        site.files_under("processing"),
        site.log()
    );
    let events = site.outbox_events();
    assert_eq!(events.len(), rows, "no event lost, none written twice");
    assert_eq!(ids(&events).len(), rows);
    assert!(site.log().contains("resuming"), "log:\n{}", site.log());
    daemon.stop_cleanly();
}

#[test]
fn the_same_file_twice_is_imported_once_and_odd_entries_are_never_opened() {
    let site = Site::new(IMPORT);
    let daemon = site.start();
    site.drop_file("pr-once.csv", proof_rows("o", 5).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    site.drop_file("pr-once-again.csv", proof_rows("o", 5).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 2),
        "log:\n{}",
        site.log()
    );
    let duplicate = site
        .reports("archive")
        .into_iter()
        .find(|r| r["status"] == "duplicate");
    assert!(duplicate.is_some(), "second copy recorded as duplicate");
    assert_eq!(site.outbox_events().len(), 5, "sent once");

    let outside = site.path("outside-secret.csv");
    std::fs::write(&outside, proof_rows("s", 3)).expect("write");
    std::os::unix::fs::symlink(&outside, site.drop.join("pr-link.csv")).expect("symlink");
    let fifo = site.drop.join("pr-fifo.csv");
    let c_path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    site.drop_file("pr-upload.csv.part", proof_rows("p", 3).as_bytes());
    site.drop_file(".pr-hidden.csv", proof_rows("h", 3).as_bytes());
    site.drop_file("unmatched.csv", proof_rows("u", 3).as_bytes());
    // Several rescans (rescan_s = 1) and settle periods pass.
    assert!(wait_until(LONG, || site
        .log()
        .contains("matches no import")));
    assert!(site.wait_for_scans(3), "log:\n{}", site.log());
    for name in [
        "pr-link.csv",
        "pr-fifo.csv",
        "pr-upload.csv.part",
        ".pr-hidden.csv",
        "unmatched.csv",
    ] {
        assert!(
            site.drop.join(name).symlink_metadata().is_ok(),
            "{name} left in place"
        );
    }
    assert_eq!(site.outbox_events().len(), 5, "nothing read from them");
    assert_eq!(
        site.log().matches("matches no import").count(),
        1,
        "logged once"
    );
    daemon.stop_cleanly();
}

#[test]
fn sigterm_mid_file_then_restart_loses_nothing() {
    let site = Site::new(IMPORT);
    let rows = 200_000;
    let mut daemon = site.start();
    site.drop_file("pr-term.csv", proof_rows("t", rows).as_bytes());
    assert!(
        wait_until(LONG, || site.files_under("processing").len() == 1),
        "claimed; log:\n{}",
        site.log()
    );
    let status = daemon
        .terminate(Duration::from_secs(60))
        .expect("exits well inside the stop timeout");
    assert!(status.success());
    assert!(
        site.log().contains("checkpointed"),
        "stopped mid-file; log:\n{}",
        site.log()
    );
    assert_eq!(
        site.files_under("processing").len(),
        1,
        "the file waits in processing/"
    );
    let daemon = site.start();
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    let events = site.outbox_events();
    assert_eq!(events.len(), rows);
    assert_eq!(ids(&events).len(), rows);
    daemon.stop_cleanly();
}

#[test]
fn a_bad_config_stops_the_daemon_with_exit_2() {
    let site = Site::new(
        &ConfigDoc::of(IMPORT)
            .change("import[0].separator", "|")
            .text(),
    );
    let output = site
        .command()
        .args(["run", "-c"])
        .arg(&site.config)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("separator"));
}

#[test]
fn sighup_reloads_the_config_and_a_bad_one_is_refused() {
    let site = Site::new(IMPORT);
    let daemon = site.start();
    site.drop_file(
        "shop_1.csv",
        b"email,purpose,date,origin\nx@shop.com,offers,2021-01-02 03:04:05,10.0.0.1\n",
    );
    assert!(
        wait_until(LONG, || site.log().contains("matches no import")),
        "log:\n{}",
        site.log()
    );

    // A broken config: logged, the running one kept.
    let good = std::fs::read_to_string(&site.config).expect("config");
    ConfigDoc::of(&good)
        .change("import[0].separator", "|")
        .write(&site.config);
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || site.log().contains("configuration not reloaded")),
        "log:\n{}",
        site.log()
    );

    // A good one with a new import: the waiting file is taken.
    let with_shop = format!(
        "{good}\n[[import]]\nname = \"shop\"\npattern = \"^shop_\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\nseparator = \",\"\ndefault_purpose = \"shop_offers\"\n"
    );
    std::fs::write(&site.config, with_shop).expect("write");
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(site.outbox_events()[0]["metadata"]["import"], "shop");
}

/// An `import` beside the daemon copies into processing/ too: a daemon
/// starting meanwhile leaves that copy alone (its writer holds a lock on it
/// until its rename) and removes the one an interrupted copy left.
#[test]
fn start_up_removes_an_abandoned_copy_but_not_one_being_written() {
    use std::os::fd::AsRawFd;
    let site = Site::new(IMPORT);
    let processing = site.state.join("processing");
    std::fs::create_dir_all(&processing).expect("processing/");
    let abandoned = processing.join("0f0e0d0c0b0a09080706050403020100.claiming");
    let in_use = processing.join("000102030405060708090a0b0c0d0e0f.claiming");
    std::fs::write(&abandoned, "half a copy").expect("write");
    let writer = std::fs::File::create(&in_use).expect("create");
    // SAFETY: a valid open descriptor; flock only takes its lock.
    let locked = unsafe { libc::flock(writer.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0, "the test holds the copy's lock");
    let daemon = site.start();
    assert!(
        wait_until(LONG, || site.log().contains("consent-drop is running")),
        "log:\n{}",
        site.log()
    );
    assert!(
        !abandoned.exists(),
        "an abandoned copy is removed at start-up"
    );
    assert!(
        in_use.exists(),
        "a copy being written is left to its writer"
    );
    daemon.stop_cleanly();
    drop(writer);
}
