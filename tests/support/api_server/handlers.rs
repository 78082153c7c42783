//! The test API's request handlers: sessions, purposes, events (its
//! checks in order: arrival, admission, injected faults, storage).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::body::{decode, form_pairs, header_text, validate};
use super::{Inner, Shared};
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    answer(
        status,
        json!({ "code": status.as_u16(), "message": message.into() }),
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

pub(super) async fn open_session(State(state): State<Arc<Shared>>, body: Bytes) -> Response {
    let mut inner = state.lock();
    inner.session_attempts += 1;
    if inner.forbidden {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(err) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {err}")),
    };
    if request.get("type").and_then(Value::as_str) != Some("api-key") {
        return error(StatusCode::BAD_REQUEST, "type must be \"api-key\"");
    }
    let key = request.get("key").and_then(Value::as_str);
    let secret = request.get("secret").and_then(Value::as_str);
    if key != Some(inner.api_key.as_str()) || secret != Some(inner.secret.as_str()) {
        return error(StatusCode::BAD_REQUEST, "invalid key or secret");
    }
    let exp = unix_now() + inner.token_lifetime_s;
    let signature = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    let token = format!(
        "{}.{}.{}",
        b64(&json!({ "alg": "HS256", "typ": "JWT" })),
        b64(&json!({ "sub": inner.api_key, "exp": exp, "iat": unix_now() })),
        signature
    );
    inner.issued.insert(token.clone(), exp);
    inner.all_issued.push(token.clone());
    inner.sessions_opened += 1;
    answer(StatusCode::OK, json!({ "access_token": token }))
}

/// Counts an event POST in flight for as long as it lives (even if the
/// client goes away and the handler is dropped).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(state: &Arc<Shared>) -> InFlight {
        let mut inner = state.lock();
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

/// A response whose body fails before its first byte: hyper aborts the
/// connection instead of sending an answer.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "test server drops this connection",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// The window's verdict on one more request: `Err` is the 429 answer;
/// `Ok` holds the headers every answer carries (none when not announced).
fn count_in_window(inner: &mut Inner) -> Result<Vec<(&'static str, String)>, Box<Response>> {
    let Some(window) = &mut inner.window else {
        return Ok(Vec::new());
    };
    let now = Instant::now();
    let started = match window.started {
        Some(started) if now < started + window.length => started,
        _ => {
            window.started = Some(now);
            window.used = 0;
            now
        }
    };
    window.used += 1;
    let left = (started + window.length).saturating_duration_since(now);
    // Whole seconds, rounded up: the client never believes it ends earlier.
    let reset = left.as_millis().div_ceil(1000).max(1);
    let remaining = window.limit.saturating_sub(window.used);
    let headers = if window.announce {
        vec![
            (
                "ratelimit",
                format!(
                    "limit={}, remaining={remaining}, reset={reset}",
                    window.limit
                ),
            ),
            (
                "ratelimit-policy",
                format!("{};w={}", window.limit, window.length.as_secs().max(1)),
            ),
        ]
    } else {
        Vec::new()
    };
    if window.used <= window.limit {
        return Ok(headers);
    }
    inner.rate_limited += 1;
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
    with_headers(&mut response, &headers);
    if let Ok(value) = reset.to_string().parse() {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    Err(Box::new(response))
}

fn with_headers(response: &mut Response, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        if let Ok(value) = header::HeaderValue::from_str(value) {
            response.headers_mut().insert(*name, value);
        }
    }
}

/// Whether the request's bearer token is one the server issued or knows.
fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    let token = header_text(headers, header::AUTHORIZATION)
        .strip_prefix("Bearer ")
        .unwrap_or("");
    inner.static_tokens.contains(token)
        || inner.issued.get(token).is_some_and(|exp| unix_now() < *exp)
}

/// `GET /metadata/purposes?organization_id=…&$limit=…&$skip=…`, paginated.
pub(super) async fn get_purposes(
    State(state): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let mut inner = state.lock();
    inner.purpose_queries.push(query.clone());
    if inner.forbidden {
        return error(StatusCode::FORBIDDEN, "forbidden");
    }
    if !authorized(&inner, &headers) {
        inner.unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "invalid or expired access token");
    }
    let params = form_pairs(&query);
    if params.get("organization_id").is_none_or(String::is_empty) {
        return error(StatusCode::BAD_REQUEST, "organization_id is required");
    }
    let number = |key: &str, default: usize| -> Result<usize, String> {
        match params.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("{key} must be a number, not {text:?}")),
        }
    };
    let (limit, skip) = match (number("$limit", 10), number("$skip", 0)) {
        (Ok(limit), Ok(skip)) => (limit.min(inner.purposes_page_limit), skip),
        (Err(message), _) | (_, Err(message)) => return error(StatusCode::BAD_REQUEST, message),
    };
    let all = inner.purposes.clone().unwrap_or_default();
    let data: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(limit)
        .map(|id| json!({ "id": id, "description": { "en": format!("purpose {id}") } }))
        .collect();
    answer(
        StatusCode::OK,
        json!({ "total": all.len(), "limit": limit, "skip": skip, "data": data }),
    )
}

pub(super) async fn post_events(
    State(state): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = InFlight::enter(&state);
    let window = count_in_window(&mut state.lock());
    match window {
        Err(too_many) => *too_many,
        Ok(rate_headers) => {
            let mut response = handle_events(&state, query, headers, body).await;
            with_headers(&mut response, &rate_headers);
            let raw = state.lock().raw_ratelimit.clone();
            if let Some(raw) = raw {
                with_headers(&mut response, &[("ratelimit", raw)]);
            }
            response
        }
    }
}

