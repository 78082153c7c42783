//! ratelimit: what an answer's `RateLimit` and `RateLimit-Policy` headers
//! say about the current window, as plain values.
//!
//! The consents API announces its limits the way the IETF httpapi draft
//! does: `RateLimit: limit=100, remaining=42, reset=9` (requests left in
//! the current window, and seconds until it ends) and `RateLimit-Policy:
//! 100;w=15` (the quota and the window length, in seconds). This module only
//! reads them; [`super::gate`] paces the sink with what they say.
//!
//! Never: fail on what a server sends. A header that does not parse is an
//! `Err` with the reason, which the caller logs once and otherwise ignores.

use std::time::Duration;

/// `reset` values above this are taken as a Unix time, not as seconds.
const EPOCH_THRESHOLD: f64 = 1_000_000_000.0;
/// A window end further away than this is taken as this.
const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

/// The current window, as one answer saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests allowed per window, when the server says.
    pub limit: Option<u64>,
    /// Requests left in the current window.
    pub remaining: u64,
    /// Time until the current window ends.
    pub reset: Duration,
    /// The window's length (`RateLimit-Policy: N;w=W`), when the server says.
    pub window: Option<Duration>,
}

/// Reads the two headers (their text, when present). `Ok(None)`: no
/// `RateLimit` header. `now_unix` is only used for a `reset` given as a Unix
/// time.
pub fn parse(
    ratelimit: Option<&str>,
    policy: Option<&str>,
    now_unix: u64,
) -> Result<Option<RateLimit>, String> {
    let Some(text) = ratelimit else {
        return Ok(None);
    };
    let (mut limit, mut remaining, mut reset) = (None, None, None);
    for item in text.split([',', ';']) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("RateLimit {text:?}: {item:?} is not key=value"));
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "limit" => limit = Some(whole(value, "limit", text)?),
            "remaining" | "r" => remaining = Some(whole(value, "remaining", text)?),
            "reset" | "t" => reset = Some(seconds(value, text, now_unix)?),
            // Other parameters (a policy name, a partition key) say nothing
            // this client uses.
            _ => {}
        }
    }
    let remaining = remaining.ok_or_else(|| format!("RateLimit {text:?}: no remaining="))?;
    let reset = reset.ok_or_else(|| format!("RateLimit {text:?}: no reset="))?;
    let (policy_limit, window) = match policy {
        Some(policy) => parse_policy(policy, limit)?,
        None => (None, None),
    };
    Ok(Some(RateLimit {
        limit: limit.or(policy_limit),
        remaining,
        reset,
        window,
    }))
}

/// `100;w=15` (or several, comma-separated: the one whose quota is `limit`,
/// else the first): the quota and the window.
fn parse_policy(text: &str, limit: Option<u64>) -> Result<(Option<u64>, Option<Duration>), String> {
    let mut policies = Vec::new();
    for policy in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = policy.split(';').map(str::trim);
        let quota = parts.next().unwrap_or("");
        // The draft's later form names the policy first: `"default";q=100;w=15`.
        let (mut quota, mut window) = match quota.parse::<u64>() {
            Ok(quota) => (Some(quota), None),
            Err(_) if quota.starts_with('"') => (None, None),
            Err(_) => {
                return Err(format!(
                    "RateLimit-Policy {text:?}: {quota:?} is not a number"
                ))
            }
        };
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "w" => {
                    let seconds = whole(value.trim(), "w", text)?;
                    window = Some(Duration::from_secs(seconds).min(MAX_RESET));
                }
                "q" => quota = Some(whole(value.trim(), "q", text)?),
                _ => {}
            }
        }
        policies.push((quota, window));
    }
    let chosen = policies
        .iter()
        .find(|(quota, _)| limit.is_some() && *quota == limit)
        .or_else(|| policies.first())
        .copied();
    Ok(chosen.unwrap_or((None, None)))
}

fn whole(value: &str, key: &str, text: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("RateLimit {text:?}: {key}={value:?} is not a whole number"))
}

