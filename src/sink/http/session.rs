//! session: where the bearer token comes from, and when it is renewed.
//!
//! With an API key, a token is obtained from `POST {base_url}/sessions` and
//! reused until shortly before the `exp` its JWT payload states (60 s, or a
//! tenth of its lifetime when that is shorter), or until the API answers 401.
//! All requests of the sink share one token; a renewal happens once, under a
//! lock, however many requests are waiting for it (no stampede). A ready
//! token comes from a file (re-read when its mtime or size changes) or from
//! an environment variable (read once, and again on SIGHUP).
//!
//! Never: put the secret or a token in a log line, an error message or a
//! `Debug` output. They live in [`Secret`]s, and any text the API sends back
//! is scrubbed of them before it is shown.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use reqwest::StatusCode;
use tokio::sync::Mutex;

use crate::config::{Credentials, Secret, SecretSource};

/// Why no token could be had.
#[derive(Debug, Clone)]
pub(super) enum TokenError {
    /// Only a person can fix it (wrong key or secret, missing file…).
    Fault { problem: String, fix: String },
    /// The API could not be reached or failed: try again later.
    Transient(String),
    /// `/sessions` answered 429.
    Throttled(Option<Duration>),
}

/// A token to send, and which generation it is (to invalidate exactly it).
pub(super) struct Bearer {
    pub token: Secret,
    pub generation: u64,
}

/// One session (or ready token) shared by every request of the sink.
pub(super) struct TokenSource {
    credentials: Credentials,
    sessions_url: String,
    reload: AtomicBool,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    current: Option<Current>,
    generation: u64,
    /// mtime and size of the token file when it was read.
    file_stamp: Option<(Option<SystemTime>, u64)>,
}

struct Current {
    token: Secret,
    generation: u64,
    /// Open a new session from this instant on (`None`: until a 401).
    renew_at: Option<Instant>,
    /// The token's own expiry, by this machine's clock.
    expires_at: Option<Instant>,
}

/// What `/sessions` gave.
pub(super) struct Session {
    pub token: Secret,
    /// `exp` of the JWT payload, in unix seconds.
    pub exp: Option<i64>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("credentials", &self.credentials)
            .field("sessions_url", &self.sessions_url)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(credentials: Credentials, base_url: &str) -> TokenSource {
        TokenSource {
            credentials,
            sessions_url: format!("{base_url}/sessions"),
            reload: AtomicBool::new(false),
            state: Mutex::new(TokenState::default()),
        }
    }

    pub fn is_api_key(&self) -> bool {
        matches!(self.credentials, Credentials::ApiKey { .. })
    }

    /// The next [`TokenSource::bearer`] re-reads the secret or token and,
    /// with an API key, opens a new session.
    pub fn reload(&self) {
        self.reload.store(true, Ordering::SeqCst);
    }

    /// A 401 answered this generation: the next request gets another token.
    pub async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.generation == generation)
        {
            state.current = None;
            state.file_stamp = None;
        }
    }

    /// The token to send now, opening a session or reading the token if needed.
    pub async fn bearer(&self, client: &reqwest::Client) -> Result<Bearer, TokenError> {
        let mut state = self.state.lock().await;
        if self.reload.swap(false, Ordering::SeqCst) {
            state.current = None;
            state.file_stamp = None;
        }
        match &self.credentials {
            Credentials::ApiKey { key, secret } => {
                self.session_bearer(&mut state, client, key, secret).await
            }
            Credentials::TokenFile(path) => file_bearer(&mut state, path).await,
            Credentials::TokenEnv(var) => {
                if let Some(current) = &state.current {
                    return Ok(current.bearer());
                }
                let token = read_env(var).map_err(|problem| TokenError::Fault {
                    problem: format!("no token: {problem}"),
                    fix: format!("set {var} to a valid access token in the daemon's environment"),
                })?;
                Ok(state.install(token, None, None))
            }
        }
    }

    /// With an API key: the current session's token, or a new session's
    /// when it is about to expire.
    async fn session_bearer(
        &self,
        state: &mut TokenState,
        client: &reqwest::Client,
        key: &str,
        secret: &SecretSource,
    ) -> Result<Bearer, TokenError> {
        if let Some(current) = &state.current {
            if current.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(current.bearer());
            }
            tracing::debug!(api_key = %key, "the session token is about to expire: opening a new session");
        }
        let secret = read_secret(secret).await?;
        let session = match open_session(client, &self.sessions_url, key, &secret).await {
            Ok(session) => session,
            Err(TokenError::Transient(problem)) => {
                // The API is having trouble: a token that has not expired yet still serves.
                if let Some(current) = state.current.as_ref().filter(|c| c.still_valid()) {
                    tracing::warn!(api_key = %key, "cannot renew the session yet ({problem}); the current token stays in use");
                    return Ok(current.bearer());
                }
                return Err(TokenError::Transient(problem));
            }
            Err(err) => return Err(err),
        };
        let (now, now_instant) = (SystemTime::now(), Instant::now());
        let renew_at = renew_at(session.exp, now, now_instant);
        let expires_at = expires_at(session.exp, now, now_instant);
        if session.exp.is_some() && renew_at.is_none() {
            tracing::warn!(
                api_key = %key,
                "the new session token has already expired by this machine's clock; it is used until the API refuses it (check the clock)"
            );
        }
        tracing::info!(
            api_key = %key,
            "session opened for api key {key}{}",
            describe_exp(session.exp)
        );
        Ok(state.install(session.token, renew_at, expires_at))
    }
}

