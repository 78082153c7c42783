//! The in-process consents-events test API, as a program: point a local
//! consent-drop at it (`allow_insecure_http = true`) to try the http sink
//! without an API account.
//!
//! ```text
//! cargo run --example test_server -- --listen 127.0.0.1:8080 \
//!     --key test-key --secret test-secret --token-lifetime-s 3600 \
//!     --fail-ratio 0.1 --delay-ms 50 \
//!     --purposes email_global,newsletter_weekly --purposes-page-limit 50 \
//!     --rate-limit 100/15
//! ```
//!
//! `--purposes` makes every organization an API v2 one with those purposes
//! (events with others are refused); `--rate-limit N/W` allows N event POSTs
//! per W seconds, announced in `RateLimit` headers (`--rate-limit-silent N/W`:
//! the same limit without the headers, only 429 and `Retry-After`).
//!
//! It prints its base URL, then every 5 s the requests, events, duplicates
//! and sessions it has seen, until Ctrl-C.

#[path = "../tests/support/api_server.rs"]
mod api_server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use api_server::{ApiServer, ServerOptions};

const USAGE: &str = "usage: test_server [--listen ADDR] [--key KEY] [--secret SECRET] \
[--token-lifetime-s N] [--fail-ratio 0..1] [--delay-ms N] [--organization ORG] [--static-token TOKEN]... \
[--purposes ID,ID,...] [--purposes-page-limit N] [--rate-limit N/SECONDS] [--rate-limit-silent N/SECONDS]";

struct Args {
    options: ServerOptions,
    fail_ratio: f64,
    delay: Duration,
    /// Requests per window, the window, announced in headers.
    rate_limit: Option<(u64, Duration, bool)>,
}

/// `20/2`: 20 requests per 2 seconds.
fn rate(value: &str) -> Option<(u64, Duration)> {
    let (count, seconds) = value.split_once('/')?;
    let count: u64 = count.trim().parse().ok().filter(|n| *n > 0)?;
    let seconds: f64 = seconds
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| *s > 0.0 && s.is_finite())?;
    Some((count, Duration::from_secs_f64(seconds)))
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        options: ServerOptions {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            ..ServerOptions::default()
        },
        fail_ratio: 0.0,
        delay: Duration::ZERO,
        rate_limit: None,
    };
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |what: &str| format!("{flag} {value:?}: {what}\n{USAGE}");
        match flag.as_str() {
            "--listen" => {
                parsed.options.listen = Some(value.parse().map_err(|_| bad("not host:port"))?)
            }
            "--key" => parsed.options.api_key = value,
            "--secret" => parsed.options.secret = value,
            "--token-lifetime-s" => {
                parsed.options.token_lifetime_s = value.parse().map_err(|_| bad("not seconds"))?
            }
            "--fail-ratio" => {
                parsed.fail_ratio = value
                    .parse()
                    .ok()
                    .filter(|r: &f64| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad("not between 0 and 1"))?
            }
            "--delay-ms" => {
                parsed.delay =
                    Duration::from_millis(value.parse().map_err(|_| bad("not milliseconds"))?)
            }
            "--organization" => parsed.options.organization_id = Some(value),
            "--static-token" => parsed.options.static_tokens.push(value),
            "--purposes" => {
                parsed.options.purposes = Some(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|id| !id.is_empty())
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--purposes-page-limit" => {
                parsed.options.purposes_page_limit = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("not a positive number"))?
            }
            "--rate-limit" | "--rate-limit-silent" => {
                let (count, window) =
                    rate(&value).ok_or_else(|| bad("not N/SECONDS, e.g. 100/15"))?;
                parsed.rate_limit = Some((count, window, flag == "--rate-limit"));
            }
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(parsed)
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
    let server = ApiServer::start(args.options.clone()).await;
    server.set_fail_ratio(args.fail_ratio);
    server.set_delay(args.delay);
    if let Some((count, window, announce)) = args.rate_limit {
        server.set_rate_limit(count, window, announce);
    }
    println!(
        "consents-events test API listening on {}",
        server.base_url()
    );
    println!(
        "api key {:?}, secret {:?}, tokens live {} s, {}% of event POSTs answered 503, {} ms delay",
        args.options.api_key,
        args.options.secret,
        args.options.token_lifetime_s,
        args.fail_ratio * 100.0,
        args.delay.as_millis()
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => println!(
                "requests {}  events {}  duplicates {}  sessions {}  rate-limited {}",
                server.requests(),
                server.event_count(),
                server.duplicates(),
                server.sessions_opened(),
                server.rate_limited()
            ),
        }
    }
    println!(
        "stopped: requests {}  events {}  duplicates {}  sessions {}",
        server.requests(),
        server.event_count(),
        server.duplicates(),
        server.sessions_opened()
    );
    ExitCode::SUCCESS
}
