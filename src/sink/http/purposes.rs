//! purposes: whether the purpose ids the config maps exist in their
//! organization, before the first drop finds out.
//!
//! An API v2 organization refuses every event whose purpose id it lacks.
//! This module lists an organization's purposes (`GET
//! {base_url}/metadata/purposes?organization_id=…&$limit=…&$skip=…`, every
//! page of `{"total", "limit", "skip", "data": [{"id": …}]}`) and compares
//! them with each import's `default_purpose` and `subscriptions` values.
//! `check --online` prints the comparison; the daemon logs a warning per
//! missing id at start and on SIGHUP.
//!
//! Never: refuse to start, or hold delivery back, for what it finds (the API
//! is the judge: refused events become rejected rows as always); put the
//! token in a message.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::session::{self, TokenError, TokenSource};
use crate::config::{Import, Secret};
use crate::parse::UnknownSubscription;

/// Purposes asked for per page.
const PAGE: usize = 100;
/// No organization has more pages than this; a server that says otherwise
/// is not followed further.
const MAX_PAGES: usize = 10_000;

/// What the check found for every import.
#[derive(Debug, Clone, PartialEq)]
pub struct PurposeCheck {
    pub imports: Vec<ImportPurposes>,
}

/// One import's mapped purpose ids against its organization's list.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportPurposes {
    pub import: String,
    pub organization: String,
    /// How many purposes the organization has, or why they could not be listed.
    pub listed: Result<usize, String>,
    /// Each mapped purpose id, where the config maps it, and whether the
    /// organization has it (`None`: unknown, the list could not be read).
    pub mapped: Vec<MappedPurpose>,
    /// `unknown_subscription = "passthrough"`: subscription numbers are sent
    /// as purpose ids, which no list can confirm beforehand.
    pub passthrough: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MappedPurpose {
    pub id: String,
    /// `default_purpose` or `subscriptions."12"`.
    pub key: String,
    pub present: Option<bool>,
}

impl PurposeCheck {
    /// Every (import, organization, mapped purpose) the organization lacks.
    pub fn missing(&self) -> impl Iterator<Item = (&ImportPurposes, &MappedPurpose)> {
        self.imports.iter().flat_map(|import| {
            import
                .mapped
                .iter()
                .filter(|purpose| purpose.present == Some(false))
                .map(move |purpose| (import, purpose))
        })
    }

    /// Logs a warning per missing purpose id (and per list that could not be read).
    pub fn log_warnings(&self) {
        for import in &self.imports {
            if let Err(reason) = &import.listed {
                tracing::warn!(
                    import = %import.import,
                    organization = %import.organization,
                    "the purposes of organization {} could not be checked: {reason}",
                    import.organization
                );
            }
        }
        for (import, purpose) in self.missing() {
            tracing::warn!(
                import = %import.import,
                organization = %import.organization,
                purpose = %purpose.id,
                "purpose {:?} ({} of import {:?}) is missing from organization {}: the API will refuse those events",
                purpose.id,
                purpose.key,
                import.import,
                import.organization
            );
        }
    }
}

/// The purpose ids `import` maps, each with the key that maps it, in the
/// config's order, each id once.
pub fn mapped_ids(import: &Import) -> Vec<(String, String)> {
    let purposes = &import.format.purposes;
    let mut mapped = vec![(
        purposes.default_purpose.clone(),
        "default_purpose".to_string(),
    )];
    let mut subscriptions: Vec<(&u64, &String)> = purposes.subscriptions.iter().collect();
    subscriptions.sort();
    for (number, id) in subscriptions {
        if !mapped.iter().any(|(known, _)| known == id) {
            mapped.push((id.clone(), format!("subscriptions.\"{number}\"")));
        }
    }
    mapped
}

/// Lists the purposes of every import's organization (each organization
/// once) and compares. `default_org` is the sink's organization.
pub(super) async fn check(
    client: &reqwest::Client,
    base_url: &str,
    tokens: &TokenSource,
    default_org: &str,
    imports: &[Arc<Import>],
) -> PurposeCheck {
    let mut lists: HashMap<String, Result<BTreeSet<String>, String>> = HashMap::new();
    let mut result = Vec::new();
    for import in imports {
        let organization = import.organization().unwrap_or(default_org).to_string();
        if !lists.contains_key(&organization) {
            let listed = match tokens.bearer(client).await {
                Ok(bearer) => list(client, base_url, &organization, &bearer.token).await,
                Err(err) => Err(token_problem(err)),
            };
            lists.insert(organization.clone(), listed);
        }
        let listed = lists
            .get(&organization)
            .cloned()
            .unwrap_or_else(|| Err("not listed".into()));
        let mapped = mapped_ids(import)
            .into_iter()
            .map(|(id, key)| MappedPurpose {
                present: listed.as_ref().ok().map(|known| known.contains(&id)),
                id,
                key,
            })
            .collect();
        result.push(ImportPurposes {
            import: import.name.clone(),
            organization,
            listed: listed.map(|known| known.len()),
            mapped,
            passthrough: import.format.purposes.unknown == UnknownSubscription::Passthrough,
        });
    }
    PurposeCheck { imports: result }
}

