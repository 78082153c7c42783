//! The http sink against an honest consents-events API (tests/support/api_server.rs):
//! one test per row of the answer table of SPEC §2, plus the credentials.
//!
//! Every ack is checked as it comes out: in `seq` order, and only for batches
//! whose events the server already holds.

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_server::{wait_until, ApiServer, ServerOptions};
use consent_drop::config::{Credentials, HttpSinkSettings, SecretSource, SinkSettings};
use consent_drop::metrics::Metrics;
use consent_drop::sink::http::{check_credentials, HttpSink};
use consent_drop::sink::{Ack, Batch, Delivery, DeliveryTarget, Sink, SinkError};
use harness::{token_expired, LONG};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ------------------------------------------------------------------ helpers

/// A consent event as the pipeline encodes it; the id is a v5 of test and line.
fn event(test: &str, line: u64, user: &str) -> (String, String) {
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{test}:{line}").as_bytes()).to_string();
    let json = serde_json::json!({
        "id": id,
        "organization_id": "acme/eu 1",
        "created_at": "2020-06-03T21:28:55Z",
        "user": {
            "organization_user_id": user,
            "metadata": { "source": "partner-x" }
        },
        "consents": { "purposes": [ { "id": "newsletter_weekly", "enabled": true } ] },
        "metadata": {
            "consent_origin": "203.0.113.7",
            "consent_purpose_text": "I agree to receive the weekly newsletter",
            "import": test,
            "source_file": format!("pr-consentements-{test}.csv"),
            "source_line": line
        }
    });
    (id, json.to_string())
}

/// Batch `seq` of `size` events, lines `seq * size + 2 ..`; `user` names the contact of a line.
fn batch_with(test: &str, seq: u64, size: u64, user: impl Fn(u64) -> String) -> Batch {
    let mut batch = Batch::new(seq);
    for line in seq * size + 2..(seq + 1) * size + 2 {
        let (_, json) = event(test, line, &user(line));
        batch.push_with(line, |buf| buf.extend_from_slice(json.as_bytes()));
    }
    batch
}

fn batch(test: &str, seq: u64, size: u64) -> Batch {
    batch_with(test, seq, size, |line| format!("user{line}@example.com"))
}

fn batches(test: &str, count: u64, size: u64) -> Vec<Batch> {
    (0..count).map(|seq| batch(test, seq, size)).collect()
}

