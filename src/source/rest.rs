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

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use reqwest::header::{ETAG, HeaderMap, HeaderName, HeaderValue, IF_MATCH, LINK};
use reqwest::{Method, StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::{
    BadRecord, CrmChange, ReadRequest, ReadSummary, SourceError, SourceItem, SourceRecord,
    WriteReport,
};
use crate::config::HumanDuration;
use crate::domain::ExternalId;
use crate::quo::limiter::RateLimiter;
use crate::quo::retry::{self, RetryPolicy};

/// Largest slice of a CRM error body quoted in messages.
const MESSAGE_SNIPPET: usize = 300;

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
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
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
}

/// `[source.rest.auth]`.
#[derive(Debug, Default, Deserialize)]
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

fn default_label() -> String {
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

fn yes() -> bool {
    true
}

fn default_max_pages() -> u32 {
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
    /// Query parameter for incremental reads (RFC 3339 time).
    #[serde(default)]
    pub updated_since_param: Option<String>,
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
    /// Write-back; without it the CRM is read-only for quo-sync.
    #[serde(default)]
    pub update: Option<UpdateConfig>,
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

    fn validate(&self) -> Result<(), RestConfigError> {
        let base = Url::parse(&self.base_url).map_err(|e| {
            RestConfigError::new("base_url", format!("expected an http(s) URL ({e})"))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RestConfigError::new("base_url", "expected an http(s) URL"));
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
        if let Some(update) = &self.update {
            for (key, path) in [
                ("update.path", Some(&update.path)),
                ("update.get_path", update.get_path.as_ref()),
            ] {
                if let Some(path) = path
                    && (!path.starts_with('/') || !path.contains("{id}"))
                {
                    return Err(RestConfigError::new(
                        key,
                        format!(
                            "expected a path starting with `/` containing `{{id}}`, got {path:?}"
                        ),
                    ));
                }
            }
            pointer("update.wrap_pointer", &update.wrap_pointer, true)?;
            if let Some(p) = &update.get_pointer {
                pointer("update.get_pointer", p, true)?;
            }
            for (name, value) in &update.headers {
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    RestConfigError::new(
                        format!("update.headers.{name}"),
                        "not a valid header name",
                    )
                })?;
                HeaderValue::from_str(value).map_err(|_| {
                    RestConfigError::new(
                        format!("update.headers.{name}"),
                        "not a valid header value",
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Credentials, resolved from config, environment or file.
enum Auth {
    None,
    Bearer(SecretString),
    Header(HeaderName, SecretString),
    Basic(String, SecretString),
    Query(String, SecretString),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("none"),
            Auth::Bearer(_) => f.write_str("bearer([REDACTED])"),
            Auth::Header(name, _) => write!(f, "header({name}: [REDACTED])"),
            Auth::Basic(user, _) => write!(f, "basic({user}:[REDACTED])"),
            Auth::Query(name, _) => write!(f, "query({name}=[REDACTED])"),
        }
    }
}

fn resolve_secret(
    what: &str,
    direct: &Option<SecretString>,
    env: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<SecretString, RestConfigError> {
    let given =
        usize::from(direct.is_some()) + usize::from(env.is_some()) + usize::from(file.is_some());
    if given != 1 {
        return Err(RestConfigError::new(
            format!("auth.{what}"),
            format!("set exactly one of auth.{what}, auth.{what}_env, auth.{what}_file"),
        ));
    }
    let secret = if let Some(secret) = direct {
        secret.expose_secret().trim().to_string()
    } else if let Some(var) = env {
        std::env::var(var)
            .map_err(|_| {
                RestConfigError::new(
                    format!("auth.{what}_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?
            .trim()
            .to_string()
    } else {
        let path = file.as_ref().expect("counted above");
        std::fs::read_to_string(path)
            .map_err(|e| {
                RestConfigError::new(
                    format!("auth.{what}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
            .trim()
            .to_string()
    };
    if secret.is_empty() {
        return Err(RestConfigError::new(format!("auth.{what}"), "is empty"));
    }
    Ok(SecretString::from(secret))
}

impl Auth {
    fn resolve(config: &AuthConfig) -> Result<Self, RestConfigError> {
        let token = || {
            resolve_secret(
                "token",
                &config.token,
                &config.token_env,
                &config.token_file,
            )
        };
        let unused = |keys: &[(&str, bool)]| {
            for (key, set) in keys {
                if *set {
                    return Err(RestConfigError::new(
                        format!("auth.{key}"),
                        format!(
                            "not used with auth.kind = {:?}",
                            format!("{:?}", config.kind).to_lowercase()
                        ),
                    ));
                }
            }
            Ok(())
        };
        let token_set =
            config.token.is_some() || config.token_env.is_some() || config.token_file.is_some();
        let password_set = config.password.is_some()
            || config.password_env.is_some()
            || config.password_file.is_some();
        match config.kind {
            AuthKind::None => {
                unused(&[
                    ("token", token_set),
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                Ok(Auth::None)
            }
            AuthKind::Bearer => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                Ok(Auth::Bearer(token()?))
            }
            AuthKind::Header => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                let name = config.header_name.as_deref().ok_or_else(|| {
                    RestConfigError::new("auth.header_name", "required when auth.kind = \"header\"")
                })?;
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    RestConfigError::new(
                        "auth.header_name",
                        format!("{name:?} is not a valid header name"),
                    )
                })?;
                let token = token()?;
                HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                    RestConfigError::new(
                        "auth.token",
                        "contains characters not allowed in a header",
                    )
                })?;
                Ok(Auth::Header(name, token))
            }
            AuthKind::Basic => {
                unused(&[
                    ("token", token_set),
                    ("header_name", config.header_name.is_some()),
                    ("param_name", config.param_name.is_some()),
                ])?;
                let user = config.username.clone().ok_or_else(|| {
                    RestConfigError::new("auth.username", "required when auth.kind = \"basic\"")
                })?;
                let password = resolve_secret(
                    "password",
                    &config.password,
                    &config.password_env,
                    &config.password_file,
                )?;
                Ok(Auth::Basic(user, password))
            }
            AuthKind::Query => {
                unused(&[
                    ("password", password_set),
                    ("username", config.username.is_some()),
                    ("header_name", config.header_name.is_some()),
                ])?;
                let name = config
                    .param_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        RestConfigError::new(
                            "auth.param_name",
                            "required when auth.kind = \"query\"",
                        )
                    })?;
                Ok(Auth::Query(name, token()?))
            }
        }
    }

    fn query_param(&self) -> Option<&str> {
        match self {
            Auth::Query(name, _) => Some(name),
            _ => None,
        }
    }
}

/// One finished HTTP exchange (after retries).
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn message(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        let snippet: String = text.chars().take(MESSAGE_SNIPPET).collect();
        if snippet.is_empty() {
            format!("HTTP {}", self.status.as_u16())
        } else {
            format!("HTTP {}: {snippet}", self.status.as_u16())
        }
    }
}

/// Reads and writes contacts in a REST CRM described by `[source.rest]`.
#[derive(Debug)]
pub struct RestSource {
    config: RestSourceConfig,
    base: Url,
    auth: Auth,
    client: reqwest::Client,
    limiter: Arc<RateLimiter>,
    retry: RetryPolicy,
}

impl RestSource {
    /// Builds the adapter from the `[source.rest]` table (reads secrets from env/files; no network).
    pub fn from_table(table: &toml::Table) -> Result<Self, RestConfigError> {
        Self::new(RestSourceConfig::from_table(table)?)
    }

    /// Builds the adapter from a parsed configuration.
    pub fn new(config: RestSourceConfig) -> Result<Self, RestConfigError> {
        config.validate()?;
        let auth = Auth::resolve(&config.auth)?;
        let base = Url::parse(config.base_url.trim_end_matches('/'))
            .map_err(|e| RestConfigError::new("base_url", e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout.0)
            .user_agent(concat!("quo-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                RestConfigError::new("base_url", format!("cannot build an HTTP client: {e}"))
            })?;
        let retry = RetryPolicy {
            max_retries: config.max_retries,
            base: config.retry_base.0,
            cap: config.max_backoff.0,
        };
        Ok(Self {
            limiter: RateLimiter::per_second(config.requests_per_second),
            base,
            auth,
            client,
            retry,
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

    /// Whether reads can be incremental (`updated_since_param` is set).
    pub fn supports_incremental(&self) -> bool {
        self.config.updated_since_param.is_some()
    }

    /// Whether the next cycle should read everything (`ReadRequest.since = None`): always without
    /// `updated_since_param`, on the first cycle, and once `full_read_every` (default 24h) has
    /// passed since the last full read. Only full reads let the planner detect deletions.
    pub fn wants_full_read(&self, last_full: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        if !self.supports_incremental() {
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
            Err(_) => format!("rest {}{}", self.base, self.config.list_path),
        }
    }

    fn url(&self, path: &str) -> Result<Url, SourceError> {
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        Url::parse(&joined).map_err(|e| SourceError::Crm(format!("bad URL {path:?}: {e}")))
    }

    /// The URL with secret-looking query values replaced, for logs and errors.
    fn shown(&self, url: &Url) -> String {
        redact_url(url, self.auth.query_param())
    }

    fn list_url(
        &self,
        since: Option<DateTime<Utc>>,
        paging: Option<(&str, String)>,
    ) -> Result<Url, SourceError> {
        let mut url = self.url(&self.config.list_path)?;
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in &self.config.query {
                pairs.append_pair(key, &value.to_string());
            }
            if let (Some(param), Some(size)) = (&self.config.page_size_param, self.config.page_size)
            {
                pairs.append_pair(param, &size.to_string());
            }
            if let (Some(param), Some(since)) = (&self.config.updated_since_param, since) {
                pairs.append_pair(param, &since.to_rfc3339_opts(SecondsFormat::Secs, true));
            }
            if let Some((param, value)) = paging {
                pairs.append_pair(param, &value);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// Sends one request with the limiter, retries and auth; returns the final reply or an error
    /// (401/403 → `Unauthorized`; transport failure after retries → `Crm`).
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
        headers: &HeaderMap,
    ) -> Result<Reply, SourceError> {
        let shown = self.shown(url);
        let mut target = url.clone();
        if let Auth::Query(name, token) = &self.auth {
            let kept: Vec<(String, String)> = target
                .query_pairs()
                .filter(|(k, _)| k != name)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            target.set_query(None);
            let mut pairs = target.query_pairs_mut();
            for (k, v) in kept {
                pairs.append_pair(&k, &v);
            }
            pairs.append_pair(name, token.expose_secret());
        }
        let mut retries = 0u32;
        loop {
            self.limiter.acquire().await;
            let mut request = self
                .client
                .request(method.clone(), target.clone())
                .headers(headers.clone());
            request = match &self.auth {
                Auth::None | Auth::Query(..) => request,
                Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
                Auth::Basic(user, password) => {
                    request.basic_auth(user, Some(password.expose_secret()))
                }
                Auth::Header(name, token) => {
                    let mut value = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                        SourceError::Crm("the auth token is not a valid header value".into())
                    })?;
                    value.set_sensitive(true);
                    request.header(name.clone(), value)
                }
            };
            if let Some(body) = body {
                request = request.json(body);
            }
            tracing::debug!(method = %method, url = %shown, attempt = retries + 1, "CRM request");
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                        return Err(SourceError::Unauthorized {
                            status: status.as_u16(),
                            url: shown,
                        });
                    }
                    let headers = response.headers().clone();
                    let wait_hint = retry::retry_after(&headers);
                    if retry::is_retryable_status(status) {
                        if self.retry.may_retry(retries) {
                            retries += 1;
                            let wait = self.retry.backoff(retries, wait_hint);
                            tracing::warn!(method = %method, url = %shown, status = status.as_u16(), retry = retries, wait_ms = wait.as_millis() as u64, "CRM asked us to retry");
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        let body = response
                            .bytes()
                            .await
                            .map(|b| b.to_vec())
                            .unwrap_or_default();
                        return Ok(Reply {
                            status,
                            headers,
                            body,
                        });
                    }
                    match response.bytes().await {
                        Ok(body) => {
                            tracing::debug!(method = %method, url = %shown, status = status.as_u16(), bytes = body.len(), "CRM response");
                            return Ok(Reply {
                                status,
                                headers,
                                body: body.to_vec(),
                            });
                        }
                        Err(e) => e.without_url(),
                    }
                }
                Err(e) => e.without_url(),
            };
            let transient = failure.is_timeout()
                || failure.is_connect()
                || failure.is_body()
                || failure.is_request();
            if transient && self.retry.may_retry(retries) {
                retries += 1;
                let wait = self.retry.backoff(retries, None);
                tracing::warn!(method = %method, url = %shown, error = %failure, retry = retries, wait_ms = wait.as_millis() as u64, "CRM request failed; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(SourceError::Crm(format!(
                "{method} {shown}: {} (after {retries} retries)",
                error_chain(&failure)
            )));
        }
    }

    /// Streams every record (or those changed since `request.since` when incremental reads are
    /// configured) into `tx`. `complete` is false for incremental reads.
    pub async fn read(
        &self,
        request: ReadRequest,
        tx: mpsc::Sender<SourceItem>,
    ) -> Result<ReadSummary, SourceError> {
        let since = request.since.filter(|_| self.supports_incremental());
        let paging = &self.config.paging;
        let param = paging.param.clone().unwrap_or_else(|| {
            match paging.style {
                PagingStyle::Offset => "offset",
                PagingStyle::Cursor => "after",
                _ => "page",
            }
            .to_string()
        });
        let mut counter = paging.start.unwrap_or(match paging.style {
            PagingStyle::Offset => 0,
            _ => 1,
        });
        let mut url = match paging.style {
            PagingStyle::Page | PagingStyle::Offset => {
                self.list_url(since, Some((&param, counter.to_string())))?
            }
            _ => self.list_url(since, None)?,
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut items = 0u64;
        let mut page = 1u32;
        loop {
            let shown = self.shown(&url);
            let reply = self
                .send(Method::GET, &url, None, &HeaderMap::new())
                .await?;
            if !reply.status.is_success() {
                return Err(SourceError::Crm(format!(
                    "GET {shown} (page {page}) failed: {}",
                    reply.message()
                )));
            }
            let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
                SourceError::Crm(format!(
                    "GET {shown} (page {page}): the response is not valid JSON ({e})"
                ))
            })?;
            let records: &[Value] = match body.pointer(&self.config.records_pointer) {
                Some(Value::Array(records)) => records,
                None | Some(Value::Null) => &[],
                Some(other) => {
                    return Err(SourceError::Crm(format!(
                        "GET {shown} (page {page}): expected an array of records at {:?} (records_pointer), found {}",
                        self.config.records_pointer,
                        json_type(other)
                    )));
                }
            };
            for (index, raw) in records.iter().enumerate() {
                let location = format!(
                    "GET {} page {page} item {}",
                    self.config.list_path,
                    index + 1
                );
                let item = self.parse_record(raw, location);
                tx.send(item).await.map_err(|_| SourceError::Cancelled)?;
                items += 1;
            }
            let count = records.len();
            if count == 0 {
                break;
            }
            if paging.stop_on_short_page
                && self
                    .config
                    .page_size
                    .is_some_and(|size| count < size as usize)
            {
                break;
            }
            let next = match paging.style {
                PagingStyle::None => None,
                PagingStyle::Page => {
                    counter += 1;
                    Some(self.list_url(since, Some((&param, counter.to_string())))?)
                }
                PagingStyle::Offset => {
                    counter += count as u64;
                    Some(self.list_url(since, Some((&param, counter.to_string())))?)
                }
                PagingStyle::Cursor => {
                    let pointer = paging.cursor_pointer.as_deref().unwrap_or_default();
                    match body
                        .pointer(pointer)
                        .and_then(scalar_text)
                        .filter(|c| !c.is_empty())
                    {
                        None => None,
                        Some(cursor) => {
                            if !seen.insert(cursor.clone()) {
                                return Err(SourceError::Crm(format!(
                                    "GET {shown} (page {page}): the CRM returned cursor {cursor:?} a second time; stopping instead of looping"
                                )));
                            }
                            Some(self.list_url(since, Some((&param, cursor)))?)
                        }
                    }
                }
                PagingStyle::NextUrl => {
                    let pointer = paging.next_url_pointer.as_deref().unwrap_or_default();
                    match body
                        .pointer(pointer)
                        .and_then(Value::as_str)
                        .filter(|c| !c.trim().is_empty())
                    {
                        None => None,
                        Some(next) => Some(self.follow(&url, next, &mut seen, page)?),
                    }
                }
                PagingStyle::LinkHeader => match next_link(&reply.headers) {
                    None => None,
                    Some(next) => Some(self.follow(&url, &next, &mut seen, page)?),
                },
            };
            let Some(next) = next else { break };
            if page >= paging.max_pages {
                return Err(SourceError::Crm(format!(
                    "GET {}: still more pages after {page} pages (paging.max_pages); stopping in case the CRM is looping",
                    self.shown(&self.url(&self.config.list_path)?)
                )));
            }
            page += 1;
            url = next;
        }
        Ok(ReadSummary {
            complete: since.is_none(),
            items,
        })
    }

    /// Resolves a next-page URL (absolute or relative), refusing other hosts and repeats.
    fn follow(
        &self,
        current: &Url,
        next: &str,
        seen: &mut HashSet<String>,
        page: u32,
    ) -> Result<Url, SourceError> {
        let url = current.join(next.trim()).map_err(|e| {
            SourceError::Crm(format!(
                "GET {} (page {page}): the next-page link is not a URL ({e})",
                self.shown(current)
            ))
        })?;
        if url.origin() != self.base.origin() {
            return Err(SourceError::Crm(format!(
                "GET {} (page {page}): the next-page link points to another server ({}); refusing to send credentials there",
                self.shown(current),
                url.origin().ascii_serialization()
            )));
        }
        if !seen.insert(url.as_str().to_string()) || url == *current {
            return Err(SourceError::Crm(format!(
                "GET {} (page {page}): the CRM returned the next-page link {} a second time; stopping instead of looping",
                self.shown(current),
                self.shown(&url)
            )));
        }
        Ok(url)
    }

    /// Turns one raw record into a `SourceRecord`, or a `BadRecord` saying why not.
    fn parse_record(&self, raw: &Value, location: String) -> SourceItem {
        let bad = |external_id: Option<String>, reason: String| {
            SourceItem::Bad(BadRecord {
                location: location.clone(),
                external_id,
                reason,
                raw: raw.to_string(),
            })
        };
        let id_pointer = &self.config.id_pointer;
        let id_text = match raw.pointer(id_pointer) {
            None | Some(Value::Null) => {
                return bad(None, format!("no id at {id_pointer:?} (id_pointer)"));
            }
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(other) => {
                return bad(
                    None,
                    format!(
                        "the id at {id_pointer:?} is {}, expected a string or number",
                        json_type(other)
                    ),
                );
            }
        };
        let external_id = match ExternalId::parse(&id_text) {
            Ok(id) => id,
            Err(e) => return bad(Some(id_text), e.to_string()),
        };
        let updated_at = match &self.config.updated_at_pointer {
            None => None,
            Some(pointer) => match raw.pointer(pointer) {
                None | Some(Value::Null) => None,
                Some(value) => match parse_time(value) {
                    Some(t) => Some(t),
                    None => {
                        return bad(
                            Some(id_text),
                            format!("the last-modified time at {pointer:?} is not a time: {value}"),
                        );
                    }
                },
            },
        };
        let mut fields = BTreeMap::new();
        for (name, pointer) in &self.config.fields {
            match raw.pointer(pointer) {
                None | Some(Value::Null) => {}
                Some(value) => match value_text(value) {
                    Some(text) => {
                        fields.insert(name.clone(), text);
                    }
                    None => {
                        return bad(
                            Some(id_text),
                            format!(
                                "field {name} at {pointer:?} is {}, expected text, a number, a boolean or a list of them",
                                json_type(value)
                            ),
                        );
                    }
                },
            }
        }
        for array in &self.config.arrays {
            let items = match raw.pointer(&array.pointer) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items,
                Some(other) => {
                    return bad(
                        Some(id_text),
                        format!(
                            "{:?} is {}, expected an array of {{{}, {}}} objects",
                            array.pointer,
                            json_type(other),
                            array.label_key,
                            array.value_key
                        ),
                    );
                }
            };
            for (i, item) in items.iter().enumerate() {
                let Some(object) = item.as_object() else {
                    return bad(
                        Some(id_text),
                        format!(
                            "{}/{i} is {}, expected an object",
                            array.pointer,
                            json_type(item)
                        ),
                    );
                };
                let label = object
                    .get(&array.label_key)
                    .and_then(scalar_text)
                    .filter(|l| !l.trim().is_empty())
                    .unwrap_or_else(|| array.default_label.clone());
                let Some(value) = object.get(&array.value_key).filter(|v| !v.is_null()) else {
                    continue;
                };
                let Some(value) = value_text(value) else {
                    return bad(
                        Some(id_text),
                        format!(
                            "{}/{i}/{} is {}, expected text",
                            array.pointer,
                            array.value_key,
                            json_type(value)
                        ),
                    );
                };
                // The first item with a label wins; later duplicates would be ambiguous to write back.
                fields
                    .entry(format!("{}.{}", array.prefix, label.trim()))
                    .or_insert(value);
            }
        }
        SourceItem::Record(SourceRecord {
            external_id,
            fields,
            updated_at,
            location,
        })
    }

    /// Applies reverse-path changes: one request per record (two when the record must be
    /// fetched first: PUT, or array fields). 409/412 → conflicted; other 4xx → failed.
    pub async fn write_back(&self, changes: &[CrmChange]) -> Result<WriteReport, SourceError> {
        let mut report = WriteReport::default();
        let Some(update) = &self.config.update else {
            for change in changes {
                report.failed.push((
                    change.external_id.clone(),
                    "write-back is not configured (source.rest.update)".into(),
                ));
            }
            return Ok(report);
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &update.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                headers.insert(name, value);
            }
        }
        for change in changes {
            match self.write_one(update, &headers, change).await {
                Ok(Outcome::Written) => report.written.push(change.external_id.clone()),
                Ok(Outcome::Conflicted) => report.conflicted.push(change.external_id.clone()),
                Ok(Outcome::Failed(reason)) => {
                    report.failed.push((change.external_id.clone(), reason))
                }
                Err(e @ (SourceError::Unauthorized { .. } | SourceError::Cancelled)) => {
                    return Err(e);
                }
                Err(e) => report
                    .failed
                    .push((change.external_id.clone(), e.to_string())),
            }
        }
        Ok(report)
    }

    async fn write_one(
        &self,
        update: &UpdateConfig,
        headers: &HeaderMap,
        change: &CrmChange,
    ) -> Result<Outcome, SourceError> {
        let id = change.external_id.as_str();
        let path = update.path.replace("{id}", &encode_segment(id));
        let url = self.url(&path)?;
        let touches_array = change
            .fields
            .keys()
            .any(|name| self.array_for(name).is_some());
        let mut headers = headers.clone();
        let full = update
            .send_full_record
            .unwrap_or(update.method == UpdateMethod::Put);
        let mut record = if full || touches_array {
            let get_path = update
                .get_path
                .as_deref()
                .unwrap_or(&update.path)
                .replace("{id}", &encode_segment(id));
            let get_url = self.url(&get_path)?;
            let reply = self
                .send(Method::GET, &get_url, None, &HeaderMap::new())
                .await?;
            if !reply.status.is_success() {
                return Ok(Outcome::Failed(format!(
                    "GET {}: {}",
                    self.shown(&get_url),
                    reply.message()
                )));
            }
            let body: Value = serde_json::from_slice(&reply.body).map_err(|e| {
                SourceError::Crm(format!(
                    "GET {}: the response is not valid JSON ({e})",
                    self.shown(&get_url)
                ))
            })?;
            if let Some(etag) = reply.headers.get(ETAG) {
                headers.insert(IF_MATCH, etag.clone());
            }
            let get_pointer = update
                .get_pointer
                .as_deref()
                .unwrap_or(&update.wrap_pointer);
            let Some(Value::Object(current)) = body.pointer(get_pointer) else {
                return Ok(Outcome::Failed(format!(
                    "GET {}: no record object at {get_pointer:?} (update.get_pointer)",
                    self.shown(&get_url),
                )));
            };
            if full {
                Value::Object(current.clone())
            } else {
                // Only the arrays being changed are sent, complete with their other items.
                let mut partial = Value::Object(Map::new());
                for name in change.fields.keys() {
                    if let Some((array, _)) = self.array_for(name)
                        && let Some(items) =
                            body.pointer(&format!("{get_pointer}{}", array.pointer))
                    {
                        set_pointer(&mut partial, &array.pointer, items.clone())
                            .map_err(SourceError::Crm)?;
                    }
                }
                partial
            }
        } else {
            Value::Object(Map::new())
        };
        for (name, value) in &change.fields {
            let result = if let Some(pointer) = self.config.fields.get(name) {
                let typed = typed_like(record.pointer(pointer), value);
                set_pointer(&mut record, pointer, typed)
            } else if let Some((array, label)) = self.array_for(name) {
                set_array_item(&mut record, array, label, value)
            } else {
                Err(format!(
                    "no pointer configured for field {name:?} (source.rest.fields or source.rest.arrays)"
                ))
            };
            if let Err(reason) = result {
                return Ok(Outcome::Failed(reason));
            }
        }
        if update.set_updated_at
            && let Some(pointer) = &self.config.updated_at_pointer
        {
            let stamp = Value::String(
                change
                    .updated_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            );
            if let Err(reason) = set_pointer(&mut record, pointer, stamp) {
                return Ok(Outcome::Failed(reason));
            }
        }
        let mut body = Value::Object(Map::new());
        if update.wrap_pointer.is_empty() {
            body = record;
        } else if let Err(reason) = set_pointer(&mut body, &update.wrap_pointer, record) {
            return Ok(Outcome::Failed(reason));
        }
        let method = match update.method {
            UpdateMethod::Patch => Method::PATCH,
            UpdateMethod::Put => Method::PUT,
        };
        let reply = self
            .send(method.clone(), &url, Some(&body), &headers)
            .await?;
        let status = reply.status;
        Ok(if status.is_success() {
            tracing::debug!(id, method = %method, "CRM record updated");
            Outcome::Written
        } else if status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED {
            tracing::info!(
                id,
                status = status.as_u16(),
                "CRM refused the update as conflicting; retried next cycle"
            );
            Outcome::Conflicted
        } else {
            Outcome::Failed(format!(
                "{method} {}: {}",
                self.shown(&url),
                reply.message()
            ))
        })
    }

    /// The array config and label a flattened field name (`email.work`) refers to.
    fn array_for<'a>(&'a self, name: &'a str) -> Option<(&'a ArrayFieldConfig, &'a str)> {
        self.config.arrays.iter().find_map(|array| {
            name.strip_prefix(array.prefix.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                .filter(|label| !label.is_empty())
                .map(|label| (array, label))
        })
    }
}

enum Outcome {
    Written,
    Conflicted,
    Failed(String),
}

/// `reqwest` errors hide the useful part (`connection refused`) in their sources.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Text of a string, number or boolean.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Text of a field value: scalars as text, arrays of scalars joined with `;`.
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter(|v| !v.is_null())
            .map(scalar_text)
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join(";")),
        other => scalar_text(other),
    }
}

/// A last-modified time: RFC 3339, `YYYY-MM-DD HH:MM:SS` (UTC), or a Unix timestamp in seconds
/// or milliseconds (numbers above 10^11 are milliseconds), as a number or numeric string.
pub fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    let from_number = |n: f64| {
        if !n.is_finite() || n < 0.0 {
            return None;
        }
        let millis = if n > 1e11 { n } else { n * 1000.0 };
        DateTime::<Utc>::from_timestamp_millis(millis as i64)
    };
    match value {
        Value::Number(n) => from_number(n.as_f64()?),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            for format in [
                "%Y-%m-%d %H:%M:%S",
                "%Y-%m-%dT%H:%M:%S",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
            ] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
                    return Some(t.and_utc());
                }
            }
            s.parse::<f64>().ok().and_then(from_number)
        }
        _ => None,
    }
}

