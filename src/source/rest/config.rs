//! `[source.rest]` as typed configuration: every key, its default, and the validation that
//! names the offending key, so a bad table fails at start-up rather than mid-cycle.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::SecretString;
use serde::Deserialize;

use super::create::CreateConfig;
use super::webhook::WebhookConfig;
use crate::config::HumanDuration;
use crate::source::SourceError;

/// Why `[source.rest]` cannot be used; always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source.rest{}: {reason}", dotted(.key))]
pub struct RestConfigError {
    /// The key below `source.rest` (`auth.token_env`, `paging.style`).
    pub key: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

pub(super) fn dotted(key: &str) -> String {
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

/// A fixed query parameter value (`query = { archived = false, limit = 100 }`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// Text.
    Text(String),
    /// Whole number.
    Integer(i64),
    /// Number with a fraction.
    Float(f64),
    /// true/false.
    Bool(bool),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Text(s) => f.write_str(s),
            ParamValue::Integer(n) => write!(f, "{n}"),
            ParamValue::Float(n) => write!(f, "{n}"),
            ParamValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// How requests authenticate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthKind {
    /// No credentials.
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `<header_name>: <token>`.
    Header,
    /// `Authorization: Basic base64(username:password)`.
    Basic,
    /// `?<param_name>=<token>` (redacted wherever a URL is shown).
    Query,
    /// OAuth2 access tokens from `token_url`, cached and refreshed (see `oauth`).
    #[serde(rename = "oauth2")]
    OAuth2,
}

/// The OAuth2 grant used at `token_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// `grant_type=client_credentials` (server-to-server apps).
    ClientCredentials,
    /// `grant_type=refresh_token` with a refresh token from a one-time consent.
    RefreshToken,
}

/// Where the client credentials go in token requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuthStyle {
    /// `client_id` and `client_secret` as form fields (Salesforce, Zoho).
    #[default]
    Body,
    /// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1).
    Basic,
}

/// How the incremental-read time is written (`updated_since_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinceFormat {
    /// `2026-01-01T00:00:00Z` (also a Salesforce SOQL datetime literal).
    #[default]
    Rfc3339,
    /// `2026-01-01T00:00:00+00:00` (Zoho's `If-Modified-Since`).
    Rfc3339Offset,
    /// `Thu, 01 Jan 2026 00:00:00 GMT` (RFC 9110 HTTP-date).
    HttpDate,
    /// Seconds since 1970.
    Unix,
    /// Milliseconds since 1970.
    UnixMs,
}

