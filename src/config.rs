//! Configuration: one TOML file, every key overridable as `QUO_SYNC__<SECTION>__<KEY>`.
//!
//! Unknown keys, wrong types and missing required keys are refused at start-up with one message
//! that names the key, the file and what was expected, before any network call: a sync service
//! that guesses at its configuration creates duplicates.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

pub mod paths;
mod print;

pub use paths::ResolvedPath;

mod scope;
pub use scope::{FieldSource, OnLeaveScope, SyncMode};
mod csv_dialect;
pub use csv_dialect::{
    CsvDelimiter, CsvEncoding, CsvEscape, CsvQuote, DELIMITER_CANDIDATES, show_byte,
};
mod day_one;
pub use day_one::{MatchExisting, NATIVE_SOURCES};

/// Prefix of environment overrides (`QUO_SYNC__QUO__BASE_URL`).
pub const ENV_PREFIX: &str = "QUO_SYNC";
/// Separator between prefix, section and key in environment overrides.
pub const ENV_SEPARATOR: &str = "__";
/// The Quo API key, read when `quo.api_key` is not set.
pub const API_KEY_ENV: &str = "QUO_API_KEY";

/// Why the configuration cannot be used; maps to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("config file {file}: {reason}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        reason: String,
    },
    /// A key is unknown, mistyped or missing.
    #[error("config file {file}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong, naming the key and what was expected.
        message: String,
    },
    /// A key has a value that parses but cannot work.
    #[error("config file {file}: key `{key}`: {reason}")]
    BadValue {
        /// The file.
        file: String,
        /// The dotted key.
        key: String,
        /// What was expected.
        reason: String,
    },
}

/// A duration written the humane way (`5m`, `30s`, `1h 30m`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "expected a duration like `5m` or `30s`, got {text:?} ({e})"
                ))
            })
    }
}

/// The whole configuration.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Quo API.
    #[serde(default)]
    pub quo: QuoConfig,
    /// The ledger database.
    #[serde(default)]
    pub ledger: LedgerConfig,
    /// Where CRM records come from.
    pub source: SourceConfig,
    /// How CRM fields become Quo fields.
    #[serde(default)]
    pub mapping: MappingConfig,
    /// Cycle behaviour.
    #[serde(default)]
    pub sync: SyncConfig,
    /// How often `run` cycles.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The Quo → CRM path.
    #[serde(default)]
    pub reverse: ReverseConfig,
    /// Health and metrics listener.
    #[serde(default)]
    pub service: ServiceConfig,
    /// More than one replica on one ledger: the writer lease.
    #[serde(default)]
    pub ha: HaConfig,
    /// The relative paths read against the configuration file's folder, as resolved (not a
    /// key: filled by [`Config::load`], logged at start).
    #[serde(skip)]
    pub resolved_paths: Vec<ResolvedPath>,
    /// Calls, texts and voicemails logged on the CRM record (`src/activity/config.rs`).
    #[serde(default)]
    pub activity: Option<crate::activity::config::ActivityConfig>,
}

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

/// `[ledger]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// SQLite file, created if missing (ignored when `url` is set).
    pub path: PathBuf,
    /// PostgreSQL URL (`postgres://user:password@host:5432/db`); wins over `path`.
    #[serde(serialize_with = "print::database_url")]
    pub url: Option<SecretString>,
    /// A file holding the PostgreSQL URL (Docker/Kubernetes secrets).
    pub url_file: Option<PathBuf>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("quo-sync.db"),
            url: None,
            url_file: None,
        }
    }
}

impl LedgerConfig {
    /// Where the ledger lives: PostgreSQL when `url` is set, else the SQLite file.
    pub fn target(&self) -> Result<crate::ledger::LedgerTarget, crate::ledger::BadPgUrl> {
        match &self.url {
            Some(url) => Ok(crate::ledger::LedgerTarget::Postgres(
                crate::ledger::PgUrl::parse(url.expose_secret())?,
            )),
            None => Ok(crate::ledger::LedgerTarget::Sqlite(self.path.clone())),
        }
    }
}

