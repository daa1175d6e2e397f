//! `[quo]`: which Quo API to talk to, with which key, and how hard to use it (rate, retries,
//! concurrency). Its own file because it is the one section every command needs.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::{HumanDuration, print};

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