/// `(line, id)` of every event of a batch.
fn ids_of(batch: &Batch) -> Vec<(u64, String)> {
    (0..batch.len())
        .map(|i| {
            let value: serde_json::Value =
                serde_json::from_slice(batch.event(i)).expect("event json");
            (
                batch.events[i].line,
                value["id"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        Secrets {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        // Write-and-rename, as an operator's tooling would.
        let scratch = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&scratch, text).expect("write secret");
        std::fs::rename(&scratch, &path).expect("rename secret");
        path
    }
}

fn settings(base_url: &str, credentials: Credentials) -> HttpSinkSettings {
    HttpSinkSettings {
        base_url: base_url.to_string(),
        organization_id: "acme/eu 1".into(),
        credentials,
        batch_size: 100,
        concurrency: 4,
        timeout: Duration::from_secs(5),
        allow_insecure_http: true,
        max_requests_per_second: None,
        gzip: false,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(200),
        auth_retry: Duration::from_secs(1),
    }
}

fn api_key(secret_file: &Path) -> Credentials {
    Credentials::ApiKey {
        key: "test-key".into(),
        secret: SecretSource::File(secret_file.to_path_buf()),
    }
}

fn options() -> ServerOptions {
    ServerOptions {
        organization_id: Some("acme/eu 1".into()),
        ..ServerOptions::default()
    }
}

/// A test API, an http sink on it with the API key's secret in a file, and
/// the sink's shutdown token.
struct Fixture {
    server: ApiServer,
    sink: Sink,
    shutdown: CancellationToken,
    /// Holds the secret file: bind it (`_secrets`) for as long as the sink runs.
    _secrets: Secrets,
}

/// `adjust` changes the sink's settings before the sink is made.
async fn fixture(options: ServerOptions, adjust: impl FnOnce(&mut HttpSinkSettings)) -> Fixture {
    let server = ApiServer::start(options).await;
    let secrets = Secrets::new();
    let mut settings = settings(
        &server.base_url(),
        api_key(&secrets.write("secret", "test-secret\n")),
    );
    adjust(&mut settings);
    let shutdown = CancellationToken::new();
    let sink = sink(settings, &shutdown);
    Fixture {
        server,
        sink,
        shutdown,
        _secrets: secrets,
    }
}

fn sink(settings: HttpSinkSettings, shutdown: &CancellationToken) -> Sink {
    Sink::from_settings(
        &SinkSettings::Http(settings),
        shutdown.clone(),
        Metrics::default(),
    )
    .expect("http sink")
}

fn http(sink: &Sink) -> &HttpSink {
    match sink {
        Sink::Http(http) => http,
        other => panic!("not the http sink: {other:?}"),
    }
}

fn target(import: &str, disable_integrations: bool) -> DeliveryTarget {
    DeliveryTarget {
        occurrence_id: format!("occ-{import}"),
        import: import.to_string(),
        disable_integrations,
        organization_id: None,
        output_stem: format!("stem-{import}"),
    }
}

async fn open(sink: &Sink, import: &str) -> Delivery {
    sink.open(&target(import, false), None).await.expect("open")
}

/// Checks acks as they come out: contiguous from `next_seq`, and every event
/// not refused is already stored.
struct AckChecker {
    ids: HashMap<u64, Vec<(u64, String)>>,
    next_seq: u64,
    acks: Vec<Ack>,
}

impl AckChecker {
    fn new(batches: &[Batch]) -> AckChecker {
        AckChecker {
            ids: batches.iter().map(|b| (b.seq, ids_of(b))).collect(),
            next_seq: batches.first().map_or(0, |b| b.seq),
            acks: Vec::new(),
        }
    }

    fn absorb(&mut self, server: &ApiServer, acks: Vec<Ack>) {
        let stored = server.event_ids();
        for ack in acks {
            assert_eq!(ack.seq, self.next_seq, "acks out of order");
            assert_eq!(ack.cursor, 0);
            self.next_seq += 1;
            for (line, id) in &self.ids[&ack.seq] {
                let refused = ack.refused.iter().any(|r| r.line == *line);
                assert!(
                    refused || stored.contains(id),
                    "batch {} acked before line {line} reached the API",
                    ack.seq
                );
            }
            self.acks.push(ack);
        }
    }
}

/// Sends every batch, then finishes; returns the acks (checked as they came).
async fn deliver(server: &ApiServer, delivery: &mut Delivery, batches: Vec<Batch>) -> Vec<Ack> {
    let mut checker = AckChecker::new(&batches);
    for batch in batches {
        let acks = delivery.send(batch).await.expect("send");
        checker.absorb(server, acks);
    }
    let (acks, result) = delivery.finish().await;
    result.expect("finish");
    checker.absorb(server, acks);
    checker.acks
}

fn no_refusals(acks: &[Ack]) -> bool {
    acks.iter().all(|ack| ack.refused.is_empty())
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn acks_come_in_order_with_the_right_request() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    server.set_fail_ratio(0.2); // retries make later batches finish first
    let mut delivery = open(&sink, "order").await;

    let acks = deliver(&server, &mut delivery, batches("order", 30, 20)).await;

    assert_eq!(acks.len(), 30);
    assert!(no_refusals(&acks));
    assert_eq!(server.event_count(), 600);
    assert_eq!(server.duplicates(), 0);
    assert_eq!(
        server.sessions_opened(),
        1,
        "one session shared by all requests"
    );
    assert!(
        server.max_in_flight() <= 4,
        "concurrency exceeded: {}",
        server.max_in_flight()
    );
    assert_eq!(
        server.last_query().as_deref(),
        Some("organization_id=acme%2Feu%201")
    );
    let agent = format!("consent-drop/{}", env!("CARGO_PKG_VERSION"));
    assert!(
        server.user_agents().iter().all(|ua| *ua == agent),
        "{:?}",
        server.user_agents().first()
    );
    assert!(
        server.content_encodings().iter().all(String::is_empty),
        "bodies are compressed only when the config asks: {:?}",
        server.content_encodings().first()
    );
}

#[tokio::test]
async fn gzip_bodies_when_the_config_asks() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |settings| {
        settings.gzip = true;
    })
    .await;
    let mut delivery = open(&sink, "gzip").await;
    let mut sent = batches("gzip", 3, 100);
    // A refused event makes the sink split a gzipped batch too.
    sent.push(batch_with("gzip", 3, 100, |line| {
        if line == 340 {
            format!("user{line}+refuse@example.com")
        } else {
            format!("user{line}@example.com")
        }
    }));

    let acks = deliver(&server, &mut delivery, sent).await;

    assert_eq!(acks.len(), 4);
    let refused: Vec<u64> = acks
        .iter()
        .flat_map(|a| a.refused.iter().map(|r| r.line))
        .collect();
    assert_eq!(refused, [340]);
    assert_eq!(server.event_count(), 399);
    assert_eq!(server.duplicates(), 0);
    let encodings = server.content_encodings();
    assert!(
        encodings.len() > 4,
        "the refused batch was split: {encodings:?}"
    );
    assert!(encodings.iter().all(|e| e == "gzip"), "{encodings:?}");
}

#[tokio::test]
async fn retry_after_of_a_429_is_honoured() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    server.set_429_burst(1, 1);
    let mut delivery = open(&sink, "throttled").await;

    let start = Instant::now();
    let acks = deliver(&server, &mut delivery, batches("throttled", 1, 10)).await;

    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "Retry-After ignored: {:?}",
        start.elapsed()
    );
    assert_eq!(acks.len(), 1);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.event_count(), 10);
}