async fn handle_events(
    state: &Arc<Shared>,
    query: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    if let Some(dropped) = arrive(state, &query, &headers).await {
        return dropped;
    }
    let accepted = match admit(&mut state.lock(), &query, &headers) {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    // Decoding and validating take most of a request's time: outside the
    // lock, so concurrent requests use every core, as a real API would.
    let body = match decode(&headers, body) {
        Ok(body) => body,
        Err((status, message)) => return error(status, message),
    };
    let events = match validate(&body, &accepted.org, accepted.purposes.as_ref()) {
        Ok(events) => events,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    store(state, &accepted, &events)
}

/// Counts the request and what it was sent with, then holds it while the
/// test holds the server and for the configured delay. `Some`: the
/// connection is to be dropped instead of answered.
async fn arrive(state: &Arc<Shared>, query: &str, headers: &HeaderMap) -> Option<Response> {
    let mut hold = state.hold.subscribe();
    while *hold.borrow_and_update() {
        if hold.changed().await.is_err() {
            break;
        }
    }
    let delay = {
        let mut inner = state.lock();
        inner.requests += 1;
        inner.queries.push(query.to_string());
        let agent = header_text(headers, header::USER_AGENT).to_string();
        inner.user_agents.push(agent);
        let encoding = header_text(headers, header::CONTENT_ENCODING).to_string();
        inner.content_encodings.push(encoding);
        if inner.drop_connections > 0 {
            inner.drop_connections -= 1;
            return Some(dropped_connection());
        }
        inner.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    None
}

/// What a request the server admitted needs once the lock is released.
struct Admitted {
    org: String,
    purposes: Option<HashSet<String>>,
    refuse_marker: String,
}

/// The answers that need no body: credentials, injected faults, the
/// organization and the content type.
fn admit(inner: &mut Inner, query: &str, headers: &HeaderMap) -> Result<Admitted, Box<Response>> {
    if inner.forbidden {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "this key may not write consent events",
        )));
    }
    if !authorized(inner, headers) {
        inner.unauthorized += 1;
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "invalid or expired access token",
        )));
    }
    if let Some(response) = injected_fault(inner) {
        return Err(Box::new(response));
    }
    let params: HashMap<String, String> = form_pairs(query);
    let Some(org) = params.get("organization_id").filter(|org| !org.is_empty()) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "organization_id is required",
        )));
    };
    if let Some(expected) = &inner.organization_id {
        if org != expected {
            return Err(Box::new(error(
                StatusCode::FORBIDDEN,
                format!("organization {org:?} is not accessible with this token"),
            )));
        }
    }
    let content_type = header_text(headers, header::CONTENT_TYPE);
    if !content_type.starts_with("application/json") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json",
        )));
    }
    Ok(Admitted {
        org: org.clone(),
        purposes: inner
            .purposes
            .as_ref()
            .map(|list| list.iter().cloned().collect()),
        refuse_marker: inner.refuse_marker.clone(),
    })
}
/// A burst of 429s or a random 503, when the test asked for them.
fn injected_fault(inner: &mut Inner) -> Option<Response> {
    if inner.burst_429 > 0 {
        inner.burst_429 -= 1;
        let retry_after = inner.retry_after_s.to_string();
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many requests");
        if let Ok(value) = retry_after.parse() {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return Some(response);
    }
    if inner.fail_ratio > 0.0 && inner.next_random() < inner.fail_ratio {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service unavailable",
        ));
    }
    None
}

/// Refuses the whole request (422) when an event's user holds the refuse
/// marker; else keeps each event not seen before and answers 200.
fn store(state: &Arc<Shared>, admitted: &Admitted, events: &[Value]) -> Response {
    let sources = events
        .iter()
        .map(|event| {
            let source = event
                .pointer("/metadata/source_file")
                .and_then(Value::as_str);
            source.unwrap_or_default().to_string()
        })
        .collect();
    state.lock().request_sources.push(sources);
    let refused: Vec<String> = events
        .iter()
        .enumerate()
        .filter(|(_, event)| {
            event
                .pointer("/user/organization_user_id")
                .and_then(Value::as_str)
                .is_some_and(|user| user.contains(&admitted.refuse_marker))
        })
        .map(|(index, event)| {
            format!(
                "events[{index}] (id {}): organization_user_id is refused",
                event.get("id").and_then(Value::as_str).unwrap_or("?")
            )
        })
        .collect();
    if !refused.is_empty() {
        return error(StatusCode::UNPROCESSABLE_ENTITY, refused.join("; "));
    }
    let count = events.len();
    let stored: Vec<(String, Box<str>)> = events
        .iter()
        .map(|event| {
            let id = event.get("id").and_then(Value::as_str).unwrap_or_default();
            (id.to_string(), event.to_string().into_boxed_str())
        })
        .collect();
    let mut inner = state.lock();
    inner
        .request_organizations
        .push(events.iter().map(|_| admitted.org.clone()).collect());
    for (id, event) in stored {
        if inner.ids.insert(id) {
            inner.events.push(event);
        } else {
            inner.duplicates += 1;
        }
    }
    answer(StatusCode::OK, json!({ "imported": count }))
}
