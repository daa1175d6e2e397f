//! Generic REST CRM source adapter: reads contacts from any JSON-over-HTTP CRM and writes
//! reverse-path changes back, driven entirely by the `[source.rest]` table.
//!
//! Most CRMs differ only in where things sit in their JSON (records array, id, fields), how they
//! page (page number, offset, body cursor, next URL, `Link` header) and how they authenticate.
//! Describing those with JSON pointers and a handful of keys lets one adapter serve HubSpot,
//! Pipedrive, json-server and home-grown APIs without code per vendor.
//!
//! Guarantees the rest of quo-sync relies on:
//! - every item of every page arrives as a `SourceItem` (unreadable ones as `Bad`, never dropped);
//! - a read that cannot finish (server loops, repeats a cursor, returns garbage) is an error, never
//!   a silently short "complete" read, because a complete read lets the planner infer deletions;
//! - the CRM gets its own rate limiter and retry loop (the same machinery as the Quo client), and
//!   401/403 stop the cycle at once;
//! - secrets never reach logs, errors or `Debug` output, including secrets in query strings.
//!
//! One file per concern: `config` (the table, a file per section), `auth` (credentials), `http`
//! (one exchange with retries), `paging` (the list call), `records` (JSON → `SourceRecord`),
//! `pointer` (editing JSON records), `write` (write-back), `versions` (records as read, to
//! detect edits before a write), `webhook` (the `[source.rest.webhook]` settings), `named`
//! (reading only the records a CRM webhook names), `create` (records made from contacts made in
//! Quo). This file holds the adapter itself.

mod auth;
mod config;
mod create;
mod http;
mod named;
mod oauth;
mod paging;
mod pointer;
mod records;
mod versions;
mod webhook;
mod write;

pub use config::{
    ArrayFieldConfig, AuthConfig, AuthKind, DEFAULT_FULL_READ_EVERY, OAuthGrant, OAuthStyle,
    PagingConfig, PagingStyle, ParamValue, RestConfigError, RestSourceConfig, SinceFormat,
    UPDATED_SINCE_PLACEHOLDER, UpdateConfig, UpdateMethod,
};
pub use create::{CreateConfig, CreateMethod};
pub use http::redact_url;
pub use named::{MAX_NAMED_IDS, NoticeIds};
pub use paging::next_link;
pub use pointer::set_pointer;
pub use records::{parse_time, value_text};
pub use webhook::WebhookConfig;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use reqwest::Url;

use super::SourceError;
use crate::quo::grace::AuthGrace;
use crate::quo::limiter::RateLimiter;
use crate::quo::retry::RetryPolicy;
use auth::Auth;

/// Reads and writes contacts in a REST CRM described by `[source.rest]`.
#[derive(Debug)]
pub struct RestSource {
    config: RestSourceConfig,
    base: Url,
    auth: Auth,
    client: reqwest::Client,
    limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
    /// Each record as last read, for the write-back conflict check.
    versions: versions::ReadVersions,
    /// Set when a read saw the list move under it; the next read is then a full read.
    full_read_due: AtomicBool,
    /// `[source.rest.webhook]` with its secret resolved.
    webhook: Option<WebhookSettings>,
    /// Ids named by CRM webhooks, waiting for the next read.
    named: named::NamedReads,
    /// The credential's refusal clock (`auth_grace`), told of every accepted (2xx) answer.
    auth_grace: Arc<AuthGrace>,
}

/// The CRM webhook's settings, secret resolved (never shown by `Debug`).
pub struct WebhookSettings {
    /// HMAC-SHA256 key.
    pub secret: secrecy::SecretString,
    /// Header carrying `sha256=<hex>`.
    pub signature_header: String,
    /// Header carrying the signed delivery time, when configured.
    pub timestamp_header: Option<String>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "webhook({}: [REDACTED], max {} bytes)",
            self.signature_header, self.max_body_bytes
        )
    }
}

impl RestSource {
    /// Builds the adapter from the `[source.rest]` table (reads secrets from env/files; no network).
    pub fn from_table(table: &toml::Table) -> Result<Self, RestConfigError> {
        Self::new(RestSourceConfig::from_table(table)?)
    }