#[tokio::test]
async fn an_outage_of_503s_and_429s_loses_and_duplicates_nothing() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    server.set_fail_ratio(0.3);
    server.set_429_burst(5, 1);
    let mut delivery = open(&sink, "outage").await;

    // Full batches: one request each, as small ones would share requests.
    let acks = deliver(&server, &mut delivery, batches("outage", 20, 100)).await;

    assert_eq!(acks.len(), 20);
    assert!(no_refusals(&acks));
    assert_eq!(server.event_count(), 2000);
    assert_eq!(server.duplicates(), 0, "a delivered batch was sent again");
    assert!(
        server.requests() > 25,
        "the faults did not happen: {}",
        server.requests()
    );
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    server.drop_connections(3);
    let mut delivery = open(&sink, "dropped").await;

    // Full batches: one request each, as small ones would share requests.
    let acks = deliver(&server, &mut delivery, batches("dropped", 3, 100)).await;

    assert_eq!(acks.len(), 3);
    assert_eq!(server.requests(), 6);
    assert_eq!(server.event_count(), 300);
}

#[tokio::test]
async fn answers_slower_than_the_timeout_are_retried() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |settings| {
        settings.timeout = Duration::from_millis(300);
    })
    .await;
    server.set_delay(Duration::from_millis(800));
    let mut delivery = open(&sink, "slow").await;
    let batch = batch("slow", 0, 10);
    let mut checker = AckChecker::new(std::slice::from_ref(&batch));

    let acks = delivery.send(batch).await.expect("send");
    checker.absorb(&server, acks);
    assert!(
        wait_until(LONG, || server.requests() >= 2).await,
        "no retry after a timeout"
    );
    server.set_delay(Duration::ZERO);
    let (acks, result) = delivery.finish().await;
    result.expect("finish");
    checker.absorb(&server, acks);

    assert_eq!(checker.acks.len(), 1);
    assert_eq!(server.event_count(), 10);
}

#[tokio::test]
async fn connection_refused_until_the_api_starts_is_retried() {
    // Bound, not listening: connections are refused, and the port stays ours
    // until the server listens on it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let base_url = format!("http://{}", socket.local_addr().expect("address"));
    let secrets = Secrets::new();
    let shutdown = CancellationToken::new();
    let metrics = Metrics::default();
    let sink = Sink::from_settings(
        &SinkSettings::Http(settings(
            &base_url,
            api_key(&secrets.write("secret", "test-secret")),
        )),
        shutdown.clone(),
        metrics.clone(),
    )
    .expect("http sink");
    let mut delivery = open(&sink, "refused-conn").await;
    let batch = batch("refused-conn", 0, 10);

    let acks = delivery.send(batch).await.expect("send");
    assert!(acks.is_empty());
    assert!(
        wait_until(LONG, || metrics.batches_retried.get() >= 3).await,
        "several refused attempts"
    );
    let listener = socket.listen(64).expect("listen");
    let server = ApiServer::start_on(listener, options()).await;
    let (acks, result) = tokio::time::timeout(LONG, delivery.finish())
        .await
        .expect("delivered in time");
    result.expect("finish");

    assert_eq!(acks.len(), 1);
    assert_eq!(server.event_count(), 10);
}

