//! A site for integration tests: a drop folder, a state folder, an outbox,
//! a config, and the real binary started against them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for what must happen. Passing tests never wait this
/// long: every wait polls its condition and returns as soon as it holds.
pub const LONG: Duration = Duration::from_secs(120);

pub const IMPORT: &str = r#"
[[import]]
name = "news"
pattern = "^pr-.*$"
date_format = "dd/MM/yyyy HH:mm:ss"
timezone = "Europe/Paris"
separator = ";"
encoding = "auto"
default_purpose = "email_global"
[import.user_metadata]
source = "partner-x"
[import.subscriptions]
"12" = "newsletter_weekly"
"#;

pub struct Site {
    pub root: tempfile::TempDir,
    pub drop: PathBuf,
    pub state: PathBuf,
    pub outbox: PathBuf,
    pub config: PathBuf,
}

impl Site {
    /// A site with the file sink (to the site's outbox) and the given imports.
    pub fn new(imports: &str) -> Site {
        Site::with_sink(imports, "kind = \"file\"\nbatch_size = 100")
    }

    /// `sink` is the body of the [sink] table; a file sink without `dir`
    /// writes to the site's outbox.
    pub fn with_sink(imports: &str, sink: &str) -> Site {
        let root = tempfile::tempdir().expect("tempdir");
        let drop = root.path().join("drop");
        let state = root.path().join("state");
        let outbox = root.path().join("outbox");
        std::fs::create_dir_all(&drop).expect("drop folder");
        let config = root.path().join("consent-drop.toml");
        let mut doc = ConfigDoc::of(&format!("[sink]\n{sink}\n{imports}"))
            .set("watch", toml::Table::new())
            .set("watch.dir", path_value(&drop))
            .set("watch.settle_ms", 300)
            .set("watch.rescan_s", 1)
            .set("state", toml::Table::new())
            .set("state.dir", path_value(&state));
        if doc.get("sink.kind").and_then(toml::Value::as_str) == Some("file")
            && doc.get("sink.dir").is_none()
        {
            doc = doc.set("sink.dir", path_value(&outbox));
        }
        doc.write(&config);
        Site {
            root,
            drop,
            state,
            outbox,
            config,
        }
    }

