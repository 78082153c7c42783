//! Operating `consent-drop run`: systemd notifications, metrics and
//! `/healthz`, log formats. The real binary on temporary folders, the file
//! sink; every wait polls a condition.

#[path = "support/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{env_number, proof_rows, wait_until, Site, IMPORT, LONG};

/// `consent-drop <args>` with stderr in `<site>/<log>`; killed on drop.
struct Process {
    child: Child,
}

impl Process {
    fn start(site: &Site, args: &[&str], env: &[(&str, &str)], log: &str) -> Process {
        let log_file = std::fs::File::create(site.path(log)).expect("log file");
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("consent-drop"));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        Process {
            child: command.spawn().expect("start consent-drop"),
        }
    }

    fn run(site: &Site, env: &[(&str, &str)]) -> Process {
        let config = site.config.to_string_lossy().into_owned();
        Process::start(site, &["run", "-c", &config], env, "daemon.log")
    }

    /// SIGTERM, then the exit status (None if it did not exit in time).
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait(within)
    }

    fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(within, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A systemd notification socket: every datagram, with when it came.
struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::downgrade(&messages);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends when the test drops the socket's owner.
            while let Some(messages) = sink.upgrade() {
                if let Ok(read) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..read])
                        .trim_end()
                        .to_string();
                    messages
                        .lock()
                        .expect("messages")
                        .push((Instant::now(), text));
                }
            }
        });
        NotifySocket {
            path: path.to_path_buf(),
            messages,
        }
    }

    fn messages(&self) -> Vec<(Instant, String)> {
        self.messages.lock().expect("messages").clone()
    }

    fn count(&self, state: &str) -> usize {
        self.messages()
            .iter()
            .filter(|(_, message)| message.lines().any(|line| line == state))
            .count()
    }

    fn dump(&self) -> String {
        self.messages()
            .iter()
            .map(|(_, message)| message.replace('\n', " | "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// 10 valid rows and 2 that are rejected (a bad e-mail, an impossible date).
fn mixed_rows(prefix: &str) -> String {
    proof_rows(prefix, 10)
        + "not-an-email;J'accepte;01/06/2020 21:28:00;203.0.113.1;\n"
        + &format!("{prefix}x@example.com;J'accepte;31/02/2020 21:28:00;203.0.113.1;\n")
}

/// Asks for the metrics listener on a port the system picks (no port is
/// guessed free and raced for).
fn with_metrics(site: &Site) {
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .expect("config");
    writeln!(config, "\n[metrics]\nlisten = \"127.0.0.1:0\"").expect("append [metrics]");
}

/// The port the daemon's metrics listener is bound to, from its start-up log line.
fn metrics_port(site: &Site) -> Option<u16> {
    let log = site.log();
    let line = log
        .lines()
        .find(|line| line.contains("metrics on /metrics and /healthz"))?;
    let (_, after) = line.split_once("127.0.0.1:")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One raw HTTP/1.1 exchange: (status code, body).
fn http(port: u16, request: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
}

/// The value of an unlabelled sample.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn systemd_hears_ready_after_the_start_up_scan_then_watchdog_pings_and_stopping() {
    let site = Site::new(IMPORT);
    // Found by the start-up scan: no event will ever tell about it.
    site.drop_file("pr-before-start.csv", proof_rows("early", 5).as_bytes());
    let notify = NotifySocket::bind(&site.path("notify.sock"));
    let socket = notify.path.to_string_lossy().into_owned();
    let mut daemon = Process::run(
        &site,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "200000")],
    );

    assert!(
        wait_until(LONG, || notify.count("READY=1") == 1),
        "no READY=1; messages:\n{}\nlog:\n{}",
        notify.dump(),
        site.log()
    );
    let messages = notify.messages();
    let (ready_at, ready) = messages
        .iter()
        .find(|(_, message)| message.lines().any(|line| line == "READY=1"))
        .cloned()
        .expect("READY=1");
    assert!(
        messages.first().is_some_and(|(_, first)| first == &ready),
        "nothing before READY=1:\n{}",
        notify.dump()
    );
    assert!(
        ready
            .lines()
            .any(|line| line.starts_with("STATUS=1 waiting, 0 in flight")),
        "READY=1 comes with the scan's findings: {ready:?}"
    );
    let log = site.log();
    let running = log.find("consent-drop is running").expect("running line");
    assert!(
        log[running..]
            .lines()
            .next()
            .is_some_and(|line| line.contains("waiting=1")),
        "{log}"
    );

    // The watchdog keeps pinging (how often is the loop's to promise, on
    // paused time: `daemon::schedule` tests, not a wall clock here).
    assert!(
        wait_until(LONG, || {
            notify
                .messages()
                .iter()
                .filter(|(at, message)| *at >= ready_at && message == "WATCHDOG=1")
                .count()
                >= 3
        }),
        "WATCHDOG=1 stopped; messages:\n{}",
        notify.dump()
    );

    // The file found by the scan goes through, and STATUS follows.
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert!(
        wait_until(LONG, || notify.messages().iter().any(
            |(_, message)| message == "STATUS=0 waiting, 0 in flight, 1 archived, 0 failed"
        )),
        "messages:\n{}",
        notify.dump()
    );

    let status = daemon.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|status| status.success()),
        "{status:?}\n{}",
        site.log()
    );
    assert!(
        wait_until(LONG, || notify.count("STOPPING=1") == 1),
        "no STOPPING=1; messages:\n{}",
        notify.dump()
    );
}