#[tokio::test]
async fn refused_events_are_isolated_and_the_rest_delivered() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    let mut delivery = open(&sink, "refuse").await;
    let refused_lines = [12, 52, 79];
    let batch = batch_with("refuse", 0, 100, |line| {
        if refused_lines.contains(&line) {
            format!("user{line}+refuse@example.com")
        } else {
            format!("user{line}@example.com")
        }
    });

    let acks = deliver(&server, &mut delivery, vec![batch]).await;

    assert_eq!(acks.len(), 1);
    let lines: Vec<u64> = acks[0].refused.iter().map(|r| r.line).collect();
    assert_eq!(lines, refused_lines);
    for refusal in &acks[0].refused {
        let (id, _) = event("refuse", refusal.line, "");
        assert!(
            refusal.message.contains(&id),
            "message does not name {id}: {}",
            refusal.message
        );
        assert!(refusal.message.contains("422"), "{}", refusal.message);
    }
    assert_eq!(server.event_count(), 97);
    assert_eq!(server.duplicates(), 0);
}

/// One batch of 20 events from each of `names`, their deliveries open and
/// waiting for their readers together, as files in flight are; `refused`
/// names the lines of a file that the API refuses. Returns each file's acks.
async fn send_together(
    sink: &Sink,
    names: &[&str],
    refused: fn(&str) -> Vec<u64>,
) -> Vec<Vec<Ack>> {
    let mut deliveries = Vec::new();
    for name in names {
        let mut delivery = open(sink, name).await;
        delivery.producing();
        deliveries.push(delivery);
    }
    for (delivery, name) in deliveries.iter_mut().zip(names) {
        let batch = batch_with(name, 0, 20, |line| {
            if refused(name).contains(&line) {
                format!("user{line}+refuse@example.com")
            } else {
                format!("user{line}@example.com")
            }
        });
        let early = delivery.send(batch).await.expect("send");
        assert!(early.is_empty(), "acked before the others had their batch");
    }
    let mut acks = Vec::new();
    for delivery in &mut deliveries {
        let (done, result) = delivery.finish().await;
        result.expect("finish");
        acks.push(done);
    }
    acks
}

/// The small batches of files in flight together go in one request.
#[tokio::test]
async fn small_batches_of_several_files_share_a_request() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    let names = [
        "share-a", "share-b", "share-c", "share-d", "share-e", "share-f",
    ];

    let acks = send_together(&sink, &names, |_| Vec::new()).await;

    assert!(acks.iter().all(|acks| acks.len() == 1 && no_refusals(acks)));
    assert_eq!(server.event_count(), 120);
    assert_eq!(
        server
            .request_organizations()
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        [100, 20],
        "requests filled up to batch_size, in order"
    );
}

/// A 400/422 on a shared request is bisected; each file's ack holds
/// exactly its own refused lines.
#[tokio::test]
async fn a_refused_shared_request_gives_each_file_its_own_refused_lines() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    let names = ["mixed-a", "mixed-b", "mixed-c"];
    let refused = |name: &str| match name {
        "mixed-a" => vec![3],
        "mixed-b" => vec![5, 9],
        _ => Vec::new(),
    };

    let acks = send_together(&sink, &names, refused).await;

    for (name, acks) in names.iter().zip(&acks) {
        assert_eq!(acks.len(), 1, "{name}");
        let lines: Vec<u64> = acks[0].refused.iter().map(|r| r.line).collect();
        assert_eq!(lines, refused(name), "{name}: its own refused lines");
        for refusal in &acks[0].refused {
            let (id, _) = event(name, refusal.line, "");
            assert!(refusal.message.contains(&id), "{}", refusal.message);
        }
    }
    assert_eq!(server.event_count(), 60 - 3);
    assert_eq!(server.duplicates(), 0);
}