/// Which adapter reads the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A CSV file.
    Csv,
    /// A REST CRM.
    Rest,
}

/// `[source]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `csv` or `rest`.
    pub kind: SourceKind,
    /// The CSV file (csv).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The column holding the CRM id (csv), default `crm_id`.
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// The column holding the last-modified time (csv), default `updated_at`; empty for none.
    #[serde(default = "default_updated_at_field")]
    pub updated_at_field: String,
    /// `[source.rest]`: the REST CRM (rest).
    #[serde(default, serialize_with = "print::rest_table")]
    pub rest: Option<toml::Table>,
    /// Watch the CSV file and start a cycle when it changes (csv), default true; turn off where
    /// file events are unreliable (some network filesystems) and rely on `schedule.interval`.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// The CSV file's field separator (csv): `","`, `";"`, `"\t"`, `"|"` or `"auto"` (default:
    /// chosen from the header line).
    #[serde(default)]
    pub delimiter: CsvDelimiter,
    /// The CSV file's encoding (csv), default `auto`.
    #[serde(default)]
    pub encoding: CsvEncoding,
    /// The CSV quote character (csv), default `"`.
    #[serde(default)]
    pub quote: CsvQuote,
    /// The CSV escape character inside quotes (csv), default none (doubled quotes).
    #[serde(default)]
    pub escape: CsvEscape,
    /// How long the CSV file's size and modification time must stay unchanged before
    /// `quo-sync run` reads it (csv), default `1s`; `0s` reads at once.
    #[serde(default = "default_quiet_period")]
    pub quiet_period: HumanDuration,
}

fn default_quiet_period() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

fn default_true() -> bool {
    true
}

fn default_id_field() -> String {
    "crm_id".into()
}

fn default_updated_at_field() -> String {
    "updated_at".into()
}

/// One email or phone column and the label it gets in Quo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabeledFieldMapping {
    /// Source field (CSV column), or `{ expr = "..." }`.
    pub field: FieldSource,
    /// Quo label (`name`), e.g. `work`.
    pub label: String,
}

/// One custom field, named as in Quo.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomFieldMapping {
    /// The custom field's name in Quo (resolved to its key each cycle).
    pub name: String,
    /// Source field (CSV column), or `{ expr = "..." }`.
    pub field: FieldSource,
    /// Separator for multi-select values, default `;`.
    #[serde(default)]
    pub delimiter: Option<String>,
}

/// `[mapping]`: source fields → Quo fields.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MappingConfig {
    /// Region for national-format phone numbers (ISO 3166 code), default `US`.
    pub default_region: String,
    /// Source field for `firstName` (or `{ expr = "..." }`, as every entry may).
    pub first_name: Option<FieldSource>,
    /// Source field for `lastName`.
    pub last_name: Option<FieldSource>,
    /// Source field for `company`.
    pub company: Option<FieldSource>,
    /// Source field for `role`.
    pub role: Option<FieldSource>,
    /// Email fields with their labels.
    pub emails: Vec<LabeledFieldMapping>,
    /// Phone fields with their labels.
    pub phones: Vec<LabeledFieldMapping>,
    /// Custom fields by Quo name.
    pub custom_fields: Vec<CustomFieldMapping>,
    /// IANA time zone in which a date-only value is a day (quo-api.md decision 9), default `UTC`.
    pub timezone: String,
}

impl Default for MappingConfig {
    fn default() -> Self {
        Self {
            default_region: "US".into(),
            first_name: None,
            last_name: None,
            company: None,
            role: None,
            emails: Vec::new(),
            phones: Vec::new(),
            custom_fields: Vec::new(),
            timezone: "UTC".into(),
        }
    }
}

/// What to do when a record disappears from the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnSourceDelete {
    /// Leave the Quo contact alone (default).
    Ignore,
    /// Delete the Quo contact (logged).
    Delete,
}

