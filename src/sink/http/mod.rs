//! http: delivers batches to the consents-events API and acknowledges,
//! batch by batch and in order, only what the API answered 2xx.
//!
//! What it owns: `POST {base_url}/consents/events?organization_id=…` with a
//! bearer token (`session` opens and renews it), the reading of every
//! answer, and the waiting between attempts (`gate` holds the whole sink
//! back on 429 and pauses it on refused credentials). Several batches of one
//! delivery are in flight at once, within one `concurrency` limit for the
//! whole sink; their acks still come out strictly in `seq` order.
//!
//! The decision it embodies: nothing is ever dropped. 429, 5xx, timeouts and
//! broken connections are retried until they go through (or until shutdown);
//! a 400/422 batch is split in halves until the refused events are isolated,
//! each becoming a [`Refusal`] with the API's message; a refused credential
//! or a wrong URL pauses all submission until it is fixed, and refuses no
//! event for it.
//!
//! Never: acknowledge a batch the API did not answer 2xx in full; put the
//! secret or the token in a log line, an error or a `Debug` output; retry
//! without a delay; give up on a batch except on shutdown.

mod answer;
mod body;
mod delivery;
mod gate;
pub mod purposes;
mod ratelimit;
mod request;
mod session;
mod share;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub(crate) use self::answer::{api_message, describe_error, retry_after};
pub use self::delivery::HttpDelivery;
use self::gate::Gate;
use self::request::{deliver_request, Request};
use self::session::{TokenError, TokenSource};
use self::share::{Origin, Share};
use super::{DeliveryTarget, SinkError};
use crate::config::{Credentials, HttpSinkSettings, Import};
use crate::metrics::Metrics;

const USER_AGENT: &str = concat!("consent-drop/", env!("CARGO_PKG_VERSION"));

/// The consents API as a destination. Clones share one HTTP client, one
/// concurrency limit, one session, one pause state, and the queue of each
/// destination.
#[derive(Clone)]
pub struct HttpSink {
    shared: Arc<Shared>,
    shares: Arc<Mutex<Shares>>,
}

/// One queue a destination: (organization, `$disable_integrations`).
type Shares = HashMap<(String, bool), Arc<Share>>;

/// A file on its way to a destination's queue; see [`super::Sink::coming`].
pub struct Coming {
    share: Arc<Share>,
}

impl fmt::Debug for Coming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coming")
            .field("url", &self.share.url)
            .finish()
    }
}

impl Drop for Coming {
    fn drop(&mut self) {
        self.share.stop_producing();
    }
}

/// Where a request goes.
#[derive(Debug)]
struct Destination {
    url: reqwest::Url,
    organization: String,
}

struct Shared {
    settings: HttpSinkSettings,
    client: reqwest::Client,
    shutdown: CancellationToken,
    /// Requests in flight, all destinations together.
    permits: Arc<Semaphore>,
    gate: Gate,
    tokens: TokenSource,
    /// `api key k`, `token file …`, `token env …`: what the API may refuse.
    who: String,
    metrics: Metrics,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.shared;
        f.debug_struct("HttpSink")
            .field("base_url", &shared.settings.base_url)
            .field("organization_id", &shared.settings.organization_id)
            .field("credentials", &shared.settings.credentials)
            .field("concurrency", &shared.settings.concurrency)
            .field("gate", &shared.gate)
            .finish()
    }
}

impl HttpSink {
    /// `shutdown` stops retries and waits (requests on the wire may complete).
    pub fn new(
        settings: HttpSinkSettings,
        shutdown: CancellationToken,
        metrics: Metrics,
    ) -> Result<HttpSink, SinkError> {
        let client = build_client(&settings)?;
        // A base_url that makes no URL is refused now, not at the first file.
        events_url(&settings.base_url, &settings.organization_id)?;
        let who = who(&settings.credentials);
        let gate = Gate::new(
            settings.base_url.clone(),
            who.clone(),
            settings.auth_retry,
            settings.max_requests_per_second,
        )
        .with_pause_gauge(metrics.submission_paused.clone());
        let tokens = TokenSource::new(settings.credentials.clone(), &settings.base_url);
        Ok(HttpSink {
            shared: Arc::new(Shared {
                permits: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                settings,
                client,
                shutdown,
                gate,
                tokens,
                who,
                metrics,
            }),
            shares: Arc::default(),
        })
    }

