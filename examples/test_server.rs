//! The in-process consents-events test API, as a program: point a local
//! consent-drop at it (`allow_insecure_http = true`) to try the http sink
//! without an API account.
//!
//! ```text
//! cargo run --example test_server -- --listen 127.0.0.1:8080 \
//!     --key test-key --secret test-secret --token-lifetime-s 3600 \
//!     --fail-ratio 0.1 --delay-ms 50
//! ```
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
[--token-lifetime-s N] [--fail-ratio 0..1] [--delay-ms N] [--organization ORG] [--static-token TOKEN]...";

struct Args {
    options: ServerOptions,
    fail_ratio: f64,
    delay: Duration,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        options: ServerOptions {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            ..ServerOptions::default()
        },
        fail_ratio: 0.0,
        delay: Duration::ZERO,
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
                "requests {}  events {}  duplicates {}  sessions {}",
                server.requests(),
                server.event_count(),
                server.duplicates(),
                server.sessions_opened()
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
