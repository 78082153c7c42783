//! File storms: thousands of small files at once, the normal case (SPEC §4
//! step 6). Every event once, every file archived, nothing left behind; to
//! the API, the events of the small files share requests (SPEC §2).
//!
//! The default run is a small storm; `STORM_FILES` (renamed in while the
//! daemon runs) and `STORM_WAITING` (in the drop folder before it starts)
//! set the full size, e.g. `STORM_FILES=5000 STORM_WAITING=1000`.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use api_server::{BackgroundApi, ServerOptions};
use harness::{
    api_key_credentials, env_number, http_sink, proof_rows, wait_until, Daemon, Site, IMPORT,
};

const ROWS: usize = 20;

fn count_reports(dir: &Path) -> usize {
    let mut count = 0;
    let Ok(days) = std::fs::read_dir(dir) else {
        return 0;
    };
    for day in days.flatten() {
        if let Ok(entries) = std::fs::read_dir(day.path()) {
            count += entries
                .flatten()
                .filter(|entry| {
                    entry
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".report.json")
                })
                .count();
        }
    }
    count
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

/// The storm's size: files renamed in while the daemon runs, and files
/// waiting before it starts.
fn storm_size() -> (usize, usize) {
    (
        env_number("STORM_FILES", 400) as usize,
        env_number("STORM_WAITING", 100) as usize,
    )
}

/// Writes the waiting files into the drop folder, starts the daemon, then
/// renames the others in, as a partner's upload does. Returns the daemon
/// and the number of files.
fn storm(site: &Site, (renamed, waiting): (usize, usize)) -> (Daemon, usize) {
    let staging = site.path("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    for index in 0..waiting + renamed {
        let name = format!("pr-storm-{index:06}.csv");
        let text = proof_rows(&format!("s{index}x"), ROWS);
        let folder = if index < waiting {
            &site.drop
        } else {
            &staging
        };
        std::fs::write(folder.join(name), text).expect("write");
    }
    let daemon = site.start();
    for index in waiting..waiting + renamed {
        let name = format!("pr-storm-{index:06}.csv");
        std::fs::rename(staging.join(&name), site.drop.join(&name)).expect("rename in");
    }
    (daemon, waiting + renamed)
}

fn wait_for_archive(site: &Site, files: usize) {
    let archive = site.state.join("archive");
    assert!(
        wait_until(Duration::from_secs(600), || count_reports(&archive)
            == files),
        "{} of {files} files archived; log:\n{}",
        count_reports(&archive),
        site.log()
    );
}

/// Every file archived beside its report, nothing left in the drop folder
/// or `processing/`.
fn assert_all_archived(site: &Site, files: usize) {
    assert!(is_empty(&site.drop), "nothing left in the drop folder");
    assert!(
        is_empty(&site.state.join("processing")),
        "nothing left in processing/"
    );
    assert_eq!(
        site.files_under("archive").len(),
        2 * files,
        "every file archived beside its report, no rejects"
    );
}

#[test]
fn a_storm_of_small_files_is_delivered_once_and_archived() {
    let site = Site::new(IMPORT);
    let (daemon, files) = storm(&site, storm_size());
    wait_for_archive(&site, files);
    daemon.stop_cleanly();
    let events = site.outbox_events();
    assert_eq!(events.len(), files * ROWS, "every event in the sink");
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), files * ROWS, "every event exactly once");
    assert_all_archived(&site, files);
}

#[test]
fn a_storm_to_the_api_shares_requests_and_delivers_every_event_once() {
    let api = BackgroundApi::start(ServerOptions::default());
    let secrets = tempfile::tempdir().expect("tmp");
    let site = Site::with_sink(
        IMPORT,
        &http_sink(
            &api.server.base_url(),
            &api_key_credentials(secrets.path(), "test-secret"),
            "concurrency = 4\nbatch_size = 100",
        ),
    );
    let (daemon, files) = storm(&site, storm_size());
    wait_for_archive(&site, files);
    daemon.stop_cleanly();

    let events = files * ROWS;
    assert_eq!(api.server.event_count(), events, "every event at the API");
    assert_eq!(
        api.server.event_ids().len(),
        events,
        "every event once, by id"
    );
    assert_eq!(api.server.duplicates(), 0, "nothing sent twice");
    let requests = api.server.requests() as usize;
    // The default `max_files_in_flight`.
    let in_flight = 64;
    eprintln!(
        "{files} files of {ROWS} rows: {requests} requests, {:.1} per 1,000 events",
        1000.0 * requests as f64 / events as f64
    );
    assert!(
        requests as f64 <= 1.1 * (events as f64 / 100.0) + in_flight as f64,
        "{requests} requests for {events} events: small files do not share requests"
    );
    assert_all_archived(&site, files);
}