fn seconds(value: &str, text: &str, now_unix: u64) -> Result<Duration, String> {
    let seconds: f64 = value
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| format!("RateLimit {text:?}: reset={value:?} is not a number of seconds"))?;
    let seconds = if seconds > EPOCH_THRESHOLD {
        (seconds - now_unix as f64).max(0.0)
    } else {
        seconds
    };
    Ok(Duration::from_secs_f64(
        seconds.min(MAX_RESET.as_secs_f64()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ratelimit: &str, policy: Option<&str>) -> Result<Option<RateLimit>, String> {
        parse(Some(ratelimit), policy, 1_800_000_000)
    }

    #[test]
    fn the_apis_headers_are_read() {
        let rate = read("limit=100, remaining=42, reset=9", Some("100;w=15"))
            .expect("valid")
            .expect("present");
        assert_eq!(
            rate,
            RateLimit {
                limit: Some(100),
                remaining: 42,
                reset: Duration::from_secs(9),
                window: Some(Duration::from_secs(15)),
            }
        );
    }

    #[test]
    fn order_case_spaces_and_unknown_keys_do_not_matter() {
        let rate = read(" Reset=2 ;REMAINING = 0,policy=\"x\", Limit=20", None)
            .expect("valid")
            .expect("present");
        assert_eq!(rate.limit, Some(20));
        assert_eq!(rate.remaining, 0);
        assert_eq!(rate.reset, Duration::from_secs(2));
        assert_eq!(rate.window, None);
    }

    #[test]
    fn the_policy_gives_the_limit_and_window_and_the_matching_one_wins() {
        let rate = read("remaining=5, reset=1.5", Some("1000;w=3600, 20;w=2"))
            .expect("valid")
            .expect("present");
        assert_eq!(
            rate.limit,
            Some(1000),
            "the first policy, no limit to match"
        );
        assert_eq!(rate.reset, Duration::from_millis(1500));
        let rate = read(
            "limit=20, remaining=5, reset=1",
            Some("1000;w=3600, 20;w=2"),
        )
        .expect("valid")
        .expect("present");
        assert_eq!(rate.window, Some(Duration::from_secs(2)));
        let named = read("remaining=5, reset=1", Some("\"default\";q=50;w=10"))
            .expect("valid")
            .expect("present");
        assert_eq!(named.limit, Some(50));
        assert_eq!(named.window, Some(Duration::from_secs(10)));
    }

    #[test]
    fn a_reset_in_unix_time_is_made_relative() {
        let rate = read("limit=10, remaining=1, reset=1800000030", None)
            .expect("valid")
            .expect("present");
        assert_eq!(rate.reset, Duration::from_secs(30));
        let past = read("remaining=1, reset=1700000000", None)
            .expect("valid")
            .expect("present");
        assert_eq!(past.reset, Duration::ZERO);
    }

    #[test]
    fn no_header_is_no_information() {
        assert_eq!(parse(None, Some("100;w=15"), 0), Ok(None));
    }

    #[test]
    fn malformed_headers_are_errors_never_panics() {
        for bad in [
            "limit=100, remaining=lots, reset=9",
            "limit=100, reset=9",
            "remaining=1",
            "remaining=1, reset=-3",
            "remaining=1, reset=NaN",
            "garbage",
            "remaining=18446744073709551616, reset=1",
        ] {
            let err = read(bad, None).expect_err(bad);
            assert!(err.starts_with("RateLimit "), "{err}");
        }
        assert!(read("remaining=1, reset=1", Some("many;w=15")).is_err());
        assert!(read("remaining=1, reset=1", Some("10;w=soon")).is_err());
        assert!(read("remaining=1, reset=1e300", None).is_ok(), "capped");
    }

    proptest::proptest! {
        #[test]
        fn any_header_text_parses_or_is_refused(ratelimit in ".{0,80}", policy in ".{0,40}") {
            let _ = parse(Some(&ratelimit), Some(&policy), 1_800_000_000);
        }
    }
}
