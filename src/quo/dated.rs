//! The dated API client (`Quo-Api-Version: 2026-03-30`, quo-api-2026-03-30.md): calls,
//! messages, users, phone numbers and webhook subscriptions.
//!
//! It is the contact client with one more header: the same key, the same rate limiter, the same
//! counters, retries and write gate, because Quo counts requests per key whatever the version.
//! The activity poller asks for a [`DatedClient::background`] clone, whose reads take only the
//! limiter's background share while contact writes wait.
//!
//! Lists are cursor-paged (`limit` ≤ 50, `after`, `nextCursor`), newest first; a cursor answered
//! twice stops the listing with [`QuoError::Paging`]. Calls and messages come back as JSON
//! values, one per item, so the activity intake can read each leniently (clients must ignore
//! unknown fields, and one odd item must not fail a page).
//!
//! Range operators are a secondary-source fact (§6.1, §6.2): calls are said to take
//! `createdAt[gte|lte]` and messages `createdAt[gt|lt]`. Both readings are built: each list starts
//! with the operators the notes name and, when Quo answers 400 naming a `createdAt` parameter,
//! switches to the other pair for good (a one-second overlap keeps `gt` from losing an item).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{QuoClient, QuoError};
use super::encode_path_segment as encode_segment;
use super::listing::PageTokens;
use super::types::DataEnvelope;

/// The dated version this client speaks.
pub const API_VERSION: &str = "2026-03-30";

/// Largest page the dated lists serve.
pub const MAX_LIMIT: u32 = 50;

/// One page of a cursor-paged list, items undecoded.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CursorPage {
    /// The items, newest first.
    #[serde(default)]
    pub data: Vec<Value>,
    /// The cursor of the next page; `None` on the last.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Which of a call's late parts to read with it (`include=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Include {
    /// `summary`.
    pub summary: bool,
    /// `voicemail`.
    pub voicemail: bool,
}

impl Include {
    /// Both parts.
    pub const ALL: Include = Include {
        summary: true,
        voicemail: true,
    };

    fn param(self) -> Option<String> {
        match (self.summary, self.voicemail) {
            (true, true) => Some("summary,voicemail".into()),
            (true, false) => Some("summary".into()),
            (false, true) => Some("voicemail".into()),
            (false, false) => None,
        }
    }
}

/// A `createdAt` range, both ends optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedRange {
    /// Items created at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Items created at or before this instant.
    pub until: Option<DateTime<Utc>>,
}

/// A workspace user (`GET /users`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuoUser {
    /// `US…`.
    pub id: String,
    /// Their email, the key to a CRM owner.
    #[serde(default)]
    pub email: Option<String>,
    /// First name.
    #[serde(default)]
    pub first_name: Option<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: Option<String>,
}

/// A workspace phone number (`GET /phone-numbers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QuoNumber {
    /// `PN…`.
    pub id: String,
    /// E.164.
    #[serde(default)]
    pub number: Option<String>,
}

/// A webhook subscription as `GET /webhooks` shows it (no key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscription {
    /// Numeric string.
    pub id: String,
    /// Where Quo delivers.
    pub url: String,
    /// Event types delivered.
    #[serde(default)]
    pub events: Vec<String>,
    /// Phone-number filter (`None`, `[]` or `["*"]`: all).
    #[serde(default)]
    pub resource_ids: Option<Vec<String>>,
    /// `enabled` or `disabled`.
    #[serde(default)]
    pub status: String,
    /// Free text.
    #[serde(default)]
    pub label: Option<String>,
}

impl WebhookSubscription {
    /// Whether Quo delivers to it.
    pub fn is_enabled(&self) -> bool {
        self.status == "enabled"
    }
}

/// A new subscription (`POST /webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewWebhook {
    /// Where Quo delivers.
    pub url: String,
    /// Event types to deliver.
    pub events: Vec<String>,
    /// Phone-number filter: `["*"]` for every number (call and message events need one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_ids: Option<Vec<String>>,
    /// Free text (quo-sync writes `quo-sync`).
    pub label: String,
}

/// A change to a subscription (`PATCH /webhooks/{id}`); `None` fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPatch {
    /// New event set (replaces the old one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// New phone-number filter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_ids: Option<Vec<String>>,
    /// `enabled` or `disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// A subscription and its signing key, which Quo shows only on create and rotate.
pub struct CreatedWebhook {
    /// The subscription.
    pub subscription: WebhookSubscription,
    /// `whsec_…`.
    pub key: SecretString,
}

impl std::fmt::Debug for CreatedWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedWebhook")
            .field("subscription", &self.subscription)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyOnly {
    key: SecretString,
}

#[derive(Deserialize)]
struct CreatedBody {
    #[serde(flatten)]
    subscription: WebhookSubscription,
    key: SecretString,
}

/// The range operators a list takes: `[gte|lte]` (inclusive) or `[gt|lt]` (exclusive).
#[derive(Debug)]
struct RangeOps {
    inclusive: AtomicBool,
}

