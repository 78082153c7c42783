//! Reliability: the promises of "never lose, never duplicate" under
//! crashes, a misbehaving API and a full disk, proven against the real
//! binary.
//!
//! Every long test is `#[ignore]`d: `scripts/reliability.sh` runs them with
//! short defaults (what CI runs), `scripts/reliability.sh --long` with the
//! full sizes. Sizes and rounds come from the environment:
//!
//! | variable | default | full run |
//! |---|---|---|
//! | `CRASH_ROUNDS` | 3 | 20 |
//! | `CRASH_ROWS` | 10000 | 200000 |
//! | `CRASH_SEED` | 0xC0FFEE | any |
//! | `CRASH_STORM_FILES` | 300 | 3000 |
//! | `CHAOS_ROWS` | 10000 | 100000 |
//! | `FULLDISK_ROWS` | 20000 | 100000 |
//!
//! The full-disk tests mount a tmpfs (root only); without the permission
//! they print why and pass, unless `CONSENT_DROP_REQUIRE_ROOT=1`.
//!
//! Tests named `regression_*` reproduce bugs this suite found, now fixed.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_server::{ApiServer, BackgroundApi, ServerOptions};
use harness::{
    env_number, http_sink, path_value, proof_rows, wait_until, ConfigDoc, Site, XorShift, IMPORT,
    LONG,
};

/// A site whose sink is the test API, with an API key and a secret file.
fn http_site(api: &ApiServer, concurrency: usize) -> Site {
    // The secret goes into the site's own folder, which exists only once the
    // site does: the credentials are set after.
    let sink = http_sink(&api.base_url(), "", &format!("concurrency = {concurrency}"));
    let site = Site::with_sink(IMPORT, &sink);
    let secret_file = site.path("secret");
    std::fs::write(&secret_file, "test-secret").expect("secret");
    ConfigDoc::read(&site.config)
        .set("sink.api_key", "test-key")
        .set("sink.secret_file", path_value(&secret_file))
        .write(&site.config);
    site
}

/// SQLite's own check of the journal: no page is corrupt.
fn assert_journal_intact(site: &Site) {
    let path = site.state.join("journal.sqlite");
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the journal");
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity_check");
    assert_eq!(verdict, "ok", "journal integrity");
}

/// The journal has `file` archived with all its rows accepted and every
/// batch acknowledged.
fn assert_journal_archived(site: &Site, file: &str, rows: u64) {
    let journal = site.status(1000);
    let occurrence = journal
        .iter()
        .find(|o| o["file_name"] == file)
        .unwrap_or_else(|| panic!("{file} is not in the journal: {journal:?}"));
    assert_eq!(occurrence["status"], "archived", "{occurrence}");
    assert_eq!(occurrence["rows_accepted"], rows, "{occurrence}");
    assert_eq!(
        occurrence["batches_acked"], occurrence["batches_total"],
        "{occurrence}"
    );
}

fn archived(site: &Site) -> usize {
    site.reports("archive").len()
}

fn scaled_timeout(rows: u64) -> Duration {
    Duration::from_secs(120 + rows / 500)
}

// --------------------------------------------------------------- crash loop