    /// Builds the adapter from a parsed configuration.
    pub fn new(config: RestSourceConfig) -> Result<Self, RestConfigError> {
        config.validate()?;
        let retry = RetryPolicy {
            max_retries: config.max_retries,
            base: config.retry_base.0,
            cap: config.max_backoff.0,
        };
        let auth = Auth::resolve(
            &config.auth,
            config.timeout.0,
            retry,
            config.allow_insecure_http,
        )?;
        let base = Url::parse(config.base_url.trim_end_matches('/'))
            .map_err(|e| RestConfigError::new("base_url", e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .redirect(http::same_origin_redirects())
            .user_agent(concat!("quo-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                RestConfigError::new("base_url", format!("cannot build an HTTP client: {e}"))
            })?;
        let webhook = match &config.webhook {
            None => None,
            Some(w) => Some(WebhookSettings {
                secret: auth::resolve_secret(
                    "webhook.secret",
                    &w.secret,
                    &w.secret_env,
                    &w.secret_file,
                )?,
                signature_header: w.signature_header.clone(),
                timestamp_header: w.timestamp_header.clone(),
                max_body_bytes: w.max_body_bytes,
            }),
        };
        Ok(Self {
            webhook,
            limiter: RateLimiter::per_second(config.requests_per_second),
            base,
            auth,
            client,
            retry,
            versions: versions::ReadVersions::default(),
            full_read_due: AtomicBool::new(false),
            named: named::NamedReads::default(),
            auth_grace: Arc::new(AuthGrace::new(config.auth_grace.0)),
            config,
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &RestSourceConfig {
        &self.config
    }

    /// The CRM's limiter (for metrics and tests).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Whether reads can be incremental (`updated_since_param`, `updated_since_header` or
    /// `{updated_since}` in a `query` value).
    pub fn supports_incremental(&self) -> bool {
        self.config.incremental()
    }

    /// The credential's refusal clock: whether the CRM has accepted it in this process, and
    /// for how long it has been refused since (see [`crate::quo::grace`]).
    pub fn auth_grace(&self) -> &Arc<AuthGrace> {
        &self.auth_grace
    }

    /// The CRM webhook's settings, when `[source.rest.webhook]` is configured.
    pub fn webhook(&self) -> Option<&WebhookSettings> {
        self.webhook.as_ref()
    }

    /// Lets OAuth2 keep a rotated refresh token in the ledger.
    pub fn attach_ledger(&self, ledger: crate::ledger::Ledger) {
        if let Auth::OAuth2(oauth) = &self.auth {
            oauth.attach_ledger(ledger);
        }
    }

    /// Access tokens fetched from the OAuth2 token endpoint by this process (0 without OAuth2).
    pub fn tokens_fetched(&self) -> u64 {
        match &self.auth {
            Auth::OAuth2(oauth) => oauth.tokens_fetched(),
            _ => 0,
        }
    }

    /// Makes sure the API base is known before URLs are built: with `auth.base_url_pointer`
    /// it comes from the token answer, so a token is fetched first.
    pub(super) async fn prepare(&self) -> Result<(), SourceError> {
        if let Auth::OAuth2(oauth) = &self.auth
            && oauth.wants_instance_base()
            && oauth.instance_base().is_none()
        {
            oauth.authorization().await?;
        }
        Ok(())
    }

    /// The API base: the token answer's (`auth.base_url_pointer`) once known, else `base_url`.
    pub(super) fn api_base(&self) -> Url {
        match &self.auth {
            Auth::OAuth2(oauth) => oauth.instance_base().unwrap_or_else(|| self.base.clone()),
            _ => self.base.clone(),
        }
    }

    /// Whether the next cycle should read everything (`ReadRequest.since = None`): always without
    /// `updated_since_param`, on the first cycle, and once `full_read_every` (default 24h) has
    /// passed since the last full read. Only full reads let the planner detect deletions.
    pub fn wants_full_read(&self, last_full: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        if !self.supports_incremental() || self.full_read_due.load(Ordering::Relaxed) {
            return true;
        }
        let every = self
            .config
            .full_read_every
            .map(|d| d.0)
            .unwrap_or(DEFAULT_FULL_READ_EVERY);
        match last_full {
            None => true,
            Some(last) => match (now - last).to_std() {
                Ok(elapsed) => elapsed >= every,
                Err(_) => false, // last full read is in the future: clock skew, stay incremental
            },
        }
    }

    /// A short human description (`rest https://api.example.com/contacts`).
    pub fn describe(&self) -> String {
        match self.url(&self.config.list_path) {
            Ok(url) => format!("rest {}", self.shown(&url)),
            Err(_) => format!("rest {}{}", self.api_base(), self.config.list_path),
        }
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, SourceError> {
        let joined = format!("{}{}", self.api_base().as_str().trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| SourceError::Crm(format!("bad URL {path:?}: {e}")))
    }

    /// The URL with secret-looking query values replaced, for logs and errors.
    pub(super) fn shown(&self, url: &Url) -> String {
        redact_url(url, self.auth.query_param())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    pub(crate) fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    pub(crate) const MINIMAL: &str = r#"
        base_url = "https://crm.example.com"
        list_path = "/contacts"
        id_pointer = "/id"
    "#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rest::test_support::*;

    #[test]
    fn full_reads_follow_the_interval() {
        let now = Utc::now();
        let source = RestSource::from_table(&table(MINIMAL)).unwrap();
        assert!(
            source.wants_full_read(Some(now), now),
            "no incremental param: always full"
        );
        let source = RestSource::from_table(&table(&format!(
            "{MINIMAL}\nupdated_since_param = \"since\"\nfull_read_every = \"1h\""
        )))
        .unwrap();
        assert!(source.wants_full_read(None, now));
        assert!(!source.wants_full_read(Some(now - chrono::Duration::minutes(59)), now));
        assert!(source.wants_full_read(Some(now - chrono::Duration::minutes(60)), now));
    }
}