/// The new value typed like the current one: numbers and booleans stay numbers and booleans,
/// `;`-joined lists become arrays again; everything else (and PATCH without a fetched record)
/// is a string. An empty string stays an empty string (it clears the field).
fn typed_like(current: Option<&Value>, text: &str) -> Value {
    match current {
        Some(Value::Number(_)) if !text.is_empty() => text
            .parse::<i64>()
            .map(Value::from)
            .ok()
            .or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            })
            .unwrap_or_else(|| Value::String(text.to_string())),
        Some(Value::Bool(_)) if text == "true" || text == "false" => Value::Bool(text == "true"),
        Some(Value::Array(_)) => Value::Array(
            text.split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
        _ => Value::String(text.to_string()),
    }
}

fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("{pointer:?} is not a JSON pointer"));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// Writes `value` at `pointer`, creating objects on the way (`null` or missing parents).
pub fn set_pointer(root: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let tokens = pointer_tokens(pointer)?;
    let Some((last, parents)) = tokens.split_last() else {
        *root = value;
        return Ok(());
    };
    let mut current = root;
    for token in parents {
        current = child_mut(current, token, pointer)?;
    }
    if current.is_null() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items[i] = value;
                Ok(())
            }
            _ if last == "-" => {
                items.push(value);
                Ok(())
            }
            _ => Err(format!(
                "cannot write {pointer:?}: {last:?} is not an index of the array"
            )),
        },
        other => Err(format!(
            "cannot write {pointer:?}: the parent is {}",
            json_type(other)
        )),
    }
}