/// `kill -9` at random moments while a file goes to the test API,
/// restarting each time; at the end every event is at the API exactly once.
#[test]
#[ignore = "long: CRASH_ROUNDS, CRASH_ROWS, CRASH_SEED"]
fn crash_loop_kill_9_at_random_moments_delivers_every_event_once() {
    let rounds = env_number("CRASH_ROUNDS", 3);
    let rows = env_number("CRASH_ROWS", 10_000);
    let seed = env_number("CRASH_SEED", 0xC0FFEE);
    let late_rows = 500;
    let concurrency = 4;
    let api = BackgroundApi::start(ServerOptions::default());
    let site = http_site(&api.server, concurrency);
    // Slow the API so that the delivery lasts about a second per round:
    // the kills land in the validation pass, mid-delivery and at the start.
    let batches = rows.div_ceil(100).max(1);
    let delay_ms = (rounds * 1_000 * concurrency as u64 / batches).clamp(1, 200);
    api.server.set_delay(Duration::from_millis(delay_ms));
    let max_pause = env_number("CRASH_MAX_PAUSE_MS", 1_500);
    let mut rng = XorShift::new(seed);
    eprintln!(
        "crash loop: {rounds} rounds, {rows} rows, seed {seed:#x}, API delay {delay_ms} ms, pauses up to {max_pause} ms"
    );
    site.drop_file("pr-crash.csv", proof_rows("k", rows as usize).as_bytes());
    let started = Instant::now();
    let mut unrecorded = 0u64;
    for round in 1..=rounds {
        let mut daemon = site.start();
        if round == 2 {
            // A second file, so that some kill may land on a claim.
            site.drop_file("pr-late.csv", proof_rows("late", late_rows).as_bytes());
        }
        let pause = rng.between(50, max_pause.max(50));
        std::thread::sleep(Duration::from_millis(pause));
        daemon.kill9();
        // What the killed daemon had in flight may still be stored: it was
        // sent before the kill, so it counts as at the server, not re-sent.
        assert!(
            wait_until(LONG, || api.server.in_flight() == 0),
            "the server finishes the requests of the killed daemon"
        );
        let at_server = api.server.event_count();
        let journal = site.status(1000);
        // Rows the journal records as acknowledged (the last batch may be short).
        let recorded: u64 = journal
            .iter()
            .map(|o| {
                let acked = o["batches_acked"].as_u64().unwrap_or(0)
                    * o["batch_size"].as_u64().unwrap_or(100);
                acked.min(o["rows_accepted"].as_u64().unwrap_or(u64::MAX))
            })
            .sum();
        unrecorded += (at_server as u64).saturating_sub(recorded);
        let states: Vec<String> = journal
            .iter()
            .map(|o| {
                format!(
                    "{}={}",
                    o["file_name"].as_str().unwrap_or("?"),
                    o["status"].as_str().unwrap_or("?")
                )
            })
            .collect();
        eprintln!(
            "round {round:>3}: kill -9 after {pause:>4} ms: {at_server:>7} events at the API, {recorded:>7} recorded, duplicates so far {}, {}",
            api.server.duplicates(),
            states.join(" ")
        );
        assert!(
            recorded <= at_server as u64,
            "the journal records {recorded} rows acknowledged, the API has only {at_server}"
        );
    }
    api.server.set_delay(Duration::ZERO);
    let mut daemon = site.start();
    let total = rows as usize + if rounds >= 2 { late_rows } else { 0 };
    let files = if rounds >= 2 { 2 } else { 1 };
    assert!(
        wait_until(scaled_timeout(rows), || archived(&site) == files
            && site.files_under("processing").is_empty()),
        "every file archived after the last restart; processing/: {:?}\nlog:\n{}",
        site.files_under("processing"),
        site.log()
    );
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let duplicates = api.server.duplicates();
    eprintln!(
        "crash loop done in {:.1} s: {rounds} kills, {} events, {} ids, {duplicates} duplicate deliveries absorbed by the API, {} requests",
        started.elapsed().as_secs_f64(),
        api.server.event_count(),
        api.server.event_ids().len(),
        api.server.requests()
    );
    assert!(
        duplicates <= unrecorded,
        "only what was at the API but not recorded at a kill is sent again: {duplicates} duplicates, {unrecorded} unrecorded"
    );
    assert_eq!(
        api.server.event_count(),
        total,
        "every event at the API once"
    );
    assert_eq!(api.server.event_ids().len(), total, "by id");
    assert!(
        site.files_under("processing").is_empty(),
        "nothing left in processing/"
    );
    assert!(site.files_under("failed").is_empty(), "nothing failed");
    assert_journal_intact(&site);
    assert_journal_archived(&site, "pr-crash.csv", rows);
    if rounds >= 2 {
        assert_journal_archived(&site, "pr-late.csv", late_rows as u64);
    }
    let events = api.server.events();
    let lines: HashSet<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["metadata"]["source_file"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                e["metadata"]["source_line"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(lines.len(), total, "every proof line once");
}

/// Rows the journal records as acknowledged, all occurrences together (a
/// file's last batch may be short).
fn recorded_rows(site: &Site) -> u64 {
    site.status(1_000_000)
        .iter()
        .map(|o| {
            let acked =
                o["batches_acked"].as_u64().unwrap_or(0) * o["batch_size"].as_u64().unwrap_or(100);
            acked.min(o["rows_accepted"].as_u64().unwrap_or(u64::MAX))
        })
        .sum()
}

/// `kill -9` at random moments while a storm of small files goes to the
/// test API, whose requests they share; at the end every event is at the
/// API exactly once, and only what was at the API but not recorded at a
/// kill was sent again.
#[test]
#[ignore = "long: CRASH_ROUNDS, CRASH_STORM_FILES, CRASH_SEED"]
fn crash_loop_kill_9_in_a_storm_to_the_api_resends_only_unacknowledged_batches() {
    let rounds = env_number("CRASH_ROUNDS", 3);
    let files = env_number("CRASH_STORM_FILES", 300) as usize;
    let seed = env_number("CRASH_SEED", 0xC0FFEE);
    let rows = 20;
    let concurrency = 4;
    let in_flight = 64; // the default max_files_in_flight
    let api = BackgroundApi::start(ServerOptions::default());
    let site = http_site(&api.server, concurrency);
    // Slow answers stretch the storm over the rounds.
    api.server.set_delay(Duration::from_millis(20));
    let max_pause = env_number("CRASH_MAX_PAUSE_MS", 1_500);
    let mut rng = XorShift::new(seed);
    eprintln!("storm crash loop: {rounds} rounds, {files} files of {rows} rows, seed {seed:#x}");
    let staging = site.path("staging");
    std::fs::create_dir_all(&staging).expect("staging");
    for index in 0..files {
        let text = proof_rows(&format!("c{index}x"), rows);
        std::fs::write(staging.join(format!("pr-storm-{index:05}.csv")), text).expect("write");
    }
    let mut unrecorded = 0u64;
    for round in 1..=rounds {
        let mut daemon = site.start();
        if round == 1 {
            for index in 0..files {
                let name = format!("pr-storm-{index:05}.csv");
                std::fs::rename(staging.join(&name), site.drop.join(&name)).expect("rename in");
            }
        }
        let pause = rng.between(50, max_pause.max(50));
        std::thread::sleep(Duration::from_millis(pause));
        daemon.kill9();
        assert!(
            wait_until(LONG, || api.server.in_flight() == 0),
            "the server finishes the requests of the killed daemon"
        );
        let at_server = api.server.event_count() as u64;
        let recorded = recorded_rows(&site);
        assert!(
            recorded <= at_server,
            "the journal records {recorded} rows acknowledged, the API has only {at_server}"
        );
        let this_kill = at_server - recorded;
        eprintln!(
            "round {round:>3}: kill -9 after {pause:>4} ms: {at_server:>7} events at the API, {recorded:>7} recorded, {} archived, duplicates so far {}",
            archived(&site),
            api.server.duplicates()
        );
        assert!(
            this_kill <= ((concurrency + in_flight) * 100) as u64,
            "{this_kill} events at the API but not recorded at one kill"
        );
        unrecorded += this_kill;
    }
    api.server.set_delay(Duration::ZERO);
    let starts = site.log().matches("consent-drop is running").count();
    let mut daemon = site.start();
    // Running (its signal handlers set) before it is asked to stop: the
    // files may all be archived already.
    assert!(
        wait_until(LONG, || site
            .log()
            .matches("consent-drop is running")
            .count()
            > starts),
        "log:\n{}",
        site.log()
    );
    assert!(
        wait_until(scaled_timeout((files * rows) as u64), || archived(&site)
            == files
            && site.files_under("processing").is_empty()),
        "every file archived after the last restart; log:\n{}",
        site.log()
    );
    let status = daemon.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let total = files * rows;
    let duplicates = api.server.duplicates();
    eprintln!(
        "storm crash loop done: {rounds} kills, {} events, {duplicates} duplicates absorbed by the API, {unrecorded} unrecorded at the kills, {} requests",
        api.server.event_count(),
        api.server.requests()
    );
    assert!(
        duplicates <= unrecorded,
        "only what was at the API but not recorded at a kill is sent again: {duplicates} duplicates, {unrecorded} unrecorded"
    );
    assert_eq!(
        api.server.event_count(),
        total,
        "every event at the API once"
    );
    assert_eq!(api.server.event_ids().len(), total, "by id");
    assert!(site.files_under("failed").is_empty(), "nothing failed");
    assert_journal_intact(&site);
    let journal = site.status(1_000_000);
    assert_eq!(journal.len(), files, "one occurrence a file");
    assert!(
        journal.iter().all(|o| o["status"] == "archived"
            && o["batches_acked"] == o["batches_total"]
            && o["rows_accepted"] == rows as u64),
        "every file archived with every batch acknowledged"
    );
}

// ---------------------------------------------------------------- API chaos

/// 30% of 503s, bursts of 429, slow answers, dropped connections and
/// revoked session tokens for a whole import: everything delivered, once,
/// and the journal consistent.
#[test]
#[ignore = "long: CHAOS_ROWS"]
fn api_chaos_for_a_whole_import_delivers_everything_once() {
    let rows = env_number("CHAOS_ROWS", 10_000);
    let api = Arc::new(BackgroundApi::start(ServerOptions::default()));
    let site = http_site(&api.server, 4);
    api.server.set_fail_ratio(0.3);
    let stop = Arc::new(AtomicBool::new(false));
    let chaos = {
        let api = api.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = XorShift::new(env_number("CHAOS_SEED", 0xCA05));
            // Every kind of fault at least once, from the first requests.
            api.server.set_429_burst(4, 1);
            api.server.drop_connections(2);
            let mut actions = [1u64, 1, 0, 0, 0];
            let deadline = Instant::now() + scaled_timeout(rows);
            // Each injected fault (429 or dropped connection) waits for
            // enough requests to pass: the faults take at most about a
            // third of the requests, on top of the 30% of 503s, so that the
            // last batches of a file are not starved by the test itself.
            let mut faults_until = 20u64;
            let mut revoked = false;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut action = rng.between(0, 4) as usize;
                let requests = api.server.requests();
                if !revoked && requests > 30 {
                    action = 3;
                    revoked = true;
                }
                if action <= 1 && requests < faults_until {
                    action = 4;
                }
                actions[action] += 1;
                match action {
                    0 => {
                        let burst = rng.between(2, 8);
                        api.server.set_429_burst(burst, 1);
                        faults_until = requests + 3 * burst;
                    }
                    1 => {
                        let dropped = rng.between(1, 4);
                        api.server.drop_connections(dropped);
                        faults_until = requests + 3 * dropped;
                    }
                    2 => api
                        .server
                        .set_delay(Duration::from_millis(rng.between(50, 400))),
                    3 => api.server.revoke_tokens(),
                    _ => api.server.set_delay(Duration::ZERO),
                }
                std::thread::sleep(Duration::from_millis(rng.between(100, 600)));
            }
            actions
        })
    };
    let started = Instant::now();
    let mut daemon = site.start();
    site.drop_file("pr-chaos.csv", proof_rows("c", rows as usize).as_bytes());
    let done = wait_until(scaled_timeout(rows), || archived(&site) == 1);
    stop.store(true, Ordering::Relaxed);
    let actions = chaos.join().expect("chaos thread");
    assert!(done, "archived despite the chaos; log:\n{}", site.log());
    assert!(
        wait_until(LONG, || site.files_under("processing").is_empty()),
        "processing/ empties"
    );
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    eprintln!(
        "API chaos: {rows} rows in {:.1} s, {} requests, {} duplicates absorbed; 429 bursts {}, dropped connections {}, slow spells {}, tokens revoked {}, back to fast {}",
        started.elapsed().as_secs_f64(),
        api.server.requests(),
        api.server.duplicates(),
        actions[0],
        actions[1],
        actions[2],
        actions[3],
        actions[4]
    );
    assert_eq!(api.server.event_count(), rows as usize, "every event once");
    assert_eq!(api.server.event_ids().len(), rows as usize);
    assert!(site.files_under("failed").is_empty());
    assert_journal_archived(&site, "pr-chaos.csv", rows);
    let report = &site.reports("archive")[0];
    assert_eq!(report["rows_delivered"], rows, "{report}");
    assert_eq!(report["rows_refused"], 0, "{report}");
}