/// `[source.rest.auth]`. Its `Debug` shows `token_url` without its query (a vendor may put
/// the refresh token there) and no secret.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `none`, `bearer`, `header`, `basic` or `query`.
    #[serde(default)]
    pub kind: AuthKind,
    /// The token itself (bearer, header, query).
    #[serde(default)]
    pub token: Option<SecretString>,
    /// An environment variable holding the token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding the token (trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The header carrying the token (header).
    #[serde(default)]
    pub header_name: Option<String>,
    /// The query parameter carrying the token (query).
    #[serde(default)]
    pub param_name: Option<String>,
    /// The user name (basic).
    #[serde(default)]
    pub username: Option<String>,
    /// The password (basic).
    #[serde(default)]
    pub password: Option<SecretString>,
    /// An environment variable holding the password (basic).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file holding the password (basic, trimmed).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OAuth2 grant: `client_credentials` or `refresh_token` (oauth2).
    #[serde(default)]
    pub grant: Option<OAuthGrant>,
    /// The token endpoint (oauth2).
    #[serde(default)]
    pub token_url: Option<String>,
    /// The OAuth2 client id (oauth2).
    #[serde(default)]
    pub client_id: Option<String>,
    /// The OAuth2 client secret (oauth2).
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    /// An environment variable holding the client secret (oauth2).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// A file holding the client secret (oauth2, trimmed).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The refresh token (oauth2, grant = "refresh_token").
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    /// An environment variable holding the refresh token.
    #[serde(default)]
    pub refresh_token_env: Option<String>,
    /// A file holding the refresh token (trimmed).
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// `scope` sent to the token endpoint (oauth2, optional).
    #[serde(default)]
    pub scope: Option<String>,
    /// `audience` sent to the token endpoint (oauth2, optional; Auth0-style APIs).
    #[serde(default)]
    pub audience: Option<String>,
    /// Client credentials as form fields (`body`, default) or HTTP Basic (`basic`).
    #[serde(default)]
    pub auth_style: Option<OAuthStyle>,
    /// JSON pointer into the token answer naming the API base URL (Salesforce
    /// `/instance_url`, Zoho `/api_domain`); replaces `base_url` once a token is fetched.
    #[serde(default)]
    pub base_url_pointer: Option<String>,
    /// The `Authorization` scheme sent with the access token, default `Bearer` (Zoho:
    /// `Zoho-oauthtoken`).
    #[serde(default)]
    pub header_scheme: Option<String>,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token_url = self.token_url.as_deref().map(|url| match Url::parse(url) {
            Ok(url) => super::oauth::shown_token_url(&url),
            Err(_) => "[unreadable URL]".to_string(),
        });
        f.debug_struct("AuthConfig")
            .field("kind", &self.kind)
            .field("token", &self.token)
            .field("token_env", &self.token_env)
            .field("token_file", &self.token_file)
            .field("header_name", &self.header_name)
            .field("param_name", &self.param_name)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("grant", &self.grant)
            .field("token_url", &token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_env", &self.client_secret_env)
            .field("client_secret_file", &self.client_secret_file)
            .field("refresh_token", &self.refresh_token)
            .field("refresh_token_env", &self.refresh_token_env)
            .field("refresh_token_file", &self.refresh_token_file)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("auth_style", &self.auth_style)
            .field("base_url_pointer", &self.base_url_pointer)
            .field("header_scheme", &self.header_scheme)
            .finish()
    }
}

impl AuthConfig {
    /// The OAuth2-only keys that are set, for "not used with this kind" errors.
    pub(super) fn oauth_keys_set(&self) -> Vec<&'static str> {
        [
            ("grant", self.grant.is_some()),
            ("token_url", self.token_url.is_some()),
            ("client_id", self.client_id.is_some()),
            ("client_secret", self.client_secret.is_some()),
            ("client_secret_env", self.client_secret_env.is_some()),
            ("client_secret_file", self.client_secret_file.is_some()),
            ("refresh_token", self.refresh_token.is_some()),
            ("refresh_token_env", self.refresh_token_env.is_some()),
            ("refresh_token_file", self.refresh_token_file.is_some()),
            ("scope", self.scope.is_some()),
            ("audience", self.audience.is_some()),
            ("auth_style", self.auth_style.is_some()),
            ("base_url_pointer", self.base_url_pointer.is_some()),
            ("header_scheme", self.header_scheme.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }
}

/// One array of labelled values flattened into `<prefix>.<label>` fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayFieldConfig {
    /// JSON pointer to the array within a record (`/emails`).
    pub pointer: String,
    /// Key of the label in each item (`label`).
    pub label_key: String,
    /// Key of the value in each item (`value`).
    pub value_key: String,
    /// Field name prefix (`email` → `email.work`).
    pub prefix: String,
    /// Label for items without one, default `other`.
    #[serde(default = "default_label")]
    pub default_label: String,
}

pub(super) fn default_label() -> String {
    "other".into()
}

/// How the list call pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PagingStyle {
    /// Page numbers in `param`, from `start` (default 1).
    Page,
    /// Item offsets in `param`, from `start` (default 0), advanced by the items received.
    Offset,
    /// A cursor read from the body at `cursor_pointer`, sent back in `param`.
    Cursor,
    /// A next-page URL read from the body at `next_url_pointer`.
    NextUrl,
    /// The RFC 8288 `Link: <…>; rel="next"` response header.
    LinkHeader,
    /// One request returns everything.
    #[default]
    None,
}