fn token_problem(err: TokenError) -> String {
    match err {
        TokenError::Fault { problem, fix } => format!("{problem}. Fix: {fix}"),
        TokenError::Transient(reason) => format!("no session: {reason}"),
        TokenError::Throttled(_) => "POST /sessions answered 429 Too Many Requests".into(),
    }
}

/// Every page of an organization's purposes.
async fn list(
    client: &reqwest::Client,
    base_url: &str,
    organization: &str,
    token: &Secret,
) -> Result<BTreeSet<String>, String> {
    let mut ids = BTreeSet::new();
    let mut skip = 0usize;
    for _ in 0..MAX_PAGES {
        let page = fetch_page(client, base_url, organization, token, skip).await?;
        let count = page.ids.len();
        ids.extend(page.ids);
        skip += count;
        if count == 0 || skip >= page.total {
            return Ok(ids);
        }
    }
    Err(format!(
        "more than {MAX_PAGES} pages of purposes: not followed further"
    ))
}

/// One page: its ids and the total the server announces.
#[derive(Debug, PartialEq)]
struct Page {
    total: usize,
    ids: Vec<String>,
}

async fn fetch_page(
    client: &reqwest::Client,
    base_url: &str,
    organization: &str,
    token: &Secret,
    skip: usize,
) -> Result<Page, String> {
    let mut url = reqwest::Url::parse(&format!("{base_url}/metadata/purposes"))
        .map_err(|err| format!("base_url {base_url:?} is not a valid URL: {err}"))?;
    url.query_pairs_mut()
        .append_pair("organization_id", organization)
        .append_pair("$limit", &PAGE.to_string())
        .append_pair("$skip", &skip.to_string());
    let where_ = format!("GET {base_url}/metadata/purposes");
    let response = client
        .get(url)
        .bearer_auth(token.expose())
        .send()
        .await
        .map_err(|err| format!("{where_}: {}", super::describe_error(&err)))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|err| format!("{where_}: {}", super::describe_error(&err)))?;
    if !status.is_success() {
        let message = super::api_message(&session::scrub(&text, &[token.expose()]));
        return Err(format!("{where_} answered {status}: {message}"));
    }
    parse_page(&text).map_err(|problem| format!("{where_}: {problem}"))
}

/// `{"total": n, "data": [{"id": …}, …]}` (other fields are ignored).
fn parse_page(text: &str) -> Result<Page, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|err| format!("the answer is not JSON: {err}"))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("the answer has no \"data\" list")?;
    let ids = data
        .iter()
        .map(|purpose| {
            purpose
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("a purpose without a string \"id\": {purpose}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let total = value
        .get("total")
        .and_then(Value::as_u64)
        .map_or(ids.len(), |total| {
            usize::try_from(total).unwrap_or(usize::MAX)
        });
    Ok(Page { total, ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_read_and_junk_is_refused() {
        assert_eq!(
            parse_page(
                r#"{"total": 3, "limit": 2, "skip": 0, "data": [{"id": "a"}, {"id": "b", "x": 1}]}"#
            ),
            Ok(Page {
                total: 3,
                ids: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            parse_page(r#"{"data": []}"#),
            Ok(Page {
                total: 0,
                ids: vec![]
            })
        );
        assert!(parse_page("<html>").is_err());
        assert!(parse_page(r#"{"total": 1}"#).is_err());
        assert!(parse_page(r#"{"data": [{"id": 7}]}"#).is_err());
    }

    #[test]
    fn every_mapped_id_once_with_its_key() {
        let text = "[watch]\ndir = \"d\"\n[state]\ndir = \"s\"\n[sink]\nkind = \"file\"\ndir = \"o\"\n\
                    [[import]]\nname = \"n\"\npattern = \".*\"\ndate_format = \"yyyy-MM-dd HH:mm:ss\"\n\
                    default_purpose = \"email\"\n[import.subscriptions]\n\"13\" = \"monthly\"\n\"12\" = \"weekly\"\n\"14\" = \"email\"\n";
        let config =
            crate::config::parse_config(text, "t.toml", std::path::Path::new("")).expect("config");
        assert_eq!(
            mapped_ids(&config.imports[0]),
            vec![
                ("email".to_string(), "default_purpose".to_string()),
                ("weekly".to_string(), "subscriptions.\"12\"".to_string()),
                ("monthly".to_string(), "subscriptions.\"13\"".to_string()),
            ]
        );
    }
}