/// A file alone does not wait for anyone: its batch goes at once.
#[tokio::test]
async fn a_small_file_alone_is_sent_at_once() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    let mut delivery = open(&sink, "alone").await;
    delivery.producing();
    let acks = delivery.send(batch("alone", 0, 20)).await.expect("send");
    assert!(acks.is_empty());
    assert!(
        server.wait_for_events(20, LONG).await,
        "the batch went before its delivery finished"
    );
    let (acks, result) = delivery.finish().await;
    result.expect("finish");
    assert_eq!(acks.len(), 1);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn a_revoked_token_opens_one_new_session_and_the_batch_is_retried() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |settings| {
        settings.auth_retry = Duration::from_secs(60); // a pause would not end in time
    })
    .await;
    let mut delivery = open(&sink, "revoked").await;
    let all = batches("revoked", 6, 10);
    let mut checker = AckChecker::new(&all);
    let mut all = all.into_iter();

    let first = all.next().expect("batch 0");
    checker.absorb(&server, delivery.send(first).await.expect("send"));
    assert!(server.wait_for_events(10, LONG).await);
    server.revoke_tokens();
    for batch in all {
        checker.absorb(&server, delivery.send(batch).await.expect("send"));
    }
    let (acks, result) = tokio::time::timeout(LONG, delivery.finish())
        .await
        .expect("delivered without a pause");
    result.expect("finish");
    checker.absorb(&server, acks);

    assert_eq!(checker.acks.len(), 6);
    assert!(no_refusals(&checker.acks));
    assert_eq!(
        server.sessions_opened(),
        2,
        "one new session, not one per request"
    );
    assert_eq!(server.event_count(), 60);
    assert!(!http(&sink).is_paused());
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_between_deliveries() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(
        ServerOptions {
            token_lifetime_s: 2,
            ..options()
        },
        |_| {},
    )
    .await;

    let mut first = open(&sink, "short-a").await;
    let acks = deliver(&server, &mut first, batches("short-a", 2, 10)).await;
    assert_eq!(acks.len(), 2);
    // The first token's lifetime passes.
    assert!(
        wait_until(LONG, || server
            .issued_tokens()
            .iter()
            .all(|token| token_expired(token)))
        .await
    );
    let mut second = open(&sink, "short-b").await;
    let acks = deliver(&server, &mut second, batches("short-b", 2, 10)).await;

    assert_eq!(acks.len(), 2);
    assert!(no_refusals(&acks));
    assert!(
        server.sessions_opened() >= 2,
        "the expired token was not renewed"
    );
    assert_eq!(
        server.unauthorized(),
        0,
        "renewed before it expired, not after a 401"
    );
    assert_eq!(server.event_count(), 40);
    assert!(!http(&sink).is_paused());
}

#[tokio::test]
async fn a_wrong_secret_pauses_until_fixed_and_reloaded() {
    let server = ApiServer::start(options()).await;
    let secrets = Secrets::new();
    let secret_file = secrets.write("secret", "not-the-secret");
    let shutdown = CancellationToken::new();
    let mut settings = settings(&server.base_url(), api_key(&secret_file));
    settings.auth_retry = Duration::from_secs(30); // only the reload can end the pause in time
    let sink = sink(settings, &shutdown);
    let mut delivery = open(&sink, "wrong-secret").await;
    let batch = batch("wrong-secret", 0, 10);
    let mut checker = AckChecker::new(std::slice::from_ref(&batch));
    let task = tokio::spawn(async move {
        let sent = delivery.send(batch).await;
        let (acks, result) = delivery.finish().await;
        (sent, acks, result)
    });

    assert!(
        wait_until(LONG, || http(&sink).is_paused()).await,
        "the refused secret did not pause the sink"
    );
    // Watched for a while: no delivery and no second session attempt.
    assert!(
        !wait_until(Duration::from_millis(300), || task.is_finished()
            || server.session_attempts() > 1)
        .await
    );
    assert!(!task.is_finished(), "acked without delivery");
    assert_eq!(server.event_count(), 0);
    assert_eq!(server.requests(), 0, "events were sent without a session");
    assert_eq!(
        server.session_attempts(),
        1,
        "a paused sink must not hammer /sessions"
    );

    secrets.write("secret", "test-secret\n");
    let reloaded = Instant::now();
    sink.credentials_changed();
    let (sent, acks, result) = tokio::time::timeout(LONG, task)
        .await
        .expect("in time")
        .expect("task");
    assert!(
        reloaded.elapsed() < Duration::from_secs(5),
        "the reload did not end the pause at once"
    );
    checker.absorb(&server, sent.expect("send"));
    result.expect("finish");
    checker.absorb(&server, acks);
    assert_eq!(checker.acks.len(), 1);
    assert!(no_refusals(&checker.acks));
    assert_eq!(server.event_count(), 10);
    assert!(!http(&sink).is_paused());
}

