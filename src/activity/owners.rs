//! Who took the call: Quo user ids become emails through `GET /users` (cached, read again when
//! an unknown user appears, at most once a minute), and emails become CRM owner ids through
//! `activity.owners` or `[activity.owner_lookup]` (cached an hour, misses too).
//!
//! Attribution never blocks logging: when Quo or the CRM cannot answer, the activity is written
//! without an owner, and the next change to it carries the owner once known.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;
use tokio::sync::Mutex;

use super::config::{OwnerLookupConfig, body_json};
use super::model::Attribution;
use crate::quo::dated::DatedClient;
use crate::source::Source;

/// Shortest time between two reads of `GET /users`.
const USERS_REFRESH: Duration = Duration::from_secs(60);
/// How long an owner lookup's answer is kept.
const OWNER_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Cache {
    emails: HashMap<String, String>,
    users_read_at: Option<Instant>,
    owners: HashMap<String, (Option<String>, Instant)>,
}

/// Attribution of activity to people.
#[derive(Debug, Clone)]
pub struct People {
    dated: DatedClient,
    owners: Arc<HashMap<String, String>>,
    lookup: Option<(OwnerLookupConfig, Arc<Source>)>,
    cache: Arc<Mutex<Cache>>,
}

impl People {
    /// People looked up with `dated`, `owners` (email → owner id) and the optional REST lookup.
    pub fn new(
        dated: DatedClient,
        owners: &std::collections::BTreeMap<String, String>,
        lookup: Option<(OwnerLookupConfig, Arc<Source>)>,
    ) -> Self {
        Self {
            dated,
            owners: Arc::new(
                owners
                    .iter()
                    .map(|(email, owner)| (email.trim().to_ascii_lowercase(), owner.clone()))
                    .collect(),
            ),
            lookup,
            cache: Arc::default(),
        }
    }

    /// Reads `GET /users` now (at start), so the first activity does not wait for it.
    pub async fn warm(&self) {
        let _ = self.email("").await;
    }

    /// The email and CRM owner of `user_id`.
    pub async fn attribution(&self, user_id: Option<&str>) -> Attribution {
        let Some(user_id) = user_id else {
            return Attribution::default();
        };
        let email = self.email(user_id).await;
        let owner_id = match &email {
            Some(email) => self.owner(email).await,
            None => None,
        };
        Attribution {
            user_email: email,
            owner_id,
        }
    }

    async fn email(&self, user_id: &str) -> Option<String> {
        let mut cache = self.cache.lock().await;
        if let Some(email) = cache.emails.get(user_id) {
            return Some(email.clone());
        }
        if cache
            .users_read_at
            .is_some_and(|at| at.elapsed() < USERS_REFRESH)
        {
            return None;
        }
        cache.users_read_at = Some(Instant::now());
        match self.dated.users().await {
            Ok(users) => {
                cache.emails = users
                    .into_iter()
                    .filter_map(|u| Some((u.id, u.email?)))
                    .collect();
                metrics::gauge!("quo_sync_activity_users").set(cache.emails.len() as f64);
            }
            Err(e) => {
                tracing::warn!(event = "activity_users_unreadable", error = %e, "could not read Quo's users; activity is written without its user's email for now");
            }
        }
        cache.emails.get(user_id).cloned()
    }

    async fn owner(&self, email: &str) -> Option<String> {
        let key = email.trim().to_ascii_lowercase();
        if let Some(owner) = self.owners.get(&key) {
            return Some(owner.clone());
        }
        let (config, source) = self.lookup.as_ref()?;
        {
            let cache = self.cache.lock().await;
            if let Some((owner, at)) = cache.owners.get(&key)
                && at.elapsed() < OWNER_TTL
            {
                return owner.clone();
            }
        }
        let found = lookup_owner(config, source, &key).await;
        match found {
            Ok(owner) => {
                self.cache
                    .lock()
                    .await
                    .owners
                    .insert(key, (owner.clone(), Instant::now()));
                owner
            }
            Err(reason) => {
                tracing::warn!(event = "activity_owner_lookup_failed", reason = %reason, "owner lookup failed; written without an owner for now");
                None
            }
        }
    }
}

/// One `[activity.owner_lookup]` request.
async fn lookup_owner(
    config: &OwnerLookupConfig,
    source: &Source,
    email: &str,
) -> Result<Option<String>, String> {
    let Source::Rest(rest) = source else {
        return Err("the owner lookup needs a REST source".into());
    };
    let path = config.path.replace(
        "{email}",
        &form_urlencoded::byte_serialize(email.as_bytes()).collect::<String>(),
    );
    let body = config.body.as_ref().map(|b| {
        let text = body_json(b).to_string().replace("{email}", email);
        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null)
    });
    let (status, bytes) = rest
        .exchange(
            config.method.as_reqwest(),
            &path,
            body.as_ref(),
            &HeaderMap::new(),
            (None, false),
        )
        .await
        .map_err(|e| e.to_string())?;
    if status == 404 || status == 204 {
        return Ok(None);
    }
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}"));
    }
    let answer: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(answer.pointer(&config.id_pointer).and_then(|v| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }))
}
