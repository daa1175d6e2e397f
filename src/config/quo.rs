//! `[quo]`: which Quo API to talk to, with which key, and how hard to use it (rate, retries,
//! concurrency). Its own file because it is the one section every command needs.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{ConfigError, HumanDuration, print};

/// `[quo]`: the Quo API and how hard to use it.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuoConfig {
    /// API root, default `https://api.quo.com`.
    pub base_url: String,
    /// The API key (also `QUO_API_KEY`, or `api_key_file`).
    #[serde(serialize_with = "print::secret")]
    pub api_key: Option<SecretString>,
    /// A file holding the API key (Docker secrets).
    pub api_key_file: Option<PathBuf>,
    /// Quo's per-key limit, default 10.
    pub requests_per_second: u32,
    /// The `source` label written on create and used to list our contacts.
    pub source: String,
    /// Per-request timeout.
    pub timeout: HumanDuration,
    /// Retries after the first attempt for 429, 5xx, timeouts and connection errors.
    pub max_retries: u32,
    /// Cap on one backoff sleep.
    pub max_backoff: HumanDuration,
    /// Requests in flight at once (enough that latency is not the bottleneck).
    pub concurrency: usize,
    /// How long a contact may take to appear in list answers after it was created, default `1s`:
    /// an interrupted create is looked up twice, this far apart, before it is sent again.
    pub list_lag: HumanDuration,
    /// Optional link to the CRM record, `{id}` replaced by the external id.
    pub source_url_template: Option<String>,
    /// How long the service keeps retrying while Quo refuses the API key (401), reporting
    /// not-ready, before it stops with `auth_failed` (exit 1); default `5m`.
    pub auth_grace: HumanDuration,
}

impl Default for QuoConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.quo.com".into(),
            api_key: None,
            api_key_file: None,
            requests_per_second: 10,
            source: "quo-sync".into(),
            timeout: HumanDuration(Duration::from_secs(30)),
            max_retries: 8,
            max_backoff: HumanDuration(Duration::from_secs(30)),
            list_lag: HumanDuration(Duration::from_secs(1)),
            concurrency: 16,
            source_url_template: None,
            auth_grace: HumanDuration(Duration::from_secs(300)),
        }
    }
}

impl QuoConfig {
    /// `[quo]`: an http(s) API root, a rate, a concurrency, a label of our own (not one Quo reserves) and a key that is not empty.
    pub(super) fn validate(
        &self,
        bad: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(bad(
                "quo.base_url",
                format!("expected an http(s) URL, got {:?}", self.base_url),
            ));
        }
        if self.requests_per_second == 0 {
            return Err(bad(
                "quo.requests_per_second",
                "expected a whole number above 0".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(bad(
                "quo.concurrency",
                "expected a whole number above 0".into(),
            ));
        }
        let source = &self.source;
        let lower = source.to_ascii_lowercase();
        let reserved = [
            "openphone",
            "device",
            "csv",
            "zapier",
            "google-people",
            "other",
        ];
        if source.is_empty()
            || source.chars().count() > 72
            || reserved.contains(&lower.as_str())
            || lower.starts_with("openphone")
            || lower.starts_with("csv")
        {
            return Err(bad(
                "quo.source",
                format!(
                    "{source:?} is reserved by Quo or not 1–72 characters; expected a label such as \"quo-sync\""
                ),
            ));
        }
        if matches!(&self.api_key, Some(k) if k.expose_secret().trim().is_empty()) {
            return Err(bad("quo.api_key", "is empty".into()));
        }
        Ok(())
    }
}