#[test]
fn no_watchdog_pings_when_they_are_meant_for_another_process() {
    let site = Site::new(IMPORT);
    let notify = NotifySocket::bind(&site.path("notify.sock"));
    let socket = notify.path.to_string_lossy().into_owned();
    let mut daemon = Process::run(
        &site,
        &[
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", "200000"),
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert!(
        wait_until(LONG, || notify.count("READY=1") == 1),
        "log:\n{}",
        site.log()
    );
    // A file through the loop: it ticks for well over 200 ms meanwhile.
    site.drop_file("pr-pid.csv", proof_rows("p", 3).as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert_eq!(notify.count("WATCHDOG=1"), 0, "{}", notify.dump());
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));
}

#[test]
fn metrics_count_an_imported_file_and_healthz_says_ok() {
    let site = Site::new(IMPORT);
    with_metrics(&site);
    let mut daemon = Process::run(&site, &[]);
    let mut port = 0;
    assert!(
        wait_until(LONG, || {
            port = metrics_port(&site).unwrap_or(0);
            port != 0
        }),
        "no metrics listener; log:\n{}",
        site.log()
    );
    assert!(
        wait_until(LONG, || get(port, "/healthz")
            .is_some_and(|(status, _)| status == 200)),
        "no /healthz; log:\n{}",
        site.log()
    );
    assert_eq!(
        get(port, "/healthz").map(|(_, body)| body),
        Some("ok\n".to_string())
    );

    site.drop_file("pr-metrics.csv", mixed_rows("m").as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    let report = &site.reports("archive")[0];
    assert_eq!(
        (
            report["rows_accepted"].as_u64(),
            report["rows_rejected"].as_u64()
        ),
        (Some(10), Some(2))
    );

    // The gauges settle on the next tick.
    let mut text = String::new();
    assert!(
        wait_until(LONG, || {
            text = get(port, "/metrics")
                .map(|(_, body)| body)
                .unwrap_or_default();
            sample(&text, "consent_drop_files_in_flight") == Some(0.0)
        }),
        "{text}"
    );
    for (name, value) in [
        ("consent_drop_files_seen_total", 1.0),
        ("consent_drop_files_claimed_total", 1.0),
        ("consent_drop_files_archived_total", 1.0),
        ("consent_drop_files_failed_total", 0.0),
        ("consent_drop_files_duplicate_total", 0.0),
        ("consent_drop_rows_accepted_total", 10.0),
        ("consent_drop_rows_rejected_total", 2.0),
        ("consent_drop_batches_acked_total", 1.0),
        ("consent_drop_files_waiting", 0.0),
        ("consent_drop_request_duration_seconds_count", 0.0),
    ] {
        assert_eq!(sample(&text, name), Some(value), "{name} in\n{text}");
    }
    assert!(
        text.contains("# TYPE consent_drop_request_duration_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains("consent_drop_request_duration_seconds_bucket{le=\"30.0\"} 0\n"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "consent_drop_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));

    // Garbage and odd requests get an answer, and the listener lives on.
    assert_eq!(get(port, "/nope").map(|(status, _)| status), Some(404));
    assert_eq!(
        http(port, "DELETE /metrics HTTP/1.1\r\n\r\n").map(|(status, _)| status),
        Some(405)
    );
    assert_eq!(
        http(port, "\u{1}\u{2}garbage\r\n\r\n").map(|(status, _)| status),
        Some(400)
    );
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent.write_all(b"GET /metr").expect("half a request");
    assert_eq!(get(port, "/healthz").map(|(status, _)| status), Some(200));
    drop(silent);

    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));
}

#[test]
fn a_taken_metrics_address_stops_the_start_and_names_the_key() {
    let site = Site::new(IMPORT);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port();
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(&site.config)
        .expect("config");
    writeln!(config, "\n[metrics]\nlisten = \"127.0.0.1:{port}\"").expect("append [metrics]");
    let mut daemon = Process::run(&site, &[]);
    let status = daemon.wait(LONG).expect("the daemon exits");
    assert!(!status.success());
    let log = site.log();
    assert!(log.contains("metrics.listen"), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
}

#[test]
fn json_logs_are_one_object_a_line_with_occurrence_and_import() {
    let site = Site::new(IMPORT);
    let config = site.config.to_string_lossy().into_owned();
    let mut daemon = Process::start(
        &site,
        &["--log-format", "json", "run", "-c", &config],
        &[],
        "daemon.log",
    );
    site.drop_file("pr-json.csv", mixed_rows("j").as_bytes());
    assert!(
        wait_until(LONG, || site.reports("archive").len() == 1),
        "log:\n{}",
        site.log()
    );
    assert!(
        wait_until(LONG, || site.log().contains("file done")),
        "log:\n{}",
        site.log()
    );
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));

    let log = site.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    assert!(lines.len() >= 4, "{log}");
    for line in &lines {
        assert!(line.is_object(), "{line}");
        assert!(
            line["timestamp"].is_string() && line["level"].is_string(),
            "{line}"
        );
        assert!(line["message"].is_string(), "{line}");
    }
    let about_the_file: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["file"] == "pr-json.csv")
        .collect();
    let messages: Vec<&str> = about_the_file
        .iter()
        .filter_map(|line| line["message"].as_str())
        .collect();
    assert!(
        messages.contains(&"claimed") && messages.contains(&"file done"),
        "{log}"
    );
    let occurrence = about_the_file[0]["occurrence"]
        .as_str()
        .expect("occurrence")
        .to_string();
    assert_eq!(occurrence.len(), 36, "a UUID: {occurrence}");
    for line in about_the_file {
        assert_eq!(
            line["occurrence"].as_str(),
            Some(occurrence.as_str()),
            "{line}"
        );
        assert_eq!(line["import"], "news", "{line}");
    }
    let done = lines
        .iter()
        .find(|line| line["message"] == "file done")
        .expect("file done");
    assert_eq!(
        (done["accepted"].as_u64(), done["rejected"].as_u64()),
        (Some(10), Some(2)),
        "{done}"
    );
}

#[test]
fn under_journald_human_lines_have_a_priority_and_no_timestamp() {
    use std::os::unix::fs::MetadataExt;
    let site = Site::new(IMPORT);
    let log = site.path("journal.log");
    std::fs::write(&log, b"").expect("log");
    let meta = std::fs::metadata(&log).expect("log metadata");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let config = site.config.to_string_lossy().into_owned();
    let mut daemon = Process::start(
        &site,
        &["run", "-c", &config],
        &[("JOURNAL_STREAM", &stream), ("NO_COLOR", "")],
        "journal.log",
    );
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("is running")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    std::fs::write(site.drop.join("unmatched.csv"), b"x").expect("unmatched file");
    assert!(wait_until(LONG, || std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("matches no import")));
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));
    let text = std::fs::read_to_string(&log).expect("log");
    for line in text.lines() {
        assert!(line.starts_with("<6>") || line.starts_with("<4>"), "{line}");
        assert!(!line.contains('\u{1b}'), "no colour: {line:?}");
        assert!(
            !line.as_bytes()[3..].starts_with(b"20"),
            "no timestamp: {line}"
        );
    }
    assert!(
        text.lines()
            .any(|line| line.starts_with("<4>") && line.contains("matches no import")),
        "{text}"
    );

    // A JOURNAL_STREAM inherited by a process whose stderr went elsewhere
    // is not believed: timestamps stay.
    let mut other = Process::start(
        &site,
        &["run", "-c", &config],
        &[("JOURNAL_STREAM", "1:1")],
        "other.log",
    );
    let other_log = site.path("other.log");
    assert!(wait_until(LONG, || std::fs::read_to_string(&other_log)
        .unwrap_or_default()
        .contains("is running")));
    assert!(other
        .terminate(Duration::from_secs(30))
        .is_some_and(|status| status.success()));
    let text = std::fs::read_to_string(&other_log).expect("log");
    assert!(text.lines().all(|line| line.starts_with("20")), "{text}");
}