#[tokio::test]
async fn forbidden_pauses_submission_until_lifted() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;
    server.set_forbidden(true);
    let mut delivery = open(&sink, "forbidden").await;
    let all = batches("forbidden", 3, 10);
    let mut checker = AckChecker::new(&all);
    for batch in all {
        checker.absorb(&server, delivery.send(batch).await.expect("send"));
    }

    assert!(
        wait_until(LONG, || http(&sink).is_paused()).await,
        "403 did not pause the sink"
    );
    // About one probe (auth_retry = 1 s) while paused.
    assert!(
        !wait_until(Duration::from_millis(1300), || server.session_attempts()
            + server.requests()
            > 4)
        .await,
        "a paused sink probes slowly"
    );
    assert!(checker.acks.is_empty());
    assert_eq!(server.event_count(), 0);
    let attempts = server.session_attempts() + server.requests();
    assert!(
        attempts <= 4,
        "a paused sink probes slowly, not {attempts} times"
    );
    server.set_forbidden(false);
    let (acks, result) = tokio::time::timeout(LONG, delivery.finish())
        .await
        .expect("in time");
    result.expect("finish");
    checker.absorb(&server, acks);

    assert_eq!(checker.acks.len(), 3);
    assert!(no_refusals(&checker.acks), "a 403 must never refuse events");
    assert_eq!(server.event_count(), 30);
}

#[tokio::test]
async fn not_found_is_a_configuration_fault_not_a_refusal() {
    let server = ApiServer::start(options()).await;
    let secrets = Secrets::new();
    let shutdown = CancellationToken::new();
    // A base_url missing its path prefix: every POST is a 404.
    let sink = sink(
        settings(
            &format!("{}/v9", server.base_url()),
            api_key(&secrets.write("secret", "test-secret")),
        ),
        &shutdown,
    );
    let mut delivery = open(&sink, "not-found").await;

    assert!(delivery
        .send(batch("not-found", 0, 5))
        .await
        .expect("send")
        .is_empty());
    assert!(
        wait_until(LONG, || http(&sink).is_paused()).await,
        "404 did not pause the sink"
    );
    shutdown.cancel();
    let (acks, result) = delivery.finish().await;
    assert!(
        acks.is_empty(),
        "nothing was delivered, nothing may be acked"
    );
    assert!(matches!(result, Err(SinkError::Interrupted)));
}

#[tokio::test]
async fn disable_integrations_goes_in_the_query() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |_| {}).await;

    let mut backfill = sink
        .open(&target("backfill", true), None)
        .await
        .expect("open");
    deliver(&server, &mut backfill, batches("backfill", 1, 5)).await;
    assert_eq!(
        server.last_query().as_deref(),
        Some("organization_id=acme%2Feu%201&$disable_integrations=true")
    );
    let mut live = sink.open(&target("live", false), None).await.expect("open");
    deliver(&server, &mut live, batches("live", 1, 5)).await;
    assert_eq!(
        server.last_query().as_deref(),
        Some("organization_id=acme%2Feu%201")
    );
}