impl RangeOps {
    fn new(inclusive: bool) -> Self {
        Self {
            inclusive: AtomicBool::new(inclusive),
        }
    }

    fn names(&self) -> (&'static str, &'static str) {
        if self.inclusive.load(Ordering::Relaxed) {
            ("createdAt[gte]", "createdAt[lte]")
        } else {
            ("createdAt[gt]", "createdAt[lt]")
        }
    }

    /// Switches to the other pair when `error` is a 400 naming a `createdAt` parameter.
    fn switch_on(&self, error: &QuoError) -> bool {
        let QuoError::Rejected {
            status: 400, body, ..
        } = error
        else {
            return false;
        };
        let names_range = body.errors.iter().any(|e| e.path.contains("createdAt"))
            || body.message.contains("createdAt");
        if names_range {
            let was = self.inclusive.load(Ordering::Relaxed);
            self.inclusive.store(!was, Ordering::Relaxed);
            tracing::info!(
                event = "quo_range_operators",
                inclusive = !was,
                "Quo refused the createdAt range operators; switching to the other pair"
            );
        }
        names_range
    }
}

/// The dated API client; cheap to clone, every clone shares the key's limiter and counters.
#[derive(Debug, Clone)]
pub struct DatedClient {
    inner: QuoClient,
    calls: Arc<RangeOps>,
    messages: Arc<RangeOps>,
}