/// A token file: the token read before, unless the file changed since.
async fn file_bearer(state: &mut TokenState, path: &Path) -> Result<Bearer, TokenError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|err| token_file_fault(path, &err.to_string()))?;
    let stamp = (meta.modified().ok(), meta.len());
    if state.file_stamp == Some(stamp) {
        if let Some(current) = &state.current {
            return Ok(current.bearer());
        }
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|err| token_file_fault(path, &err.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(token_file_fault(path, "the file is empty"));
    }
    state.file_stamp = Some(stamp);
    if let Some(current) = &state.current {
        if current.token.expose() == token {
            return Ok(current.bearer());
        }
    }
    tracing::info!(path = %path.display(), "token read from {}", path.display());
    Ok(state.install(Secret::new(token.to_string()), None, None))
}

impl TokenState {
    fn install(
        &mut self,
        token: Secret,
        renew_at: Option<Instant>,
        expires_at: Option<Instant>,
    ) -> Bearer {
        self.generation += 1;
        let current = Current {
            token,
            generation: self.generation,
            renew_at,
            expires_at,
        };
        let bearer = current.bearer();
        self.current = Some(current);
        bearer
    }
}

impl Current {
    fn still_valid(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() < at)
    }

    fn bearer(&self) -> Bearer {
        Bearer {
            token: self.token.clone(),
            generation: self.generation,
        }
    }
}

fn token_file_fault(path: &Path, problem: &str) -> TokenError {
    TokenError::Fault {
        problem: format!("cannot read the token file {}: {problem}", path.display()),
        fix: format!("put a valid access token in {}", path.display()),
    }
}

fn read_env(var: &str) -> Result<Secret, String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(Secret::new(value.trim().to_string())),
        Ok(_) => Err(format!("the environment variable {var} is empty")),
        Err(std::env::VarError::NotPresent) => {
            Err(format!("the environment variable {var} is not set"))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(format!("the environment variable {var} is not valid UTF-8"))
        }
    }
}

/// The API secret, trimmed, from its file or environment variable.
pub(super) async fn read_secret(source: &SecretSource) -> Result<Secret, TokenError> {
    match source {
        SecretSource::File(path) => {
            let fix = format!("put the API secret in {}", path.display());
            match tokio::fs::read_to_string(path).await {
                Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim().to_string())),
                Ok(_) => Err(TokenError::Fault {
                    problem: format!("the secret file {} is empty", path.display()),
                    fix,
                }),
                Err(err) => Err(TokenError::Fault {
                    problem: format!("cannot read the secret file {}: {err}", path.display()),
                    fix,
                }),
            }
        }
        SecretSource::Env(var) => read_env(var).map_err(|problem| TokenError::Fault {
            problem,
            fix: format!("set {var} to the API secret in the daemon's environment"),
        }),
    }
}

