//! A load generator for the consents-events API: measures how many requests
//! a second the API (typically the bundled `test_server` on loopback) takes
//! on its own, so that the benchmark can tell whether consent-drop or the
//! server is the bottleneck when the daemon delivers to it.
//!
//! ```text
//! cargo run --release --example api_load -- --url http://127.0.0.1:8080 \
//!     --organization bench --token TOKEN --concurrency 4 --batch 100 \
//!     outbox/*.ndjson
//! ```
//!
//! It reads NDJSON event files (one JSON object a line, as the `file` sink
//! writes them) and builds every request body (`[e1,e2,...]`, the events'
//! bytes as they are) before the clock starts. Then N tasks sharing one HTTP
//! client POST them to `{url}/consents/events?organization_id=ORG` as fast
//! as they can. Every request must get a 2xx: anything else is printed and
//! the program exits 1, without retrying. At the end it prints one line (`cpu_s`:
//! its own CPU time, user + system, while sending):
//!
//! ```text
//! requests 10000  events 1000000  seconds 12.34  requests/s 810.4  events/s 81037  cpu_s 1.02
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

const USAGE: &str = "usage: api_load --url URL --token TOKEN [--organization ORG] \
[--concurrency N] [--batch 1..100] [--timeout-s N] FILE.ndjson...";

struct Args {
    url: String,
    organization: String,
    token: String,
    concurrency: usize,
    batch: usize,
    timeout: Duration,
    files: Vec<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut url = None;
    let mut token = None;
    let mut parsed = Args {
        url: String::new(),
        organization: "bench".into(),
        token: String::new(),
        concurrency: 1,
        batch: 100,
        timeout: Duration::from_secs(30),
        files: Vec::new(),
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        if !flag.starts_with("--") {
            parsed.files.push(PathBuf::from(flag));
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag} {value:?}: {what}\n{USAGE}");
        match flag.as_str() {
            "--url" => url = Some(value),
            "--organization" => parsed.organization = value,
            "--token" => token = Some(value),
            "--concurrency" => {
                parsed.concurrency = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad("not a number of at least 1"))?
            }
            "--batch" => {
                parsed.batch = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| bad("not between 1 and 100 (the API's limit)"))?
            }
            "--timeout-s" => {
                parsed.timeout = value
                    .parse()
                    .ok()
                    .filter(|s| *s >= 1)
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad("not a number of seconds of at least 1"))?
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    parsed.url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    parsed.token = token.ok_or_else(|| format!("--token is required\n{USAGE}"))?;
    if parsed.organization.is_empty() {
        return Err(format!("--organization must not be empty\n{USAGE}"));
    }
    if parsed.files.is_empty() {
        return Err(format!("no NDJSON file given\n{USAGE}"));
    }
    Ok(parsed)
}

/// `{url}/consents/events?organization_id=ORG`, the organization encoded.
fn events_url(base: &str, organization: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(&format!("{}/consents/events", base.trim_end_matches('/')))
        .map_err(|err| format!("--url {base:?} is not a valid URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("--url {base:?}: not an http or https URL"));
    }
    url.query_pairs_mut()
        .append_pair("organization_id", organization);
    Ok(url)
}

/// The request bodies, in order, and how many events they carry.
struct Bodies {
    bodies: Vec<Vec<u8>>,
    events: usize,
}

/// Every event of `files`, `batch` to a body: `[` events joined by `,` `]`.
/// Each line must be a JSON object; blank lines are skipped.
fn build_bodies(files: &[PathBuf], batch: usize) -> Result<Bodies, String> {
    let mut bodies = Vec::new();
    let mut body = Vec::new();
    let mut in_body = 0;
    let mut events = 0;
    for path in files {
        let text = std::fs::read(path).map_err(|err| format!("{}: {err}", path.display()))?;
        for (index, line) in text.split(|b| *b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let problem = if line.first() != Some(&b'{') {
                Some("not a JSON object".to_string())
            } else {
                serde_json::from_slice::<serde::de::IgnoredAny>(line)
                    .err()
                    .map(|err| format!("not JSON: {err}"))
            };
            if let Some(problem) = problem {
                return Err(format!("{}:{}: {problem}", path.display(), index + 1));
            }
            body.push(if in_body == 0 { b'[' } else { b',' });
            body.extend_from_slice(line);
            in_body += 1;
            events += 1;
            if in_body == batch {
                body.push(b']');
                bodies.push(std::mem::take(&mut body));
                in_body = 0;
            }
        }
    }
    if in_body > 0 {
        body.push(b']');
        bodies.push(body);
    }
    Ok(Bodies { bodies, events })
}

/// POSTs one body; `Err` describes anything but a whole 2xx answer.
async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: &str,
    body: Vec<u8>,
) -> Result<(), String> {
    let response = client
        .post(url.clone())
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|err| format!("POST {url}: {}", describe(&err)))?;
    let status = response.status();
    let text = response.bytes().await;
    if !status.is_success() {
        let text = text.map(|b| String::from_utf8_lossy(&b).into_owned());
        let text = text.unwrap_or_else(|err| format!("(answer cut off: {})", describe(&err)));
        let text: String = text.chars().take(500).collect();
        return Err(format!("POST {url}: {status}: {text}"));
    }
    text.map(drop).map_err(|err| {
        format!(
            "POST {url}: {status}, but the answer was cut off: {}",
            describe(&err)
        )
    })
}

/// The error and its causes, on one line.
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// This process's CPU time so far (user + system, all threads), so that the
/// sending alone can be weighed against consent-drop's whole delivery.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let url = match events_url(&args.url, &args.organization) {
        Ok(url) => url,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let Bodies { bodies, events } = match build_bodies(&args.files, args.batch) {
        Ok(bodies) => bodies,
        Err(message) => {
            eprintln!("api_load: {message}");
            return ExitCode::from(2);
        }
    };
    if events == 0 {
        eprintln!("api_load: no event in the given files");
        return ExitCode::from(2);
    }
    let client = match reqwest::Client::builder()
        .timeout(args.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            eprintln!("api_load: cannot build the HTTP client: {}", describe(&err));
            return ExitCode::FAILURE;
        }
    };
    let requests = bodies.len();
    let queue = Arc::new(Mutex::new(bodies.into_iter()));
    let failed = Arc::new(AtomicBool::new(false));
    let token: Arc<str> = args.token.into();

    let started = Instant::now();
    let cpu_at_start = cpu_seconds();
    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        let (queue, failed) = (queue.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while !failed.load(Ordering::Relaxed) {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some(body) = next else { break };
                if let Err(message) = post(&client, &url, &token, body).await {
                    if !failed.swap(true, Ordering::Relaxed) {
                        eprintln!("api_load: {message}");
                    }
                }
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await {
            eprintln!("api_load: a sending task failed: {err}");
            failed.store(true, Ordering::Relaxed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_at_start;
    if failed.load(Ordering::Relaxed) {
        return ExitCode::FAILURE;
    }
    let rate = |count: usize| count as f64 / seconds.max(1e-9);
    println!(
        "requests {requests}  events {events}  seconds {seconds:.3}  requests/s {:.1}  events/s {:.0}  cpu_s {cpu:.2}",
        rate(requests),
        rate(events)
    );
    ExitCode::SUCCESS
}
