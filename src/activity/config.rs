//! `[activity]`: which activity is logged, with how much content, how it is found (webhooks,
//! poller, backfill), what happens to activity no record matches, who it is attributed to, and
//! where it goes (`[activity.csv]` or `[activity.rest]`).
//!
//! Every key has a default except the sink; a bad value is refused at start-up naming
//! `activity.<key>`, before any network call.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::config::{HumanDuration, SourceKind};
use crate::secret_headers::HttpHeaders;

/// Why `[activity]` cannot be used; names the key below `activity`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("activity.{key}: {reason}")]
pub struct ActivityConfigError {
    /// The key below `activity` (`rest.id_pointer`).
    pub key: String,
    /// What is wrong and what was expected.
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> ActivityConfigError {
    ActivityConfigError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// One kind of activity to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KindName {
    /// Calls.
    Calls,
    /// Texts.
    Messages,
    /// Voicemails (a missed call with a voicemail is logged, with the voicemail's link).
    Voicemails,
}

/// How much of what was said reaches the CRM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentLevel {
    /// Who, when, how long, the summary and links; no message text, no transcript (default).
    #[default]
    Metadata,
    /// Also message text, call transcripts and voicemail transcripts.
    Full,
}

/// What happens to activity that matches no record, or more than one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Counted and shown, never written (default).
    #[default]
    Skip,
    /// Counted, shown and kept: linked and written as soon as the ledger learns its record.
    Hold,
}

/// An HTTP method of the REST sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

impl HttpMethod {
    /// The reqwest method.
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
            HttpMethod::Patch => reqwest::Method::PATCH,
        }
    }
}

/// `[activity.csv]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// The activity file (created with its header when missing).
    pub path: std::path::PathBuf,
}

/// `[activity.rest]`: one CRM object per activity, written through `[source.rest]`'s
/// connection (base URL, credentials, rate limit).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestSinkConfig {
    /// Method of the create, default `POST`.
    #[serde(default = "post")]
    pub method: HttpMethod,
    /// Path of the create (placeholders `{record_id}`, `{activity_id}`).
    pub path: String,
    /// The create body: JSON (as a TOML table) whose strings may point into the activity
    /// document: `"{/duration_s}"` alone is replaced by the value (typed), inside other text by
    /// its text.
    pub body: toml::Table,
    /// JSON pointer to the new object's id in the create answer (`/id`, `/data/0/details/id`).
    pub id_pointer: String,
    /// Method of the update that writes later enrichment, default `PATCH`.
    #[serde(default = "patch")]
    pub update_method: HttpMethod,
    /// Path of the update, with `{crm_id}`; without it enrichment is not written.
    #[serde(default)]
    pub update_path: Option<String>,
    /// The update body, default `body` (CRMs that refuse some fields on update need their own).
    #[serde(default)]
    pub update_body: Option<toml::Table>,
    /// Method of the lookup, default `GET`.
    #[serde(default = "get")]
    pub lookup_method: HttpMethod,
    /// Path of the lookup by external key, with `{activity_id}`: finds the object an
    /// interrupted create may have made. Without it, see the docs ("at most one duplicate per
    /// crash").
    #[serde(default)]
    pub lookup_path: Option<String>,
    /// The lookup body (for search endpoints that take POST).
    #[serde(default)]
    pub lookup_body: Option<toml::Table>,
    /// JSON pointer to the found object's id in the lookup answer; absent means not found.
    #[serde(default)]
    pub lookup_id_pointer: Option<String>,
    /// Extra request headers (values of credential-like names are redacted in Debug output and
    /// when printed).
    #[serde(default)]
    pub headers: HttpHeaders,
    /// Leave out keys whose value is null (default true: CRMs refuse `null` for many fields).
    #[serde(default = "yes")]
    pub omit_nulls: bool,
    /// A link to the object in the CRM's app, with `{crm_id}` (shown in the console).
    #[serde(default)]
    pub link: Option<String>,
}

