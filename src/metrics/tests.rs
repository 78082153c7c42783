//! metrics' tests: every family with its name and type, the heartbeat, and
//! the server's answers and limits over real TCP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::server::{bind, serve, serve_with, Limits};
use super::*;

/// Long enough for anything that should happen; a test never waits this long when it passes.
const LONG: Duration = Duration::from_secs(20);

fn counters() -> Arc<Counters> {
    let counters = Counters::default();
    counters.files_archived.store(2, Ordering::Relaxed);
    counters.rows_accepted.store(7, Ordering::Relaxed);
    counters.rows_rejected.store(1, Ordering::Relaxed);
    Arc::new(counters)
}

/// Every family the project exposes, with its type: dashboards and alert rules use these names.
const FAMILIES: [(&str, &str); 19] = [
    ("files_seen_total", "counter"),
    ("files_claimed_total", "counter"),
    ("files_archived_total", "counter"),
    ("files_failed_total", "counter"),
    ("files_duplicate_total", "counter"),
    ("rows_accepted_total", "counter"),
    ("rows_rejected_total", "counter"),
    ("events_delivered_total", "counter"),
    ("events_refused_total", "counter"),
    ("batches_acked_total", "counter"),
    ("batches_sent_total", "counter"),
    ("batches_retried_total", "counter"),
    ("files_waiting", "gauge"),
    ("files_in_flight", "gauge"),
    ("oldest_waiting_file_age_seconds", "gauge"),
    ("submission_paused", "gauge"),
    ("request_duration_seconds", "histogram"),
    ("main_loop_tick_age_seconds", "gauge"),
    ("build_info", "gauge"),
];

fn assert_every_family(text: &str) {
    for (name, kind) in FAMILIES {
        // A counter's family is named without the `_total` of its sample.
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            text.contains(&format!("# HELP consent_drop_{family} ")),
            "{name} in\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE consent_drop_{family} {kind}\n")),
            "{name} {kind} in\n{text}"
        );
        let sample = match kind {
            "histogram" => format!("\nconsent_drop_{name}_count "),
            _ => format!("\nconsent_drop_{name}"),
        };
        assert!(text.contains(&sample), "{sample} in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
    let families = text
        .lines()
        .filter(|line| line.starts_with("# TYPE "))
        .count();
    assert_eq!(
        families,
        FAMILIES.len(),
        "no family more, none less:\n{text}"
    );
    assert!(
        text.contains("\nconsent_drop_request_duration_seconds_count "),
        "{text}"
    );
}

#[test]
fn renders_every_family_with_help_and_type() {
    let metrics = Metrics::new(counters());
    metrics.batches_sent.inc_by(3);
    metrics.files_waiting.set(4);
    let text = metrics.render();
    assert_every_family(&text);
    assert!(text.contains("\nconsent_drop_files_archived_total 2\n"));
    assert!(text.contains("\nconsent_drop_rows_accepted_total 7\n"));
    assert!(text.contains("\nconsent_drop_rows_rejected_total 1\n"));
    assert!(text.contains("\nconsent_drop_batches_sent_total 3\n"));
    assert!(text.contains("\nconsent_drop_files_waiting 4\n"));
    assert!(
        text.contains("\nconsent_drop_main_loop_tick_age_seconds -1"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "consent_drop_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    )));
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        // `name value` or `name{labels} value`.
        let (name, value) = line.rsplit_once(' ').unwrap_or(("", ""));
        assert!(name.starts_with("consent_drop_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn clones_share_their_values() {
    let metrics = Metrics::default();
    let clone = metrics.clone();
    clone.files_seen.inc();
    clone.tick();
    assert!(metrics
        .render()
        .contains("\nconsent_drop_files_seen_total 1\n"));
    assert!(metrics.healthy());
}

#[test]
fn histogram_buckets_are_cumulative() {
    let metrics = Metrics::default();
    metrics.observe_request(Duration::from_millis(3));
    metrics.observe_request(Duration::from_millis(40));
    metrics.observe_request(Duration::from_secs(2));
    metrics.observe_request(Duration::from_secs(60));
    let text = metrics.render();
    assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"0.005\"} 1\n"));
    assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"0.05\"} 2\n"));
    assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"2.5\"} 3\n"));
    assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"30.0\"} 3\n"));
    assert!(text.contains("consent_drop_request_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
    assert!(text.contains("consent_drop_request_duration_seconds_count 4\n"));
    let sum: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix("consent_drop_request_duration_seconds_sum "))
        .and_then(|value| value.parse().ok())
        .unwrap_or(f64::NAN);
    assert!((sum - 62.043).abs() < 1e-9, "{sum}");
}

#[tokio::test(start_paused = true)]
async fn health_follows_the_ticks() {
    let metrics = Metrics::default();
    assert_eq!(metrics.health(), Health::Starting);
    assert!(metrics.since_last_tick().is_none());
    metrics.tick();
    assert!(metrics.healthy());
    tokio::time::advance(STALE_AFTER - Duration::from_secs(1)).await;
    assert!(metrics.healthy());
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        metrics.health(),
        Health::Stalled(STALE_AFTER + Duration::from_secs(1))
    );
    metrics.tick();
    assert!(metrics.healthy());
}