    /// Starts the delivery of one occurrence, to the target's organization
    /// (or the sink's). Deliveries to the same organization with the same
    /// `$disable_integrations` share requests.
    pub fn open(&self, target: &DeliveryTarget) -> Result<HttpDelivery, SinkError> {
        let organization = target
            .organization_id
            .as_deref()
            .unwrap_or(&self.shared.settings.organization_id);
        let share = self.share_of(organization, target.disable_integrations)?;
        let origin = Origin {
            import: target.import.clone(),
            occurrence: target.occurrence_id.clone(),
            cancel: self.shared.shutdown.child_token(),
        };
        let window = 2 * self.shared.settings.concurrency.max(1);
        Ok(HttpDelivery::new(share, origin, window))
    }

    /// A file will soon be delivered: see [`super::Sink::coming`].
    /// None: the organization makes no URL (its delivery will say so).
    pub fn coming(
        &self,
        organization_id: Option<&str>,
        disable_integrations: bool,
    ) -> Option<Coming> {
        let organization = organization_id.unwrap_or(&self.shared.settings.organization_id);
        let share = self.share_of(organization, disable_integrations).ok()?;
        share.start_producing();
        Some(Coming { share })
    }

    /// The queue of a destination, made at its first use.
    fn share_of(
        &self,
        organization: &str,
        disable_integrations: bool,
    ) -> Result<Arc<Share>, SinkError> {
        let key = (organization.to_string(), disable_integrations);
        let mut shares = self
            .shares
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(share) = shares.get(&key) {
            return Ok(share.clone());
        }
        let share = self.share(organization, disable_integrations)?;
        shares.insert(key, share.clone());
        Ok(share)
    }

    /// The queue of one destination, whose requests go out on tasks of their own.
    fn share(
        &self,
        organization: &str,
        disable_integrations: bool,
    ) -> Result<Arc<Share>, SinkError> {
        let settings = &self.shared.settings;
        let mut url = events_url(&settings.base_url, organization)?;
        if disable_integrations {
            let query = format!("{}&$disable_integrations=true", url.query().unwrap_or(""));
            url.set_query(Some(&query));
        }
        let destination = Arc::new(Destination {
            url,
            organization: organization.to_string(),
        });
        let url = destination.url.to_string();
        let shared = self.shared.clone();
        let post = Arc::new(move |parts, permit| {
            let request = Request::new(parts);
            tokio::spawn(deliver_request(
                shared.clone(),
                destination.clone(),
                request,
                permit,
            ));
        });
        Ok(Share::new(
            settings.batch_size,
            self.shared.permits.clone(),
            self.shared.shutdown.clone(),
            url,
            post,
        ))
    }

    /// SIGHUP: read the secret or token again before the next request, and
    /// if submission is paused, try again now.
    pub fn credentials_changed(&self) {
        tracing::info!(
            base_url = %self.shared.settings.base_url,
            "reload: the credentials ({}) are read again before the next request",
            self.shared.who
        );
        self.shared.tokens.reload();
        self.shared.gate.credentials_changed();
    }

    /// Whether submission is paused on refused credentials or configuration.
    pub fn is_paused(&self) -> bool {
        self.shared.gate.is_paused()
    }

    /// Checks, in the background, that the organizations have the purpose
    /// ids the imports map, and logs a warning per missing one. Delivery
    /// does not wait for it.
    pub fn spawn_purpose_check(&self, imports: Vec<Arc<Import>>) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let check = purposes::check(
                &shared.client,
                &shared.settings.base_url,
                &shared.tokens,
                &shared.settings.organization_id,
                &imports,
            )
            .await;
            check.log_warnings();
            let missing = check.missing().count();
            tracing::info!(
                base_url = %shared.settings.base_url,
                missing,
                "purposes checked: {missing} mapped purpose id(s) missing"
            );
        });
    }
}

/// For `consent-drop check --online`: lists the purposes of every import's
/// organization and compares them with the ids the imports map.
pub async fn check_purposes(
    settings: &HttpSinkSettings,
    imports: &[Arc<Import>],
) -> Result<purposes::PurposeCheck, SinkError> {
    let client = build_client(settings)?;
    let tokens = TokenSource::new(settings.credentials.clone(), &settings.base_url);
    Ok(purposes::check(
        &client,
        &settings.base_url,
        &tokens,
        &settings.organization_id,
        imports,
    )
    .await)
}