    pub fn command(&self) -> assert_cmd::Command {
        let mut command = assert_cmd::Command::cargo_bin("consent-drop").expect("binary");
        command.env_remove("RUST_LOG");
        command
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Starts `consent-drop run` with stderr captured in `daemon.log`.
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let log = self.path("daemon.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let mut command = Command::new(assert_cmd::cargo::cargo_bin("consent-drop"));
        command
            .args(["run", "-c"])
            .arg(&self.config)
            // The watch module's debug lines tell each scan (see `wait_for_scans`).
            .env("RUST_LOG", "info,consent_drop::watch=debug")
            .stdout(Stdio::null())
            .stderr(log_file);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start daemon");
        Daemon { child, log }
    }

    /// `consent-drop import --quiet` of one proof file with this site's config.
    pub fn import(&self, file: &Path) -> std::process::Output {
        self.command()
            .args(["import", "--quiet", "-c"])
            .arg(&self.config)
            .arg(file)
            .output()
            .expect("run import")
    }

    /// The journal's recent occurrences, as `status --json` prints them.
    pub fn journal(&self) -> serde_json::Value {
        let output = self
            .command()
            .args(["status", "--json", "-c"])
            .arg(&self.config)
            .output()
            .expect("status");
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Up to `limit` occurrences of the journal, newest first, as `status
    /// --json` prints them; the command must succeed.
    pub fn status(&self, limit: usize) -> Vec<serde_json::Value> {
        let output = self
            .command()
            .args(["status", "--json", "--limit", &limit.to_string(), "-c"])
            .arg(&self.config)
            .output()
            .expect("status");
        assert!(
            output.status.success(),
            "status --json fails: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        match serde_json::from_slice(&output.stdout).expect("status --json is JSON") {
            serde_json::Value::Array(list) => list,
            other => panic!("status --json is not a list: {other}"),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// How many scans of the drop folder the daemon has logged so far.
    pub fn scans(&self) -> usize {
        self.log().matches("drop folder scanned").count()
    }

    /// Waits until the daemon has scanned the drop folder `more` times from
    /// now: with `rescan_s = 1`, proof that seconds passed in which it saw
    /// the folder and could act on what is there (for "nothing happens" checks).
    pub fn wait_for_scans(&self, more: usize) -> bool {
        let target = self.scans() + more;
        wait_until(LONG, || self.scans() >= target)
    }

    /// Writes a file atomically into the drop folder (as a rename would).
    pub fn drop_file(&self, name: &str, content: &[u8]) {
        let staging = self.path(&format!("staging-{name}"));
        std::fs::write(&staging, content).expect("write");
        std::fs::rename(&staging, self.drop.join(name)).expect("rename into drop");
    }

    /// Every event in the completed outbox files.
    pub fn outbox_events(&self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return events;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if path.extension().and_then(|e| e.to_str()) != Some("ndjson") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("outbox file");
            for line in text.lines() {
                events.push(serde_json::from_str(line).expect("event JSON"));
            }
        }
        events
    }

    /// Every `.report.json` under archive/ or failed/.
    pub fn reports(&self, under: &str) -> Vec<serde_json::Value> {
        let mut reports = Vec::new();
        collect(&self.state.join(under), &mut |path| {
            if path.to_string_lossy().ends_with(".report.json") {
                let text = std::fs::read_to_string(path).expect("report");
                reports.push(serde_json::from_str(&text).expect("report JSON"));
            }
        });
        reports
    }

    pub fn files_under(&self, under: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        collect(&self.state.join(under), &mut |path| {
            files.push(path.to_path_buf())
        });
        files
    }
}

fn collect(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, visit);
        } else {
            visit(&path);
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (None if it did not exit in time).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Daemon {
    /// SIGTERM, and the daemon must exit cleanly well inside a stop timeout.
    pub fn stop_cleanly(mut self) {
        let status = self.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "clean exit: {status:?}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of an http `[sink]` table for a test API on loopback, with short
/// retry delays; `credentials` and `extra` are more lines of the table.
pub fn http_sink(base_url: &str, credentials: &str, extra: &str) -> String {
    format!(
        "kind = \"http\"\nbase_url = \"{base_url}\"\norganization_id = \"org-1\"\nallow_insecure_http = true\n\
         retry_initial_ms = 20\nretry_max_ms = 300\nauth_retry_s = 1\ntimeout_s = 5\n{credentials}\n{extra}"
    )
}

/// Writes `secret` to `dir/secret`; the sink lines for the test API's key with it.
pub fn api_key_credentials(dir: &Path, secret: &str) -> String {
    let secret_file = dir.join("secret");
    std::fs::write(&secret_file, secret).expect("secret");
    format!("api_key = \"test-key\"\nsecret_file = {secret_file:?}")
}

/// A path as a TOML string.
pub fn path_value(path: &Path) -> toml::Value {
    toml::Value::String(path.to_string_lossy().into_owned())
}

/// A config as typed TOML values, changed key by key path (`sink.gzip`,
/// `import[0].separator`). A change to a key that is not there (or a table
/// that is not there) fails the test: it never silently does nothing, as a
/// text replacement does once the base text changes.
#[derive(Debug, Clone)]
pub struct ConfigDoc(toml::Table);

impl ConfigDoc {
    /// Config text (a whole file, or some of its tables, such as [`IMPORT`]).
    pub fn of(text: &str) -> ConfigDoc {
        ConfigDoc(toml::from_str(text).unwrap_or_else(|err| panic!("test config: {err}\n{text}")))
    }

    pub fn read(path: &Path) -> ConfigDoc {
        ConfigDoc::of(&std::fs::read_to_string(path).expect("read config"))
    }

    /// The value at `key`, if there is one.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        let (parents, last) = split_key(key);
        let mut table = &self.0;
        for (name, index) in parents {
            let value = table.get(name)?;
            table = match index {
                Some(index) => value.as_array()?.get(index)?.as_table()?,
                None => value.as_table()?,
            };
        }
        table.get(last)
    }

    /// Sets `key` (new or not) in a table that must exist.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> ConfigDoc {
        let (table, last) = self.parent(key);
        table.insert(last.to_string(), value.into());
        self
    }

    /// Changes the value of `key`, which must be set already.
    pub fn change(mut self, key: &str, value: impl Into<toml::Value>) -> ConfigDoc {
        let (table, last) = self.parent(key);
        let slot = table
            .get_mut(last)
            .unwrap_or_else(|| panic!("test config: {key} is not set"));
        *slot = value.into();
        self
    }

    /// Removes `key`, which must be set, and returns its value with the doc.
    pub fn take(mut self, key: &str) -> (ConfigDoc, toml::Value) {
        let (table, last) = self.parent(key);
        let value = table
            .remove(last)
            .unwrap_or_else(|| panic!("test config: {key} is not set"));
        (self, value)
    }

    /// Renames `key` (to misspell it, say), keeping its value.
    pub fn rename(self, key: &str, to: &str) -> ConfigDoc {
        let (parent, _) = key.rsplit_once('.').unwrap_or(("", key));
        let (doc, value) = self.take(key);
        let target = if parent.is_empty() {
            to.to_string()
        } else {
            format!("{parent}.{to}")
        };
        doc.set(&target, value)
    }

    pub fn text(&self) -> String {
        toml::to_string(&self.0).expect("config as TOML")
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text()).expect("write config");
    }

    fn parent<'k>(&mut self, key: &'k str) -> (&mut toml::Table, &'k str) {
        let (parents, last) = split_key(key);
        let mut table = &mut self.0;
        for (name, index) in parents {
            let value = table
                .get_mut(name)
                .unwrap_or_else(|| panic!("test config: no {name} in {key}"));
            let value = match index {
                Some(index) => value
                    .as_array_mut()
                    .and_then(|array| array.get_mut(index))
                    .unwrap_or_else(|| panic!("test config: no {name}[{index}] in {key}")),
                None => value,
            };
            table = value
                .as_table_mut()
                .unwrap_or_else(|| panic!("test config: {name} in {key} is not a table"));
        }
        (table, last)
    }
}

/// `import[0].user_metadata.source` → ([("import", Some(0)), ("user_metadata", None)], "source").
fn split_key(key: &str) -> (Vec<(&str, Option<usize>)>, &str) {
    let mut segments: Vec<&str> = key.split('.').collect();
    let last = segments.pop().unwrap_or("");
    let parents = segments
        .into_iter()
        .map(|segment| match segment.split_once('[') {
            Some((name, index)) => (
                name,
                Some(
                    index
                        .trim_end_matches(']')
                        .parse()
                        .unwrap_or_else(|_| panic!("test config: bad index in {key}")),
                ),
            ),
            None => (segment, None),
        })
        .collect();
    (parents, last)
}

/// Whether a JWT's `exp` (Unix seconds, in its payload) has passed: the
/// test API refuses it from then on. An unreadable token counts as expired.
pub fn token_expired(token: &str) -> bool {
    use base64::Engine as _;
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims["exp"].as_u64());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    exp.is_none_or(|exp| now >= exp)
}

/// Polls `condition` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `rows` valid rows for the `news` import: distinct e-mails, a header.
pub fn proof_rows(prefix: &str, rows: usize) -> String {
    let mut text = String::from("email;purpose;date;origin;subscription\n");
    for i in 0..rows {
        let day = 1 + i % 28;
        let second = i % 60;
        let subscription = if i % 3 == 0 { "12" } else { "" };
        text.push_str(&format!(
            "{prefix}{i}@example.com;J'accepte la lettre d'information;{day:02}/06/2020 21:28:{second:02};203.0.113.{};{subscription}\n",
            i % 250
        ));
    }
    text
}

/// A number from the environment (decimal, or hex with `0x`), for the knobs
/// of the longer suites; `default` when unset. A value that is set but not a
/// number stops the test rather than being silently ignored.
pub fn env_number(name: &str, default: u64) -> u64 {
    let Ok(value) = std::env::var(name) else {
        return default;
    };
    let text = value.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("{name}={value:?} is not a number"))
}

/// xorshift64*: deterministic pseudo-random numbers for a seed, no `rand` crate.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