/// `[activity.owner_lookup]`: the CRM owner of a Quo user, found by email (REST CRMs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerLookupConfig {
    /// Method, default `GET`.
    #[serde(default = "get")]
    pub method: HttpMethod,
    /// Path with `{email}`.
    pub path: String,
    /// Body for search endpoints that take POST.
    #[serde(default)]
    pub body: Option<toml::Table>,
    /// JSON pointer to the owner id in the answer; absent means no owner.
    pub id_pointer: String,
}

/// `[activity]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// Log activity at all (default true once the table is present).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What to log, default all three.
    #[serde(default = "all_kinds")]
    pub kinds: Vec<KindName>,
    /// `metadata` (default) or `full`.
    #[serde(default)]
    pub content: ContentLevel,
    /// How often the poller reads calls and messages, default `1m`; `0s` disables it.
    #[serde(default = "one_minute")]
    pub poll_interval: HumanDuration,
    /// Calls this recent are read again until their summary is final, default `24h`.
    #[serde(default = "one_day")]
    pub enrichment_window: HumanDuration,
    /// On first start, log activity this far back, default `0s` (from now on).
    #[serde(default = "zero")]
    pub backfill: HumanDuration,
    /// `skip` (default) or `hold`.
    #[serde(default)]
    pub unmatched: Unmatched,
    /// Signing keys of webhooks set up by hand (legacy base64 keys or `whsec_…`); keys of the
    /// webhooks quo-sync registers itself live in the ledger.
    #[serde(default, serialize_with = "redacted_secrets")]
    pub webhook_secrets: Vec<SecretString>,
    /// With `reverse.public_url`, register the activity webhook at start (default true).
    #[serde(default = "yes")]
    pub register_webhooks: bool,
    /// Quo user email → CRM owner id.
    #[serde(default)]
    pub owners: BTreeMap<String, String>,
    /// The owner lookup (REST CRMs).
    #[serde(default)]
    pub owner_lookup: Option<OwnerLookupConfig>,
    /// The activity CSV file.
    #[serde(default)]
    pub csv: Option<CsvSinkConfig>,
    /// The REST CRM objects.
    #[serde(default)]
    pub rest: Option<RestSinkConfig>,
}

/// What a secret prints as (`check-config --print`).
const REDACTED: &str = "[REDACTED]";

/// `webhook_secrets` as `check-config --print` shows them: one `[REDACTED]` per key.
fn redacted_secrets<S: Serializer>(keys: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|_| REDACTED))
}

fn yes() -> bool {
    true
}
fn post() -> HttpMethod {
    HttpMethod::Post
}
fn patch() -> HttpMethod {
    HttpMethod::Patch
}
fn get() -> HttpMethod {
    HttpMethod::Get
}
fn all_kinds() -> Vec<KindName> {
    vec![KindName::Calls, KindName::Messages, KindName::Voicemails]
}
fn one_minute() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn one_day() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn zero() -> HumanDuration {
    HumanDuration(Duration::ZERO)
}

/// A JSON pointer key check.
fn pointer(key: &str, p: &str) -> Result<(), ActivityConfigError> {
    if p.starts_with('/') {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("expected a JSON pointer like \"/id\", got {p:?}"),
        ))
    }
}

fn path(key: &str, p: &str, needs: Option<&str>) -> Result<(), ActivityConfigError> {
    if !p.starts_with('/') {
        return Err(bad(
            key,
            format!("expected a path starting with `/`, got {p:?}"),
        ));
    }
    if let Some(placeholder) = needs
        && !p.contains(placeholder)
    {
        return Err(bad(
            key,
            format!("expected the placeholder {placeholder} in {p:?}"),
        ));
    }
    Ok(())
}

/// The JSON of a TOML body table.
pub fn body_json(table: &toml::Table) -> Value {
    serde_json::to_value(table).unwrap_or(Value::Null)
}

impl ActivityConfig {
    /// Whether calls, messages or voicemails are logged.
    pub fn logs(&self, kind: KindName) -> bool {
        self.kinds.contains(&kind)
    }

    /// Whether content is kept.
    pub fn full_content(&self) -> bool {
        self.content == ContentLevel::Full
    }