/// A backlog found by the start-up scan (`STARTUP_FILES`, 20,000 by default;
/// 100,000 for a partner's whole backlog) is listed, settled and taken
/// without stalling the loop: the watchdog keeps pinging all along, every
/// gap well within systemd's timeout (which would kill the daemon).
#[test]
fn a_start_up_backlog_keeps_the_watchdog_pinging() {
    let files = env_number("STARTUP_FILES", 20_000) as usize;
    let site = Site::new(IMPORT);
    for n in 0..files {
        std::fs::write(
            site.drop.join(format!("pr-{n:06}.csv")),
            proof_rows(&format!("b{n}-"), 1),
        )
        .expect("write a waiting file");
    }
    let notify = NotifySocket::bind(&site.path("notify.sock"));
    let socket = notify.path.to_string_lossy().into_owned();
    let timeout = Duration::from_secs(2);
    let usec = timeout.as_micros().to_string();
    let mut daemon = Process::run(
        &site,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", &usec)],
    );
    assert!(
        wait_until(LONG, || notify.count("READY=1") == 1),
        "no READY=1; log:\n{}",
        site.log()
    );
    // Past the scan, the settling of every file and the first claims.
    assert!(
        wait_until(LONG * 2, || site.reports("archive").len() >= 300),
        "log:\n{}",
        site.log()
    );
    assert!(daemon
        .terminate(LONG)
        .is_some_and(|status| status.success()));
    let pings: Vec<Instant> = notify
        .messages()
        .iter()
        .filter(|(_, message)| {
            message
                .lines()
                .any(|line| line == "READY=1" || line == "WATCHDOG=1")
        })
        .map(|(at, _)| *at)
        .collect();
    let longest = pings
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or_default();
    assert!(pings.len() > 2, "{} pings", pings.len());
    assert!(
        longest < timeout,
        "{files} waiting files: {longest:?} without a ping (systemd kills after {timeout:?})"
    );
    eprintln!("{files} waiting files: longest gap between pings {longest:?}");
}