#[tokio::test]
async fn shutdown_during_an_outage_returns_quickly_with_only_delivered_acks() {
    let Fixture {
        server,
        sink,
        shutdown,
        _secrets,
    } = fixture(options(), |_| {}).await;
    let mut delivery = open(&sink, "shutdown").await;
    let all = batches("shutdown", 4, 10);
    let mut checker = AckChecker::new(&all);
    let mut all = all.into_iter();

    checker.absorb(
        &server,
        delivery
            .send(all.next().expect("batch 0"))
            .await
            .expect("send"),
    );
    assert!(server.wait_for_events(10, LONG).await);
    server.set_fail_ratio(1.0);
    for batch in all {
        checker.absorb(&server, delivery.send(batch).await.expect("send"));
    }
    let before = server.requests();
    assert!(
        wait_until(LONG, || server.requests() >= before + 3).await,
        "no retries during the outage"
    );
    shutdown.cancel();
    let start = Instant::now();
    let (acks, result) = delivery.finish().await;

    assert!(
        start.elapsed() < Duration::from_millis(500),
        "finish took {:?}",
        start.elapsed()
    );
    assert!(matches!(result, Err(SinkError::Interrupted)), "{result:?}");
    checker.absorb(&server, acks);
    let seqs: Vec<u64> = checker.acks.iter().map(|ack| ack.seq).collect();
    assert_eq!(seqs, vec![0], "only the delivered batch is acked");
    assert_eq!(server.event_count(), 10);
    assert!(matches!(
        delivery.send(batch("shutdown", 9, 1)).await,
        Err(SinkError::Interrupted)
    ));
}

#[tokio::test]
async fn concurrency_bounds_requests_in_flight_for_the_whole_sink() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |settings| {
        settings.concurrency = 2;
    })
    .await;
    server.set_delay(Duration::from_millis(50));
    let mut first = open(&sink, "conc-a").await;
    let mut second = open(&sink, "conc-b").await;

    // Full batches: one request each, as small ones would share requests.
    let (a, b) = tokio::join!(
        deliver(&server, &mut first, batches("conc-a", 6, 100)),
        deliver(&server, &mut second, batches("conc-b", 6, 100)),
    );

    assert_eq!((a.len(), b.len()), (6, 6));
    assert_eq!(server.event_count(), 1200);
    assert_eq!(
        server.max_in_flight(),
        2,
        "2 requests in flight at most, and at once"
    );
}

#[tokio::test]
async fn max_requests_per_second_paces_request_starts() {
    let Fixture {
        server,
        sink,
        _secrets,
        ..
    } = fixture(options(), |settings| {
        settings.max_requests_per_second = Some(20.0);
    })
    .await;
    let mut delivery = open(&sink, "paced").await;

    let start = Instant::now();
    // Full batches: one request each, as small ones would share requests.
    let acks = deliver(&server, &mut delivery, batches("paced", 6, 100)).await;

    assert_eq!(acks.len(), 6);
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "not paced: {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_token_file_is_read_again_when_it_changes() {
    let server = ApiServer::start(ServerOptions {
        static_tokens: vec!["token-one".into()],
        ..options()
    })
    .await;
    let secrets = Secrets::new();
    let token_file = secrets.write("token", "token-one\n");
    let shutdown = CancellationToken::new();
    let sink = sink(
        settings(&server.base_url(), Credentials::TokenFile(token_file)),
        &shutdown,
    );

    let mut first = open(&sink, "token-a").await;
    deliver(&server, &mut first, batches("token-a", 1, 5)).await;
    server.set_static_tokens(&["token-two-renewed"]);
    secrets.write("token", "token-two-renewed\n");
    let mut second = open(&sink, "token-b").await;
    let acks = deliver(&server, &mut second, batches("token-b", 1, 5)).await;

    assert_eq!(acks.len(), 1);
    assert_eq!(server.event_count(), 10);
    assert_eq!(
        server.session_attempts(),
        0,
        "a ready token needs no session"
    );
    assert!(!http(&sink).is_paused());
}

