//! The POST of a request body and the reading of the API's answer: its
//! status classified (delivered, refused, throttled, failed, a credential
//! or configuration fault), its message bounded, and the `RateLimit` and
//! `Retry-After` headers read for the gate.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;

use super::body::Payload;
use super::{ratelimit, session, Destination, Shared};

/// Longest API message kept in a refusal or a log line, in characters.
const MAX_MESSAGE_CHARS: usize = 500;
/// A `Retry-After` beyond this is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The API's answer, classified.
pub(super) enum Answer {
    Delivered,
    Refused(String),
    Throttled(Option<Duration>),
    Failed {
        reason: String,
        retry_after: Option<Duration>,
    },
    Unauthorized(String),
    Fault {
        problem: String,
        fix: String,
    },
}

pub(super) async fn post(
    shared: &Shared,
    target: &Destination,
    body: &Payload,
    token: &str,
    ticket: u64,
) -> Answer {
    let started = std::time::Instant::now();
    shared.metrics.batches_sent.inc();
    let answer = post_once(shared, target, body, token, ticket).await;
    shared.metrics.observe_request(started.elapsed());
    answer
}

async fn post_once(
    shared: &Shared,
    target: &Destination,
    body: &Payload,
    token: &str,
    ticket: u64,
) -> Answer {
    let mut request = shared
        .client
        .post(target.url.clone())
        .bearer_auth(token)
        .header(CONTENT_TYPE, "application/json");
    if body.gzipped {
        request = request.header(CONTENT_ENCODING, "gzip");
    }
    let sent = request.body(body.body()).send().await;
    let response = match sent {
        Ok(response) => response,
        Err(err) => {
            return Answer::Failed {
                reason: describe_error(&err),
                retry_after: None,
            }
        }
    };
    let status = response.status();
    let retry_after = retry_after(response.headers());
    shared.gate.observe(ticket, rate_limit(response.headers()));
    if status.is_success() {
        // A 2xx counts only once its answer has arrived whole.
        return match response.bytes().await {
            Ok(_) => Answer::Delivered,
            Err(err) => Answer::Failed {
                reason: format!(
                    "{status}, but the answer was cut off: {}",
                    describe_error(&err)
                ),
                retry_after: None,
            },
        };
    }
    let text = response.text().await.unwrap_or_default();
    let message = api_message(&session::scrub(&text, &[token]));
    classify(shared, target, status, retry_after, message)
}

fn classify(
    shared: &Shared,
    target: &Destination,
    status: StatusCode,
    retry_after: Option<Duration>,
    message: String,
) -> Answer {
    match status.as_u16() {
        429 => Answer::Throttled(retry_after),
        400 | 413 | 422 => Answer::Refused(format!("refused by the API ({status}): {message}")),
        401 => Answer::Unauthorized(message),
        403 => Answer::Fault {
            problem: format!("the API forbids it to {} (403: {message})", shared.who),
            fix: format!(
                "check that {} may write consent events for organization {:?}",
                shared.who, target.organization
            ),
        },
        408 | 500..=599 => Answer::Failed {
            reason: format!("{status}: {message}"),
            retry_after,
        },
        _ => Answer::Fault {
            problem: format!(
                "POST {}/consents/events answered {status}: {message}",
                shared.settings.base_url
            ),
            fix: "check base_url (the consents API's base URL, e.g. https://api.example.com/v1) and organization_id".into(),
        },
    }
}

/// The API's answer text for a message: trimmed, on one line, at most
/// [`MAX_MESSAGE_CHARS`] characters.
pub(crate) fn api_message(text: &str) -> String {
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.is_empty() {
        return "no message".into();
    }
    match flat.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

/// A reqwest error with its causes, e.g. `cannot connect: … Connection refused`.
pub(crate) fn describe_error(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "no answer in time".to_string()
    } else if err.is_connect() {
        "cannot connect".to_string()
    } else if err.is_body() || err.is_decode() {
        "the answer broke off".to_string()
    } else {
        "the request failed".to_string()
    };
    let mut source = std::error::Error::source(err);
    let mut last = String::new();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
            last = cause_text;
        }
        source = cause.source();
    }
    text
}

/// The `RateLimit` / `RateLimit-Policy` headers of an answer.
fn rate_limit(headers: &HeaderMap) -> Result<Option<ratelimit::RateLimit>, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match headers.get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .map_err(|_| format!("{name}: not visible ASCII")),
        }
    };
    let now_unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ratelimit::parse(text("ratelimit")?, text("ratelimit-policy")?, now_unix)
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // Whole seconds included: up to the cap, they are exact in an f64.
    let delay = if let Some(seconds) = value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
    {
        Duration::from_secs_f64(seconds.min(MAX_RETRY_AFTER.as_secs_f64()))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().expect("header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        headers.insert(RETRY_AFTER, later.parse().expect("header"));
        let delay = retry_after(&headers).expect("date");
        assert!(
            delay > Duration::from_secs(115) && delay <= Duration::from_secs(120),
            "{delay:?}"
        );
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().expect("header"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn api_messages_are_flat_and_bounded() {
        assert_eq!(api_message("  \n"), "no message");
        assert_eq!(api_message(" bad\nrow "), "bad row");
        let long = "é".repeat(800);
        let message = api_message(&long);
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