/// `[source.rest.paging]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingConfig {
    /// The paging style.
    #[serde(default)]
    pub style: PagingStyle,
    /// Query parameter for page/offset/cursor (defaults `page`, `offset`, `after`).
    #[serde(default)]
    pub param: Option<String>,
    /// First page number or offset (defaults 1 and 0).
    #[serde(default)]
    pub start: Option<u64>,
    /// JSON pointer to the next cursor in the body (cursor).
    #[serde(default)]
    pub cursor_pointer: Option<String>,
    /// JSON pointer to the next URL in the body (next_url).
    #[serde(default)]
    pub next_url_pointer: Option<String>,
    /// Stop when a page holds fewer than `page_size` records, default true.
    #[serde(default = "yes")]
    pub stop_on_short_page: bool,
    /// Give up (with an error) after this many pages, default 10000.
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
}

pub(super) fn yes() -> bool {
    true
}

pub(super) fn default_max_pages() -> u32 {
    10_000
}

impl Default for PagingConfig {
    fn default() -> Self {
        Self {
            style: PagingStyle::None,
            param: None,
            start: None,
            cursor_pointer: None,
            next_url_pointer: None,
            stop_on_short_page: true,
            max_pages: default_max_pages(),
        }
    }
}

/// `PATCH` or `PUT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum UpdateMethod {
    /// Send only the changed fields (the record is fetched first only for array fields).
    #[default]
    Patch,
    /// Send the whole record, fetched first with `GET get_path`.
    Put,
}

/// `[source.rest.update]`: how reverse-path changes are written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// `PATCH` (default) or `PUT`.
    #[serde(default)]
    pub method: UpdateMethod,
    /// Record path with `{id}` (`/contacts/{id}`).
    pub path: String,
    /// Path to fetch one record, default `path`.
    #[serde(default)]
    pub get_path: Option<String>,
    /// Extra request headers for writes.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where the record sits in write bodies; "" = the body is the record.
    #[serde(default)]
    pub wrap_pointer: String,
    /// Where the record sits in `GET get_path` responses, default `wrap_pointer`.
    #[serde(default)]
    pub get_pointer: Option<String>,
    /// Send the whole (fetched) record instead of only the changes; default true for PUT,
    /// false for PATCH (for APIs whose PUT is a partial update, like Pipedrive v1).
    #[serde(default)]
    pub send_full_record: Option<bool>,
    /// Write the change time at `updated_at_pointer`, default true.
    #[serde(default = "yes")]
    pub set_updated_at: bool,
    /// Put the record inside a one-item array at `wrap_pointer` (Zoho: `{"data":[{…}]}`).
    #[serde(default)]
    pub wrap_array: bool,
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