/// `[sync]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// `ignore` (default) or `delete`.
    pub on_source_delete: OnSourceDelete,
    /// Largest share of the managed contacts (or CRM rows) one cycle may delete, default `0.1`;
    /// above it the cycle deletes nothing and logs `mass_delete_refused`.
    pub max_delete_fraction: f64,
    /// Which records are in scope: an expression over `record` (none: every record).
    pub filter: Option<String>,
    /// `keep` (default), `unlink` or `delete`: a synced record the filter no longer admits.
    pub on_leave_scope: OnLeaveScope,
    /// `upsert` (default), `update_only` or `create_only`.
    pub mode: SyncMode,
    /// Match a new record against the contacts already in the workspace before creating it.
    pub match_existing: MatchExisting,
    /// Sources of other API integrations (e.g. `zapier`) whose contacts may be adopted; contacts
    /// without a source (made in the Quo app) always may.
    pub adopt_sources: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            on_source_delete: OnSourceDelete::Ignore,
            max_delete_fraction: 0.1,
            filter: None,
            on_leave_scope: OnLeaveScope::Keep,
            mode: SyncMode::Upsert,
            match_existing: MatchExisting::PhoneOrEmail,
            adopt_sources: Vec::new(),
        }
    }
}

/// `[schedule]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Time between the start of one cycle and the next, default `5m`.
    pub interval: HumanDuration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable.
    Pretty,
    /// Pretty when stderr is a terminal, JSON otherwise (default).
    Auto,
}

/// `[log]`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `auto` (default), `json` or `pretty`.
    pub format: LogFormat,
    /// An `EnvFilter` directive, default `info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".into(),
        }
    }
}

/// Which side wins a field changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    /// The side modified last (CRM last-modified vs Quo `updatedAt`), else the CRM.
    Newest,
    /// The CRM.
    Crm,
    /// Quo.
    Quo,
}

/// Which way a field may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldDirection {
    /// Both ways.
    Both,
    /// CRM → Quo only.
    ToQuo,
    /// Quo → CRM only.
    ToCrm,
}

/// What to do when a managed contact is deleted in Quo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnQuoDelete {
    /// Create it again from the CRM.
    Recreate,
    /// Forget the Quo id, keep the CRM record (default).
    Unlink,
    /// Delete the CRM record.
    DeleteInCrm,
}

/// Per-field reverse-path settings, keyed by diff name (`firstName`, `custom:vip`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldPolicy {
    /// Overrides `reverse.conflict` for this field.
    #[serde(default)]
    pub conflict: Option<ConflictPolicy>,
    /// Which way this field flows, default `both`.
    #[serde(default)]
    pub direction: Option<FieldDirection>,
}

/// `[reverse]`: Quo → CRM.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReverseConfig {
    /// Run the reverse path at all.
    pub enabled: bool,
    /// Webhook receiver address (`/webhooks/quo`, `/healthz`).
    pub listen: Option<SocketAddr>,
    /// Webhook signing secret (legacy base64 key or `whsec_…`); it must decode to at least
    /// [`MIN_WEBHOOK_KEY_BYTES`].
    #[serde(serialize_with = "print::secret")]
    pub webhook_secret: Option<SecretString>,
    /// A file holding the webhook signing secret (Docker/Kubernetes secrets).
    pub webhook_secret_file: Option<PathBuf>,
    /// Scan interval; default `1m` without a webhook secret, `1h` with one (a slow fallback
    /// that pulls what a missed delivery left behind); `0s` disables.
    pub poll_interval: Option<HumanDuration>,
    /// Conflict policy, default `newest`.
    pub conflict: ConflictPolicy,
    /// Per-field overrides.
    pub fields: BTreeMap<String, FieldPolicy>,
    /// Quo-side delete policy, default `unlink`.
    pub on_quo_delete: OnQuoDelete,
    /// Largest webhook body accepted, bytes.
    pub max_body_bytes: usize,
    /// How long applied webhook events are kept (for redelivery dedupe and audit), default `7d`.
    pub inbox_retention: HumanDuration,
    /// Share of the request rate the service's scan may use while writes wait, default `0.3`
    /// (all of it otherwise).
    pub scan_share: f64,
    /// Longest a webhook delivery may take to arrive in full, default `10s` (slow clients get
    /// 408 instead of holding a connection).
    pub read_timeout: HumanDuration,
    /// Contacts made in the Quo app after the first cycle become CRM records, default false.
    pub create_in_crm: bool,
    /// The CRM id of such a record (CSV), `{quo_id}` replaced: default `quo-{quo_id}`.
    pub new_record_id: String,
    /// A CRM field that carries the Quo contact id of a record made from a Quo contact, so an
    /// interrupted create is found in the CRM instead of made twice.
    pub quo_id_field: Option<String>,
    /// The URL at which Quo reaches `reverse.listen` (`https://sync.example.com`): with it,
    /// quo-sync registers its own webhooks (`quo-sync webhooks ensure`).
    pub public_url: Option<String>,
}