fn child_mut<'a>(
    current: &'a mut Value,
    token: &str,
    pointer: &str,
) -> Result<&'a mut Value, String> {
    if current.is_null() {
        *current = Value::Object(Map::new());
    }
    match current {
        Value::Object(map) => Ok(map
            .entry(token.to_string())
            .or_insert_with(|| Value::Object(Map::new()))),
        Value::Array(items) => {
            let len = items.len();
            token
                .parse::<usize>()
                .ok()
                .and_then(move |i| items.get_mut(i))
                .ok_or_else(|| {
                    format!(
                        "cannot write {pointer:?}: {token:?} is not an index of an array of {len}"
                    )
                })
        }
        other => Err(format!(
            "cannot write {pointer:?}: {token:?} is inside {}",
            json_type(other)
        )),
    }
}

/// Sets the value of the item labelled `label` in the array (adding it if missing, removing it
/// when `value` is empty), keeping every other item as it was.
fn set_array_item(
    record: &mut Value,
    array: &ArrayFieldConfig,
    label: &str,
    value: &str,
) -> Result<(), String> {
    if record.pointer(&array.pointer).is_none_or(Value::is_null) {
        set_pointer(record, &array.pointer, Value::Array(Vec::new()))?;
    }
    let Some(Value::Array(items)) = record.pointer_mut(&array.pointer) else {
        return Err(format!(
            "{:?} is not an array in the CRM record",
            array.pointer
        ));
    };
    let matches = |item: &Value| {
        let item_label = item
            .get(&array.label_key)
            .and_then(scalar_text)
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| array.default_label.clone());
        item_label.trim() == label
    };
    let position = items.iter().position(matches);
    match (position, value.is_empty()) {
        (Some(i), true) => {
            items.remove(i);
        }
        (Some(i), false) => match &mut items[i] {
            Value::Object(map) => {
                map.insert(array.value_key.clone(), Value::String(value.to_string()));
            }
            other => {
                return Err(format!(
                    "{}/{i} is {}, expected an object",
                    array.pointer,
                    json_type(other)
                ));
            }
        },
        (None, true) => {}
        (None, false) => {
            let mut item = Map::new();
            item.insert(array.label_key.clone(), Value::String(label.to_string()));
            item.insert(array.value_key.clone(), Value::String(value.to_string()));
            items.push(Value::Object(item));
        }
    }
    Ok(())
}