/// One raw exchange: what the server sent before it closed.
async fn exchange(address: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LONG, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

async fn get(address: SocketAddr, path: &str) -> String {
    exchange(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
    .await
}

fn status(answer: &str) -> Option<u16> {
    answer.split(' ').nth(1)?.parse().ok()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

struct Server {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(metrics: Metrics, limits: Limits) -> Server {
        let listener = bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = serve_with(listener, metrics, shutdown.clone(), limits);
        Server {
            address,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(LONG, self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test]
async fn the_server_serves_every_family_and_routes_the_rest() {
    let server = Server::start(Metrics::new(counters()), Limits::default()).await;
    let answer = get(server.address, "/metrics").await;
    assert_eq!(status(&answer), Some(200), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{answer}"
    );
    assert_every_family(body(&answer));
    assert!(body(&answer).contains("consent_drop_rows_accepted_total 7\n"));
    let length: usize = answer
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_string)
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap();
    assert_eq!(body(&answer).len(), length);

    assert_eq!(
        status(&get(server.address, "/metrics?x=1").await),
        Some(200)
    );
    assert_eq!(status(&get(server.address, "/nope").await), Some(404));
    let refused = exchange(
        server.address,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status(&refused), Some(405), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("allow: get, head"),
        "{refused}"
    );
    let head = exchange(server.address, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status(&head), Some(200), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "headers only: {head}");
    for garbage in [
        &b"\x00\x01\x02\r\n\r\n"[..],
        b"GET metrics HTTP/1.1\r\n\r\n",
    ] {
        let answer = exchange(server.address, garbage).await;
        assert_eq!(status(&answer), Some(400), "{answer}");
    }
    // Still serving after all that.
    assert_eq!(status(&get(server.address, "/metrics").await), Some(200));
    server.stop().await;
}

#[tokio::test]
async fn healthz_goes_503_when_the_loop_stalls() {
    let stale_after = Duration::from_millis(200);
    let metrics = Metrics::with_stale_after(Arc::new(Counters::default()), stale_after);
    let server = Server::start(metrics.clone(), Limits::default()).await;
    let starting = get(server.address, "/healthz").await;
    assert_eq!(
        (status(&starting), body(&starting)),
        (Some(503), "starting\n")
    );
    metrics.tick();
    let ok = get(server.address, "/healthz").await;
    assert_eq!((status(&ok), body(&ok)), (Some(200), "ok\n"));
    // No more ticks: the loop is stalled once stale_after has passed.
    let deadline = tokio::time::Instant::now() + LONG;
    let stalled = loop {
        let answer = get(server.address, "/healthz").await;
        if status(&answer) != Some(200) || tokio::time::Instant::now() > deadline {
            break answer;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(status(&stalled), Some(503), "{stalled}");
    assert!(
        body(&stalled).starts_with("the main loop has not ticked for "),
        "{stalled}"
    );
    metrics.tick();
    assert_eq!(status(&get(server.address, "/healthz").await), Some(200));
    server.stop().await;
}

#[tokio::test]
async fn an_over_long_request_head_is_refused() {
    let server = Server::start(Metrics::default(), Limits::default()).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 16 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let answer = exchange(server.address, &request).await;
    assert_eq!(status(&answer), Some(431), "{answer}");
    let answer = exchange(server.address, &vec![b'a'; 32 * 1024]).await;
    assert!(matches!(status(&answer), Some(431 | 400)), "{answer}");
    assert_eq!(status(&get(server.address, "/metrics").await), Some(200));
    server.stop().await;
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_others_are_served_meanwhile() {
    let limits = Limits {
        read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = Server::start(Metrics::default(), limits).await;
    let started = tokio::time::Instant::now();
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    slow.write_all(b"GET /metr").await.unwrap();
    // Served while the slow one holds its connection.
    assert_eq!(status(&get(server.address, "/metrics").await), Some(200));
    // The slow one is closed once its time is up, never answered with metrics.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LONG, slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "still open after {LONG:?}");
    assert!(started.elapsed() >= limits.read_timeout);
    assert!(!String::from_utf8_lossy(&rest).contains("consent_drop_"));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let limits = Limits {
        max_connections: 2,
        read_timeout: Duration::from_secs(10),
        ..Limits::default()
    };
    let server = Server::start(Metrics::default(), limits).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // The server takes connections in order: the third finds no permit.
    let answer = tokio::time::timeout(LONG, get(server.address, "/metrics")).await;
    assert_eq!(answer.as_deref().map(status), Ok(None), "closed unanswered");
    drop(held);
    // Permits come back when the held connections end.
    let deadline = tokio::time::Instant::now() + LONG;
    while status(&get(server.address, "/metrics").await) != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no permit came back"
        );
        tokio::task::yield_now().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn serve_uses_the_default_limits() {
    let listener = bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let task = serve(listener, Metrics::default(), shutdown.clone());
    assert_eq!(status(&get(address, "/healthz").await), Some(503));
    shutdown.cancel();
    tokio::time::timeout(LONG, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_busy_address_names_the_key() {
    let taken = bind("127.0.0.1:0").await.unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let err = bind(&address).await.unwrap_err();
    assert!(err.to_string().starts_with("metrics.listen = "), "{err}");
}
