//! Configuration: one TOML file, every key overridable as `QUO_SYNC__<SECTION>__<KEY>`.
//!
//! Unknown keys, wrong types and missing required keys are refused at start-up with one message
//! that names the key, the file and what was expected, before any network call: a sync service
//! that guesses at its configuration creates duplicates.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
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
mod ha;
pub use ha::{HaConfig, MIN_WRITE_TIMEOUT, lease_write_window};
mod ledger;
pub use ledger::LedgerConfig;
mod load;
mod mapping;
pub use mapping::{CustomFieldMapping, LabeledFieldMapping, MappingConfig};
mod ops;
mod owned_elsewhere;
pub use ops::{LogConfig, LogFormat, Readiness, ServiceConfig};
pub use owned_elsewhere::{KeyRefusal, OwnerChecks, RestTableFacts};
mod quo;
pub use quo::QuoConfig;
mod reverse;
pub use reverse::{
    ConflictPolicy, FieldDirection, FieldPolicy, MIN_WEBHOOK_KEY_BYTES, OnQuoDelete, ReverseConfig,
    webhook_signing_key,
};
mod source;
pub use source::{SourceConfig, SourceKind};
mod sync;
pub use sync::{OnSourceDelete, ScheduleConfig, SyncConfig};
mod validate;

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

impl Config {
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

    /// The API key, or a configuration error naming where it may be set.
    pub fn require_api_key(&self) -> Result<&SecretString, ConfigError> {
        self.quo.api_key.as_ref().ok_or_else(|| ConfigError::BadValue {
            file: "(config)".into(),
            key: "quo.api_key".into(),
            reason: format!("missing: set quo.api_key, quo.api_key_file, {API_KEY_ENV} or {ENV_PREFIX}__QUO__API_KEY"),
        })
    }
}