impl Default for ReverseConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            webhook_secret: None,
            webhook_secret_file: None,
            poll_interval: None,
            conflict: ConflictPolicy::Newest,
            fields: BTreeMap::new(),
            on_quo_delete: OnQuoDelete::Unlink,
            max_body_bytes: 256 * 1024,
            inbox_retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            scan_share: 0.3,
            read_timeout: HumanDuration(Duration::from_secs(10)),
            create_in_crm: false,
            new_record_id: "quo-{quo_id}".into(),
            quo_id_field: None,
            public_url: None,
        }
    }
}

/// The shortest Quo webhook signing key accepted, in decoded bytes: anyone can forge a
/// signature with an empty or near-empty key.
pub const MIN_WEBHOOK_KEY_BYTES: usize = 16;

/// The signing key bytes of a Quo webhook secret: `whsec_<base64>` (Standard Webhooks) or plain
/// base64 (legacy). `None` when it does not decode.
pub fn webhook_signing_key(secret: &SecretString) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = secret.expose_secret().trim();
    let encoded = text.strip_prefix("whsec_").unwrap_or(text);
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

impl ReverseConfig {
    /// The effective scan interval: explicit, else 1 minute without webhooks and 1 hour with
    /// them (deliveries can be missed; the slow scan pulls what they left behind).
    pub fn effective_poll_interval(&self) -> Option<Duration> {
        match (&self.poll_interval, &self.webhook_secret) {
            (Some(interval), _) => Some(interval.0).filter(|d| !d.is_zero()),
            (None, None) => Some(Duration::from_secs(60)),
            (None, Some(_)) => Some(Duration::from_secs(3600)),
        }
    }
}

/// `[service]`: health and metrics.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Address for `/healthz`, `/readyz`, `/metrics`; none to disable.
    pub listen: Option<SocketAddr>,
    /// Serve the operator console (`/`, `/api/...`) on `listen`; off by default.
    pub console: bool,
    /// The console's access token; required when `listen` is not a loopback address.
    #[serde(serialize_with = "print::secret")]
    pub console_token: Option<SecretString>,
    /// A file holding the console token.
    pub console_token_file: Option<PathBuf>,
    /// What `/readyz` means: `ledger` (default: the ledger answers) or `cycles` (and the last
    /// `readiness_failed_cycles` cycles did not all fail).
    pub readiness: Readiness,
    /// With `readiness = "cycles"`: how many failed cycles in a row make the replica unready,
    /// default 3.
    pub readiness_failed_cycles: u32,
    /// How long `run` lets in-flight work finish after SIGTERM/SIGINT/SIGHUP before it exits
    /// anyway, default `8s` (a second Ctrl-C exits at once).
    pub shutdown_grace: HumanDuration,
    /// On every listener (`service.listen`, `reverse.listen`): the longest a client may take to
    /// send a request's headers before the connection is closed, default `10s`.
    pub header_timeout: HumanDuration,
    /// On every listener: the longest a request may take, body included, before it is answered
    /// 408, default `30s`.
    pub request_timeout: HumanDuration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            listen: None,
            console: false,
            console_token: None,
            console_token_file: None,
            readiness: Readiness::Ledger,
            readiness_failed_cycles: 3,
            shutdown_grace: HumanDuration(Duration::from_secs(8)),
            header_timeout: HumanDuration(Duration::from_secs(10)),
            request_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// What `/readyz` answers 503 for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Readiness {
    /// Only an unreachable ledger: a failing cycle is for metrics and alerts
    /// (`quo_sync_cycles_failed_total`), so the only replica stays in its Service.
    Ledger,
    /// Also `readiness_failed_cycles` failed cycles in a row.
    Cycles,
}

