//! What the test API reads from a request: its query's pairs, its body
//! (gunzipped when it says so) and the checks the real API makes of events.

use std::collections::{HashMap, HashSet};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use serde_json::Value;

/// A header's text; `""` when absent or not visible ASCII.
pub(super) fn header_text(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

/// The body as JSON bytes: as sent, or gunzipped for `Content-Encoding: gzip`.
pub(super) fn decode(headers: &HeaderMap, body: Bytes) -> Result<Bytes, (StatusCode, String)> {
    let encoding = header_text(headers, header::CONTENT_ENCODING)
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" => {
            use std::io::Read;
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(body.as_ref())
                .read_to_end(&mut json)
                .map_err(|err| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("body is not valid gzip: {err}"),
                    )
                })?;
            Ok(Bytes::from(json))
        }
        other => Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other:?} is not supported (gzip or none)"),
        )),
    }
}

/// `a=b&c=d` with percent-decoding (`+` is a space).
pub(super) fn form_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The API's schema: a JSON array of 1..=100 events of organization `org`
/// (and, for an API v2 organization, of its `purposes`).
pub(super) fn validate(
    body: &[u8],
    org: &str,
    purposes: Option<&HashSet<String>>,
) -> Result<Vec<Value>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|err| format!("body is not JSON: {err}"))?;
    let Value::Array(events) = value else {
        return Err("body must be a JSON array of events".into());
    };
    if events.is_empty() || events.len() > 100 {
        return Err(format!(
            "a request carries 1 to 100 events, not {}",
            events.len()
        ));
    }
    for (index, event) in events.iter().enumerate() {
        validate_event(event, org, purposes)
            .map_err(|problem| format!("events[{index}]{problem}"))?;
    }
    Ok(events)
}

fn validate_event(
    event: &Value,
    org: &str,
    known_purposes: Option<&HashSet<String>>,
) -> Result<(), String> {
    let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
    let id = text("/id").ok_or(".id: missing or not a string")?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(format!(".id: {id:?} is not a UUID"));
    }
    match text("/organization_id") {
        None => return Err(".organization_id: missing or not a string".into()),
        Some(own) if own != org => {
            return Err(format!(
                ".organization_id: {own:?} is not the organization of the request ({org:?})"
            ))
        }
        Some(_) => {}
    }
    let created = text("/created_at").ok_or(".created_at: missing or not a string")?;
    if chrono::DateTime::parse_from_rfc3339(created).is_err() {
        return Err(format!(".created_at: {created:?} is not an RFC 3339 date"));
    }
    match text("/user/organization_user_id") {
        Some(user) if !user.trim().is_empty() => {}
        _ => return Err(".user.organization_user_id: missing or empty".into()),
    }
    if let Some(metadata) = event.pointer("/user/metadata") {
        if !metadata.is_object() {
            return Err(".user.metadata: must be an object".into());
        }
    }
    let purposes = event
        .pointer("/consents/purposes")
        .and_then(Value::as_array)
        .ok_or(".consents.purposes: missing or not an array")?;
    if purposes.is_empty() {
        return Err(".consents.purposes: is empty".into());
    }
    for (index, purpose) in purposes.iter().enumerate() {
        let Some(purpose_id) = purpose
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        else {
            return Err(format!(".consents.purposes[{index}].id: missing or empty"));
        };
        if known_purposes.is_some_and(|known| !known.contains(purpose_id)) {
            return Err(format!(
                ".consents.purposes[{index}].id: {purpose_id:?} is not a purpose of organization {org:?}"
            ));
        }
        if purpose.get("enabled").and_then(Value::as_bool).is_none() {
            return Err(format!(
                ".consents.purposes[{index}].enabled: missing or not a boolean"
            ));
        }
    }
    if !event.get("metadata").is_some_and(Value::is_object) {
        return Err(".metadata: missing or not an object".into());
    }
    Ok(())
}
