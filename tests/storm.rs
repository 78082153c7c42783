//! File storms: thousands of small files at once, the normal case (SPEC §4
//! step 6). Every event once, every file archived, nothing left behind.
//!
//! The default run is a small storm; `STORM_FILES` (renamed in while the
//! daemon runs) and `STORM_WAITING` (in the drop folder before it starts)
//! set the full size, e.g. `STORM_FILES=5000 STORM_WAITING=1000`.

#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use harness::{env_number, proof_rows, wait_until, Site, IMPORT};

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

#[test]
fn a_storm_of_small_files_is_delivered_once_and_archived() {
    let renamed = env_number("STORM_FILES", 400) as usize;
    let waiting = env_number("STORM_WAITING", 100) as usize;
    let site = Site::new(IMPORT);
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
    let files = waiting + renamed;
    let archive = site.state.join("archive");
    assert!(
        wait_until(Duration::from_secs(600), || count_reports(&archive)
            == files),
        "{} of {files} files archived; log:\n{}",
        count_reports(&archive),
        site.log()
    );
    daemon.stop_cleanly();
    let events = site.outbox_events();
    assert_eq!(events.len(), files * ROWS, "every event in the sink");
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), files * ROWS, "every event exactly once");
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