fn time_param(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl DatedClient {
    /// The dated client of `client`'s key (same limiter, counters and write gate).
    pub fn new(client: &QuoClient) -> Self {
        Self {
            inner: client.with_api_version(API_VERSION),
            calls: Arc::new(RangeOps::new(true)),
            messages: Arc::new(RangeOps::new(false)),
        }
    }

    /// A clone whose requests are background work: they yield to contact writes.
    pub fn background(&self) -> Self {
        Self {
            inner: self.inner.background(),
            ..self.clone()
        }
    }

    /// The contact client underneath (counters, limiter).
    pub fn quo(&self) -> &QuoClient {
        &self.inner
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        route: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, QuoError> {
        self.inner
            .call_idempotent(route, Method::GET, path, query, None::<&()>)
            .await
    }

    async fn list_page(
        &self,
        route: &'static str,
        path: &str,
        ops: &RangeOps,
        range: CreatedRange,
        mut query: Vec<(&'static str, String)>,
        after: Option<&str>,
    ) -> Result<CursorPage, QuoError> {
        query.push(("limit", MAX_LIMIT.to_string()));
        if let Some(cursor) = after {
            query.push(("after", cursor.to_string()));
        }
        for _ in 0..2 {
            let mut q = query.clone();
            let (low, high) = ops.names();
            let exclusive = low.ends_with("gt]");
            if let Some(since) = range.since {
                // `gt` excludes the bound itself: one second earlier keeps it in.
                let since = if exclusive {
                    since - chrono::Duration::seconds(1)
                } else {
                    since
                };
                q.push((low, time_param(since)));
            }
            if let Some(until) = range.until {
                let until = if exclusive {
                    until + chrono::Duration::seconds(1)
                } else {
                    until
                };
                q.push((high, time_param(until)));
            }
            match self.get(route, path, &q).await {
                Err(e) if (range.since.is_some() || range.until.is_some()) && ops.switch_on(&e) => {
                    continue;
                }
                other => {
                    let mut page: CursorPage = other?;
                    page.next_cursor = page.next_cursor.filter(|c| !c.is_empty());
                    return Ok(page);
                }
            }
        }
        Err(QuoError::Exhausted {
            route,
            attempts: 2,
            last: "neither createdAt operator pair was accepted".into(),
        })
    }

    /// One page of `GET /calls` (newest first) created within `range`, with `include`.
    pub async fn list_calls(
        &self,
        range: CreatedRange,
        include: Include,
        after: Option<&str>,
    ) -> Result<CursorPage, QuoError> {
        let query = include
            .param()
            .map(|p| vec![("include", p)])
            .unwrap_or_default();
        self.list_page("GET /calls", "/calls", &self.calls, range, query, after)
            .await
    }

    /// One page of `GET /messages` (newest first) created within `range`.
    pub async fn list_messages(
        &self,
        range: CreatedRange,
        after: Option<&str>,
    ) -> Result<CursorPage, QuoError> {
        self.list_page(
            "GET /messages",
            "/messages",
            &self.messages,
            range,
            Vec::new(),
            after,
        )
        .await
    }

    /// `GET /calls/{id}?include=…`; `None` when Quo has no such call.
    pub async fn get_call(&self, id: &str, include: Include) -> Result<Option<Value>, QuoError> {
        let path = format!("/calls/{}", encode_segment(id));
        let query = include
            .param()
            .map(|p| vec![("include", p)])
            .unwrap_or_default();
        not_found_as_none(
            self.get::<DataEnvelope<Value>>("GET /calls/{id}", &path, &query)
                .await,
        )
    }

    /// `GET /calls/{id}/transcripts`: one entry per recording segment.
    pub async fn call_transcripts(&self, id: &str) -> Result<Vec<Value>, QuoError> {
        let path = format!("/calls/{}/transcripts", encode_segment(id));
        match self
            .get::<CursorPage>("GET /calls/{id}/transcripts", &path, &[])
            .await
        {
            Ok(page) => Ok(page.data),
            Err(QuoError::Rejected { status: 404, .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// `GET /messages/{id}`; `None` when Quo has no such message.
    pub async fn get_message(&self, id: &str) -> Result<Option<Value>, QuoError> {
        let path = format!("/messages/{}", encode_segment(id));
        not_found_as_none(
            self.get::<DataEnvelope<Value>>("GET /messages/{id}", &path, &[])
                .await,
        )
    }

    /// Every item of a cursor-paged list without filters.
    async fn all<T: serde::de::DeserializeOwned>(
        &self,
        route: &'static str,
        path: &str,
    ) -> Result<Vec<T>, QuoError> {
        let mut out = Vec::new();
        let mut tokens = PageTokens::default();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![("limit", MAX_LIMIT.to_string())];
            if let Some(cursor) = &after {
                query.push(("after", cursor.clone()));
            }
            let page: CursorPage = self.get(route, path, &query).await?;
            for item in page.data {
                match serde_json::from_value(item) {
                    Ok(value) => out.push(value),
                    Err(e) => {
                        tracing::warn!(route, error = %e, "skipping an item Quo answered in an unexpected shape")
                    }
                }
            }
            match page.next_cursor.filter(|c| !c.is_empty()) {
                Some(next) => {
                    tokens.next(route, &next)?;
                    after = Some(next);
                }
                None => return Ok(out),
            }
        }
    }

    /// `GET /users`, every page.
    pub async fn users(&self) -> Result<Vec<QuoUser>, QuoError> {
        self.all("GET /users", "/users").await
    }

    /// `GET /phone-numbers`, every page.
    pub async fn phone_numbers(&self) -> Result<Vec<QuoNumber>, QuoError> {
        self.all("GET /phone-numbers", "/phone-numbers").await
    }

    /// `GET /webhooks` (not paged).
    pub async fn webhooks(&self) -> Result<Vec<WebhookSubscription>, QuoError> {
        let envelope: DataEnvelope<Vec<WebhookSubscription>> =
            self.get("GET /webhooks", "/webhooks", &[]).await?;
        Ok(envelope.data)
    }

    /// `POST /webhooks`, sent at most once where it could have landed: an unknown outcome is
    /// [`QuoError::Ambiguous`] (the caller lists, and rotates the key of what it finds).
    pub async fn create_webhook(&self, body: &NewWebhook) -> Result<CreatedWebhook, QuoError> {
        let envelope: DataEnvelope<CreatedBody> = self
            .inner
            .write_once("POST /webhooks", Method::POST, "/webhooks", Some(body))
            .await?;
        Ok(CreatedWebhook {
            subscription: envelope.data.subscription,
            key: envelope.data.key,
        })
    }

    /// `PATCH /webhooks/{id}` (idempotent: it sets values).
    pub async fn update_webhook(
        &self,
        id: &str,
        patch: &WebhookPatch,
    ) -> Result<WebhookSubscription, QuoError> {
        let path = format!("/webhooks/{}", encode_segment(id));
        let envelope: DataEnvelope<WebhookSubscription> = self
            .inner
            .call_idempotent(
                "PATCH /webhooks/{id}",
                Method::PATCH,
                &path,
                &[],
                Some(patch),
            )
            .await?;
        Ok(envelope.data)
    }

    /// `DELETE /webhooks/{id}`; `false` when it was already gone.
    pub async fn delete_webhook(&self, id: &str) -> Result<bool, QuoError> {
        let path = format!("/webhooks/{}", encode_segment(id));
        match self
            .inner
            .call_idempotent::<Value, ()>("DELETE /webhooks/{id}", Method::DELETE, &path, &[], None)
            .await
        {
            Ok(_) => Ok(true),
            Err(QuoError::Rejected { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /webhooks/{id}/rotate`: a new signing key (the only way to learn the key of a
    /// subscription whose create answer was lost).
    pub async fn rotate_webhook(&self, id: &str) -> Result<SecretString, QuoError> {
        let path = format!("/webhooks/{}/rotate", encode_segment(id));
        let envelope: DataEnvelope<KeyOnly> = self
            .inner
            .call_idempotent(
                "POST /webhooks/{id}/rotate",
                Method::POST,
                &path,
                &[],
                None::<&()>,
            )
            .await?;
        Ok(envelope.data.key)
    }
}

fn not_found_as_none<T>(result: Result<DataEnvelope<T>, QuoError>) -> Result<Option<T>, QuoError> {
    match result {
        Ok(envelope) => Ok(Some(envelope.data)),
        Err(QuoError::Rejected { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}