/// Whether `url` would carry credentials in clear text beyond this machine: plain `http://` to
/// a host that is not loopback (`localhost`, 127.0.0.0/8, `::1`).
pub(super) fn insecure_transport(url: &Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    let Some(host) = url.host_str() else {
        return true;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return !ip.is_loopback();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name != "localhost" && !name.ends_with(".localhost")
}

pub(super) fn default_rps() -> u32 {
    5
}
pub(super) fn default_max_retries() -> u32 {
    5
}
pub(super) fn default_retry_base() -> HumanDuration {
    HumanDuration(Duration::from_millis(200))
}
pub(super) fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
pub(super) fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
pub(super) fn default_auth_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

/// Replaced inside `query` values by the incremental-read time (the Unix epoch on full reads).
pub const UPDATED_SINCE_PLACEHOLDER: &str = "{updated_since}";

/// Full reads happen at least this often when incremental reads are configured.
pub const DEFAULT_FULL_READ_EVERY: Duration = Duration::from_secs(24 * 3600);

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

    /// Whether reads can be incremental: a since parameter, header or `{updated_since}` in a
    /// `query` value.
    pub fn incremental(&self) -> bool {
        self.updated_since_param.is_some()
            || self.updated_since_header.is_some()
            || self
                .query
                .values()
                .any(|v| matches!(v, ParamValue::Text(t) if t.contains(UPDATED_SINCE_PLACEHOLDER)))
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

    /// Where records, their ids, fields and arrays sit in a list answer: JSON pointers, and
    /// no empty name.
    fn validate_records(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        pointer("records_pointer", &self.records_pointer, true)?;
        pointer("id_pointer", &self.id_pointer, false)?;
        if let Some(p) = &self.updated_at_pointer {
            pointer("updated_at_pointer", p, false)?;
        }
        for (name, p) in &self.fields {
            if name.trim().is_empty() {
                return Err(RestConfigError::new("fields", "a field name is empty"));
            }
            pointer(&format!("fields.{name}"), p, false)?;
        }
        for (i, array) in self.arrays.iter().enumerate() {
            pointer(&format!("arrays[{i}].pointer"), &array.pointer, false)?;
            for (key, value) in [
                ("prefix", &array.prefix),
                ("label_key", &array.label_key),
                ("value_key", &array.value_key),
            ] {
                if value.trim().is_empty() {
                    return Err(RestConfigError::new(
                        format!("arrays[{i}].{key}"),
                        "must not be empty",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Page size and paging style: what each style needs to find the next page.
    fn validate_paging(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        match (&self.page_size_param, self.page_size) {
            (_, Some(0)) => {
                return Err(RestConfigError::new(
                    "page_size",
                    "expected a whole number above 0",
                ));
            }
            (Some(_), None) => {
                return Err(RestConfigError::new(
                    "page_size",
                    "required when page_size_param is set",
                ));
            }
            _ => {}
        }
        let paging = &self.paging;
        match paging.style {
            PagingStyle::Cursor if paging.cursor_pointer.is_none() => {
                return Err(RestConfigError::new(
                    "paging.cursor_pointer",
                    "required when paging.style = \"cursor\": where the next cursor sits in the body",
                ));
            }
            PagingStyle::NextUrl if paging.next_url_pointer.is_none() => {
                return Err(RestConfigError::new(
                    "paging.next_url_pointer",
                    "required when paging.style = \"next_url\": where the next URL sits in the body",
                ));
            }
            _ => {}
        }
        if let Some(p) = &paging.cursor_pointer {
            pointer("paging.cursor_pointer", p, false)?;
        }
        if let Some(p) = &paging.next_url_pointer {
            pointer("paging.next_url_pointer", p, false)?;
        }
        if paging.max_pages == 0 {
            return Err(RestConfigError::new(
                "paging.max_pages",
                "expected a whole number above 0",
            ));
        }
        Ok(())
    }
}

impl UpdateConfig {
    /// Paths with `{id}`, pointers, and headers that are valid HTTP.
    fn validate(
        &self,
        pointer: &dyn Fn(&str, &str, bool) -> Result<(), RestConfigError>,
    ) -> Result<(), RestConfigError> {
        let update = self;
        for (key, path) in [
            ("update.path", Some(&update.path)),
            ("update.get_path", update.get_path.as_ref()),
        ] {
            if let Some(path) = path
                && (!path.starts_with('/') || !path.contains("{id}"))
            {
                return Err(RestConfigError::new(
                    key,
                    format!("expected a path starting with `/` containing `{{id}}`, got {path:?}"),
                ));
            }
        }
        pointer("update.wrap_pointer", &update.wrap_pointer, true)?;
        if let Some(p) = &update.get_pointer {
            pointer("update.get_pointer", p, true)?;
        }
        for (name, value) in &update.headers {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                RestConfigError::new(format!("update.headers.{name}"), "not a valid header name")
            })?;
            HeaderValue::from_str(value).map_err(|_| {
                RestConfigError::new(format!("update.headers.{name}"), "not a valid header value")
            })?;
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
