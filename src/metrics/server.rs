//! metrics::server: `GET /metrics` and `GET /healthz` over HTTP/1.1, on hyper.
//!
//! With `[metrics] listen = "127.0.0.1:9187"`, [`bind`] and [`serve`] answer
//! `/metrics` (OpenMetrics text) and `/healthz` (200 `ok`
//! while the main loop ticks, 503 before its first tick or when it has not
//! ticked for [`super::STALE_AFTER`]). Every connection is bounded: one
//! request, a request head of at most [`Limits::max_head_bytes`] (else 431),
//! [`Limits::read_timeout`] to send it and twice that for the whole exchange,
//! at most [`Limits::max_connections`] at once (more are closed at once).
//! This module only answers: it never changes a metric.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Health, Metrics};

/// How much a client may ask of the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest request head (request line + headers) read; at least 8 KiB (hyper's floor).
    pub max_head_bytes: usize,
    /// A client has this long to send its request head.
    pub read_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            max_connections: 32,
        }
    }
}

/// `[metrics] listen` could not be used.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen = {listen:?}: cannot listen there")]
pub struct ListenError {
    pub listen: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds `[metrics] listen`; a failure names the key.
pub async fn bind(listen: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| ListenError {
            listen: listen.to_string(),
            source,
        })
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    serve_with(listener, metrics, shutdown, Limits::default())
}

/// [`serve`] with other [`Limits`].
pub fn serve_with(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(%err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &metrics);
                    async move { Ok::<_, Infallible>(response) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.read_timeout)
                    .max_buf_size(limits.max_head_bytes.max(8 * 1024))
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                // Errors are the client's (garbage, a timeout, a reset): nothing to do.
                let _ = tokio::time::timeout(limits.read_timeout * 2, connection).await;
                drop(permit);
            });
        }
    })
}

/// The answer to one request.
fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    // Only the origin form (`/metrics`): not `host:port` nor `http://host/…`.
    if request.uri().authority().is_some() || !request.uri().path().starts_with('/') {
        return text(StatusCode::BAD_REQUEST, "bad request\n".into());
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
            response
        }
        "/healthz" => match metrics.health() {
            Health::Ticking => text(StatusCode::OK, "ok\n".into()),
            Health::Stalled(age) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the main loop has not ticked for {}s\n", age.as_secs()),
            ),
            Health::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