    /// The poll interval, `None` when `0s` disables the poller.
    pub fn poll_every(&self) -> Option<Duration> {
        Some(self.poll_interval.0).filter(|d| !d.is_zero())
    }

    /// Checks the table against the source it writes through.
    pub fn validate(&self, source: SourceKind) -> Result<(), ActivityConfigError> {
        if self.kinds.is_empty() {
            return Err(bad(
                "kinds",
                "expected at least one of \"calls\", \"messages\", \"voicemails\"",
            ));
        }
        if self.enrichment_window.0 > Duration::from_secs(30 * 24 * 3600) {
            return Err(bad("enrichment_window", "expected at most 30 days"));
        }
        if self.backfill.0 > Duration::from_secs(366 * 24 * 3600) {
            return Err(bad("backfill", "expected at most a year"));
        }
        for (email, owner) in &self.owners {
            if !email.contains('@') || owner.trim().is_empty() {
                return Err(bad(
                    &format!("owners.{email}"),
                    "expected a Quo user's email mapped to a CRM owner id",
                ));
            }
        }
        match (&self.csv, &self.rest) {
            (None, None) => {
                return Err(bad(
                    "csv",
                    "an activity sink is required: [activity.csv] path = \"activity.csv\", or [activity.rest]",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(bad(
                    "rest",
                    "choose one sink: [activity.csv] or [activity.rest], not both",
                ));
            }
            _ => {}
        }
        if let Some(csv) = &self.csv
            && csv.path.as_os_str().is_empty()
        {
            return Err(bad("csv.path", "expected a file path"));
        }
        if let Some(rest) = &self.rest {
            if source != SourceKind::Rest {
                return Err(bad(
                    "rest",
                    "needs source.kind = \"rest\": activity is written through [source.rest]'s connection",
                ));
            }
            rest.validate()?;
        }
        if let Some(lookup) = &self.owner_lookup {
            if source != SourceKind::Rest {
                return Err(bad(
                    "owner_lookup",
                    "needs source.kind = \"rest\"; with a CSV source use activity.owners",
                ));
            }
            path("owner_lookup.path", &lookup.path, Some("{email}"))?;
            pointer("owner_lookup.id_pointer", &lookup.id_pointer)?;
        }
        Ok(())
    }
}

impl RestSinkConfig {
    fn validate(&self) -> Result<(), ActivityConfigError> {
        path("rest.path", &self.path, None)?;
        pointer("rest.id_pointer", &self.id_pointer)?;
        if self.method == HttpMethod::Get {
            return Err(bad("rest.method", "a create cannot be a GET"));
        }
        if let Some(p) = &self.update_path {
            path("rest.update_path", p, Some("{crm_id}"))?;
        }
        if self.update_method == HttpMethod::Get {
            return Err(bad("rest.update_method", "an update cannot be a GET"));
        }
        match (&self.lookup_path, &self.lookup_id_pointer) {
            (Some(p), Some(id)) => {
                path("rest.lookup_path", p, None)?;
                pointer("rest.lookup_id_pointer", id)?;
                let body_has = self
                    .lookup_body
                    .as_ref()
                    .is_some_and(|b| body_json(b).to_string().contains("{activity_id}"));
                if !p.contains("{activity_id}") && !body_has {
                    return Err(bad(
                        "rest.lookup_path",
                        "expected {activity_id} in the lookup path or body",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(bad(
                    "rest.lookup_id_pointer",
                    "required with lookup_path: where the found object's id sits in the answer",
                ));
            }
            (None, Some(_)) => {
                return Err(bad("rest.lookup_path", "required with lookup_id_pointer"));
            }
            (None, None) => {}
        }
        for name in self.headers.names() {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(bad(
                    &format!("rest.headers.{name}"),
                    "not a valid header name",
                ));
            }
        }
        Ok(())
    }

    /// Whether an interrupted create can be resolved by a lookup.
    pub fn has_lookup(&self) -> bool {
        self.lookup_path.is_some()
    }
}