/// Percent-encodes an id for use as one path segment.
fn encode_segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Whether a query parameter name looks like it carries a secret.
fn secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["token", "key", "secret", "password", "signature", "auth"]
        .iter()
        .any(|word| lower.contains(word))
}

/// The URL with the auth parameter and secret-looking query values replaced by `REDACTED`.
pub fn redact_url(url: &Url, auth_param: Option<&str>) -> String {
    let mut shown = url.clone();
    shown.set_password(None).ok();
    if !shown.username().is_empty() {
        shown.set_username("REDACTED").ok();
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let hide = Some(k.as_ref()) == auth_param || secret_param(&k);
                (
                    k.into_owned(),
                    if hide {
                        "REDACTED".into()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        shown.set_query(None);
        if !pairs.is_empty() {
            let mut out = shown.query_pairs_mut();
            for (k, v) in pairs {
                out.append_pair(&k, &v);
            }
        }
    }
    shown.to_string()
}

/// The `rel="next"` target of RFC 8288 `Link` headers.
pub fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(LINK) {
        let Ok(mut rest) = value.to_str() else {
            continue;
        };
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('>') else { break };
            let target = &after[..close];
            let tail = &after[close + 1..];
            let params_end = tail.find('<').unwrap_or(tail.len());
            let is_next = tail[..params_end].split([';', ',']).any(|param| {
                let mut parts = param.splitn(2, '=');
                let key = parts.next().unwrap_or_default().trim();
                let value = parts.next().unwrap_or_default().trim().trim_matches('"');
                key.eq_ignore_ascii_case("rel")
                    && value
                        .split_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return Some(target.trim().to_string());
            }
            rest = &tail[params_end..];
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("toml")
    }

    const MINIMAL: &str = r#"
        base_url = "https://crm.example.com"
        list_path = "/contacts"
        id_pointer = "/id"
    "#;

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

    #[test]
    fn secrets_never_appear_in_debug() {
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"basic\", username = \"me\", password = \"hunter2-very-secret\" }}"
        ));
        let source = RestSource::from_table(&config).unwrap();
        let debug = format!("{source:?} {:?}", source.config());
        assert!(!debug.contains("hunter2-very-secret"), "{debug}");
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"query\", param_name = \"api_token\", token = \"tok-secret-123\" }}"
        ));
        let source = RestSource::from_table(&config).unwrap();
        assert!(!format!("{source:?}").contains("tok-secret-123"));
    }

    #[test]
    fn file_and_env_secrets_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token\n").unwrap();
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", token_file = {:?} }}",
            file.display().to_string()
        ));
        let source = RestSource::from_table(&config).unwrap();
        match &source.auth {
            Auth::Bearer(t) => assert_eq!(t.expose_secret(), "file-token"),
            other => panic!("{other:?}"),
        }
        let config = table(&format!(
            "{MINIMAL}\nauth = {{ kind = \"bearer\", token = \"a\", token_file = \"/x\" }}"
        ));
        assert_eq!(
            RestSource::from_table(&config).unwrap_err().key,
            "auth.token"
        );
    }

    #[test]
    fn values_become_text() {
        assert_eq!(value_text(&json!("x")), Some("x".into()));
        assert_eq!(value_text(&json!(42)), Some("42".into()));
        assert_eq!(value_text(&json!(true)), Some("true".into()));
        assert_eq!(
            value_text(&json!(["a", 1, null, false])),
            Some("a;1;false".into())
        );
        assert_eq!(value_text(&json!({"a": 1})), None);
        assert_eq!(value_text(&json!([{"a": 1}])), None);
    }

    #[test]
    fn times_parse_in_common_shapes() {
        let expected = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time(&json!("2024-05-01T12:00:00Z")), Some(expected));
        assert_eq!(
            parse_time(&json!("2024-05-01T14:00:00+02:00")),
            Some(expected)
        );
        assert_eq!(parse_time(&json!("2024-05-01 12:00:00")), Some(expected));
        assert_eq!(parse_time(&json!(1714564800)), Some(expected));
        assert_eq!(parse_time(&json!(1714564800000u64)), Some(expected));
        assert_eq!(parse_time(&json!("1714564800000")), Some(expected));
        assert_eq!(parse_time(&json!("yesterday")), None);
    }

    #[test]
    fn set_pointer_creates_nested_objects() {
        let mut v = json!({"keep": 1});
        set_pointer(&mut v, "/properties/firstname", json!("Ada")).unwrap();
        set_pointer(&mut v, "/a~1b/c~0d", json!(2)).unwrap();
        assert_eq!(
            v,
            json!({"keep": 1, "properties": {"firstname": "Ada"}, "a/b": {"c~d": 2}})
        );
        let mut v = json!({"x": "text"});
        assert!(set_pointer(&mut v, "/x/y", json!(1)).is_err());
    }

    #[test]
    fn array_items_are_replaced_by_label() {
        let array = ArrayFieldConfig {
            pointer: "/emails".into(),
            label_key: "label".into(),
            value_key: "value".into(),
            prefix: "email".into(),
            default_label: "other".into(),
        };
        let mut v = json!({"emails": [{"label": "work", "value": "a@x", "primary": true}, {"label": "home", "value": "b@x"}]});
        set_array_item(&mut v, &array, "work", "new@x").unwrap();
        set_array_item(&mut v, &array, "other", "c@x").unwrap();
        set_array_item(&mut v, &array, "home", "").unwrap();
        assert_eq!(
            v,
            json!({"emails": [{"label": "work", "value": "new@x", "primary": true}, {"label": "other", "value": "c@x"}]})
        );
        let mut v = json!({});
        set_array_item(&mut v, &array, "work", "a@x").unwrap();
        assert_eq!(v, json!({"emails": [{"label": "work", "value": "a@x"}]}));
    }

    #[test]
    fn typed_like_keeps_json_types() {
        assert_eq!(typed_like(Some(&json!(3)), "42"), json!(42));
        assert_eq!(typed_like(Some(&json!(3)), "4.5"), json!(4.5));
        assert_eq!(typed_like(Some(&json!(false)), "true"), json!(true));
        assert_eq!(typed_like(Some(&json!(["a"])), "x; y"), json!(["x", "y"]));
        assert_eq!(typed_like(None, "42"), json!("42"));
        assert_eq!(typed_like(Some(&json!(3)), ""), json!(""));
    }

    #[test]
    fn link_header_next_is_found() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"<http://h/c?_page=1>; rel="first", <http://h/c?_page=3>; rel="next", <http://h/c?_page=9>; rel="last""#),
        );
        assert_eq!(next_link(&headers).as_deref(), Some("http://h/c?_page=3"));
        headers.insert(
            LINK,
            HeaderValue::from_static(r#"<http://h/c?_page=1>; rel="prev first""#),
        );
        assert_eq!(next_link(&headers), None);
        headers.insert(LINK, HeaderValue::from_static(r#"</c?page=2>; rel=next"#));
        assert_eq!(next_link(&headers).as_deref(), Some("/c?page=2"));
    }

    #[test]
    fn urls_are_redacted() {
        let url = Url::parse("https://u:p@h/c?api_token=abc&page=2&x=1&client_secret=s").unwrap();
        let shown = redact_url(&url, Some("x"));
        assert!(
            !shown.contains("abc") && !shown.contains(":p@") && !shown.contains("=s"),
            "{shown}"
        );
        assert!(shown.contains("page=2"), "{shown}");
        assert!(shown.contains("x=REDACTED"), "{shown}");
    }

    #[test]
    fn ids_are_encoded_as_one_segment() {
        assert_eq!(encode_segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode_segment("abc-1_2.3~"), "abc-1_2.3~");
    }

    #[test]
    fn next_links_to_other_servers_or_repeats_are_refused() {
        let source = RestSource::from_table(&table(MINIMAL)).unwrap();
        let current = Url::parse("https://crm.example.com/contacts?page=1").unwrap();
        let mut seen = HashSet::new();
        let next = source
            .follow(&current, "/contacts?page=2", &mut seen, 1)
            .unwrap();
        assert_eq!(next.as_str(), "https://crm.example.com/contacts?page=2");
        let err = source
            .follow(&current, "/contacts?page=2", &mut seen, 2)
            .unwrap_err();
        assert!(err.to_string().contains("second time"), "{err}");
        let err = source
            .follow(
                &current,
                "https://elsewhere.example.net/contacts?page=3",
                &mut seen,
                3,
            )
            .unwrap_err();
        assert!(err.to_string().contains("another server"), "{err}");
    }

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
