//! `[source.rest]` as typed configuration: every key, its default, and the validation that
//! names the offending key, so a bad table fails at start-up rather than mid-cycle.
//!
//! This file holds the table itself, its error and the checks that span sections; each section
//! with rules of its own has a file: `auth` (credentials), `query` (fixed parameters and
//! incremental reads), `fields` (where a record sits in a list answer), `paging` (the next
//! page), `update` (write-back). `[source.rest.webhook]` and `[source.rest.create]` sit beside
//! the features they configure (`../webhook.rs`, `../create.rs`).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::HeaderName;
use serde::Deserialize;

use super::create::CreateConfig;
use super::webhook::WebhookConfig;
use crate::config::HumanDuration;
use crate::source::SourceError;

mod auth;
mod fields;
mod paging;
mod query;
mod update;

pub(super) use auth::insecure_transport;
pub use auth::{AuthConfig, AuthKind, OAuthGrant, OAuthStyle};
pub use fields::ArrayFieldConfig;
pub use paging::{PagingConfig, PagingStyle};
pub use query::{DEFAULT_FULL_READ_EVERY, ParamValue, SinceFormat, UPDATED_SINCE_PLACEHOLDER};
pub use update::{UpdateConfig, UpdateMethod};

/// Why `[source.rest]` cannot be used; always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source.rest{}: {reason}", dotted(.key))]
pub struct RestConfigError {
    /// The key below `source.rest` (`auth.token_env`, `paging.style`).
    pub key: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

fn dotted(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(".{key}")
    }
}

impl RestConfigError {
    pub(super) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl From<RestConfigError> for SourceError {
    fn from(e: RestConfigError) -> Self {
        SourceError::Config(e.to_string())
    }
}

/// The `[source.rest]` table, parsed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestSourceConfig {
    /// API root, `https://api.example.com`.
    pub base_url: String,
    /// Credentials.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Path of the list call, `/crm/v3/objects/contacts`.
    pub list_path: String,
    /// Fixed query parameters of the list call.
    #[serde(default)]
    pub query: BTreeMap<String, ParamValue>,
    /// Query parameter carrying `page_size`.
    #[serde(default)]
    pub page_size_param: Option<String>,
    /// Records per page.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// JSON pointer to the records array; "" = the body is the array.
    #[serde(default)]
    pub records_pointer: String,
    /// JSON pointer to a record's id.
    pub id_pointer: String,
    /// JSON pointer to a record's last-modified time.
    #[serde(default)]
    pub updated_at_pointer: Option<String>,
    /// Source field name → JSON pointer within a record.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Labelled arrays flattened into `<prefix>.<label>` fields.
    #[serde(default)]
    pub arrays: Vec<ArrayFieldConfig>,
    /// Paging.
    #[serde(default)]
    pub paging: PagingConfig,
    /// Query parameter for incremental reads (time in `updated_since_format`).
    #[serde(default)]
    pub updated_since_param: Option<String>,
    /// Header for incremental reads (`If-Modified-Since`); a 304 answer means nothing changed.
    #[serde(default)]
    pub updated_since_header: Option<String>,
    /// How the incremental time is written: `rfc3339` (default), `rfc3339_offset`,
    /// `http_date`, `unix`, `unix_ms`. Also used for `{updated_since}` inside `query` values.
    #[serde(default)]
    pub updated_since_format: SinceFormat,
    /// Longest time between full reads when incremental reads are on, default `24h`.
    #[serde(default)]
    pub full_read_every: Option<HumanDuration>,
    /// The CRM's own request rate, default 5.
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    /// Retries for 429, 5xx, timeouts and connection errors, default 5.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// First backoff ceiling, default `200ms`.
    #[serde(default = "default_retry_base")]
    pub retry_base: HumanDuration,
    /// Largest backoff and largest `Retry-After` honoured, default `30s`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// Per-request timeout, default `30s`.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// While the CRM refuses a credential it accepted earlier in this process (401/403, or
    /// the token endpoint's refusal), how long cycles back off and retry, not ready meanwhile,
    /// before the service stops with `auth_failed` (exit 1); default `5m`. A credential never
    /// accepted stops the service at its first refusal (exit 2).
    #[serde(default = "default_auth_grace")]
    pub auth_grace: HumanDuration,
    /// Write-back; without it the CRM is read-only for quo-sync.
    #[serde(default)]
    pub update: Option<UpdateConfig>,
    /// `POST /webhooks/crm`: a signed notice from the CRM starts a cycle at once.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// Creating records from contacts made in Quo (`reverse.create_in_crm`).
    #[serde(default)]
    pub create: Option<CreateConfig>,
    /// Allow credentials over plain `http://` to hosts beyond loopback (`base_url` with auth,
    /// `auth.token_url`, an API base from `auth.base_url_pointer`); default false.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn yes() -> bool {
    true
}

fn default_rps() -> u32 {
    5
}
fn default_max_retries() -> u32 {
    5
}
fn default_retry_base() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_auth_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