/// For `consent-drop check --online`: with an API key, opens a session and
/// says until when its token is valid; with a ready token, reads it and sends
/// nothing. The secret and the token are never part of the answer.
pub async fn check_credentials(settings: &HttpSinkSettings) -> Result<String, SinkError> {
    let as_setup = |err: TokenError| match err {
        TokenError::Fault { problem, fix } => SinkError::Setup(format!("{problem}. Fix: {fix}")),
        TokenError::Transient(reason) => {
            SinkError::Setup(format!("cannot open a session: {reason}"))
        }
        TokenError::Throttled(_) => SinkError::Setup(format!(
            "{}/sessions answered 429 Too Many Requests: try again later",
            settings.base_url
        )),
    };
    match &settings.credentials {
        Credentials::ApiKey { key, secret } => {
            let client = build_client(settings)?;
            let secret = session::read_secret(secret).await.map_err(as_setup)?;
            let url = format!("{}/sessions", settings.base_url);
            let session = session::open_session(&client, &url, key, &secret)
                .await
                .map_err(as_setup)?;
            Ok(format!(
                "session opened at {} for api key {key}{}",
                settings.base_url,
                session::describe_exp(session.exp)
            ))
        }
        Credentials::TokenFile(path) => {
            let text = tokio::fs::read_to_string(path).await.map_err(|err| {
                SinkError::Setup(format!(
                    "cannot read the token file {}: {err}",
                    path.display()
                ))
            })?;
            describe_ready_token(text.trim(), &format!("the token file {}", path.display()))
        }
        Credentials::TokenEnv(var) => {
            let text = std::env::var(var).map_err(|_| {
                SinkError::Setup(format!("the environment variable {var} is not set"))
            })?;
            describe_ready_token(text.trim(), &format!("the environment variable {var}"))
        }
    }
}

fn describe_ready_token(token: &str, place: &str) -> Result<String, SinkError> {
    if token.is_empty() {
        return Err(SinkError::Setup(format!("{place} holds no token")));
    }
    let exp = session::jwt_exp(token);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match exp {
        Some(exp) if exp <= now => Err(SinkError::Setup(match session::exp_rfc3339(exp) {
            Some(at) => format!("the token in {place} has expired (at {at})"),
            // An exp before chrono's range (a crafted token).
            None => format!("the token in {place} has expired (exp {exp})"),
        })),
        Some(_) => Ok(format!(
            "a ready token is read from {place}{}; nothing was sent to the API",
            session::describe_exp(exp)
        )),
        None => Ok(format!(
            "a ready token is read from {place} (not a JWT: its expiry is unknown); nothing was sent to the API"
        )),
    }
}

fn who(credentials: &Credentials) -> String {
    match credentials {
        Credentials::ApiKey { key, .. } => format!("api key {key}"),
        Credentials::TokenFile(path) => format!("the token in {}", path.display()),
        Credentials::TokenEnv(var) => format!("the token in ${var}"),
    }
}

fn build_client(settings: &HttpSinkSettings) -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(!settings.allow_insecure_http)
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .map_err(|err| SinkError::Setup(format!("cannot build the HTTP client: {err}")))
}

fn events_url(base_url: &str, organization_id: &str) -> Result<reqwest::Url, SinkError> {
    let text = format!(
        "{}/consents/events?organization_id={}",
        base_url.trim_end_matches('/'),
        percent_encode(organization_id)
    );
    reqwest::Url::parse(&text)
        .map_err(|err| SinkError::Setup(format!("base_url {base_url:?} is not a valid URL: {err}")))
}

/// Percent-encodes everything but the unreserved characters of RFC 3986.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::SecretSource;
    use std::path::PathBuf;

    /// Settings for the sink's unit tests (an API key that is never read).
    pub(in crate::sink::http) fn settings() -> HttpSinkSettings {
        HttpSinkSettings {
            base_url: "https://api.test/v1".into(),
            organization_id: "my org/é".into(),
            credentials: Credentials::ApiKey {
                key: "k".into(),
                secret: SecretSource::File(PathBuf::from("/nonexistent")),
            },
            batch_size: 100,
            concurrency: 4,
            timeout: Duration::from_secs(30),
            allow_insecure_http: false,
            max_requests_per_second: None,
            gzip: false,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            auth_retry: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_url_encodes_the_organization_and_keeps_the_dollar() {
        let sink =
            HttpSink::new(settings(), CancellationToken::new(), Metrics::default()).expect("sink");
        let target = DeliveryTarget {
            occurrence_id: "o".into(),
            import: "i".into(),
            disable_integrations: true,
            organization_id: None,
            output_stem: "s".into(),
        };
        let delivery = sink.open(&target).expect("delivery");
        assert_eq!(
            delivery.url(),
            "https://api.test/v1/consents/events?organization_id=my%20org%2F%C3%A9&$disable_integrations=true"
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let sink =
            HttpSink::new(settings(), CancellationToken::new(), Metrics::default()).expect("sink");
        let text = format!("{sink:?}");
        assert!(text.contains("api.test"), "{text}");
    }
}