// ---------------------------------------------------------------- full disk

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mb` MiB on `dir`; None (with the reason printed)
    /// when this process may not mount.
    fn mount(dir: &Path, mb: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("mount point");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir)
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(output) => String::from_utf8_lossy(&output.stderr).trim().to_string(),
                    Err(err) => err.to_string(),
                };
                assert!(
                    std::env::var("CONSENT_DROP_REQUIRE_ROOT").as_deref() != Ok("1"),
                    "CONSENT_DROP_REQUIRE_ROOT=1 but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs here ({why}); run as root, or set CONSENT_DROP_REQUIRE_ROOT=1 to fail instead");
                None
            }
        }
    }

    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.dir.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: statvfs(3) fills the struct we own.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
        assert_eq!(rc, 0, "statvfs");
        stat.f_bavail as u64 * stat.f_frsize as u64
    }

    /// Fills the file system until `leave` bytes are free.
    fn fill(&self, leave: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let size = self.free_bytes().saturating_sub(leave);
        let file = std::fs::File::create(&filler).expect("filler");
        let mut writer = std::io::BufWriter::new(file);
        let block = vec![0xA5u8; 64 * 1024];
        let mut written = 0;
        while written < size {
            let n = (size - written).min(block.len() as u64) as usize;
            if std::io::Write::write_all(&mut writer, &block[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = std::io::Write::flush(&mut writer);
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let status = std::process::Command::new("umount").arg(&self.dir).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status();
        }
    }
}

/// A file-sink site whose state folder and outbox are on a small tmpfs.
fn full_disk_site(mb: u64) -> Option<(Site, Tmpfs)> {
    let site = Site::new(IMPORT);
    let tmpfs = Tmpfs::mount(&site.state, mb)?;
    let outbox = site.state.join("outbox");
    std::fs::create_dir_all(&outbox).expect("outbox");
    std::os::unix::fs::symlink(&outbox, &site.outbox).expect("outbox link");
    Some((site, tmpfs))
}

fn outbox_ids(site: &Site) -> (usize, usize) {
    let events = site.outbox_events();
    let ids: HashSet<String> = events
        .iter()
        .filter_map(|e| e["id"].as_str().map(str::to_string))
        .collect();
    (events.len(), ids.len())
}

/// The outbox fills the state's file system mid-import: a clear error, the
/// journal intact, the file kept in processing/, nothing failed; once the
/// space is back the import completes with every event once.
#[test]
#[ignore = "long, root: mounts a tmpfs (FULLDISK_ROWS)"]
fn full_disk_during_delivery_keeps_the_file_and_completes_when_space_returns() {
    let rows = env_number("FULLDISK_ROWS", 20_000);
    // Room for the outbox of every row (about 700 bytes an event), twice.
    let mb = (rows * 1_400 / (1 << 20)).max(16) + 8;
    let Some((site, tmpfs)) = full_disk_site(mb) else {
        return;
    };
    let content = proof_rows("f", rows as usize);
    // Room for the claimed copy, the journal and a fraction of the outbox.
    let filler = tmpfs.fill(content.len() as u64 + 1_500_000);
    eprintln!(
        "tmpfs {mb} MiB, {} bytes free before the claim of a {}-byte file",
        tmpfs.free_bytes(),
        content.len()
    );
    let daemon = site.start();
    site.drop_file("pr-full.csv", content.as_bytes());
    assert!(
        wait_until(LONG, || site.log().contains("No space left on device")),
        "a clear error in the log; log:\n{}",
        site.log()
    );
    // The daemon runs on the full disk for a while (two scans, a second
    // apart) before the journal is looked at.
    assert!(site.wait_for_scans(2), "log:\n{}", site.log());
    let journal = site.status(1000);
    assert_journal_intact(&site);
    eprintln!(
        "disk full: {}",
        site.log()
            .lines()
            .find(|l| l.contains("No space left"))
            .unwrap_or("")
    );
    let occurrence = journal
        .iter()
        .find(|o| o["file_name"] == "pr-full.csv")
        .expect("claimed and recorded");
    assert!(
        matches!(
            occurrence["status"].as_str(),
            Some("claimed" | "validated" | "delivering")
        ),
        "not final while the disk is full: {occurrence}"
    );
    assert_eq!(
        site.files_under("processing").len(),
        1,
        "the proof file waits in processing/"
    );
    assert!(
        site.files_under("failed").is_empty(),
        "our full disk never fails a proof file"
    );
    assert_eq!(archived(&site), 0);

    std::fs::remove_file(&filler).expect("space returns");
    assert!(
        wait_until(Duration::from_secs(180), || archived(&site) == 1
            && site.files_under("processing").is_empty()),
        "archived once space returns; log:\n{}",
        site.log()
    );
    let (events, ids) = outbox_ids(&site);
    eprintln!("after the full disk: {events} events, {ids} ids in the outbox");
    assert_eq!(events, rows as usize, "every event in the outbox");
    assert_eq!(ids, rows as usize, "each once");
    assert_journal_intact(&site);
    assert_journal_archived(&site, "pr-full.csv", rows);
    daemon.stop_cleanly();
    drop(tmpfs);
}

/// The disk is full before the claim: the copy into processing/ fails. The
/// file must stay in the drop folder and be claimed once space returns.
#[test]
#[ignore = "opt-in: mounts a tmpfs (root)"]
fn regression_full_disk_at_the_claim_then_space_returns_the_file_is_imported() {
    let rows = env_number("FULLDISK_ROWS", 20_000);
    let mb = (rows * 1_400 / (1 << 20)).max(16) + 8;
    let Some((site, tmpfs)) = full_disk_site(mb) else {
        return;
    };
    let content = proof_rows("g", rows as usize);
    let filler = tmpfs.fill(content.len() as u64 / 2);
    let daemon = site.start();
    site.drop_file("pr-claim-full.csv", content.as_bytes());
    assert!(
        wait_until(LONG, || site.log().contains("No space left on device")),
        "a clear error in the log; log:\n{}",
        site.log()
    );
    assert!(
        site.drop.join("pr-claim-full.csv").exists(),
        "left in the drop folder"
    );
    let _ = site.status(1000);
    std::fs::remove_file(&filler).expect("space returns");
    let imported = wait_until(LONG, || {
        archived(&site) == 1 && site.files_under("processing").is_empty()
    });
    let leftovers: Vec<PathBuf> = site
        .files_under("processing")
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".claiming"))
        .collect();
    assert!(
        imported,
        "not imported within 30 s of the space returning (rescan_s = 1); still in the drop folder: {}; processing/: {:?}\nlog:\n{}",
        site.drop.join("pr-claim-full.csv").exists(),
        site.files_under("processing"),
        site.log()
    );
    assert!(leftovers.is_empty(), "partial copies left: {leftovers:?}");
    let (events, ids) = outbox_ids(&site);
    assert_eq!((events, ids), (rows as usize, rows as usize));
    daemon.stop_cleanly();
    drop(tmpfs);
}