/// `[ha]`: the writer lease that lets exactly one process write a ledger.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// How long a lease lasts unless renewed (renewed every third of it); a standby takes over
    /// at most this long (plus one poll) after the leader dies. Default `15s`.
    pub lease: HumanDuration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            lease: HumanDuration(Duration::from_secs(15)),
        }
    }
}

impl HaConfig {
    /// How often a standby (or a waiting one-shot command) asks for the lease.
    pub fn poll_interval(&self) -> Duration {
        (self.lease.0 / 3).min(Duration::from_secs(1))
    }
}

/// The least time a held lease of length `lease` has left whenever its renewals (every third of
/// it) are on time, before the safety margin (a tenth) at its end: 17/30 of it. A leader's write
/// timeouts are capped at it, and a write starts only when that much is left, so no write of a
/// leader is still in flight when its lease can have passed to another process.
pub fn lease_write_window(lease: Duration) -> Duration {
    lease.saturating_sub(lease / 3).saturating_sub(lease / 10)
}

/// The shortest write timeout a lease must leave room for (or the configured timeout, when
/// shorter): below it a write is cut short before Quo or the CRM can answer.
pub const MIN_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

impl Config {
    /// Loads `file` with environment overrides and validates it; no network.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like `load`, with the environment given (tests).
    pub fn load_with_env(
        file: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let file_name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError::Unreadable {
            file: file_name.clone(),
            reason: e.to_string(),
        })?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let overrides: std::collections::HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let built = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    .try_parsing(true)
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|e| ConfigError::Invalid {
                file: file_name.clone(),
                message: e.to_string(),
            })?;
        let mut config: Config = built.try_deserialize().map_err(|e| ConfigError::Invalid {
            file: file_name.clone(),
            message: e.to_string(),
        })?;
        config.resolve_paths(file);
        if config.quo.api_key.is_none() {
            if let Some(path) = &config.quo.api_key_file {
                let key = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                    file: file_name.clone(),
                    key: "quo.api_key_file".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                config.quo.api_key = Some(SecretString::from(key.trim().to_string()));
            } else if let Some(key) = env.get(API_KEY_ENV).filter(|k| !k.trim().is_empty()) {
                config.quo.api_key = Some(SecretString::from(key.trim().to_string()));
            }
        }
        if config.service.console_token.is_none()
            && let Some(path) = &config.service.console_token_file
        {
            let token = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "service.console_token_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.service.console_token = Some(SecretString::from(token.trim().to_string()));
        }
        if config.reverse.webhook_secret.is_none()
            && let Some(path) = &config.reverse.webhook_secret_file
        {
            let secret = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "reverse.webhook_secret_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.reverse.webhook_secret = Some(SecretString::from(secret.trim().to_string()));
        }
        if config.ledger.url.is_none()
            && let Some(path) = &config.ledger.url_file
        {
            let url = std::fs::read_to_string(path).map_err(|e| ConfigError::BadValue {
                file: file_name.clone(),
                key: "ledger.url_file".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            config.ledger.url = Some(SecretString::from(url.trim().to_string()));
        }
        if let Err(e) = config.ledger.target() {
            let key = if config.ledger.url_file.is_some() {
                "ledger.url_file"
            } else {
                "ledger.url"
            };
            return Err(ConfigError::BadValue {
                file: file_name.clone(),
                key: key.into(),
                reason: e.to_string(),
            });
        }
        config.validate(&file_name)?;
        config.validate_console(&file_name)?;
        config.validate_scope(&file_name)?;
        config.validate_day_one(&file_name)?;
        Ok(config)
    }

    /// Makes every relative path absolute against the configuration file's folder (falling
    /// back to the working directory where only it holds the file); see [`paths`].
    fn resolve_paths(&mut self, file: &Path) {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let base = paths::config_dir(file, &cwd);
        let mut found = Vec::new();
        let mut one = |key: &str, path: &mut PathBuf| {
            let resolved = paths::resolve(&base, &cwd, key, path);
            *path = resolved.path.clone();
            found.push(resolved);
        };
        if let Some(path) = self.source.path.as_mut() {
            one("source.path", path);
        }
        if self.ledger.url.is_none() && self.ledger.url_file.is_none() {
            one("ledger.path", &mut self.ledger.path);
        }
        for (key, path) in [
            ("quo.api_key_file", self.quo.api_key_file.as_mut()),
            ("ledger.url_file", self.ledger.url_file.as_mut()),
            (
                "service.console_token_file",
                self.service.console_token_file.as_mut(),
            ),
            (
                "reverse.webhook_secret_file",
                self.reverse.webhook_secret_file.as_mut(),
            ),
        ] {
            if let Some(path) = path {
                one(key, path);
            }
        }
        if let Some(table) = self.source.rest.as_mut() {
            paths::resolve_table(&base, &cwd, "source.rest", table, &mut found);
        }
        self.resolved_paths = found;
    }

    /// Logs where each configured path was found (call once logging is set up); a path found
    /// only in the working directory is a warning.
    pub fn log_resolved_paths(&self) {
        for resolved in &self.resolved_paths {
            if resolved.from_working_directory {
                tracing::warn!(event = "path_from_working_directory", key = %resolved.key, path = %resolved.path.display(), "found relative to the working directory, not beside the config file; relative paths are read beside the config file since 0.2: make it absolute or move the file");
            } else {
                tracing::info!(event = "config_path", key = %resolved.key, path = %resolved.path.display(), "configured path");
            }
        }
    }

    /// The console is safe by default: off unless asked for, and behind a token (at least 16
    /// characters) whenever it listens beyond loopback.
    fn validate_console(&self, file: &str) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        if !self.service.console {
            return Ok(());
        }
        let Some(addr) = self.service.listen else {
            return Err(bad(
                "service.listen",
                "service.console = true needs an address to serve it on".into(),
            ));
        };
        match &self.service.console_token {
            Some(token) if token.expose_secret().trim().len() < 16 => Err(bad(
                "service.console_token",
                "expected at least 16 characters".into(),
            )),
            None if !addr.ip().is_loopback() => Err(bad(
                "service.console_token",
                format!(
                    "required when service.listen ({addr}) is not a loopback address; set it or service.console_token_file"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// A short description of the source for the `check-config` line (`csv <path>`,
    /// `rest <base_url>`).
    pub fn describe_source(&self) -> String {
        match self.source.kind {
            SourceKind::Csv => format!(
                "csv {}",
                self.source
                    .path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            SourceKind::Rest => format!(
                "rest {}",
                self.source
                    .rest
                    .as_ref()
                    .and_then(|t| t.get("base_url"))
                    .and_then(toml::Value::as_str)
                    .unwrap_or_default()
            ),
        }
    }

    /// Refuses an `ha.lease` whose write window ([`lease_write_window`]) cannot hold a write of
    /// the configured timeouts (`quo.timeout`, `source.rest.timeout`), or [`MIN_WRITE_TIMEOUT`]
    /// when they are longer.
    fn check_lease_fits_timeouts(&self, file: &str) -> Result<(), ConfigError> {
        let window = lease_write_window(self.ha.lease.0);
        let rest_timeout = self
            .source
            .rest
            .as_ref()
            .and_then(|t| crate::source::rest::RestSourceConfig::from_table(t).ok())
            .map(|r| ("source.rest.timeout", r.timeout.0));
        let timeouts = std::iter::once(("quo.timeout", self.quo.timeout.0)).chain(rest_timeout);
        for (key, timeout) in timeouts {
            let needed = timeout.min(MIN_WRITE_TIMEOUT);
            if window < needed {
                return Err(ConfigError::BadValue {
                    file: file.to_string(),
                    key: "ha.lease".into(),
                    reason: format!(
                        "{} is too short for {key} = {}: between renewals a leader's writes get at most 17/30 of the lease ({}), and a write needs {}; use at least {}",
                        humantime::format_duration(self.ha.lease.0),
                        humantime::format_duration(timeout),
                        humantime::format_duration(window),
                        humantime::format_duration(needed),
                        humantime::format_duration(Duration::from_millis(
                            (needed.as_millis() as u64 * 30).div_ceil(17)
                        )),
                    ),
                });
            }
        }
        Ok(())
    }

    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::BadValue {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        self.source.validate_dialect(file)?;
        if !(self.quo.base_url.starts_with("http://") || self.quo.base_url.starts_with("https://"))
        {
            return Err(bad(
                "quo.base_url",
                format!("expected an http(s) URL, got {:?}", self.quo.base_url),
            ));
        }
        if self.quo.requests_per_second == 0 {
            return Err(bad(
                "quo.requests_per_second",
                "expected a whole number above 0".into(),
            ));
        }
        let share = self.reverse.scan_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(bad(
                "reverse.scan_share",
                format!("expected a share above 0 and at most 1, got {share}"),
            ));
        }
        let fraction = self.sync.max_delete_fraction;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(bad(
                "sync.max_delete_fraction",
                format!("expected a share between 0 and 1, got {fraction}"),
            ));
        }
        if self.ha.lease.0 < Duration::from_secs(1) || self.ha.lease.0 > Duration::from_secs(3600) {
            return Err(bad(
                "ha.lease",
                format!(
                    "expected between 1s and 1h, got {}",
                    humantime::format_duration(self.ha.lease.0)
                ),
            ));
        }
        if self.service.readiness_failed_cycles == 0 {
            return Err(bad(
                "service.readiness_failed_cycles",
                "expected a whole number above 0".into(),
            ));
        }
        for (key, timeout) in [
            ("service.header_timeout", self.service.header_timeout),
            ("service.request_timeout", self.service.request_timeout),
        ] {
            if timeout.0.is_zero() {
                return Err(bad(
                    key,
                    "expected a duration above zero, like `10s`".into(),
                ));
            }
        }
        self.check_lease_fits_timeouts(file)?;
        if self.quo.concurrency == 0 {
            return Err(bad(
                "quo.concurrency",
                "expected a whole number above 0".into(),
            ));
        }
        let source = &self.quo.source;
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
        if let Some(secret) = &self.reverse.webhook_secret
            && webhook_signing_key(secret).is_none_or(|key| key.len() < MIN_WEBHOOK_KEY_BYTES)
        {
            let key = if self.reverse.webhook_secret_file.is_some() {
                "reverse.webhook_secret_file"
            } else {
                "reverse.webhook_secret"
            };
            return Err(bad(
                key,
                format!(
                    "expected Quo's signing key, `whsec_<base64>` or base64, of at least {MIN_WEBHOOK_KEY_BYTES} bytes once decoded (the value is not shown)"
                ),
            ));
        }
        if matches!(&self.quo.api_key, Some(k) if k.expose_secret().trim().is_empty()) {
            return Err(bad("quo.api_key", "is empty".into()));
        }
        match self.source.kind {
            SourceKind::Csv if self.source.path.is_none() => {
                return Err(bad(
                    "source.path",
                    "required when source.kind = \"csv\": the CSV file to read".into(),
                ));
            }
            SourceKind::Rest if self.source.rest.is_none() => {
                return Err(bad(
                    "source.rest",
                    "required when source.kind = \"rest\": the [source.rest] table".into(),
                ));
            }
            _ => {}
        }
        if let Some(table) = &self.source.rest {
            // The whole REST table is checked here, so check-config and start-up catch an
            // unknown or bad key (secrets from env/files are resolved when the source is built).
            crate::source::rest::RestSourceConfig::from_table(table).map_err(|e| {
                let key = if e.key.is_empty() {
                    "source.rest".to_string()
                } else {
                    format!("source.rest.{}", e.key)
                };
                bad(&key, e.reason)
            })?;
        }
        if self.source.id_field.trim().is_empty() {
            return Err(bad(
                "source.id_field",
                "expected the name of the id column".into(),
            ));
        }
        if self.mapping.default_region.len() != 2 {
            return Err(bad(
                "mapping.default_region",
                format!(
                    "expected a two-letter region such as \"US\", got {:?}",
                    self.mapping.default_region
                ),
            ));
        }
        if self
            .mapping
            .timezone
            .trim()
            .parse::<chrono_tz::Tz>()
            .is_err()
        {
            return Err(bad(
                "mapping.timezone",
                format!(
                    "expected an IANA time zone name such as \"UTC\" or \"America/New_York\", got {:?}",
                    self.mapping.timezone
                ),
            ));
        }
        if self.schedule.interval.0.is_zero() {
            return Err(bad(
                "schedule.interval",
                "expected a duration above zero, like `5m`".into(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!(
                    "expected a level such as \"info\" or a filter directive, got {:?}",
                    self.log.level
                ),
            ));
        }
        if let Some(url) = &self.reverse.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(bad(
                "reverse.public_url",
                format!("expected an http(s) URL, got {url:?}"),
            ));
        }
        if let Some(activity) = &self.activity {
            activity
                .validate(self.source.kind)
                .map_err(|e| bad(&format!("activity.{}", e.key), e.reason))?;
        }
        for name in self.reverse.fields.keys() {
            let known = [
                crate::domain::field::FIRST_NAME,
                crate::domain::field::LAST_NAME,
                crate::domain::field::COMPANY,
                crate::domain::field::ROLE,
                crate::domain::field::EMAILS,
                crate::domain::field::PHONE_NUMBERS,
            ];
            if !known.contains(&name.as_str())
                && !name.starts_with(crate::domain::field::CUSTOM_PREFIX)
            {
                return Err(bad(
                    &format!("reverse.fields.{name}"),
                    "expected firstName, lastName, company, role, emails, phoneNumbers or custom:<key>".into(),
                ));
            }
        }
        Ok(())
    }

    /// The API key, or a configuration error naming where it may be set.
    pub fn require_api_key(&self) -> Result<&SecretString, ConfigError> {
        self.quo.api_key.as_ref().ok_or_else(|| ConfigError::BadValue {
            file: "(config)".into(),
            key: "quo.api_key".into(),
            reason: format!("missing: set quo.api_key, quo.api_key_file, {API_KEY_ENV} or {ENV_PREFIX}__QUO__API_KEY"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_keep_a_slow_fallback_scan() {
        let mut reverse = ReverseConfig::default();
        assert_eq!(
            reverse.effective_poll_interval(),
            Some(Duration::from_secs(60))
        );
        reverse.webhook_secret = Some(SecretString::from("whsec_c2VjcmV0"));
        assert_eq!(
            reverse.effective_poll_interval(),
            Some(Duration::from_secs(3600)),
            "a missed delivery is pulled within the hour"
        );
        reverse.poll_interval = Some(HumanDuration(Duration::ZERO));
        assert_eq!(reverse.effective_poll_interval(), None, "0s disables");
    }
}