impl RestSourceConfig {
    /// Parses and validates the `[source.rest]` table; errors name the key.
    pub fn from_table(table: &toml::Table) -> Result<Self, RestConfigError> {
        let value = toml::Value::Table(table.clone());
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let mut key = if path == "." { String::new() } else { path };
            let mut reason = e.into_inner().to_string().trim().to_string();
            let missing = reason
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_string);
            if let Some(field) = missing {
                key = if key.is_empty() {
                    field
                } else {
                    format!("{key}.{field}")
                };
                reason = "required, but missing".into();
            }
            RestConfigError::new(key, reason)
        })?;
        config.validate()?;
        Ok(config)
    }

    pub(super) fn validate(&self) -> Result<(), RestConfigError> {
        let base = Url::parse(&self.base_url).map_err(|e| {
            RestConfigError::new("base_url", format!("expected an http(s) URL ({e})"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RestConfigError::new("base_url", "expected an http(s) URL"));
        }
        if self.auth.kind != AuthKind::None
            && self.auth.base_url_pointer.is_none()
            && insecure_transport(&base)
            && !self.allow_insecure_http
        {
            return Err(RestConfigError::new(
                "base_url",
                "sends credentials over plain http to a host beyond loopback; use https, or set source.rest.allow_insecure_http = true",
            ));
        }
        if !self.list_path.starts_with('/') {
            return Err(RestConfigError::new(
                "list_path",
                format!(
                    "expected a path starting with `/`, got {:?}",
                    self.list_path
                ),
            ));
        }
        let pointer = |key: &str, p: &str, allow_root: bool| {
            if (p.is_empty() && allow_root) || p.starts_with('/') {
                Ok(())
            } else {
                Err(RestConfigError::new(
                    key,
                    format!(
                        "expected a JSON pointer like \"/a/b\"{}, got {p:?}",
                        if allow_root { " or \"\"" } else { "" }
                    ),
                ))
            }
        };
        self.validate_records(&pointer)?;
        self.validate_paging(&pointer)?;
        if self.requests_per_second == 0 {
            return Err(RestConfigError::new(
                "requests_per_second",
                "expected a whole number above 0",
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(RestConfigError::new(
                "timeout",
                "expected a duration above zero",
            ));
        }
        if let Some(name) = &self.updated_since_header {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                RestConfigError::new("updated_since_header", "not a valid header name")
            })?;
        }
        self.validate_oauth(&pointer)?;
        self.validate_webhook(&pointer)?;
        if let Some(create) = &self.create {
            create.validate()?;
        }
        if let Some(update) = &self.update {
            update.validate(&pointer)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::rest::RestSource;
    use crate::source::rest::test_support::*;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let config = RestSourceConfig::from_table(&table(MINIMAL)).unwrap();
        assert_eq!(config.paging.style, PagingStyle::None);
        assert_eq!(config.requests_per_second, 5);
        assert_eq!(config.max_retries, 5);
        assert!(config.paging.stop_on_short_page);
        assert_eq!(config.paging.max_pages, 10_000);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err =
            RestSourceConfig::from_table(&table(&format!("{MINIMAL}\nbogus = 1"))).unwrap_err();
        assert!(err.to_string().starts_with("source.rest"), "{err}");
        assert!(err.to_string().contains("bogus"), "{err}");

        let err = RestSourceConfig::from_table(&table(&format!(
            "{MINIMAL}\npaging = {{ style = \"sideways\" }}"
        )))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("source.rest.paging.style"),
            "{err}"
        );

        let err = RestSourceConfig::from_table(&table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", tokn = \"x\" }}"
        )))
        .unwrap_err();
        assert!(err.to_string().starts_with("source.rest.auth"), "{err}");
        assert!(err.to_string().contains("tokn"), "{err}");

        let err = RestSourceConfig::from_table(&table("base_url = \"http://x\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "source.rest.list_path: required, but missing"
        );
        let err = RestSourceConfig::from_table(&table(&format!(
            "{MINIMAL}\narrays = [{{ pointer = \"/e\" }}]"
        )))
        .unwrap_err();
        assert_eq!(err.key, "arrays[0].label_key");

        let err = RestSourceConfig::from_table(&table(&format!(
            "{MINIMAL}\npaging = {{ style = \"cursor\" }}"
        )))
        .unwrap_err();
        assert_eq!(err.key, "paging.cursor_pointer");

        let err = RestSourceConfig::from_table(&table(&format!(
            "{MINIMAL}\nfields = {{ name = \"properties/name\" }}"
        )))
        .unwrap_err();
        assert_eq!(err.key, "fields.name");

        let err = RestSource::from_table(&table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", token_env = \"QUO_SYNC_TEST_SURELY_UNSET\" }}"
        )))
        .unwrap_err();
        assert_eq!(err.key, "auth.token_env");

        let err = RestSource::from_table(&table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"header\", token = \"t\" }}"
        )))
        .unwrap_err();
        assert_eq!(err.key, "auth.header_name");
    }
}