/// `POST /sessions` with the key and secret.
pub(super) async fn open_session(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    secret: &Secret,
) -> Result<Session, TokenError> {
    let body = serde_json::json!({ "type": "api-key", "key": key, "secret": secret.expose() });
    let response = client.post(url).json(&body).send().await.map_err(|err| {
        TokenError::Transient(format!("POST {url}: {}", super::describe_error(&err)))
    })?;
    let status = response.status();
    let retry_after = super::retry_after(response.headers());
    let text = match response.text().await {
        Ok(text) => text,
        Err(err) if status.is_success() => {
            return Err(TokenError::Transient(format!(
                "POST {url}: the answer was cut off: {}",
                super::describe_error(&err)
            )))
        }
        Err(_) => String::new(),
    };
    let message = super::api_message(&scrub(&text, &[secret.expose()]));
    if status.is_success() {
        let token = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("access_token")
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            })
            .filter(|t| !t.is_empty());
        return match token {
            Some(token) => Ok(Session {
                exp: jwt_exp(&token),
                token: Secret::new(token),
            }),
            None => Err(TokenError::Fault {
                problem: format!("POST {url} answered {status} without an access_token"),
                fix: "check base_url: it must be the consents API's base URL".into(),
            }),
        };
    }
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNAUTHORIZED => Err(TokenError::Fault {
            problem: format!("the API refused api key {key} or its secret ({status}: {message})"),
            fix: "check api_key and the secret in secret_file / secret_env".into(),
        }),
        StatusCode::FORBIDDEN => Err(TokenError::Fault {
            problem: format!("the API forbids sessions for api key {key} ({status}: {message})"),
            fix: "check that the key is enabled for this API".into(),
        }),
        StatusCode::TOO_MANY_REQUESTS => Err(TokenError::Throttled(retry_after)),
        StatusCode::REQUEST_TIMEOUT => Err(TokenError::Transient(format!("POST {url}: {status}"))),
        s if s.is_server_error() => Err(TokenError::Transient(format!(
            "POST {url}: {status} {message}"
        ))),
        _ => Err(TokenError::Fault {
            problem: format!("POST {url} answered {status}: {message}"),
            fix: "check base_url: it must be the consents API's base URL".into(),
        }),
    }
}

/// Replaces every occurrence of the given secrets by `****`.
pub(super) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        text = text.replace(secret, "****");
    }
    text
}

/// `exp` (unix seconds) of a JWT's payload, if it has one.
pub(super) fn jwt_exp(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = value.get("exp")?;
    exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))
}

/// When to open the next session: 60 s, or a tenth of the lifetime if
/// shorter, before `exp`. `None` when there is no `exp` or it has passed.
pub(super) fn renew_at(exp: Option<i64>, now: SystemTime, now_instant: Instant) -> Option<Instant> {
    let expires = expires_at(exp, now, now_instant)?;
    let lifetime = expires - now_instant;
    Some(expires - (lifetime / 10).min(Duration::from_secs(60)))
}

/// The instant of `exp` by this machine's clock (`None` if passed or absent).
fn expires_at(exp: Option<i64>, now: SystemTime, now_instant: Instant) -> Option<Instant> {
    let now_unix = now.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
    let lifetime = exp? as f64 - now_unix;
    (lifetime > 0.0).then(|| now_instant + Duration::from_secs_f64(lifetime))
}

/// `, token valid until 2026-11-23T15:55:00Z` (or nothing without `exp`).
pub(super) fn describe_exp(exp: Option<i64>) -> String {
    match exp.and_then(exp_rfc3339) {
        Some(at) => format!(", token valid until {at}"),
        None => ", token without an expiry".into(),
    }
}

/// `exp` (Unix seconds) as an RFC 3339 UTC time, `None` out of range.
pub(super) fn exp_rfc3339(exp: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(exp, 0)
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn jwt(payload: &str) -> String {
        format!(
            "eyJhbGciOiJIUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn exp_is_read_from_the_jwt_payload() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"sub":"k","exp":1900000000}"#)),
            Some(1_900_000_000)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"k"}"#)), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
    }

    #[test]
    fn renewal_comes_a_minute_or_a_tenth_of_the_lifetime_early() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let instant = Instant::now();
        let hour = renew_at(Some(1_000_000 + 3600), now, instant).expect("future exp");
        assert_eq!(hour - instant, Duration::from_secs(3540));
        let short = renew_at(Some(1_000_000 + 2), now, instant).expect("future exp");
        assert_eq!(short - instant, Duration::from_millis(1800));
        assert!(renew_at(Some(999_999), now, instant).is_none());
        assert!(renew_at(None, now, instant).is_none());
    }

    #[test]
    fn scrub_hides_secrets() {
        assert_eq!(
            scrub("bad secret hunter2!", &["hunter2", ""]),
            "bad secret ****!"
        );
    }
}