#[tokio::test]
async fn check_credentials_says_what_it_did_without_the_secret() {
    let server = ApiServer::start(ServerOptions {
        static_tokens: vec!["ready-token-xyz".into()],
        ..options()
    })
    .await;
    let secrets = Secrets::new();

    let good = settings(
        &server.base_url(),
        api_key(&secrets.write("secret", "test-secret")),
    );
    let sentence = check_credentials(&good).await.expect("session");
    assert!(
        sentence.contains("test-key") && sentence.contains("valid until"),
        "{sentence}"
    );
    assert!(!sentence.contains("test-secret"), "{sentence}");
    assert_eq!(server.sessions_opened(), 1);

    let wrong = settings(
        &server.base_url(),
        api_key(&secrets.write("wrong", "hunter2-wrong")),
    );
    let err = check_credentials(&wrong)
        .await
        .expect_err("wrong secret")
        .to_string();
    assert!(
        err.contains("test-key") && !err.contains("hunter2-wrong"),
        "{err}"
    );

    let var = "CONSENT_DROP_HTTP_SINK_TEST_TOKEN";
    std::env::set_var(var, "ready-token-xyz");
    let ready = settings(&server.base_url(), Credentials::TokenEnv(var.into()));
    let sentence = check_credentials(&ready).await.expect("ready token");
    assert!(
        sentence.contains("nothing was sent") && !sentence.contains("ready-token-xyz"),
        "{sentence}"
    );
    assert_eq!(server.sessions_opened(), 1);
    assert_eq!(server.requests(), 0);

    // The same token, used by the sink from the environment.
    let shutdown = CancellationToken::new();
    let sink = sink(ready, &shutdown);
    let mut delivery = open(&sink, "token-env").await;
    deliver(&server, &mut delivery, batches("token-env", 1, 5)).await;
    assert_eq!(server.event_count(), 5);
}

// ------------------------------------------------------------- logs

/// Everything the subscriber writes, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

/// A current-thread runtime (`#[tokio::test]`) keeps every task of the sink
/// on this thread, under this thread's subscriber.
#[tokio::test]
async fn the_secret_and_tokens_never_appear_in_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let secret = "S3cr3t-zebra-8841";
    let wrong = "Wr0ng-walrus-1177";
    let server = ApiServer::start(ServerOptions {
        api_key: "key-alpha".into(),
        secret: secret.into(),
        ..options()
    })
    .await;
    let secrets = Secrets::new();
    let secret_file = secrets.write("secret", wrong);
    let shutdown = CancellationToken::new();
    let sink = sink(
        settings(
            &server.base_url(),
            Credentials::ApiKey {
                key: "key-alpha".into(),
                secret: SecretSource::File(secret_file),
            },
        ),
        &shutdown,
    );
    let mut delivery = open(&sink, "logs").await;
    let refused = |line: u64| {
        if line == 3 {
            format!("user{line}+refuse@example.com")
        } else {
            format!("user{line}@example.com")
        }
    };
    let all: Vec<Batch> = (0..4)
        .map(|seq| batch_with("logs", seq, 5, refused))
        .collect();
    let mut checker = AckChecker::new(&all);
    let mut all = all.into_iter();

    // A wrong secret: paused, one error line.
    checker.absorb(
        &server,
        delivery
            .send(all.next().expect("batch 0"))
            .await
            .expect("send"),
    );
    assert!(wait_until(LONG, || http(&sink).is_paused()).await);
    secrets.write("secret", secret);
    sink.credentials_changed();
    assert!(server.wait_for_events(4, LONG).await);
    // A revoked token, 503s, a dropped connection.
    server.revoke_tokens();
    server.set_fail_ratio(0.5);
    server.drop_connections(1);
    for batch in all {
        checker.absorb(&server, delivery.send(batch).await.expect("send"));
    }
    let (acks, result) = delivery.finish().await;
    result.expect("finish");
    checker.absorb(&server, acks);
    assert_eq!(checker.acks.len(), 4);
    assert_eq!(server.event_count(), 19);

    let logs = captured.text();
    let debug = format!("{sink:?} {delivery:?}");
    let mut tokens = server.issued_tokens();
    assert!(tokens.len() >= 2, "{tokens:?}");
    let signatures: Vec<String> = tokens
        .iter()
        .filter_map(|t| t.rsplit('.').next().map(str::to_string))
        .collect();
    tokens.extend(signatures);
    for text in [&logs, &debug] {
        assert!(!text.contains(secret), "the secret leaked:\n{text}");
        assert!(!text.contains(wrong), "the wrong secret leaked:\n{text}");
        for token in &tokens {
            assert!(!text.contains(token.as_str()), "a token leaked:\n{text}");
        }
    }
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line for the pause:\n{logs}");
    assert!(
        errors[0].contains(&server.base_url()) && errors[0].contains("key-alpha"),
        "{}",
        errors[0]
    );
    assert!(logs.contains("WARN"), "retries are logged:\n{logs}");
}
